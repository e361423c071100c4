//! Batches and labels: splitting inputs along axis 0, joining outputs, top-1 accuracy.

use anyhow::{bail, Result};
use qforge_ir::{Tensor, TensorData};

/// Rows `start..end` of axis 0.
pub fn slice_batch(x: &Tensor, start: usize, end: usize) -> Result<Tensor> {
    let Some(&n) = x.shape().first() else { bail!("cannot batch a scalar") };
    x.rows(start, end).ok_or_else(|| anyhow::anyhow!("batch {start}..{end} is outside 0..{n}"))
}

/// Joins tensors of equal trailing shape along axis 0.
pub fn concat_batch(parts: &[Tensor]) -> Result<Tensor> {
    Tensor::concat_rows(parts).map_err(|e| anyhow::anyhow!("joining batch outputs: {e}"))
}

/// Index of the largest score in each row of a `[N, C]` (or `[N, C, 1, 1]`) tensor; ties go to
/// the first.
pub fn argmax_rows(scores: &Tensor) -> Result<Vec<usize>> {
    let Some(&n) = scores.shape().first() else { bail!("scores must have a batch dimension") };
    if n == 0 {
        return Ok(vec![]);
    }
    let v = scores.to_f32_vec();
    let c = v.len() / n;
    if c == 0 {
        bail!("scores have no classes");
    }
    Ok(v.chunks(c)
        .map(|row| row.iter().enumerate().fold(0, |best, (i, &x)| if x > row[best] { i } else { best }))
        .collect())
}

/// Labels as class indices: an integer vector of one label per sample.
pub fn labels(y: &Tensor) -> Result<Vec<usize>> {
    let Some(v) = y.to_i64_vec() else { bail!("labels must be integers, got {}", y.dtype()) };
    if y.rank() != 1 {
        bail!("labels must be a vector of shape [N], got {:?}", y.shape());
    }
    v.into_iter().map(|l| usize::try_from(l).map_err(|_| anyhow::anyhow!("negative label {l}"))).collect()
}

/// Share of predictions equal to the labels.
pub fn top1(pred: &[usize], labels: &[usize]) -> Result<f64> {
    if pred.len() != labels.len() {
        bail!("{} predictions but {} labels", pred.len(), labels.len());
    }
    if pred.is_empty() {
        bail!("no samples");
    }
    Ok(pred.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / pred.len() as f64)
}

/// How many elements of a float tensor are NaN or infinite (0 for integer tensors).
pub fn non_finite(t: &Tensor) -> (usize, usize) {
    let count = |it: &mut dyn Iterator<Item = f32>| {
        it.fold((0, 0), |(nan, inf), x| (nan + x.is_nan() as usize, inf + x.is_infinite() as usize))
    };
    match t.data() {
        TensorData::F32(v) => count(&mut v.iter().copied()),
        TensorData::F16(v) => count(&mut v.iter().map(|x| x.to_f32())),
        TensorData::BF16(v) => count(&mut v.iter().map(|x| x.to_f32())),
        _ => (0, 0),
    }
}

/// What to do about NaN or infinite values in data.
#[derive(Clone, Copy, Debug)]
pub enum NonFinite {
    /// Warn (the default for inputs: a float model propagates them, a quantized one does not).
    Warn,
    /// Refuse, for the reason given (`--strict`; calibration, whose observers need finite data).
    Refuse(&'static str),
}

impl NonFinite {
    /// `--strict` refuses, otherwise a warning.
    pub fn strict(strict: bool) -> NonFinite {
        if strict {
            NonFinite::Refuse("refused by --strict")
        } else {
            NonFinite::Warn
        }
    }
}

/// Input data a model cannot represent: NaN or infinite values in `what` (`--input x.npy`,
/// `--calib c.npy`). A float model propagates them while a quantized one maps them to finite
/// values, so the user is told either way: a warning, or an error.
pub fn check_finite(tensors: &[Tensor], what: &str, policy: NonFinite) -> Result<()> {
    let (nan, inf) = tensors.iter().map(non_finite).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    if nan + inf == 0 {
        return Ok(());
    }
    let total: usize = tensors.iter().map(|t| t.shape().iter().product::<usize>()).sum();
    let msg = format!(
        "{what} holds {nan} NaN and {inf} infinite value(s) of {total}: a float model propagates them, a quantized \
         one turns them into finite values"
    );
    match policy {
        NonFinite::Refuse(why) => bail!("{msg} ({why})"),
        NonFinite::Warn => {
            tracing::warn!("{msg}");
            Ok(())
        }
    }
}

/// Consecutive batches of `batch` rows of a single-input tensor `x` (the last one shorter), each
/// as the one-tensor input list a graph runs on.
pub fn batches(x: &Tensor, batch: usize) -> Result<std::vec::IntoIter<Vec<Tensor>>> {
    let Some(&samples) = x.shape().first() else { bail!("the data has no batch dimension") };
    if samples == 0 {
        bail!("the data set is empty");
    }
    Ok(crate::calib_set::CalibSet { inputs: vec![x.clone()], samples }.batches(batch)?.into_iter())
}
