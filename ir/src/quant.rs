//! Quantization parameters, carried in a value's type (as MLIR's quant dialect does).
//!
//! The real value of a stored integer `q` is `(q - zero_point) * scale`. See
//! [`crate::numerics`] for how values are rounded and saturated into the storage type.

use std::fmt;

/// Scale and zero point of a quantized tensor.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum QuantParams {
    /// One scale and zero point for the whole tensor.
    PerTensor { scale: f32, zero_point: i32 },
    /// One pair per index of `axis` (per output channel for conv and gemm weights).
    PerAxis { axis: usize, scales: Vec<f32>, zero_points: Vec<i32> },
}

impl QuantParams {
    pub fn per_tensor(scale: f32, zero_point: i32) -> Self {
        QuantParams::PerTensor { scale, zero_point }
    }

    /// Number of (scale, zero point) pairs.
    pub fn len(&self) -> usize {
        match self {
            QuantParams::PerTensor { .. } => 1,
            QuantParams::PerAxis { scales, .. } => scales.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn axis(&self) -> Option<usize> {
        match self {
            QuantParams::PerTensor { .. } => None,
            QuantParams::PerAxis { axis, .. } => Some(*axis),
        }
    }

    /// Scale of channel `c` (any `c` for per-tensor parameters).
    pub fn scale(&self, c: usize) -> f32 {
        match self {
            QuantParams::PerTensor { scale, .. } => *scale,
            QuantParams::PerAxis { scales, .. } => scales[c],
        }
    }

    /// Zero point of channel `c` (any `c` for per-tensor parameters).
    pub fn zero_point(&self, c: usize) -> i32 {
        match self {
            QuantParams::PerTensor { zero_point, .. } => *zero_point,
            QuantParams::PerAxis { zero_points, .. } => zero_points[c],
        }
    }

    /// Checks what every consumer relies on: finite, strictly positive scales, one zero point per
    /// scale. Returns a description of the first problem.
    pub fn check(&self) -> Result<(), String> {
        let (scales, zps): (&[f32], usize) = match self {
            QuantParams::PerTensor { scale, .. } => (std::slice::from_ref(scale), 1),
            QuantParams::PerAxis { scales, zero_points, .. } => (scales, zero_points.len()),
        };
        if scales.is_empty() {
            return Err("per-axis quantization with no scales".into());
        }
        if scales.len() != zps {
            return Err(format!("{} scales but {} zero points", scales.len(), zps));
        }
        if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!("scale {s} is not a finite positive number"));
        }
        Ok(())
    }
}

impl fmt::Display for QuantParams {
    /// `<scale:zp>` or `<axis=A: s0:z0, s1:z1, ...>`; floats use Rust's shortest round-trip form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantParams::PerTensor { scale, zero_point } => write!(f, "<{scale:?}:{zero_point}>"),
            QuantParams::PerAxis { axis, scales, zero_points } => {
                write!(f, "<axis={axis}:")?;
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
