//! `.npy` reading and writing (NumPy format versions 1 to 3) through the `npyz` crate.
//!
//! Supported element types: float64, float32, float16, int64, int32, int16, int8, uint64, uint32,
//! uint16, uint8 and bool, either endianness, C order; each is read as it is (a float64 array is
//! a f64 tensor, never narrowed silently). Fortran order, structured and object arrays are
//! refused. bf16 has no NumPy type, so bf16 tensors cannot be written.
//!
//! Raw data (`V1`, `V2`: what NumPy writes for `ml_dtypes` arrays such as bfloat16, float8 or int4)
//! has no element type of its own, so it is read only for a graph input whose declared type says
//! what it is ([`read_input`]): `V2` for a bf16 input (the bits, little-endian), `V1` for an input
//! of a wire type (one value per byte, decoded by [`qforge_ir::WireType::decode_bytes`]).
//!
//! Every length is checked against the bytes actually present before anything is allocated, so
//! a corrupt or hostile header is an error, never a huge allocation or a panic.

use half::f16;
use npyz::{DType as NpyDType, TypeChar, WriterBuilder};
use qforge_ir::{DType, Tensor, TensorData, WireType};
use std::path::Path;

/// What can go wrong reading or writing a `.npy` file. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("cannot read `{path}`")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write `{path}`")]
    Write { path: String, source: std::io::Error },
    #[error("`{path}` is not a valid .npy file: {msg}")]
    Format { path: String, msg: String },
    #[error("`{path}`: {msg}")]
    Unsupported { path: String, msg: String },
}

/// The name used for in-memory data in messages.
const IN_MEMORY: &str = "<bytes>";

/// Reads a tensor from a `.npy` file.
pub fn read(path: &Path) -> Result<Tensor, NpyError> {
    let bytes = std::fs::read(path).map_err(|source| NpyError::Read { path: path.display().to_string(), source })?;
    decode(&bytes, &path.display().to_string(), None)
}

/// Reads a tensor from the bytes of a `.npy` file.
pub fn read_bytes(bytes: &[u8]) -> Result<Tensor, NpyError> {
    decode(bytes, IN_MEMORY, None)
}

/// Reads a `.npy` file for a graph input declared `dtype` (its IR type) and `wire` (the wire type
/// the model declares for it, if any): raw `V2` data is read as bf16 for a bf16 input and raw `V1`
/// data decoded for an input of a wire type (see the module docs); any other file as [`read`]
/// reads it.
pub fn read_input(path: &Path, dtype: DType, wire: Option<WireType>) -> Result<Tensor, NpyError> {
    let bytes = std::fs::read(path).map_err(|source| NpyError::Read { path: path.display().to_string(), source })?;
    read_input_bytes(&bytes, &path.display().to_string(), dtype, wire)
}

/// [`read_input`] on the bytes of a `.npy` file; `path` names it in errors.
pub fn read_input_bytes(bytes: &[u8], path: &str, dtype: DType, wire: Option<WireType>) -> Result<Tensor, NpyError> {
    let raw = match (wire, dtype) {
        (Some(w), _) => Some(Raw::Wire(w)),
        (None, DType::BF16) => Some(Raw::Bf16),
        _ => None,
    };
    decode(bytes, path, raw)
}

/// What raw (`V`) data is read as.
#[derive(Clone, Copy)]
enum Raw {
    /// `V2`: bf16 bits, little-endian.
    Bf16,
    /// `V1`: one value of this wire type per byte.
    Wire(WireType),
}

/// Writes a tensor as a `.npy` file (little-endian, C order).
pub fn write(path: &Path, t: &Tensor) -> Result<(), NpyError> {
    let bytes = encode(t, &path.display().to_string())?;
    std::fs::write(path, bytes).map_err(|source| NpyError::Write { path: path.display().to_string(), source })
}

/// The bytes of a `.npy` file holding `t`.
pub fn write_bytes(t: &Tensor) -> Result<Vec<u8>, NpyError> {
    encode(t, IN_MEMORY)
}

fn decode(bytes: &[u8], path: &str, raw: Option<Raw>) -> Result<Tensor, NpyError> {
    let format = |msg: String| NpyError::Format { path: path.to_string(), msg };
    let unsupported = |msg: String| NpyError::Unsupported { path: path.to_string(), msg };
    // Check the shape ourselves first: npyz multiplies the dims without overflow checks.
    let (header_len, shape) = header_shape(bytes).map_err(format)?;
    let mut n: usize = 1;
    for &d in &shape {
        n = n.checked_mul(d).ok_or_else(|| format(format!("shape {shape:?} has too many elements")))?;
    }
    // NumPy writes ml_dtypes' float8_e5m2 as `f1`, a float size npyz refuses: raw data too.
    if let Some(d) = descr(bytes, header_len).filter(|d| d.len() == 3 && d.ends_with("f1")) {
        if header_text(bytes, header_len).is_some_and(|t| t.contains("True")) {
            return Err(unsupported(format!("`{d}` data in Fortran order is not supported")));
        }
        return decode_raw(bytes, header_len, shape, n, 1, raw).map_err(|msg| match msg {
            RawError::Format(m) => format(m),
            RawError::Unsupported(m) => unsupported(m),
        });
    }
    let npy = npyz::NpyFile::new(bytes).map_err(|e| format(e.to_string()))?;
    if npy.order() == npyz::Order::Fortran {
        return Err(unsupported(
            "the array is stored in Fortran order; save it with np.save(path, np.ascontiguousarray(x))".into(),
        ));
    }
    let ts = match npy.dtype() {
        NpyDType::Plain(ts) => ts,
        other => return Err(unsupported(format!("structured dtype {} is not supported", other.descr()))),
    };
    let (tc, size) = (ts.type_char(), ts.size_field());
    if tc == TypeChar::RawData {
        return decode_raw(bytes, header_len, shape, n, size, raw).map_err(|msg| match msg {
            RawError::Format(m) => format(m),
            RawError::Unsupported(m) => unsupported(m),
        });
    }
    let dtype = match (tc, size) {
        (TypeChar::Float, 8) => DType::F64,
        (TypeChar::Float, 4) => DType::F32,
        (TypeChar::Float, 2) => DType::F16,
        (TypeChar::Int, 8) => DType::I64,
        (TypeChar::Int, 4) => DType::I32,
        (TypeChar::Int, 2) => DType::I16,
        (TypeChar::Int, 1) => DType::I8,
        (TypeChar::Uint, 8) => DType::U64,
        (TypeChar::Uint, 4) => DType::U32,
        (TypeChar::Uint, 2) => DType::U16,
        (TypeChar::Uint, 1) => DType::U8,
        (TypeChar::Bool, 1) => DType::Bool,
        _ => {
            return Err(unsupported(format!(
                "dtype `{ts}` is not supported (expected float64, float32, float16, int64, int32, int16, int8, \
                 uint64, uint32, uint16, uint8 or bool)"
            )))
        }
    };
    let need = (n as u128) * (dtype.size_bytes() as u128);
    let have = bytes.len().saturating_sub(header_len) as u128;
    if need > have {
        return Err(format(format!("shape {shape:?} needs {need} bytes of data, the file has {have}")));
    }
    let io = |e: std::io::Error| format(e.to_string());
    let data = match dtype {
        DType::F32 => TensorData::F32(npy.into_vec::<f32>().map_err(io)?),
        DType::F16 => TensorData::F16(npy.into_vec::<f16>().map_err(io)?),
        DType::I64 => TensorData::I64(npy.into_vec::<i64>().map_err(io)?),
        DType::I32 => TensorData::I32(npy.into_vec::<i32>().map_err(io)?),
        DType::I8 => TensorData::I8(npy.into_vec::<i8>().map_err(io)?),
        DType::U8 => TensorData::U8(npy.into_vec::<u8>().map_err(io)?),
        DType::Bool => TensorData::Bool(npy.into_vec::<bool>().map_err(io)?),
        DType::F64 => TensorData::F64(npy.into_vec::<f64>().map_err(io)?),
        DType::I16 => TensorData::I16(npy.into_vec::<i16>().map_err(io)?),
        DType::U16 => TensorData::U16(npy.into_vec::<u16>().map_err(io)?),
        DType::U32 => TensorData::U32(npy.into_vec::<u32>().map_err(io)?),
        DType::U64 => TensorData::U64(npy.into_vec::<u64>().map_err(io)?),
        DType::BF16 => return Err(unsupported("bf16 has no NumPy type".into())),
    };
    Tensor::new(shape, data).ok_or_else(|| format("the data does not match the shape".into()))
}

/// The header text (the dict) of a file whose header [`header_shape`] has checked.
fn header_text(bytes: &[u8], header_len: usize) -> Option<&str> {
    let start = if bytes.get(6) == Some(&1) { 10 } else { 12 };
    std::str::from_utf8(bytes.get(start..header_len)?).ok()
}

/// The `descr` string of a checked header (`<f4`, `|V1`).
fn descr(bytes: &[u8], header_len: usize) -> Option<String> {
    let text = header_text(bytes, header_len)?;
    let key = ["'descr'", "\"descr\""].iter().find_map(|k| text.find(k).map(|i| i + k.len()))?;
    let rest = text[key..].trim_start().strip_prefix(':')?.trim_start();
    let q = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let inner = &rest[1..];
    Some(inner[..inner.find(q)?].to_string())
}

enum RawError {
    Format(String),
    Unsupported(String),
}

/// Raw data of `size` bytes per element (see [`Raw`]): `n` elements of `shape` after the header.
fn decode_raw(
    bytes: &[u8],
    header_len: usize,
    shape: Vec<usize>,
    n: usize,
    size: u64,
    raw: Option<Raw>,
) -> Result<Tensor, RawError> {
    let data = bytes.get(header_len..).unwrap_or(&[]);
    let need = (n as u128) * u128::from(size);
    if need > data.len() as u128 {
        return Err(RawError::Format(format!(
            "shape {shape:?} needs {need} bytes of data, the file has {}",
            data.len()
        )));
    }
    let data = &data[..need as usize];
    match (raw, size) {
        (Some(Raw::Wire(w)), 1) => {
            w.decode_bytes(shape, data).ok_or_else(|| RawError::Format("the data does not match the shape".into()))
        }
        (Some(Raw::Bf16), 2) => {
            let v = data.chunks_exact(2).map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect();
            Tensor::new(shape, TensorData::BF16(v))
                .ok_or_else(|| RawError::Format("the data does not match the shape".into()))
        }
        (Some(Raw::Wire(w)), _) => Err(RawError::Unsupported(format!(
            "raw data of {size} bytes per element (`V{size}`) for an input declared {w}, which takes one byte per value"
        ))),
        (Some(Raw::Bf16), _) => Err(RawError::Unsupported(format!(
            "raw data of {size} bytes per element (`V{size}`) for a bf16 input, which takes two"
        ))),
        (None, _) => Err(RawError::Unsupported(format!(
            "dtype `V{size}` is raw bytes with no element type; it is read only for a model input declared of a type \
             NumPy lacks (bfloat16, float8, float4, int4, int2, ...)"
        ))),
    }
}

/// Parses the magic, version and header length, and the `shape` tuple of the header dict.
/// Returns the offset of the data and the shape.
fn header_shape(bytes: &[u8]) -> Result<(usize, Vec<usize>), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("missing the \\x93NUMPY magic".into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(format!("unsupported format version {v}")),
    };
    let end = start.checked_add(len).filter(|&e| e <= bytes.len()).ok_or("the header is truncated")?;
    let text = std::str::from_utf8(&bytes[start..end]).map_err(|_| "the header is not text")?;
    // A plain array's header is one dict with one tuple in it. Anything nested deeper is a
    // structured dtype (refused anyway) or garbage, and npyz's literal parser takes exponential
    // time on deep nesting (found by fuzzing: fuzz/regressions/npy_read_nested_header_hang.npy).
    let count = |c: char| text.chars().filter(|&x| x == c).count();
    if count('[') > 0 || count('{') > 1 || count('(') > 1 {
        return Err(
            "the header is not a plain array's (nested lists, dicts or tuples: structured dtypes are not supported)"
                .into(),
        );
    }
    let key = ["'shape'", "\"shape\""].iter().find_map(|k| text.find(k).map(|i| i + k.len()));
    let rest = &text[key.ok_or("the header has no shape")?..];
    let rest = rest.trim_start().strip_prefix(':').ok_or("malformed shape entry")?.trim_start();
    let inner = rest.strip_prefix('(').and_then(|r| r.split_once(')')).ok_or("malformed shape tuple")?.0;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| format!("bad dimension `{s}` in the shape")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((end, shape))
}

fn encode(t: &Tensor, path: &str) -> Result<Vec<u8>, NpyError> {
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    let mut out = vec![];
    let err = |e: std::io::Error| NpyError::Write { path: path.to_string(), source: e };
    macro_rules! put {
        ($ty:ty, $v:expr) => {{
            let mut w = npyz::WriteOptions::<$ty>::new()
                .default_dtype()
                .shape(&shape)
                .writer(&mut out)
                .begin_nd()
                .map_err(err)?;
            w.extend($v.iter().copied()).map_err(err)?;
            w.finish().map_err(err)?;
        }};
    }
    match t.data() {
        TensorData::F32(v) => put!(f32, v),
        TensorData::F16(v) => put!(f16, v),
        TensorData::I64(v) => put!(i64, v),
        TensorData::I32(v) => put!(i32, v),
        TensorData::I8(v) => put!(i8, v),
        TensorData::U8(v) => put!(u8, v),
        TensorData::Bool(v) => put!(bool, v),
        TensorData::F64(v) => put!(f64, v),
        TensorData::I16(v) => put!(i16, v),
        TensorData::U16(v) => put!(u16, v),
        TensorData::U32(v) => put!(u32, v),
        TensorData::U64(v) => put!(u64, v),
        TensorData::BF16(_) => {
            return Err(NpyError::Unsupported {
                path: path.to_string(),
                msg: "NumPy has no bf16 type; cast the tensor to f32 before saving".into(),
            })
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(t: Tensor) {
        let bytes = write_bytes(&t).unwrap();
        assert_eq!(read_bytes(&bytes).unwrap(), t);
    }

    #[test]
    fn round_trips_every_supported_dtype() {
        roundtrip(Tensor::from_f32(vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, f32::MAX, f32::MIN_POSITIVE]));
        roundtrip(Tensor::from_i64(vec![4], vec![i64::MIN, -1, 0, i64::MAX]));
        roundtrip(Tensor::from_i64(vec![], vec![42]));
        roundtrip(Tensor::from_f32(vec![0, 5], vec![]));
        for (dtype, shape) in [
            (DType::F16, vec![3, 1]),
            (DType::I32, vec![3]),
            (DType::I8, vec![1, 3]),
            (DType::U8, vec![3]),
            (DType::Bool, vec![3]),
            (DType::F64, vec![3]),
            (DType::I16, vec![3]),
            (DType::U16, vec![3, 1]),
            (DType::U32, vec![3]),
            (DType::U64, vec![1, 3]),
        ] {
            roundtrip(Tensor::from_f64_iter(dtype, shape, [1.0, 0.0, 1.0].into_iter()));
        }
        // The extremes of the new integer types, and an f64 that f32 cannot hold.
        roundtrip(Tensor::new(vec![2], TensorData::U64(vec![u64::MAX, 1 << 63])).unwrap());
        roundtrip(Tensor::new(vec![2], TensorData::I16(vec![i16::MIN, i16::MAX])).unwrap());
        roundtrip(Tensor::new(vec![2], TensorData::F64(vec![0.1, f64::MAX])).unwrap());
    }

    #[test]
    fn file_round_trip() {
        let dir = std::env::temp_dir().join(format!("qforge-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.npy");
        let t = Tensor::from_f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        write(&path, &t).unwrap();
        assert_eq!(read(&path).unwrap(), t);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A v1 .npy file with the given header dict and data.
    fn raw(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut h = dict.to_string();
        h.push_str(&" ".repeat((64 - (10 + h.len() + 1) % 64) % 64));
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        b.extend(data);
        b
    }

    #[test]
    fn deeply_nested_header_is_refused_quickly() {
        let bytes = include_bytes!("../../fuzz/regressions/npy_read_nested_header_hang.npy");
        // Refused by our header check, before npyz's parser could spend exponential time on it.
        let e = read_bytes(bytes).unwrap_err().to_string();
        assert!(e.contains("not a plain array"), "{e}");
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        let err = |b: &[u8]| read_bytes(b).unwrap_err().to_string();
        let c8 = raw("{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", &[0; 16]);
        assert!(err(&c8).contains("`<c8` is not supported"), "{}", err(&c8));
        let fortran = raw("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", &[0; 16]);
        assert!(err(&fortran).contains("Fortran"));
        let raw2 = raw("{'descr': '<V2', 'fortran_order': False, 'shape': (2,), }", &[0; 4]);
        assert!(err(&raw2).contains("raw bytes with no element type"), "{}", err(&raw2));
        let short = raw("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000,), }", &[0; 16]);
        assert!(err(&short).contains("needs 4000000 bytes"));
        let huge =
            raw("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }", &[]);
        assert!(err(&huge).contains("too many elements"));
        assert!(err(b"").contains("magic"));
        assert!(err(b"\x93NUMPY\x01\x00\xff\xff{").contains("truncated"));
        assert!(err(b"not an npy file at all").contains("magic"));
        // Big-endian data is converted.
        let be =
            raw("{'descr': '>i4', 'fortran_order': False, 'shape': (2,), }", &[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfe]);
        assert_eq!(read_bytes(&be).unwrap().to_i64_vec().unwrap(), vec![1, -2]);
        let bf = Tensor::from_f64_iter(DType::BF16, vec![1], [1.0].into_iter());
        assert!(write_bytes(&bf).unwrap_err().to_string().contains("bf16"));
        let missing = read(Path::new("/nonexistent/x.npy")).unwrap_err().to_string();
        assert!(missing.contains("/nonexistent/x.npy"), "{missing}");
    }

    /// Raw data (`V1`, `V2`, as NumPy saves `ml_dtypes` arrays) is read only for an input whose
    /// declared type says what it is.
    #[test]
    fn raw_data_is_read_as_the_declared_type() {
        let v1 = raw("{'descr': '|V1', 'fortran_order': False, 'shape': (4,), }", &[0x38, 0x7e, 0xfe, 0x7f]);
        let t = read_input_bytes(&v1, "x", DType::F16, Some(WireType::F8E4M3FN)).unwrap();
        let v = t.to_f64_vec();
        assert_eq!((t.dtype(), &v[..3]), (DType::F16, &[1.0, 448.0, -448.0][..]));
        assert!(v[3].is_nan());
        let t = read_input_bytes(&v1, "x", DType::I8, Some(WireType::I4)).unwrap();
        assert_eq!(t.to_i64_vec().unwrap(), vec![-8, -2, -2, -1]);
        let e = read_bytes(&v1).unwrap_err().to_string();
        assert!(e.contains("`V1` is raw bytes with no element type"), "{e}");
        let e = read_input_bytes(&v1, "x", DType::F32, None).unwrap_err().to_string();
        assert!(e.contains("raw bytes"), "{e}");
        let v2 = raw("{'descr': '<V2', 'fortran_order': False, 'shape': (2,), }", &[0x80, 0x3f, 0x00, 0xc0]);
        let t = read_input_bytes(&v2, "x", DType::BF16, None).unwrap();
        assert_eq!((t.dtype(), t.to_f64_vec()), (DType::BF16, vec![1.0, -2.0]));
        let e = read_input_bytes(&v2, "x", DType::F16, Some(WireType::F8E5M2)).unwrap_err().to_string();
        assert!(e.contains("one byte per value"), "{e}");
        // ml_dtypes' float8_e5m2 is saved as `f1`.
        let f1 = raw("{'descr': '<f1', 'fortran_order': False, 'shape': (2,), }", &[0x3c, 0x7c]);
        let t = read_input_bytes(&f1, "x", DType::F16, Some(WireType::F8E5M2)).unwrap();
        assert_eq!(t.to_f64_vec(), vec![1.0, f64::INFINITY]);
        assert!(read_bytes(&f1).unwrap_err().to_string().contains("raw bytes"));
        let short = raw("{'descr': '|V1', 'fortran_order': False, 'shape': (8,), }", &[0; 4]);
        let e = read_input_bytes(&short, "x", DType::U8, Some(WireType::U4)).unwrap_err().to_string();
        assert!(e.contains("needs 8 bytes"), "{e}");
        // A plain file is read as it is.
        let f = write_bytes(&Tensor::from_f32(vec![1], vec![1.0])).unwrap();
        assert_eq!(read_input_bytes(&f, "x", DType::BF16, None).unwrap().dtype(), DType::F32);
    }

    #[test]
    fn reads_the_corpus_files() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/models");
        let x = read(&Path::new(dir).join("digits_test_x.npy")).unwrap();
        assert_eq!((x.dtype(), x.shape()), (DType::F32, &[597, 1, 8, 8][..]));
        let y = read(&Path::new(dir).join("digits_test_y.npy")).unwrap();
        assert_eq!((y.dtype(), y.shape()), (DType::I64, &[597][..]));
    }
}
