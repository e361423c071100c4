//! Row steps ([`crate::micro::rowops`]): softmax and log-softmax over any axis, layer norm with
//! constant scale and bias, an f32 tensor combined with a per-channel or last-axis constant (a
//! batch norm left as mul/add, a transformer's bias), hard sigmoid and gates.

use super::{dims, ensure, host, need, numel, per_tensor, At, Layout, Lowerer, Lw, StepKind};
use crate::micro::rowops::{self, RowKind, RowOp};
use qforge_ir::{infer, numerics, BinaryOp, DType, Op, Tensor};
use std::sync::Arc;

/// The row-major strides (in elements) of a tensor of dims `input` broadcast to `out` (numpy
/// rules, right-aligned): 0 along a broadcast axis; `None` when it does not broadcast.
pub(super) fn broadcast_strides(input: &[usize], out: &[usize]) -> Option<Vec<usize>> {
    let off = out.len().checked_sub(input.len())?;
    let mut st = vec![0usize; out.len()];
    let mut acc = 1usize;
    for (i, &d) in input.iter().enumerate().rev() {
        if d == out[off + i] {
            st[off + i] = if d == 1 { 0 } else { acc };
        } else if d != 1 {
            return None;
        }
        acc *= d;
    }
    Some(st)
}

impl Lowerer<'_> {
    /// f32 softmax or log-softmax over `axis`: one unit per lane.
    pub(super) fn softmax(&mut self, n: &At, axis: i64) -> Lw {
        let x = need(n.input(0).filter(|v| !self.is_const(*v)), "the input is a constant")?;
        let d = need(dims(&n.oty), "the result shape is not fixed")?;
        let a = need(infer::norm_axis(axis, d.len()).ok(), "the axis is out of range")?;
        let (len, inner) = (d[a], d[a + 1..].iter().product::<usize>());
        ensure(len != 0, "the axis is empty")?;
        let log = matches!(n.op, Op::LogSoftmax { .. });
        let input = self.plain(x, &n.name)?;
        let output = self.define(n.out, Layout::Plain);
        let units = numel(&n.oty) / len;
        self.push_rows(&n.name, RowKind::Softmax { log }, input, output, len, inner, units, vec![], vec![]);
        Ok(())
    }

    /// f32 layer norm over the axes from `axis` on, with constant scale and (optional) bias.
    pub(super) fn layer_norm(&mut self, n: &At, axis: i64, epsilon: f32) -> Lw {
        let x = need(n.input(0).filter(|v| !self.is_const(*v)), "the input is a constant")?;
        let d = need(dims(&n.oty), "the result shape is not fixed")?;
        let a = need(infer::norm_axis(axis, d.len()).ok(), "the axis is out of range")?;
        let len: usize = d[a..].iter().product();
        let vec_of = |t: Option<Arc<Tensor>>| t.and_then(|t| t.as_f32().map(|v| v.to_vec()));
        let scale = need(vec_of(self.const_of(n.input(1))), "the scale is not an f32 constant")?;
        let bias = match n.input(2) {
            Some(b) => need(vec_of(self.const_of(Some(b))), "the bias is not an f32 constant")?,
            None => vec![0.0; len],
        };
        ensure(len != 0, "the normalized axes are empty")?;
        ensure(scale.len() == len && bias.len() == len, "scale or bias does not cover the normalized axes")?;
        let input = self.plain(x, &n.name)?;
        let output = self.define(n.out, Layout::Plain);
        let units = numel(&n.oty) / len;
        self.push_rows(&n.name, RowKind::LayerNorm { eps: epsilon }, input, output, len, 1, units, scale, bias);
        Ok(())
    }

    /// f32 group normalization (ONNX GroupNormalization-21, and InstanceNormalization as one
    /// group per channel) with constant per-channel scale and bias, in plain order.
    pub(super) fn group_norm(&mut self, n: &At, groups: usize, epsilon: f32) -> Lw {
        let x = need(n.input(0).filter(|v| !self.is_const(*v)), "the input is a constant")?;
        let d = need(dims(&n.oty), "the result shape is not fixed")?;
        ensure(d.len() >= 2, "the input has rank below 2")?;
        let c = d[1];
        ensure(groups != 0 && c % groups == 0, "the channels do not split into the groups")?;
        let plane: usize = d[2..].iter().product();
        let vec_of = |t: Option<Arc<Tensor>>| t.and_then(|t| t.as_f32().map(|v| v.to_vec()));
        let scale = need(vec_of(self.const_of(n.input(1))), "the scale is not an f32 constant")?;
        let bias = need(vec_of(self.const_of(n.input(2))), "the bias is not an f32 constant")?;
        ensure(scale.len() == c && bias.len() == c, "scale or bias is not one per channel")?;
        let len = (c / groups) * plane;
        ensure(len != 0, "the groups are empty")?;
        let input = self.plain(x, &n.name)?;
        let output = self.define(n.out, Layout::Plain);
        let units = numel(&n.oty) / len;
        self.push_rows(&n.name, RowKind::GroupNorm { eps: epsilon, plane }, input, output, len, 1, units, scale, bias);
        Ok(())
    }

    /// An f32 tensor and a constant that varies along the channel axis (1) only, or along the
    /// last axis only (`[.., C] + [C]`), combined by add, sub, mul or div.
    pub(super) fn channel_binary(&mut self, n: &At, op: BinaryOp) -> Lw {
        let (a, b) = need(n.input(0).zip(n.input(1)), "an input is missing")?;
        let d = need(dims(&n.oty), "the result shape is not fixed")?;
        let (x, k, const_first) = match (self.is_const(a), self.is_const(b)) {
            (false, true) => (a, b, false),
            (true, false) => (b, a, true),
            _ => return host("not one tensor and one constant"),
        };
        ensure(self.types[&x].shape == n.oty.shape, "the tensor operand is broadcast")?;
        ensure(d.len() >= 2, "a result of rank below 2")?;
        let kv = need(self.const_of(Some(k)).and_then(|t| t.as_f32().map(|v| v.to_vec())), "the constant is not f32")?;
        let kd = dims(&self.types[&k]).unwrap_or_default();
        // The constant must vary along the channel axis (1) only.
        let c = d[1];
        let mut full = vec![1usize; d.len()];
        let off = d.len().saturating_sub(kd.len());
        ensure(kd.len() <= d.len(), "the constant has a higher rank than the result")?;
        full[off..].copy_from_slice(&kd);
        let per_channel = full.iter().enumerate().all(|(i, &m)| m == 1 || (i == 1 && m == c));
        let last = d.len() - 1;
        let along_last = full.iter().enumerate().all(|(i, &m)| m == 1 || (i == last && m == d[last]));
        let (input, output, kind, c) = if per_channel {
            let v_c = c;
            let layout = self.vals[&x].layout;
            let input = self.in_layout(x, layout, &n.name)?;
            let output = self.define(n.out, layout);
            let hw: usize = d[2..].iter().product();
            let nhwc = layout == Layout::Nhwc && d.len() == 4;
            (input, output, RowKind::ChannelBinary { op, const_first, nhwc, c: v_c, hw }, v_c)
        } else if along_last {
            // in row-major order the channel of element i is i % C: the NHWC indexing
            let input = self.plain(x, &n.name)?;
            let output = self.define(n.out, Layout::Plain);
            let c = d[last];
            (input, output, RowKind::ChannelBinary { op, const_first, nhwc: true, c, hw: 1 }, c)
        } else {
            return host("the constant varies along more than the channel or the last axis");
        };
        let v: Vec<f32> = if kv.len() == 1 { vec![kv[0]; c] } else { kv };
        let len = numel(&n.oty);
        self.push_rows(&n.name, kind, input, output, len, 1, len.div_ceil(rowops::CHUNK), v, vec![]);
        Ok(())
    }

    /// The constant one of a broadcast step's operands `a`, `b`, if any.
    fn const_operand(&self, a: qforge_ir::Value, b: qforge_ir::Value) -> Option<qforge_ir::Value> {
        [a, b].into_iter().find(|&v| self.is_const(v))
    }

    /// The stored bytes of the constant one of `a`, `b` (an i8 in two's complement, a bool as 0
    /// or 1), empty when both are activations.
    fn const_operand_bytes(&self, a: qforge_ir::Value, b: qforge_ir::Value) -> Result<Vec<u8>, super::Skip> {
        match self.const_operand(a, b) {
            Some(k) => Ok(need(
                self.const_of(Some(k)).and_then(|t| t.to_i64_vec()).map(|x| x.into_iter().map(|q| q as u8).collect()),
                "the constant is not integer or bool",
            )?),
            None => Ok(vec![]),
        }
    }

    /// The buffers of a broadcast step's operands `a`, `b` (at most one a constant, whose data
    /// the step keeps): the activation, or `a` when both are, as the step's input, and `b` as
    /// its second input when both are activations; both in plain order.
    fn broadcast_inputs(
        &mut self,
        n: &At,
        a: qforge_ir::Value,
        b: qforge_ir::Value,
    ) -> Result<(usize, Option<usize>), super::Skip> {
        Ok(match (self.is_const(a), self.is_const(b)) {
            (true, _) => (self.plain(b, &n.name)?, None),
            (_, true) => (self.plain(a, &n.name)?, None),
            _ => (self.plain(a, &n.name)?, Some(self.plain(b, &n.name)?)),
        })
    }

    /// f32 add, sub, mul or div of two operands of any shapes that broadcast to the result's
    /// (numpy rules), at most one of them a constant; both read in plain order.
    pub(super) fn broadcast_binary(&mut self, n: &At, op: BinaryOp) -> Lw {
        let (a, b) = need(n.input(0).zip(n.input(1)), "an input is missing")?;
        let d = need(dims(&n.oty), "the result shape is not fixed")?;
        ensure(!d.is_empty(), "a scalar result")?;
        let (ca, cb) = (self.is_const(a), self.is_const(b));
        ensure(!(ca && cb), "both operands are constants")?;
        let strides =
            |v: qforge_ir::Value, this: &Self| dims(&this.types[&v]).and_then(|vd| broadcast_strides(&vd, &d));
        let (sa, sb) = need(strides(a, self).zip(strides(b, self)), "the operands do not broadcast")?;
        let scale = match self.const_operand(a, b) {
            Some(k) => {
                need(self.const_of(Some(k)).and_then(|t| t.as_f32().map(|x| x.to_vec())), "the constant is not f32")?
            }
            None => vec![],
        };
        let (input, input2) = self.broadcast_inputs(n, a, b)?;
        let output = self.define(n.out, Layout::Plain);
        let len = numel(&n.oty);
        let index = broadcast_index(&d, &sa, &sb);
        let kind = RowKind::BroadcastF32 { op, const_a: ca, const_b: cb };
        let op = RowOp { index, scale, ..RowOp::elementwise(kind, len) };
        self.push(&n.name, StepKind::Rows { op, input, input2, output, units: len.div_ceil(rowops::CHUNK) });
        Ok(())
    }

    /// f32 ReduceSum, ReduceMean or ReduceMax over constant axes (every axis when empty), with
    /// or without the kept dims (the bytes are the same).
    pub(super) fn reduce(&mut self, n: &At, axes: &[i64], kind: rowops::ReduceKind) -> Lw {
        let x = need(n.input(0).filter(|v| !self.is_const(*v)), "the input is a constant")?;
        ensure(self.types[&x].dtype == DType::F32 && n.oty.dtype == DType::F32, "not f32")?;
        let d = need(dims(&self.types[&x]), "a shape is not fixed")?;
        let r = d.len();
        ensure(r != 0 && numel(&n.oty) != 0 && d.iter().all(|&v| v != 0), "a scalar or empty tensor")?;
        let axes: Vec<usize> = if axes.is_empty() {
            (0..r).collect()
        } else {
            need(axes.iter().map(|&a| infer::norm_axis(a, r).ok()).collect::<Option<_>>(), "an axis is out of range")?
        };
        let mut st = vec![1usize; r];
        for a in (0..r - 1).rev() {
            st[a] = st[a + 1] * d[a + 1];
        }
        let (mut kept, mut kst, mut rd, mut rst) = (vec![1; r], vec![0; r], vec![1; r], vec![0; r]);
        for a in 0..r {
            if axes.contains(&a) {
                (rd[a], rst[a]) = (d[a], st[a]);
            } else {
                (kept[a], kst[a]) = (d[a], st[a]);
            }
        }
        let mut index = vec![r];
        index.extend(kept);
        index.extend(kst);
        index.extend(rd);
        index.extend(rst);
        let input = self.plain(x, &n.name)?;
        let output = self.define(n.out, Layout::Plain);
        let len = numel(&n.oty);
        let op = RowOp { index, ..RowOp::elementwise(RowKind::Reduce { kind }, len) };
        self.push(&n.name, StepKind::Rows { op, input, input2: None, output, units: len.div_ceil(rowops::CHUNK) });
        Ok(())
    }

    /// Quantized add (u8/i8 operands and result, per-tensor parameters) under general
    /// broadcasting, at most one operand a constant, with the interpreter's operand order for
    /// ONNX Runtime's kernel ([`qforge_ir::interp::quant::scalar_in_span`]).
    pub(super) fn broadcast_qadd(&mut self, n: &At) -> Lw {
        let (a, b) = need(n.input(0).zip(n.input(1)), "an input is missing")?;
        let d = need(dims(&n.oty), "the result shape is not fixed")?;
        ensure(!d.is_empty(), "a scalar result")?;
        let (ca, cb) = (self.is_const(a), self.is_const(b));
        ensure(!(ca && cb), "both operands are constants")?;
        let (ta, tb) = (self.types[&a].clone(), self.types[&b].clone());
        let (Some((sa, za)), Some((sb, zb)), Some((sc, zc))) =
            (per_tensor(&ta.quant), per_tensor(&tb.quant), per_tensor(&n.oty.quant))
        else {
            return host("an operand is not quantized per tensor");
        };
        let byte = |t: DType| matches!(t, DType::U8 | DType::I8);
        ensure(byte(ta.dtype) && byte(tb.dtype) && byte(n.oty.dtype), "an operand is not u8 or i8")?;
        let (da, db) = need(dims(&ta).zip(dims(&tb)), "a shape is not fixed")?;
        let (sta, stb) =
            need(broadcast_strides(&da, &d).zip(broadcast_strides(&db, &d)), "the operands do not broadcast")?;
        let swap = qforge_ir::interp::quant::scalar_in_span(&da, &d);
        let p = if swap {
            numerics::QAddParams::new(sb, zb, sa, za, sc, zc)
        } else {
            numerics::QAddParams::new(sa, za, sb, zb, sc, zc)
        };
        let lut = self.const_operand_bytes(a, b)?;
        let (input, input2) = self.broadcast_inputs(n, a, b)?;
        let output = self.define(n.out, Layout::Plain);
        let len = numel(&n.oty);
        let index = broadcast_index(&d, &sta, &stb);
        let kind = RowKind::BroadcastQAdd {
            p,
            swap,
            a_signed: ta.dtype == DType::I8,
            b_signed: tb.dtype == DType::I8,
            out: n.oty.dtype,
            const_a: ca,
            const_b: cb,
        };
        let op = RowOp { index, lut, ..RowOp::elementwise(kind, len) };
        self.push(&n.name, StepKind::Rows { op, input, input2, output, units: len.div_ceil(rowops::CHUNK) });
        Ok(())
    }

    /// Boolean and/or under broadcasting, at most one operand a constant.
    pub(super) fn broadcast_bool(&mut self, n: &At, op: BinaryOp) -> Lw {
        let (a, b) = need(n.input(0).zip(n.input(1)), "an input is missing")?;
        let d = need(dims(&n.oty), "the result shape is not fixed")?;
        ensure(!d.is_empty() && n.oty.dtype == DType::Bool, "a scalar or non-bool result")?;
        let (ca, cb) = (self.is_const(a), self.is_const(b));
        ensure(!(ca && cb), "both operands are constants")?;
        let (da, db) = need(dims(&self.types[&a]).zip(dims(&self.types[&b])), "a shape is not fixed")?;
        let (sta, stb) =
            need(broadcast_strides(&da, &d).zip(broadcast_strides(&db, &d)), "the operands do not broadcast")?;
        let lut = self.const_operand_bytes(a, b)?;
        let (input, input2) = self.broadcast_inputs(n, a, b)?;
        let output = self.define(n.out, Layout::Plain);
        let len = numel(&n.oty);
        let index = broadcast_index(&d, &sta, &stb);
        let op =
            RowOp { index, lut, ..RowOp::elementwise(RowKind::BroadcastBool { op, const_a: ca, const_b: cb }, len) };
        self.push(&n.name, StepKind::Rows { op, input, input2, output, units: len.div_ceil(rowops::CHUNK) });
        Ok(())
    }

    /// ONNX Where of a bool activation and two f32 operands under broadcasting (at most one of
    /// them an activation).
    pub(super) fn where_f32(&mut self, n: &At) -> Lw {
        let (c, a, b) = match (n.input(0), n.input(1), n.input(2)) {
            (Some(c), Some(a), Some(b)) => (c, a, b),
            _ => return host("an input is missing"),
        };
        let d = need(dims(&n.oty), "the result shape is not fixed")?;
        ensure(!d.is_empty() && n.oty.dtype == DType::F32, "a scalar or non-f32 result")?;
        ensure(!self.is_const(c) && self.types[&c].dtype == DType::Bool, "the condition is not a bool activation")?;
        let (ca, cb) = (self.is_const(a), self.is_const(b));
        ensure(ca || cb, "both values are activations")?;
        let st = |v: qforge_ir::Value, this: &Self| dims(&this.types[&v]).and_then(|vd| broadcast_strides(&vd, &d));
        let (sc, sa, sb) = match (st(c, self), st(a, self), st(b, self)) {
            (Some(x), Some(y), Some(z)) => (x, y, z),
            _ => return host("the operands do not broadcast"),
        };
        let konst =
            |v: qforge_ir::Value, this: &Self| this.const_of(Some(v)).and_then(|t| t.as_f32().map(|x| x.to_vec()));
        let scale = if ca { need(konst(a, self), "a value is not f32")? } else { vec![] };
        let bias = if cb { need(konst(b, self), "a value is not f32")? } else { vec![] };
        let input = self.plain(c, &n.name)?;
        let input2 = if !ca {
            Some(self.plain(a, &n.name)?)
        } else if !cb {
            Some(self.plain(b, &n.name)?)
        } else {
            None
        };
        let output = self.define(n.out, Layout::Plain);
        let len = numel(&n.oty);
        let mut index = d;
        index.extend(sc);
        index.extend(sa);
        index.extend(sb);
        let op =
            RowOp { index, scale, bias, ..RowOp::elementwise(RowKind::WhereF32 { const_a: ca, const_b: cb }, len) };
        self.push(&n.name, StepKind::Rows { op, input, input2, output, units: len.div_ceil(rowops::CHUNK) });
        Ok(())
    }

    /// f32 numpy matmul of two activations (batched, leading dims broadcast), computed as the
    /// interpreter does: one output row per unit.
    pub(super) fn matmul_f32(&mut self, n: &At) -> Lw {
        let (a, b) = need(n.input(0).zip(n.input(1)), "an input is missing")?;
        ensure(!self.is_const(a) && !self.is_const(b), "an operand is a constant")?;
        let (ta, tb) = (&self.types[&a], &self.types[&b]);
        ensure(ta.dtype == DType::F32 && tb.dtype == DType::F32 && n.oty.dtype == DType::F32, "an operand is not f32")?;
        let (da, db) = need(dims(ta).zip(dims(tb)), "a shape is not fixed")?;
        let bm = need(qforge_ir::interp::matmul::BatchedMatMul::of(&da, &db), "the operands do not multiply")?;
        ensure(bm.m != 0 && bm.n != 0, "an empty result")?;
        let index: Vec<usize> = bm.pairs.iter().flat_map(|&(oa, ob)| [oa, ob]).collect();
        let input = self.plain(a, &n.name)?;
        let other = self.plain(b, &n.name)?;
        let output = self.define(n.out, Layout::Plain);
        let units = bm.pairs.len() * bm.m;
        let op = RowOp { index, n: bm.n, ..RowOp::elementwise(RowKind::MatMulF32 { m: bm.m, k: bm.k }, 0) };
        self.push(&n.name, StepKind::Rows { op, input, input2: Some(other), output, units });
        Ok(())
    }

    /// f32 HardSigmoid, element-wise in the input's layout.
    pub(super) fn hard_sigmoid(&mut self, n: &At, alpha: f32, beta: f32) -> Lw {
        let x = need(n.input(0).filter(|v| !self.is_const(*v)), "the input is a constant")?;
        let layout = self.vals[&x].layout;
        let input = self.in_layout(x, layout, &n.name)?;
        let output = self.define(n.out, layout);
        let len = numel(&n.oty);
        let kind = RowKind::HardSigmoid { alpha, beta };
        self.push_rows(&n.name, kind, input, output, len, 1, len.div_ceil(rowops::CHUNK), vec![], vec![]);
        Ok(())
    }

    /// An f32 multiply of two activations of the result's shape, or of a 4-D tensor by a
    /// per-image, per-channel gate `[N, C, 1, 1]` (a squeeze-and-excitation block), in the
    /// tensor's layout.
    pub(super) fn gate_mul(&mut self, n: &At) -> Lw {
        let (a, b) = need(n.input(0).zip(n.input(1)), "an input is missing")?;
        ensure(!self.is_const(a) && !self.is_const(b), "an operand is a constant")?;
        let d = need(dims(&n.oty), "the result shape is not fixed")?;
        if self.types[&a].shape == n.oty.shape && self.types[&b].shape == n.oty.shape {
            // same shapes (SiLU's `x * sigmoid(x)`): element by element, both in `a`'s layout
            let layout = self.vals[&a].layout;
            let input = self.in_layout(a, layout, &n.name)?;
            let other = self.in_layout(b, layout, &n.name)?;
            let output = self.define(n.out, layout);
            let len = numel(&n.oty);
            let op = RowOp::elementwise(RowKind::MulF32, len);
            let units = len.div_ceil(rowops::CHUNK);
            self.push(&n.name, StepKind::Rows { op, input, input2: Some(other), output, units });
            return Ok(());
        }
        ensure(d.len() == 4, "a result of rank other than 4")?;
        let gate_shape = [d[0], d[1], 1, 1];
        let (x, g) = match (dims(&self.types[&a]), dims(&self.types[&b])) {
            (Some(da), Some(db)) if da == d && db == gate_shape => (a, b),
            (Some(da), Some(db)) if db == d && da == gate_shape => (b, a),
            _ => return host("not a tensor times a [N, C, 1, 1] gate"),
        };
        let layout = self.vals[&x].layout;
        let input = self.in_layout(x, layout, &n.name)?;
        // a [N, C, 1, 1] gate has one byte order in both layouts
        let gate = self.plain(g, &n.name)?;
        let output = self.define(n.out, layout);
        let len = numel(&n.oty);
        let kind = RowKind::GateMul { nhwc: layout == Layout::Nhwc, c: d[1], hw: d[2] * d[3] };
        let op = RowOp::elementwise(kind, len);
        let units = len.div_ceil(rowops::CHUNK);
        self.push(&n.name, StepKind::Rows { op, input, input2: Some(gate), output, units });
        Ok(())
    }

    /// A row step of `kind` over `units` (offsets are filled in when the arena is planned).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn push_rows(
        &mut self,
        name: &str,
        kind: RowKind,
        input: usize,
        output: usize,
        n: usize,
        inner: usize,
        units: usize,
        scale: Vec<f32>,
        bias: Vec<f32>,
    ) {
        let op = RowOp { n, inner, scale, bias, ..RowOp::elementwise(kind, 0) };
        self.push(name, StepKind::Rows { op, input, input2: None, output, units });
    }
}

/// The index of a broadcast step (the result's dims, then each operand's strides) with
/// neighbouring axes merged where both operands walk them as one (the outer axis's stride is
/// the inner's times the inner size, for each operand: contiguous, or broadcast on both) and
/// axes of size 1 dropped: the same offsets for every output element, and runs along the last
/// axis as long as the layout allows (a bias over `[heads, 16, 16]` added to `[windows, heads,
/// 16, 16]` runs `heads * 256` elements at a time rather than 16).
fn broadcast_index(d: &[usize], sa: &[usize], sb: &[usize]) -> Vec<usize> {
    let mut axes: Vec<(usize, usize, usize)> = vec![];
    for ((&n, &a), &b) in d.iter().zip(sa).zip(sb) {
        if n == 1 {
            continue;
        }
        match axes.last_mut() {
            Some(outer) if outer.1 == a * n && outer.2 == b * n => *outer = (outer.0 * n, a, b),
            _ => axes.push((n, a, b)),
        }
    }
    if axes.is_empty() {
        axes.push((1, 0, 0));
    }
    let (dims, (a, b)): (Vec<usize>, (Vec<usize>, Vec<usize>)) = axes.into_iter().map(|(n, a, b)| (n, (a, b))).unzip();
    [dims, a, b].concat()
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{check_family, Case};
    use super::broadcast_index;

    const CASES: &[Case] = &[
        Case {
            name: "softmax over the last axis and log-softmax over axis 1",
            shapes: &[&[2, 3, 4]],
            qir: r#"graph r(%x: f32[N,3,4]) -> (a: f32[N,3,4], b: f32[N,3,4]) {
  %0 = softmax %x {axis=-1} : f32[N,3,4]  # "softmax"
  %1 = log_softmax %x {axis=1} : f32[N,3,4]  # "log_softmax"
  return %0, %1
}"#,
        },
        Case {
            name: "layer norm with and without bias; a non-constant scale runs on the host",
            shapes: &[&[2, 4], &[4]],
            qir: r#"graph r(%x: f32[N,4], %s: f32[4]) -> (a: f32[N,4], b: f32[N,4], c: f32[N,4]) {
  %0 = const f32[4] = [1.0, 0.5, 2.0, 1.5]  # "ln.scale"
  %1 = const f32[4] = [0.0, 0.1, -0.1, 0.2]  # "ln.bias"
  %2 = layer_norm %x, %0, %1 {axis=-1, epsilon=1e-5} : f32[N,4]  # "ln"
  %3 = layer_norm %x, %0 {axis=1, epsilon=1e-5} : f32[N,4]  # "ln_nobias"
  %4 = layer_norm %x, %s {axis=-1, epsilon=1e-5} : f32[N,4]  # "ln_input_scale"
  return %2, %3, %4
}"#,
        },
        Case {
            name: "per-channel constants on NHWC and plain tensors, a last-axis bias; a constant along H on the host",
            shapes: &[&[1, 2, 4, 4], &[3, 3]],
            qir: r#"graph r(%x: f32[N,2,4,4], %y: f32[N,3]) -> (a: f32[N,2,2,2], b: f32[N,2,4,4], c: f32[N,3], d: f32[N,2,4,4]) {
  %0 = max_pool %x {kernel=[2,2], strides=[2,2], pads=[0,0,0,0], dilations=[1,1], ceil_mode=false, count_include_pad=false} : f32[N,2,2,2]  # "pool"
  %1 = const f32[2,1,1] = [2.0, 0.5]  # "scale"
  %2 = mul %0, %1 : f32[N,2,2,2]  # "mul_nhwc"
  %3 = sub %1, %x : f32[N,2,4,4]  # "sub_plain"
  %4 = const f32[3] = [0.1, 0.2, 0.3]  # "bias"
  %5 = add %y, %4 : f32[N,3]  # "add_last"
  %6 = const f32[4,1] = [1.0, 2.0, 3.0, 4.0]  # "rows"
  %7 = div %x, %6 : f32[N,2,4,4]  # "div_rows"
  return %2, %3, %5, %7
}"#,
        },
        Case {
            name: "hard sigmoid, a squeeze-and-excitation gate and SiLU's product in NHWC",
            shapes: &[&[1, 3, 4, 4]],
            qir: r#"graph r(%x: f32[N,3,4,4]) -> (a: f32[N,2,4,4], b: f32[N,2,4,4]) {
  %0 = const f32[2,3,1,1] = [0.5, -0.25, 1.0, 0.75, 0.25, -0.5]  # "w"
  %1 = conv %x, %0 {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=1} : f32[N,2,4,4]  # "conv"
  %2 = global_average_pool %1 : f32[N,2,1,1]  # "pool"
  %3 = hard_sigmoid %2 {alpha=0.2, beta=0.5} : f32[N,2,1,1]  # "gate"
  %4 = mul %3, %1 : f32[N,2,4,4]  # "se"
  %5 = sigmoid %1 : f32[N,2,4,4]  # "sigmoid"
  %6 = mul %1, %5 : f32[N,2,4,4]  # "silu"
  return %4, %6
}"#,
        },
        Case {
            name: "broadcast arithmetic with a constant on either side and between activations; a batched matmul",
            shapes: &[&[1, 2, 3, 4], &[1, 1, 4, 3]],
            qir: r#"graph b(%x: f32[N,2,3,4], %y: f32[N,1,4,3]) -> (a: f32[N,2,3,4], b: f32[N,2,3,4], m: f32[N,2,3,3]) {
  %0 = const f32[2,1,4] = [1.0, 2.0, 3.0, 4.0, -1.0, -2.0, -3.0, -4.0]  # "k"
  %1 = sub %0, %x : f32[N,2,3,4]  # "sub_const_first"
  %2 = reduce_max %x {axes=[1], keepdims=true} : f32[N,1,3,4]  # "max"
  %3 = div %1, %2 : f32[N,2,3,4]  # "div_activations"
  %4 = matmul %x, %y : f32[N,2,3,3]  # "matmul"
  return %1, %3, %4
}"#,
        },
        Case {
            name: "transposes of f32 and u8",
            shapes: &[&[2, 3, 4], &[2, 3]],
            qir: r#"graph r(%x: f32[N,3,4], %q: u8<0.1:3>[N,3]) -> (a: f32[4,N,3], b: u8<0.1:3>[3,N]) {
  %0 = transpose %x {perm=[2,0,1]} : f32[4,N,3]  # "t3"
  %1 = transpose %q {perm=[1,0]} : u8<0.1:3>[3,N]  # "t2"
  return %0, %1
}"#,
        },
    ];

    #[test]
    fn rows_family_lowering() {
        check_family("rows", CASES);
    }

    /// Merged axes give every output element the offsets the full index gives.
    #[test]
    fn merged_axes_keep_every_offset() {
        let offsets = |index: &[usize]| {
            let r = index.len() / 3;
            let (d, sa, sb) = (&index[..r], &index[r..2 * r], &index[2 * r..]);
            let n: usize = d.iter().product();
            (0..n)
                .map(|mut o| {
                    let (mut a, mut b) = (0, 0);
                    for ax in (0..r).rev() {
                        a += o % d[ax] * sa[ax];
                        b += o % d[ax] * sb[ax];
                        o /= d[ax];
                    }
                    (a, b)
                })
                .collect::<Vec<_>>()
        };
        let cases: [(&[usize], &[usize], &[usize]); 5] = [
            // a bias over the last three axes: one axis of 2 * 16 * 16 for the bias
            (&[4, 2, 16, 16], &[512, 256, 16, 1], &[0, 256, 16, 1]),
            // a mask broadcast over heads: nothing merges across the broadcast axis
            (&[4, 2, 16, 16], &[512, 256, 16, 1], &[256, 0, 16, 1]),
            // size-1 axes and a scalar operand
            (&[1, 3, 1, 5], &[15, 5, 5, 1], &[0, 0, 0, 0]),
            // a channel vector of a channels-first tensor
            (&[2, 3, 4, 4], &[48, 16, 4, 1], &[0, 1, 0, 0]),
            (&[1, 1], &[1, 1], &[0, 0]),
        ];
        for (d, sa, sb) in cases {
            let full = [d, sa, sb].concat();
            let merged = broadcast_index(d, sa, sb);
            assert_eq!(offsets(&merged), offsets(&full), "{d:?} {sa:?} {sb:?} -> {merged:?}");
        }
        assert_eq!(broadcast_index(&[4, 2, 16, 16], &[512, 256, 16, 1], &[0, 256, 16, 1]), [4, 512, 512, 1, 0, 1]);
    }
}
