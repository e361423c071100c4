//! Bias correction (Nagel et al., 2019, "Data-Free Quantization Through Weight Equalization and
//! Bias Correction", arXiv:1906.04721, section 4.2; Qualcomm AIMET and Intel Neural Compressor
//! implement it): the systematic error that rounding a layer's weights puts on its output is
//! measured on the calibration set and subtracted from the layer's bias.
//!
//! # The law
//! A linear layer `y = W x + b` whose weight is quantized computes `y' = W' x + b` with
//! `W' = W + ΔW` (the dequantized weight), so its output moves by `ΔW x`, whose expectation over
//! the data is `E[ΔW x] = ΔW E[x]`: a per-output-channel offset, the same for every input, that
//! the per-channel rounding does not average away (a depthwise convolution has 9 taps per
//! channel, so one unlucky rounding shifts the whole channel). Replacing `b` by
//! `b - E[ΔW x]` makes the quantized layer's output unbiased again:
//! `E[W' x + b - E[ΔW x]] = E[W x + b]`.
//!
//! `E[ΔW x]` is taken per weight element, not from per-channel input means: for a
//! fully-connected layer it is `ΔW E[x]` with `E[x]` the mean of each input index; for a
//! convolution, the sum over the kernel window of `ΔW` times the mean of the input value each
//! kernel position reads ([`InputReduce::Taps`]), where a position reading a padded border reads
//! zeros (so each tap weighs by the share of output positions where it reads the image), with the
//! op's strides and dilations. Those means are observed during calibration
//! ([`super::calibrate::calibrate_with_means`], the inputs [`input_stats`] names), so bias
//! correction runs no pass of its own ([`corrections_from_means`]): the sum is exact in f64 where
//! running the layer with `ΔW` as its weight on the calibration set and averaging its output
//! ([`error_graph`], [`super::calibrate::channel_means`], which the tests keep as the reference)
//! adds the engine's f32 rounding of each output.
//!
//! Only the weight's rounding is corrected: the activations are the float graph's, so the
//! correction of one layer does not depend on the others. `ΔW` is the weight static
//! quantization will actually store: [`bias_sites`] runs [`QuantizeStatic`] on a copy of the graph
//! and reads each dequantized weight back (per-channel or per-tensor scales, 4-bit groups, the
//! scale raised for the i32 bias, all as they will be). The correction changes the bias, which
//! that raise depends on; the change is of the order of a weight step times the input, far below
//! what moves it.
//!
//! # Where it applies
//! A [`BiasSite`] is a conv, gemm or matmul that static quantization quantizes with a constant f32
//! weight at slot 1, whose bias can absorb a per-output-channel constant:
//! * a conv: its bias (slot 2, a constant f32 vector, or none: one is added);
//! * a gemm with `beta != 0`: its `C` (a constant f32 vector of the output channels, or none),
//!   which the gemm scales by `beta`, so the correction is divided by it;
//! * a matmul with a `[K, N]` weight whose only reader is an add of a constant f32 vector of `N`
//!   elements (the bias of a linear layer as exporters write it for inputs of rank 3 and up),
//!   whose result is not a graph output: that constant.
//!
//! The pass ([`BiasCorrection`]) applies the corrections, by layer name; applied twice, it
//! corrects twice (its `ΔW` is the same on the corrected graph, and the offset is subtracted once
//! more), so the pipeline runs it once, after calibration and before quantization.

use super::calibrate::Calibration;
use super::policy::QConfig;
use super::static_quant::{activation_plan, QuantizeStatic};
use crate::evaluator::Watched;
use crate::pass::{Pass, PassContext, PassError, PassReport};
use qforge_ir::multiversion;
use qforge_ir::{numerics, BinaryOp, ConvAttrs, DType, Graph, NodeId, Op, QuantParams, Tensor, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Where a layer's correction goes.
#[derive(Clone, Debug, PartialEq)]
pub enum BiasSlot {
    /// The layer's own bias input (slot 2 of a conv or gemm), present or to be added; the
    /// correction is divided by `scale` (a gemm's `beta`; 1 for a conv).
    Own { scale: f32 },
    /// The constant vector input `slot` of the add that reads the matmul's result.
    Add { add: NodeId, slot: usize },
}

/// A layer whose output offset bias correction measures (see the module documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct BiasSite {
    pub node: NodeId,
    /// Output channels, and the axis of the layer's result they are on.
    pub channels: usize,
    pub axis: usize,
    pub bias: BiasSlot,
    /// The weight's rounding error: the dequantized weight static quantization stores, less the
    /// float weight (the weight's shape).
    pub delta: Tensor,
}

/// The constant f32 tensor at `slot` of `node`, with its value.
fn const_f32(g: &Graph, node: NodeId, slot: usize) -> Option<(Value, &Tensor)> {
    let v = g.node(node).inputs().get(slot).copied().flatten()?;
    let Op::Const(t) = &g.node(v.node).op else { return None };
    (t.dtype() == DType::F32 && g.value_type(v).quant.is_none()).then_some((v, t.as_ref()))
}

/// Whether input `slot` of `node` is absent or a constant f32 vector of `n` elements (every
/// dimension 1 but the last, when `any_rank`; rank 1 otherwise).
fn vector_or_none(g: &Graph, node: NodeId, slot: usize, n: usize, any_rank: bool) -> bool {
    match g.node(node).inputs().get(slot).copied().flatten() {
        None => true,
        Some(_) => const_f32(g, node, slot).is_some_and(|(_, t)| {
            let s = t.shape();
            s.last() == Some(&n) && (s.len() == 1 || any_rank && s[..s.len() - 1].iter().all(|&d| d == 1))
        }),
    }
}

/// Where the correction of `id` (a conv, gemm or matmul with its weight at slot 1) goes, with its
/// output channels and their axis; `None` when it has no place for one.
pub fn bias_slot(g: &Graph, id: NodeId) -> Option<(BiasSlot, usize, usize)> {
    let node = g.node(id);
    let (_, w) = const_f32(g, id, 1)?;
    let out = node.outputs.first()?;
    let rank = out.rank();
    match node.op {
        Op::Conv(_) => {
            let c = *w.shape().first()?;
            (rank >= 3 && vector_or_none(g, id, 2, c, false)).then_some((BiasSlot::Own { scale: 1.0 }, c, 1))
        }
        Op::Gemm { beta, trans_b, .. } => {
            if w.rank() != 2 || beta == 0.0 || !beta.is_finite() || rank != 2 {
                return None;
            }
            let n = if trans_b { w.shape()[0] } else { w.shape()[1] };
            vector_or_none(g, id, 2, n, false).then_some((BiasSlot::Own { scale: beta }, n, 1))
        }
        Op::MatMul => {
            if w.rank() != 2 || rank < 2 {
                return None;
            }
            let n = w.shape()[1];
            let v = Value::new(id, 0);
            let users = g.value_users(v);
            let [(add, _)] = users.as_slice() else { return None };
            if g.is_output(v) || g.node(*add).op != Op::Binary(BinaryOp::Add) {
                return None;
            }
            let other = g.node(*add).inputs().iter().position(|&i| i.is_some_and(|i| i != v))?;
            let ok = const_f32(g, *add, other).is_some() && vector_or_none(g, *add, other, n, true);
            ok.then_some((BiasSlot::Add { add: *add, slot: other }, n, rank - 1))
        }
        _ => None,
    }
}

fn failed(msg: String) -> PassError {
    PassError::Failed { pass: "bias-correction".into(), msg }
}

/// The weight `codes` stand for under per-tensor or per-axis `params`: `(q - zero_point) as f32 *
/// scale` ([`numerics::dequantize`], what the interpreter's dequantize computes), a channel's run
/// at a time; `None` for per-group parameters or codes of a shape the parameters do not fit.
fn dequantized(codes: &Tensor, params: &QuantParams) -> Option<Vec<f32>> {
    let q = codes.to_f64_vec();
    let shape = codes.shape();
    let (channels, inner) = match params {
        QuantParams::PerTensor { .. } => (1, q.len().max(1)),
        QuantParams::PerAxis { axis, .. } => {
            let c = *shape.get(*axis)?;
            (c.max(1), shape[axis + 1..].iter().product::<usize>().max(1))
        }
        QuantParams::PerGroup { .. } => return None,
    };
    if params.len() != channels {
        return None;
    }
    let mut out = Vec::with_capacity(q.len());
    for (k, run) in q.chunks(inner).enumerate() {
        let c = k % channels;
        let (scale, zero_point) = (params.scale(c), params.zero_point(c));
        out.extend(run.iter().map(|&v| numerics::dequantize(v as i64, scale, zero_point)));
    }
    Some(out)
}

/// Every layer static quantization quantizes under `cfg` (calibrated by `cal`) whose bias can
/// take a correction, with its weight's rounding error: static quantization is run on a copy of
/// `g` and each dequantized weight read back (see the module documentation). Layers whose weight
/// rounds to itself are left out.
pub fn bias_sites(g: &Graph, cfg: &QConfig, cal: &Calibration, cx: &PassContext) -> Result<Vec<BiasSite>, PassError> {
    let ap = activation_plan(g, cfg).map_err(|error| PassError::Ir { pass: "bias-correction".into(), error })?;
    let candidates: Vec<(NodeId, BiasSlot, usize, usize)> = ap
        .ops
        .iter()
        .filter(|(_, w, _)| w.is_some_and(|w| w.slot == 1))
        .filter_map(|(id, _, _)| bias_slot(g, *id).map(|(b, c, a)| (*id, b, c, a)))
        .collect();
    if candidates.is_empty() {
        return Ok(vec![]);
    }
    let mut q = g.clone();
    QuantizeStatic { config: cfg.clone(), calibration: cal.clone() }.run(&mut q, cx)?;
    let by_name: HashMap<&str, NodeId> = q.node_ids().map(|id| (q.node(id).name.as_str(), id)).collect();
    let mut sites = vec![];
    for (id, bias, channels, axis) in candidates {
        let name = &g.node(id).name;
        let Some(&qid) = by_name.get(name.as_str()) else { continue };
        let Some(dq) = q.node(qid).inputs().get(1).copied().flatten() else { continue };
        if q.node(dq.node).op != Op::Dequantize {
            continue;
        }
        let Some(c) = q.node(dq.node).inputs().first().copied().flatten() else { continue };
        let Op::Const(codes) = &q.node(c.node).op else { continue };
        let deq = match q.value_type(c).quant.as_ref().and_then(|p| dequantized(codes, p)) {
            Some(v) => v,
            None => qforge_ir::interp::eval_op(
                &Op::Dequantize,
                &[Some(q.value_type(c))],
                std::slice::from_ref(q.value_type(dq)),
                &[Some(codes.as_ref())],
            )
            .map_err(|e| failed(format!("node `{name}`: dequantizing its weight: {e}")))?
            .first()
            .and_then(|t| t.as_f32().map(<[f32]>::to_vec))
            .unwrap_or_default(),
        };
        let (_, w) = const_f32(g, id, 1).ok_or_else(|| failed(format!("node `{name}`: no constant weight")))?;
        let (wq, Some(wf)) = (&deq, w.as_f32()) else { continue };
        if wq.len() != wf.len() {
            return Err(failed(format!(
                "node `{name}`: the dequantized weight has {} values for {}",
                wq.len(),
                wf.len()
            )));
        }
        let delta: Vec<f32> = wq.iter().zip(wf).map(|(a, b)| a - b).collect();
        if delta.iter().all(|&d| d == 0.0) {
            continue;
        }
        sites.push(BiasSite { node: id, channels, axis, bias, delta: Tensor::from_f32(w.shape().to_vec(), delta) });
    }
    Ok(sites)
}

/// A copy of `g` with, for each site, the layer's op run on the same input with the weight's
/// rounding error as its weight and no bias (`op(x, ΔW)`: `ΔW x` for each output) as one more
/// graph output, and the values to average per channel: that result with its channel axis, in
/// the order of `sites`.
pub fn error_graph(g: &Graph, sites: &[BiasSite]) -> Result<(Graph, Vec<(Value, usize)>), PassError> {
    let mut e = g.clone();
    let mut watched = vec![];
    for s in sites {
        let node = g.node(s.node);
        let x = node.inputs().first().copied().flatten();
        let dw = e.add_const(format!("{}_weight_error", node.name), s.delta.clone());
        let v = e
            .add_node(node.op.clone(), vec![x, Some(dw)], None, format!("{}_output_error", node.name))
            .map_err(|error| PassError::Ir { pass: "bias-correction".into(), error })?;
        // an output, so that every engine computes it (an engine may skip what no output reads)
        e.add_output(format!("{}_output_error", node.name), v);
        watched.push((v, s.axis));
    }
    Ok((e, watched))
}

/// What bias correction averages of a layer's input during calibration (see [`input_stats`]).
#[derive(Clone, Debug, PartialEq)]
pub enum InputReduce {
    /// A convolution: the mean, per input channel and kernel position, of the input value that
    /// kernel position reads (zero where it reads the padding), over every sample and output
    /// position: `E[x]` as the layer sees it, one value per weight element of an output channel
    /// (times the groups). The convolution's attributes give the windows.
    Taps(ConvAttrs),
    /// A matrix product: the mean of each index along `axis` (the reduction axis of the layer's
    /// input) over every other axis.
    Axis(usize),
}

/// A layer whose input's means bias correction needs, observed in the calibration pass
/// ([`super::calibrate::calibrate_with_means`]) so that no second pass is run: `E[ΔW x] = ΔW E[x]`
/// with `E[x]` taken per weight element ([`InputReduce`]).
#[derive(Clone, Debug, PartialEq)]
pub struct InputStat {
    /// The layer's name (what the means are keyed by).
    pub layer: String,
    /// The layer's input (slot 0).
    pub input: Value,
    pub reduce: InputReduce,
}

/// Every layer of `g` static quantization may quantize under `cfg` with a constant f32 weight and
/// a place for a bias correction ([`bias_slot`]): the layers [`bias_sites`] can return (the float
/// fallback, which runs later, only removes some), with what to average of each one's input.
pub fn input_stats(g: &Graph, cfg: &QConfig) -> Result<Vec<InputStat>, PassError> {
    let ap = activation_plan(g, cfg).map_err(|error| PassError::Ir { pass: "bias-correction".into(), error })?;
    let mut out = vec![];
    for (id, w, _) in &ap.ops {
        if !w.is_some_and(|w| w.slot == 1) || bias_slot(g, *id).is_none() {
            continue;
        }
        let node = g.node(*id);
        let Some(x) = node.inputs().first().copied().flatten() else { continue };
        // (a layer whose input is not f32 has its error measured instead)
        if g.value_type(x).dtype != DType::F32 {
            continue;
        }
        let rank = g.value_type(x).rank();
        let reduce = match &node.op {
            Op::Conv(a) => InputReduce::Taps(a.clone()),
            // A is [M, K], or [K, M] transposed
            Op::Gemm { trans_a, .. } => InputReduce::Axis(if *trans_a { 0 } else { 1 }),
            Op::MatMul if rank >= 1 => InputReduce::Axis(rank - 1),
            _ => continue,
        };
        out.push(InputStat { layer: node.name.clone(), input: x, reduce });
    }
    Ok(out)
}

/// Running sums of an [`InputStat`] over the calibration batches, in f64 (calibration's; its
/// errors become the calibration's, naming the node).
#[derive(Clone, Debug, Default)]
pub(crate) struct InputMeans {
    sums: Vec<f64>,
    count: u64,
}

/// For each kernel position `t` along one spatial dimension of `size`, the first and last input
/// index it reads over the `out` output positions (`o * stride + t * dilation - pad_begin`, those
/// inside; `stride` apart), `None` when it reads only padding.
fn tap_spans(
    size: usize,
    out: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
) -> Vec<Option<(usize, usize)>> {
    (0..k)
        .map(|t| {
            let mut read = (0..out).filter_map(|o| (o * stride + t * dilation).checked_sub(pad).filter(|&i| i < size));
            let first = read.next()?;
            Some((first, read.next_back().unwrap_or(first)))
        })
        .collect()
}

impl InputMeans {
    /// Adds one observed value of the input (f32), in logical order or, for a 2-D convolution's
    /// input, channels-last as the JIT computes it (anything else stored channels-last is
    /// reordered first).
    pub(crate) fn observe(&mut self, reduce: &InputReduce, x: Watched<'_>) -> Result<(), String> {
        match (x, reduce) {
            (Watched::ChannelsLast { shape, data }, InputReduce::Taps(a)) if a.kernel.len() == 2 => {
                self.add(conv_tap_sums_nhwc(a, shape, data)?)?;
            }
            _ => {
                let x = x.to_tensor().ok_or("an observed value does not fit its shape")?;
                let v = x.as_f32().ok_or("the input of a bias-corrected layer must be f32")?;
                let shape = x.shape();
                match reduce {
                    // a linear layer's input: added into the running sums in place (no batch
                    // vector)
                    InputReduce::Axis(axis) => {
                        let c = *shape.get(*axis).ok_or_else(|| format!("no axis {axis} in shape {shape:?}"))?;
                        let inner: usize = shape[axis + 1..].iter().product();
                        self.expect_len(c)?;
                        for (k, run) in v.chunks(inner.max(1)).enumerate() {
                            self.sums[k % c.max(1)] += run.iter().map(|&a| f64::from(a)).sum::<f64>();
                        }
                        self.count += (v.len() / c.max(1)) as u64;
                    }
                    InputReduce::Taps(a) => self.add(conv_tap_sums(a, shape, v)?)?,
                }
            }
        }
        // a NaN or infinity the layer reads makes a sum NaN or infinite, and the running sums
        // keep it
        if self.sums.iter().any(|s| !s.is_finite()) {
            return Err("NaN or infinity in a bias-corrected layer's input".to_string());
        }
        Ok(())
    }

    /// Adds one batch's sums and the count they are sums of.
    fn add(&mut self, (sums, count): (Vec<f64>, u64)) -> Result<(), String> {
        self.expect_len(sums.len())?;
        self.sums.iter_mut().zip(&sums).for_each(|(a, b)| *a += b);
        self.count += count;
        Ok(())
    }

    /// Sizes the running sums for `n` statistics on the first batch; checks the count after.
    fn expect_len(&mut self, n: usize) -> Result<(), String> {
        if self.sums.is_empty() {
            self.sums = vec![0.0; n];
        }
        if self.sums.len() != n {
            return Err(format!("{n} input statistics on this batch, {} before", self.sums.len()));
        }
        Ok(())
    }

    /// The means (empty before any value was observed).
    pub(crate) fn means(&self) -> Vec<f64> {
        self.sums.iter().map(|s| s / self.count.max(1) as f64).collect()
    }
}

/// A convolution input's sums per (input channel, kernel position) over samples and output
/// positions, and the count each is a sum of (samples times output positions). The window
/// arithmetic is the convolution's (ONNX `Conv`: `out = (size + pads - dilation * (k - 1) - 1) /
/// stride + 1`). One spatial dimension is reduced at a time, from the last: along it, the indices
/// a kernel position reads are `stride` apart, so their sum is the difference of two entries of
/// the running sums taken `stride` apart (`p[i] = x[i] + p[i - stride]`), and a plane costs about
/// one addition per element per dimension whatever the kernel.
fn conv_tap_sums(a: &ConvAttrs, shape: &[usize], v: &[f32]) -> Result<(Vec<f64>, u64), String> {
    let n = a.kernel.len();
    if n == 0 || shape.len() != n + 2 || a.strides.len() != n || a.dilations.len() != n || a.pads.len() != 2 * n {
        return Err(format!("a convolution of {n} spatial dims over an input of shape {shape:?}"));
    }
    let spatial = &shape[2..];
    let mut outs = Vec::with_capacity(n);
    let mut spans = Vec::with_capacity(n);
    for (d, &size) in spatial.iter().enumerate() {
        let span = a.dilations[d] * (a.kernel[d].max(1) - 1) + 1;
        let padded = size + a.pads[d] + a.pads[n + d];
        let out = if padded < span { 0 } else { (padded - span) / a.strides[d].max(1) + 1 };
        outs.push(out);
        spans.push(tap_spans(size, out, a.kernel[d], a.strides[d].max(1), a.dilations[d], a.pads[d]));
    }
    let plane: usize = spatial.iter().product();
    let kk: usize = a.kernel.iter().product();
    let mut sums = vec![0f64; shape[1] * kk];
    let (mut cur, mut next, mut running): (Vec<f64>, Vec<f64>, Vec<f64>) = (vec![], vec![], vec![]);
    for (p, x) in v.chunks_exact(plane.max(1)).enumerate().take(shape[0] * shape[1]) {
        // the last dimension straight from the f32 rows: [pre, size] -> [pre, k]
        let (size, k, step) = (spatial[n - 1], a.kernel[n - 1], a.strides[n - 1].max(1));
        cur.clear();
        for row in x.chunks_exact(size.max(1)) {
            if step == 1 {
                // a stride-1 kernel position reads a contiguous run: the row's sum less the
                // elements before and after it
                let total = lane_sum(row);
                for span in &spans[n - 1] {
                    cur.push(match *span {
                        Some((first, last)) => {
                            let outside = row[..first].iter().chain(&row[last + 1..]);
                            total - outside.map(|&e| f64::from(e)).sum::<f64>()
                        }
                        None => 0.0,
                    });
                }
            } else {
                running.clear();
                running.extend(row.iter().map(|&e| f64::from(e)));
                for i in step..running.len() {
                    running[i] += running[i - step];
                }
                for span in &spans[n - 1] {
                    cur.push(match *span {
                        Some((first, last)) => running[last] - first.checked_sub(step).map_or(0.0, |b| running[b]),
                        None => 0.0,
                    });
                }
            }
        }
        // the other dimensions: [pre, size, post] -> [pre, k, post] (post: the kernel positions
        // already reduced)
        let mut post = k;
        for d in (0..n - 1).rev() {
            let (size, k, step) = (spatial[d], a.kernel[d], a.strides[d].max(1));
            let pre: usize = spatial[..d].iter().product();
            next.clear();
            next.resize(pre * k * post, 0.0);
            for q in 0..pre {
                let block = &cur[q * size * post..(q + 1) * size * post];
                running.clear();
                running.extend_from_slice(block);
                for i in step..size {
                    let (done, rest) = running.split_at_mut(i * post);
                    let back = &done[(i - step) * post..(i - step + 1) * post];
                    rest[..post].iter_mut().zip(back).for_each(|(r, &b)| *r += b);
                }
                for (t, span) in spans[d].iter().enumerate() {
                    let Some((first, last)) = *span else { continue };
                    let dst = &mut next[(q * k + t) * post..(q * k + t + 1) * post];
                    let end = &running[last * post..(last + 1) * post];
                    match first.checked_sub(step) {
                        Some(before) => {
                            let start = &running[before * post..(before + 1) * post];
                            dst.iter_mut().zip(end.iter().zip(start)).for_each(|(o, (&e, &s))| *o = e - s);
                        }
                        None => dst.copy_from_slice(end),
                    }
                }
            }
            std::mem::swap(&mut cur, &mut next);
            post *= k;
        }
        let c = p % shape[1];
        sums[c * kk..(c + 1) * kk].iter_mut().zip(&cur).for_each(|(s, &t)| *s += t);
    }
    let positions: usize = outs.iter().product();
    Ok((sums, (shape[0] * positions) as u64))
}

multiversion! {
    baseline = conv_tap_sums_nhwc_baseline;
    /// [`conv_tap_sums`] for a 2-D convolution's input stored channels-last (`v` is `[n, h, w, c]`
    /// for the logical `shape` `[n, c, h, w]`), with the same sums in the same index order
    /// (`channel * kh * kw + tap`). Each input row is reduced along the width first, one f64 sum per
    /// (width tap, channel) (for stride 1 the row's sum less the few elements outside the tap's
    /// span), then added into every height tap that reads that row: about one addition per element
    /// plus `kh * kw * c` per row, with the channel innermost so the loops run over contiguous
    /// memory.
    fn conv_tap_sums_nhwc(a: &ConvAttrs, shape: &[usize], v: &[f32]) -> Result<(Vec<f64>, u64), String> {
        let (strides, dil, pads) = (&a.strides, &a.dilations, &a.pads);
        if a.kernel.len() != 2 || shape.len() != 4 || strides.len() != 2 || dil.len() != 2 || pads.len() != 4 {
            return Err(format!("a 2-D convolution over a channels-last input of shape {shape:?}"));
        }
        let [n, c, h, w] = [shape[0], shape[1], shape[2], shape[3]];
        if n.checked_mul(c).and_then(|x| x.checked_mul(h)).and_then(|x| x.checked_mul(w)) != Some(v.len()) {
            return Err(format!("{} values for shape {shape:?}", v.len()));
        }
        let out_size = |d: usize, size: usize| {
            let span = dil[d] * (a.kernel[d].max(1) - 1) + 1;
            let padded = size + pads[d] + pads[2 + d];
            if padded < span {
                0
            } else {
                (padded - span) / strides[d].max(1) + 1
            }
        };
        let (oh, ow) = (out_size(0, h), out_size(1, w));
        let (kh, kw) = (a.kernel[0], a.kernel[1]);
        let (sh, sw) = (strides[0].max(1), strides[1].max(1));
        let rows_of = tap_spans(h, oh, kh, sh, dil[0], pads[0]);
        let cols_of = tap_spans(w, ow, kw, sw, dil[1], pads[1]);
        // sums in [tap_h, tap_w, c] order while accumulating; reordered to [c, tap] at the end
        let mut acc = vec![0f64; kh * kw * c];
        let mut total = vec![0f64; c];
        let mut by_col = vec![0f64; kw * c];
        if c > 0 && w > 0 && h > 0 {
            for sample in v.chunks_exact(h * w * c) {
                for (ih, row) in sample.chunks_exact(w * c).enumerate() {
                    let taps_h: Vec<usize> = (0..kh)
                        .filter(|&t| matches!(rows_of[t], Some((f, l)) if ih >= f && ih <= l && (ih - f) % sh == 0))
                        .collect();
                    if taps_h.is_empty() {
                        continue;
                    }
                    by_col.fill(0.0);
                    if sw == 1 {
                        channel_sums(row, 0..w, &mut total);
                        for (t, span) in cols_of.iter().enumerate() {
                            let Some((first, last)) = *span else { continue };
                            let dst = &mut by_col[t * c..(t + 1) * c];
                            dst.copy_from_slice(&total);
                            for iw in (0..first).chain(last + 1..w) {
                                dst.iter_mut().zip(&row[iw * c..(iw + 1) * c]).for_each(|(d, &x)| *d -= f64::from(x));
                            }
                        }
                    } else {
                        for (t, span) in cols_of.iter().enumerate() {
                            let Some((first, last)) = *span else { continue };
                            channel_sums(row, (first..=last).step_by(sw), &mut by_col[t * c..(t + 1) * c]);
                        }
                    }
                    for &th in &taps_h {
                        let dst = &mut acc[th * kw * c..(th + 1) * kw * c];
                        dst.iter_mut().zip(&by_col).for_each(|(d, &x)| *d += x);
                    }
                }
            }
        }
        let kk = kh * kw;
        let mut sums = vec![0f64; c * kk];
        for (tap, block) in acc.chunks_exact(c.max(1)).enumerate() {
            for (ch, &x) in block.iter().enumerate() {
                sums[ch * kk + tap] = x;
            }
        }
        Ok((sums, (n * oh * ow) as u64))
    }
}

/// `out[ch]`: the sum over the given pixels of a channels-last `row` (`out.len()` channels per
/// pixel) of channel `ch`, in f64, each sum from 0 in the pixels' order. The channels go in
/// blocks of 32, then of 8, whose sums stay in registers while the pixels are walked (four
/// AVX-512 vectors, then one), rather than a load, add and store of every sum for every pixel;
/// the additions are the same, in the same order.
#[inline(always)]
fn channel_sums(row: &[f32], pixels: impl Iterator<Item = usize> + Clone, out: &mut [f64]) {
    let c = out.len();
    let mut c0 = channel_blocks::<32>(row, pixels.clone(), out, 0);
    c0 = channel_blocks::<8>(row, pixels.clone(), out, c0);
    for (ch, o) in out.iter_mut().enumerate().skip(c0) {
        *o = pixels.clone().fold(0.0, |s, p| s + f64::from(row[p * c + ch]));
    }
}

/// [`channel_sums`] for the whole blocks of `B` channels from `c0`; returns where they end.
#[inline(always)]
fn channel_blocks<const B: usize>(
    row: &[f32],
    pixels: impl Iterator<Item = usize> + Clone,
    out: &mut [f64],
    c0: usize,
) -> usize {
    let c = out.len();
    let end = c0 + (c - c0) / B * B;
    for b in (c0..end).step_by(B) {
        let mut acc = [0f64; B];
        for p in pixels.clone() {
            let src: &[f32; B] = row[p * c + b..p * c + b + B].try_into().expect("a block of B channels");
            for k in 0..B {
                acc[k] += f64::from(src[k]);
            }
        }
        out[b..b + B].copy_from_slice(&acc);
    }
    end
}

/// The sum of `row` in f64, in eight running sums (one vector's lanes) added at the end.
fn lane_sum(row: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = row.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        lanes.iter_mut().zip(c).for_each(|(l, &x)| *l += f64::from(x));
    }
    lanes.iter().sum::<f64>() + rest.iter().map(|&e| f64::from(e)).sum::<f64>()
}

/// Each site's mean output error `E[ΔW x] = ΔW E[x]` (per output channel, by layer name) from its
/// input's means ([`input_stats`], observed by calibration), in f64: a convolution's sum over its
/// group's input channels and kernel positions, a gemm's (times its `alpha`) or matmul's over
/// `K`. `None` when a site's means are missing (the calibration did not observe them).
pub fn corrections_from_means(
    g: &Graph,
    sites: &[BiasSite],
    means: &BTreeMap<String, Vec<f64>>,
) -> Result<Option<BTreeMap<String, Vec<f64>>>, PassError> {
    let mut out = BTreeMap::new();
    for s in sites {
        let node = g.node(s.node);
        let name = &node.name;
        let Some(m) = means.get(name) else { return Ok(None) };
        let dw = s.delta.as_f32().ok_or_else(|| failed(format!("node `{name}`: the weight error is not f32")))?;
        let shape = s.delta.shape();
        let bad = |what: &str| failed(format!("node `{name}`: {what} (weight {shape:?}, {} input means)", m.len()));
        let corr: Vec<f64> = match &node.op {
            Op::Conv(a) => {
                let (cout, cin_g) = (shape[0], *shape.get(1).ok_or_else(|| bad("a weight of rank 1"))?);
                let kk: usize = shape[2..].iter().product();
                let per_group = cout / a.group.max(1);
                if cout != s.channels || per_group == 0 || m.len() != cin_g * a.group * kk {
                    return Err(bad("means that do not fit the weight"));
                }
                (0..cout)
                    .map(|o| {
                        let w = &dw[o * cin_g * kk..(o + 1) * cin_g * kk];
                        let g0 = (o / per_group) * cin_g * kk;
                        w.iter().zip(&m[g0..g0 + cin_g * kk]).map(|(&d, &x)| f64::from(d) * x).sum()
                    })
                    .collect()
            }
            Op::Gemm { .. } | Op::MatMul if shape.len() == 2 => {
                let (alpha, trans_b) = match node.op {
                    Op::Gemm { alpha, trans_b, .. } => (f64::from(alpha), trans_b),
                    _ => (1.0, false),
                };
                let (k, n) = if trans_b { (shape[1], shape[0]) } else { (shape[0], shape[1]) };
                if n != s.channels || m.len() != k {
                    return Err(bad("means that do not fit the weight"));
                }
                (0..n)
                    .map(|j| {
                        let at = |i: usize| if trans_b { dw[j * k + i] } else { dw[i * n + j] };
                        alpha * (0..k).map(|i| f64::from(at(i)) * m[i]).sum::<f64>()
                    })
                    .collect()
            }
            _ => return Err(bad("not a conv, gemm or matmul")),
        };
        out.insert(name.clone(), corr);
    }
    Ok(Some(out))
}

/// The bias correction pass: subtracts each layer's measured mean output error (by the layer's
/// name, one value per output channel) from its bias (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct BiasCorrection {
    pub corrections: BTreeMap<String, Vec<f64>>,
}

/// Sets input `slot` of `user` to the constant `t`: in place when `user` is the only reader of
/// the constant there, else as a new constant (`NAME_bias_corrected`).
fn set_const(g: &mut Graph, user: NodeId, slot: usize, t: Tensor, name: &str) {
    match g.node(user).inputs().get(slot).copied().flatten() {
        Some(v) if g.value_users(v).len() == 1 && !g.is_output(v) && matches!(g.node(v.node).op, Op::Const(_)) => {
            g.node_mut(v.node).op = Op::Const(Arc::new(t));
        }
        _ => {
            let c = g.add_const(format!("{name}_bias_corrected"), t);
            g.set_input(user, slot, Some(c));
        }
    }
}

impl Pass for BiasCorrection {
    fn name(&self) -> &'static str {
        "bias-correction"
    }

    fn run(&self, g: &mut Graph, _cx: &PassContext) -> Result<PassReport, PassError> {
        let mut report = PassReport::new(self.name());
        let ids: Vec<NodeId> = g.node_ids().filter(|id| self.corrections.contains_key(&g.node(*id).name)).collect();
        for id in ids {
            let name = g.node(id).name.clone();
            let m = &self.corrections[&name];
            let Some((slot, channels, _)) = bias_slot(g, id) else {
                report.notes.push(format!("node `{name}`: no bias to correct"));
                continue;
            };
            if m.len() != channels {
                return Err(failed(format!("node `{name}`: {} corrections for {channels} output channels", m.len())));
            }
            let (user, input, scale) = match slot {
                BiasSlot::Own { scale } => (id, 2, scale),
                BiasSlot::Add { add, slot } => (add, slot, 1.0),
            };
            let (shape, old) = match const_f32(g, user, input) {
                Some((_, t)) => (t.shape().to_vec(), t.as_f32().map(<[f32]>::to_vec).unwrap_or_default()),
                None => (vec![channels], vec![0.0; channels]),
            };
            if old.len() != channels {
                return Err(failed(format!("node `{name}`: a bias of {} values for {channels} channels", old.len())));
            }
            let new: Vec<f32> =
                old.iter().zip(m).map(|(&b, &d)| (f64::from(b) - d / f64::from(scale)) as f32).collect();
            if new.iter().any(|v| !v.is_finite()) {
                return Err(failed(format!("node `{name}`: the corrected bias is not finite")));
            }
            let largest = m.iter().fold(0f64, |a, &d| a.max(d.abs()));
            report.notes.push(format!("node `{name}`: bias corrected by up to {largest:.3e} over {channels} channels"));
            set_const(g, user, input, Tensor::from_f32(shape, new), &name);
            report.count("biases corrected", 1);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::calibrate::{calibrate_with_means, channel_means};
    use crate::quantize::static_quant::activation_plan;
    use crate::quantize::Interpreter;

    /// A depthwise conv (3x3, stride 2, padded: border taps read zeros), a pointwise conv without
    /// a bias, a gemm with `beta = 0.5` and a matmul with an add of a bias vector (the linear
    /// layer of rank-3 exports).
    const NET: &str = r#"graph net(%x: f32[N,3,7,7]) -> (y: f32[N,2], z: f32[N,2,5]) {
  %0 = const f32[3,1,3,3] = [0.31, -0.52, 0.11, 0.73, 0.05, -0.29, 0.44, -0.61, 0.27, -0.38, 0.19, 0.66, -0.07, 0.58, -0.23, 0.35, 0.02, -0.47, 0.12, 0.81, -0.33, 0.26, -0.71, 0.09, 0.54, -0.16, 0.39]  # "n0"
  %1 = const f32[3] = [0.1, -0.2, 0.05]  # "n1"
  %2 = conv %x, %0, %1 {kernel=[3,3], strides=[2,2], pads=[1,1,1,1], dilations=[1,1], group=3} : f32[N,3,4,4]  # "n2"
  %3 = relu %2 : f32[N,3,4,4]  # "n3"
  %4 = const f32[4,3,1,1] = [0.83, -0.41, 0.27, -0.66, 0.14, 0.95, 0.38, -0.21, -0.57, 0.49, 0.72, -0.13]  # "n4"
  %5 = conv %3, %4 {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=1} : f32[N,4,4,4]  # "n5"
  %6 = global_average_pool %5 : f32[N,4,1,1]  # "n6"
  %7 = flatten %6 {axis=1} : f32[N,4]  # "n7"
  %8 = const f32[2,4] = [0.61, -0.37, 0.22, 0.48, -0.53, 0.17, 0.91, -0.26]  # "n8"
  %9 = const f32[2] = [0.3, -0.1]  # "n9"
  %10 = gemm %7, %8, %9 {alpha=1.0, beta=0.5, trans_a=false, trans_b=true} : f32[N,2]  # "n10"
  %11 = reshape %5 {shape=[0,4,16]} : f32[N,4,16]  # "n11"
  %12 = const f32[16,5] = [0.12, -0.33, 0.25, 0.41, -0.18, 0.07, 0.52, -0.44, 0.29, 0.16, -0.61, 0.08, 0.35, -0.27, 0.49, 0.22, -0.15, 0.63, -0.38, 0.11, 0.45, -0.09, 0.31, 0.57, -0.24, -0.36, 0.19, -0.52, 0.14, 0.68, 0.27, 0.43, -0.11, -0.47, 0.05, -0.58, 0.21, 0.36, 0.09, -0.31, 0.16, -0.42, 0.55, 0.23, -0.19, 0.39, 0.02, -0.28, 0.61, 0.13, -0.07, 0.48, -0.35, 0.26, 0.17, 0.32, -0.55, 0.1, -0.21, 0.44, -0.43, 0.28, 0.06, 0.51, -0.16, 0.24, -0.62, 0.37, 0.03, -0.29, 0.58, -0.14, 0.21, -0.39, 0.47, 0.11, 0.34, -0.26, 0.18, -0.5]  # "n12"
  %13 = matmul %11, %12 : f32[N,4,5]  # "n13"
  %14 = const f32[5] = [0.05, -0.15, 0.25, 0.0, 0.1]  # "n14"
  %15 = add %13, %14 : f32[N,4,5]  # "n15"
  %16 = reduce_mean %15 {axes=[1], keepdims=false} : f32[N,5]  # "n16"
  %17 = reshape %16 {shape=[0,1,5]} : f32[N,1,5]  # "n17"
  %18 = concat %17, %17 {axis=1} : f32[N,2,5]  # "n18"
  return %10, %18
}"#;

    /// Smooth inputs with a non-zero mean per channel (xorshift), `[n, 3, 7, 7]`.
    fn inputs(n: usize, seed: u32) -> Tensor {
        let mut s = seed.wrapping_mul(0x9e37_79b9) | 1;
        let v = (0..n * 147)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let c = (i / 49) % 3;
                (s as f32 / u32::MAX as f32 - 0.5) + [0.8, -0.3, 0.5][c]
            })
            .collect();
        Tensor::from_f32(vec![n, 3, 7, 7], v)
    }

    /// `g` with, beside each site, a copy of the layer on the same (float) input with the rounded
    /// weight and the bias `biases` has for it (`g` itself, or its corrected copy), as extra
    /// outputs; and each layer's result (a matmul's through its add) paired with its copy's.
    fn rounded_copies(g: &Graph, sites: &[BiasSite], biases: &Graph) -> (Graph, Vec<(Value, usize)>) {
        let mut h = g.clone();
        let mut watched = vec![];
        for (i, s) in sites.iter().enumerate() {
            let node = g.node(s.node).clone();
            let (_, w) = const_f32(g, s.node, 1).unwrap();
            let wq: Vec<f32> = w.as_f32().unwrap().iter().zip(s.delta.as_f32().unwrap()).map(|(a, d)| a + d).collect();
            let wq = h.add_const(format!("wq{i}"), Tensor::from_f32(w.shape().to_vec(), wq));
            let x = node.inputs()[0];
            let (layer, copy) = match s.bias {
                BiasSlot::Own { .. } => {
                    let b = const_f32(biases, s.node, 2).map(|(_, t)| h.add_const(format!("b{i}"), t.clone()));
                    (Value::new(s.node, 0), h.add_node(node.op.clone(), vec![x, Some(wq), b], None, format!("copy{i}")))
                }
                BiasSlot::Add { add, slot } => {
                    let m = h.add_node(Op::MatMul, vec![x, Some(wq)], None, format!("mm{i}")).unwrap();
                    let b = h.add_const(format!("b{i}"), const_f32(biases, add, slot).unwrap().1.clone());
                    (
                        Value::new(add, 0),
                        h.add_node(Op::Binary(BinaryOp::Add), vec![Some(m), Some(b)], None, format!("copy{i}")),
                    )
                }
            };
            let copy = copy.unwrap();
            h.add_output(format!("copy{i}"), copy);
            watched.push((layer, s.axis));
            watched.push((copy, s.axis));
        }
        (h, watched)
    }

    /// The law, on every kind of site: after correction, the layers with rounded weights have
    /// the float layers' mean output per channel on the calibration data (to float rounding),
    /// where before they were off by up to the measured offsets; the corrections sit in the
    /// biases (a conv without one gets one).
    /// The channels-last tap sums (what the JIT's taps hand over) equal the plain ones on every
    /// combination of kernel, stride, padding (including taps that read only padding) and
    /// dilation of a small grid, to f64 rounding.
    #[test]
    fn channels_last_tap_sums_match_the_plain_ones() {
        let mut seed = 9u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed % 2001) as f32 / 1000.0 - 1.0
        };
        let mut cases = 0;
        for (kh, kw) in [(1, 1), (3, 3), (1, 3), (5, 2)] {
            for stride in [1, 2, 3] {
                for pads in [[0, 0, 0, 0], [1, 1, 1, 1], [0, 2, 1, 0], [4, 3, 2, 5]] {
                    for dil in [1, 2] {
                        // 45 channels: two blocks (32 and 8) whose sums stay in registers, and 5 more
                        for (n, c, h, w) in [(2, 3, 5, 6), (1, 4, 1, 2), (1, 1, 7, 3), (1, 45, 3, 4)] {
                            let a = ConvAttrs {
                                kernel: vec![kh, kw],
                                strides: vec![stride, stride + 1],
                                pads: pads.to_vec(),
                                dilations: vec![dil, 1],
                                group: 1,
                            };
                            let shape = [n, c, h, w];
                            let plain: Vec<f32> = (0..n * c * h * w).map(|_| next()).collect();
                            let mut nhwc = vec![0f32; plain.len()];
                            for (i, &x) in plain.iter().enumerate() {
                                let (s, ch, p) = (i / (c * h * w), (i / (h * w)) % c, i % (h * w));
                                nhwc[(s * h * w + p) * c + ch] = x;
                            }
                            let want = conv_tap_sums(&a, &shape, &plain).unwrap();
                            let got = conv_tap_sums_nhwc(&a, &shape, &nhwc).unwrap();
                            // the run-time choice (AVX-512 or AVX2 where the CPU has them) is the
                            // baseline compilation bit for bit
                            assert_eq!(got, conv_tap_sums_nhwc_baseline(&a, &shape, &nhwc).unwrap(), "{a:?} {shape:?}");
                            assert_eq!(got.1, want.1, "{a:?} {shape:?}: counts");
                            assert_eq!(got.0.len(), want.0.len(), "{a:?} {shape:?}");
                            for (g, w) in got.0.iter().zip(&want.0) {
                                assert!((g - w).abs() <= 1e-9 * (1.0 + w.abs()), "{a:?} {shape:?}: {g} vs {w}");
                            }
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 4 * 3 * 4 * 2 * 4);
    }

    #[test]
    fn corrected_layers_are_unbiased_on_the_calibration_data() {
        let g = qforge_ir::text::parse(NET).unwrap();
        let cfg = QConfig { bias_correction: Some(true), ..QConfig::default() };
        let calib = inputs(8, 3);
        let targets = activation_plan(&g, &cfg).unwrap().targets();
        let batches = vec![vec![calib.clone()]];
        let stats = input_stats(&g, &cfg).unwrap();
        let cal = calibrate_with_means(
            &g,
            &Interpreter::default(),
            &mut batches.clone().into_iter(),
            1,
            &targets,
            &stats,
            &mut |_, _| {},
        )
        .unwrap();
        let cx = PassContext { verify: true, ..PassContext::default() };
        let sites = bias_sites(&g, &cfg, &cal, &cx).unwrap();
        let kinds: Vec<(&str, usize, usize)> =
            sites.iter().map(|s| (g.node(s.node).op.name(), s.channels, s.axis)).collect();
        assert_eq!(kinds, [("conv", 3, 1), ("conv", 4, 1), ("gemm", 2, 1), ("matmul", 5, 2)]);
        let (eg, values) = error_graph(&g, &sites).unwrap();
        let means =
            channel_means(&eg, &Interpreter::default(), &mut batches.clone().into_iter(), 1, &values, &mut |_, _| {})
                .unwrap();
        let measured: BTreeMap<String, Vec<f64>> = sites
            .iter()
            .zip(&values)
            .map(|(s, (v, _))| (g.node(s.node).name.clone(), means[&(eg.node(v.node).name.clone(), v.port)].clone()))
            .collect();
        // from the input means calibration observed: what running each layer with its weight
        // error measures, to the f32 rounding of the measured outputs
        let corrections = corrections_from_means(&g, &sites, &cal.input_means).unwrap().unwrap();
        assert_eq!(corrections.keys().collect::<Vec<_>>(), measured.keys().collect::<Vec<_>>());
        for (name, m) in &measured {
            let scale = m.iter().fold(0f64, |a, x| a.max(x.abs()));
            for (a, b) in corrections[name].iter().zip(m) {
                assert!((a - b).abs() <= 1e-6 * scale, "{name}: {a:e} from the means, {b:e} measured");
            }
        }
        let mut corrected = g.clone();
        let report = BiasCorrection { corrections: corrections.clone() }.run(&mut corrected, &cx).unwrap();
        assert_eq!(report.stats["biases corrected"], 4);
        // each layer with its rounded weight, on the float layer's input, before and after: the
        // per-channel mean of its result against the float layer's
        let largest_gap = |biases: &Graph| -> Vec<f64> {
            let (h, watched) = rounded_copies(&g, &sites, biases);
            let m = channel_means(
                &h,
                &Interpreter::default(),
                &mut batches.clone().into_iter(),
                1,
                &watched,
                &mut |_, _| {},
            )
            .unwrap();
            let key = |v: &Value| (h.node(v.node).name.clone(), v.port);
            watched
                .chunks(2)
                .map(|p| m[&key(&p[0].0)].iter().zip(&m[&key(&p[1].0)]).fold(0f64, |a, (f, q)| a.max((f - q).abs())))
                .collect()
        };
        let (before, after) = (largest_gap(&g), largest_gap(&corrected));
        for ((s, b), a) in sites.iter().zip(&before).zip(&after) {
            let name = &g.node(s.node).name;
            assert!(*b > 1e-4 && *a < 1e-6, "{name}: mean output error {b:.3e} before, {a:.3e} after");
        }
        // the corrections are in the biases; the gemm's C is scaled by 1 / beta
        let gemm = g.node_ids().find(|&id| matches!(g.node(id).op, Op::Gemm { .. })).unwrap();
        let (_, c) = const_f32(&corrected, gemm, 2).unwrap();
        let want: Vec<f32> = [0.3f32, -0.1]
            .iter()
            .zip(&corrections[&g.node(gemm).name])
            .map(|(&b, d)| (f64::from(b) - d / 0.5) as f32)
            .collect();
        assert_eq!(c.as_f32().unwrap(), want.as_slice());
        let pointwise = sites[1].node;
        assert!(const_f32(&g, pointwise, 2).is_none() && const_f32(&corrected, pointwise, 2).is_some());
    }
}
