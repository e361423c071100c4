//! `TensorProto` -> [`Tensor`]: ONNX element types, `raw_data` (little-endian) and the typed
//! fields, with every length checked against the declared dims before anything is allocated.

use super::proto::{tensor_proto::DataLocation, tensor_proto::DataType, TensorProto};
use qforge_ir::{DType, Tensor, TensorData, WireType};

/// The largest tensor the importer materializes by default (initializers, constants,
/// `ConstantOfShape`), and the default bound on the total of the constants it builds from shapes:
/// 2 GiB, the size of the largest protobuf message, so any tensor stored inline in a valid model
/// fits. [`super::ImportOptions::max_tensor_bytes`] (`--max-tensor-bytes`) changes it.
pub const MAX_TENSOR_BYTES: u128 = qforge_ir::DEFAULT_MAX_TENSOR_BYTES as u128;

/// Why an ONNX tensor or element type cannot be imported. The message names neither the tensor
/// nor where it comes from: the caller adds that (an initializer, a Constant's `value`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("unknown ONNX element type {0}")]
    UnknownElemType(i32),
    #[error("element type {0} is not supported")]
    UnsupportedElemType(&'static str),
    #[error("negative dimension {dim} in {dims:?}")]
    NegativeDim { dim: i64, dims: Vec<i64> },
    #[error("dimension {0} is too large")]
    DimTooLarge(i64),
    /// The tensor is over the size limit; checked from the dims, before anything is allocated.
    #[error(
        "a tensor of shape {dims:?} and type {dtype} needs {bytes} bytes, more than the limit of {limit} \
         bytes (--max-tensor-bytes)"
    )]
    TooLarge { dtype: DType, dims: Vec<i64>, bytes: u128, limit: u128 },
    /// The constants the importer builds (`ConstantOfShape`, `Range`) add up to more than the
    /// limit: a small model can ask for many large ones.
    #[error(
        "the constants this model builds at import (ConstantOfShape, Range) total {total} bytes, more than the \
         limit of {limit} bytes (--max-tensor-bytes)"
    )]
    TotalTooLarge { total: u128, limit: u128 },
    #[error(
        "its data is in an external file, which is not supported; save the model with the data inline \
         (onnx.save_model(m, path, save_as_external_data=False))"
    )]
    ExternalData,
    #[error("it is segmented, which is not supported")]
    Segmented,
    #[error("raw_data has {have} bytes, but {n} {dtype} elements need {need}")]
    RawLength { have: usize, n: usize, dtype: DType, need: usize },
    #[error("{field} has {have} elements, but the dims need {need}")]
    TypedLength { field: &'static str, have: usize, need: usize },
    #[error("int32_data value {value} is out of range for {dtype}")]
    OutOfRange { value: i32, dtype: DType },
    #[error("uint64_data value {value} is out of range for {dtype}")]
    OutOfRangeU64 { value: u64, dtype: DType },
    #[error("the data does not match its dims {dims:?}")]
    ShapeMismatch { dims: Vec<i64> },
}

/// The IR dtype of an ONNX `TensorProto.DataType` code, or an error naming the ONNX type.
pub fn dtype_from_onnx(code: i32) -> Result<DType, TensorError> {
    let dt = DataType::try_from(code).map_err(|_| TensorError::UnknownElemType(code))?;
    Ok(match dt {
        DataType::Float => DType::F32,
        DataType::Float16 => DType::F16,
        DataType::Bfloat16 => DType::BF16,
        DataType::Int8 => DType::I8,
        DataType::Uint8 => DType::U8,
        DataType::Int32 => DType::I32,
        DataType::Int64 => DType::I64,
        DataType::Bool => DType::Bool,
        DataType::Double => DType::F64,
        DataType::Int16 => DType::I16,
        DataType::Uint16 => DType::U16,
        DataType::Uint32 => DType::U32,
        DataType::Uint64 => DType::U64,
        other => return Err(TensorError::UnsupportedElemType(other.as_str_name())),
    })
}

/// The ONNX `TensorProto.DataType` code of an IR dtype.
pub fn dtype_to_onnx(dtype: DType) -> i32 {
    (match dtype {
        DType::F32 => DataType::Float,
        DType::F16 => DataType::Float16,
        DType::BF16 => DataType::Bfloat16,
        DType::I8 => DataType::Int8,
        DType::U8 => DataType::Uint8,
        DType::I32 => DataType::Int32,
        DType::I64 => DataType::Int64,
        DType::Bool => DataType::Bool,
        DType::F64 => DataType::Double,
        DType::I16 => DataType::Int16,
        DType::U16 => DataType::Uint16,
        DType::U32 => DataType::Uint32,
        DType::U64 => DataType::Uint64,
    }) as i32
}

/// Checked element count of `dims` (each must be non-negative), and the byte size of that many
/// `dtype` elements, both guarded against `max_bytes`.
pub fn checked_numel(dims: &[i64], dtype: DType, max_bytes: u128) -> Result<(Vec<usize>, usize), TensorError> {
    let mut shape = Vec::with_capacity(dims.len());
    let mut n: u128 = 1;
    for &d in dims {
        if d < 0 {
            return Err(TensorError::NegativeDim { dim: d, dims: dims.to_vec() });
        }
        shape.push(usize::try_from(d).map_err(|_| TensorError::DimTooLarge(d))?);
        n = n.saturating_mul(d as u128);
    }
    let bytes = n.saturating_mul(dtype.size_bytes() as u128);
    if bytes > max_bytes {
        return Err(TensorError::TooLarge { dtype, dims: dims.to_vec(), bytes, limit: max_bytes });
    }
    // `bytes` fits in `max_bytes`, so the count fits in memory, and in usize.
    let n = usize::try_from(n).map_err(|_| TensorError::TooLarge {
        dtype,
        dims: dims.to_vec(),
        bytes,
        limit: max_bytes,
    })?;
    Ok((shape, n))
}

/// Converts a `TensorProto` into a tensor of at most [`MAX_TENSOR_BYTES`] (see
/// [`tensor_from_proto_limited`]).
pub fn tensor_from_proto(t: &TensorProto) -> Result<Tensor, TensorError> {
    tensor_from_proto_limited(t, MAX_TENSOR_BYTES)
}

/// Converts a `TensorProto` into a tensor of at most `max_bytes`. Errors (without the tensor's
/// name; the caller adds which tensor) on external data, unsupported element types, tensors over
/// the limit and data that does not match the dims. The types the IR holds in another type are
/// decoded into it (see [`wire_from_onnx`]: INT4 and UINT4 into i8 and u8, float8 into f16, ...;
/// a caller that must tell them apart checks the proto's type).
pub fn tensor_from_proto_limited(t: &TensorProto, max_bytes: u128) -> Result<Tensor, TensorError> {
    if t.data_location == DataLocation::External as i32 || !t.external_data.is_empty() {
        return Err(TensorError::ExternalData);
    }
    if t.segment.is_some() {
        return Err(TensorError::Segmented);
    }
    if let Some(w) = wire_from_onnx(t.data_type) {
        return wire_from_proto(t, w, max_bytes);
    }
    let dtype = dtype_from_onnx(t.data_type)?;
    let (shape, n) = checked_numel(&t.dims, dtype, max_bytes)?;
    let data = if !t.raw_data.is_empty() || (typed_len(t, dtype) == 0 && n == 0) {
        from_raw(&t.raw_data, dtype, n)?
    } else {
        from_typed(t, dtype, n)?
    };
    Tensor::new(shape, data).ok_or_else(|| TensorError::ShapeMismatch { dims: t.dims.clone() })
}

/// Whether an ONNX element type is a 4-bit integer type: `Some(true)` for INT4, `Some(false)` for
/// UINT4.
pub fn four_bit(code: i32) -> Option<bool> {
    match DataType::try_from(code) {
        Ok(DataType::Int4) => Some(true),
        Ok(DataType::Uint4) => Some(false),
        _ => None,
    }
}

/// The wire type (see [`qforge_ir::wire`]) of an ONNX element type the IR holds in another type:
/// FLOAT8E4M3FN/FNUZ, FLOAT8E5M2/FNUZ, FLOAT8E8M0, FLOAT4E2M1, INT4, UINT4, INT2, UINT2.
pub fn wire_from_onnx(code: i32) -> Option<WireType> {
    Some(match DataType::try_from(code).ok()? {
        DataType::Float8e4m3fn => WireType::F8E4M3FN,
        DataType::Float8e4m3fnuz => WireType::F8E4M3FNUZ,
        DataType::Float8e5m2 => WireType::F8E5M2,
        DataType::Float8e5m2fnuz => WireType::F8E5M2FNUZ,
        DataType::Float8e8m0 => WireType::F8E8M0,
        DataType::Float4e2m1 => WireType::F4E2M1,
        DataType::Int4 => WireType::I4,
        DataType::Uint4 => WireType::U4,
        DataType::Int2 => WireType::I2,
        DataType::Uint2 => WireType::U2,
        _ => return None,
    })
}

/// A tensor of a wire type, decoded into the IR type that holds its values exactly
/// ([`WireType::decode_packed`]): values narrower than a byte are packed, the first in the lowest
/// bits, in `raw_data` or one packed byte per `int32_data` entry; 8-bit types take one byte per
/// value in either (the ONNX spec, `TensorProto.int32_data`).
fn wire_from_proto(t: &TensorProto, w: WireType, max_bytes: u128) -> Result<Tensor, TensorError> {
    let dtype = w.dtype();
    let (shape, n) = checked_numel(&t.dims, dtype, max_bytes)?;
    let need = n.div_ceil(8 / w.bits() as usize);
    let bytes: Vec<u8> = if !t.raw_data.is_empty() || (t.int32_data.is_empty() && n == 0) {
        if t.raw_data.len() != need {
            return Err(TensorError::RawLength { have: t.raw_data.len(), n, dtype, need });
        }
        t.raw_data.clone()
    } else {
        if t.int32_data.len() != need {
            return Err(TensorError::TypedLength { field: "int32_data", have: t.int32_data.len(), need });
        }
        if let Some(&value) = t.int32_data.iter().find(|&&v| !(0..=255).contains(&v)) {
            return Err(TensorError::OutOfRange { value, dtype: DType::U8 });
        }
        t.int32_data.iter().map(|&v| v as u8).collect()
    };
    w.decode_packed(shape, n, &bytes).ok_or_else(|| TensorError::ShapeMismatch { dims: t.dims.clone() })
}

/// The typed field that holds `dtype` (the ONNX spec, `TensorProto`: `double_data` for DOUBLE,
/// `uint64_data` for UINT32 and UINT64, `int32_data` for every narrower type, f16/bf16 as bits).
fn typed_field(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float_data",
        DType::I64 => "int64_data",
        DType::F64 => "double_data",
        DType::U32 | DType::U64 => "uint64_data",
        DType::F16 | DType::BF16 | DType::I8 | DType::U8 | DType::I16 | DType::U16 | DType::I32 | DType::Bool => {
            "int32_data"
        }
    }
}

/// Number of elements in the typed field that holds `dtype`.
fn typed_len(t: &TensorProto, dtype: DType) -> usize {
    match typed_field(dtype) {
        "float_data" => t.float_data.len(),
        "int64_data" => t.int64_data.len(),
        "double_data" => t.double_data.len(),
        "uint64_data" => t.uint64_data.len(),
        _ => t.int32_data.len(),
    }
}

fn from_raw(raw: &[u8], dtype: DType, n: usize) -> Result<TensorData, TensorError> {
    let need = n.saturating_mul(dtype.size_bytes());
    if raw.len() != need {
        return Err(TensorError::RawLength { have: raw.len(), n, dtype, need });
    }
    macro_rules! le {
        ($t:ty, $w:literal) => {
            raw.chunks_exact($w).map(|c| {
                let mut b = [0u8; $w];
                b.copy_from_slice(c);
                <$t>::from_le_bytes(b)
            })
        };
    }
    Ok(match dtype {
        DType::F32 => TensorData::F32(le!(f32, 4).collect()),
        DType::F16 => TensorData::F16(le!(u16, 2).map(half::f16::from_bits).collect()),
        DType::BF16 => TensorData::BF16(le!(u16, 2).map(half::bf16::from_bits).collect()),
        DType::I8 => TensorData::I8(raw.iter().map(|&b| b as i8).collect()),
        DType::U8 => TensorData::U8(raw.to_vec()),
        DType::I32 => TensorData::I32(le!(i32, 4).collect()),
        DType::I64 => TensorData::I64(le!(i64, 8).collect()),
        DType::Bool => TensorData::Bool(raw.iter().map(|&b| b != 0).collect()),
        DType::F64 => TensorData::F64(le!(f64, 8).collect()),
        DType::I16 => TensorData::I16(le!(i16, 2).collect()),
        DType::U16 => TensorData::U16(le!(u16, 2).collect()),
        DType::U32 => TensorData::U32(le!(u32, 4).collect()),
        DType::U64 => TensorData::U64(le!(u64, 8).collect()),
    })
}

fn from_typed(t: &TensorProto, dtype: DType, n: usize) -> Result<TensorData, TensorError> {
    let have = typed_len(t, dtype);
    if have != n {
        return Err(TensorError::TypedLength { field: typed_field(dtype), have, need: n });
    }
    let ints = &t.int32_data;
    // Narrow types are stored one per int32 (f16/bf16 as their bit patterns); values out of
    // range are corrupt files.
    let narrow = |lo: i32, hi: i32| -> Result<(), TensorError> {
        match ints.iter().find(|&&v| v < lo || v > hi) {
            Some(&value) => Err(TensorError::OutOfRange { value, dtype }),
            None => Ok(()),
        }
    };
    Ok(match dtype {
        DType::F32 => TensorData::F32(t.float_data.clone()),
        DType::I64 => TensorData::I64(t.int64_data.clone()),
        DType::I32 => TensorData::I32(ints.clone()),
        DType::I8 => {
            narrow(i8::MIN as i32, i8::MAX as i32)?;
            TensorData::I8(ints.iter().map(|&v| v as i8).collect())
        }
        DType::U8 => {
            narrow(0, u8::MAX as i32)?;
            TensorData::U8(ints.iter().map(|&v| v as u8).collect())
        }
        DType::Bool => {
            narrow(0, 1)?;
            TensorData::Bool(ints.iter().map(|&v| v != 0).collect())
        }
        DType::F16 => {
            narrow(0, u16::MAX as i32)?;
            TensorData::F16(ints.iter().map(|&v| half::f16::from_bits(v as u16)).collect())
        }
        DType::BF16 => {
            narrow(0, u16::MAX as i32)?;
            TensorData::BF16(ints.iter().map(|&v| half::bf16::from_bits(v as u16)).collect())
        }
        DType::I16 => {
            narrow(i16::MIN as i32, i16::MAX as i32)?;
            TensorData::I16(ints.iter().map(|&v| v as i16).collect())
        }
        DType::U16 => {
            narrow(0, u16::MAX as i32)?;
            TensorData::U16(ints.iter().map(|&v| v as u16).collect())
        }
        DType::F64 => TensorData::F64(t.double_data.clone()),
        DType::U64 => TensorData::U64(t.uint64_data.clone()),
        DType::U32 => {
            if let Some(&value) = t.uint64_data.iter().find(|&&v| v > u32::MAX as u64) {
                return Err(TensorError::OutOfRangeU64 { value, dtype });
            }
            TensorData::U32(t.uint64_data.iter().map(|&v| v as u32).collect())
        }
    })
}

/// Converts a tensor into a `TensorProto` with little-endian `raw_data` (tests and export).
pub fn tensor_to_proto(name: &str, t: &Tensor) -> TensorProto {
    let raw: Vec<u8> = match t.data() {
        TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::F16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        TensorData::BF16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        TensorData::I8(v) => v.iter().map(|&x| x as u8).collect(),
        TensorData::U8(v) => v.clone(),
        TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Bool(v) => v.iter().map(|&x| x as u8).collect(),
        TensorData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::U16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::U64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    TensorProto {
        name: name.to_string(),
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: dtype_to_onnx(t.dtype()),
        raw_data: raw,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_typed_fields_agree() {
        let t = Tensor::from_f32(vec![2, 2], vec![1.0, -2.5, 3.0, 0.0]);
        let p = tensor_to_proto("w", &t);
        assert_eq!(tensor_from_proto(&p).unwrap(), t);
        let typed = TensorProto {
            dims: vec![2, 2],
            data_type: DataType::Float as i32,
            float_data: vec![1.0, -2.5, 3.0, 0.0],
            ..Default::default()
        };
        assert_eq!(tensor_from_proto(&typed).unwrap(), t);
        let i8s = TensorProto {
            dims: vec![3],
            data_type: DataType::Int8 as i32,
            int32_data: vec![-128, 0, 127],
            ..Default::default()
        };
        assert_eq!(tensor_from_proto(&i8s).unwrap().to_i64_vec().unwrap(), vec![-128, 0, 127]);
        let f16s = TensorProto {
            dims: vec![1],
            data_type: DataType::Float16 as i32,
            int32_data: vec![half::f16::from_f32(1.5).to_bits() as i32],
            ..Default::default()
        };
        assert_eq!(tensor_from_proto(&f16s).unwrap().to_f32_vec(), vec![1.5]);
        let scalar = TensorProto { data_type: DataType::Int64 as i32, int64_data: vec![7], ..Default::default() };
        let s = tensor_from_proto(&scalar).unwrap();
        assert_eq!((s.shape(), s.to_i64_vec().unwrap()), (&[][..], vec![7]));
    }

    #[test]
    fn bad_tensors_are_errors() {
        let short = TensorProto {
            name: "w".into(),
            dims: vec![4],
            data_type: DataType::Float as i32,
            raw_data: vec![0; 15],
            ..Default::default()
        };
        let e = tensor_from_proto(&short).unwrap_err();
        assert!(matches!(e, TensorError::RawLength { have: 15, n: 4, need: 16, .. }), "{e:?}");
        assert_eq!(e.to_string(), "raw_data has 15 bytes, but 4 f32 elements need 16");
        let huge = TensorProto { name: "h".into(), dims: vec![1 << 40, 1 << 40], data_type: 1, ..Default::default() };
        let e = tensor_from_proto(&huge).unwrap_err();
        assert!(matches!(e, TensorError::TooLarge { limit: MAX_TENSOR_BYTES, .. }), "{e:?}");
        assert!(e.to_string().contains("limit of 2147483648 bytes (--max-tensor-bytes)"), "{e}");
        // A tensor within the default limit is over a smaller one.
        let e = tensor_from_proto_limited(&short, 8).unwrap_err();
        assert_eq!(e, TensorError::TooLarge { dtype: DType::F32, dims: vec![4], bytes: 16, limit: 8 });
        let neg = TensorProto { name: "n".into(), dims: vec![-1], data_type: 1, ..Default::default() };
        assert!(tensor_from_proto(&neg).unwrap_err().to_string().contains("negative"));
        let ext = TensorProto {
            name: "big".into(),
            dims: vec![1],
            data_type: 1,
            data_location: DataLocation::External as i32,
            ..Default::default()
        };
        let e = tensor_from_proto(&ext).unwrap_err();
        assert_eq!(e, TensorError::ExternalData);
        assert!(e.to_string().contains("external file"), "{e}");
        let complex = TensorProto {
            name: "c".into(),
            dims: vec![1],
            data_type: DataType::Complex64 as i32,
            float_data: vec![1.0, 0.0],
            ..Default::default()
        };
        assert!(tensor_from_proto(&complex).unwrap_err().to_string().contains("COMPLEX64"));
        let range =
            TensorProto { name: "r".into(), dims: vec![1], data_type: 2, int32_data: vec![300], ..Default::default() };
        assert_eq!(tensor_from_proto(&range).unwrap_err(), TensorError::OutOfRange { value: 300, dtype: DType::U8 });
        assert!(tensor_from_proto(&range).unwrap_err().to_string().contains("out of range"));
        assert_eq!(dtype_from_onnx(99), Err(TensorError::UnknownElemType(99)));
    }

    #[test]
    fn four_bit_tensors_read_into_eight_bits() {
        // [-8, 7, -1, 0, 3]: nibbles 8,7 | f,0 | 3 (low first)
        let i4 = TensorProto {
            dims: vec![5],
            data_type: DataType::Int4 as i32,
            raw_data: vec![0x78, 0x0f, 0x03],
            ..Default::default()
        };
        let t = tensor_from_proto(&i4).unwrap();
        assert_eq!((t.dtype(), t.to_i64_vec().unwrap()), (DType::I8, vec![-8, 7, -1, 0, 3]));
        let u4 = TensorProto {
            dims: vec![3],
            data_type: DataType::Uint4 as i32,
            int32_data: vec![0xf1, 0x09],
            ..Default::default()
        };
        let t = tensor_from_proto(&u4).unwrap();
        assert_eq!((t.dtype(), t.to_i64_vec().unwrap()), (DType::U8, vec![1, 15, 9]));
        let short = TensorProto { raw_data: vec![0x78], ..i4 };
        assert!(matches!(tensor_from_proto(&short), Err(TensorError::RawLength { have: 1, need: 3, .. })));
    }
}
