//! Calibration: run the graph on sample batches and feed one streaming observer per activation
//! that static quantization will quantize.
//!
//! The graph is run through an [`Evaluator`] (this crate never calls code generation: `qforge`
//! implements the trait with its engine; [`Interpreter`] is the reference interpreter, for tests
//! and as the default). Memory stays bounded: batches come one at a time from an iterator, the
//! evaluator frees intermediates after their last use, and the observers keep a few numbers or a
//! fixed-size histogram each. Progress is reported through a callback (the pass never prints).
//!
//! A batch ([`CalibBatch`]) is run in runs of at most [`RUN_INPUT_BYTES`] of input (at least one
//! sample; all of it where the graph's batch dimension is fixed), so an engine's working memory
//! (its copy of the inputs, its activations) follows the run, not the batch, and a source that
//! keeps the batch outside Rust (the Python package's NumPy arrays) converts one run's samples at
//! a time: calibration holds the caller's batch and one run. Observers see a batch as the values
//! of its runs ([`Observer::observe_in_batch`]): min-max and channel maxima accumulate them, EMA
//! merges them and moves once per batch, and the histogram observers (percentile, entropy, MSE)
//! hold a batch's parts of their tensor until the batch ends and take it whole, so every range
//! is the same however a batch was split (those methods hold one batch of each observed tensor).
//! The histograms behind the warnings of min-max and EMA take the parts as they come.
//!
//! [`channel_absmax`] is the other observation: the largest magnitude of each channel along the
//! last axis (all other axes and every batch reduced), which SmoothQuant ([`super::smooth`]) needs.
//!
//! Ranges are keyed by the producing node's name and result port, so a calibration made on one
//! copy of a graph applies to another copy (sensitivity analysis quantizes many copies).

use super::bias_correction::{InputMeans, InputStat};
use super::histogram::Histogram;
use super::observer::{CalibMethod, ObserveError, Observer, ObserverConfig};
use super::scheme::{params_for_range, Scheme};
use crate::evaluator::Watched;
pub use crate::evaluator::{EvalError, Evaluator, Interpreter};
use qforge_ir::{Graph, NodeId, Op, Tensor, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

/// One activation to observe, with the observer it gets and the scheme its range will be
/// quantized with (for the warnings).
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub value: Value,
    pub observer: ObserverConfig,
    pub scheme: Scheme,
}

/// The most input bytes one calibration run takes (see the module docs); a batch with more runs
/// in slices of samples.
pub const RUN_INPUT_BYTES: usize = 256 << 10;

/// One calibration batch: one tensor per graph input, samples along axis 0, read a run at a
/// time ([`CalibBatch::rows`]).
pub trait CalibBatch {
    /// The samples in the batch: the leading dimension its inputs share, `None` when they do not
    /// share one (or an input is a scalar).
    fn samples(&self) -> Option<usize>;
    /// The bytes of one sample, over every input.
    fn sample_bytes(&self) -> usize;
    /// The inputs for samples `start..end`; the whole batch for `0..samples()` (or when
    /// `samples()` is `None`).
    fn rows(&self, start: usize, end: usize) -> Result<Cow<'_, [Tensor]>, BatchError>;
}

/// Why a batch's samples could not be read (the source's own error).
pub type BatchError = Box<dyn std::error::Error + Send + Sync>;

impl CalibBatch for Vec<Tensor> {
    fn samples(&self) -> Option<usize> {
        let n = *self.first()?.shape().first()?;
        self.iter().all(|t| t.shape().first() == Some(&n)).then_some(n)
    }

    fn sample_bytes(&self) -> usize {
        let n = self.samples().unwrap_or(1).max(1);
        self.iter().map(|t| t.len() * t.dtype().size_bytes()).sum::<usize>() / n
    }

    fn rows(&self, start: usize, end: usize) -> Result<Cow<'_, [Tensor]>, BatchError> {
        if self.samples().is_none_or(|n| start == 0 && end == n) {
            return Ok(Cow::Borrowed(self.as_slice()));
        }
        self.iter()
            .map(|t| t.rows(start, end).ok_or_else(|| format!("samples {start}..{end} of {:?}", t.shape()).into()))
            .collect::<Result<Vec<_>, BatchError>>()
            .map(Cow::Owned)
    }
}

impl<B: CalibBatch + ?Sized> CalibBatch for Box<B> {
    fn samples(&self) -> Option<usize> {
        (**self).samples()
    }
    fn sample_bytes(&self) -> usize {
        (**self).sample_bytes()
    }
    fn rows(&self, start: usize, end: usize) -> Result<Cow<'_, [Tensor]>, BatchError> {
        (**self).rows(start, end)
    }
}

/// The samples one run of `batch` takes: [`RUN_INPUT_BYTES`] worth (at least one), or the whole
/// batch where `g`'s first input has a fixed leading dimension or the batch has no shared one.
fn run_samples(g: &Graph, batch: &dyn CalibBatch) -> Option<usize> {
    let n = batch.samples()?;
    let first = g.inputs().first()?;
    if !matches!(g.node(*first).outputs[0].shape.dims().first(), Some(qforge_ir::Dim::Sym(_))) {
        return None;
    }
    let per_run = RUN_INPUT_BYTES / batch.sample_bytes().max(1);
    Some(per_run.clamp(1, n.max(1)))
}

/// Calibrated ranges, by (producing node's name, result port), and the warnings about ranges
/// that quantize their tensor far worse than min-max would.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Calibration {
    pub ranges: BTreeMap<(String, usize), (f32, f32)>,
    pub batches: usize,
    pub samples: usize,
    pub warnings: Vec<CalibWarning>,
    /// Bias correction's input means, by layer name ([`calibrate_with_means`]; empty when none
    /// were asked for).
    pub input_means: BTreeMap<String, Vec<f64>>,
}

/// A calibrated range saturates more than this share of the calibration values, where min-max
/// saturates none: a warning ([`assess`]). Percentile at its default 99.99 clips 0.01%; the
/// entropy and MSE choices on well-behaved activations clip well under 0.1%.
pub const WARN_CLIPPED_SHARE: f64 = 0.01;

/// A calibrated range quantizes its tensor more than this many dB below min-max's SQNR: a warning
/// ([`assess`]). Clipping a few outliers costs a little SQNR for a finer step; 10 dB (a tenth of
/// the signal-to-noise ratio) is far beyond what that trade is worth.
pub const WARN_SQNR_DROP_DB: f64 = 10.0;

/// How a calibrated range compares with min-max on the tensor's calibration values (estimated
/// from their histogram, [`Histogram::quality`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RangeAssessment {
    pub method: CalibMethod,
    pub range: (f32, f32),
    /// Share of the values the range saturates, and the tensor's SQNR (dB) under it.
    pub clipped: f64,
    pub sqnr_db: f64,
    /// The same for the min-max range (the observed extremes).
    pub minmax: (f32, f32),
    pub minmax_clipped: f64,
    pub minmax_sqnr_db: f64,
}

impl fmt::Display for RangeAssessment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} range [{:.4e}, {:.4e}] clips {:.2}% of the calibration values, SQNR {:.1} dB; min-max [{:.4e}, \
             {:.4e}] would clip {:.2}%, SQNR {:.1} dB",
            self.method,
            self.range.0,
            self.range.1,
            self.clipped * 100.0,
            self.sqnr_db,
            self.minmax.0,
            self.minmax.1,
            self.minmax_clipped * 100.0,
            self.minmax_sqnr_db
        )
    }
}

/// The assessment of `range` (chosen by `method`) against min-max on the values `hist` holds,
/// when it warrants a warning: the range saturates more than [`WARN_CLIPPED_SHARE`] of the values
/// where min-max saturates none, or the tensor's SQNR under it is more than [`WARN_SQNR_DROP_DB`]
/// below min-max's. `None` otherwise (and for min-max itself, an empty histogram or a range the
/// scheme cannot use).
pub fn assess(hist: &Histogram, method: CalibMethod, range: (f32, f32), scheme: Scheme) -> Option<RangeAssessment> {
    if method == CalibMethod::MinMax {
        return None;
    }
    let minmax = hist.seen()?;
    let (qmin, qmax) = scheme.qtype.range();
    let quality = |(lo, hi): (f32, f32)| {
        let p = params_for_range(lo, hi, scheme).ok()?;
        hist.quality(p.scale, p.zero_point, qmin, qmax)
    };
    let (q, m) = (quality(range)?, quality(minmax)?);
    let clips = q.clipped > WARN_CLIPPED_SHARE && m.clipped == 0.0;
    let worse = q.sqnr_db < m.sqnr_db - WARN_SQNR_DROP_DB;
    (clips || worse).then_some(RangeAssessment {
        method,
        range,
        clipped: q.clipped,
        sqnr_db: q.sqnr_db,
        minmax,
        minmax_clipped: m.clipped,
        minmax_sqnr_db: m.sqnr_db,
    })
}

/// A tensor whose calibrated range quantizes it far worse than min-max would ([`assess`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CalibWarning {
    /// The producing node, its op and the result port.
    pub node: String,
    pub op: &'static str,
    pub port: usize,
    pub assessment: RangeAssessment,
}

impl fmt::Display for CalibWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "calibration of `{}` ({}) result {}: {}", self.node, self.op, self.port, self.assessment)
    }
}

impl Calibration {
    /// The range of `v` in `g`, looked up by its producer's name.
    pub fn range(&self, g: &Graph, v: Value) -> Option<(f32, f32)> {
        self.ranges.get(&(g.node(v.node).name.clone(), v.port)).copied()
    }
}

/// Why calibration failed; every error names the node (or the batch). Messages include their
/// cause, kept as a field rather than as `source()`, so that `{:#}` prints it once.
#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    #[error("calibration: node `{node}` ({op}) result {port}: {error}")]
    Observe { node: String, op: &'static str, port: usize, error: ObserveError },
    #[error("calibration: running batch {batch}: {error}")]
    Eval { batch: usize, error: EvalError },
    /// The source failed to read a batch's samples; the cause is the source (a data error the
    /// caller may want to recognize).
    #[error("calibration: reading batch {batch}")]
    Batch {
        batch: usize,
        #[source]
        error: BatchError,
    },
    #[error("calibration: node `{node}` ({op}): {msg}")]
    Node { node: String, op: &'static str, msg: String },
    #[error("calibration: no calibration samples (the calibration set is empty)")]
    Empty,
}

/// Runs `g` on every batch (`total` of them, for progress) and returns each target's range.
/// `progress(done, total)` is called after each batch. NaN or infinity in any observed tensor
/// (the calibration inputs or an activation) is an error naming the node.
pub fn calibrate<B: CalibBatch>(
    g: &Graph,
    eval: &dyn Evaluator,
    batches: &mut dyn Iterator<Item = B>,
    total: usize,
    targets: &[Target],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Calibration, CalibError> {
    calibrate_with_means(g, eval, batches, total, targets, &[], progress)
}

/// [`calibrate`], also averaging in the same pass the layer inputs bias correction needs
/// (`stats`, [`super::bias_correction::input_stats`]), into [`Calibration::input_means`], so that
/// bias correction runs no pass of its own. An input that is also a target is observed once.
pub fn calibrate_with_means<B: CalibBatch>(
    g: &Graph,
    eval: &dyn Evaluator,
    batches: &mut dyn Iterator<Item = B>,
    total: usize,
    targets: &[Target],
    stats: &[InputStat],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Calibration, CalibError> {
    let node_err = |id: NodeId, msg: String| {
        let n = g.node(id);
        CalibError::Node { node: n.name.clone(), op: n.op.name(), msg }
    };
    let mut observers: Vec<Box<dyn Observer>> = Vec::with_capacity(targets.len());
    let mut keys: BTreeMap<(String, usize), usize> = BTreeMap::new();
    for (i, t) in targets.iter().enumerate() {
        if !g.contains_value(t.value) {
            return Err(CalibError::Node { node: format!("{:?}", t.value), op: "?", msg: "not in the graph".into() });
        }
        let key = (g.node(t.value.node).name.clone(), t.value.port);
        if keys.insert(key, i).is_some() {
            return Err(node_err(t.value.node, "two calibrated values share this node name".into()));
        }
        observers.push(t.observer.build().map_err(|e| node_err(t.value.node, e.to_string()))?);
    }
    // Observers without a histogram (min-max, EMA) get one beside them for the warnings: a fixed
    // number of bins each, so memory stays bounded.
    // Min-max needs none: [`assess`] never warns about it (its range is the reference).
    let mut shadows: Vec<Option<Histogram>> = targets
        .iter()
        .zip(&observers)
        .map(|(t, o)| {
            (o.histogram().is_none() && t.observer.method != CalibMethod::MinMax)
                .then(|| Histogram::new(t.observer.bins, t.observer.symmetric))
        })
        .collect();
    let mut values: Vec<Value> = targets.iter().map(|t| t.value).collect();
    // the statistics each observed value feeds (an input that is a target is watched once)
    let mut feeds: Vec<Vec<usize>> = vec![vec![]; values.len()];
    for (s, st) in stats.iter().enumerate() {
        match values.iter().position(|&v| v == st.input) {
            Some(i) => feeds[i].push(s),
            None => {
                values.push(st.input);
                feeds.push(vec![s]);
            }
        }
    }
    let mut means: Vec<InputMeans> = vec![InputMeans::default(); stats.len()];
    let mut observe = |i: usize, t: Watched<'_>, batch: usize| -> Result<(), CalibError> {
        for &s in &feeds[i] {
            means[s].observe(&stats[s].reduce, t).map_err(|msg| {
                let n = g.node(values[i].node);
                CalibError::Node {
                    node: n.name.clone(),
                    op: n.op.name(),
                    msg: format!("as the input of `{}` (bias correction): {msg}", stats[s].layer),
                }
            })?;
        }
        if i >= targets.len() {
            return Ok(());
        }
        // ranges and histograms do not depend on the order of the elements
        let Some(x) = t.unordered_f32() else { return Ok(()) };
        let err = |error| {
            let n = g.node(values[i].node);
            CalibError::Observe { node: n.name.clone(), op: n.op.name(), port: values[i].port, error }
        };
        observers[i].observe_in_batch(x, batch).map_err(err)?;
        if let Some(h) = &mut shadows[i] {
            h.observe(x).map_err(err)?;
        }
        Ok(())
    };
    let (batches, samples) = observe_values(g, eval, batches, total, &values, progress, &mut observe)?;
    for (i, o) in observers.iter_mut().enumerate() {
        o.finish().map_err(|error| {
            let n = g.node(values[i].node);
            CalibError::Observe { node: n.name.clone(), op: n.op.name(), port: values[i].port, error }
        })?;
    }
    let input_means = stats.iter().zip(&means).map(|(st, m)| (st.layer.clone(), m.means())).collect();
    let mut cal = Calibration { batches, samples, input_means, ..Calibration::default() };
    if cal.batches == 0 || cal.samples == 0 {
        return Err(CalibError::Empty);
    }
    for (i, t) in targets.iter().enumerate() {
        let n = g.node(t.value.node);
        match observers[i].range() {
            Some(r) => {
                cal.ranges.insert((n.name.clone(), t.value.port), r);
                let hist = observers[i].histogram().or(shadows[i].as_ref());
                if let Some(a) = hist.and_then(|h| assess(h, t.observer.method, r, t.scheme)) {
                    cal.warnings.push(CalibWarning {
                        node: n.name.clone(),
                        op: n.op.name(),
                        port: t.value.port,
                        assessment: a,
                    });
                }
            }
            None if matches!(n.op, Op::Const(_)) => {}
            None => return Err(node_err(t.value.node, "no value was observed (empty tensors on every batch)".into())),
        }
    }
    Ok(cal)
}

/// Per-channel absolute maxima by (producing node's name, result port).
pub type ChannelMaxima = BTreeMap<(String, usize), Vec<f32>>;

/// Runs `g` on every batch and returns, for each of `values`, the largest `|x|` of each channel
/// along the last axis (all other axes and every batch reduced). The channel count is the last
/// dimension, which must be the same on every batch. NaN or infinity is an error naming the node.
pub fn channel_absmax<B: CalibBatch>(
    g: &Graph,
    eval: &dyn Evaluator,
    batches: &mut dyn Iterator<Item = B>,
    total: usize,
    values: &[Value],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ChannelMaxima, CalibError> {
    let mut maxima: Vec<Option<Vec<f32>>> = vec![None; values.len()];
    let mut observe = |i: usize, t: Watched<'_>, b: usize| -> Result<(), CalibError> {
        let n = g.node(values[i].node);
        let fail = |msg: String| CalibError::Node { node: n.name.clone(), op: n.op.name(), msg };
        let t = t.to_tensor().ok_or_else(|| fail("an observed value does not fit its shape".into()))?;
        let x = t.as_f32().ok_or_else(|| fail("channel maxima need an f32 value".into()))?;
        let c = t.shape().last().copied().unwrap_or(1).max(1);
        let m = maxima[i].get_or_insert_with(|| vec![0.0; c]);
        if m.len() != c {
            return Err(fail(format!("{c} channels on batch {b}, {} before", m.len())));
        }
        for (k, &v) in x.iter().enumerate() {
            if !v.is_finite() {
                return Err(fail(format!("non-finite value {v} on batch {b}")));
            }
            let a = &mut m[k % c];
            *a = a.max(v.abs());
        }
        Ok(())
    };
    let (seen, _) = observe_values(g, eval, batches, total, values, progress, &mut observe)?;
    if seen == 0 {
        return Err(CalibError::Empty);
    }
    let mut out = ChannelMaxima::new();
    for (v, m) in values.iter().zip(maxima) {
        let n = g.node(v.node);
        let m = m.ok_or_else(|| CalibError::Node {
            node: n.name.clone(),
            op: n.op.name(),
            msg: "no value was observed".into(),
        })?;
        out.insert((n.name.clone(), v.port), m);
    }
    Ok(out)
}

/// Runs `g` on every batch and returns, for each `(value, axis)`, the mean of each channel along
/// `axis` (every other axis and every batch reduced, each element weighing the same), in f64 sums.
/// The channel count is the dimension at `axis`, which must be the same on every batch. NaN or
/// infinity is an error naming the node. Bias correction ([`super::bias_correction`]) reads the
/// mean output error of each layer this way.
pub fn channel_means<B: CalibBatch>(
    g: &Graph,
    eval: &dyn Evaluator,
    batches: &mut dyn Iterator<Item = B>,
    total: usize,
    values: &[(Value, usize)],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<BTreeMap<(String, usize), Vec<f64>>, CalibError> {
    let mut sums: Vec<Option<(Vec<f64>, u64)>> = vec![None; values.len()];
    let mut observe = |i: usize, t: Watched<'_>, b: usize| -> Result<(), CalibError> {
        let n = g.node(values[i].0.node);
        let fail = |msg: String| CalibError::Node { node: n.name.clone(), op: n.op.name(), msg };
        let t = t.to_tensor().ok_or_else(|| fail("an observed value does not fit its shape".into()))?;
        let x = t.as_f32().ok_or_else(|| fail("channel means need an f32 value".into()))?;
        let axis = values[i].1;
        let c = *t.shape().get(axis).ok_or_else(|| fail(format!("no axis {axis} in shape {:?}", t.shape())))?;
        // elements of one channel are contiguous runs of `inner`, `c` runs apart
        let inner: usize = t.shape()[axis + 1..].iter().product();
        let (s, count) = sums[i].get_or_insert_with(|| (vec![0.0; c], 0));
        if s.len() != c {
            return Err(fail(format!("{c} channels on batch {b}, {} before", s.len())));
        }
        for (k, &v) in x.iter().enumerate() {
            if !v.is_finite() {
                return Err(fail(format!("non-finite value {v} on batch {b}")));
            }
            s[(k / inner.max(1)) % c] += f64::from(v);
        }
        *count += (x.len() / c.max(1)) as u64;
        Ok(())
    };
    let plain: Vec<Value> = values.iter().map(|(v, _)| *v).collect();
    let (seen, _) = observe_values(g, eval, batches, total, &plain, progress, &mut observe)?;
    if seen == 0 {
        return Err(CalibError::Empty);
    }
    let mut out = BTreeMap::new();
    for ((v, _), s) in values.iter().zip(sums) {
        let n = g.node(v.node);
        let (s, count) = s.ok_or_else(|| CalibError::Node {
            node: n.name.clone(),
            op: n.op.name(),
            msg: "no value was observed".into(),
        })?;
        out.insert((n.name.clone(), v.port), s.iter().map(|x| x / count.max(1) as f64).collect());
    }
    Ok(out)
}

/// Runs `g` on every batch (`total` of them, for progress), handing each of `values` (by its
/// index) to `observe` as it is produced, graph inputs included; the first error stops the run.
/// `progress(done, total)` is called after each batch. Returns the batches and samples seen.
fn observe_values<B: CalibBatch>(
    g: &Graph,
    eval: &dyn Evaluator,
    batches: &mut dyn Iterator<Item = B>,
    total: usize,
    values: &[Value],
    progress: &mut dyn FnMut(usize, usize),
    observe: &mut dyn FnMut(usize, Watched<'_>, usize) -> Result<(), CalibError>,
) -> Result<(usize, usize), CalibError> {
    // graph inputs are observed straight from the batch; every other value through the
    // evaluator's watcher (compiled once for all batches where the engine compiles)
    let mut from_input: Vec<(usize, usize)> = Vec::new();
    let mut watched: Vec<usize> = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if !g.contains_value(*v) {
            return Err(CalibError::Node { node: format!("{v:?}"), op: "?", msg: "not in the graph".into() });
        }
        match g.inputs().iter().position(|&id| id == v.node) {
            Some(k) => from_input.push((i, k)),
            None => watched.push(i),
        }
    }
    let watch_values: Vec<Value> = watched.iter().map(|&i| values[i]).collect();
    let watcher = eval.watch(g, &watch_values).map_err(|error| CalibError::Eval { batch: 0, error })?;
    let (mut seen, mut samples) = (0usize, 0usize);
    for (b, batch) in batches.enumerate() {
        let n = batch.samples();
        let step = run_samples(g, &batch);
        let runs: Vec<(usize, usize)> = match (n, step) {
            (Some(n), Some(step)) if n > 0 => (0..n).step_by(step).map(|s| (s, (s + step).min(n))).collect(),
            _ => vec![(0, n.unwrap_or(0))],
        };
        for (start, end) in runs {
            let inputs = batch.rows(start, end).map_err(|error| CalibError::Batch { batch: b, error })?;
            let mut failure: Option<CalibError> = None;
            for &(i, k) in &from_input {
                if let Some(t) = inputs.get(k) {
                    observe(i, Watched::Tensor(t), b)?;
                }
            }
            watcher
                .run(&inputs, &mut |w, t| {
                    if failure.is_none() {
                        failure = observe(watched[w], t, b).err();
                    }
                })
                .map_err(|error| CalibError::Eval { batch: b, error })?;
            if let Some(e) = failure {
                return Err(e);
            }
        }
        seen += 1;
        samples += n.unwrap_or(1);
        progress(b + 1, total);
    }
    Ok((seen, samples))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::scheme::QType;
    use qforge_ir::{DType, Shape, TensorType, UnaryOp};

    /// Batches of 1000 values: N(0, 1) (xorshift64* and Box-Muller), one value in 2000 at +-100.
    fn outlier_batches(batches: usize) -> Vec<Vec<Tensor>> {
        let mut s = 7u64;
        let mut uniform = move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..batches)
            .map(|_| {
                let v: Vec<f32> = (0..1000)
                    .map(|_| {
                        let (u, w) = (uniform(), uniform());
                        let x = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * w).cos();
                        (if uniform() < 0.0005 { 100f64.copysign(x) } else { x }) as f32
                    })
                    .collect();
                vec![Tensor::from_f32(vec![1, 1000], v)]
            })
            .collect()
    }

    /// Entropy calibration of a tensor whose energy is in a few outliers clips them: a warning
    /// naming the tensor, with both SQNRs and the clipped share. Min-max on the same data does
    /// not warn.
    #[test]
    fn outliers_clipped_by_entropy_are_warned_about() {
        let mut g = Graph::new("t");
        let x =
            g.add_input("x", TensorType::new(DType::F32, Shape(vec![qforge_ir::Dim::Sym("N".into()), 1000.into()])));
        let y = g.add_node(Op::Unary(UnaryOp::Neg), vec![Some(x)], None, "/neg/Neg").unwrap();
        g.add_output("y", y);
        let scheme = Scheme::asymmetric(QType::U8);
        let targets = [
            Target { value: x, observer: ObserverConfig::new(CalibMethod::Entropy), scheme },
            Target { value: y, observer: ObserverConfig::new(CalibMethod::MinMax), scheme },
        ];
        let batches = outlier_batches(100);
        let total = batches.len();
        let cal =
            calibrate(&g, &Interpreter::default(), &mut batches.into_iter(), total, &targets, &mut |_, _| {}).unwrap();
        assert_eq!(cal.warnings.len(), 1, "{:#?}", cal.warnings);
        let w = &cal.warnings[0];
        assert_eq!((w.node.as_str(), w.op, w.port), ("x", "input", 0));
        let a = &w.assessment;
        assert_eq!(a.method, CalibMethod::Entropy);
        assert!(a.clipped > 0.0 && a.minmax_clipped == 0.0, "{a:?}");
        assert!(a.sqnr_db < a.minmax_sqnr_db - WARN_SQNR_DROP_DB, "{a:?}");
        assert_eq!(a.minmax, (-100.0, 100.0));
        let text = w.to_string();
        println!("{text}");
        assert!(text.starts_with("calibration of `x` (input) result 0: entropy range ["), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }
}
