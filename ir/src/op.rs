//! The operation set.
//!
//! Ops carry their attributes; quantization parameters are never attributes: a quantized op reads
//! them from its input types and writes them into its output type. The text name of each op
//! ([`Op::name`]) is what the printer writes and the parser reads.

use crate::{DType, Dim, Tensor};
use std::sync::Arc;

/// Convolution attributes (2-D and 1-D; spatial dims follow ONNX's NCHW order).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConvAttrs {
    /// Kernel spatial shape (from the weight's shape, kept for readability and checks).
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    /// Begin pads for each spatial dim, then end pads (ONNX order).
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
    pub group: usize,
}

/// Pooling attributes for max and average pooling.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolAttrs {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    /// Begin pads then end pads.
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
    pub ceil_mode: bool,
    /// Average pooling only: whether padded cells count in the divisor.
    pub count_include_pad: bool,
}

/// Transposed convolution attributes (ONNX ConvTranspose), spatial dims in NCHW order. Output
/// position `o` along a spatial dim receives input position `i` through kernel tap `k` when
/// `o = i * stride + k * dilation - pad_begin`; the output size is
/// `stride * (in - 1) + (kernel - 1) * dilation + 1 + output_padding - pad_begin - pad_end`.
/// Pads may be negative (ONNX's `output_shape` and `auto_pad` can ask for a larger output than the
/// natural one, which extends the output without contributions there).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConvTransposeAttrs {
    /// Kernel spatial shape (from the weight's shape).
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    /// Begin pads for each spatial dim, then end pads.
    pub pads: Vec<i64>,
    pub dilations: Vec<usize>,
    pub group: usize,
    /// Extra output rows at the end of each spatial dim.
    pub output_padding: Vec<usize>,
}

/// Resize interpolation (ONNX Resize `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResizeMode {
    Nearest,
    Linear,
    Cubic,
}

/// How an output coordinate maps to an input coordinate (ONNX Resize
/// `coordinate_transformation_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoordMode {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfCropAndResize,
}

/// How nearest-neighbour resizing rounds a fractional input coordinate (ONNX Resize
/// `nearest_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// How resizing to `sizes` keeps the aspect ratio (ONNX Resize `keep_aspect_ratio_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AspectPolicy {
    Stretch,
    NotLarger,
    NotSmaller,
}

/// What a resize produces: a scale per axis (every axis; the output dim is
/// `floor(in * scale)`), or sizes for some axes (the other axes keep their size), from which the
/// scales follow at run time.
#[derive(Clone, Debug, PartialEq)]
pub enum ResizeTarget {
    Scales(Vec<f32>),
    Sizes {
        axes: Vec<usize>,
        sizes: Vec<usize>,
        policy: AspectPolicy,
    },
    /// Sizes for some axes read from the dims of the op's reference inputs (`x, refs...`), as a
    /// segmentation head resizes its logits to the image's own size (`F.interpolate(size=
    /// x.shape[-2:])`); stretched (no aspect-ratio policy). With concrete input types it is
    /// [`ResizeTarget::Sizes`] ([`crate::infer::resolve_resize`]).
    DimSizes {
        axes: Vec<usize>,
        sizes: Vec<DimExpr>,
    },
}

/// Resize attributes (ONNX Resize, opsets 10 to 19; Upsample is a nearest or linear resize with
/// asymmetric coordinates).
#[derive(Clone, Debug, PartialEq)]
pub struct ResizeAttrs {
    pub mode: ResizeMode,
    pub coord: CoordMode,
    pub nearest: NearestMode,
    /// The cubic kernel's `a` (`cubic_coeff_a`).
    pub cubic_a: f32,
    /// Weights of taps outside the input are zeroed and the rest renormalized.
    pub exclude_outside: bool,
    /// The value of outputs that map outside the input under `tf_crop_and_resize`.
    pub extrapolation: f32,
    /// Linear and cubic only: widen the kernel by the downscaling factor.
    pub antialias: bool,
    /// `tf_crop_and_resize` only: the region of interest, every axis' start then every axis' end
    /// (normalized coordinates); empty means the whole input.
    pub roi: Vec<f32>,
    pub target: ResizeTarget,
}

/// Pad modes (ONNX Pad `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PadMode {
    /// The constant `value`.
    Constant,
    /// Mirror without repeating the edge (numpy `reflect`).
    Reflect,
    /// Repeat the edge.
    Edge,
    /// Wrap around (numpy `wrap`).
    Wrap,
}

/// One step applied to the accumulator of a fused integer kernel, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// Add the i32 bias input (scale `sx * sw[c]`, zero point 0) per output channel.
    Bias,
    /// Requantize the i32 accumulator to the output type (see [`crate::numerics`]).
    Requant,
    /// Convert the accumulator to f32: `acc * sx * sw[c]` (dynamic or float-output kernels).
    Dequant,
    /// Clamp in the output's stored domain (ReLU, ReLU6 and Clip folded into the requantization).
    Clamp { lo: i64, hi: i64 },
}

/// Element-wise unary functions (float; f16/bf16 computed in f32 and rounded back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Relu,
    Sigmoid,
    Tanh,
    /// x * relu6(x + 3) / 6
    HardSwish,
    /// Exact GELU: x * (1 + erf(x / sqrt 2)) / 2.
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
    Erf,
    Exp,
    Log,
    Sqrt,
    Neg,
    Abs,
    Reciprocal,
    Floor,
    Ceil,
    Not,
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Asinh,
    Acosh,
    Atanh,
    /// -1, 0 or 1 by the sign of `x` (NaN stays NaN; ONNX Sign).
    Sign,
    /// Rounds half to even ([`crate::numerics::round_half_even`], ONNX Round).
    Round,
}

/// Element-wise binary functions with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    Equal,
    Less,
    Greater,
    And,
    Or,
    /// Integer modulus with the sign of the divisor (ONNX Mod, `fmod=0`; integers only).
    Mod,
    /// Remainder with the sign of the dividend (ONNX Mod, `fmod=1`; C `fmod` for floats).
    Fmod,
    GreaterOrEqual,
    LessOrEqual,
    /// Bitwise and of integers (ONNX BitwiseAnd); the bits of the storage type.
    BitAnd,
    /// Bitwise or of integers (ONNX BitwiseOr).
    BitOr,
    /// Bitwise exclusive or of integers (ONNX BitwiseXor).
    BitXor,
    /// `a << b` on integers (ONNX BitShift `LEFT`): bits shifted out are lost; a shift below 0 or
    /// at least the type's width gives 0.
    ShiftLeft,
    /// `a >> b` on integers (ONNX BitShift `RIGHT`): logical for unsigned types, arithmetic for
    /// signed ones; a shift below 0 or at least the type's width gives 0 (or -1 for a negative
    /// signed `a`), as the ONNX reference's BitShift-28 does.
    ShiftRight,
}

/// How scattered updates combine with the data they land on (ONNX ScatterND and
/// ScatterElements `reduction`). With `None` a later update overwrites an earlier one at the same
/// index (the ONNX reference's order: updates in row-major order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScatterReduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

/// How GridSample treats sample positions outside the input (ONNX GridSample `padding_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GridPadding {
    /// Zero outside.
    Zeros,
    /// The nearest border value.
    Border,
    /// Positions reflected at the borders until they fall inside.
    Reflection,
}

/// A size written in an attribute: `k` times the product of dims of the op's own inputs
/// (`(input, axis)` pairs), read from their types. With symbolic input types the size is a
/// symbolic dim (`N*16`); with concrete ones (every engine re-infers per input shape) it is a
/// number. This is how a graph with a dynamic batch or sequence length keeps sizes that depend on
/// it (`Range(0, S)`, an expand to `[N,1,1]`) without being specialized at import.
///
/// `expr`, when present, is one more factor: a size derived from the inputs' dims ([`Dim`]'s
/// derived forms, its names the placeholders [`Dim::input_dim`], `$I.A` for dim `A` of input
/// `I`), such as the `floor((d+3)/4)` windows of a feature map padded to a multiple of 4, or the
/// `4*floor((d+3)/4) - d` rows that pad it (Swin's `(4 - d % 4) % 4`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DimExpr {
    pub k: i64,
    pub of: Vec<(usize, usize)>,
    pub expr: Option<Dim>,
}

impl DimExpr {
    pub fn fixed(k: i64) -> Self {
        DimExpr { k, of: vec![], expr: None }
    }
    /// `k` times the product of the dims `of`.
    pub fn product(k: i64, of: Vec<(usize, usize)>) -> Self {
        DimExpr { k, of, expr: None }
    }
}

/// An operation. Inputs are listed as `x, w, [b]`: brackets mark optional inputs.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    // ---- sources
    /// A graph input; the node's name is the input's name.
    Input,
    /// A constant tensor.
    Const(Arc<Tensor>),

    // ---- float (and generic) compute
    /// `x, w, [b]` -> y. Float convolution, grouped and depthwise included.
    Conv(ConvAttrs),
    /// `x, scale, bias, mean, var` -> y. Inference-mode batch normalization over axis 1.
    BatchNorm {
        epsilon: f32,
    },
    Unary(UnaryOp),
    /// `max(x, alpha * x)`.
    LeakyRelu {
        alpha: f32,
    },
    /// `min(max(x, min), max)`: ReLU6 is `clip(0, 6)`.
    Clip {
        min: f32,
        max: f32,
    },
    /// `max(0, min(1, alpha * x + beta))`.
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    Binary(BinaryOp),
    /// `cond, x, y` -> `cond ? x : y` with broadcasting.
    Where,
    /// `a, b` -> numpy matmul (batched, broadcasting leading dims).
    MatMul,
    /// `a, b, [c]` -> `alpha * op(a) @ op(b) + beta * c`, 2-D.
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    MaxPool(PoolAttrs),
    /// The i64 index of the element each window of [`Op::MaxPool`] takes (ONNX MaxPool's
    /// `Indices` output): the first largest element of the window, as a flat index into the whole
    /// input, row-major, or with the spatial dims column-major (`storage_order=1`, 2-D).
    MaxPoolIndices {
        pool: PoolAttrs,
        column_major: bool,
    },
    AveragePool(PoolAttrs),
    GlobalAveragePool,
    GlobalMaxPool,
    /// `x, w, [b]` -> y. Float transposed convolution; `w` is (C, M/group, kernel...).
    ConvTranspose(ConvTransposeAttrs),
    /// `x` -> `x` resized along its axes (any float dtype, and integers rounded and saturated).
    Resize(ResizeAttrs),
    /// `x, scale, bias` -> normalized over each group of `C / groups` channels of each sample,
    /// then `* scale[c] + bias[c]` (ONNX GroupNormalization-21; scale and bias have `C` entries).
    GroupNorm {
        groups: usize,
        epsilon: f32,
    },
    /// Local response normalization across channels.
    Lrn {
        size: usize,
        alpha: f32,
        beta: f32,
        bias: f32,
    },
    Softmax {
        axis: i64,
    },
    LogSoftmax {
        axis: i64,
    },
    /// `x, scale, [bias]` -> normalized over axes `axis..rank`.
    LayerNorm {
        axis: i64,
        epsilon: f32,
    },
    ReduceMean {
        axes: Vec<i64>,
        keepdims: bool,
    },
    ReduceSum {
        axes: Vec<i64>,
        keepdims: bool,
    },
    ReduceMax {
        axes: Vec<i64>,
        keepdims: bool,
    },
    /// The product over `axes` (every axis when empty; ONNX ReduceProd): floats multiply in
    /// their compute type in input order, integers wrap in the storage type; the product of
    /// nothing is 1.
    ReduceProd {
        axes: Vec<i64>,
        keepdims: bool,
    },
    /// The i64 index of the largest element along `axis` (ONNX ArgMax): the first such index, or
    /// the last with `select_last`; a NaN counts as larger than any number (numpy's argmax).
    ArgMax {
        axis: i64,
        keepdims: bool,
        select_last: bool,
    },
    /// The i64 index of the smallest element along `axis` (ONNX ArgMin; NaN as for ArgMax).
    ArgMin {
        axis: i64,
        keepdims: bool,
        select_last: bool,
    },

    // ---- data movement (any dtype; quantization parameters pass through unchanged unless noted)
    /// Pads (or, with negative pads, crops) every axis: `pads` holds every axis' begin count
    /// then every axis' end count. Plain values, or i8/u8 quantized per tensor (the fill
    /// is then a stored integer: see `value`).
    /// `computed` lists pads (by their index in `pads`, whose entry is then 0) computed from
    /// the dims of the op's further inputs, `x, refs...` (a window padding `(4 - H % 4) % 4` of
    /// a symbolic size), each a size, never negative.
    Pad {
        mode: PadMode,
        pads: Vec<i64>,
        computed: Vec<(usize, DimExpr)>,
        /// The fill of `Constant` mode, converted to the dtype (integers round half to even and
        /// saturate, bool is `!= 0`); on a quantized tensor, a stored integer (the quantized
        /// fill), so padding carries the input's scale and zero point.
        value: f64,
    },
    /// Repeats the input `repeats[i]` times along axis `i` (ONNX Tile).
    Tile {
        repeats: Vec<usize>,
    },
    /// ONNX Reshape with a constant target shape: `0` copies the input dim, `-1` is inferred.
    Reshape {
        shape: Vec<i64>,
    },
    Flatten {
        axis: i64,
    },
    Transpose {
        perm: Vec<usize>,
    },
    /// Inputs: any number of tensors of one type (but the axis dim).
    Concat {
        axis: i64,
    },
    Slice {
        starts: Vec<i64>,
        ends: Vec<i64>,
        axes: Vec<i64>,
        steps: Vec<i64>,
    },
    /// `data, indices` -> gathered along `axis`.
    Gather {
        axis: i64,
    },
    Unsqueeze {
        axes: Vec<i64>,
    },
    Squeeze {
        axes: Vec<i64>,
    },
    /// Split into equal or given parts along `axis`; one output per part.
    Split {
        axis: i64,
        sizes: Vec<usize>,
    },
    /// Repeats by broadcasting to the constant `shape`.
    Expand {
        shape: Vec<i64>,
    },
    /// Converts elements to `to`. Float to integer truncates toward zero and saturates (as ONNX
    /// Runtime's cast, with saturation made explicit); integer to integer wraps.
    Cast {
        to: DType,
    },
    Identity,
    /// `x` -> i64[end - start]: dims `start..end` of `x` (ONNX Shape, bounds normalized).
    Shape {
        start: usize,
        end: usize,
    },
    /// `refs...` -> 1-D `start, start + delta, ...` below `limit` (ONNX Range); the inputs are
    /// read only for the dims `start` and `limit` name.
    Range {
        start: DimExpr,
        limit: DimExpr,
        delta: i64,
        dtype: DType,
    },
    /// `x, refs...` -> `x` reshaped to `shape` (no `0` or `-1` entries: every size is explicit).
    ReshapeDyn {
        shape: Vec<DimExpr>,
    },
    /// `x, refs...` -> `x` broadcast with `shape` (ONNX Expand).
    ExpandDyn {
        shape: Vec<DimExpr>,
    },
    /// `data, indices` -> `data` picked along `axis` at `indices` (ONNX GatherElements).
    GatherElements {
        axis: i64,
    },
    /// `data, indices` -> slices of `data` addressed by the last axis of `indices`, after
    /// `batch_dims` leading axes both share (ONNX GatherND); negative indices count from the end.
    GatherND {
        batch_dims: usize,
    },
    /// `data, indices, updates` -> `data` with `updates` written (or combined by `reduction`) at
    /// `indices` along `axis` (ONNX ScatterElements, and the deprecated Scatter).
    ScatterElements {
        axis: i64,
        reduction: ScatterReduction,
    },
    /// `data, indices, updates` -> `data` with the slices of `updates` written (or combined) at
    /// the positions the last axis of `indices` addresses (ONNX ScatterND).
    ScatterND {
        reduction: ScatterReduction,
    },
    /// `x` -> (values, i64 indices): the `k` largest (or smallest) elements along `axis` (ONNX
    /// TopK), in sorted order (largest or smallest first), equal values lower index first; NaN
    /// counts as larger than any number (the ONNX reference's lexsort order).
    TopK {
        axis: i64,
        k: usize,
        largest: bool,
    },
    /// Running sums along `axis` (ONNX CumSum): `exclusive` leaves out the element itself,
    /// `reverse` sums from the end.
    CumSum {
        axis: i64,
        exclusive: bool,
        reverse: bool,
    },
    /// Running products along `axis` (ONNX CumProd), as [`Op::CumSum`].
    CumProd {
        axis: i64,
        exclusive: bool,
        reverse: bool,
    },
    /// The determinant of each square matrix in the last two axes (ONNX Det).
    Det,
    /// The indices of the non-zero elements of `x` (ONNX NonZero), i64 `[rank, count]` in
    /// row-major order. Its result shape depends on the data: `count` is the name of a fresh
    /// symbol, bound when the op runs (see [`Op::data_dependent`]).
    NonZero {
        count: String,
    },
    /// `boxes, scores [, max_output_boxes_per_class, iou_threshold, score_threshold]` -> the
    /// selected `[batch, class, box]` triples, i64 `[count, 3]` (ONNX NonMaxSuppression-11, the
    /// order of `onnx.reference`): per batch and class, boxes by descending score (ties in
    /// index order), a box kept when its score passes the threshold and its IoU with every box
    /// kept before is at most `iou_threshold`. `count` is a data-dependent symbol as
    /// [`Op::NonZero`]'s.
    NonMaxSuppression {
        /// Boxes are `[x_center, y_center, width, height]` (else `[y1, x1, y2, x2]`, corners in
        /// either order).
        center_point_box: bool,
        count: String,
    },
    /// `x, grid` -> `x` sampled at the normalized positions of `grid` (ONNX GridSample-22,
    /// 2-D and 3-D spatial): nearest, linear or cubic interpolation.
    GridSample {
        mode: ResizeMode,
        padding: GridPadding,
        align_corners: bool,
    },

    // ---- gradients (the backward ops reverse-mode differentiation emits where no composition
    // of the ops above writes the vector-Jacobian product reasonably)
    /// `x, dy` -> `dw`: the gradient of a convolution ([`Op::Conv`] with these attributes) with
    /// respect to its weight, for input `x` and result gradient `dy`:
    /// `dw[m][c][k] = sum over n and output positions o of dy[n][m][o] * x[n][g*C/group + c][o * stride + k * dilation - pad_begin]`
    /// (`g` the group of output channel `m`; positions outside `x` are the zero padding). Shape
    /// `(M, C/group, kernel...)` with `M` the channels of `dy`.
    ConvWeightGrad(ConvAttrs),
    /// `x, dy` -> `dx`: the gradient of [`Op::MaxPool`] with respect to its input: each window's
    /// `dy` goes to the element the window takes (its first largest element, the one
    /// [`Op::MaxPoolIndices`] names), summed where windows overlap; every other element gets 0.
    MaxPoolGrad(PoolAttrs),
    /// `x, dy` -> `dx`: the gradient of [`Op::AveragePool`] with respect to its input (`x` is read
    /// only for its shape): each window's `dy / count` goes to every input element the window
    /// visits, summed where windows overlap, `count` the window's divisor (the positions in the
    /// input, or in the padded input with `count_include_pad`).
    AveragePoolGrad(PoolAttrs),
    /// `x, dy` -> `dx`: the gradient of [`Op::Clip`] (and ReLU6) with respect to its input:
    /// `dy` where `min <= x <= max` (the bounds pass the gradient, as PyTorch's `hardtanh`
    /// backward does not: see `autodiff`'s conventions), 0 elsewhere and where `x` is NaN.
    ClipGrad {
        min: f32,
        max: f32,
    },

    /// `x, scale, [zero_point]` -> `y`: fake quantization (quantization-aware training's
    /// quantize-dequantize in float), `y = (clip(round(x / scale) + zero_point, qmin, qmax) -
    /// zero_point) * scale`, the scale and zero point broadcast to `x` (one per tensor, or one per
    /// channel shaped to broadcast). Computed as the separate float ops compute it (the division,
    /// round half to even, the addition, the clip, the subtraction and the product, each rounded
    /// to f32; a NaN stays NaN), so it equals their composition bit for bit. PyTorch's
    /// `torch.fake_quantize_per_tensor_affine` and `fake_quantize_per_channel_affine`.
    FakeQuantize {
        qmin: i32,
        qmax: i32,
    },
    /// `dy, x, scale, [zero_point]` -> `dx, dscale`: the gradient of [`Op::FakeQuantize`] with the
    /// straight-through estimator for the rounding (LSQ, Esser et al. 2020): with
    /// `q = x / scale` and `r = round(q) + zero_point`, `dx = dy` where `qmin <= r <= qmax` and 0
    /// elsewhere; `dscale = sum dy * ((clip(r) - zero_point) - [qmin <= r <= qmax] * q)` over the
    /// elements sharing a scale (accumulated in f64), shaped as `scale`.
    FakeQuantizeGrad {
        qmin: i32,
        qmax: i32,
    },

    // ---- quantization
    /// `x` (float) -> quantized output; parameters from the output type.
    Quantize,
    /// `x` (quantized) -> f32; parameters from the input type.
    Dequantize,
    /// `x` (quantized) -> quantized with the output type's parameters.
    Requantize,
    /// `x` (f32) -> (`y`: u8, `scale`: f32 scalar, `zero_point`: u8 scalar), ONNX
    /// DynamicQuantizeLinear.
    DynamicQuantize,
    /// `x, w, [x_zp], [w_zp]` -> i32 accumulator (ONNX ConvInteger), raw integers.
    ConvInteger(ConvAttrs),
    /// `a, b, [a_zp], [b_zp]` -> i32 accumulator (ONNX MatMulInteger), raw integers.
    MatMulInteger,
    /// `x, w, [bias]` -> integer convolution on quantized types, then the epilogue
    /// (ONNX QLinearConv is `[Bias, Requant]`).
    QConv {
        conv: ConvAttrs,
        epilogue: Vec<Epilogue>,
    },
    /// `a, b, [bias]` -> batched integer matmul on quantized types, then the epilogue
    /// (ONNX QLinearMatMul is `[Requant]`).
    QMatMul {
        epilogue: Vec<Epilogue>,
    },
    /// `a, b, [c]` -> 2-D integer gemm, then the epilogue (`com.microsoft` QGemm).
    QGemm {
        alpha: f32,
        trans_a: bool,
        trans_b: bool,
        epilogue: Vec<Epilogue>,
    },
    /// `a, b` quantized -> quantized sum (`com.microsoft` QLinearAdd).
    QAdd,
    /// `a, b` quantized -> quantized product (`com.microsoft` QLinearMul).
    QMul,
    /// Quantized global average pool (`com.microsoft` QLinearGlobalAveragePool, NCHW).
    QGlobalAveragePool,
    /// Quantized average pool (`com.microsoft` QLinearAveragePool).
    QAveragePool(PoolAttrs),
    /// Quantized concatenation, each input requantized to the output's parameters
    /// (`com.microsoft` QLinearConcat).
    QConcat {
        axis: i64,
    },
}

impl Op {
    /// The op's name in the text form.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Const(_) => "const",
            Op::Conv(_) => "conv",
            Op::BatchNorm { .. } => "batch_norm",
            Op::Unary(u) => match u {
                UnaryOp::Relu => "relu",
                UnaryOp::Sigmoid => "sigmoid",
                UnaryOp::Tanh => "tanh",
                UnaryOp::HardSwish => "hard_swish",
                UnaryOp::Gelu => "gelu",
                UnaryOp::GeluTanh => "gelu_tanh",
                UnaryOp::Erf => "erf",
                UnaryOp::Exp => "exp",
                UnaryOp::Log => "log",
                UnaryOp::Sqrt => "sqrt",
                UnaryOp::Neg => "neg",
                UnaryOp::Abs => "abs",
                UnaryOp::Reciprocal => "reciprocal",
                UnaryOp::Floor => "floor",
                UnaryOp::Ceil => "ceil",
                UnaryOp::Not => "not",
                UnaryOp::Sin => "sin",
                UnaryOp::Cos => "cos",
                UnaryOp::Tan => "tan",
                UnaryOp::Asin => "asin",
                UnaryOp::Acos => "acos",
                UnaryOp::Atan => "atan",
                UnaryOp::Sinh => "sinh",
                UnaryOp::Cosh => "cosh",
                UnaryOp::Asinh => "asinh",
                UnaryOp::Acosh => "acosh",
                UnaryOp::Atanh => "atanh",
                UnaryOp::Sign => "sign",
                UnaryOp::Round => "round",
            },
            Op::LeakyRelu { .. } => "leaky_relu",
            Op::Clip { .. } => "clip",
            Op::HardSigmoid { .. } => "hard_sigmoid",
            Op::Binary(b) => match b {
                BinaryOp::Add => "add",
                BinaryOp::Sub => "sub",
                BinaryOp::Mul => "mul",
                BinaryOp::Div => "div",
                BinaryOp::Pow => "pow",
                BinaryOp::Max => "max",
                BinaryOp::Min => "min",
                BinaryOp::Equal => "equal",
                BinaryOp::Less => "less",
                BinaryOp::Greater => "greater",
                BinaryOp::And => "and",
                BinaryOp::Or => "or",
                BinaryOp::Mod => "mod",
                BinaryOp::Fmod => "fmod",
                BinaryOp::GreaterOrEqual => "greater_or_equal",
                BinaryOp::LessOrEqual => "less_or_equal",
                BinaryOp::BitAnd => "bit_and",
                BinaryOp::BitOr => "bit_or",
                BinaryOp::BitXor => "bit_xor",
                BinaryOp::ShiftLeft => "shift_left",
                BinaryOp::ShiftRight => "shift_right",
            },
            Op::Where => "where",
            Op::MatMul => "matmul",
            Op::Gemm { .. } => "gemm",
            Op::MaxPool(_) => "max_pool",
            Op::MaxPoolIndices { .. } => "max_pool_indices",
            Op::AveragePool(_) => "average_pool",
            Op::GlobalAveragePool => "global_average_pool",
            Op::GlobalMaxPool => "global_max_pool",
            Op::ConvTranspose(_) => "conv_transpose",
            Op::Resize(_) => "resize",
            Op::GroupNorm { .. } => "group_norm",
            Op::ArgMax { .. } => "arg_max",
            Op::ArgMin { .. } => "arg_min",
            Op::Pad { .. } => "pad",
            Op::Tile { .. } => "tile",
            Op::Lrn { .. } => "lrn",
            Op::Softmax { .. } => "softmax",
            Op::LogSoftmax { .. } => "log_softmax",
            Op::LayerNorm { .. } => "layer_norm",
            Op::ReduceMean { .. } => "reduce_mean",
            Op::ReduceSum { .. } => "reduce_sum",
            Op::ReduceMax { .. } => "reduce_max",
            Op::ReduceProd { .. } => "reduce_prod",
            Op::Reshape { .. } => "reshape",
            Op::Flatten { .. } => "flatten",
            Op::Transpose { .. } => "transpose",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::Gather { .. } => "gather",
            Op::Unsqueeze { .. } => "unsqueeze",
            Op::Squeeze { .. } => "squeeze",
            Op::Split { .. } => "split",
            Op::Expand { .. } => "expand",
            Op::Cast { .. } => "cast",
            Op::Identity => "identity",
            Op::Shape { .. } => "shape",
            Op::Range { .. } => "range",
            Op::ReshapeDyn { .. } => "reshape_dyn",
            Op::ExpandDyn { .. } => "expand_dyn",
            Op::GatherElements { .. } => "gather_elements",
            Op::GatherND { .. } => "gather_nd",
            Op::ScatterElements { .. } => "scatter_elements",
            Op::ScatterND { .. } => "scatter_nd",
            Op::TopK { .. } => "top_k",
            Op::CumSum { .. } => "cumsum",
            Op::CumProd { .. } => "cumprod",
            Op::NonZero { .. } => "non_zero",
            Op::NonMaxSuppression { .. } => "non_max_suppression",
            Op::Det => "det",
            Op::GridSample { .. } => "grid_sample",
            Op::ConvWeightGrad(_) => "conv_weight_grad",
            Op::MaxPoolGrad(_) => "max_pool_grad",
            Op::AveragePoolGrad(_) => "average_pool_grad",
            Op::ClipGrad { .. } => "clip_grad",
            Op::FakeQuantize { .. } => "fake_quantize",
            Op::FakeQuantizeGrad { .. } => "fake_quantize_grad",
            Op::Quantize => "quantize",
            Op::Dequantize => "dequantize",
            Op::Requantize => "requantize",
            Op::DynamicQuantize => "dynamic_quantize",
            Op::ConvInteger(_) => "conv_integer",
            Op::MatMulInteger => "matmul_integer",
            Op::QConv { .. } => "qconv",
            Op::QMatMul { .. } => "qmatmul",
            Op::QGemm { .. } => "qgemm",
            Op::QAdd => "qadd",
            Op::QMul => "qmul",
            Op::QGlobalAveragePool => "qglobal_average_pool",
            Op::QAveragePool(_) => "qaverage_pool",
            Op::QConcat { .. } => "qconcat",
        }
    }

    /// Every unary op, for parsers and tests.
    pub const UNARY: [UnaryOp; 29] = [
        UnaryOp::Relu,
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
        UnaryOp::HardSwish,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Erf,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Reciprocal,
        UnaryOp::Floor,
        UnaryOp::Ceil,
        UnaryOp::Not,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Tan,
        UnaryOp::Asin,
        UnaryOp::Acos,
        UnaryOp::Atan,
        UnaryOp::Sinh,
        UnaryOp::Cosh,
        UnaryOp::Asinh,
        UnaryOp::Acosh,
        UnaryOp::Atanh,
        UnaryOp::Sign,
        UnaryOp::Round,
    ];

    /// Every binary op, for parsers and tests.
    pub const BINARY: [BinaryOp; 21] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Equal,
        BinaryOp::Less,
        BinaryOp::Greater,
        BinaryOp::And,
        BinaryOp::Or,
        BinaryOp::Mod,
        BinaryOp::Fmod,
        BinaryOp::GreaterOrEqual,
        BinaryOp::LessOrEqual,
        BinaryOp::BitAnd,
        BinaryOp::BitOr,
        BinaryOp::BitXor,
        BinaryOp::ShiftLeft,
        BinaryOp::ShiftRight,
    ];

    /// The allowed number of inputs (including absent optional ones), as an inclusive range.
    /// `usize::MAX` as the upper bound means variadic.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Op::Input | Op::Const(_) => (0, 0),
            Op::Conv(_) | Op::QConv { .. } | Op::QMatMul { .. } | Op::QGemm { .. } => (2, 3),
            Op::ConvTranspose(_) => (2, 3),
            Op::GroupNorm { .. } => (3, 3),
            Op::Gemm { .. } => (2, 3),
            Op::BatchNorm { .. } => (5, 5),
            Op::Binary(_)
            | Op::MatMul
            | Op::Gather { .. }
            | Op::GatherElements { .. }
            | Op::GatherND { .. }
            | Op::GridSample { .. }
            | Op::ConvWeightGrad(_)
            | Op::MaxPoolGrad(_)
            | Op::AveragePoolGrad(_)
            | Op::ClipGrad { .. }
            | Op::QAdd
            | Op::QMul => (2, 2),
            Op::ScatterElements { .. } | Op::ScatterND { .. } => (3, 3),
            Op::NonMaxSuppression { .. } => (2, 5),
            Op::Range { .. } | Op::ReshapeDyn { .. } | Op::ExpandDyn { .. } => (1, usize::MAX),
            Op::Pad { computed, .. } if !computed.is_empty() => (1, usize::MAX),
            Op::Resize(ResizeAttrs { target: ResizeTarget::DimSizes { .. }, .. }) => (1, usize::MAX),
            Op::Where => (3, 3),
            Op::LayerNorm { .. } | Op::FakeQuantize { .. } => (2, 3),
            Op::FakeQuantizeGrad { .. } => (3, 4),
            Op::ConvInteger(_) | Op::MatMulInteger => (2, 4),
            Op::Concat { .. } | Op::QConcat { .. } => (1, usize::MAX),
            _ => (1, 1),
        }
    }

    /// The allowed input count in words ("2", "2 to 3", "at least 1"), for error messages.
    pub fn arity_text(&self) -> String {
        match self.arity() {
            (lo, usize::MAX) => format!("at least {lo}"),
            (lo, hi) if lo == hi => format!("{lo}"),
            (lo, hi) => format!("{lo} to {hi}"),
        }
    }

    /// Number of results.
    pub fn num_outputs(&self) -> usize {
        match self {
            Op::DynamicQuantize => 3,
            Op::TopK { .. } | Op::FakeQuantizeGrad { .. } => 2,
            Op::Split { sizes, .. } => sizes.len(),
            _ => 1,
        }
    }

    /// Whether input `slot` is read only for its dims, never its values: the input of shape,
    /// every input of range, and the reference inputs (after the first) of reshape_dyn and
    /// expand_dyn. Such a value is known once the input shapes are (the JIT folds these ops per
    /// input shape).
    pub fn reads_only_dims(&self, slot: usize) -> bool {
        match self {
            Op::Shape { .. } | Op::Range { .. } => true,
            Op::ReshapeDyn { .. } | Op::ExpandDyn { .. } => slot > 0,
            _ => false,
        }
    }

    /// The symbol of a result dim that depends on the input data, not only its shape (NonZero,
    /// NonMaxSuppression): inference gives the result that dim as this symbol, which no graph
    /// input binds; the interpreter computes the result and takes its size from it. The JIT
    /// cannot plan memory for such a graph ahead of the run and hands it to the interpreter
    /// whole (`qforge_codegen::JitExecutable::interpreted`).
    pub fn data_dependent(&self) -> Option<&str> {
        match self {
            Op::NonZero { count } | Op::NonMaxSuppression { count, .. } => Some(count),
            _ => None,
        }
    }

    /// Whether the op is one of the fused or integer ops that consume quantized types directly.
    pub fn is_integer_kernel(&self) -> bool {
        matches!(
            self,
            Op::QConv { .. }
                | Op::QMatMul { .. }
                | Op::QGemm { .. }
                | Op::QAdd
                | Op::QMul
                | Op::QGlobalAveragePool
                | Op::QAveragePool(_)
                | Op::QConcat { .. }
                | Op::ConvInteger(_)
                | Op::MatMulInteger
        )
    }
}
