//! The float epilogue with 512-bit vectors: a float kernel's epilogue list (bias, residual add,
//! ReLU/Clip bounds, the average pool's division) applied to an f32 accumulator tile and stored
//! as f32, sixteen lanes at a time. Cranelift's x86-64 backend stops at 128-bit vectors and
//! expands `fmax`/`fmin` into NaN and signed-zero fix-ups; this computes the same steps, in the
//! list's order, with the same results: generated code calls it per tile when the native
//! microkernels are selected on a CPU with AVX-512F, otherwise the Cranelift epilogue runs.
//!
//! Numerics (the CLIF epilogue's, [`crate::emit::epilogue`]): each step is one IEEE operation
//! on f32 (`+`, `/`) or `fmax`/`fmin` against a constant, where `fmax` and `fmin` return NaN for
//! a NaN operand and order `-0.0 < +0.0`. `vmaxps(c, x)` returns `x` when `x` is NaN or equal to
//! `c` (its second operand), which is exact for every non-zero `c`; for `max(x, +0.0)` the result
//! is non-negative or NaN, so clearing the sign bit turns the `-0.0` it returns for `x = -0.0`
//! into `+0.0`; for `min(x, -0.0)` setting the sign bit does the converse. `max(x, -0.0)` and
//! `min(x, +0.0)` are already exact. A NaN constant is not taken (the CLIF epilogue runs).

use crate::spec::Step;

/// The longest list the kernel takes (a fused kernel has a bias, a residual and two bounds per
/// absorbed activation; the per-op vectors of a column block stay in registers).
const MAX_OPS: usize = 8;

/// One step of a float epilogue, with its per-channel values padded past the last column.
#[derive(Clone, Debug, PartialEq)]
pub enum FloatOp {
    /// `x / d`.
    Div(f32),
    /// `x + v[c]` (`v` padded to a multiple of 16 past the last column).
    AddChannel(Vec<f32>),
    /// `x + residual[row][c]`.
    AddResidual,
    /// `fmax(x, c)`.
    Max(f32),
    /// `fmin(x, c)`.
    Min(f32),
}

/// The epilogue list of an f32 kernel stored as f32, as the microkernel runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct FloatEpilogue {
    pub ops: Vec<FloatOp>,
    /// The same list when it is a bias, a residual add, a lower and an upper bound, each at most
    /// once and in that order (every fused convolution's list): the kernel then runs a version
    /// compiled for exactly those steps instead of dispatching on each step per vector.
    canon: Option<Canon>,
}

/// A list of the canonical form (see [`FloatEpilogue`]).
#[derive(Clone, Debug, PartialEq)]
struct Canon {
    /// Per-channel bias, padded past the last column (empty without one).
    bias: Vec<f32>,
    residual: bool,
    /// `fmax(x, max)`, when present: `vmaxps` and then the bits ANDed with `max_and`
    /// (`0x7fff_ffff` for `+0.0`, which turns `-0.0` into `+0.0`; else all ones).
    max: Option<(f32, u32)>,
    /// `fmin(x, min)`, when present: `vminps` and then the bits ORed with `min_or`
    /// (`0x8000_0000` for `-0.0`; else 0).
    min: Option<(f32, u32)>,
}

impl Canon {
    fn of(ops: &[FloatOp]) -> Option<Canon> {
        let mut c = Canon { bias: Vec::new(), residual: false, max: None, min: None };
        let mut rest = ops;
        if let [FloatOp::AddChannel(v), tail @ ..] = rest {
            c.bias = v.clone();
            rest = tail;
        }
        if let [FloatOp::AddResidual, tail @ ..] = rest {
            c.residual = true;
            rest = tail;
        }
        if let [FloatOp::Max(m), tail @ ..] = rest {
            c.max = Some((*m, if m.to_bits() == 0 { 0x7fff_ffff } else { u32::MAX }));
            rest = tail;
        }
        if let [FloatOp::Min(m), tail @ ..] = rest {
            c.min = Some((*m, if m.to_bits() == 0x8000_0000 { 0x8000_0000 } else { 0 }));
            rest = tail;
        }
        rest.is_empty().then_some(c)
    }
}

impl FloatEpilogue {
    /// The epilogue `steps` as float ops, or `None` when a step is not one this kernel computes
    /// (integer steps, bf16 rounding, a NaN bound).
    pub fn from_steps(steps: &[Step]) -> Option<FloatEpilogue> {
        let pad = |v: &[f32]| {
            let mut out = v.to_vec();
            out.resize(v.len().div_ceil(16) * 16 + 16, 0.0);
            out
        };
        let ops = steps
            .iter()
            .map(|st| match st {
                Step::DivF32(d) => Some(FloatOp::Div(*d)),
                Step::AddChannelF32(v) => Some(FloatOp::AddChannel(pad(v))),
                Step::AddResidualF32 => Some(FloatOp::AddResidual),
                Step::MaxF32(c) if !c.is_nan() => Some(FloatOp::Max(*c)),
                Step::MinF32(c) if !c.is_nan() => Some(FloatOp::Min(*c)),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        let canon = Canon::of(&ops);
        (ops.len() <= MAX_OPS).then_some(FloatEpilogue { ops, canon })
    }

    /// The steps' values applied to one element, in order (the scalar definition the vector
    /// kernel follows; used by the tests).
    pub fn apply_scalar(&self, mut x: f32, col: usize, residual: f32) -> f32 {
        for op in &self.ops {
            x = match op {
                FloatOp::Div(d) => x / d,
                FloatOp::AddChannel(v) => x + v[col],
                FloatOp::AddResidual => x + residual,
                FloatOp::Max(c) => fmax(x, *c),
                FloatOp::Min(c) => fmin(x, *c),
            };
        }
        x
    }
}

/// IEEE 754-2019 `maximum` (Cranelift's `fmax`): NaN if either is NaN, `-0.0 < +0.0`.
fn fmax(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a == b {
        if a.is_sign_negative() {
            b
        } else {
            a
        }
    } else if a > b {
        a
    } else {
        b
    }
}

/// IEEE 754-2019 `minimum` (Cranelift's `fmin`): NaN if either is NaN, `-0.0 < +0.0`.
fn fmin(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a == b {
        if a.is_sign_negative() {
            a
        } else {
            b
        }
    } else if a < b {
        a
    } else {
        b
    }
}

/// Whether the 512-bit version can run on this CPU.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Applies the epilogue `p` to a `rows x nr` tile of f32 accumulators (`ldc` floats per row,
/// `ldc` a multiple of 16 at least `nr`) whose first column is output channel `n0`, storing f32
/// at `out` (`out_stride` bytes per row); `res` is the residual's element at (first row, `n0`)
/// with the output's stride, or null when the list has no residual step.
///
/// # Safety
/// `p` points to a valid epilogue whose per-channel arrays cover columns `n0..n0 + nr` rounded
/// up to 16; the tile holds `rows` rows of `ldc` floats; the output (and the residual, when the
/// list reads it) hold `rows` rows of `nr` floats at stride `out_stride`. Call only when
/// [`available`] is true.
pub unsafe extern "C" fn epilogue_f32(
    p: *const FloatEpilogue,
    tile: *const f32,
    ldc: usize,
    rows: usize,
    n0: usize,
    nr: usize,
    out: *mut f32,
    out_stride: usize,
    res: *const f32,
) {
    // SAFETY: the caller guarantees the ranges described above and that the CPU has AVX-512F
    // (`available`), which `epilogue_avx512` requires.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            let p = &*p;
            match &p.canon {
                Some(c) => canon_avx512(c, tile, ldc, rows, n0, nr, out, out_stride, res),
                None => epilogue_avx512(p, tile, ldc, rows, n0, nr, out, out_stride, res),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (p, tile, ldc, rows, n0, nr, out, out_stride, res);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn epilogue_avx512(
    p: &FloatEpilogue,
    tile: *const f32,
    ldc: usize,
    rows: usize,
    n0: usize,
    nr: usize,
    out: *mut f32,
    out_stride: usize,
    res: *const f32,
) {
    // SAFETY: the caller (`epilogue_f32`) guarantees the ranges: tile loads read columns `j..j + 16`
    // with `j + 16 <= round_up(nr, 16) <= ldc`; residual loads and output stores are masked to
    // columns below `nr` of rows below `rows`; per-channel arrays are padded past `n0 + nr` to a
    // multiple of 16. The target feature is enabled on this function and checked by `available`.
    unsafe {
        use std::arch::x86_64::*;
        let ops = &p.ops[..p.ops.len().min(MAX_OPS)];
        let sign = _mm512_set1_epi32(i32::MIN);
        let mut j = 0;
        while j < nr {
            let left = nr - j;
            let full = left >= 16;
            let mask: __mmask16 = if full { 0xffff } else { (1u16 << left) - 1 };
            // Per-op vectors of this column block: the constant or the per-channel values.
            let mut pv = [_mm512_setzero_ps(); MAX_OPS];
            for (i, op) in ops.iter().enumerate() {
                pv[i] = match op {
                    FloatOp::Div(d) => _mm512_set1_ps(*d),
                    FloatOp::AddChannel(v) => _mm512_loadu_ps(v.as_ptr().add(n0 + j)),
                    FloatOp::Max(c) | FloatOp::Min(c) => _mm512_set1_ps(*c),
                    FloatOp::AddResidual => _mm512_setzero_ps(),
                };
            }
            for r in 0..rows {
                let mut v = _mm512_loadu_ps(tile.add(r * ldc + j));
                let rrow = (res as *const u8).wrapping_add(r * out_stride) as *const f32;
                for (i, op) in ops.iter().enumerate() {
                    v = match op {
                        FloatOp::Div(_) => _mm512_div_ps(v, pv[i]),
                        FloatOp::AddChannel(_) => _mm512_add_ps(v, pv[i]),
                        FloatOp::AddResidual => {
                            let x = if full {
                                _mm512_loadu_ps(rrow.add(j))
                            } else {
                                _mm512_maskz_loadu_ps(mask, rrow.add(j))
                            };
                            _mm512_add_ps(v, x)
                        }
                        FloatOp::Max(c) => {
                            let m = _mm512_max_ps(pv[i], v);
                            if c.to_bits() == 0 {
                                _mm512_castsi512_ps(_mm512_andnot_si512(sign, _mm512_castps_si512(m)))
                            } else {
                                m
                            }
                        }
                        FloatOp::Min(c) => {
                            let m = _mm512_min_ps(pv[i], v);
                            if c.to_bits() == 0x8000_0000 {
                                _mm512_castsi512_ps(_mm512_or_si512(sign, _mm512_castps_si512(m)))
                            } else {
                                m
                            }
                        }
                    };
                }
                let o = (out as *mut u8).add(r * out_stride) as *mut f32;
                if full {
                    _mm512_storeu_ps(o.add(j), v);
                } else {
                    _mm512_mask_storeu_ps(o.add(j), mask, v);
                }
            }
            j += 16;
        }
    }
}

/// [`epilogue_avx512`] for a canonical list, one version per combination of its steps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn canon_avx512(
    c: &Canon,
    tile: *const f32,
    ldc: usize,
    rows: usize,
    n0: usize,
    nr: usize,
    out: *mut f32,
    out_stride: usize,
    res: *const f32,
) {
    // SAFETY: `epilogue_avx512`'s ranges (the caller's contract), which `canon_run` keeps; the
    // target feature is enabled on this function and checked by `available`.
    unsafe {
        let args = (c, tile, ldc, rows, n0, nr, out, out_stride, res);
        match (!c.bias.is_empty(), c.residual, c.max.is_some(), c.min.is_some()) {
            (false, false, false, false) => canon_run::<false, false, false, false>(args),
            (false, false, false, true) => canon_run::<false, false, false, true>(args),
            (false, false, true, false) => canon_run::<false, false, true, false>(args),
            (false, false, true, true) => canon_run::<false, false, true, true>(args),
            (false, true, false, false) => canon_run::<false, true, false, false>(args),
            (false, true, false, true) => canon_run::<false, true, false, true>(args),
            (false, true, true, false) => canon_run::<false, true, true, false>(args),
            (false, true, true, true) => canon_run::<false, true, true, true>(args),
            (true, false, false, false) => canon_run::<true, false, false, false>(args),
            (true, false, false, true) => canon_run::<true, false, false, true>(args),
            (true, false, true, false) => canon_run::<true, false, true, false>(args),
            (true, false, true, true) => canon_run::<true, false, true, true>(args),
            (true, true, false, false) => canon_run::<true, true, false, false>(args),
            (true, true, false, true) => canon_run::<true, true, false, true>(args),
            (true, true, true, false) => canon_run::<true, true, true, false>(args),
            (true, true, true, true) => canon_run::<true, true, true, true>(args),
        }
    }
}

/// The arguments of [`epilogue_f32`] with the canonical list.
type CanonArgs<'a> = (&'a Canon, *const f32, usize, usize, usize, usize, *mut f32, usize, *const f32);

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn canon_run<const BIAS: bool, const RES: bool, const MAX: bool, const MIN: bool>(
    (c, tile, ldc, rows, n0, nr, out, out_stride, res): CanonArgs<'_>,
) {
    // SAFETY: as `epilogue_avx512`: tile loads read columns `j..j + 16 <= round_up(nr, 16) <= ldc`;
    // residual loads and output stores are masked to columns below `nr` of rows below `rows`; the
    // bias is padded past `n0 + nr` to a multiple of 16.
    unsafe {
        use std::arch::x86_64::*;
        let (maxv, maxand) = c.max.map_or((0.0, 0), |(m, a)| (m, a));
        let (minv, minor) = c.min.map_or((0.0, 0), |(m, o)| (m, o));
        let (maxv, maxand) = (_mm512_set1_ps(maxv), _mm512_set1_epi32(maxand as i32));
        let (minv, minor) = (_mm512_set1_ps(minv), _mm512_set1_epi32(minor as i32));
        let mut j = 0;
        while j < nr {
            let left = nr - j;
            let full = left >= 16;
            let mask: __mmask16 = if full { 0xffff } else { (1u16 << left) - 1 };
            let b = if BIAS { _mm512_loadu_ps(c.bias.as_ptr().add(n0 + j)) } else { _mm512_setzero_ps() };
            for r in 0..rows {
                let mut v = _mm512_loadu_ps(tile.add(r * ldc + j));
                if BIAS {
                    v = _mm512_add_ps(v, b);
                }
                if RES {
                    let rrow = (res as *const u8).add(r * out_stride) as *const f32;
                    let x = if full { _mm512_loadu_ps(rrow.add(j)) } else { _mm512_maskz_loadu_ps(mask, rrow.add(j)) };
                    v = _mm512_add_ps(v, x);
                }
                if MAX {
                    let m = _mm512_castps_si512(_mm512_max_ps(maxv, v));
                    v = _mm512_castsi512_ps(_mm512_and_si512(m, maxand));
                }
                if MIN {
                    let m = _mm512_castps_si512(_mm512_min_ps(minv, v));
                    v = _mm512_castsi512_ps(_mm512_or_si512(m, minor));
                }
                let o = (out as *mut u8).add(r * out_stride) as *mut f32;
                if full {
                    _mm512_storeu_ps(o.add(j), v);
                } else {
                    _mm512_mask_storeu_ps(o.add(j), mask, v);
                }
            }
            j += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scalar definition's `fmax`/`fmin` on signed zeros and NaN (Cranelift's rules).
    #[test]
    fn bounds_order_signed_zeros_and_propagate_nan() {
        assert!(fmax(-0.0, 0.0).is_sign_positive() && fmax(0.0, -0.0).is_sign_positive());
        assert!(fmin(-0.0, 0.0).is_sign_negative() && fmin(0.0, -0.0).is_sign_negative());
        assert!(fmax(f32::NAN, 1.0).is_nan() && fmin(1.0, f32::NAN).is_nan());
        assert_eq!((fmax(-3.0, 0.0), fmin(7.0, 6.0)), (0.0, 6.0));
        assert!(FloatEpilogue::from_steps(&[Step::MaxF32(f32::NAN)]).is_none());
        assert!(FloatEpilogue::from_steps(&[Step::RoundBf16]).is_none());
    }

    /// Every step on special values (signed zeros, NaN, infinities, bounds' neighbours) and on a
    /// ragged tile, the vector kernel against the scalar definition bit for bit (NaN as NaN), on
    /// a CPU with AVX-512F (the kernel is never selected elsewhere).
    #[test]
    fn vector_kernel_matches_the_definition() {
        let lists: Vec<Vec<Step>> = if available() { test_lists() } else { Vec::new() };
        let specials = [0.0f32, -0.0, 1.0, -1.0, 6.0, 6.0000005, 5.9999995, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        let (rows, ldc) = (5usize, 48usize);
        for steps in &lists {
            let p = FloatEpilogue::from_steps(steps).expect("a float list");
            for (n0, nr) in [(0usize, 40usize), (3, 17), (0, 5), (8, 32)] {
                let tile: Vec<f32> = (0..rows * ldc)
                    .map(|i| if i % 3 == 0 { specials[i % specials.len()] } else { (i as f32 - 100.0) * 0.0625 })
                    .collect();
                let stride = 41usize;
                let resid: Vec<f32> = (0..rows * stride).map(|i| specials[(i * 7) % specials.len()]).collect();
                let mut out = vec![1234.5f32; rows * stride];
                // SAFETY: the tile holds `rows` rows of `ldc` floats, the output and residual `rows`
                // rows of `stride >= nr` floats; per-channel arrays cover 40 columns padded to 64.
                unsafe {
                    epilogue_f32(&p, tile.as_ptr(), ldc, rows, n0, nr, out.as_mut_ptr(), stride * 4, resid.as_ptr());
                }
                for r in 0..rows {
                    for j in 0..stride {
                        let got = out[r * stride + j];
                        if j >= nr {
                            assert_eq!(got, 1234.5, "a column past nr was written");
                            continue;
                        }
                        let want = p.apply_scalar(tile[r * ldc + j], n0 + j, resid[r * stride + j]);
                        assert!(
                            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                            "{steps:?} row {r} col {j}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Epilogue lists of every step kind, in orders the lowering produces and others.
    fn test_lists() -> Vec<Vec<Step>> {
        vec![
            vec![Step::AddChannelF32((0..40).map(|i| i as f32 * 0.25 - 3.0).collect()), Step::MaxF32(0.0)],
            vec![Step::MaxF32(0.0), Step::MinF32(6.0)],
            vec![Step::MaxF32(-0.0), Step::MinF32(-0.0)],
            vec![Step::MinF32(0.0), Step::MaxF32(-1.5)],
            vec![Step::DivF32(49.0), Step::AddResidualF32, Step::MaxF32(0.0)],
            vec![Step::AddChannelF32(vec![0.5; 40]), Step::AddResidualF32, Step::MaxF32(0.0), Step::MinF32(6.0)],
        ]
    }
}
