//! Quantization schemes: from a calibrated range `[min, max]` to a scale and zero point.
//!
//! The real value of a stored integer `q` is `(q - zero_point) * scale` ([`qforge_ir::quant`]).
//!
//! # Formulas (the seed, section 6.1.1)
//!
//! First the range is widened to contain zero, `min = min(min, 0)`, `max = max(max, 0)`, so that
//! the real zero (padding, ReLU's floor) is represented exactly. Then, with `b` the bit width:
//!
//! * **symmetric**: `scale = max(|min|, |max|) / (2^(b-1) - 1)` (`/127` at 8 bits, `/7` at 4
//!   bits). The zero point is `0` for signed storage and `2^(b-1)` (`128`, `8`) for unsigned
//!   storage, so a symmetric `u8` code is the `i8` code plus 128 and the grid is the same. Only
//!   `[-127, 127]` (`[1, 255]` in `u8`) is produced from in-range values, as in ONNX Runtime's
//!   symmetric ranges.
//! * **asymmetric**: `scale = (max - min) / (2^b - 1)` (`/255`, `/15`) and
//!   `zero_point = round(qmin - min / scale)` where `qmin` is the storage minimum: for `u8`
//!   this is the seed's `round(-min / scale)` in `[0, 255]`; for `i8` it is the same value shifted
//!   by `-128` (the seed's `[0, 2] -> [-128, 127]` example).
//!
//! These are ONNX Runtime's `compute_scale_zp` (`onnxruntime/python/tools/quantization/
//! quant_utils.py`), evaluated the same way so qforge's parameters match ORT's bit for bit: the
//! range difference in f32, the division by the number of steps in f64, the zero point from the
//! f64 scale (before it is rounded to f32), rounding half to even ([`qforge_ir::numerics`]).
//! Two deliberate differences from ORT:
//! * symmetric `u8` uses zero point 128, so that a symmetric `u8` code is the `i8` code plus 128
//!   (PyTorch's symmetric `quint8` observers use 128 too, though they divide by 127.5). Current
//!   ORT narrows symmetric `u8` to `[0, 254]` and gets `round(254 / 2) = 127`; its scale,
//!   `max|x| / 127`, is the same as qforge's.
//! * where ORT's f32 difference `max - min` overflows to infinity, qforge takes it in f64 and stays
//!   finite.
//!
//! # Degenerate ranges
//! When the scale would be zero or below the smallest normal f32 (every calibrated value is
//! zero, or within about 1e-36 of it), the scale is `1.0` (ORT's choice) and the zero point is
//! the one the formula gives for the range `[0, 0]` (signed symmetric 0, unsigned symmetric
//! `2^(b-1)`, asymmetric `qmin`; ORT uses 0 in every case): the real zero stays exact, nothing is
//! NaN or infinite. A range with `min == max` (a constant tensor, a dead channel) is valid once
//! widened to zero but is reported too. Both come back as warnings ([`Params::warning`],
//! [`QuantResult::warnings`]); the caller adds the node name.

use qforge_ir::{numerics, DType, QuantParams, Tensor, TensorData};
use std::fmt;

/// The integer type values are quantized to. 4-bit values are held one per byte in the storage
/// type ([`QType::storage`]) and packed two per byte only for export and kernels
/// ([`pack_int4`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QType {
    I8,
    U8,
    I4,
    U4,
}

impl QType {
    pub fn bits(self) -> u32 {
        match self {
            QType::I8 | QType::U8 => 8,
            QType::I4 | QType::U4 => 4,
        }
    }

    pub fn is_signed(self) -> bool {
        matches!(self, QType::I8 | QType::I4)
    }

    /// The representable codes `(qmin, qmax)`: i8 `[-128, 127]`, u8 `[0, 255]`, i4 `[-8, 7]`,
    /// u4 `[0, 15]`.
    pub fn range(self) -> (i32, i32) {
        let b = self.bits();
        if self.is_signed() {
            (-(1 << (b - 1)), (1 << (b - 1)) - 1)
        } else {
            (0, (1 << b) - 1)
        }
    }

    /// The IR dtype holding one code per element (4-bit codes widen to a byte).
    pub fn storage(self) -> DType {
        if self.is_signed() {
            DType::I8
        } else {
            DType::U8
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QType::I8 => "i8",
            QType::U8 => "u8",
            QType::I4 => "i4",
            QType::U4 => "u4",
        }
    }
}

impl fmt::Display for QType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A quantization scheme: the integer type and whether the grid is symmetric around zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scheme {
    pub qtype: QType,
    pub symmetric: bool,
}

impl Scheme {
    pub const fn symmetric(qtype: QType) -> Scheme {
        Scheme { qtype, symmetric: true }
    }

    pub const fn asymmetric(qtype: QType) -> Scheme {
        Scheme { qtype, symmetric: false }
    }

    /// The number of steps the range is divided into: `2^(b-1) - 1` for symmetric schemes (the
    /// steps from 0 to `max|x|`), `2^b - 1` for asymmetric ones (from `min` to `max`).
    pub fn steps(self) -> u32 {
        let b = self.qtype.bits();
        if self.symmetric {
            (1 << (b - 1)) - 1
        } else {
            (1 << b) - 1
        }
    }

    /// The zero point of a symmetric scheme: 0 for signed types, `2^(b-1)` for unsigned ones.
    pub fn symmetric_zero_point(self) -> i32 {
        if self.qtype.is_signed() {
            0
        } else {
            1 << (self.qtype.bits() - 1)
        }
    }
}

impl Scheme {
    /// The scheme's name in qconfig and profile files: `i8-symmetric`, `u8-asymmetric`, ...
    pub fn name(self) -> String {
        format!("{}-{}", self.qtype, if self.symmetric { "symmetric" } else { "asymmetric" })
    }

    /// Reads a full scheme name ([`Scheme::name`]: a type and `symmetric` or `asymmetric`).
    pub fn parse(s: &str) -> Option<Scheme> {
        let (t, kind) = s.split_once('-')?;
        let qtype = [QType::I8, QType::U8, QType::I4, QType::U4].into_iter().find(|q| q.name() == t)?;
        match kind {
            "symmetric" => Some(Scheme::symmetric(qtype)),
            "asymmetric" => Some(Scheme::asymmetric(qtype)),
            _ => None,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.symmetric { "symmetric" } else { "asymmetric" };
        write!(f, "{kind} {}", self.qtype)
    }
}

/// How many (scale, zero point) pairs a tensor gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Granularity {
    #[default]
    PerTensor,
    /// One pair per index of `axis` (axis 0, the output channel, for conv and gemm weights).
    PerChannel { axis: usize },
    /// One pair per run of `size` consecutive elements along `axis` (4-bit weights: 32, 64, 128).
    PerGroup { axis: usize, size: usize },
}

/// A scheme could not be applied.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SchemeError {
    #[error("calibration range [{min}, {max}] is not finite")]
    NonFiniteRange { min: f32, max: f32 },
    #[error("calibration range is inverted: min {min} > max {max}")]
    InvertedRange { min: f32, max: f32 },
    #[error("tensor contains {what} at element {index}")]
    NonFiniteValue { what: &'static str, index: usize },
    #[error("{0}")]
    Shape(String),
    #[error("{qtype} is not a 4-bit type")]
    NotFourBit { qtype: QType },
    #[error("value {value} at element {index} does not fit in {qtype}")]
    OutOfRange { value: i32, index: usize, qtype: QType },
}

/// One scale and zero point, and why the range needed attention (if it did).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub scale: f32,
    pub zero_point: i32,
    pub warning: Option<String>,
}

/// Parameters of a tensor: what goes into its [`qforge_ir::TensorType`] (`params` and `dtype`),
/// the integer type and the warnings for degenerate ranges.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantResult {
    pub params: QuantParams,
    pub qtype: QType,
    /// The storage dtype ([`QType::storage`]).
    pub dtype: DType,
    pub warnings: Vec<String>,
}

/// Rounds half to even (the numerics contract) and clamps into `qtype`'s codes.
fn round_to_code(x: f64, qtype: QType) -> i32 {
    let (lo, hi) = qtype.range();
    numerics::saturate_f64(x, DType::I32).clamp(lo as i64, hi as i64) as i32
}

/// The scale and zero point of `scheme` for the calibrated range `[min, max]` (see the module
/// documentation for the formulas). Errors on a non-finite or inverted range.
pub fn params_for_range(min: f32, max: f32, scheme: Scheme) -> Result<Params, SchemeError> {
    if !(min.is_finite() && max.is_finite()) {
        return Err(SchemeError::NonFiniteRange { min, max });
    }
    if min > max {
        return Err(SchemeError::InvertedRange { min, max });
    }
    let lo = min.min(0.0);
    let hi = max.max(0.0);
    let (qmin, _) = scheme.qtype.range();
    let steps = scheme.steps() as f64;
    let scale64 = if scheme.symmetric {
        lo.abs().max(hi) as f64 / steps
    } else {
        let d = hi - lo;
        let d = if d.is_finite() { d as f64 } else { hi as f64 - lo as f64 };
        d / steps
    };
    if scale64 < f32::MIN_POSITIVE as f64 {
        let zero_point = if scheme.symmetric { scheme.symmetric_zero_point() } else { qmin };
        let warning = format!(
            "degenerate calibration range [{min}, {max}]: every value is zero (or within {:.1e} of it); \
             scale 1 and zero point {zero_point} are used",
            f32::MIN_POSITIVE as f64 * steps
        );
        return Ok(Params { scale: 1.0, zero_point, warning: Some(warning) });
    }
    let zero_point = if scheme.symmetric {
        scheme.symmetric_zero_point()
    } else {
        round_to_code(qmin as f64 - lo as f64 / scale64, scheme.qtype)
    };
    let warning =
        (min == max).then(|| format!("constant calibration range (min == max == {min}): quantized over [{lo}, {hi}]"));
    Ok(Params { scale: scale64 as f32, zero_point, warning })
}

/// Per-tensor parameters for the range `[min, max]`.
pub fn per_tensor(min: f32, max: f32, scheme: Scheme) -> Result<QuantResult, SchemeError> {
    let p = params_for_range(min, max, scheme)?;
    Ok(QuantResult {
        params: QuantParams::per_tensor(p.scale, p.zero_point),
        qtype: scheme.qtype,
        dtype: scheme.qtype.storage(),
        warnings: p.warning.into_iter().collect(),
    })
}

/// Per-channel parameters along `axis`, one range per channel. Warnings name the channel.
pub fn per_channel(ranges: &[(f32, f32)], axis: usize, scheme: Scheme) -> Result<QuantResult, SchemeError> {
    if ranges.is_empty() {
        return Err(SchemeError::Shape(format!("per-channel quantization along axis {axis} with no channels")));
    }
    let mut scales = Vec::with_capacity(ranges.len());
    let mut zero_points = Vec::with_capacity(ranges.len());
    let mut warnings = vec![];
    for (c, &(min, max)) in ranges.iter().enumerate() {
        let p = params_for_range(min, max, scheme)?;
        scales.push(p.scale);
        zero_points.push(p.zero_point);
        if let Some(w) = p.warning {
            warnings.push(format!("channel {c}: {w}"));
        }
    }
    Ok(QuantResult {
        params: QuantParams::PerAxis { axis, scales, zero_points },
        qtype: scheme.qtype,
        dtype: scheme.qtype.storage(),
        warnings,
    })
}

fn non_finite(values: &[f32]) -> Result<(), SchemeError> {
    match values.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(index) => {
            let x = values[index];
            let what = if x.is_nan() {
                "NaN"
            } else if x > 0.0 {
                "+inf"
            } else {
                "-inf"
            };
            Err(SchemeError::NonFiniteValue { what, index })
        }
    }
}

fn check_shape(values: &[f32], shape: &[usize], axis: usize) -> Result<(), SchemeError> {
    let n: usize = shape.iter().product();
    if n != values.len() {
        return Err(SchemeError::Shape(format!("{} values do not fit shape {shape:?}", values.len())));
    }
    if axis >= shape.len() {
        return Err(SchemeError::Shape(format!("axis {axis} is out of range for shape {shape:?}")));
    }
    Ok(())
}

/// `(outer, channels, inner)` sizes of a row-major tensor split at `axis`.
fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

/// The `(min, max)` of each index of `axis` of a row-major tensor (a weight's per-channel
/// ranges). An empty channel has range `(0, 0)`. Errors on NaN or infinity.
pub fn channel_ranges(values: &[f32], shape: &[usize], axis: usize) -> Result<Vec<(f32, f32)>, SchemeError> {
    check_shape(values, shape, axis)?;
    non_finite(values)?;
    let (outer, channels, inner) = split_at_axis(shape, axis);
    let mut ranges = vec![(f32::INFINITY, f32::NEG_INFINITY); channels];
    for o in 0..outer {
        for (c, r) in ranges.iter_mut().enumerate() {
            let start = (o * channels + c) * inner;
            let (lo, hi) = min_max(&values[start..start + inner]);
            r.0 = r.0.min(lo);
            r.1 = r.1.max(hi);
        }
    }
    Ok(ranges.into_iter().map(|(lo, hi)| if lo > hi { (0.0, 0.0) } else { (lo, hi) }).collect())
}

/// The smallest and largest of `values` (finite: checked before), `(inf, -inf)` when empty; in
/// sixteen running pairs (one vector's lanes) folded at the end, the same extremes as one pair.
fn min_max(values: &[f32]) -> (f32, f32) {
    const LANES: usize = 16;
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for ((l, h), &x) in lo.iter_mut().zip(&mut hi).zip(c) {
            *l = l.min(x);
            *h = h.max(x);
        }
    }
    let fold = |(a, b): (f32, f32), &x: &f32| (a.min(x), b.max(x));
    let (l, h) = lo.iter().zip(&hi).fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), (&l, &h)| (a.min(l), b.max(h)));
    rest.iter().fold((l, h), fold)
}

/// Parameters of a constant tensor (a weight) from its own values: per tensor when `axis` is
/// `None`, else per channel along `axis`.
pub fn tensor_params(
    values: &[f32],
    shape: &[usize],
    axis: Option<usize>,
    scheme: Scheme,
) -> Result<QuantResult, SchemeError> {
    match axis {
        Some(axis) => per_channel(&channel_ranges(values, shape, axis)?, axis, scheme),
        None => {
            non_finite(values)?;
            let (min, max) =
                values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            let (min, max) = if values.is_empty() { (0.0, 0.0) } else { (min, max) };
            per_tensor(min, max, scheme)
        }
    }
}

/// Quantizes a row-major tensor with per-tensor or per-axis parameters into `qtype` codes:
/// `saturate(round_half_even(x / scale) + zero_point)` ([`numerics::quantize`]), then clamped to
/// the 4-bit range for 4-bit types.
pub fn quantize_values(
    values: &[f32],
    shape: &[usize],
    params: &QuantParams,
    qtype: QType,
) -> Result<Vec<i32>, SchemeError> {
    codes(values, shape, params, qtype, |c| c)
}

/// [`quantize_values`] as a tensor of `qtype`'s storage type, written straight from the codes
/// (no intermediate vector: a large weight is held as f32 and its codes, nothing more).
pub fn quantize_tensor(
    values: &[f32],
    shape: &[usize],
    params: &QuantParams,
    qtype: QType,
) -> Result<Tensor, SchemeError> {
    // the codes are clamped to `qtype`'s range, which its storage type holds: no conversion of
    // a general value (through f64) is needed
    let data = match qtype.storage() {
        DType::I8 => TensorData::I8(codes(values, shape, params, qtype, |c| c as i8)?),
        _ => TensorData::U8(codes(values, shape, params, qtype, |c| c as u8)?),
    };
    Tensor::new(shape.to_vec(), data)
        .ok_or_else(|| SchemeError::Shape(format!("{} codes do not fit shape {shape:?}", values.len())))
}

/// The codes of [`quantize_values`], each stored as `store` makes it; the shapes are checked
/// first. Written a channel's run of values at a time (its parameters read once);
/// [`numerics::quantize_clamped`] is [`numerics::quantize`] then the clamp to `qtype`'s range,
/// without a library rounding call.
fn codes<T>(
    values: &[f32],
    shape: &[usize],
    params: &QuantParams,
    qtype: QType,
    store: impl Fn(i32) -> T,
) -> Result<Vec<T>, SchemeError> {
    let (lo, hi) = qtype.range();
    let (channels, inner) = channel_runs(values, shape, params)?;
    let mut out = Vec::with_capacity(values.len());
    for (k, run) in values.chunks(inner).enumerate() {
        let c = k % channels;
        let (scale, zero_point) = (params.scale(c), params.zero_point(c));
        out.extend(run.iter().map(|&x| store(numerics::quantize_clamped(x, scale, zero_point, lo, hi))));
    }
    Ok(out)
}

/// How `values` (of `shape`) fall into runs of one channel's parameters: `(channels, inner)`,
/// run `k` of `inner` values belonging to channel `k % channels` (one run of everything per
/// tensor); the shapes checked against the parameters.
fn channel_runs(values: &[f32], shape: &[usize], params: &QuantParams) -> Result<(usize, usize), SchemeError> {
    let (channels, inner) = match params.axis() {
        None => {
            let n: usize = shape.iter().product();
            if n != values.len() {
                return Err(SchemeError::Shape(format!("{} values do not fit shape {shape:?}", values.len())));
            }
            (1, values.len().max(1))
        }
        Some(axis) => {
            check_shape(values, shape, axis)?;
            if shape[axis] != params.len() {
                return Err(SchemeError::Shape(format!(
                    "{} channel parameters for a dimension of size {} (axis {axis})",
                    params.len(),
                    shape[axis]
                )));
            }
            let (_, channels, inner) = split_at_axis(shape, axis);
            (channels.max(1), inner.max(1))
        }
    };
    Ok((channels, inner))
}

/// Per-group (block-wise) parameters: one (scale, zero point) per run of `group_size` consecutive
/// elements along `axis`; the last run of a dimension not divisible by the group size is shorter.
/// The parameters form a tensor of `shape` (the value's shape with `ceil(dim / group_size)` at
/// `axis`), row-major: the layout of [`QuantParams::PerGroup`], which static quantization builds
/// from them.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupParams {
    pub axis: usize,
    pub group_size: usize,
    pub shape: Vec<usize>,
    pub scales: Vec<f32>,
    pub zero_points: Vec<i32>,
    pub qtype: QType,
    pub warnings: Vec<String>,
}

impl GroupParams {
    /// Index into `scales`/`zero_points` of element `index` of a tensor of shape `value_shape`.
    pub fn group_of(&self, value_shape: &[usize], index: usize) -> usize {
        let (_, dim, inner) = split_at_axis(value_shape, self.axis);
        let groups = self.shape[self.axis];
        let o = index / (dim * inner);
        let a = (index / inner) % dim;
        let i = index % inner;
        (o * groups + a / self.group_size) * inner + i
    }

    /// Quantizes a tensor of `shape` (the shape the parameters were computed for).
    pub fn quantize(&self, values: &[f32], shape: &[usize]) -> Result<Vec<i32>, SchemeError> {
        check_shape(values, shape, self.axis)?;
        let (lo, hi) = self.qtype.range();
        Ok(values
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let g = self.group_of(shape, i);
                let q = numerics::quantize(x, self.scales[g], self.zero_points[g], self.qtype.storage());
                (q as i32).clamp(lo, hi)
            })
            .collect())
    }
}

/// Per-group parameters of a row-major tensor (see [`GroupParams`]).
pub fn per_group(
    values: &[f32],
    shape: &[usize],
    axis: usize,
    group_size: usize,
    scheme: Scheme,
) -> Result<GroupParams, SchemeError> {
    check_shape(values, shape, axis)?;
    if group_size == 0 {
        return Err(SchemeError::Shape("group size 0".into()));
    }
    non_finite(values)?;
    let (outer, dim, inner) = split_at_axis(shape, axis);
    let groups = dim.div_ceil(group_size);
    let mut pshape = shape.to_vec();
    pshape[axis] = groups;
    let n = outer * groups * inner;
    let mut ranges = vec![(f32::INFINITY, f32::NEG_INFINITY); n];
    for (idx, &x) in values.iter().enumerate() {
        let o = idx / (dim * inner);
        let a = (idx / inner) % dim;
        let i = idx % inner;
        let r = &mut ranges[(o * groups + a / group_size) * inner + i];
        r.0 = r.0.min(x);
        r.1 = r.1.max(x);
    }
    let mut out = GroupParams {
        axis,
        group_size,
        shape: pshape,
        scales: Vec::with_capacity(n),
        zero_points: Vec::with_capacity(n),
        qtype: scheme.qtype,
        warnings: vec![],
    };
    for (g, (lo, hi)) in ranges.into_iter().enumerate() {
        let (lo, hi) = if lo > hi { (0.0, 0.0) } else { (lo, hi) };
        let p = params_for_range(lo, hi, scheme)?;
        out.scales.push(p.scale);
        out.zero_points.push(p.zero_point);
        if let Some(w) = p.warning {
            out.warnings.push(format!("group {g}: {w}"));
        }
    }
    Ok(out)
}

/// Packs 4-bit codes two per byte, ONNX's INT4/UINT4 layout: element `2i` in the low nibble of
/// byte `i`, element `2i + 1` in the high nibble; an odd count leaves the last high nibble zero.
pub fn pack_int4(codes: &[i32], qtype: QType) -> Result<Vec<u8>, SchemeError> {
    if qtype.bits() != 4 {
        return Err(SchemeError::NotFourBit { qtype });
    }
    let (lo, hi) = qtype.range();
    if let Some(index) = codes.iter().position(|&v| v < lo || v > hi) {
        return Err(SchemeError::OutOfRange { value: codes[index], index, qtype });
    }
    Ok(codes
        .chunks(2)
        .map(|pair| {
            let low = (pair[0] & 0xF) as u8;
            let high = pair.get(1).map_or(0, |&v| (v & 0xF) as u8);
            low | (high << 4)
        })
        .collect())
}

/// Unpacks `len` 4-bit codes packed by [`pack_int4`], sign-extending for [`QType::I4`].
pub fn unpack_int4(bytes: &[u8], len: usize, qtype: QType) -> Result<Vec<i32>, SchemeError> {
    if qtype.bits() != 4 {
        return Err(SchemeError::NotFourBit { qtype });
    }
    if bytes.len() < len.div_ceil(2) {
        return Err(SchemeError::Shape(format!("{} bytes cannot hold {len} 4-bit values", bytes.len())));
    }
    Ok((0..len)
        .map(|i| {
            let nibble = (bytes[i / 2] >> (4 * (i % 2))) & 0xF;
            if qtype.is_signed() {
                ((nibble << 4) as i8 >> 4) as i32
            } else {
                nibble as i32
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const I8S: Scheme = Scheme::symmetric(QType::I8);
    const U8S: Scheme = Scheme::symmetric(QType::U8);
    const I8A: Scheme = Scheme::asymmetric(QType::I8);
    const U8A: Scheme = Scheme::asymmetric(QType::U8);

    fn p(min: f32, max: f32, s: Scheme) -> (f32, i32) {
        let p = params_for_range(min, max, s).unwrap();
        (p.scale, p.zero_point)
    }

    #[test]
    fn symmetric_formula() {
        assert_eq!(p(-1.0, 1.0, I8S), (1.0 / 127.0, 0));
        assert_eq!(p(-1.0, 1.0, U8S), (1.0 / 127.0, 128));
        // max(|min|, |max|)
        assert_eq!(p(-3.0, 1.0, I8S), (3.0 / 127.0, 0));
        assert_eq!(p(-0.5, 2.54, I8S), (2.54 / 127.0, 0));
        // 4-bit: /7
        assert_eq!(p(-1.0, 0.7, Scheme::symmetric(QType::I4)), (1.0 / 7.0, 0));
        assert_eq!(p(-1.0, 0.7, Scheme::symmetric(QType::U4)), (1.0 / 7.0, 8));
        // +-max|x| lands on +-127: the symmetric grid is the same for i8 and u8
        let (s, _) = p(-1.0, 1.0, I8S);
        assert_eq!(numerics::quantize(1.0, s, 0, DType::I8), 127);
        assert_eq!(numerics::quantize(-1.0, s, 0, DType::I8), -127);
        assert_eq!(numerics::quantize(-1.0, s, 128, DType::U8), 1);
        assert_eq!(numerics::quantize(1.0, s, 128, DType::U8), 255);
    }

    #[test]
    fn asymmetric_formula() {
        assert_eq!(p(0.0, 2.0, U8A), (2.0 / 255.0, 0));
        assert_eq!(p(0.0, 2.0, I8A), (2.0 / 255.0, -128));
        // [-1, 3]: scale 4/255, zp = round(1 / (4/255)) = round(63.75) = 64
        assert_eq!(p(-1.0, 3.0, U8A), (4.0 / 255.0, 64));
        assert_eq!(p(-1.0, 3.0, I8A), (4.0 / 255.0, -64));
        // all negative: zp at the top
        assert_eq!(p(-2.0, -1.0, U8A), (2.0 / 255.0, 255));
        assert_eq!(p(-2.0, -1.0, I8A), (2.0 / 255.0, 127));
        // 4-bit: /15
        assert_eq!(p(-1.0, 2.0, Scheme::asymmetric(QType::U4)), (3.0 / 15.0, 5));
        assert_eq!(p(-1.0, 2.0, Scheme::asymmetric(QType::I4)), (3.0 / 15.0, -3));
        // min and max map to the ends of the storage range, zero exactly to the zero point
        let (s, z) = p(-1.0, 3.0, U8A);
        assert_eq!(numerics::quantize(-1.0, s, z, DType::U8), 0);
        assert_eq!(numerics::quantize(3.0, s, z, DType::U8), 255);
        assert_eq!(numerics::dequantize(numerics::quantize(0.0, s, z, DType::U8), s, z), 0.0);
    }

    #[test]
    fn zero_point_rounds_half_to_even() {
        // -min/scale = 127.5 exactly: [-1, 1] asymmetric has scale 2/255.
        // ORT: numpy.round(127.5) = 128 (half to even); the f64 quotient is 127.49999999999999
        // or 127.5 depending on the scale's rounding, so compare with the f64 computation.
        let (s, z) = p(-1.0, 1.0, U8A);
        assert_eq!(s, 2.0 / 255.0);
        let expected = (1.0f64 / (2.0f64 / 255.0)).round_ties_even() as i32;
        assert_eq!(z, expected);
        // half to even in a constructed case: -min/scale = 2.5 -> 2
        let q = Scheme::asymmetric(QType::U4);
        // scale = (max - min)/15 = 1 when max - min = 15; min = -2.5 -> zp = round(2.5) = 2
        assert_eq!(p(-2.5, 12.5, q), (1.0, 2));
        assert_eq!(p(-3.5, 11.5, q), (1.0, 4));
    }

    #[test]
    fn range_always_contains_zero() {
        // [2, 4] is quantized as [0, 4]: zero is exact
        assert_eq!(p(2.0, 4.0, U8A), (4.0 / 255.0, 0));
        assert_eq!(p(2.0, 4.0, I8S), (4.0 / 127.0, 0));
        assert_eq!(p(-4.0, -2.0, U8A), (4.0 / 255.0, 255));
        for s in [I8S, U8S, I8A, U8A] {
            for (lo, hi) in [(0.3f32, 0.9f32), (-7.0, -0.25), (-1.5, 2.5), (1e-3, 1e3)] {
                let p = params_for_range(lo, hi, s).unwrap();
                let q0 = numerics::quantize(0.0, p.scale, p.zero_point, s.qtype.storage());
                assert_eq!(numerics::dequantize(q0, p.scale, p.zero_point), 0.0, "{s} [{lo}, {hi}]");
                // both ends are within half a step after the round trip
                for x in [lo, hi] {
                    let q = numerics::quantize(x, p.scale, p.zero_point, s.qtype.storage());
                    let back = numerics::dequantize(q, p.scale, p.zero_point);
                    assert!((back - x).abs() <= p.scale * 0.5 + 1e-6, "{s} {x} -> {back}");
                }
            }
        }
    }

    #[test]
    fn degenerate_ranges_give_finite_scales_and_warnings() {
        for s in [I8S, U8S, I8A, U8A, Scheme::symmetric(QType::I4), Scheme::asymmetric(QType::U4)] {
            // all zeros
            let r = params_for_range(0.0, 0.0, s).unwrap();
            assert_eq!(r.scale, 1.0);
            let expect_zp = if s.symmetric { s.symmetric_zero_point() } else { s.qtype.range().0 };
            assert_eq!(r.zero_point, expect_zp);
            assert!(r.warning.as_deref().unwrap().contains("degenerate"), "{:?}", r.warning);
            // zero is still exact
            let q = numerics::quantize(0.0, r.scale, r.zero_point, s.qtype.storage());
            assert_eq!(numerics::dequantize(q, r.scale, r.zero_point), 0.0);
            // a range below the smallest normal scale
            let r = params_for_range(-1e-38, 1e-38, s).unwrap();
            assert_eq!(r.scale, 1.0);
            assert!(r.warning.is_some());
            // constant tensors: min == max != 0 is valid once widened to zero, and reported
            for c in [5.0f32, -5.0, 1e-30] {
                let r = params_for_range(c, c, s).unwrap();
                assert!(r.scale.is_finite() && r.scale > 0.0, "{s} {c}: {}", r.scale);
                assert!(r.warning.as_deref().unwrap().contains("constant"), "{:?}", r.warning);
                let q = numerics::quantize(c, r.scale, r.zero_point, s.qtype.storage());
                let back = numerics::dequantize(q, r.scale, r.zero_point);
                assert!((back - c).abs() <= r.scale, "{s} {c} -> {back}");
            }
        }
        assert_eq!(p(5.0, 5.0, U8A), (5.0 / 255.0, 0));
        assert_eq!(p(5.0, 5.0, I8S), (5.0 / 127.0, 0));
        // huge ranges stay finite where f32 max - min overflows
        let r = params_for_range(-3e38, 3e38, U8A).unwrap();
        assert!(r.scale.is_finite() && r.scale > 0.0);
        assert!((127..=128).contains(&r.zero_point));
        let r = params_for_range(f32::MIN, f32::MAX, I8S).unwrap();
        assert!(r.scale.is_finite());
        assert_eq!(
            params_for_range(0.0, 0.0, I8S).unwrap().warning.unwrap(),
            "degenerate calibration range [0, 0]: every value is zero (or within 1.5e-36 of it); \
             scale 1 and zero point 0 are used"
        );
        assert_eq!(
            params_for_range(5.0, 5.0, U8A).unwrap().warning.unwrap(),
            "constant calibration range (min == max == 5): quantized over [0, 5]"
        );
        // no warning for an ordinary range
        assert_eq!(params_for_range(-1.0, 1.0, I8S).unwrap().warning, None);
    }

    #[test]
    fn bad_ranges_are_errors() {
        assert!(matches!(params_for_range(f32::NAN, 1.0, I8S), Err(SchemeError::NonFiniteRange { .. })));
        assert!(matches!(params_for_range(0.0, f32::INFINITY, U8A), Err(SchemeError::NonFiniteRange { .. })));
        assert!(matches!(params_for_range(2.0, 1.0, U8A), Err(SchemeError::InvertedRange { .. })));
        let e = tensor_params(&[1.0, f32::NAN], &[2], None, I8S).unwrap_err();
        assert_eq!(e.to_string(), "tensor contains NaN at element 1");
    }

    #[test]
    fn per_tensor_result_carries_type() {
        let r = per_tensor(-1.0, 3.0, U8A).unwrap();
        assert_eq!(r.params, QuantParams::per_tensor(4.0 / 255.0, 64));
        assert_eq!(r.dtype, DType::U8);
        assert_eq!(r.qtype, QType::U8);
        assert!(r.warnings.is_empty());
        assert!(r.params.check().is_ok());
        let r = per_tensor(0.0, 0.0, I8A).unwrap();
        assert_eq!(r.dtype, DType::I8);
        assert_eq!(r.warnings.len(), 1);
        assert!(r.params.check().is_ok());
    }

    #[test]
    fn per_channel_weights() {
        // conv weight [3 out, 1 in, 1, 2]: channel 0 in [-1, 0.6], channel 1 all zero, channel 2 [0.2, 2.54]
        let w = [-1.0, 0.6, 0.0, 0.0, 0.2, 2.54];
        let shape = [3, 1, 1, 2];
        assert_eq!(channel_ranges(&w, &shape, 0).unwrap(), vec![(-1.0, 0.6), (0.0, 0.0), (0.2, 2.54)]);
        let r = tensor_params(&w, &shape, Some(0), I8S).unwrap();
        assert_eq!(
            r.params,
            QuantParams::PerAxis { axis: 0, scales: vec![1.0 / 127.0, 1.0, 2.54 / 127.0], zero_points: vec![0, 0, 0] }
        );
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].starts_with("channel 1: degenerate"), "{:?}", r.warnings);
        assert!(r.params.check().is_ok());
        let q = quantize_values(&w, &shape, &r.params, QType::I8).unwrap();
        assert_eq!(q, vec![-127, 76, 0, 0, 10, 127]);

        // gemm weight [K=2, N=3] without trans_b: the output channel is axis 1
        let w = [1.0, -2.0, 0.0, 3.0, 4.0, 0.5];
        assert_eq!(channel_ranges(&w, &[2, 3], 1).unwrap(), vec![(1.0, 3.0), (-2.0, 4.0), (0.0, 0.5)]);
        let r = tensor_params(&w, &[2, 3], Some(1), U8A).unwrap();
        assert_eq!(r.params.scale(1), 6.0 / 255.0);
        assert_eq!(r.params.zero_point(1), 85);
        assert_eq!(r.params.zero_point(0), 0);
        assert!(channel_ranges(&w, &[2, 3], 2).is_err());
        assert!(channel_ranges(&w, &[4, 3], 0).is_err());
        assert!(per_channel(&[], 0, I8S).is_err());
    }

    #[test]
    fn per_tensor_weights_report_constants() {
        let r = tensor_params(&[2.0; 6], &[2, 3], None, I8S).unwrap();
        assert_eq!(r.params, QuantParams::per_tensor(2.0 / 127.0, 0));
        assert_eq!(r.warnings.len(), 1);
        let r = tensor_params(&[-1.0, 1.0], &[2], None, I8S).unwrap();
        assert!(r.warnings.is_empty());
        let r = tensor_params(&[], &[0], None, U8A).unwrap();
        assert_eq!(r.params, QuantParams::per_tensor(1.0, 0));
    }

    #[test]
    fn four_bit_group_params() {
        // [N=2 rows, K=8] weight grouped along K in groups of 4 (last axis)
        let w: Vec<f32> = vec![
            -1.0, 0.5, 0.25, 0.0, /* | */ 0.0, 0.0, 0.0, 0.0, //
            0.1, 0.2, 0.3, 0.7, /* | */ -7.0, 7.0, 3.5, -3.5,
        ];
        let s = Scheme::symmetric(QType::I4);
        let g = per_group(&w, &[2, 8], 1, 4, s).unwrap();
        assert_eq!(g.shape, vec![2, 2]);
        assert_eq!(g.scales, vec![1.0 / 7.0, 1.0, 0.7 / 7.0, 1.0]);
        assert_eq!(g.zero_points, vec![0; 4]);
        assert_eq!(g.warnings.len(), 1);
        assert!(g.warnings[0].starts_with("group 1:"));
        let q = g.quantize(&w, &[2, 8]).unwrap();
        // 0.5 / f32(1/7) = 3.4999998 (the f32 scale is above 1/7) -> 3; 3.5 / 1.0 -> 4 (half to even)
        assert_eq!(q, vec![-7, 3, 2, 0, 0, 0, 0, 0, 1, 2, 3, 7, -7, 7, 4, -4]);
        assert!(q.iter().all(|&v| (-8..=7).contains(&v)));

        // grouping along axis 0 ([K=6, N=2], groups of 4 -> 2 groups, the last one of 2 rows)
        let w: Vec<f32> = (0..12).map(|i| i as f32 - 6.0).collect();
        let a = Scheme::asymmetric(QType::U4);
        let g = per_group(&w, &[6, 2], 0, 4, a).unwrap();
        assert_eq!(g.shape, vec![2, 2]);
        // column 0, rows 0..4: -6, -4, -2, 0 -> [-6, 0]; column 1: -5..1 -> [-5, 1]
        assert_eq!(g.scales[0], 6.0 / 15.0);
        assert_eq!(g.zero_points[0], 15);
        assert_eq!(g.scales[1], 6.0 / 15.0);
        assert_eq!(g.zero_points[1], 12); // round(5 / 0.4) = round(12.5): half to even
                                          // rows 4..6: column 0: 2, 4 -> [0, 4]; column 1: 3, 5 -> [0, 5]
        assert_eq!((g.scales[2], g.zero_points[2]), (4.0 / 15.0, 0));
        assert_eq!((g.scales[3], g.zero_points[3]), (5.0 / 15.0, 0));
        assert_eq!(g.group_of(&[6, 2], 0), 0);
        assert_eq!(g.group_of(&[6, 2], 7), 1);
        assert_eq!(g.group_of(&[6, 2], 8), 2);
        assert_eq!(g.group_of(&[6, 2], 11), 3);
        assert!(per_group(&w, &[6, 2], 0, 0, a).is_err());
    }

    #[test]
    fn int4_pack_round_trip() {
        let signed: Vec<i32> = (-8..=7).chain([3, -1, -8]).collect();
        let packed = pack_int4(&signed, QType::I4).unwrap();
        assert_eq!(packed.len(), signed.len().div_ceil(2));
        // element 0 (-8 = 0x8) low, element 1 (-7 = 0x9) high
        assert_eq!(packed[0], 0x98);
        assert_eq!(unpack_int4(&packed, signed.len(), QType::I4).unwrap(), signed);
        let unsigned: Vec<i32> = (0..=15).chain([9]).collect();
        let packed = pack_int4(&unsigned, QType::U4).unwrap();
        assert_eq!(packed[0], 0x10);
        assert_eq!(packed[8], 0x09); // odd count: last high nibble is zero
        assert_eq!(unpack_int4(&packed, unsigned.len(), QType::U4).unwrap(), unsigned);
        // errors
        assert!(matches!(pack_int4(&[8], QType::I4), Err(SchemeError::OutOfRange { value: 8, .. })));
        assert!(matches!(pack_int4(&[-1], QType::U4), Err(SchemeError::OutOfRange { .. })));
        assert!(matches!(pack_int4(&[1], QType::I8), Err(SchemeError::NotFourBit { .. })));
        assert!(unpack_int4(&[0], 3, QType::I4).is_err());
        // quantize -> pack -> unpack -> dequantize
        let w = [-0.9f32, 0.3, 0.0, 0.65, -0.2];
        let r = tensor_params(&w, &[5], None, Scheme::symmetric(QType::I4)).unwrap();
        let q = quantize_values(&w, &[5], &r.params, QType::I4).unwrap();
        let back = unpack_int4(&pack_int4(&q, QType::I4).unwrap(), 5, QType::I4).unwrap();
        assert_eq!(back, q);
        for (x, q) in w.iter().zip(back) {
            let d = numerics::dequantize(q as i64, r.params.scale(0), 0);
            assert!((d - x).abs() <= r.params.scale(0) / 2.0 + 1e-6);
        }
    }

    #[test]
    fn qtype_facts() {
        assert_eq!(QType::I8.range(), (-128, 127));
        assert_eq!(QType::U8.range(), (0, 255));
        assert_eq!(QType::I4.range(), (-8, 7));
        assert_eq!(QType::U4.range(), (0, 15));
        assert_eq!(QType::I4.storage(), DType::I8);
        assert_eq!(QType::U4.storage(), DType::U8);
        assert_eq!(I8S.steps(), 127);
        assert_eq!(U8A.steps(), 255);
        assert_eq!(Scheme::symmetric(QType::I4).steps(), 7);
        assert_eq!(Scheme::asymmetric(QType::I4).steps(), 15);
        assert_eq!(U8S.to_string(), "symmetric u8");
    }
}
