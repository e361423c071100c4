//! Calibration data from Python: a [`CalibSource`] over a NumPy array, a dict of arrays, or any
//! iterable of batches (a PyTorch `DataLoader`, a list, a generator).
//!
//! Batches are streamed: each pass a stage asks for ([`CalibSource::stream`]) takes one batch at
//! a time from Python (holding the GIL only while it does), converts it to tensors, checks it
//! and hands it on; nothing keeps it after the stage has observed it.
//!
//! * An array (or a dict of arrays, one per input name) is cut into batches of `calib_batch` rows
//!   along axis 0, the way the CLI cuts a `--calib` file, so the same data gives the same ranges.
//! * An iterable yields its own batches (`calib_batch` does not apply). Each pass calls
//!   `iter(obj)` again, so a re-iterable (a list, a `DataLoader`) serves every pass. A one-shot
//!   iterator (a generator: `iter(obj) is obj`) serves one pass; a stage that needs a second pass
//!   is refused with an error saying to pass a re-iterable.

use crate::convert::{as_array, describe_input, input_arrays, input_names, input_tensor, tensor_from_array, type_name};
use crate::errors::{CalibData, PythonError};
use anyhow::{anyhow, Context, Result};
use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyIterator, PySlice};
use qforge::calib_set::{CalibBatches, CalibSource};
use qforge_passes::quantize::calibrate::{BatchError, CalibBatch};
use std::borrow::Cow;
use std::sync::Arc;
use qforge_ir::{Graph, Tensor};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Where the batches come from.
enum Data {
    /// Arrays with samples on axis 0: one (`name` None, for a model with one input) or one per
    /// input name.
    Arrays(Vec<(Option<String>, Py<PyUntypedArray>)>),
    /// An iterable of batches; `one_shot` when it is its own iterator.
    Iterable { obj: Py<PyAny>, one_shot: bool },
}

/// Calibration data held by reference to the Python objects (nothing is copied up front).
pub struct PyCalib {
    data: Data,
    what: String,
    /// Passes started so far (a one-shot iterator serves one).
    passes: AtomicUsize,
}

/// Wraps a failure of the user's data (or of reading it) so the boundary raises
/// `qforge.CalibrationError` for it.
fn calib_err(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(CalibData(msg.into()))
}

impl PyCalib {
    /// Wraps `obj`: an array-like (NumPy array, or anything with `__array__`), a dict of them, or
    /// an iterable of batches.
    pub fn new(obj: &Bound<'_, PyAny>) -> crate::errors::Result<PyCalib> {
        let is_array_like =
            obj.cast::<PyUntypedArray>().is_ok() || obj.hasattr("__array__")? || obj.hasattr("__array_interface__")?;
        let (data, what) = if is_array_like {
            let a = as_array(obj)?;
            let what = format!("`{}` ({}{:?})", type_name(obj), dtype_str(&a), a.shape());
            (Data::Arrays(vec![(None, a.unbind())]), what)
        } else if let Ok(d) = obj.cast::<PyDict>() {
            let mut arrays = vec![];
            let mut parts = vec![];
            for (k, v) in d.iter() {
                let name: String = k.extract().map_err(|_| {
                    crate::errors::Error::from_anyhow(
                        calib_err("calib: dict keys must be input names (str)"),
                        crate::errors::Kind::Calibration,
                    )
                })?;
                let a = as_array(&v)?;
                parts.push(format!("{name} {}{:?}", dtype_str(&a), a.shape()));
                arrays.push((Some(name), a.unbind()));
            }
            (Data::Arrays(arrays), format!("`dict` ({})", parts.join(", ")))
        } else {
            let it = obj.try_iter().map_err(|_| {
                crate::errors::Error::from_anyhow(
                    calib_err(format!(
                        "calib: a {} is not calibration data (give a NumPy array, a dict of arrays by input name, or an \
                         iterable of those)",
                        type_name(obj)
                    )),
                    crate::errors::Kind::Calibration,
                )
            })?;
            let one_shot = it.is(obj);
            let kind = if one_shot { "a one-shot iterator of batches" } else { "an iterable of batches" };
            (Data::Iterable { obj: obj.clone().unbind(), one_shot }, format!("`{}` ({kind})", type_name(obj)))
        };
        Ok(PyCalib { data, what, passes: AtomicUsize::new(0) })
    }

    /// Every batch of one pass, concatenated per input (the HTML report writes the set to a file,
    /// as `qforge report` reads it).
    pub fn collect(&self, g: &Graph, batch: usize) -> Result<Vec<Tensor>> {
        let mut per_input: Vec<Vec<Tensor>> = vec![vec![]; g.inputs().len()];
        for b in self.stream(g, batch)? {
            for (i, t) in b?.into_iter().enumerate() {
                per_input[i].push(t);
            }
        }
        per_input.iter().map(|parts| qforge::data::concat_batch(parts)).collect()
    }

    /// Refuses pass `pass` over a one-shot iterator after its first.
    fn check_pass(&self, one_shot: bool, pass: usize) -> Result<()> {
        if one_shot && pass > 1 {
            return Err(calib_err(format!(
                "calib is a one-shot iterator (a generator), already used by an earlier pass, and this step needs \
                 pass {pass} over the data: pass a re-iterable instead (a list of batches, a DataLoader, or an object \
                 whose __iter__ returns a fresh iterator)"
            )));
        }
        Ok(())
    }

    /// What reading item `k` of pass `pass` of an iterable gives the stream: the batch, the end
    /// of the pass (`None`), or an error, `calib yielded no batches` when the first read finds
    /// none; `done` is set when the pass must stop after it.
    fn next_item<T>(item: Result<Option<T>>, k: usize, pass: usize, done: &mut bool) -> Option<Result<T>> {
        match item {
            Ok(Some(b)) => Some(Ok(b)),
            Ok(None) if k == 0 => {
                *done = true;
                let again = if pass > 1 {
                    format!(
                        " on pass {pass}: an iterable whose __iter__ does not start over serves one pass; pass a \
                         re-iterable (a list of batches, a DataLoader)"
                    )
                } else {
                    String::new()
                };
                Some(Err(calib_err(format!("calib yielded no batches{again}"))))
            }
            Ok(None) => None,
            Err(e) => {
                *done = true;
                Some(Err(e))
            }
        }
    }

    /// The arrays bound to `g`'s inputs in order, with their common number of samples.
    fn bind_arrays<'py>(
        &self,
        py: Python<'py>,
        arrays: &[(Option<String>, Py<PyUntypedArray>)],
        g: &Graph,
    ) -> Result<(Vec<Bound<'py, PyUntypedArray>>, usize)> {
        let names = input_names(g);
        let bound: Vec<Bound<'py, PyUntypedArray>> = match arrays {
            [(None, a)] => {
                if names.len() != 1 {
                    return Err(calib_err(format!(
                        "calib: one array for a model with {} inputs ({}); pass a dict of arrays by input name",
                        names.len(),
                        names.join(", ")
                    )));
                }
                vec![a.bind(py).clone()]
            }
            _ => {
                let given = || arrays.iter().filter_map(|(n, _)| n.clone()).collect::<Vec<_>>().join(", ");
                if let Some((Some(extra), _)) =
                    arrays.iter().find(|(n, _)| n.as_ref().is_none_or(|n| !names.contains(n)))
                {
                    return Err(calib_err(format!(
                        "calib: array `{extra}` names no model input (inputs: {}; arrays: {})",
                        names.join(", "),
                        given()
                    )));
                }
                let mut out = vec![];
                for n in &names {
                    let Some((_, a)) = arrays.iter().find(|(m, _)| m.as_deref() == Some(n.as_str())) else {
                        return Err(calib_err(format!(
                            "calib has no array for the model's input `{n}` (arrays: {})",
                            given()
                        )));
                    };
                    out.push(a.bind(py).clone());
                }
                out
            }
        };
        let mut samples = None;
        for (a, name) in bound.iter().zip(&names) {
            let Some(&n) = a.shape().first() else {
                return Err(calib_err(format!("calib: the data for `{name}` has no batch dimension (a 0-d array)")));
            };
            match samples {
                None => samples = Some(n),
                Some(m) if m != n => {
                    return Err(calib_err(format!("calib: `{name}` has {n} samples but the first input has {m}")))
                }
                Some(_) => {}
            }
        }
        match samples {
            Some(n) if n > 0 => Ok((bound, n)),
            _ => Err(calib_err("calib: the calibration set is empty")),
        }
    }

    /// Rows `start..end` of each array, as tensors.
    fn slice(arrays: &[Bound<'_, PyUntypedArray>], start: usize, end: usize) -> Result<Vec<Tensor>> {
        arrays
            .iter()
            .map(|a| {
                let rows = a.get_item(PySlice::new(a.py(), start as isize, end as isize, 1)).map_err(py_err)?;
                let rows = rows.cast_into::<PyUntypedArray>().map_err(|e| anyhow!("{e}"))?;
                tensor_from_array(&rows).map_err(|e| e.error)
            })
            .collect()
    }
}

fn dtype_str(a: &Bound<'_, PyUntypedArray>) -> String {
    a.dtype().str().map(|s| s.to_string()).unwrap_or_default()
}

fn py_err(e: PyErr) -> anyhow::Error {
    anyhow::Error::new(PythonError(e))
}

/// One batch of a pass, held as the caller's arrays (NumPy views, nothing copied): calibration
/// converts the samples of one run at a time ([`CalibBatch::rows`]), so the whole batch never
/// exists twice.
struct PyBatch {
    g: Arc<Graph>,
    arrays: Vec<Py<PyUntypedArray>>,
    /// "calibration batch 3" or "calibration rows 0..50", for messages.
    what: String,
    samples: Option<usize>,
    sample_bytes: usize,
}

impl PyBatch {
    fn new(g: Arc<Graph>, arrays: &[Bound<'_, PyUntypedArray>], what: String) -> PyBatch {
        let n = arrays.first().and_then(|a| a.shape().first().copied());
        let samples = n.filter(|n| arrays.iter().all(|a| a.shape().first() == Some(n)));
        let sample_bytes = arrays
            .iter()
            .map(|a| a.shape().iter().skip(1).product::<usize>() * a.dtype().itemsize())
            .sum();
        PyBatch { g, arrays: arrays.iter().map(|a| a.clone().unbind()).collect(), what, samples, sample_bytes }
    }
}

impl CalibBatch for PyBatch {
    fn samples(&self) -> Option<usize> {
        self.samples
    }

    fn sample_bytes(&self) -> usize {
        self.sample_bytes
    }

    /// Samples `start..end` of every array, converted and checked (a calibration data error,
    /// `qforge.CalibrationError`, when they do not fit the model or are not finite).
    fn rows(&self, start: usize, end: usize) -> std::result::Result<Cow<'_, [Tensor]>, BatchError> {
        let part = self.samples.is_some_and(|n| start > 0 || end < n);
        let inputs = Python::attach(|py| -> Result<Vec<Tensor>> {
            let mut out = Vec::with_capacity(self.arrays.len());
            for (i, a) in self.arrays.iter().enumerate() {
                let a = a.bind(py);
                let t = if part {
                    let rows = a.get_item(PySlice::new(py, start as isize, end as isize, 1)).map_err(py_err)?;
                    let rows = rows.cast_into::<PyUntypedArray>().map_err(|e| anyhow!("{e}"))?;
                    input_tensor(&self.g, i, &rows, &self.what)
                } else {
                    input_tensor(&self.g, i, a, &self.what)
                };
                out.push(t.map_err(|e| calib_err(format!("{:#}", e.error)))?);
            }
            Ok(out)
        })
        .and_then(|b| check_batch(&self.g, &b, &self.what).map(|()| b))
        .map_err(|e| -> BatchError { Box::new(CalibData(crate::errors::one_line(&format!("{e:#}")))) })?;
        Ok(Cow::Owned(inputs))
    }
}

/// A batch as the graph's inputs, checked: it binds to the inputs, its types fit them and its
/// values are finite (calibration refuses NaN and infinity, as the CLI does).
fn check_batch(g: &Graph, batch: &[Tensor], what: &str) -> Result<()> {
    qforge_ir::interp::check_inputs(g, batch).map_err(|e| calib_err(format!("{what} does not fit the model: {e}")))?;
    qforge::data::check_finite(batch, what, qforge::data::NonFinite::Refuse("calibration needs finite data"))
        .map_err(|e| calib_err(format!("{e:#}")))
}

impl CalibSource for PyCalib {
    fn describe(&self) -> String {
        self.what.clone()
    }

    fn single_pass(&self) -> bool {
        matches!(self.data, Data::Iterable { one_shot: true, .. })
    }

    /// Each batch of [`CalibSource::batches`] converted whole.
    fn stream<'a>(&'a self, g: &Graph, batch: usize) -> Result<Box<dyn Iterator<Item = Result<Vec<Tensor>>> + 'a>> {
        Ok(Box::new(self.batches(g, batch)?.map(|b| {
            let b = b?;
            let n = b.samples().unwrap_or(0);
            b.rows(0, n).map(Cow::into_owned).map_err(|e| calib_err(e.to_string()))
        })))
    }

    /// Batches kept as NumPy views (the rows of an array, or what an iterable yields), each
    /// converted a run at a time when calibration reads it ([`PyBatch`]).
    fn batches<'a>(&'a self, g: &Graph, batch: usize) -> Result<CalibBatches<'a>> {
        let pass = self.passes.fetch_add(1, Ordering::SeqCst) + 1;
        let g = Arc::new(g.clone());
        match &self.data {
            Data::Arrays(arrays) => {
                let batch = batch.max(1);
                let n = Python::attach(|py| self.bind_arrays(py, arrays, &g).map(|(_, n)| n))?;
                Ok(Box::new((0..n.div_ceil(batch)).map(move |k| {
                    let (start, end) = (k * batch, ((k + 1) * batch).min(n));
                    Python::attach(|py| {
                        py.check_signals().map_err(py_err)?;
                        let (bound, _) = self.bind_arrays(py, arrays, &g)?;
                        let views = bound
                            .iter()
                            .map(|a| {
                                let rows =
                                    a.get_item(PySlice::new(py, start as isize, end as isize, 1)).map_err(py_err)?;
                                rows.cast_into::<PyUntypedArray>().map_err(|e| anyhow!("{e}"))
                            })
                            .collect::<Result<Vec<_>>>()?;
                        let b = PyBatch::new(g.clone(), &views, format!("calibration rows {start}..{end}"));
                        Ok(Box::new(b) as Box<dyn CalibBatch + 'a>)
                    })
                })))
            }
            Data::Iterable { obj, one_shot } => {
                self.check_pass(*one_shot, pass)?;
                let it: Py<PyIterator> =
                    Python::attach(|py| obj.bind(py).try_iter().map(Bound::unbind)).map_err(py_err)?;
                let mut k = 0usize;
                let mut done = false;
                Ok(Box::new(std::iter::from_fn(move || {
                    if done {
                        return None;
                    }
                    let what = format!("calibration batch {k}");
                    let item = Python::attach(|py| -> Result<Option<PyBatch>> {
                        py.check_signals().map_err(py_err)?;
                        let Some(x) = it.bind(py).clone().next() else { return Ok(None) };
                        let x = x
                            .map_err(py_err)
                            .context(CalibData("the calibration iterable raised an exception".into()))?;
                        let arrays =
                            input_arrays(&g, &x, &what, true).map_err(|e| calib_err(format!("{:#}", e.error)))?;
                        Ok(Some(PyBatch::new(g.clone(), &arrays, what.clone())))
                    });
                    match Self::next_item(item, k, pass, &mut done) {
                        Some(Ok(b)) => {
                            k += 1;
                            Some(Ok(Box::new(b) as Box<dyn CalibBatch + 'a>))
                        }
                        other => other.map(|r| r.map(|b| Box::new(b) as Box<dyn CalibBatch + 'a>)),
                    }
                })))
            }
        }
    }

    fn batch_count(&self, g: &Graph, batch: usize) -> Option<usize> {
        Python::attach(|py| match &self.data {
            Data::Arrays(arrays) => self.bind_arrays(py, arrays, g).ok().map(|(_, n)| n.div_ceil(batch.max(1))),
            Data::Iterable { obj, .. } => obj.bind(py).len().ok(),
        })
    }

    fn check(&self, g: &Graph) -> Result<()> {
        match &self.data {
            // the arrays bind to the inputs and their first sample fits (values are checked batch
            // by batch as they stream)
            Data::Arrays(arrays) => Python::attach(|py| {
                let (bound, _) = self.bind_arrays(py, arrays, g)?;
                let first = Self::slice(&bound, 0, 1)?;
                qforge_ir::interp::check_inputs(g, &first).map_err(|e| {
                    let expected: Vec<String> = (0..g.inputs().len()).map(|i| describe_input(g, i)).collect();
                    calib_err(format!("calibration data does not fit the model (inputs {}): {e}", expected.join(", ")))
                })
            }),
            // an iterable is checked batch by batch as it streams: checking it here would use it up
            Data::Iterable { .. } => Ok(()),
        }
    }
}
