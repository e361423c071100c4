//! `TensorProto` -> [`Tensor`]: ONNX element types, `raw_data` (little-endian) and the typed
//! fields, with every length checked against the declared dims before anything is allocated.

use super::proto::{tensor_proto::DataLocation, tensor_proto::DataType, TensorProto};
use qforge_ir::{DType, Tensor, TensorData};

/// The largest tensor the importer materializes (initializers, constants, `ConstantOfShape`).
pub const MAX_TENSOR_BYTES: u128 = qforge_ir::DEFAULT_MAX_TENSOR_BYTES as u128;

/// The IR dtype of an ONNX `TensorProto.DataType` code, or an error naming the ONNX type.
pub fn dtype_from_onnx(code: i32) -> Result<DType, String> {
    let dt = DataType::try_from(code).map_err(|_| format!("unknown ONNX element type {code}"))?;
    Ok(match dt {
        DataType::Float => DType::F32,
        DataType::Float16 => DType::F16,
        DataType::Bfloat16 => DType::BF16,
        DataType::Int8 => DType::I8,
        DataType::Uint8 => DType::U8,
        DataType::Int32 => DType::I32,
        DataType::Int64 => DType::I64,
        DataType::Bool => DType::Bool,
        DataType::Double => {
            return Err("element type DOUBLE (f64) is not supported; export the model in float32".into())
        }
        other => return Err(format!("element type {} is not supported", other.as_str_name())),
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
    }) as i32
}

/// Checked element count of `dims` (each must be non-negative), and the byte size of that many
/// `dtype` elements, both guarded against `MAX_TENSOR_BYTES`.
pub fn checked_numel(dims: &[i64], dtype: DType) -> Result<(Vec<usize>, usize), String> {
    let mut shape = Vec::with_capacity(dims.len());
    let mut n: u128 = 1;
    for &d in dims {
        if d < 0 {
            return Err(format!("negative dimension {d} in {dims:?}"));
        }
        shape.push(usize::try_from(d).map_err(|_| format!("dimension {d} is too large"))?);
        n = n.saturating_mul(d as u128);
    }
    let bytes = n.saturating_mul(dtype.size_bytes() as u128);
    if bytes > MAX_TENSOR_BYTES {
        return Err(format!(
            "a {dtype} tensor of shape {dims:?} needs {bytes} bytes, more than the limit of {MAX_TENSOR_BYTES}"
        ));
    }
    Ok((shape, n as usize))
}

/// Converts a `TensorProto` into a tensor. Errors (as a message; the caller adds which tensor)
/// on external data, unsupported element types and data that does not match the dims.
pub fn tensor_from_proto(t: &TensorProto) -> Result<Tensor, String> {
    if t.data_location == DataLocation::External as i32 || !t.external_data.is_empty() {
        return Err(format!(
            "tensor `{}` stores its data in an external file, which is not supported; \
             save the model with the data inline (onnx.save_model(m, path, save_as_external_data=False))",
            t.name
        ));
    }
    if t.segment.is_some() {
        return Err(format!("tensor `{}` is segmented, which is not supported", t.name));
    }
    let dtype = dtype_from_onnx(t.data_type).map_err(|m| format!("tensor `{}`: {m}", t.name))?;
    let (shape, n) = checked_numel(&t.dims, dtype).map_err(|m| format!("tensor `{}`: {m}", t.name))?;
    let data = if !t.raw_data.is_empty() || (typed_len(t, dtype) == 0 && n == 0) {
        from_raw(&t.raw_data, dtype, n).map_err(|m| format!("tensor `{}`: {m}", t.name))?
    } else {
        from_typed(t, dtype, n).map_err(|m| format!("tensor `{}`: {m}", t.name))?
    };
    Tensor::new(shape, data).ok_or_else(|| format!("tensor `{}`: data does not match its dims {:?}", t.name, t.dims))
}

/// Number of elements in the typed field that holds `dtype`.
fn typed_len(t: &TensorProto, dtype: DType) -> usize {
    match dtype {
        DType::F32 => t.float_data.len(),
        DType::I64 => t.int64_data.len(),
        _ => t.int32_data.len(),
    }
}

fn from_raw(raw: &[u8], dtype: DType, n: usize) -> Result<TensorData, String> {
    let size = dtype.size_bytes();
    if raw.len() != n.saturating_mul(size) {
        return Err(format!("raw_data has {} bytes, but {n} {dtype} elements need {}", raw.len(), n * size));
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
    })
}

fn from_typed(t: &TensorProto, dtype: DType, n: usize) -> Result<TensorData, String> {
    let have = typed_len(t, dtype);
    if have != n {
        let field = match dtype {
            DType::F32 => "float_data",
            DType::I64 => "int64_data",
            _ => "int32_data",
        };
        return Err(format!("{field} has {have} elements, but the dims need {n}"));
    }
    let ints = &t.int32_data;
    // Narrow types are stored one per int32 (f16/bf16 as their bit patterns); values out of
    // range are corrupt files.
    let narrow = |lo: i32, hi: i32| -> Result<(), String> {
        match ints.iter().find(|&&v| v < lo || v > hi) {
            Some(v) => Err(format!("int32_data value {v} is out of range for {dtype}")),
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
        assert!(tensor_from_proto(&short).unwrap_err().contains("raw_data has 15 bytes"));
        let huge = TensorProto { name: "h".into(), dims: vec![1 << 40, 1 << 40], data_type: 1, ..Default::default() };
        assert!(tensor_from_proto(&huge).unwrap_err().contains("limit"));
        let neg = TensorProto { name: "n".into(), dims: vec![-1], data_type: 1, ..Default::default() };
        assert!(tensor_from_proto(&neg).unwrap_err().contains("negative"));
        let ext = TensorProto {
            name: "big".into(),
            dims: vec![1],
            data_type: 1,
            data_location: DataLocation::External as i32,
            ..Default::default()
        };
        assert!(tensor_from_proto(&ext).unwrap_err().contains("`big` stores its data in an external file"));
        let dbl = TensorProto {
            name: "d".into(),
            dims: vec![1],
            data_type: 11,
            double_data: vec![1.0],
            ..Default::default()
        };
        assert!(tensor_from_proto(&dbl).unwrap_err().contains("DOUBLE"));
        let range =
            TensorProto { name: "r".into(), dims: vec![1], data_type: 2, int32_data: vec![300], ..Default::default() };
        assert!(tensor_from_proto(&range).unwrap_err().contains("out of range"));
    }
}
