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
//!
//! A bf16 kernel's epilogue (the bf16 GEMM's and depthwise kernel's: bias, then a residual add
//! that rounds the sum so far to bf16 and adds the bf16 residual, then the bounds) runs here too
//! when its list has that canonical form, and stores bf16: each lane rounded to nearest even with
//! a NaN kept quiet, `(b + 0x7fff + ((b >> 16) & 1)) >> 16` of the f32 bits `b` or `(b >> 16) |
//! 0x40` for NaN, the CLIF epilogue's integer formula, which is `half::bf16::from_f32` (the
//! interpreter's rounding); `vcvtneps2bf16` is not used, since it flushes subnormals.
//!
//! A quantized kernel's list that turns float runs here too: an i32 accumulator takes its
//! correction in i32 (wrapping) and converts to nearest at the first float step (a
//! dequantization's scale); float steps follow (hard-swish in f64 lanes, constant multiplies and
//! adds, bounds, a SiLU with the interpreter's sigmoid); a byte store ends with the rounding of
//! `Step::RoundToInt` (NaN to 0, the clamp before the rounding, which is the same for integer
//! bounds, half to even, the zero point) and optionally a byte table (`Step::Lut8`: `vpermt2b` on
//! a CPU with AVX512-VBMI, else a gather). So a convolution, its activation, a learnable affine,
//! the quantize and a quantized add of a constant after it write bytes once.
//!
//! A list with a SiLU runs a block of 16 columns at a time over a buffer of rows: the steps
//! before it, the sigmoid kernel of [`super::transcendental`] on the whole buffer (the
//! interpreter's values, including its rounding fallback), then the product and the rest.

use crate::spec::{fmax, fmin, Step, Store};

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
    /// `round_bf16(x)` kept in f32.
    RoundBf16,
    /// `round_f16(x)` kept in f32 ([`Step::RoundF16`]).
    RoundF16,
    /// `x + residual[row][c]` of a bf16 residual, widened exactly.
    AddResidualBf16,
    /// `x * v[c]` (`v` padded as `AddChannel`'s): a dequantization's scale or a constant multiply.
    Mul(Vec<f32>),
    /// `hard_swish(x)` in f64 lanes ([`crate::spec::hard_swish`]).
    HardSwish,
    /// `x * sigmoid(x)` with the interpreter's sigmoid ([`crate::spec::silu`]), at most once in
    /// a list (which then runs row by row).
    Silu,
}

/// The integer end of a quantized kernel's list: `RoundToInt { zp, lo, hi }`, the byte table
/// after it if any, and a byte store (u8 and i8 store alike: the narrowing keeps the low byte).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntOut {
    pub zp: i32,
    pub lo: i32,
    pub hi: i32,
    pub table: ByteTable,
}

/// A [`Step::Lut8`] after the rounding, in the form the kernel looks it up in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ByteTable {
    None,
    /// One table's 256 bytes, looked up with two `vpermt2b` and a blend on the byte's top bit
    /// (a CPU with AVX512-VBMI and BW).
    Vbmi(Vec<u8>),
    /// The entries widened to i32 for `vpgatherdd`; per-channel tables (table `c` at `c * 256`)
    /// padded with zeros past the last column to a multiple of 16 and 16 more.
    Gather {
        table: Vec<i32>,
        per_channel: bool,
    },
}

impl ByteTable {
    /// The gather form of `table` (one table of 256 entries, or 256 per channel).
    pub fn gather(table: &[u8], per_channel: bool) -> ByteTable {
        let mut t: Vec<i32> = table.iter().map(|&b| b as i32).collect();
        if per_channel {
            t.resize((table.len() / 256).div_ceil(16) * 16 * 256 + 16 * 256, 0);
        }
        ByteTable::Gather { table: t, per_channel }
    }
}

/// Whether the CPU has AVX512-VBMI and -BW (the byte permutes of a single table's lookup).
fn has_vbmi() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512vbmi") && std::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The epilogue list of an f32 kernel stored as f32, as the microkernel runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct FloatEpilogue {
    pub ops: Vec<FloatOp>,
    /// Whether the result is stored as bf16 (rounded as the module docs say) rather than f32.
    pub bf16: bool,
    /// For an i32 accumulator: the per-channel i32 correction added before the conversion to
    /// f32 (padded as `AddChannel`'s; empty when the list has none). `None` for an f32 one.
    pub int_in: Option<Vec<i32>>,
    /// The rounding and byte store that end a quantized list, or `None` for a float store.
    pub int_out: Option<IntOut>,
    /// The same list when it is a bias, a residual add, a lower and an upper bound, each at most
    /// once and in that order, and for an f16/bf16 op computed in f32 a rounding at the end and
    /// before the residual add (every fused convolution's list): the kernel then runs a version
    /// compiled for exactly those steps instead of dispatching on each step per vector.
    canon: Option<Canon>,
}

/// The residual add of a canonical list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Residual {
    None,
    /// `x + residual` with an f32 residual.
    F32,
    /// `round_bf16(x) + residual` with a bf16 residual.
    Bf16,
}

/// A list of the canonical form (see [`FloatEpilogue`]).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Canon {
    /// Per-channel bias, padded past the last column (empty without one).
    bias: Vec<f32>,
    /// An f32 residual add, or (bf16 kernels) the rounding to bf16 and a bf16 residual add.
    residual: Residual,
    /// `fmax(x, max)`, when present: `vmaxps` and then the bits ANDed with `max_and`
    /// (`0x7fff_ffff` for `+0.0`, which turns `-0.0` into `+0.0`; else all ones).
    max: Option<(f32, u32)>,
    /// `fmin(x, min)`, when present: `vminps` and then the bits ORed with `min_or`
    /// (`0x8000_0000` for `-0.0`; else 0).
    min: Option<(f32, u32)>,
    /// An f32-stored list of an f16 or bf16 op computed in f32 (the widening pass's ops): the
    /// rounding to that type kept in f32 last, and before an f32 residual add when the list
    /// has one (the kernel's own result rounded before the add reads it).
    round: Round,
}

/// The rounding of a canonical f32 list ([`Canon::round`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Round {
    None,
    F16,
    Bf16,
}

impl Round {
    fn of(op: &FloatOp) -> Option<Round> {
        match op {
            FloatOp::RoundF16 => Some(Round::F16),
            FloatOp::RoundBf16 => Some(Round::Bf16),
            _ => None,
        }
    }
}

impl Canon {
    fn of(ops: &[FloatOp]) -> Option<Canon> {
        let mut c = Canon { bias: Vec::new(), residual: Residual::None, max: None, min: None, round: Round::None };
        let mut rest = ops;
        if let [FloatOp::AddChannel(v), tail @ ..] = rest {
            c.bias = v.clone();
            rest = tail;
        }
        let mut before_residual = Round::None;
        if let [FloatOp::AddResidual, tail @ ..] = rest {
            c.residual = Residual::F32;
            rest = tail;
        } else if let [FloatOp::RoundBf16, FloatOp::AddResidualBf16, tail @ ..] = rest {
            c.residual = Residual::Bf16;
            rest = tail;
        } else if let [r, FloatOp::AddResidual, tail @ ..] = rest {
            before_residual = Round::of(r)?;
            c.residual = Residual::F32;
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
        if let [r] = rest {
            c.round = Round::of(r)?;
            rest = &[];
        }
        // the kernel rounds before an f32 residual exactly when it rounds at the end
        (rest.is_empty() && (c.residual != Residual::F32 || before_residual == c.round)).then_some(c)
    }
}

impl FloatEpilogue {
    /// The epilogue `steps` of an f32 accumulator stored as `store` as float ops, or `None` when
    /// a step is not one this kernel computes (integer steps, a NaN bound, bf16 steps before an
    /// f32 store, an f32 residual before a bf16 one) or the store is an integer.
    pub fn from_steps(steps: &[Step], store: Store) -> Option<FloatEpilogue> {
        Self::from_kernel(crate::spec::Acc::F32, steps, store)
    }

    /// The epilogue `steps` of an `acc` accumulator stored as `store`, or `None` when this kernel
    /// does not compute it. An i32 accumulator may take one `AddChannelI32` first (added in i32,
    /// wrapping), becomes f32 at the first float step, and a byte store ends with its
    /// `RoundToInt`; float steps, a residual and bf16 steps are as for an f32 accumulator.
    pub fn from_kernel(acc: crate::spec::Acc, steps: &[Step], store: Store) -> Option<FloatEpilogue> {
        let pad = |v: &[f32]| {
            let mut out = v.to_vec();
            out.resize(v.len().div_ceil(16) * 16 + 16, 0.0);
            out
        };
        let mut steps = steps;
        let int_in = match acc {
            crate::spec::Acc::F32 => None,
            crate::spec::Acc::I32 => {
                let mut corr = Vec::new();
                if let [Step::AddChannelI32(v), rest @ ..] = steps {
                    corr = v.clone();
                    steps = rest;
                }
                // the first step must make the lanes float
                match steps.first() {
                    Some(Step::RoundToInt { .. } | Step::AddChannelI32(_)) | None => return None,
                    Some(_) => {}
                }
                if !corr.is_empty() {
                    corr.resize(corr.len().div_ceil(16) * 16 + 16, 0);
                }
                Some(corr)
            }
        };
        let (bf16, int_out) = match store {
            Store::F32 => (false, None),
            Store::Bf16 => (true, None),
            Store::U8 | Store::I8 => {
                let table = match steps {
                    // the byte stores alike read as u8 or as i8 (the narrowing keeps the low byte)
                    [rest @ .., Step::Lut8 { table, per_channel, .. }] => {
                        steps = rest;
                        if !*per_channel && table.len() != 256 {
                            return None;
                        }
                        if !*per_channel && has_vbmi() {
                            ByteTable::Vbmi(table.clone())
                        } else {
                            ByteTable::gather(table, *per_channel)
                        }
                    }
                    _ => ByteTable::None,
                };
                match steps {
                    [rest @ .., Step::RoundToInt { zp, lo, hi, .. }] => {
                        steps = rest;
                        (false, Some(IntOut { zp: *zp, lo: *lo, hi: *hi, table }))
                    }
                    _ => return None,
                }
            }
        };
        let ops = steps
            .iter()
            .map(|st| match st {
                Step::DivF32(d) => Some(FloatOp::Div(*d)),
                Step::AddChannelF32(v) => Some(FloatOp::AddChannel(pad(v))),
                Step::AddResidualF32 if !bf16 && int_out.is_none() => Some(FloatOp::AddResidual),
                Step::RoundBf16 => Some(FloatOp::RoundBf16),
                Step::RoundF16 => Some(FloatOp::RoundF16),
                Step::AddResidualBf16 if bf16 => Some(FloatOp::AddResidualBf16),
                Step::MaxF32(c) if !c.is_nan() => Some(FloatOp::Max(*c)),
                Step::MinF32(c) if !c.is_nan() => Some(FloatOp::Min(*c)),
                Step::ScaleToF32(v) | Step::MulChannelF32(v) => Some(FloatOp::Mul(pad(v))),
                Step::HardSwish => Some(FloatOp::HardSwish),
                Step::Silu => Some(FloatOp::Silu),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        if ops.iter().filter(|o| **o == FloatOp::Silu).count() > 1 {
            return None;
        }
        // a bf16-stored list rounds at its store, never in f32 before it
        let canon = if int_in.is_none() && int_out.is_none() { Canon::of(&ops) } else { None }
            .filter(|c| !bf16 || c.round == Round::None);
        (ops.len() <= MAX_OPS).then_some(FloatEpilogue { ops, bf16, int_in, int_out, canon })
    }

    /// The canonical list of an f32 accumulator stored as f32, which a GEMM may apply to its
    /// accumulators in registers ([`canon_in_registers`]) instead of storing a tile for
    /// [`epilogue_f32`]; `None` for any other list.
    pub(crate) fn in_registers(&self) -> Option<&Canon> {
        self.canon.as_ref().filter(|_| !self.bf16 && self.int_in.is_none() && self.int_out.is_none())
    }

    /// The steps' values applied to one element of an f32 accumulator, in order, before the
    /// store (the scalar definition the vector kernel follows; used by the tests; lists of an i32
    /// accumulator or a byte store are checked against [`crate::spec::apply_scalar`]). `residual` is the residual's
    /// value (a bf16 one widened).
    pub fn apply_scalar(&self, mut x: f32, col: usize, residual: f32) -> f32 {
        for op in &self.ops {
            x = match op {
                FloatOp::Div(d) => x / d,
                FloatOp::AddChannel(v) => x + v[col],
                FloatOp::AddResidual => x + residual,
                FloatOp::Max(c) => fmax(x, *c),
                FloatOp::Min(c) => fmin(x, *c),
                FloatOp::RoundBf16 => half::bf16::from_f32(x).to_f32(),
                FloatOp::RoundF16 => half::f16::from_f32(x).to_f32(),
                FloatOp::AddResidualBf16 => x + residual,
                FloatOp::Mul(v) => x * v[col],
                FloatOp::HardSwish => crate::spec::hard_swish(x),
                FloatOp::Silu => crate::spec::silu(x),
            };
        }
        x
    }
}

/// Whether the 512-bit version can run on this CPU for a result stored as `store` (f32:
/// AVX-512F; bf16 also AVX512-BW and -VL, for the masked 16-bit loads of a bf16 residual; u8
/// and i8 stores narrow with AVX-512F).
pub fn available(store: Store) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && (store != Store::Bf16
                || (std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vl")))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = store;
        false
    }
}

/// Applies the epilogue `p` to a `rows x nr` tile of f32 (or, for a list with `int_in`, i32)
/// accumulators (`ldc` elements per row,
/// `ldc` a multiple of 16 at least `nr`) whose first column is output channel `n0`, storing f32,
/// (`p.bf16`) bf16 or (`p.int_out`) bytes at `out` (`out_stride` bytes per row); `res` is the
/// residual's element at
/// (first row, `n0`), of the output's type and stride, or null when the list has no residual step.
///
/// # Safety
/// `p` points to a valid epilogue whose per-channel arrays cover columns `n0..n0 + nr` rounded
/// up to 16; the tile holds `rows` rows of `ldc` floats; the output (and the residual, when the
/// list reads it) hold `rows` rows of `nr` elements at stride `out_stride`. Call only when
/// [`available`] is true for the epilogue's store.
pub unsafe extern "C" fn epilogue_f32(
    p: *const FloatEpilogue,
    tile: *const f32,
    ldc: usize,
    rows: usize,
    n0: usize,
    nr: usize,
    out: *mut u8,
    out_stride: usize,
    res: *const u8,
) {
    // SAFETY: the caller guarantees the ranges described above and that the CPU has AVX-512F (and,
    // for a bf16 store, AVX512-BW and -VL: `available`), which the functions called require.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            let p = &*p;
            match &p.canon {
                Some(c) if p.bf16 => canon_bf16(c, tile, ldc, rows, n0, nr, out, out_stride, res),
                Some(c) => canon_avx512(c, tile, ldc, rows, n0, nr, out as *mut f32, out_stride, res as *const f32),
                None if p.int_out.as_ref().is_some_and(|io| matches!(io.table, ByteTable::Vbmi(_))) => {
                    epilogue_vbmi(p, tile, ldc, rows, n0, nr, out, out_stride, res)
                }
                None => epilogue_avx512(p, tile, ldc, rows, n0, nr, out, out_stride, res),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (p, tile, ldc, rows, n0, nr, out, out_stride, res);
        }
    }
}

/// The bf16 bits of each lane of `v` (in the low half of its i32 lanes), rounded to nearest even
/// with a NaN kept quiet (see the module docs).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn bf16_bits(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let b = _mm512_castps_si512(v);
    let hi = _mm512_srli_epi32::<16>(b);
    let lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
    let r = _mm512_srli_epi32::<16>(_mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7fff)), lsb));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
    _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)))
}

/// `v` rounded to bf16 and widened back to f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn round_bf16(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bf16_bits(v)))
}

/// `v` rounded to f16 and widened back to f32: `vcvtps2ph` with round to nearest even (f16
/// subnormals kept, overflow to infinity, a NaN quieted with its low payload bits dropped, as the
/// `half` crate converts) and `vcvtph2ps`, which is exact.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn round_f16(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    _mm512_cvtph_ps(_mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v))
}

/// The bf16 values at `p` (the lanes of `mask`, 0 elsewhere) widened exactly to f32.
///
/// # Safety
/// `p` readable for the lanes of `mask`; the CPU has AVX-512F, BW and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn load_bf16(p: *const u8, mask: u16) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees the masked lanes are readable; masked-off lanes are not read.
    let h = unsafe { _mm256_maskz_loadu_epi16(mask, p as *const i16) };
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
}

/// Stores the lanes of `mask` of `v` rounded to bf16 at `o`.
///
/// # Safety
/// `o` writable for the lanes of `mask`; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_bf16(o: *mut u8, mask: u16, v: std::arch::x86_64::__m512) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees the masked lanes are writable (`vpmovdw` with a mask writes
    // only those).
    unsafe { _mm512_mask_cvtepi32_storeu_epi16(o as *mut i16, mask, bf16_bits(v)) }
}

/// `hard_swish` of each lane ([`crate::spec::hard_swish`]): widened to two halves of eight f64
/// lanes, `x * min(6, max(0, x + 3)) * (1/6)` there, each rounded to f32 once. Multiplying by
/// the f64 nearest 1/6 instead of dividing by 6 changes the f64 result in its last bit at most,
/// and on no f32 input the f32 rounding (checked on all 2^32 of them by `cargo bench -p
/// qforge-codegen --bench transcendental`). `vmaxpd`/`vminpd` return their second operand when
/// either is NaN, so a NaN `x + 3` goes through as the clamp passes it; `x + 3` is never
/// `-0.0`, so their treatment of equal zeros does not arise.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn hard_swish(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let (three, zero, six) = (_mm512_set1_pd(3.0), _mm512_setzero_pd(), _mm512_set1_pd(6.0));
    let sixth = _mm512_set1_pd(1.0 / 6.0);
    let half = |x: __m512d| -> __m256 {
        let t = _mm512_min_pd(six, _mm512_max_pd(zero, _mm512_add_pd(x, three)));
        _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_mul_pd(x, t), sixth))
    };
    let lo = half(_mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    let hi = half(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))));
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi)))
}

/// `RoundToInt { zp, lo, hi }` of each lane (`Step::RoundToInt`) in i32 lanes: NaN becomes 0,
/// the value is clamped to `[lo - zp, hi - zp]` (integers, so clamping before rounding is
/// clamping after it, and the conversion stays in range), rounded half to even and `zp` added;
/// the result is in `lo..=hi`, inside the stored byte's range, so narrowing it is exact.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn round_to_int(v: std::arch::x86_64::__m512, o: &IntOut) -> std::arch::x86_64::__m512i {
    round_lanes(v, o.zp, o.lo, o.hi)
}

/// [`round_to_int`] with its zero point and range given apart (the standalone quantize kernel
/// of [`super::requant`] rounds the same way).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn round_lanes(v: std::arch::x86_64::__m512, zp: i32, lo: i32, hi: i32) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
    let v = _mm512_mask_mov_ps(v, nan, _mm512_setzero_ps());
    let lo = _mm512_set1_ps(lo.saturating_sub(zp) as f32);
    let hi = _mm512_set1_ps(hi.saturating_sub(zp) as f32);
    let v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    let q = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
    _mm512_add_epi32(q, _mm512_set1_epi32(zp))
}

/// The step-by-step epilogue with AVX-512F: [`epilogue_body`].
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
    out: *mut u8,
    out_stride: usize,
    res: *const u8,
) {
    // SAFETY: the caller's contract (`epilogue_f32`), and AVX-512F, which this function enables.
    unsafe { epilogue_body::<false>(p, tile, ldc, rows, n0, nr, out, out_stride, res) }
}

/// [`epilogue_avx512`] for a list ending in a single byte table, looked up with AVX512-VBMI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
#[allow(clippy::too_many_arguments)]
unsafe fn epilogue_vbmi(
    p: &FloatEpilogue,
    tile: *const f32,
    ldc: usize,
    rows: usize,
    n0: usize,
    nr: usize,
    out: *mut u8,
    out_stride: usize,
    res: *const u8,
) {
    // SAFETY: the caller's contract (`epilogue_f32`); the CPU has AVX512-VBMI and -BW (the
    // table's bytes are kept only then: `has_vbmi`), which this function enables.
    unsafe { epilogue_body::<true>(p, tile, ldc, rows, n0, nr, out, out_stride, res) }
}

/// The 256-byte table `t` (four 64-byte vectors) at each of the 16 bytes of `b`: `vpermt2b`
/// selects among 128 bytes by the low seven bits, twice, and the top bit picks the half.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
#[inline]
fn lut_vbmi(b: std::arch::x86_64::__m128i, t: &[std::arch::x86_64::__m512i; 4]) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::*;
    let idx = _mm512_zextsi128_si512(b);
    let lo = _mm512_permutex2var_epi8(t[0], idx, t[1]);
    let hi = _mm512_permutex2var_epi8(t[2], idx, t[3]);
    _mm512_castsi512_si128(_mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi))
}

/// The step-by-step loop over a tile, inlined into [`epilogue_avx512`] and (with `VBMI`, for a
/// single table) [`epilogue_vbmi`], which enable the features its intrinsics need. A list with a
/// SiLU runs row by row ([`rows_with_silu`]); the others column block by column block, each
/// block's per-channel values loaded once for all rows.
///
/// # Safety
/// As [`epilogue_f32`]; the CPU has AVX-512F, and with `VBMI` also AVX512-BW and -VBMI.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn epilogue_body<const VBMI: bool>(
    p: &FloatEpilogue,
    tile: *const f32,
    ldc: usize,
    rows: usize,
    n0: usize,
    nr: usize,
    out: *mut u8,
    out_stride: usize,
    res: *const u8,
) {
    // SAFETY: the caller (`epilogue_f32`) guarantees the ranges: tile loads read columns `j..j + 16`
    // with `j + 16 <= round_up(nr, 16) <= ldc`; residual loads and output stores are masked to
    // columns below `nr` of rows below `rows`; per-channel arrays are padded past `n0 + nr` to a
    // multiple of 16. The target feature is enabled on this function's callers and checked by
    // `available`, which for a bf16 list (the only one with bf16 steps or store) also checks
    // AVX512-BW and -VL.
    unsafe {
        use std::arch::x86_64::*;
        let ops = &p.ops[..p.ops.len().min(MAX_OPS)];
        let vt = match &p.int_out {
            Some(IntOut { table: ByteTable::Vbmi(t), .. }) if VBMI && t.len() == 256 => {
                let t = t.as_ptr();
                [0, 64, 128, 192].map(|o| _mm512_loadu_si512(t.add(o).cast()))
            }
            _ => [_mm512_setzero_si512(); 4],
        };
        let es = if p.int_out.is_some() {
            1
        } else if p.bf16 {
            2
        } else {
            4
        };
        if let Some(k) = ops.iter().position(|o| *o == FloatOp::Silu) {
            let t = Tile { tile, ldc, rows, n0, nr, out, out_stride, res, es };
            return rows_with_silu::<VBMI>(p, &ops[..k], &ops[k + 1..], &t, &vt);
        }
        let mut j = 0;
        while j < nr {
            let left = nr - j;
            let full = left >= 16;
            let mask: __mmask16 = if full { 0xffff } else { (1u16 << left) - 1 };
            let pv = op_params(ops, n0 + j);
            let (corr, chan) = int_params(p, n0 + j);
            for r in 0..rows {
                let v = load_acc(p, tile.add(r * ldc + j), corr);
                let v = run_ops(ops, &pv, v, res.wrapping_add(r * out_stride + j * es), mask, full);
                store_out::<VBMI>(p, v, out.add(r * out_stride + j * es), mask, full, chan, &vt);
            }
            j += 16;
        }
    }
}

/// A tile's addresses and sizes, as [`epilogue_f32`] takes them (`es`: bytes per output element).
#[cfg(target_arch = "x86_64")]
struct Tile {
    tile: *const f32,
    ldc: usize,
    rows: usize,
    n0: usize,
    nr: usize,
    out: *mut u8,
    out_stride: usize,
    res: *const u8,
    es: usize,
}

/// How many values the loop of a list with a SiLU takes into its buffer at once.
const SILU_CHUNK: usize = 512;

/// A tile through a list with a SiLU, one block of 16 columns at a time (each op's per-channel
/// values loaded once for the block): `before` on as many rows as fill the buffer (the block's
/// `cb <= 16` valid lanes of each row packed without gaps), the interpreter's sigmoid on the
/// whole buffer at once ([`super::transcendental::map`]), then `x * sigmoid(x)`, `after` and the
/// store row by row. One call of the sigmoid kernel per buffer, so a depthwise kernel's few
/// channels per row still fill it.
///
/// # Safety
/// As [`epilogue_body`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn rows_with_silu<const VBMI: bool>(
    p: &FloatEpilogue,
    before: &[FloatOp],
    after: &[FloatOp],
    t: &Tile,
    vt: &[std::arch::x86_64::__m512i; 4],
) {
    // SAFETY: as `epilogue_body`: tile loads read columns below `round_up(nr, 16) <= ldc`,
    // residual loads and stores are masked to columns below `nr` of rows below `rows`; the
    // buffers hold `SILU_CHUNK + 16` values and a block of rows uses `rn * cb <= SILU_CHUNK` of
    // them (a whole-vector load at `rr * cb` reaches at most 16 past its row).
    unsafe {
        use std::arch::x86_64::*;
        let mut xs = [0f32; SILU_CHUNK + 16];
        let mut sig = [0f32; SILU_CHUNK + 16];
        let mut j = 0;
        while j < t.nr {
            let cb = (t.nr - j).min(16);
            let full = cb == 16;
            let mask: __mmask16 = if full { 0xffff } else { (1u16 << cb) - 1 };
            let (pa, pb) = (op_params(before, t.n0 + j), op_params(after, t.n0 + j));
            let (corr, chan) = int_params(p, t.n0 + j);
            let per = SILU_CHUNK / cb;
            let mut r0 = 0;
            while r0 < t.rows {
                let rn = per.min(t.rows - r0);
                for rr in 0..rn {
                    let r = r0 + rr;
                    let v = load_acc(p, t.tile.add(r * t.ldc + j), corr);
                    let v = run_ops(before, &pa, v, t.res.wrapping_add(r * t.out_stride + j * t.es), mask, full);
                    // the lanes past `nr` are not kept (the next row's values follow)
                    _mm512_mask_storeu_ps(xs.as_mut_ptr().add(rr * cb), mask, v);
                }
                let n = rn * cb;
                super::transcendental::map(qforge_ir::UnaryOp::Sigmoid, &xs[..n], &mut sig[..n]);
                for rr in 0..rn {
                    let r = r0 + rr;
                    let at = rr * cb;
                    // lanes past `nr` hold the next row's values: computed, never stored
                    let v = _mm512_mul_ps(_mm512_loadu_ps(xs.as_ptr().add(at)), _mm512_loadu_ps(sig.as_ptr().add(at)));
                    let v = run_ops(after, &pb, v, t.res.wrapping_add(r * t.out_stride + j * t.es), mask, full);
                    store_out::<VBMI>(p, v, t.out.add(r * t.out_stride + j * t.es), mask, full, chan, vt);
                }
                r0 += rn;
            }
            j += 16;
        }
    }
}

/// Each op's vector for the 16 columns from `col`: its constant, or its per-channel values.
///
/// # Safety
/// The per-channel arrays are padded past `col + 16`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn op_params(ops: &[FloatOp], col: usize) -> [std::arch::x86_64::__m512; MAX_OPS] {
    // SAFETY: the caller's padding guarantee; the callers enable AVX-512F.
    unsafe {
        use std::arch::x86_64::*;
        let mut pv = [_mm512_setzero_ps(); MAX_OPS];
        for (i, op) in ops.iter().take(MAX_OPS).enumerate() {
            pv[i] = match op {
                FloatOp::Div(d) => _mm512_set1_ps(*d),
                FloatOp::AddChannel(v) | FloatOp::Mul(v) => _mm512_loadu_ps(v.as_ptr().add(col)),
                FloatOp::Max(c) | FloatOp::Min(c) => _mm512_set1_ps(*c),
                FloatOp::AddResidual
                | FloatOp::RoundBf16
                | FloatOp::RoundF16
                | FloatOp::AddResidualBf16
                | FloatOp::HardSwish
                | FloatOp::Silu => _mm512_setzero_ps(),
            };
        }
        pv
    }
}

/// The i32 correction of an i32 tile and the per-channel table offsets (`(col + lane) * 256`)
/// for the 16 columns from `col` (zeros where the list has none).
///
/// # Safety
/// The correction is padded past `col + 16`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn int_params(p: &FloatEpilogue, col: usize) -> (std::arch::x86_64::__m512i, std::arch::x86_64::__m512i) {
    // SAFETY: the caller's padding guarantee; the callers enable AVX-512F.
    unsafe {
        use std::arch::x86_64::*;
        let corr = match &p.int_in {
            Some(c) if !c.is_empty() => _mm512_loadu_si512(c.as_ptr().add(col).cast()),
            _ => _mm512_setzero_si512(),
        };
        // per-channel tables: lane `l` reads table `col + l`
        let chan = match &p.int_out {
            Some(IntOut { table: ByteTable::Gather { per_channel: true, .. }, .. }) => {
                _mm512_slli_epi32::<8>(_mm512_add_epi32(
                    _mm512_set1_epi32(col as i32),
                    _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                ))
            }
            _ => _mm512_setzero_si512(),
        };
        (corr, chan)
    }
}

/// Sixteen accumulators at `at` as f32: an i32 tile's with the correction added (wrapping) and
/// converted to nearest, as `acc as f32` does, or an f32 tile's as they are.
///
/// # Safety
/// Sixteen elements are readable at `at`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load_acc(p: &FloatEpilogue, at: *const f32, corr: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m512 {
    // SAFETY: the caller's guarantee; the callers enable AVX-512F.
    unsafe {
        use std::arch::x86_64::*;
        if p.int_in.is_some() {
            _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_loadu_si512(at.cast()), corr))
        } else {
            _mm512_loadu_ps(at)
        }
    }
}

/// `ops` on one vector, in order (`pv`: [`op_params`]; `rrow`: the residual at this vector's
/// first column, read in the lanes of `mask`).
///
/// # Safety
/// The residual, when an op reads it, is readable in the lanes of `mask` at `rrow`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn run_ops(
    ops: &[FloatOp],
    pv: &[std::arch::x86_64::__m512; MAX_OPS],
    mut v: std::arch::x86_64::__m512,
    rrow: *const u8,
    mask: std::arch::x86_64::__mmask16,
    full: bool,
) -> std::arch::x86_64::__m512 {
    // SAFETY: the caller's guarantee for the residual; the callers enable AVX-512F (and, for a
    // bf16 list, BW and VL: `available`).
    unsafe {
        use std::arch::x86_64::*;
        let sign = _mm512_set1_epi32(i32::MIN);
        for (i, op) in ops.iter().take(MAX_OPS).enumerate() {
            v = match op {
                FloatOp::Div(_) => _mm512_div_ps(v, pv[i]),
                FloatOp::AddChannel(_) => _mm512_add_ps(v, pv[i]),
                FloatOp::AddResidual => {
                    let x = if full {
                        _mm512_loadu_ps(rrow as *const f32)
                    } else {
                        _mm512_maskz_loadu_ps(mask, rrow as *const f32)
                    };
                    _mm512_add_ps(v, x)
                }
                FloatOp::RoundBf16 => round_bf16(v),
                FloatOp::RoundF16 => round_f16(v),
                FloatOp::AddResidualBf16 => _mm512_add_ps(v, load_bf16(rrow, mask)),
                FloatOp::Mul(_) => _mm512_mul_ps(v, pv[i]),
                FloatOp::HardSwish => hard_swish(v),
                // row by row only (`rows_with_silu` splits the list at it)
                FloatOp::Silu => v,
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
        v
    }
}

/// Stores one vector at `o` in the lanes of `mask`: rounded to bytes (and looked up in the
/// table, by VBMI permutes or a gather), rounded to bf16, or as f32.
///
/// # Safety
/// The output is writable in the lanes of `mask` at `o`; with `VBMI`, the CPU has AVX512-BW and
/// -VBMI and `vt` holds the table.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_out<const VBMI: bool>(
    p: &FloatEpilogue,
    v: std::arch::x86_64::__m512,
    o: *mut u8,
    mask: std::arch::x86_64::__mmask16,
    full: bool,
    chan: std::arch::x86_64::__m512i,
    vt: &[std::arch::x86_64::__m512i; 4],
) {
    // SAFETY: the caller's guarantees; the callers enable AVX-512F (bf16: also BW and VL).
    unsafe {
        use std::arch::x86_64::*;
        if let Some(io) = &p.int_out {
            let mut q = round_to_int(v, io);
            if VBMI {
                let bytes = lut_vbmi(_mm512_cvtepi32_epi8(q), vt);
                if full {
                    _mm_storeu_si128(o.cast(), bytes);
                } else {
                    _mm512_mask_cvtepi32_storeu_epi8(o.cast(), mask, _mm512_cvtepu8_epi32(bytes));
                }
                return;
            }
            if let ByteTable::Gather { table, .. } = &io.table {
                // the byte (0..=255 also for an i8's two's complement), in this lane's
                // channel's table when there is one per channel
                let idx = _mm512_add_epi32(_mm512_and_si512(q, _mm512_set1_epi32(0xff)), chan);
                q = _mm512_i32gather_epi32::<4>(idx, table.as_ptr().cast());
            }
            if full {
                _mm_storeu_si128(o.cast(), _mm512_cvtepi32_epi8(q));
            } else {
                _mm512_mask_cvtepi32_storeu_epi8(o.cast(), mask, q);
            }
        } else if p.bf16 {
            store_bf16(o, mask, v);
        } else if full {
            _mm512_storeu_ps(o as *mut f32, v);
        } else {
            _mm512_mask_storeu_ps(o as *mut f32, mask, v);
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
        match c.round {
            Round::None => canon_rounded::<ROUND_NONE>(args),
            Round::F16 => canon_rounded::<ROUND_F16>(args),
            Round::Bf16 => canon_rounded::<ROUND_BF16>(args),
        }
    }
}

/// [`Canon::round`] as a const parameter of [`canon_run`].
const ROUND_NONE: u8 = 0;
const ROUND_F16: u8 = 1;
const ROUND_BF16: u8 = 2;

/// [`canon_avx512`] for the rounding `R`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn canon_rounded<const R: u8>(args: CanonArgs<'_>) {
    let c = args.0;
    // an f32-stored list has no bf16 residual (`from_steps`)
    let residual = c.residual == Residual::F32;
    // SAFETY: the caller's (`canon_avx512`'s) guarantees, passed on unchanged.
    unsafe {
        match (!c.bias.is_empty(), residual, c.max.is_some(), c.min.is_some()) {
            (false, false, false, false) => canon_run::<false, false, false, false, R>(args),
            (false, false, false, true) => canon_run::<false, false, false, true, R>(args),
            (false, false, true, false) => canon_run::<false, false, true, false, R>(args),
            (false, false, true, true) => canon_run::<false, false, true, true, R>(args),
            (false, true, false, false) => canon_run::<false, true, false, false, R>(args),
            (false, true, false, true) => canon_run::<false, true, false, true, R>(args),
            (false, true, true, false) => canon_run::<false, true, true, false, R>(args),
            (false, true, true, true) => canon_run::<false, true, true, true, R>(args),
            (true, false, false, false) => canon_run::<true, false, false, false, R>(args),
            (true, false, false, true) => canon_run::<true, false, false, true, R>(args),
            (true, false, true, false) => canon_run::<true, false, true, false, R>(args),
            (true, false, true, true) => canon_run::<true, false, true, true, R>(args),
            (true, true, false, false) => canon_run::<true, true, false, false, R>(args),
            (true, true, false, true) => canon_run::<true, true, false, true, R>(args),
            (true, true, true, false) => canon_run::<true, true, true, false, R>(args),
            (true, true, true, true) => canon_run::<true, true, true, true, R>(args),
        }
    }
}

/// `v` rounded as `R` says (kept in f32).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn round_as<const R: u8>(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    match R {
        ROUND_F16 => round_f16(v),
        ROUND_BF16 => round_bf16(v),
        _ => v,
    }
}

/// The arguments of [`epilogue_f32`] with the canonical list.
type CanonArgs<'a> = (&'a Canon, *const f32, usize, usize, usize, usize, *mut f32, usize, *const f32);

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn canon_run<const BIAS: bool, const RES: bool, const MAX: bool, const MIN: bool, const R: u8>(
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
                    v = _mm512_add_ps(round_as::<R>(v), x);
                }
                if MAX {
                    let m = _mm512_castps_si512(_mm512_max_ps(maxv, v));
                    v = _mm512_castsi512_ps(_mm512_and_si512(m, maxand));
                }
                if MIN {
                    let m = _mm512_castps_si512(_mm512_min_ps(minv, v));
                    v = _mm512_castsi512_ps(_mm512_or_si512(m, minor));
                }
                v = round_as::<R>(v);
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

/// `v`, the f32 accumulators of one row's columns `col..col + 16` (column `col` of the layer,
/// which indexes the bias), through the canonical list `c` of an f32 store: the values
/// [`canon_run`] computes from a tile, bit for bit (the same operations in the same order). `res`
/// points at the row's residual element of column `col`, read in the lanes of `mask` (all of them
/// when it is full); unused without a residual step.
///
/// # Safety
/// The bias is padded past `col + 16`; with a residual step, `res` is readable in the lanes of
/// `mask`. The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn canon_in_registers(
    c: &Canon,
    mut v: std::arch::x86_64::__m512,
    col: usize,
    res: *const f32,
    mask: std::arch::x86_64::__mmask16,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let round = |v: __m512| match c.round {
        Round::None => v,
        Round::F16 => round_f16(v),
        Round::Bf16 => round_bf16(v),
    };
    // SAFETY: the caller's padding and residual guarantees.
    unsafe {
        if !c.bias.is_empty() {
            v = _mm512_add_ps(v, _mm512_loadu_ps(c.bias.as_ptr().add(col)));
        }
        if c.residual == Residual::F32 {
            let x = if mask == 0xffff { _mm512_loadu_ps(res) } else { _mm512_maskz_loadu_ps(mask, res) };
            v = _mm512_add_ps(round(v), x);
        }
    }
    if let Some((m, and)) = c.max {
        let r = _mm512_castps_si512(_mm512_max_ps(_mm512_set1_ps(m), v));
        v = _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(and as i32)));
    }
    if let Some((m, or)) = c.min {
        let r = _mm512_castps_si512(_mm512_min_ps(_mm512_set1_ps(m), v));
        v = _mm512_castsi512_ps(_mm512_or_si512(r, _mm512_set1_epi32(or as i32)));
    }
    round(v)
}

/// Sixteen zeros: what [`Lanes`] reads for an absent bias or residual (a masked load whose
/// address is not mapped, even with every lane masked off, costs a microcode assist on Intel
/// cores: MobileNetV2 ran 2.3x slower with the empty bias's dangling pointer).
#[cfg(target_arch = "x86_64")]
static ZEROS: [f32; 16] = [0.0; 16];

/// A canonical list of an f32 store without a rounding step, as the constants of a branch-free
/// pass over accumulators ([`Lanes::apply`]): an absent bias or residual is an add under an empty
/// mask (of zeros read from [`ZEROS`]), which leaves the value; an absent `fmax` is `vmaxps` with
/// -inf and an AND with all ones, an absent `fmin` `vminps` with +inf and an OR with 0 (`vmaxps`
/// and `vminps` return their second operand, the value, when it is NaN), so every value is
/// [`canon_in_registers`]'s bit for bit. The kernels' store loops then have no branch per
/// vector: with the list's tests per vector, a tenth of MobileNetV2's FP32 samples (`perf`) were
/// the GEMM's store loop.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lanes {
    bias: *const f32,
    /// 1 with a bias, 0 without (then `bias` is [`ZEROS`] whatever the column).
    bias_step: usize,
    bias_on: u16,
    res_on: u16,
    lo: f32,
    and: u32,
    hi: f32,
    or: u32,
}

/// How a kernel applies a canonical f32 list to its accumulators: branch-free ([`Lanes`]), or
/// by [`canon_in_registers`] for a list with a rounding step.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) enum RegisterEpilogue<'a> {
    Lanes(Lanes),
    Canon(&'a Canon),
}

#[cfg(target_arch = "x86_64")]
impl RegisterEpilogue<'_> {
    /// [`canon_in_registers`] of `v` (the same arguments), by this form.
    ///
    /// # Safety
    /// As [`canon_in_registers`]'s.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) unsafe fn apply(
        &self,
        v: std::arch::x86_64::__m512,
        col: usize,
        res: *const f32,
        mask: std::arch::x86_64::__mmask16,
    ) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's guarantees, passed on.
        unsafe {
            match self {
                RegisterEpilogue::Lanes(l) => l.apply(v, col, res, mask),
                RegisterEpilogue::Canon(c) => canon_in_registers(c, v, col, res, mask),
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Canon {
    /// The form a kernel applies this list in: [`Lanes`] where it has one.
    pub(crate) fn for_registers(&self) -> RegisterEpilogue<'_> {
        match self.lanes() {
            Some(l) => RegisterEpilogue::Lanes(l),
            None => RegisterEpilogue::Canon(self),
        }
    }

    /// The list as [`Lanes`], unless it rounds (to f16 or bf16) or adds a bf16 residual.
    pub(crate) fn lanes(&self) -> Option<Lanes> {
        if self.round != Round::None || self.residual == Residual::Bf16 {
            return None;
        }
        let (lo, and) = self.max.unwrap_or((f32::NEG_INFINITY, u32::MAX));
        let (hi, or) = self.min.unwrap_or((f32::INFINITY, 0));
        let has_bias = !self.bias.is_empty();
        Some(Lanes {
            bias: if has_bias { self.bias.as_ptr() } else { ZEROS.as_ptr() },
            bias_step: usize::from(has_bias),
            bias_on: if has_bias { 0xffff } else { 0 },
            res_on: if self.residual == Residual::F32 { 0xffff } else { 0 },
            lo,
            and,
            hi,
            or,
        })
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes {
    /// [`canon_in_registers`] of `v` (the same arguments), without a branch.
    ///
    /// # Safety
    /// As [`canon_in_registers`]'s.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) unsafe fn apply(
        &self,
        v: std::arch::x86_64::__m512,
        col: usize,
        res: *const f32,
        mask: std::arch::x86_64::__mmask16,
    ) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's padding and residual guarantees; without a bias the load reads
        // `ZEROS`, without a residual step it reads `ZEROS` under an empty mask.
        unsafe {
            let b = _mm512_loadu_ps(self.bias.add(col * self.bias_step));
            let v = _mm512_mask_add_ps(v, self.bias_on, v, b);
            let rm = mask & self.res_on;
            let res = if self.res_on == 0 { ZEROS.as_ptr() } else { res };
            let v = _mm512_mask_add_ps(v, rm, v, _mm512_maskz_loadu_ps(rm, res));
            let r = _mm512_castps_si512(_mm512_max_ps(_mm512_set1_ps(self.lo), v));
            let v = _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(self.and as i32)));
            let r = _mm512_castps_si512(_mm512_min_ps(_mm512_set1_ps(self.hi), v));
            _mm512_castsi512_ps(_mm512_or_si512(r, _mm512_set1_epi32(self.or as i32)))
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes {
    /// [`Lanes::apply`] on eight lanes (AVX2): the same operations in the same order, so the
    /// same bits; `valid` holds all ones in the lanes whose residual may be read.
    ///
    /// # Safety
    /// The CPU has AVX2; the bias is readable at `col..col + 8` (padded past the last column),
    /// and with a residual step `res` at the lanes of `valid`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn apply256(
        &self,
        v: std::arch::x86_64::__m256,
        col: usize,
        res: *const f32,
        valid: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's padding and residual guarantees; without a bias the load reads
        // `ZEROS` and the add is not taken (adding +0.0 would turn -0.0 positive).
        unsafe {
            let v = if self.bias_on != 0 { _mm256_add_ps(v, _mm256_loadu_ps(self.bias.add(col))) } else { v };
            let v = if self.res_on != 0 { _mm256_add_ps(v, _mm256_maskload_ps(res, valid)) } else { v };
            let r = _mm256_castps_si256(_mm256_max_ps(_mm256_set1_ps(self.lo), v));
            let v = _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(self.and as i32)));
            let r = _mm256_castps_si256(_mm256_min_ps(_mm256_set1_ps(self.hi), v));
            _mm256_castsi256_ps(_mm256_or_si256(r, _mm256_set1_epi32(self.or as i32)))
        }
    }
}

impl FloatEpilogue {
    /// Whether [`epilogue_f32_rows`] computes this list: any but a bf16-stored one.
    pub fn rows_form(&self) -> bool {
        !self.bf16
    }
}

/// Columns of a row [`epilogue_f32_rows`] takes at once.
const ROW_CHUNK: usize = 64;

/// The tile epilogue without the 512-bit kernel: [`epilogue_f32`]'s contract for a list stored
/// as f32 or bytes ([`FloatEpilogue::rows_form`]), each row in chunks of up to 64 columns, one
/// op at a time over the chunk (loops a compiler vectorizes, compiled for AVX2 by
/// [`qforge_ir::multiversion`]), a SiLU by one call of the sigmoid kernel per chunk: every value is
/// the definition's (its steps in order, each one IEEE operation or the definition's function;
/// an i32 accumulator's correction added wrapping and converted to nearest; a byte store's
/// rounding as [`round_lanes`]: NaN to 0, the clamp, half to even, the zero point, then the byte
/// table). A bf16-stored list is applied element by element by the scalar definition.
///
/// # Safety
/// As [`epilogue_f32`]'s ranges (without its CPU requirement).
pub unsafe extern "C" fn epilogue_f32_rows(
    p: *const FloatEpilogue,
    tile: *const f32,
    ldc: usize,
    rows: usize,
    n0: usize,
    nr: usize,
    out: *mut u8,
    out_stride: usize,
    res: *const u8,
) {
    // SAFETY: the caller guarantees `epilogue_f32`'s ranges: `rows` rows of `nr` floats of the tile at stride
    // `ldc`, of the output (and residual, unless null) at stride `out_stride` bytes; the slices below are
    // those rows' chunks.
    unsafe {
        let p = &*p;
        let ld = out_stride / 4;
        let res = res as *const f32;
        for r in 0..rows {
            let mut c0 = 0;
            while c0 < nr {
                let n = (nr - c0).min(ROW_CHUNK);
                let t = std::slice::from_raw_parts(tile.add(r * ldc + c0), n);
                let rs: &[f32] = if res.is_null() { &[] } else { std::slice::from_raw_parts(res.add(r * ld + c0), n) };
                if let Some(io) = p.int_out.as_ref().filter(|_| !p.bf16) {
                    let o = std::slice::from_raw_parts_mut(out.add(r * out_stride + c0), n);
                    let mut x = [0f32; ROW_CHUNK];
                    rows_chunk(p, t, n0 + c0, rs, &mut x[..n]);
                    round_to_bytes(io, &x[..n], n0 + c0, o);
                    c0 += n;
                    continue;
                }
                let o = std::slice::from_raw_parts_mut((out as *mut f32).add(r * ld + c0), n);
                if p.rows_form() {
                    rows_chunk(p, t, n0 + c0, rs, o);
                } else {
                    for j in 0..n {
                        o[j] = p.apply_scalar(t[j], n0 + c0 + j, rs.get(j).copied().unwrap_or(0.0));
                    }
                }
                c0 += n;
            }
        }
    }
}

qforge_ir::multiversion! {
    baseline = rows_chunk_baseline;
    /// One chunk of a row (see [`epilogue_f32_rows`]): `t` the accumulators of columns `col..`,
    /// `r` their residual (or empty), `o` the output.
    fn rows_chunk(p: &FloatEpilogue, t: &[f32], col: usize, r: &[f32], o: &mut [f32]) -> () {
        let n = t.len();
        let mut x = [0f32; ROW_CHUNK];
        let x = &mut x[..n];
        match &p.int_in {
            // an i32 accumulator (the tile's bits), its correction added wrapping, to nearest f32
            Some(corr) if corr.is_empty() => {
                x.iter_mut().zip(t).for_each(|(v, a)| *v = a.to_bits() as i32 as f32);
            }
            Some(corr) => x.iter_mut().zip(t).zip(&corr[col..col + n]).for_each(|((v, a), c)| {
                *v = (a.to_bits() as i32).wrapping_add(*c) as f32;
            }),
            None => x.copy_from_slice(t),
        }
        for op in &p.ops {
            match op {
                FloatOp::Div(d) => x.iter_mut().for_each(|v| *v /= d),
                FloatOp::AddChannel(b) => x.iter_mut().zip(&b[col..col + n]).for_each(|(v, b)| *v += b),
                FloatOp::AddResidual | FloatOp::AddResidualBf16 => x.iter_mut().zip(r).for_each(|(v, r)| *v += r),
                FloatOp::Max(c) => x.iter_mut().for_each(|v| *v = fmax(*v, *c)),
                FloatOp::Min(c) => x.iter_mut().for_each(|v| *v = fmin(*v, *c)),
                FloatOp::RoundBf16 => x.iter_mut().for_each(|v| *v = half::bf16::from_f32(*v).to_f32()),
                FloatOp::RoundF16 => x.iter_mut().for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
                FloatOp::Mul(m) => x.iter_mut().zip(&m[col..col + n]).for_each(|(v, m)| *v *= m),
                // the same f32 as `hard_swish` on every input, without a division
                FloatOp::HardSwish => x.iter_mut().for_each(|v| *v = crate::spec::hard_swish_by_mul(*v)),
                FloatOp::Silu => {
                    let mut s = [0f32; ROW_CHUNK];
                    super::transcendental::map(qforge_ir::UnaryOp::Sigmoid, x, &mut s[..n]);
                    x.iter_mut().zip(&s).for_each(|(v, s)| *v *= s);
                }
            }
        }
        o.copy_from_slice(x);
    }
}

qforge_ir::multiversion! {
    baseline = round_to_bytes_baseline;
    /// A byte store's end of [`epilogue_f32_rows`] for the values `x` of columns `col..`: the
    /// rounding of [`round_lanes`] (NaN to 0, the clamp to the range less the zero point, half
    /// to even, the zero point), the byte table if any, the low byte stored.
    fn round_to_bytes(io: &IntOut, x: &[f32], col: usize, o: &mut [u8]) -> () {
        let (lo, hi) = (io.lo.saturating_sub(io.zp) as f32, io.hi.saturating_sub(io.zp) as f32);
        let round = |v: f32| {
            let v = if v.is_nan() { 0.0 } else { v };
            (v.max(lo).min(hi).round_ties_even() as i32).wrapping_add(io.zp)
        };
        // one loop per table form, so the plain rounding's loop vectorizes
        match &io.table {
            ByteTable::None => o.iter_mut().zip(x).for_each(|(b, &v)| *b = round(v) as u8),
            ByteTable::Vbmi(t) => o.iter_mut().zip(x).for_each(|(b, &v)| *b = t[(round(v) & 0xff) as usize]),
            ByteTable::Gather { table, per_channel } => {
                for (j, (b, &v)) in o.iter_mut().zip(x).enumerate() {
                    let chan = if *per_channel { (col + j) * 256 } else { 0 };
                    *b = table[chan + (round(v) & 0xff) as usize] as u8;
                }
            }
        }
    }
}

/// The tile epilogue generated code calls (`qf_epi_f32`): [`epilogue_f32`] on a CPU with
/// AVX-512F (and, for a bf16 store, BW and VL), else [`epilogue_f32_rows`] (the emitter selects
/// only lists of its form there).
///
/// # Safety
/// As [`epilogue_f32`]'s ranges.
pub unsafe extern "C" fn epilogue_f32_any(
    p: *const FloatEpilogue,
    tile: *const f32,
    ldc: usize,
    rows: usize,
    n0: usize,
    nr: usize,
    out: *mut u8,
    out_stride: usize,
    res: *const u8,
) {
    // SAFETY: the caller's ranges; the 512-bit kernel runs only where `available` says it does.
    unsafe {
        let store = if (*p).bf16 { Store::Bf16 } else { Store::F32 };
        if available(store) {
            epilogue_f32(p, tile, ldc, rows, n0, nr, out, out_stride, res)
        } else {
            epilogue_f32_rows(p, tile, ldc, rows, n0, nr, out, out_stride, res)
        }
    }
}

impl FloatEpilogue {
    /// Whether the list is an f32 list applied in registers without a rounding step or a bf16
    /// residual (bias, f32 residual, bounds): the form the AVX2 kernels apply themselves.
    pub fn lanes_form(&self) -> bool {
        self.in_registers().is_some_and(|c| c.round == Round::None && c.residual != Residual::Bf16)
    }
}

/// [`canon_avx512`] for a list stored as bf16, whose residual (if any) is bf16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn canon_bf16(
    c: &Canon,
    tile: *const f32,
    ldc: usize,
    rows: usize,
    n0: usize,
    nr: usize,
    out: *mut u8,
    out_stride: usize,
    res: *const u8,
) {
    // SAFETY: `epilogue_avx512`'s ranges (the caller's contract), which `canon_bf16_run` keeps;
    // the target features are enabled on this function and checked by `available`.
    unsafe {
        let args = (c, tile, ldc, rows, n0, nr, out, out_stride, res);
        // a bf16-stored list has no f32 residual (`from_steps`)
        let residual = c.residual == Residual::Bf16;
        match (!c.bias.is_empty(), residual, c.max.is_some(), c.min.is_some()) {
            (false, false, false, false) => canon_bf16_run::<false, false, false, false>(args),
            (false, false, false, true) => canon_bf16_run::<false, false, false, true>(args),
            (false, false, true, false) => canon_bf16_run::<false, false, true, false>(args),
            (false, false, true, true) => canon_bf16_run::<false, false, true, true>(args),
            (false, true, false, false) => canon_bf16_run::<false, true, false, false>(args),
            (false, true, false, true) => canon_bf16_run::<false, true, false, true>(args),
            (false, true, true, false) => canon_bf16_run::<false, true, true, false>(args),
            (false, true, true, true) => canon_bf16_run::<false, true, true, true>(args),
            (true, false, false, false) => canon_bf16_run::<true, false, false, false>(args),
            (true, false, false, true) => canon_bf16_run::<true, false, false, true>(args),
            (true, false, true, false) => canon_bf16_run::<true, false, true, false>(args),
            (true, false, true, true) => canon_bf16_run::<true, false, true, true>(args),
            (true, true, false, false) => canon_bf16_run::<true, true, false, false>(args),
            (true, true, false, true) => canon_bf16_run::<true, true, false, true>(args),
            (true, true, true, false) => canon_bf16_run::<true, true, true, false>(args),
            (true, true, true, true) => canon_bf16_run::<true, true, true, true>(args),
        }
    }
}

/// The arguments of [`epilogue_f32`] with the canonical list, for a bf16 output.
type CanonBf16Args<'a> = (&'a Canon, *const f32, usize, usize, usize, usize, *mut u8, usize, *const u8);

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn canon_bf16_run<const BIAS: bool, const RES: bool, const MAX: bool, const MIN: bool>(
    (c, tile, ldc, rows, n0, nr, out, out_stride, res): CanonBf16Args<'_>,
) {
    // SAFETY: as `canon_run`, with 2-byte output and residual elements: residual loads and output
    // stores are masked to columns below `nr` of rows below `rows`.
    unsafe {
        use std::arch::x86_64::*;
        let (maxv, maxand) = c.max.map_or((0.0, 0), |(m, a)| (m, a));
        let (minv, minor) = c.min.map_or((0.0, 0), |(m, o)| (m, o));
        let (maxv, maxand) = (_mm512_set1_ps(maxv), _mm512_set1_epi32(maxand as i32));
        let (minv, minor) = (_mm512_set1_ps(minv), _mm512_set1_epi32(minor as i32));
        let mut j = 0;
        while j < nr {
            let left = nr - j;
            let mask: __mmask16 = if left >= 16 { 0xffff } else { (1u16 << left) - 1 };
            let b = if BIAS { _mm512_loadu_ps(c.bias.as_ptr().add(n0 + j)) } else { _mm512_setzero_ps() };
            for r in 0..rows {
                let mut v = _mm512_loadu_ps(tile.add(r * ldc + j));
                if BIAS {
                    v = _mm512_add_ps(v, b);
                }
                if RES {
                    v = _mm512_add_ps(round_bf16(v), load_bf16(res.add(r * out_stride + 2 * j), mask));
                }
                if MAX {
                    let m = _mm512_castps_si512(_mm512_max_ps(maxv, v));
                    v = _mm512_castsi512_ps(_mm512_and_si512(m, maxand));
                }
                if MIN {
                    let m = _mm512_castps_si512(_mm512_min_ps(minv, v));
                    v = _mm512_castsi512_ps(_mm512_or_si512(m, minor));
                }
                store_bf16(out.add(r * out_stride + 2 * j), mask, v);
            }
            j += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the kernel runs on this CPU for `store`; under `CI=true` a CPU without it fails
    /// the test instead of letting it pass having checked nothing.
    fn runs(store: Store) -> bool {
        let ok = available(store);
        assert!(ok || std::env::var("CI").as_deref() != Ok("true"), "this test needs AVX-512F (bf16: also BW and VL)");
        ok
    }

    /// The scalar definition's `fmax`/`fmin` on signed zeros and NaN (Cranelift's rules).
    #[test]
    fn bounds_order_signed_zeros_and_propagate_nan() {
        assert!(fmax(-0.0, 0.0).is_sign_positive() && fmax(0.0, -0.0).is_sign_positive());
        assert!(fmin(-0.0, 0.0).is_sign_negative() && fmin(0.0, -0.0).is_sign_negative());
        assert!(fmax(f32::NAN, 1.0).is_nan() && fmin(1.0, f32::NAN).is_nan());
        assert_eq!((fmax(-3.0, 0.0), fmin(7.0, 6.0)), (0.0, 6.0));
        assert!(FloatEpilogue::from_steps(&[Step::MaxF32(f32::NAN)], Store::F32).is_none());
        assert!(FloatEpilogue::from_steps(&[Step::AddResidualBf16], Store::F32).is_none());
        assert!(FloatEpilogue::from_steps(&[Step::AddResidualF32], Store::Bf16).is_none());
        assert!(FloatEpilogue::from_steps(&[Step::MaxF32(0.0)], Store::U8).is_none());
    }

    /// Every step on special values (signed zeros, NaN, infinities, bounds' neighbours) and on a
    /// ragged tile, the vector kernel against the scalar definition bit for bit (NaN as NaN), on
    /// a CPU with AVX-512F (the kernel is never selected elsewhere).
    #[test]
    fn vector_kernel_matches_the_definition() {
        let lists: Vec<Vec<Step>> = if runs(Store::F32) { test_lists() } else { Vec::new() };
        let specials = [0.0f32, -0.0, 1.0, -1.0, 6.0, 6.0000005, 5.9999995, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        let (rows, ldc) = (5usize, 48usize);
        for steps in &lists {
            let p = FloatEpilogue::from_steps(steps, Store::F32).expect("a float list");
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
                    let (o, r) = (out.as_mut_ptr() as *mut u8, resid.as_ptr() as *const u8);
                    epilogue_f32(&p, tile.as_ptr(), ldc, rows, n0, nr, o, stride * 4, r);
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

    /// A bf16-stored epilogue on special values, on ties and near-ties of the bf16 rounding (an
    /// f32 whose low 16 bits are `0x8000`, `0x7fff`, `0x8001`, with both parities of the kept
    /// bits), subnormals, the largest values that round to infinity, and a ragged tile: the
    /// canonical versions and the step-by-step loop (a list of another order) against the scalar
    /// definition rounded by `half::bf16::from_f32`, bit for bit (NaN as NaN), on a CPU with
    /// AVX-512F, BW and VL (the kernel is never selected elsewhere).
    #[test]
    fn bf16_store_matches_the_definition() {
        let bias: Vec<f32> = (0..40).map(|i| f32::from_bits(0x3f80_8000 + (i as u32 % 4) * 0x1_0000) - 1.0).collect();
        let lists: Vec<Vec<Step>> = if runs(Store::Bf16) {
            vec![
                vec![],
                vec![Step::AddChannelF32(bias.clone())],
                vec![Step::AddChannelF32(bias.clone()), Step::MaxF32(0.0), Step::MinF32(6.0)],
                vec![Step::AddChannelF32(bias.clone()), Step::RoundBf16, Step::AddResidualBf16],
                vec![Step::RoundBf16, Step::AddResidualBf16, Step::MaxF32(0.0)],
                vec![
                    Step::AddChannelF32(bias),
                    Step::RoundBf16,
                    Step::AddResidualBf16,
                    Step::MaxF32(-0.0),
                    Step::MinF32(6.0),
                ],
                // not canonical: the step-by-step loop
                vec![Step::MaxF32(0.0), Step::RoundBf16, Step::AddResidualBf16, Step::MinF32(0.5)],
                vec![Step::DivF32(3.0), Step::RoundBf16],
            ]
        } else {
            Vec::new()
        };
        let bits = [
            0x3f80_8000u32,
            0x3f81_8000,
            0x3f80_7fff,
            0x3f80_8001,
            0xbf80_8000,
            0xbf81_8000,
            0x0000_8000,
            0x0001_8000,
            0x8000_7fff,
            0x7f7f_8000,
            0x7f7f_7fff,
            0xff7f_8000,
            0x7fc0_0001,
            0xffa0_0000,
            0x7f80_0000,
            0x4000_0000,
        ];
        let specials = [0.0f32, -0.0, 1.0, -1.0, 6.0, 6.0000005, 5.9999995, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        let (rows, ldc) = (5usize, 48usize);
        for steps in &lists {
            let p = FloatEpilogue::from_steps(steps, Store::Bf16).expect("a bf16 list");
            for (n0, nr) in [(0usize, 40usize), (3, 17), (0, 5), (8, 32), (0, 24)] {
                let tile: Vec<f32> = (0..rows * ldc)
                    .map(|i| match i % 3 {
                        0 => specials[i % specials.len()],
                        1 => f32::from_bits(bits[(i / 3) % bits.len()]),
                        _ => (i as f32 - 100.0) * 0.0625,
                    })
                    .collect();
                let stride = 41usize;
                let resid: Vec<u16> = (0..rows * stride)
                    .map(|i| half::bf16::from_f32(specials[(i * 7) % specials.len()]).to_bits())
                    .collect();
                let mut out = vec![0x1234u16; rows * stride];
                // SAFETY: the tile holds `rows` rows of `ldc` floats, the output and residual `rows`
                // rows of `stride >= nr` bf16 values; per-channel arrays cover 40 columns padded to 64.
                unsafe {
                    let (o, r) = (out.as_mut_ptr() as *mut u8, resid.as_ptr() as *const u8);
                    epilogue_f32(&p, tile.as_ptr(), ldc, rows, n0, nr, o, stride * 2, r);
                }
                for r in 0..rows {
                    for j in 0..stride {
                        let got = half::bf16::from_bits(out[r * stride + j]);
                        if j >= nr {
                            assert_eq!(got.to_bits(), 0x1234, "a column past nr was written");
                            continue;
                        }
                        let res = half::bf16::from_bits(resid[r * stride + j]).to_f32();
                        let want = half::bf16::from_f32(p.apply_scalar(tile[r * ldc + j], n0 + j, res));
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
        let odd: Vec<f32> = (0..40).map(|i| i as f32 * 0.1 - 1.7).collect();
        vec![
            vec![Step::AddChannelF32((0..40).map(|i| i as f32 * 0.25 - 3.0).collect()), Step::MaxF32(0.0)],
            vec![Step::MaxF32(0.0), Step::MinF32(6.0)],
            vec![Step::MaxF32(-0.0), Step::MinF32(-0.0)],
            vec![Step::MinF32(0.0), Step::MaxF32(-1.5)],
            vec![Step::DivF32(49.0), Step::AddResidualF32, Step::MaxF32(0.0)],
            vec![Step::AddChannelF32(vec![0.5; 40]), Step::AddResidualF32, Step::MaxF32(0.0), Step::MinF32(6.0)],
            vec![
                Step::AddChannelF32(vec![0.25; 40]),
                Step::HardSwish,
                Step::MulChannelF32((0..40).map(|i| 1.1 - i as f32 * 0.05).collect()),
                Step::AddChannelF32(vec![-0.125; 40]),
            ],
            vec![Step::HardSwish, Step::AddResidualF32],
            vec![Step::AddChannelF32(vec![0.5; 40]), Step::Silu, Step::AddResidualF32, Step::MaxF32(0.0)],
            vec![Step::Silu],
            // the canonical lists of f16/bf16 ops computed in f32 (inexact biases, so that
            // the roundings round), and others
            vec![Step::AddChannelF32(odd.clone()), Step::MaxF32(0.0), Step::MinF32(6.0), Step::RoundF16],
            vec![
                Step::AddChannelF32(odd.clone()),
                Step::RoundF16,
                Step::AddResidualF32,
                Step::MaxF32(0.0),
                Step::RoundF16,
            ],
            vec![Step::RoundBf16, Step::AddResidualF32, Step::RoundBf16],
            vec![Step::AddChannelF32(odd.clone()), Step::RoundBf16],
            vec![Step::AddChannelF32(odd), Step::RoundF16, Step::AddResidualF32],
            vec![Step::AddResidualF32, Step::RoundF16, Step::MaxF32(0.0)],
            vec![Step::DivF32(3.0), Step::RoundBf16, Step::AddResidualF32, Step::RoundBf16],
        ]
    }

    /// The row-wise tile epilogue (the kernel of CPUs without AVX-512) is the scalar definition
    /// on every f32 list of [`test_lists`] (bias, bounds with signed zeros, division, residual,
    /// hard-swish, SiLU, f16/bf16 roundings): rows wider than one chunk and ending mid-chunk, a
    /// first column off zero, tiles with NaN, infinities and signed zeros; nothing past `nr` in
    /// an output row written. A NaN is any NaN (the definition's `fmax` returns the canonical
    /// one). Runs on every CPU.
    #[test]
    fn row_wise_kernel_matches_the_definition() {
        for steps in test_lists() {
            let p = FloatEpilogue::from_steps(&steps, Store::F32).expect("an f32 list");
            assert!(p.rows_form());
            for (rows, nr, n0) in [(3usize, 5usize, 0usize), (2, 64, 0), (4, 39, 1), (2, 130, 0)] {
                let ldc = nr + 7;
                let ld = nr + 3;
                let mut tile: Vec<f32> = (0..rows * ldc).map(|i| ((i * 7919) % 2001) as f32 * 0.01 - 10.0).collect();
                tile[0] = f32::NAN;
                tile[1.min(nr - 1)] = -0.0;
                tile[ldc] = f32::INFINITY;
                tile[ldc + 2.min(nr - 1)] = f32::NEG_INFINITY;
                let res: Vec<f32> = (0..rows * ld).map(|i| ((i * 104_729) % 997) as f32 * 0.02 - 9.0).collect();
                let mut out = vec![7.5f32; rows * ld];
                // the lists' per-channel arrays cover 40 columns (padded): wider rows only without one
                let fits = steps.iter().all(|s| match s {
                    Step::AddChannelF32(v) | Step::MulChannelF32(v) => n0 + nr <= v.len().div_ceil(16) * 16 + 16,
                    _ => true,
                });
                if !fits {
                    continue;
                }
                // SAFETY: `rows` rows of `nr` floats of the tile at stride `ldc`, of the output and the
                // residual at stride `ld`; the per-channel arrays cover `n0 + nr` (checked above).
                unsafe {
                    epilogue_f32_rows(
                        &p,
                        tile.as_ptr(),
                        ldc,
                        rows,
                        n0,
                        nr,
                        out.as_mut_ptr() as *mut u8,
                        ld * 4,
                        res.as_ptr() as *const u8,
                    )
                };
                for r in 0..rows {
                    for j in 0..ld {
                        let got = out[r * ld + j];
                        if j >= nr {
                            assert_eq!(got, 7.5, "{steps:?}: wrote past nr at row {r} col {j}");
                            continue;
                        }
                        let want = p.apply_scalar(tile[r * ldc + j], n0 + j, res[r * ld + j]);
                        assert!(
                            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                            "{steps:?} {rows}x{nr}+{n0}: row {r} col {j}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// The lists of an f16/bf16 op computed in f32 that the lowering forms run the compiled
    /// canonical versions; a rounding before the residual without one at the end does not.
    #[test]
    fn rounded_lists_are_canonical() {
        let b = vec![0.5f32; 16];
        let canon = |steps: &[Step]| FloatEpilogue::from_steps(steps, Store::F32).and_then(|p| p.canon);
        let (f16, bf16) = (Step::RoundF16, Step::RoundBf16);
        let res = Step::AddResidualF32;
        let bias = Step::AddChannelF32(b);
        assert_eq!(canon(&[bias.clone(), Step::MaxF32(0.0), f16.clone()]).map(|c| c.round), Some(Round::F16));
        let c = canon(&[bias.clone(), bf16.clone(), res.clone(), Step::MaxF32(0.0), bf16.clone()]);
        assert_eq!(c.map(|c| (c.round, c.residual)), Some((Round::Bf16, Residual::F32)));
        assert!(canon(&[bias.clone(), f16.clone(), res.clone()]).is_none());
        assert!(canon(&[bias.clone(), res.clone(), f16.clone()]).is_none());
        assert!(canon(&[bias, f16, res, bf16]).is_none());
    }

    /// The f16 rounding kept in f32 ([`Step::RoundF16`], `vcvtps2ph` then `vcvtph2ps`) against
    /// `half::f16` on the cases that decide it: ties of the 13 dropped bits with both parities of
    /// the kept ones and their neighbours, the f16 subnormal range (down to ties at half the
    /// smallest subnormal), the largest finite f16 and the first value that rounds to infinity,
    /// infinities and NaN payloads; bit for bit, NaN included.
    #[test]
    fn f16_rounding_matches_the_half_crate() {
        if !runs(Store::F32) {
            return;
        }
        let mut bits = Vec::new();
        for base in [0x3f80_0000u32, 0x3f80_2000, 0x4780_0000 - 0x4000, 0x3880_0000, 0x3300_0000, 0x3380_0000] {
            for low in [0x0fffu32, 0x1000, 0x1001, 0x0, 0x1fff] {
                for sign in [0, 0x8000_0000] {
                    bits.push((base + low) | sign);
                }
            }
        }
        bits.extend([
            0x477f_efffu32, // just below 65520: 65504
            0x477f_f000,    // 65520: a tie that rounds to infinity
            0xc77f_f000,
            0x3800_0000, // 2^-15, an f16 subnormal
            0x3380_0000, // 2^-24, the smallest f16 subnormal
            0x3300_0000, // 2^-25: a tie that rounds to 0
            0x3300_0001,
            0x0000_0001,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0x7f80_0001, // a signalling NaN, quieted
            0xffc0_1fff,
            0x7fff_ffff,
        ]);
        let p = FloatEpilogue::from_steps(&[Step::RoundF16], Store::F32).expect("a float list");
        let ldc = bits.len().div_ceil(16) * 16;
        let mut tile = vec![0f32; ldc];
        for (t, b) in tile.iter_mut().zip(&bits) {
            *t = f32::from_bits(*b);
        }
        let mut out = vec![0f32; bits.len()];
        // SAFETY: one row of `ldc` floats; the output holds `bits.len()` floats; no residual.
        unsafe {
            epilogue_f32(&p, tile.as_ptr(), ldc, 1, 0, bits.len(), out.as_mut_ptr() as *mut u8, 0, std::ptr::null())
        };
        for (b, got) in bits.iter().zip(&out) {
            let want = half::f16::from_f32(f32::from_bits(*b)).to_f32();
            assert_eq!(got.to_bits(), want.to_bits(), "{b:#010x}: {got} vs {want}");
        }
    }

    /// A SiLU list on rows wider than the row loop's buffer (column chunks) and on narrow ones
    /// (several rows per buffer), an i32 tile rounded to bytes and an f32 one, against the
    /// definition.
    #[test]
    fn silu_lists_on_wide_and_narrow_tiles() {
        use crate::spec::{apply_scalar, Acc, Lane};
        if !runs(Store::U8) {
            return;
        }
        for (cols, rows) in [(600usize, 3usize), (8, 70), (40, 30)] {
            let ldc = cols.div_ceil(16) * 16;
            let m: Vec<f32> = (0..cols).map(|i| 1e-3 * (1.0 + (i % 7) as f32)).collect();
            let int_list = vec![
                Step::AddChannelI32((0..cols as i32).map(|i| i * 31 - 500).collect()),
                Step::ScaleToF32(m.clone()),
                Step::Silu,
                Step::DivF32(0.02),
                Step::RoundToInt { zp: 7, lo: 0, hi: 255, bounded: false },
            ];
            let float_list = vec![Step::MulChannelF32(m), Step::Silu, Step::AddChannelF32(vec![0.25; cols])];
            for (steps, acc, store) in [(int_list, Acc::I32, Store::U8), (float_list, Acc::F32, Store::F32)] {
                let p = FloatEpilogue::from_kernel(acc, &steps, store).expect("a SiLU list");
                let tile: Vec<i32> = (0..rows * ldc)
                    .map(|i| {
                        let v = (i as i32 % 4001 - 2000) * 37;
                        if acc == Acc::I32 {
                            v
                        } else {
                            (v as f32 * 1e-3).to_bits() as i32
                        }
                    })
                    .collect();
                let es = store.bytes();
                let mut out = vec![0u8; rows * cols * es];
                // SAFETY: `rows` rows of `ldc >= cols` elements in the tile, of `cols` in the
                // output; per-channel arrays of `cols` values (padded by `from_kernel`).
                unsafe {
                    let t = tile.as_ptr() as *const f32;
                    epilogue_f32(&p, t, ldc, rows, 0, cols, out.as_mut_ptr(), cols * es, std::ptr::null());
                }
                for r in 0..rows {
                    for c in 0..cols {
                        let a = tile[r * ldc + c];
                        let at = (r * cols + c) * es;
                        if acc == Acc::I32 {
                            match apply_scalar(&steps, a, c) {
                                Some(Lane::I(w)) => assert_eq!(out[at], w as u8, "row {r} col {c}"),
                                other => panic!("the integer list's definition gave {other:?}"),
                            }
                        } else {
                            // the f32 list: the definition from the f32 accumulator
                            let want = p.apply_scalar(f32::from_bits(a as u32), c, 0.0);
                            let got = f32::from_le_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
                            assert_eq!(got.to_bits(), want.to_bits(), "row {r} col {c}");
                        }
                    }
                }
            }
        }
    }

    /// The quantized SiLU (dequantize, SiLU, divide by the scale, round) against the definition
    /// bit for bit: inputs on a fine grid across `[-45, 45]` and across `[-8, 8]`, scales that
    /// put the results inside the byte range, across it and past it, whole and partial column
    /// blocks; inputs around every rounding boundary of the result (where a sigmoid one ulp off
    /// the contract's changes the byte).
    #[test]
    fn quantized_silu_is_the_definition() {
        use crate::spec::{apply_scalar, Acc, Lane};
        if !runs(Store::U8) {
            return;
        }
        // the list with `m` per accumulator over `cols` columns, on `accs` (rows of `ldc`):
        // every byte against the definition's
        let check = |m: f32, scale: f32, zp: i32, store: Store, accs: &[i32], ldc: usize, cols: usize| {
            let (lo, hi) = if store == Store::U8 { (0, 255) } else { (-128, 127) };
            let steps = vec![
                Step::ScaleToF32(vec![m; cols]),
                Step::Silu,
                Step::DivF32(scale),
                Step::RoundToInt { zp, lo, hi, bounded: false },
            ];
            let p = FloatEpilogue::from_kernel(Acc::I32, &steps, store).expect("a quantized SiLU list");
            let rows = accs.len() / ldc;
            let mut out = vec![0u8; rows * cols];
            // SAFETY: `rows` rows of `ldc >= cols` accumulators, of `cols` output bytes.
            unsafe {
                epilogue_f32(
                    &p,
                    accs.as_ptr() as *const f32,
                    ldc,
                    rows,
                    0,
                    cols,
                    out.as_mut_ptr(),
                    cols,
                    std::ptr::null(),
                )
            };
            for r in 0..rows {
                for c in 0..cols {
                    let a = accs[r * ldc + c];
                    match apply_scalar(&steps, a, c) {
                        Some(Lane::I(w)) => assert_eq!(out[r * cols + c], w as u8, "scale {scale}: accumulator {a}"),
                        other => panic!("the definition gave {other:?}"),
                    }
                }
            }
        };
        // half the rows across [-45, 45], half across [-8, 8] (where activations are)
        let (rows, ldc) = (20_000usize, 48usize);
        let tile: Vec<i32> = (0..rows * ldc)
            .map(|i| {
                if i < rows * ldc / 2 {
                    ((i as i64 * 9377) % 900_001 - 450_000) as i32
                } else {
                    ((i as i64 * 7919) % 160_001 - 80_000) as i32
                }
            })
            .collect();
        for (scale, zp, store) in [(0.02f32, 7, Store::U8), (0.05, -20, Store::I8), (0.0037, 0, Store::U8)] {
            check(1e-4, scale, zp, store, &tile, ldc, 40);
        }
        // near the rounding boundaries: for each half-integer `k + 1/2` of the result, the
        // accumulators around the `x` (on a grid of 1e-7) where `x * sigmoid(x) / scale` meets
        // it, so that the f32 rounding of the sigmoid decides bytes; every one checked
        let m = 1e-7f32;
        for (scale, zp) in [(0.02f32, 7), (0.05, 0), (0.0037, 3)] {
            let silu = |x: f64| x / (1.0 + (-x).exp());
            let mut accs: Vec<i32> = Vec::new();
            for k in 0..(255 - zp) {
                let target = (k as f64 + 0.5) * scale as f64;
                let (mut lo, mut hi) = (0.0f64, 60.0f64);
                for _ in 0..80 {
                    let mid = 0.5 * (lo + hi);
                    if silu(mid) < target {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                let a = (lo / m as f64).round() as i64;
                if a.abs() < i32::MAX as i64 - 64 {
                    accs.extend((-24..24).map(|d| (a + d) as i32));
                }
            }
            accs.resize(accs.len().div_ceil(16) * 16, 0);
            check(m, scale, zp, Store::U8, &accs, 16, 16);
        }
    }

    /// Lists of an i32 accumulator (a quantized kernel's dequantization and the float steps after
    /// it, stored as f32 or rounded back to u8/i8) on accumulators of every size, the extremes
    /// among them, and a ragged tile: the row-wise kernel, and the 512-bit one on a CPU with
    /// AVX-512F, against [`crate::spec::apply_scalar`] bit for bit (NaN as NaN).
    #[test]
    fn integer_accumulators_match_the_definition() {
        use crate::spec::{apply_scalar, Acc, Lane};
        type Kernel = unsafe extern "C" fn(
            *const FloatEpilogue,
            *const f32,
            usize,
            usize,
            usize,
            usize,
            *mut u8,
            usize,
            *const u8,
        );
        // the row-wise kernel everywhere, the 512-bit one where the CPU has it
        let mut kernels: Vec<(Kernel, &str)> = vec![(epilogue_f32_rows, "rows")];
        if available(Store::U8) {
            kernels.push((epilogue_f32, "avx512"));
        }
        let corr: Vec<i32> = (0..40).map(|i| (i - 20) * 977).collect();
        let m: Vec<f32> = (0..40).map(|i| 1e-4 * (1.0 + i as f32 * 0.37)).collect();
        let lists: Vec<(Vec<Step>, Store)> = vec![
            (
                vec![
                    Step::AddChannelI32(corr.clone()),
                    Step::ScaleToF32(m.clone()),
                    Step::HardSwish,
                    Step::MulChannelF32(vec![1.1; 40]),
                    Step::DivF32(0.0396),
                    Step::RoundToInt { zp: 10, lo: 0, hi: 255, bounded: false },
                ],
                Store::U8,
            ),
            (
                vec![
                    Step::AddChannelI32(corr.clone()),
                    Step::ScaleToF32(m.iter().map(|x| x * 40.0).collect()),
                    Step::RoundToInt { zp: -3, lo: -128, hi: 127, bounded: false },
                ],
                Store::I8,
            ),
            (
                vec![
                    Step::AddChannelI32(corr.clone()),
                    Step::ScaleToF32(m.clone()),
                    Step::MaxF32(0.0),
                    Step::MinF32(6.0),
                ],
                Store::F32,
            ),
            (vec![Step::ScaleToF32(m.clone()), Step::HardSwish], Store::F32),
            (
                vec![
                    Step::AddChannelI32(corr.clone()),
                    Step::ScaleToF32(m.iter().map(|x| x * 40.0).collect()),
                    Step::RoundToInt { zp: 3, lo: 0, hi: 255, bounded: false },
                    Step::Lut8 {
                        table: (0..256).map(|b| (b * 7 + 3) as u8).collect(),
                        per_channel: false,
                        signed: false,
                    },
                ],
                Store::U8,
            ),
            (
                vec![
                    Step::AddChannelI32(corr.clone()),
                    Step::ScaleToF32(m.iter().map(|x| x * 40.0).collect()),
                    Step::HardSwish,
                    Step::DivF32(0.5),
                    Step::RoundToInt { zp: -5, lo: -128, hi: 127, bounded: false },
                    Step::Lut8 {
                        table: (0..40 * 256).map(|i| (i * 13 + i / 256) as u8).collect(),
                        per_channel: true,
                        signed: true,
                    },
                ],
                Store::I8,
            ),
            (
                vec![
                    Step::ScaleToF32(vec![f32::INFINITY; 40]),
                    Step::RoundToInt { zp: 0, lo: 0, hi: 255, bounded: false },
                ],
                Store::U8,
            ),
        ];
        let (rows, ldc) = (5usize, 48usize);
        let extremes = [0, 1, -1, i32::MAX, i32::MIN, 12_345_678, -9_876_543, 30_000, -30_000];
        for (steps, store) in &lists {
            let p = FloatEpilogue::from_kernel(Acc::I32, steps, *store).expect("a list the kernel takes");
            // a single table by VBMI permutes (where the CPU has them) and by the gather
            let mut gather = p.clone();
            if let Some(io) = gather.int_out.as_mut() {
                if let ByteTable::Vbmi(t) = &io.table {
                    io.table = ByteTable::gather(t, false);
                }
            }
            for ((p, (n0, nr)), (kern, kname)) in [&p, &gather]
                .into_iter()
                .flat_map(|p| [(0usize, 40usize), (3, 17), (0, 5), (8, 32)].into_iter().map(move |c| (p, c)))
                .flat_map(|c| kernels.iter().map(move |k| (c, *k)))
            {
                let tile: Vec<i32> = (0..rows * ldc)
                    .map(|i| if i % 4 == 0 { extremes[i % extremes.len()] } else { (i as i32 - 120) * 2_531 })
                    .collect();
                let (stride, es) = (41usize, store.bytes());
                let mut out = vec![0xA5u8; rows * stride * es];
                // SAFETY: the tile holds `rows` rows of `ldc` i32, the output `rows` rows of
                // `stride >= nr` elements; per-channel arrays cover 40 columns padded to 64.
                unsafe {
                    let t = tile.as_ptr() as *const f32;
                    kern(p, t, ldc, rows, n0, nr, out.as_mut_ptr(), stride * es, std::ptr::null());
                }
                for r in 0..rows {
                    for j in 0..stride {
                        let at = (r * stride + j) * es;
                        let got = &out[at..at + es];
                        if j >= nr {
                            assert!(got.iter().all(|&b| b == 0xA5), "a column past nr was written");
                            continue;
                        }
                        let want = apply_scalar(steps, tile[r * ldc + j], n0 + j).expect("no residual");
                        match (want, store) {
                            (Lane::I(w), Store::U8 | Store::I8) => {
                                // the definition's lane is in the stored type's range (so the
                                // portable epilogue's saturating narrowing is exact)
                                let range = if *store == Store::I8 { -128..=127 } else { 0..=255 };
                                assert!(range.contains(&w), "{steps:?}: lane {w} outside the store's range");
                                assert_eq!(
                                    got[0],
                                    w as u8,
                                    "{kname} {steps:?} row {r} col {j}: acc {}",
                                    tile[r * ldc + j]
                                )
                            }
                            (Lane::F(w), Store::F32) => {
                                let g = f32::from_le_bytes([got[0], got[1], got[2], got[3]]);
                                assert!(
                                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                                    "{kname} {steps:?} row {r} col {j}: {g} vs {w}"
                                );
                            }
                            other => panic!("unexpected lane and store {other:?}"),
                        }
                    }
                }
            }
        }
        // lists the kernel does not take: integer steps after a float one, no rounding before a
        // byte store, an i32 accumulator stored without becoming float
        let no = |steps: &[Step], store| FloatEpilogue::from_kernel(Acc::I32, steps, store).is_none();
        assert!(no(&[Step::ScaleToF32(m.clone()), Step::AddChannelI32(vec![0; 40])], Store::F32));
        assert!(no(&[Step::ScaleToF32(m.clone())], Store::U8));
        assert!(no(&[Step::AddChannelI32(vec![0; 40])], Store::F32));
        assert!(no(&[Step::RoundToInt { zp: 0, lo: 0, hi: 255, bounded: true }], Store::U8));
        let round = Step::RoundToInt { zp: 0, lo: 0, hi: 255, bounded: true };
        let short = Step::Lut8 { table: vec![0; 255], per_channel: false, signed: false };
        assert!(no(&[Step::ScaleToF32(m.clone()), round, short], Store::U8));
    }
}
