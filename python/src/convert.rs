//! NumPy arrays to and from qforge tensors, and binding Python inputs to a graph's inputs.
//!
//! An input array is copied once into the tensor the engine takes (one `memcpy` for a
//! C-contiguous array of the input's dtype; other layouts go through `numpy.ascontiguousarray`
//! first). An output tensor's storage becomes the NumPy array's without a copy.

use crate::errors::{Error, InputData, Kind, Result};
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{
    dtype, Element, PyArray, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use qforge_ir::{DType, Dim, Graph, Tensor, TensorData, TensorType};

/// NumPy's name for a qforge dtype (what `Model.inputs` reports).
pub fn numpy_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::I8 => "int8",
        DType::U8 => "uint8",
        DType::I32 => "int32",
        DType::I64 => "int64",
        DType::Bool => "bool",
        DType::F64 => "float64",
        DType::I16 => "int16",
        DType::U16 => "uint16",
        DType::U32 => "uint32",
        DType::U64 => "uint64",
    }
}

/// `x` as a NumPy array: itself when it is one, else `numpy.asarray(x)` (PyTorch tensors, lists).
pub fn as_array<'py>(x: &Bound<'py, PyAny>) -> Result<Bound<'py, PyUntypedArray>> {
    if let Ok(a) = x.cast::<PyUntypedArray>() {
        return Ok(a.clone());
    }
    let np = numpy::get_array_module(x.py())?;
    let a = np
        .call_method1("asarray", (x,))
        .map_err(|e| Error::new(Kind::Input, format!("a {} is not array data: {e}", type_name(x))))?;
    a.cast_into::<PyUntypedArray>().map_err(|e| Error::new(Kind::Input, e.to_string()))
}

/// The Python type name of `x`, for messages.
pub fn type_name(x: &Bound<'_, PyAny>) -> String {
    x.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "object".to_string())
}

fn copy_out<T: Element + Clone>(a: &Bound<'_, PyUntypedArray>) -> Result<Vec<T>> {
    let typed = a.cast::<PyArrayDyn<T>>().map_err(|e| Error::new(Kind::Internal, e.to_string()))?;
    typed.to_vec().map_err(|e| Error::new(Kind::Internal, format!("array copy: {e}")))
}

/// Copies an array into a tensor of its own dtype; dtypes qforge has no type for are refused.
pub fn tensor_from_array(a: &Bound<'_, PyUntypedArray>) -> Result<Tensor> {
    let py = a.py();
    let contiguous;
    let a = if a.is_c_contiguous() {
        a
    } else {
        let np = numpy::get_array_module(py)?;
        contiguous = np
            .call_method1("ascontiguousarray", (a,))?
            .cast_into::<PyUntypedArray>()
            .map_err(|e| Error::new(Kind::Internal, e.to_string()))?;
        &contiguous
    };
    let shape = a.shape().to_vec();
    let dt = a.dtype();
    let data = if dt.is_equiv_to(&dtype::<f32>(py)) {
        TensorData::F32(copy_out(a)?)
    } else if dt.is_equiv_to(&dtype::<half::f16>(py)) {
        TensorData::F16(copy_out(a)?)
    } else if dt.is_equiv_to(&dtype::<i8>(py)) {
        TensorData::I8(copy_out(a)?)
    } else if dt.is_equiv_to(&dtype::<u8>(py)) {
        TensorData::U8(copy_out(a)?)
    } else if dt.is_equiv_to(&dtype::<i32>(py)) {
        TensorData::I32(copy_out(a)?)
    } else if dt.is_equiv_to(&dtype::<i64>(py)) {
        TensorData::I64(copy_out(a)?)
    } else if dt.is_equiv_to(&dtype::<bool>(py)) {
        TensorData::Bool(copy_out(a)?)
    } else if dt.is_equiv_to(&dtype::<f64>(py)) {
        TensorData::F64(copy_out(a)?)
    } else if dt.is_equiv_to(&dtype::<i16>(py)) {
        TensorData::I16(copy_out(a)?)
    } else if dt.is_equiv_to(&dtype::<u16>(py)) {
        TensorData::U16(copy_out(a)?)
    } else if dt.is_equiv_to(&dtype::<u32>(py)) {
        TensorData::U32(copy_out(a)?)
    } else if dt.is_equiv_to(&dtype::<u64>(py)) {
        TensorData::U64(copy_out(a)?)
    } else {
        let name = dt.str().map(|s| s.to_string()).unwrap_or_else(|_| "?".into());
        return Err(Error::from_anyhow(
            InputData(format!(
                "an array of dtype {name} has no qforge type (float64, float32, float16, int8, uint8, int16, \
                 uint16, int32, uint32, int64, uint64, bool)"
            ))
            .into(),
            Kind::Input,
        ));
    };
    Tensor::new(shape.clone(), data)
        .ok_or_else(|| Error::new(Kind::Internal, format!("array of shape {shape:?}: element count mismatch")))
}

/// An array of a type NumPy itself lacks (an `ml_dtypes` bfloat16, float8, float4 or int4 array,
/// whose dtype kind is `V`) for an input declared of that type: its bytes read as the `.npy`
/// reader reads raw data (`qforge::npy::read_input`): bf16 bits for a bf16 input, one value per
/// byte decoded by [`qforge_ir::WireType::decode_bytes`] for an input of a wire type. `None` for
/// any other array.
fn raw_input(
    a: &Bound<'_, PyUntypedArray>,
    want: Option<DType>,
    wire: Option<qforge_ir::WireType>,
) -> Result<Option<Tensor>> {
    let dt = a.dtype();
    let size = dt.itemsize();
    if dt.kind() != b'V' || !(wire.is_some() || want == Some(DType::BF16)) {
        return Ok(None);
    }
    let py = a.py();
    let np = numpy::get_array_module(py)?;
    let shape = a.shape().to_vec();
    let contiguous =
        np.call_method1("ascontiguousarray", (a,))?.cast_into::<PyUntypedArray>().map_err(|e| Error::new(Kind::Internal, e.to_string()))?;
    let mismatch = |m: String| Error::from_anyhow(InputData(m).into(), Kind::Input);
    match (wire, size) {
        (Some(w), 1) => {
            let bytes = contiguous.call_method1("view", (np.getattr("uint8")?,))?.cast_into::<PyUntypedArray>().map_err(|e| Error::new(Kind::Internal, e.to_string()))?;
            let v: Vec<u8> = copy_out(&bytes)?;
            w.decode_bytes(shape.clone(), &v)
                .map(Some)
                .ok_or_else(|| Error::new(Kind::Internal, format!("array of shape {shape:?}: element count mismatch")))
        }
        (None, 2) => {
            let bits = contiguous.call_method1("view", (np.getattr("uint16")?,))?.cast_into::<PyUntypedArray>().map_err(|e| Error::new(Kind::Internal, e.to_string()))?;
            let v: Vec<u16> = copy_out(&bits)?;
            let data = TensorData::BF16(v.into_iter().map(half::bf16::from_bits).collect());
            Tensor::new(shape.clone(), data)
                .map(Some)
                .ok_or_else(|| Error::new(Kind::Internal, format!("array of shape {shape:?}: element count mismatch")))
        }
        (Some(w), _) => Err(mismatch(format!("an array of {size}-byte raw elements for an input declared {w}, which takes one byte per value"))),
        (None, _) => Err(mismatch(format!("an array of {size}-byte raw elements for a bf16 input, which takes two"))),
    }
}

/// A tensor as a NumPy array that owns the tensor's storage (no copy). bf16, which NumPy has no
/// type for, is widened to float32.
pub fn array_from_tensor<'py>(py: Python<'py>, t: Tensor) -> Result<Bound<'py, PyAny>> {
    let shape = IxDyn(t.shape());
    fn own<'py, T: Element>(py: Python<'py>, shape: IxDyn, v: Vec<T>) -> Result<Bound<'py, PyAny>> {
        let a = ArrayD::from_shape_vec(shape, v).map_err(|e| Error::new(Kind::Internal, e.to_string()))?;
        Ok(PyArray::from_owned_array(py, a).into_any())
    }
    match t.into_data() {
        TensorData::F32(v) => own(py, shape, v),
        TensorData::F16(v) => own(py, shape, v),
        TensorData::BF16(v) => own(py, shape, v.into_iter().map(|x| x.to_f32()).collect::<Vec<f32>>()),
        TensorData::I8(v) => own(py, shape, v),
        TensorData::U8(v) => own(py, shape, v),
        TensorData::I32(v) => own(py, shape, v),
        TensorData::I64(v) => own(py, shape, v),
        TensorData::Bool(v) => own(py, shape, v),
        TensorData::F64(v) => own(py, shape, v),
        TensorData::I16(v) => own(py, shape, v),
        TensorData::U16(v) => own(py, shape, v),
        TensorData::U32(v) => own(py, shape, v),
        TensorData::U64(v) => own(py, shape, v),
    }
}

/// The names of `g`'s inputs, in order.
pub fn input_names(g: &Graph) -> Vec<String> {
    g.inputs().iter().map(|&i| g.node(i).name.clone()).collect()
}

/// A graph input's declared type, as `float32[N,1,8,8]`.
pub fn describe_input(g: &Graph, i: usize) -> String {
    let Some(&id) = g.inputs().get(i) else { return String::new() };
    g.node(id).outputs.first().map(type_text).unwrap_or_default()
}

/// A tensor type with NumPy's dtype name, as `float32[N,1,8,8]`.
pub fn type_text(ty: &TensorType) -> String {
    let dims: Vec<String> = ty
        .shape
        .dims()
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Sym(s) => s.clone(),
        })
        .collect();
    format!("{}[{}]", numpy_name(ty.dtype), dims.join(","))
}

/// Python data for `g`'s inputs, in the graph's order: one array (a model with one input), a
/// list or tuple (one array per input, in order; with `extra_ok`, elements past the last input
/// are ignored, as a data loader's labels are), or a dict by input name. `what` names the data
/// in messages ("input", "calibration batch 3"). Each array keeps its own dtype; the dtype check
/// names the input and the dtype it needs.
pub fn bind_inputs(g: &Graph, x: &Bound<'_, PyAny>, what: &str, extra_ok: bool) -> Result<Vec<Tensor>> {
    input_arrays(g, x, what, extra_ok)?.iter().enumerate().map(|(i, a)| input_tensor(g, i, a, what)).collect()
}

/// The arrays of [`bind_inputs`], not yet converted (NumPy views of the caller's data).
pub fn input_arrays<'py>(
    g: &Graph,
    x: &Bound<'py, PyAny>,
    what: &str,
    extra_ok: bool,
) -> Result<Vec<Bound<'py, PyUntypedArray>>> {
    let names = input_names(g);
    let bad = |msg: String| Error::from_anyhow(InputData(msg).into(), Kind::Input);
    let arrays: Vec<Bound<'_, PyAny>> = if let Ok(d) = x.cast::<PyDict>() {
        for k in d.keys() {
            let k: String = k.extract().map_err(|_| bad(format!("{what}: dict keys must be input names (str)")))?;
            if !names.contains(&k) {
                return Err(bad(format!("{what}: `{k}` names no model input (inputs: {})", names.join(", "))));
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for n in &names {
            match d.get_item(n)? {
                Some(v) => out.push(v),
                None => {
                    return Err(bad(format!(
                        "{what}: no array for the model's input `{n}` (given: {})",
                        d.keys().iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
                    )))
                }
            }
        }
        out
    } else if x.is_instance_of::<PyList>() || x.is_instance_of::<PyTuple>() {
        let items: Vec<Bound<'_, PyAny>> = x.try_iter()?.collect::<PyResult<_>>()?;
        if items.len() < names.len() || (items.len() > names.len() && !extra_ok) {
            return Err(bad(format!(
                "{what}: {} arrays for the model's {} input(s) ({})",
                items.len(),
                names.len(),
                names.join(", ")
            )));
        }
        items.into_iter().take(names.len()).collect()
    } else {
        if names.len() != 1 {
            return Err(bad(format!(
                "{what}: one array for a model with {} inputs ({}); pass a list in that order or a dict by name",
                names.len(),
                names.join(", ")
            )));
        }
        vec![x.clone()]
    };
    arrays
        .iter()
        .enumerate()
        .map(|(i, a)| as_array(a).map_err(|e| bad(format!("{what} `{}`: {:#}", names[i], e.error))))
        .collect()
}

/// Array `a` as input `i` of `g`: converted, its dtype checked against the input's (the message
/// names the input and the dtype it needs).
pub fn input_tensor(g: &Graph, i: usize, a: &Bound<'_, PyUntypedArray>, what: &str) -> Result<Tensor> {
    let bad = |msg: String| Error::from_anyhow(InputData(msg).into(), Kind::Input);
    let name = || input_names(g).get(i).cloned().unwrap_or_default();
    let want = g.node(g.inputs()[i]).outputs.first().map(|ty| ty.dtype);
    let raw = raw_input(a, want, g.wire(&name())).map_err(|e| bad(format!("{what} `{}`: {:#}", name(), e.error)))?;
    let t = match raw {
        Some(t) => t,
        None => tensor_from_array(a).map_err(|e| bad(format!("{what} `{}`: {:#}", name(), e.error)))?,
    };
    if let Some(want) = want.filter(|&w| w != t.dtype()) {
        let hint = if want == DType::F32 { ", e.g. x.astype(numpy.float32)" } else { "" };
        return Err(bad(format!(
            "{what} `{}` is {}, the model takes {} ({}): cast it{hint}",
            name(),
            numpy_name(t.dtype()),
            numpy_name(want),
            describe_input(g, i)
        )));
    }
    Ok(t)
}

/// Converts a serde JSON value (reports, summaries, headers) to the Python object `json.loads`
/// would give.
pub fn json_to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    use pyo3::IntoPyObjectExt;
    Ok(match v {
        serde_json::Value::Null => py.None().into_bound(py),
        serde_json::Value::Bool(b) => b.into_bound_py_any(py)?,
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_bound_py_any(py)?
            } else if let Some(u) = n.as_u64() {
                u.into_bound_py_any(py)?
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_bound_py_any(py)?
            }
        }
        serde_json::Value::String(s) => s.into_bound_py_any(py)?,
        serde_json::Value::Array(a) => {
            let items = a.iter().map(|x| json_to_py(py, x)).collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
        serde_json::Value::Object(o) => {
            let d = PyDict::new(py);
            for (k, x) in o {
                d.set_item(k, json_to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}

/// A Python object (a qconfig dict) as a serde JSON value, through `json.dumps`.
pub fn py_to_json(x: &Bound<'_, PyAny>) -> Result<serde_json::Value> {
    let json = x.py().import("json")?;
    let text: String = json.call_method1("dumps", (x,))?.extract()?;
    serde_json::from_str(&text).map_err(|e| Error::new(Kind::Option, format!("not JSON-like data: {e}")))
}
