//! Transposed convolutions with a constant weight rewritten as ordinary convolutions (the
//! sub-pixel or phase decomposition), so they run in the convolution kernels, quantize as
//! convolutions do (per-channel weights, an i32 bias, the integer kernels of the optimizer) and
//! leave no host step on the JIT.
//!
//! # The law
//! Per spatial dim, ONNX ConvTranspose sends input position `i` through kernel tap `k` to the
//! uncropped output position `u = i * s + k * d` (the output is `u - pad_begin`; see
//! [`ConvTransposeAttrs`]). Split `u` by its phase `r = u mod s` and its quotient `q = floor(u / s)`:
//! tap `k` reaches phase `r` exactly when `r - k * d` is a multiple of `s`, and then from the input
//! position `i = q + e` with `e = (r - k * d) / s`. So each phase is a stride-1 correlation of the
//! input with the taps that reach it at offsets `e`, and all phases together are one stride-1
//! convolution with `Cout * s^n` output channels, channel `(m, r)` holding the taps of phase `r` (a
//! tap that does not reach it is 0), followed by the depth-to-space interleave `y[m][q * s + r] =
//! conv[(m, r)][q]` (a reshape, a transpose and a reshape, three transposes on a symbolic image
//! size: data movement, which the JIT runs and Q/DQ commute through) and a crop of at most
//! `s - 1` positions at each end (a pad with negative amounts). The bias of channel `m` is the
//! bias of every `(m, r)`. Every output element sums the same products as the transposed
//! convolution, in a different order (and products with the zero taps, which add nothing to a
//! finite input), so float results agree to rounding; weights and biases are only copied, never
//! computed.
//!
//! When `kernel == stride` with no pads (the UNet/FPN upsampler) every phase has exactly one tap
//! at offset 0: the convolution is 1x1 (a GEMM from `Cin` to `Cout * s^n` channels) and there is
//! no crop. In general the taps of all phases are laid on one grid, spaced by the largest step
//! that divides every offset (the convolution's dilation: a stride-1 transposed convolution with
//! dilation `d` is a convolution with dilation `d` and the flipped kernel).
//!
//! # When it applies
//! A transposed convolution is rewritten when its weight (and bias) are constants of a compute
//! float type, or in a QDQ model the dequantize of a constant quantized per tensor or per output
//! channel (the stored integers move, a zero tap is its channel's zero point, and the parameters
//! follow their channels to axis 0, so the optimizer lowers it as any QDQ convolution), it has
//! one or two spatial dims (a 1-D one as 2-D with a unit height, since the
//! JIT's convolution kernels are 2-D), and the convolution does at most [`MAX_MAC_RATIO`] times
//! the multiply-adds per output element (the taps a phase does not have are zeros). Otherwise it
//! stays, and the report says why for each (the JIT runs it as a host step).

use crate::pass::{Pass, PassContext, PassError, PassReport};
use qforge_ir::{
    ConvAttrs, ConvTransposeAttrs, Dim, Graph, NodeId, Op, PadMode, QuantParams, Shape, Tensor, TensorType, Value,
};
use std::sync::Arc;

/// The most multiply-adds per output element the convolution may do, relative to the transposed
/// convolution's: the JIT's convolution kernels run an order of magnitude faster than the
/// interpreter's scatter loop a transposed convolution runs in, so zero taps up to this factor
/// (a 1x1 kernel of stride 2 in 2-D: three phases of four have no tap) still gain; beyond it the
/// zeros dominate.
pub const MAX_MAC_RATIO: f64 = 4.0;

/// The rewrite pass (part of the canonicalization stage).
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvTransposeAsConv;

impl Pass for ConvTransposeAsConv {
    fn name(&self) -> &'static str {
        "conv-transpose-as-conv"
    }

    fn run(&self, g: &mut Graph, cx: &PassContext) -> Result<PassReport, PassError> {
        let mut report = PassReport::new(self.name());
        let order = g.schedule().map_err(|error| PassError::Ir { pass: self.name().into(), error })?;
        let mut rewritten = 0;
        for id in order {
            if !matches!(g.node(id).op, Op::ConvTranspose(_)) {
                continue;
            }
            // built on a copy, so a form the convolution cannot express leaves nothing behind
            let mut trial = g.clone();
            match rewrite(&mut trial, id, cx) {
                Ok(()) => {
                    *g = trial;
                    rewritten += 1;
                }
                Err(why) => report.notes.push(format!("`{}` stays a conv_transpose: {why}", g.node(id).name)),
            }
        }
        if rewritten > 0 {
            g.remove_dead();
        }
        report.count("conv_transposes as convolutions", rewritten);
        Ok(report)
    }
}

/// One spatial dim of the decomposition.
#[derive(Clone, Debug, PartialEq)]
struct DimPlan {
    /// The stride: the number of phases.
    s: usize,
    /// `tap[r][t]`: the kernel tap phase `r` reads at grid position `t`, if any.
    tap: Vec<Vec<Option<usize>>>,
    /// The convolution's dilation (the grid step) and kernel size on this dim.
    dil: usize,
    taps: usize,
    /// The convolution's begin and end pads; negative: that many input positions cropped first.
    pad_begin: i64,
    pad_end: i64,
    /// The positions the interleaved result has beyond the output, at the begin and the end.
    crop_begin: i64,
    crop_end: i64,
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}

/// The decomposition of one spatial dim with kernel `k`, stride `s`, dilation `d`, pads `pb`/`pe`
/// and output padding `op` (see the module documentation). The input size `n` does not enter:
/// the convolution's output is `n + Q0` for a constant `Q0`, which the pads below give.
fn dim_plan(k: usize, s: usize, d: usize, pb: i64, pe: i64, op: usize) -> Option<DimPlan> {
    let (ki, si, di) = (i64::try_from(k).ok()?, i64::try_from(s).ok()?, i64::try_from(d).ok()?);
    if ki == 0 || si == 0 || di == 0 {
        return None;
    }
    // (phase, tap, offset) of every tap
    let mut hits = vec![];
    for r in 0..si {
        for kk in 0..ki {
            let num = r.checked_sub(kk.checked_mul(di)?)?;
            if num.rem_euclid(si) == 0 {
                hits.push((r as usize, kk as usize, num / si));
            }
        }
    }
    let emin = hits.iter().map(|h| h.2).min()?;
    let emax = hits.iter().map(|h| h.2).max()?;
    let dil = hits.iter().fold(0, |acc, h| gcd(acc, h.2 - emin)).max(1);
    let taps = usize::try_from((emax - emin) / dil + 1).ok()?;
    let mut tap = vec![vec![None; taps]; s];
    for &(r, kk, e) in &hits {
        tap[r][usize::try_from((e - emin) / dil).ok()?] = Some(kk);
    }
    // the uncropped output `u` runs over [pb, s * n + c1) (its end is `pb + out`); the convolution
    // computes the quotients `q` in [q0, q0 + Q), Q = n + qa, reading input `q + e` at tap
    // `t = (e - emin) / dil`
    let q0 = pb.div_euclid(si);
    let c1 = (ki - 1)
        .checked_mul(di)?
        .checked_add(1)?
        .checked_add(i64::try_from(op).ok()?)?
        .checked_sub(pe)?
        .checked_sub(si)?;
    let qa = -(-c1).div_euclid(si) - q0;
    let pad_begin = -(q0.checked_add(emin)?);
    let span = emax - emin;
    let pad_end = qa.checked_sub(pad_begin)?.checked_add(span)?;
    // the interleave covers [q0 * s, (q0 + Q) * s), the output [pb, s * n + c1)
    let crop_begin = pb - q0 * si;
    let crop_end = (q0 + qa) * si - c1;
    Some(DimPlan { s, tap, dil: dil as usize, taps, pad_begin, pad_end, crop_begin, crop_end })
}

/// A constant operand: a plain constant, or (a QDQ model) the dequantize of a quantized one, with
/// its parameters.
fn constant(g: &Graph, v: Value, what: &str) -> Result<(Arc<Tensor>, Option<QuantParams>), String> {
    let runtime = || format!("its {what} is computed at run time (the decomposition rearranges a constant {what})");
    match &g.node(v.node).op {
        Op::Const(t) if g.value_type(v).quant.is_none() => Ok((t.clone(), None)),
        Op::Dequantize => {
            let q = g.node(v.node).inputs().first().copied().flatten().ok_or_else(runtime)?;
            match (&g.node(q.node).op, &g.value_type(q).quant) {
                (Op::Const(t), Some(p)) => Ok((t.clone(), Some(p.clone()))),
                _ => Err(runtime()),
            }
        }
        _ => Err(runtime()),
    }
}

/// The rearranged constant `t` as an operand of the convolution: as it is, or (quantized with
/// `q`) a quantized constant and its dequantize. Per-tensor parameters stay; parameters per index
/// of `axis` move to axis 0, output channel `o` taking those of index `channel(o)`.
#[allow(clippy::too_many_arguments)]
fn placed(
    g: &mut Graph,
    t: Tensor,
    q: Option<&QuantParams>,
    axis: usize,
    channel: impl Fn(usize) -> usize,
    oc: usize,
    shape: &[usize],
    name: &str,
) -> Result<Value, String> {
    let Some(q) = q else { return Ok(g.add_const(name, t)) };
    let params = match q {
        QuantParams::PerTensor { .. } => q.clone(),
        QuantParams::PerAxis { axis: a, scales, zero_points } if *a == axis => {
            let pick = |o: usize| -> Result<usize, String> {
                let c = channel(o);
                (c < scales.len() && c < zero_points.len()).then_some(c).ok_or_else(|| "a channel out of range".into())
            };
            QuantParams::PerAxis {
                axis: 0,
                scales: (0..oc).map(|o| pick(o).map(|c| scales[c])).collect::<Result<_, _>>()?,
                zero_points: (0..oc).map(|o| pick(o).map(|c| zero_points[c])).collect::<Result<_, _>>()?,
            }
        }
        _ => return Err(format!("a constant quantized per axis or group other than axis {axis}")),
    };
    let ty = TensorType::quantized(t.dtype(), Shape::fixed(shape), params);
    let c = g.add_const_typed(format!("{name}_quantized"), t, ty);
    g.add_node(Op::Dequantize, vec![Some(c)], None, name).map_err(ir)
}

fn ir(e: qforge_ir::IrError) -> String {
    e.to_string()
}

/// Rewrites the transposed convolution `id` of `g` (see the module documentation), or says why
/// it cannot be.
fn rewrite(g: &mut Graph, id: NodeId, cx: &PassContext) -> Result<(), String> {
    let node = g.node(id).clone();
    let Op::ConvTranspose(a) = &node.op else { return Err("not a transposed convolution".into()) };
    let a: &ConvTransposeAttrs = a;
    let (Some(x), Some(wv)) = (node.inputs().first().copied().flatten(), node.inputs().get(1).copied().flatten())
    else {
        return Err("an input is missing".into());
    };
    let bv = node.inputs().get(2).copied().flatten();
    let (w, wq) = constant(g, wv, "weight")?;
    let wdt = w.dtype();
    if wq.is_none() && !wdt.is_compute_float() {
        return Err(format!("its weight is {wdt}, not f32, f16 or bf16"));
    }
    let b = match bv {
        None => None,
        Some(b) => Some(constant(g, b, "bias")?),
    };
    let sp = a.kernel.len();
    if sp == 3 {
        return Err("3 spatial dims: the JIT's convolution kernels are 2-D".into());
    }
    if !(1..=2).contains(&sp) {
        return Err(format!("{sp} spatial dims"));
    }
    let yt = node.outputs.first().ok_or("it has no result")?.clone();
    let ws = w.shape().to_vec();
    let (&c, &mg, group) = (ws.first().ok_or("a weight of rank 0")?, ws.get(1).ok_or("a weight of rank 1")?, a.group);
    let cg =
        c.checked_div(group).filter(|_| group > 0 && c % group == 0).ok_or("the groups do not divide the channels")?;
    let m = mg.checked_mul(group).ok_or("too many output channels")?;
    // the plans in 2-D order (a 1-D transposed convolution gets a unit height first)
    let unit = dim_plan(1, 1, 1, 0, 0, 0).ok_or("internal: the unit plan")?;
    let mut plans = vec![];
    if sp == 1 {
        plans.push(unit);
    }
    for i in 0..sp {
        let p = dim_plan(a.kernel[i], a.strides[i], a.dilations[i], a.pads[i], a.pads[sp + i], a.output_padding[i])
            .ok_or_else(|| format!("spatial dim {i}: sizes out of range"))?;
        plans.push(p);
    }
    let [p0, p1] = &plans[..] else { return Err("internal: not two spatial plans".into()) };
    let phases = p0.s.checked_mul(p1.s).ok_or("too many phases")?;
    let kernel: usize = a.kernel.iter().product();
    let ratio = (phases * p0.taps * p1.taps) as f64 / kernel as f64;
    if ratio > MAX_MAC_RATIO {
        return Err(format!(
            "the convolution of its phases would do {ratio:.1}x its multiply-adds (at most {MAX_MAC_RATIO}x)"
        ));
    }
    // the weight [m * phases, cg, T0, T1] and the bias [m * phases]
    let oc = m.checked_mul(phases).ok_or("too many output channels")?;
    let wlen = [oc, cg, p0.taps, p1.taps].iter().try_fold(1usize, |acc, &v| acc.checked_mul(v)).ok_or("too large")?;
    let bytes = wlen as u128 * wdt.size_bytes() as u128;
    if bytes > cx.max_tensor_bytes {
        return Err(format!("its convolution weight would need {bytes} bytes, more than the limit"));
    }
    // quantized per tensor, or per output channel: axis 1 of the weight, axis 0 of the bias
    let fits = |q: &Option<QuantParams>, axis: usize, n: usize| match q {
        None | Some(QuantParams::PerTensor { .. }) => true,
        Some(QuantParams::PerAxis { axis: a, scales, zero_points }) => {
            *a == axis && scales.len() == n && zero_points.len() == n
        }
        Some(QuantParams::PerGroup { .. }) => false,
    };
    if !fits(&wq, 1, mg) || !b.as_ref().is_none_or(|(_, bq)| fits(bq, 0, m)) {
        return Err("its weight or bias is quantized other than per tensor or per output channel".into());
    }
    let wsrc = w.to_f64_vec();
    let (k0, k1) = if sp == 1 { (1, a.kernel[0]) } else { (a.kernel[0], a.kernel[1]) };
    if ws[2..] != a.kernel[..] || wsrc.len() != c * mg * k0 * k1 {
        return Err(format!("its weight {ws:?} does not fit the kernel {:?}", a.kernel));
    }
    let mut wnew = Vec::with_capacity(wlen);
    for o in 0..oc {
        let (mm, r) = (o / phases, o % phases);
        let (r0, r1) = (r / p1.s, r % p1.s);
        let (gi, mo) = (mm / mg, mm % mg);
        for ci in 0..cg {
            let cc = gi * cg + ci;
            for t0 in 0..p0.taps {
                for t1 in 0..p1.taps {
                    wnew.push(match (p0.tap[r0][t0], p1.tap[r1][t1]) {
                        (Some(a0), Some(a1)) => wsrc[((cc * mg + mo) * k0 + a0) * k1 + a1],
                        // a zero tap: the stored zero point of its channel when quantized
                        _ => wq.as_ref().map_or(0.0, |q| f64::from(q.zero_point(mo))),
                    });
                }
            }
        }
    }
    let name = node.name.clone();
    let from = if node.from.is_empty() { vec![name.clone()] } else { node.from.clone() };
    let wshape = vec![oc, cg, p0.taps, p1.taps];
    let wt = Tensor::from_f64_iter(wdt, wshape.clone(), wnew.into_iter());
    // a per-axis weight's channel `mo` (axis 1 of the transposed convolution's weight) becomes
    // output channel `o` (axis 0 of the convolution's)
    let wc = placed(g, wt, wq.as_ref(), 1, |o| (o / phases) % mg, oc, &wshape, &format!("{name}.weight_phases"))?;
    let bc = match &b {
        None => None,
        Some((b, bq)) => {
            let bs = b.to_f64_vec();
            if bs.len() != m {
                return Err(format!("its bias has {} values for {m} output channels", bs.len()));
            }
            let bt = Tensor::from_f64_iter(b.dtype(), vec![oc], (0..oc).map(|o| bs[o / phases]));
            Some(placed(g, bt, bq.as_ref(), 0, |o| o / phases, oc, &[oc], &format!("{name}.bias_phases"))?)
        }
    };
    let mut added: Vec<NodeId> = vec![];
    let mut add = |g: &mut Graph, op: Op, ins: Vec<Option<Value>>, nm: String| -> Result<Value, String> {
        let v = g.add_node(op, ins, None, nm).map_err(ir)?;
        added.push(v.node);
        Ok(v)
    };
    let mut cur = x;
    if sp == 1 {
        cur = add(g, Op::Unsqueeze { axes: vec![2] }, vec![Some(cur)], format!("{name}/as_2d"))?;
    }
    // crop the input where the convolution would need a negative pad
    if plans.iter().any(|p| p.pad_begin < 0 || p.pad_end < 0) {
        let mut pads = vec![0i64; 8];
        for (i, p) in plans.iter().enumerate() {
            pads[2 + i] = p.pad_begin.min(0);
            pads[6 + i] = p.pad_end.min(0);
        }
        let op = Op::Pad { mode: PadMode::Constant, pads, computed: vec![], value: 0.0 };
        cur = add(g, op, vec![Some(cur)], format!("{name}/crop_input"))?;
    }
    let upad = |v: i64| usize::try_from(v.max(0)).map_err(|_| "a pad out of range".to_string());
    let conv = ConvAttrs {
        kernel: vec![p0.taps, p1.taps],
        strides: vec![1, 1],
        pads: vec![upad(p0.pad_begin)?, upad(p1.pad_begin)?, upad(p0.pad_end)?, upad(p1.pad_end)?],
        dilations: vec![p0.dil, p1.dil],
        group,
    };
    let conv_v = add(g, Op::Conv(conv), vec![Some(cur), Some(wc), bc], name.clone())?;
    cur = conv_v;
    if phases > 1 {
        cur = depth_to_space(g, &mut add, conv_v, m, p0.s, p1.s, &name)?;
    }
    if plans.iter().any(|p| p.crop_begin != 0 || p.crop_end != 0) {
        let mut pads = vec![0i64; 8];
        for (i, p) in plans.iter().enumerate() {
            pads[2 + i] = -p.crop_begin;
            pads[6 + i] = -p.crop_end;
        }
        let op = Op::Pad { mode: PadMode::Constant, pads, computed: vec![], value: 0.0 };
        cur = add(g, op, vec![Some(cur)], format!("{name}/crop"))?;
    }
    if sp == 1 {
        cur = add(g, Op::Squeeze { axes: vec![2] }, vec![Some(cur)], format!("{name}/as_1d"))?;
    }
    let got = g.value_type(cur);
    if got.dtype != yt.dtype || got.shape != yt.shape {
        return Err(format!("internal: the decomposition gives {got}, not {yt}"));
    }
    for n in added {
        g.node_mut(n).from = from.clone();
    }
    g.replace_all_uses(Value::new(id, 0), cur);
    Ok(())
}

/// The interleave `y[n][m][q0 * s0 + r0][q1 * s1 + r1] = c[n][(m * s0 + r0) * s1 + r1][q0][q1]`:
/// a reshape to `[N, M, s0, s1, Q0, Q1]`, the transpose to `[N, M, Q0, s0, Q1, s1]` and a reshape
/// to `[N, M, Q0 * s0, Q1 * s1]` (ONNX DepthToSpace in CRD mode, with a block per axis). Sizes
/// are fixed numbers when `Q0` and `Q1` are (a symbolic batch copied by `0`); on a symbolic size
/// see below.
fn depth_to_space(
    g: &mut Graph,
    add: &mut impl FnMut(&mut Graph, Op, Vec<Option<Value>>, String) -> Result<Value, String>,
    c: Value,
    m: usize,
    s0: usize,
    s1: usize,
    name: &str,
) -> Result<Value, String> {
    let dims = g.value_type(c).shape.dims().to_vec();
    let (q0, q1) = (dims[2].fixed(), dims[3].fixed());
    let to_i64 = |v: usize| i64::try_from(v).map_err(|_| "a size out of range".to_string());
    match (q0, q1) {
        (Some(q0), Some(q1)) => {
            let n = match dims[0] {
                Dim::Fixed(n) => to_i64(n)?,
                _ => 0,
            };
            let split = vec![n, to_i64(m)?, to_i64(s0)?, to_i64(s1)?, to_i64(q0)?, to_i64(q1)?];
            let r = add(g, Op::Reshape { shape: split }, vec![Some(c)], format!("{name}/phases"))?;
            let t =
                add(g, Op::Transpose { perm: vec![0, 1, 4, 2, 5, 3] }, vec![Some(r)], format!("{name}/interleave"))?;
            let merged = vec![n, to_i64(m)?, to_i64(q0 * s0)?, to_i64(q1 * s1)?];
            add(g, Op::Reshape { shape: merged }, vec![Some(t)], format!("{name}/depth_to_space"))
        }
        _ => {
            // on a symbolic Q0 or Q1, with reshapes whose `0` copies a dim at its own index and
            // whose `-1` takes the rest (merges at the tail only): c -> [N, Q0, MP, Q1] ->
            // [N, Q0, M, s0, s1, Q1] -> [N, M, Q1, s1, Q0, s0] -> [N, M, Q1, s1, Q0*s0] ->
            // [N, M, Q0*s0, Q1, s1] -> [N, M, Q0*s0, Q1*s1]: three transposes where fixed sizes
            // need one, but only data movement that Q/DQ commute through
            let (m, s0, s1) = (to_i64(m)?, to_i64(s0)?, to_i64(s1)?);
            let steps: [(Op, &str); 6] = [
                (Op::Transpose { perm: vec![0, 2, 1, 3] }, "channels_inside"),
                (Op::Reshape { shape: vec![0, 0, m, s0, s1, -1] }, "phases"),
                (Op::Transpose { perm: vec![0, 2, 5, 4, 1, 3] }, "interleave"),
                (Op::Reshape { shape: vec![0, 0, 0, 0, -1] }, "rows"),
                (Op::Transpose { perm: vec![0, 1, 4, 2, 3] }, "rows_inside"),
                (Op::Reshape { shape: vec![0, 0, 0, -1] }, "depth_to_space"),
            ];
            let mut cur = c;
            for (op, what) in steps {
                cur = add(g, op, vec![Some(cur)], format!("{name}/{what}"))?;
            }
            Ok(cur)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_equal_to_stride_is_one_tap_per_phase() {
        let p = dim_plan(2, 2, 1, 0, 0, 0).unwrap();
        assert_eq!(p.tap, vec![vec![Some(0)], vec![Some(1)]]);
        assert_eq!((p.taps, p.dil, p.pad_begin, p.pad_end, p.crop_begin, p.crop_end), (1, 1, 0, 0, 0, 0));
    }

    #[test]
    fn kernel_3_stride_2_pads_1_output_padding_1() {
        // u = 2i + k; phase 0 takes taps 0 (e = 0) and 2 (e = -1), phase 1 tap 1 (e = 0)
        let p = dim_plan(3, 2, 1, 1, 1, 1).unwrap();
        assert_eq!(p.tap, vec![vec![Some(2), Some(0)], vec![None, Some(1)]]);
        assert_eq!((p.taps, p.dil, p.pad_begin, p.pad_end, p.crop_begin, p.crop_end), (2, 1, 1, 1, 1, 1));
    }

    #[test]
    fn stride_1_with_dilation_is_a_dilated_convolution_of_the_flipped_kernel() {
        let p = dim_plan(3, 1, 2, 0, 0, 0).unwrap();
        assert_eq!(p.tap, vec![vec![Some(2), Some(1), Some(0)]]);
        assert_eq!((p.taps, p.dil, p.pad_begin, p.pad_end), (3, 2, 4, 4));
    }
}
