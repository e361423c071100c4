//! Fused kernels described as data: a main operation that produces an accumulator tile, then an
//! epilogue list applied to every element of the tile, then a store. The emitters in
//! [`crate::emit`] generate code from this description and from nothing else, and
//! [`KernelSpec::describe`] prints it for `qforge compile --report`.
//!
//! The numerics of each step are those of [`qforge_ir::numerics`]: an integer kernel's
//! requantization is `[AddChannelI32(bias - zx * colsum), ScaleToF32((sx * sw[c]) / sy),
//! RoundToInt { zp, lo, hi }]`, which is `saturate(round_half_even(acc as f32 * m[c]) + zp)`
//! clamped to the folded activation range.

use crate::micro::ConvGeom;
use std::fmt::Write;
use std::sync::Arc;

/// Element type of an accumulator tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acc {
    I32,
    F32,
}

/// Where the rows of a GEMM's left operand come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Rows {
    /// The input tensor itself: row `m` starts at element `m * lda` (1x1 stride-1 convolutions in
    /// NHWC, matrix products).
    Direct { lda: usize },
    /// Gathered by im2col into scratch (`pad` is the stored value of a padded pixel, `xor` flips
    /// the sign bit of i8 activations so they become u8 with zero point + 128).
    Im2col { geom: ConvGeom, pad: u8, xor: u8 },
}

/// The operation that fills the accumulator tile.
#[derive(Clone, Debug)]
pub enum MainOp {
    /// u8 x i8 -> i32 GEMM over weights packed by [`crate::micro::int8::pack_weights_i8`].
    GemmU8I8 {
        rows: Rows,
        weights: Arc<crate::micro::int8::PackedI8>,
    },
    /// f32 GEMM over weights packed by [`crate::micro::float::pack_weights_f32`].
    GemmF32 {
        rows: Rows,
        weights: Arc<crate::micro::float::PackedF32>,
    },
    /// bf16 x bf16 -> f32 GEMM (bf16 activations, rows gathered as bf16) over weights packed by
    /// [`crate::micro::bf16::pack_weights_bf16`].
    GemmBf16 {
        rows: Rows,
        weights: Arc<crate::micro::bf16::PackedBf16>,
    },
    /// Depthwise u8 x i8 convolution, one output row (`ow` pixels x `c` channels) per call.
    DepthwiseU8I8 {
        geom: ConvGeom,
        zx: i32,
        weights: Arc<crate::micro::int8::PackedDw>,
    },
    /// Depthwise f32 convolution, one output row per call.
    DepthwiseF32 {
        geom: ConvGeom,
        weights: Arc<crate::micro::float::PackedDwF32>,
    },
    /// Depthwise bf16 convolution (bf16 activations and weights, f32 accumulation), one output
    /// row per call.
    DepthwiseBf16 {
        geom: ConvGeom,
        weights: Arc<crate::micro::bf16::PackedDwBf16>,
    },
    /// Sum over the `hw` pixels of each channel of one image (global average pooling), of u8 or
    /// (`signed`) i8 values into i32, or of f32.
    GlobalSumU8 {
        hw: usize,
        signed: bool,
    },
    GlobalSumF32 {
        hw: usize,
    },
    /// A 3x3 stride-1 f32 convolution by Winograd F(2x2, 3x3) ([`crate::micro::winograd`]):
    /// input tiles transformed, 16 GEMMs over the transformed weights, the output transform; a
    /// unit is a block of tile rows of one image.
    WinogradF32 {
        plan: Arc<crate::micro::winograd::WinogradF32>,
    },
}

impl MainOp {
    pub fn acc(&self) -> Acc {
        match self {
            MainOp::GemmU8I8 { .. } | MainOp::DepthwiseU8I8 { .. } | MainOp::GlobalSumU8 { .. } => Acc::I32,
            _ => Acc::F32,
        }
    }
}

/// One step applied to each accumulator element, in order; `[c]` is the output channel (column).
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// `acc += v[c]` in i32 (bias, zero-point corrections).
    AddChannelI32(Vec<i32>),
    /// `acc = acc as f32 * v[c]` (an f32 accumulator is multiplied as it is).
    ScaleToF32(Vec<f32>),
    /// `acc = acc / d` in f32 (float average pooling divides, as the interpreter does).
    DivF32(f32),
    /// `acc += v[c]` in f32 (float bias).
    AddChannelF32(Vec<f32>),
    /// `acc += residual[row][c]`, an f32 tensor of the output's shape and layout (operand 1 of the
    /// kernel's bindings).
    AddResidualF32,
    /// `acc = round_bf16(acc)` kept in f32: the rounding of a bf16 op's result before another op
    /// of the chain reads it (a residual add after a bf16 convolution).
    RoundBf16,
    /// `acc = round_f16(acc)` kept in f32 (nearest even, f16 subnormals kept, overflow to
    /// infinity, a NaN quieted with its low 13 payload bits dropped: the `half` crate's and F16C's
    /// `vcvtps2ph`): an f16 op's result rounded and read back as f32 by the next op, which then
    /// never exists in f16 in memory (the widening pass's rounding and widening, fused).
    RoundF16,
    /// `acc += residual[row][c]` for a bf16 residual of the output's shape and layout, widened
    /// exactly; the sum rounds once more at the bf16 store (f32 holds more than twice bf16's
    /// precision, so rounding the f32 sum to bf16 is the rounding of the exact sum).
    AddResidualBf16,
    /// `acc = max(acc, v)` in f32 (ReLU is `MaxF32(0.0)`).
    MaxF32(f32),
    /// `acc = min(acc, v)` in f32.
    MinF32(f32),
    /// `acc *= v[c]` in f32 (a constant multiply: one value, or one per channel).
    MulChannelF32(Vec<f32>),
    /// `acc = hard_swish(acc)`: `x * clamp(x + 3, 0, 6) / 6` in f64, rounded to f32 once (the
    /// interpreter's formula, [`qforge_ir::interp::elementwise::unary_scalar`]).
    HardSwish,
    /// `acc = acc * sigmoid(acc)` in f32 (SiLU: a sigmoid and the multiply by its input), the
    /// sigmoid the interpreter's ([`silu`]).
    Silu,
    /// `q = table[q as u8]` (with `per_channel`, `table[c * 256 + q as u8]`): a function of the
    /// stored byte after [`Step::RoundToInt`] (a quantized add of a constant, or an element-wise
    /// region over the byte, evaluated on all 256 bytes at compile time). The entries are the
    /// result bytes, read as i8 when `signed` (an i8 result) and as u8 otherwise.
    Lut8 { table: Vec<u8>, per_channel: bool, signed: bool },
    /// `q = clamp(round_half_even(acc), lo - zp, hi - zp) + zp`: the requantization's rounding and
    /// saturation with the folded clamp (`lo`, `hi` are stored values). `bounded`: lowering proved
    /// `|acc| < 2^30` here (from the accumulator's range and the steps before), so the conversion
    /// to i32 cannot overflow and needs no saturation of its own.
    RoundToInt { zp: i32, lo: i32, hi: i32, bounded: bool },
}

/// One lane of an epilogue in flight: the integer accumulator, or a float once a step made it one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Lane {
    I(i32),
    F(f32),
}

/// IEEE 754-2019 `maximum` (Cranelift's `fmax`): NaN if either is NaN, `-0.0 < +0.0`.
pub fn fmax(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a == b {
        if a.is_sign_negative() {
            b
        } else {
            a
        }
    } else {
        a.max(b)
    }
}

/// IEEE 754-2019 `minimum` (Cranelift's `fmin`): NaN if either is NaN, `-0.0 < +0.0`.
pub fn fmin(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a == b {
        if a.is_sign_negative() {
            a
        } else {
            b
        }
    } else {
        a.min(b)
    }
}

/// Accumulator `acc` of column `c` through `steps` in scalar arithmetic, as the generated
/// epilogue ([`crate::emit`]) computes each lane: i32 adds wrap, an integer becomes f32 by
/// rounding to nearest, `RoundToInt` rounds half to even and converts saturating (NaN to 0)
/// before its clamp. For the row kernels that produce accumulators without a generated
/// epilogue (the quantized matrix product of two activations). `None` for a residual step (it
/// reads a second tensor) or a per-channel array shorter than `c`.
pub fn apply_scalar(steps: &[Step], acc: i32, c: usize) -> Option<Lane> {
    let mut v = Lane::I(acc);
    let f = |v: Lane| match v {
        Lane::I(i) => i as f32,
        Lane::F(x) => x,
    };
    for st in steps {
        v = match st {
            Step::AddChannelI32(b) => match v {
                Lane::I(i) => Lane::I(i.wrapping_add(*b.get(c)?)),
                Lane::F(_) => return None,
            },
            Step::ScaleToF32(m) => Lane::F(f(v) * m.get(c)?),
            Step::DivF32(d) => Lane::F(f(v) / d),
            Step::AddChannelF32(b) => Lane::F(f(v) + b.get(c)?),
            Step::RoundBf16 => Lane::F(half::bf16::from_f32(f(v)).to_f32()),
            Step::RoundF16 => Lane::F(half::f16::from_f32(f(v)).to_f32()),
            Step::MaxF32(m) => Lane::F(fmax(f(v), *m)),
            Step::MinF32(m) => Lane::F(fmin(f(v), *m)),
            Step::MulChannelF32(m) => Lane::F(f(v) * m.get(c)?),
            Step::HardSwish => Lane::F(hard_swish(f(v))),
            Step::Silu => Lane::F(silu(f(v))),
            Step::Lut8 { table, per_channel, signed } => match v {
                Lane::I(i) => {
                    let b = *table.get(i as u8 as usize + if *per_channel { c * 256 } else { 0 })?;
                    Lane::I(if *signed { b as i8 as i32 } else { b as i32 })
                }
                Lane::F(_) => return None,
            },
            Step::RoundToInt { zp, lo, hi, .. } => {
                let i = match v {
                    Lane::I(i) => i,
                    // `as` saturates and takes NaN to 0, as `fcvt_to_sint_sat` does
                    Lane::F(x) => x.round_ties_even() as i32,
                };
                Lane::I(i.max(lo.saturating_sub(*zp)).min(hi.saturating_sub(*zp)).wrapping_add(*zp))
            }
            Step::AddResidualF32 | Step::AddResidualBf16 => return None,
        };
    }
    Some(v)
}

/// The hard-swish of one f32 value, the interpreter's: `x * clamp(x + 3, 0, 6) / 6` evaluated
/// in f64 and rounded to f32 once. The vector epilogues compute the same operations in f64
/// lanes; a NaN stays NaN, and `x + 3` is never `-0.0`, so IEEE `maximum` (which orders
/// `-0.0 < +0.0`) clamps it as `f64::clamp` does.
#[inline]
pub fn hard_swish(x: f32) -> f32 {
    qforge_ir::interp::elementwise::unary_scalar(qforge_ir::UnaryOp::HardSwish, x)
}

/// SiLU of one f32 value as the interpreter computes `mul(x, sigmoid(x))`: the interpreter's
/// sigmoid ([`qforge_ir::interp::elementwise::unary_scalar`]), then one f32 multiply (the f64
/// product of two f32 values is exact, so rounding it once is the f32 product).
#[inline]
pub fn silu(x: f32) -> f32 {
    x * qforge_ir::interp::elementwise::unary_scalar(qforge_ir::UnaryOp::Sigmoid, x)
}

/// `p[i] = silu(p[i])` for `i < n` (the portable epilogue calls it for its lanes), with the
/// sigmoid of [`crate::micro::transcendental`] (the interpreter's values).
///
/// # Safety
/// `p` holds `n` writable f32 values.
pub unsafe extern "C" fn silu_in_place(p: *mut f32, n: usize) {
    // SAFETY: the caller's guarantee.
    let x = unsafe { std::slice::from_raw_parts_mut(p, n) };
    let mut s = [0f32; 16];
    for c in x.chunks_mut(16) {
        crate::micro::transcendental::map(qforge_ir::UnaryOp::Sigmoid, c, &mut s[..c.len()]);
        for (v, &g) in c.iter_mut().zip(&s) {
            *v *= g;
        }
    }
}

/// [`hard_swish`] with the division by 6 as a multiplication by the f64 nearest 1/6: one f64
/// rounding apart at most, and the same f32 on every input (all 2^32 are checked by `cargo bench
/// -p qforge-codegen --bench transcendental`), without a division (the row kernel's formula, which
/// vectorizes to multiplies).
#[inline]
pub fn hard_swish_by_mul(x: f32) -> f32 {
    let v = x as f64;
    (v * (v + 3.0).clamp(0.0, 6.0) * (1.0 / 6.0)) as f32
}

/// How the epilogue's result is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    U8,
    I8,
    F32,
    /// f32 rounded to bf16, nearest even (the `half` crate's `bf16::from_f32`, NaN kept quiet).
    Bf16,
}

impl Store {
    pub fn bytes(self) -> usize {
        match self {
            Store::U8 | Store::I8 => 1,
            Store::Bf16 => 2,
            Store::F32 => 4,
        }
    }
}

/// A fused kernel: `main`, then `epilogue`, then `store`, over `rows x cols` outputs (row-major,
/// `cols` contiguous: NHWC pixels x channels, or matrix rows x columns).
#[derive(Clone, Debug)]
pub struct KernelSpec {
    pub main: MainOp,
    pub epilogue: Vec<Step>,
    pub store: Store,
    /// Output rows and columns.
    pub rows: usize,
    pub cols: usize,
}

/// Marks the [`Step::RoundToInt`] steps of `steps` whose input provably stays below `2^30` in
/// magnitude, given `|acc| <= acc_bound` before the first step.
pub fn mark_bounded(steps: &mut [Step], acc_bound: f64) {
    let mut b = acc_bound;
    for st in steps.iter_mut() {
        match st {
            Step::AddChannelI32(v) => b += v.iter().map(|x| (*x as f64).abs()).fold(0.0, f64::max),
            Step::ScaleToF32(v) => b *= v.iter().map(|x| (*x as f64).abs()).fold(0.0, f64::max),
            Step::AddChannelF32(v) => b += v.iter().map(|x| (*x as f64).abs()).fold(0.0, f64::max),
            Step::DivF32(d) => b /= (*d as f64).abs(),
            Step::MaxF32(_) | Step::MinF32(_) => {}
            Step::MulChannelF32(v) => b *= v.iter().map(|x| (*x as f64).abs()).fold(0.0, f64::max),
            // |hard_swish(x)| <= max(|x|, 3/8): the identity from 3 on, at most 3/8 in size below
            Step::HardSwish => b = b.max(0.375),
            // |x * sigmoid(x)| <= |x|: the sigmoid is in [0, 1]
            Step::Silu => {}
            Step::Lut8 { .. } => b = 256.0,
            Step::AddResidualF32 | Step::AddResidualBf16 => b = f64::INFINITY,
            Step::RoundBf16 => b *= 1.0 + 1.0 / 256.0,
            // rounding past the largest f16 gives infinity
            Step::RoundF16 => b = if b < 65504.0 { b * (1.0 + 1.0 / 2048.0) } else { f64::INFINITY },
            Step::RoundToInt { bounded, .. } => {
                *bounded = b.is_finite() && b < (1u64 << 30) as f64;
                b = (1u64 << 31) as f64;
            }
        }
    }
}

/// An epilogue list in one line, e.g. `add_i32, scale_f32, round(zp=0, 0..255)`.
pub fn describe_steps(steps: &[Step]) -> String {
    let names: Vec<String> = steps
        .iter()
        .map(|st| match st {
            Step::AddChannelI32(_) => "add_i32".to_string(),
            Step::ScaleToF32(_) => "scale_f32".to_string(),
            Step::DivF32(d) => format!("div({d})"),
            Step::AddChannelF32(_) => "add_f32".to_string(),
            Step::AddResidualF32 => "add_residual".to_string(),
            Step::RoundBf16 => "round_bf16".to_string(),
            Step::RoundF16 => "round_f16".to_string(),
            Step::AddResidualBf16 => "add_residual_bf16".to_string(),
            Step::MaxF32(v) => format!("max({v})"),
            Step::MinF32(v) => format!("min({v})"),
            Step::MulChannelF32(_) => "mul_f32".to_string(),
            Step::HardSwish => "hard_swish".to_string(),
            Step::Silu => "silu".to_string(),
            Step::Lut8 { per_channel: false, .. } => "lut8".to_string(),
            Step::Lut8 { per_channel: true, .. } => "lut8(per channel)".to_string(),
            Step::RoundToInt { zp, lo, hi, .. } => format!("round(zp={zp}, {lo}..{hi})"),
        })
        .collect();
    names.join(", ")
}

impl KernelSpec {
    /// One line: main op, epilogue list and store, e.g.
    /// `gemm_u8i8(im2col 3x3 s1) 3136x64 k=576 [add_i32, scale_f32, round(zp=0, 0..255)] -> u8`.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let rows_desc = |r: &Rows| match r {
            Rows::Direct { .. } => "direct".to_string(),
            Rows::Im2col { geom: g, .. } => format!("im2col {}x{} s{}", g.kh, g.kw, g.sh),
        };
        let _ = match &self.main {
            MainOp::GemmU8I8 { rows, weights } => {
                write!(s, "gemm_u8i8({}) {}x{} k={}", rows_desc(rows), self.rows, self.cols, weights.k)
            }
            MainOp::GemmF32 { rows, weights } => {
                write!(s, "gemm_f32({}) {}x{} k={}", rows_desc(rows), self.rows, self.cols, weights.k)
            }
            MainOp::GemmBf16 { rows, weights } => {
                write!(s, "gemm_bf16({}) {}x{} k={}", rows_desc(rows), self.rows, self.cols, weights.k)
            }
            MainOp::DepthwiseU8I8 { geom: g, .. } => {
                write!(s, "depthwise_u8i8({}x{} s{}) {}x{}", g.kh, g.kw, g.sh, self.rows, self.cols)
            }
            MainOp::DepthwiseF32 { geom: g, .. } => {
                write!(s, "depthwise_f32({}x{} s{}) {}x{}", g.kh, g.kw, g.sh, self.rows, self.cols)
            }
            MainOp::DepthwiseBf16 { geom: g, .. } => {
                write!(s, "depthwise_bf16({}x{} s{}) {}x{}", g.kh, g.kw, g.sh, self.rows, self.cols)
            }
            MainOp::GlobalSumU8 { hw, .. } => write!(s, "global_sum_int(hw={hw}) {}x{}", self.rows, self.cols),
            MainOp::GlobalSumF32 { hw } => write!(s, "global_sum_f32(hw={hw}) {}x{}", self.rows, self.cols),
            MainOp::WinogradF32 { plan } => {
                write!(s, "winograd_f32(F(2x2,3x3)) {}x{} k={}", self.rows, self.cols, 9 * plan.geom.c)
            }
        };
        let store = match self.store {
            Store::U8 => "u8",
            Store::I8 => "i8",
            Store::F32 => "f32",
            Store::Bf16 => "bf16",
        };
        let _ = write!(s, " [{}] -> {store}", describe_steps(&self.epilogue));
        s
    }

    /// Multiply-accumulates of one run of the kernel (for GMAC/s reports).
    pub fn macs(&self) -> u64 {
        let (r, c) = (self.rows as u64, self.cols as u64);
        match &self.main {
            MainOp::GemmU8I8 { weights, .. } => r * c * weights.k as u64,
            MainOp::GemmF32 { weights, .. } => r * c * weights.k as u64,
            MainOp::GemmBf16 { weights, .. } => r * c * weights.k as u64,
            MainOp::DepthwiseU8I8 { geom, .. }
            | MainOp::DepthwiseF32 { geom, .. }
            | MainOp::DepthwiseBf16 { geom, .. } => r * c * (geom.kh * geom.kw) as u64,
            MainOp::GlobalSumU8 { hw, .. } | MainOp::GlobalSumF32 { hw } => r * c * *hw as u64,
            // the direct convolution's multiply-adds (what GMAC/s reports compare)
            MainOp::WinogradF32 { plan } => r * c * 9 * plan.geom.c as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hard-swish without a division against the interpreter's on 2^22 inputs spread over
    /// every exponent and sign, the special values and the clamp's edges (all 2^32 inputs: the
    /// `transcendental` bench).
    #[test]
    fn hard_swish_by_mul_is_the_interpreters() {
        let edges = [0.0f32, -0.0, 3.0, -3.0, 6.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE];
        let spread = (0..1u32 << 22).map(|i| f32::from_bits(i.wrapping_mul(0x9E37_79B9).rotate_left(7) ^ i));
        let near = (-4000..4000).map(|i| i as f32 * 1e-3);
        for x in
            edges.into_iter().chain(spread).chain(near).flat_map(|x| [x, f32::from_bits(x.to_bits().wrapping_add(1))])
        {
            let (got, want) = (hard_swish_by_mul(x), hard_swish(x));
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{x:e}: {got:e} vs {want:e}");
        }
    }
}
