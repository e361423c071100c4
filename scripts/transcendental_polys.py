#!/usr/bin/env python3
"""The polynomials of codegen/src/micro/transcendental.rs, and their measured error.

Each is mpmath's Chebyshev fit (`mpmath.chebyfit`, 50 digits) of the function on its range,
rounded to f64, then evaluated in f64 Horner form both with fused multiply-adds (one rounding
per step, as the AVX2 and AVX-512 versions run it) and with a separate multiply and add (the
baseline version) on dense points of the range, against mpmath. The script fails when either
error reaches the bound the kernel's rounding test assumes (2^-50 relative for `exp` and `erf`;
2^-40 absolute for GELU's `erf`, whose value only matters through `erf + 1` rounded to f32),
and prints the coefficients as Rust constants, constant term first.

    python3 scripts/transcendental_polys.py
"""
import math
import sys

import mpmath as mp

mp.mp.dps = 50
BOUND = 2.0 ** -50


def fit(f, lo, hi, degree):
    poly, _ = mp.chebyfit(f, [lo, hi], degree + 1, error=True)
    return [float(c) for c in poly]  # highest degree first


def horner(c, t, fused):
    p = mp.mpf(0)
    for ci in c:
        if fused:
            p = mp.fadd(mp.fmul(p, t, exact=True), ci, prec=53)
        else:
            p = mp.fadd(mp.fmul(p, t, prec=53), ci, prec=53)
    return p


def worst(c, points, arg, value, exact, relative=True):
    """The largest relative (or absolute) error of `value(x, horner(c, arg(x)))` against
    `exact(x)`."""
    w = 0.0
    for x in points:
        for fused in (True, False):
            got = value(x, horner(c, arg(x), fused))
            ref = exact(x)
            if not relative:
                w = max(w, float(abs(got - ref)))
            elif ref != 0:
                w = max(w, float(abs(got - ref) / abs(ref)))
    return w


def emit(name, doc, c, err):
    coeffs = ",\n".join(f"    {x!r}" for x in reversed(c))
    kind = "absolute" if name == "GELU_ERF_POLY" else "relative"
    print(f"/// {doc} ({kind} error {err:.2e}, 2^{math.log2(err):.1f}).")
    if name in ("ERF_POLY", "GELU_ERF_POLY"):
        print("// the fit's constant term is 2/sqrt(pi) to the last bit, as it should be")
        print("#[allow(clippy::approx_constant)]")
    print(f"const {name}: [f64; {len(c)}] = [\n{coeffs},\n];")


def main():
    ok = True
    # erf(x) = x P(x^2) on |x| <= 2: P(y) = erf(sqrt y) / sqrt y, degree 16 in y
    erf_hi = 2.0
    p = fit(lambda y: mp.erf(mp.sqrt(y)) / mp.sqrt(y) if y else 2 / mp.sqrt(mp.pi), 0, erf_hi**2, 16)
    xs = [mp.mpf(float(mp.mpf(i) / 4000 * erf_hi)) for i in range(1, 4001)]
    e = worst(p, xs, lambda x: mp.fmul(x, x, exact=True), lambda x, v: x * v, mp.erf)
    ok &= e < BOUND
    emit("ERF_POLY", f"`erf(x) / x` in `x^2` on `|x| <= {erf_hi}`, degree 16", p, e)
    # GELU's erf(x) = x Q(x^2) on |x| <= 2 to an absolute 2^-40, degree 13 in y
    g = fit(lambda y: mp.erf(mp.sqrt(y)) / mp.sqrt(y) if y else 2 / mp.sqrt(mp.pi), 0, erf_hi**2, 13)
    e = worst(g, xs, lambda x: mp.fmul(x, x, exact=True), lambda x, v: x * v, mp.erf, relative=False)
    ok &= e < 2.0**-40
    emit("GELU_ERF_POLY", f"`erf(x) / x` in `x^2` on `|x| <= {erf_hi}` for GELU, degree 13", g, e)
    # exp(r) on |r| <= ln 2 / 2 (a hair wider), degree 10
    h = float(mp.log(2) / 2) * 1.0001
    q = fit(mp.exp, -h, h, 10)
    rs = [mp.mpf(-h + 2 * h * i / 4000) for i in range(4001)]
    e = worst(q, rs, lambda r: r, lambda r, v: v, mp.exp)
    ok &= e < BOUND
    emit("EXP_POLY", "`exp(r)` on `|r| <= ln 2 / 2`, degree 10", q, e)
    # exp(r) on |r| <= ln 2 / 32 (a hair wider), degree 6: the AVX-512 kernel's, after a
    # reduction by sixteenths of ln 2 and a table of 2^(j/16)
    h16 = float(mp.log(2) / 32) * 1.001
    q16 = fit(mp.exp, -h16, h16, 6)
    rs16 = [mp.mpf(-h16 + 2 * h16 * i / 4000) for i in range(4001)]
    e = worst(q16, rs16, lambda r: r, lambda r, v: v, mp.exp)
    ok &= e < BOUND
    emit("EXP16_POLY", "`exp(r)` on `|r| <= ln 2 / 32`, degree 6", q16, e)
    if not ok:
        sys.exit("an error reaches its bound: raise the degree")


main()
