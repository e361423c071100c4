#!/usr/bin/env python3
"""The polynomials of the numerics contract's f32 functions (`ir/src/numerics.rs`: `exp_f32`,
`erf_f32`, and `sigmoid_f32` through `exp_f32`), and their measured error.

Each is mpmath's Chebyshev fit (`mpmath.chebyfit`, 50 digits) of its function on its range, the
coefficients rounded to f32, then the function simulated step by step as the contract computes
it (f32 Horner form with fused multiply-adds, one rounding per step) on dense points of the
range, against mpmath. The script fails when an error reaches 1.5 (2^-24 relative for the
exponential's polynomial, f32 ulps of the result for erf), and prints the coefficients as Rust
constants, constant term first. The whole functions are measured on every f32 by `cargo bench -p
qforge-codegen --bench transcendental`.

    python3 scripts/transcendental_polys.py
"""
import math
import sys

import mpmath as mp
import numpy as np

mp.mp.dps = 50


def fit(f, lo, hi, degree):
    poly, _ = mp.chebyfit(f, [lo, hi], degree + 1, error=True)
    return [float(c) for c in poly]  # highest degree first


def f32(v):
    """`v` rounded to f32 (round to nearest even)."""
    return float(np.float32(float(v)))


def r32(v):
    return mp.mpf(f32(v))


def horner32(c, t):
    """Horner form in f32 with fused multiply-adds (one rounding per step); `c` highest first."""
    p = mp.mpf(0)
    for ci in c:
        p = r32(mp.fmul(p, t, exact=True) + ci)
    return p


def ulp32(t):
    t = abs(float(t))
    return 2.0 ** (math.floor(math.log2(t)) - 23 if t >= 2.0**-126 else -149)


def emit32(name, doc, c):
    coeffs = ", ".join(repr(np.float32(x).item()) for x in reversed(c))
    print(f"/// {doc}")
    print(f"const {name}: [f32; {len(c)}] = [{coeffs}];")


def f32_polys():
    """The numerics contract's f32 functions (`ir/src/numerics.rs`): their polynomials'
    coefficients rounded to f32, and each function's error in f32 ulps on dense points,
    simulated step by step as the contract computes it (its `exp_f32` taken as exact here: the
    transcendental bench measures the real thing on every f32)."""
    ok = True
    h = float(mp.log(2) / 2) * 1.0001
    q = [f32(c) for c in fit(mp.exp, -h, h, 6)]
    w = 0.0
    for i in range(4001):
        r = r32(-h + 2 * h * i / 4000)
        w = max(w, float(abs(horner32(q, r) - mp.exp(r)) / mp.exp(r)) / 2.0**-24)
    emit32("EXP_F32_POLY", f"`exp(r)` on `|r| <= ln 2 / 2`, degree 6 ({w:.2f} * 2^-24 relative)", q)
    ok &= w < 1.5
    # erf on |x| < 1: x (c0 + y Q(y)), y = x^2, c0 = 2/sqrt(pi) split into two f32
    c0 = 2 / mp.sqrt(mp.pi)
    c0h = f32(c0)
    c0l = f32(c0 - c0h)
    small = [f32(c) for c in fit(lambda y: (mp.erf(mp.sqrt(y)) / mp.sqrt(y) - c0) / y if y else -c0 / 3, 0, 1, 5)]
    w = 0.0
    for i in range(1, 4001):
        x = r32(i / 4000)
        y = r32(x * x)
        t = r32(y * horner32(small, y))
        got = r32(x * c0h + r32(x * r32(t + c0l)))
        w = max(w, float(abs(got - mp.erf(x))) / ulp32(mp.erf(x)))
    emit32("ERF_F32_SMALL", f"`(erf(x) / x - 2/sqrt(pi)) / x^2` in `x^2` on `|x| < 1`, degree 5 (erf {w:.2f} ulp)", small)
    print(f"// 2/sqrt(pi) = {c0h!r} + {c0l!r}")
    ok &= w < 1.5
    # erf on 1 <= a < 4: 1 - exp((R(a - 2.5) - lo) - y), R ~ log(erfc(a)) + a^2, a^2 = y + lo
    tail = [f32(c) for c in fit(lambda t: mp.log(mp.erfc(t + 2.5)) + (t + 2.5) ** 2, -1.5, 1.5, 8)]
    w = 0.0
    for i in range(20001):
        a = r32(1 + 3 * i / 20000)
        y = r32(a * a)
        lo = r32(a * a - y)
        q = r32(r32(horner32(tail, r32(a - 2.5)) - lo) - y)
        got = r32(1 - r32(mp.exp(q)))
        w = max(w, float(abs(got - mp.erf(a))) / ulp32(mp.erf(a)))
    emit32("ERF_F32_TAIL", f"`log(erfc(a)) + a^2` in `a - 2.5` on `|a - 2.5| <= 1.5`, degree 8 (erf {w:.2f} ulp)", tail)
    ok &= w < 1.5
    return ok


def main():
    if not f32_polys():
        sys.exit("an error reaches its bound: raise the degree")


main()
