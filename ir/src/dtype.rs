//! Element types.

use std::fmt;
use std::str::FromStr;

/// The element type of a tensor. Quantized tensors are `I8`/`U8`/`I32` with
/// [`crate::QuantParams`] in their [`crate::TensorType`]; the dtype itself is only the storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum DType {
    F32,
    F16,
    BF16,
    I8,
    U8,
    I32,
    I64,
    Bool,
    F64,
    I16,
    U16,
    U32,
    U64,
}

impl DType {
    pub const ALL: [DType; 13] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::U8,
        DType::I32,
        DType::I64,
        DType::Bool,
        DType::F64,
        DType::I16,
        DType::U16,
        DType::U32,
        DType::U64,
    ];

    /// Bytes per element in storage.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::I64 | DType::F64 | DType::U64 => 8,
        }
    }

    /// Every floating-point type, f64 included.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }

    /// The float types that the compute ops (convolution, matrix products, normalization, pooling,
    /// activations) take: f32, and f16/bf16 as storage widened to f32. f64 is carried at a graph's
    /// edges, through data movement, casts and element-wise arithmetic (computed in f64), but the
    /// compute ops refuse it rather than compute it in f32.
    pub fn is_compute_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Every integer type (bool excluded).
    pub fn is_int(self) -> bool {
        matches!(
            self,
            DType::I8 | DType::U8 | DType::I16 | DType::U16 | DType::I32 | DType::U32 | DType::I64 | DType::U64
        )
    }

    /// The storage types a quantized tensor may have.
    pub fn is_quantizable_storage(self) -> bool {
        matches!(self, DType::I8 | DType::U8 | DType::I32)
    }

    /// The representable integer range, for integer types and bool whose range fits i64 (every
    /// one but u64: see [`DType::int_bounds`]).
    pub fn int_range(self) -> Option<(i64, i64)> {
        match self {
            DType::U64 => None,
            _ => self.int_bounds().map(|(lo, hi)| (lo as i64, hi as i64)),
        }
    }

    /// The representable integer range of every integer type and bool, u64 included.
    pub fn int_bounds(self) -> Option<(i128, i128)> {
        match self {
            DType::I8 => Some((i8::MIN as i128, i8::MAX as i128)),
            DType::U8 => Some((0, u8::MAX as i128)),
            DType::I16 => Some((i16::MIN as i128, i16::MAX as i128)),
            DType::U16 => Some((0, u16::MAX as i128)),
            DType::I32 => Some((i32::MIN as i128, i32::MAX as i128)),
            DType::U32 => Some((0, u32::MAX as i128)),
            DType::I64 => Some((i64::MIN as i128, i64::MAX as i128)),
            DType::U64 => Some((0, u64::MAX as i128)),
            DType::Bool => Some((0, 1)),
            DType::F32 | DType::F16 | DType::BF16 | DType::F64 => None,
        }
    }

    /// The name used in the text form and in messages.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
            DType::F64 => "f64",
            DType::I16 => "i16",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::U64 => "u64",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A dtype name that is not one of qforge's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown dtype `{name}` (expected one of f32, f16, bf16, f64, i8, u8, i16, u16, i32, u32, i64, u64, bool)")]
pub struct ParseDTypeError {
    pub name: String,
}

impl FromStr for DType {
    type Err = ParseDTypeError;
    fn from_str(s: &str) -> Result<Self, ParseDTypeError> {
        DType::ALL.into_iter().find(|d| d.name() == s).ok_or_else(|| ParseDTypeError { name: s.to_string() })
    }
}
