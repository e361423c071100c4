//! Quantization parameters, carried in a value's type (as MLIR's quant dialect does).
//!
//! The real value of a stored integer `q` is `(q - zero_point) * scale`. See
//! [`crate::numerics`] for how values are rounded and saturated into the storage type.

use crate::Dim;
use std::fmt;

/// Why quantization parameters are invalid, or do not fit the value they quantize.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum QuantError {
    /// Per-axis or per-group parameters name an axis the value does not have.
    #[error("quantization axis {axis} is out of range for rank {rank}")]
    AxisOutOfRange { axis: usize, rank: usize },
    /// Per-axis parameters with a pair count other than the axis' size.
    #[error("{count} per-axis scales for axis {axis} of size {size}")]
    AxisScales { count: usize, axis: usize, size: Dim },
    /// Per-group parameters with a pair count other than the number of groups.
    #[error(
        "{count} per-group scales for shape {shape:?} in groups of {group_size} along axis {axis} (expected {expected:?})"
    )]
    GroupScales { count: usize, shape: Vec<usize>, group_size: usize, axis: usize, expected: Vec<usize> },
    /// Per-group parameters on a value whose shape is not fixed.
    #[error("per-group parameters need a fixed shape, got {ty}")]
    GroupNeedsFixedShape { ty: String },
    #[error("per-group quantization with group size 0")]
    GroupSizeZero,
    #[error("per-axis quantization with no scales")]
    NoScales,
    #[error("{scales} scales but {zero_points} zero points")]
    ZeroPoints { scales: usize, zero_points: usize },
    #[error("scale {scale} is not a finite positive number")]
    Scale { scale: f32 },
}

/// Scale and zero point of a quantized tensor.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum QuantParams {
    /// One scale and zero point for the whole tensor.
    PerTensor { scale: f32, zero_point: i32 },
    /// One pair per index of `axis` (per output channel for conv and gemm weights).
    PerAxis { axis: usize, scales: Vec<f32>, zero_points: Vec<i32> },
    /// Block-wise (4-bit weights): one pair per run of `group_size` consecutive indices of `axis`
    /// (the last run of a dimension not divisible by `group_size` is shorter). The pairs form a
    /// row-major tensor of the value's shape with `ceil(dim / group_size)` at `axis`, as ONNX's
    /// blocked `DequantizeLinear` (`block_size`) lays out its scale tensor.
    PerGroup { axis: usize, group_size: usize, scales: Vec<f32>, zero_points: Vec<i32> },
}

impl QuantParams {
    pub fn per_tensor(scale: f32, zero_point: i32) -> Self {
        QuantParams::PerTensor { scale, zero_point }
    }

    /// Number of (scale, zero point) pairs.
    pub fn len(&self) -> usize {
        match self {
            QuantParams::PerTensor { .. } => 1,
            QuantParams::PerAxis { scales, .. } | QuantParams::PerGroup { scales, .. } => scales.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The axis of per-axis parameters. `None` for per-tensor and per-group parameters (use
    /// [`QuantParams::group`] for the latter): a consumer that indexes parameters by channel must
    /// not mistake groups for channels.
    pub fn axis(&self) -> Option<usize> {
        match self {
            QuantParams::PerTensor { .. } | QuantParams::PerGroup { .. } => None,
            QuantParams::PerAxis { axis, .. } => Some(*axis),
        }
    }

    /// `(axis, group_size)` of per-group parameters.
    pub fn group(&self) -> Option<(usize, usize)> {
        match self {
            QuantParams::PerGroup { axis, group_size, .. } => Some((*axis, *group_size)),
            _ => None,
        }
    }

    pub fn is_per_group(&self) -> bool {
        matches!(self, QuantParams::PerGroup { .. })
    }

    /// The shape of the parameter tensor of per-group parameters for a value of `shape`: `shape`
    /// with `ceil(shape[axis] / group_size)` at `axis`. `None` when the axis is out of range or the
    /// group size is 0.
    pub fn group_param_shape(axis: usize, group_size: usize, shape: &[usize]) -> Option<Vec<usize>> {
        let d = *shape.get(axis)?;
        if group_size == 0 {
            return None;
        }
        let mut s = shape.to_vec();
        s[axis] = d.div_ceil(group_size);
        Some(s)
    }

    /// Checks that these parameters fit a value of (fixed) `shape`: per-axis ones have one pair per
    /// index of an axis in range, per-group ones one pair per group (see
    /// [`QuantParams::group_param_shape`]).
    pub fn check_shape(&self, shape: &[usize]) -> Result<(), QuantError> {
        let out_of_range = |axis: usize| QuantError::AxisOutOfRange { axis, rank: shape.len() };
        match self {
            QuantParams::PerTensor { .. } => Ok(()),
            QuantParams::PerAxis { axis, scales, .. } => match shape.get(*axis) {
                Some(&n) if n == scales.len() => Ok(()),
                Some(&n) => Err(QuantError::AxisScales { count: scales.len(), axis: *axis, size: Dim::Fixed(n) }),
                None => Err(out_of_range(*axis)),
            },
            QuantParams::PerGroup { axis, group_size, scales, .. } => {
                let Some(ps) = Self::group_param_shape(*axis, *group_size, shape) else {
                    return Err(out_of_range(*axis));
                };
                let n = ps.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                if n != Some(scales.len()) {
                    return Err(QuantError::GroupScales {
                        count: scales.len(),
                        shape: shape.to_vec(),
                        group_size: *group_size,
                        axis: *axis,
                        expected: ps,
                    });
                }
                Ok(())
            }
        }
    }

    /// Scale of channel (or flat group index) `c` (any `c` for per-tensor parameters).
    pub fn scale(&self, c: usize) -> f32 {
        match self {
            QuantParams::PerTensor { scale, .. } => *scale,
            QuantParams::PerAxis { scales, .. } | QuantParams::PerGroup { scales, .. } => scales[c],
        }
    }

    /// Zero point of channel (or flat group index) `c` (any `c` for per-tensor parameters).
    pub fn zero_point(&self, c: usize) -> i32 {
        match self {
            QuantParams::PerTensor { zero_point, .. } => *zero_point,
            QuantParams::PerAxis { zero_points, .. } | QuantParams::PerGroup { zero_points, .. } => zero_points[c],
        }
    }

    /// The flat parameter index of flat element `i` of a row-major value of `shape`, for
    /// parameters that passed [`QuantParams::check_shape`] for that shape.
    pub fn index_of(&self, shape: &[usize], i: usize) -> usize {
        let split = |axis: usize| {
            let inner: usize = shape[axis + 1..].iter().product::<usize>().max(1);
            (shape[axis].max(1), inner)
        };
        match self {
            QuantParams::PerTensor { .. } => 0,
            QuantParams::PerAxis { axis, .. } => {
                let (dim, inner) = split(*axis);
                (i / inner) % dim
            }
            QuantParams::PerGroup { axis, group_size, .. } => {
                let (dim, inner) = split(*axis);
                let groups = dim.div_ceil(*group_size);
                let o = i / (dim * inner);
                let a = (i / inner) % dim;
                (o * groups + a / group_size) * inner + i % inner
            }
        }
    }

    /// Checks what every consumer relies on: finite, strictly positive scales, one zero point per
    /// scale. Returns the first problem.
    pub fn check(&self) -> Result<(), QuantError> {
        let (scales, zps): (&[f32], usize) = match self {
            QuantParams::PerTensor { scale, .. } => (std::slice::from_ref(scale), 1),
            QuantParams::PerAxis { scales, zero_points, .. } => (scales, zero_points.len()),
            QuantParams::PerGroup { group_size: 0, .. } => return Err(QuantError::GroupSizeZero),
            QuantParams::PerGroup { scales, zero_points, .. } => (scales, zero_points.len()),
        };
        if scales.is_empty() {
            return Err(QuantError::NoScales);
        }
        if scales.len() != zps {
            return Err(QuantError::ZeroPoints { scales: scales.len(), zero_points: zps });
        }
        if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(QuantError::Scale { scale: *s });
        }
        Ok(())
    }
}

impl fmt::Display for QuantParams {
    /// `<scale:zp>`, `<axis=A: s0:z0, s1:z1, ...>` or `<axis=A group=G: s0:z0, ...>` (per group,
    /// the pairs in the row-major order of the parameter tensor); floats use Rust's shortest
    /// round-trip form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantParams::PerTensor { scale, zero_point } => write!(f, "<{scale:?}:{zero_point}>"),
            QuantParams::PerAxis { axis, scales, zero_points }
            | QuantParams::PerGroup { axis, scales, zero_points, .. } => {
                match self.group() {
                    Some((_, g)) => write!(f, "<axis={axis} group={g}:")?,
                    None => write!(f, "<axis={axis}:")?,
                }
                for (i, (s, z)) in scales.iter().zip(zero_points).enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, " {s:?}:{z}")?;
                }
                f.write_str(">")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{QuantError, QuantParams};

    fn pg(axis: usize, group_size: usize, n: usize) -> QuantParams {
        QuantParams::PerGroup { axis, group_size, scales: vec![0.5; n], zero_points: vec![0; n] }
    }

    #[test]
    fn per_group_parameters() {
        // [4, 70] in groups of 32 along axis 1: 3 groups per row (32, 32, 6)
        let q = pg(1, 32, 12);
        assert_eq!(q.check(), Ok(()));
        assert_eq!(q.len(), 12);
        assert_eq!(q.axis(), None);
        assert_eq!(q.group(), Some((1, 32)));
        assert!(q.is_per_group());
        assert_eq!(QuantParams::group_param_shape(1, 32, &[4, 70]), Some(vec![4, 3]));
        assert_eq!(q.check_shape(&[4, 70]), Ok(()));
        assert!(q.check_shape(&[4, 64]).unwrap_err().to_string().contains("expected [4, 2]"));
        assert_eq!(q.check_shape(&[4]), Err(QuantError::AxisOutOfRange { axis: 1, rank: 1 }));
        // element (r, c) of [4, 70] uses parameter (r, c / 32)
        for (r, c, p) in [(0, 0, 0), (0, 31, 0), (0, 32, 1), (0, 69, 2), (1, 0, 3), (3, 69, 11)] {
            assert_eq!(q.index_of(&[4, 70], r * 70 + c), p, "({r}, {c})");
        }
        // groups along axis 0 of [5, 2] (groups of 2): parameters [3, 2]
        let q = pg(0, 2, 6);
        for (r, c, p) in [(0, 0, 0), (0, 1, 1), (1, 1, 1), (2, 0, 2), (4, 1, 5)] {
            assert_eq!(q.index_of(&[5, 2], r * 2 + c), p, "({r}, {c})");
        }
        // invalid parameters
        assert_eq!(pg(1, 0, 1).check(), Err(QuantError::GroupSizeZero));
        assert!(pg(1, 4, 0).check().is_err());
        let q = QuantParams::PerGroup { axis: 0, group_size: 2, scales: vec![1.0, 0.0], zero_points: vec![0, 0] };
        assert!(q.check().unwrap_err().to_string().contains("not a finite positive"));
        let q = QuantParams::PerGroup { axis: 0, group_size: 2, scales: vec![1.0, 1.0], zero_points: vec![0] };
        assert_eq!(q.check(), Err(QuantError::ZeroPoints { scales: 2, zero_points: 1 }));
    }

    #[test]
    fn per_group_display() {
        let q = QuantParams::PerGroup { axis: 1, group_size: 32, scales: vec![0.5, 1e-7], zero_points: vec![0, -8] };
        assert_eq!(q.to_string(), "<axis=1 group=32: 0.5:0, 1e-7:-8>");
    }
}
