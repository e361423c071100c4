//! Dynamic quantization chains as one step: `q, s, z = dynamic_quantize(x)`, `acc =
//! matmul_integer(q, W, z, 0)` (or `conv_integer`, one group) with a constant i8 `W`, `f =
//! cast(acc, f32)`, `sp = mul(s, ws)` with a constant weight scale (one, or one per output
//! column or channel) and `y = mul(f, sp)`, each intermediate used only by the next, become one
//! [`RowKind::DynamicMatMul`] or [`RowKind::DynamicConv`] step ([`crate::micro::dynamic`]) from
//! `x` to `y` (a convolution's result in NHWC). A matrix product's chain also takes in the add of
//! a constant bias vector along the last axis that follows it (a linear layer's bias).

use super::{dims, ensure, need, numel, Layout, Lowerer, Lw, StepKind};
use crate::micro::dynamic::{DynamicConv, DynamicMatMul};
use crate::micro::rowops::{RowKind, RowOp};
use crate::micro::{self};
use crate::JitError;
use qforge_ir::{Allocation, BinaryOp, DType, NodeId, Op, Value};
use std::sync::Arc;

/// The longest reduction whose sums of `(q - z) * w` cannot leave i32: `255 * 128 * k < 2^31`
/// (the interpreter sums in i64; longer ones are lowered op by op).
const MAX_K: usize = 65_000;

impl Lowerer<'_> {
    /// The rest of the dynamic quantization chain that starts at the `dynamic_quantize` node
    /// `id`, in an order the graph allows (`matmul_integer`, `cast`, the scale product, the
    /// final multiply), or `None` when the nodes do not form one.
    pub(super) fn dynamic_chain(&self, id: NodeId) -> Option<Vec<NodeId>> {
        let g = self.g;
        if !matches!(g.node(id).op, Op::DynamicQuantize) {
            return None;
        }
        let (q, s, z) = (Value::new(id, 0), Value::new(id, 1), Value::new(id, 2));
        let mmi = self.only_user(q)?;
        let mn = g.node(mmi);
        let ins = mn.inputs();
        let b_is_const = ins.get(1).copied().flatten().is_some_and(|v| self.is_const(v));
        if !matches!(mn.op, Op::MatMulInteger | Op::ConvInteger(_))
            || ins.first().copied().flatten() != Some(q)
            || ins.get(2).copied().flatten() != Some(z)
            || self.only_user(z) != Some(mmi)
            || !b_is_const
        {
            return None;
        }
        let cast = self.only_user(Value::new(mmi, 0))?;
        if !matches!(g.node(cast).op, Op::Cast { to: DType::F32 }) {
            return None;
        }
        let scale_mul = self.only_user(s)?;
        let sn = g.node(scale_mul);
        let scale_ins: Vec<Value> = sn.inputs().iter().flatten().copied().collect();
        let other = scale_ins.iter().find(|&&v| v != s).copied();
        if !matches!(sn.op, Op::Binary(BinaryOp::Mul))
            || scale_ins.len() != 2
            || !other.is_some_and(|v| self.is_const(v))
        {
            return None;
        }
        let last = self.only_user(Value::new(cast, 0))?;
        if self.only_user(Value::new(scale_mul, 0)) != Some(last) {
            return None;
        }
        let ln = g.node(last);
        let li: Vec<Value> = ln.inputs().iter().flatten().copied().collect();
        let operands_are_the_chain =
            li.len() == 2 && li.contains(&Value::new(cast, 0)) && li.contains(&Value::new(scale_mul, 0));
        if !matches!(ln.op, Op::Binary(BinaryOp::Mul)) || !operands_are_the_chain {
            return None;
        }
        let mut chain = vec![mmi, cast, scale_mul, last];
        if matches!(mn.op, Op::MatMulInteger) {
            chain.extend(self.bias_add(Value::new(last, 0)));
        }
        Some(chain)
    }

    /// The only user of `v` when it adds a constant f32 vector along `v`'s last axis (a linear
    /// layer's bias, one value per column, no NaN) and keeps `v`'s shape.
    fn bias_add(&self, v: Value) -> Option<NodeId> {
        let add = self.only_user(v)?;
        let an = self.g.node(add);
        let ins: Vec<Value> = an.inputs().iter().flatten().copied().collect();
        let [a, b] = ins[..] else { return None };
        let bias = if a == v { b } else { a };
        let n = *dims(&self.types[&v])?.last()?;
        let t = self.const_of(Some(bias))?;
        let along_last = t.shape().last() == Some(&n) && t.shape().iter().rev().skip(1).all(|&d| d == 1);
        let ok = matches!(an.op, Op::Binary(BinaryOp::Add))
            && (a == v) != (b == v)
            && along_last
            && t.as_f32().is_some_and(|x| !x.iter().any(|b| b.is_nan()))
            && self.types[&Value::new(add, 0)] == self.types[&v];
        ok.then_some(add)
    }

    /// The chain from `dynamic_quantize` node `id` through `chain` ([`Self::dynamic_chain`]) as
    /// one step; if no kernel covers it, its nodes are lowered one by one.
    pub(super) fn lower_dynamic_chain(&mut self, id: NodeId, chain: &[NodeId]) -> Result<(), JitError> {
        let fused = self.dynamic_matmul(id, chain);
        self.group_or_nodes(fused, id, chain)
    }

    fn dynamic_matmul(&mut self, id: NodeId, chain: &[NodeId]) -> Lw {
        let [mmi, _cast, scale_mul, _, ref bias_add @ ..] = chain[..] else {
            return super::host("not a dynamic quantization chain");
        };
        let last = *need(chain.last(), "not a dynamic quantization chain")?;
        let g = self.g;
        let x = need(g.node(id).inputs().first().copied().flatten(), "the input is missing")?;
        ensure(!self.is_const(x) && self.types[&x].dtype == DType::F32, "the input is not an f32 activation")?;
        let xd = need(dims(&self.types[&x]), "a shape is not fixed")?;
        let mins = g.node(mmi).inputs();
        let w = need(self.const_of(mins.get(1).copied().flatten()), "the weights are not a constant")?;
        ensure(w.dtype() == DType::I8, "the weights are not i8")?;
        if let Some(wz) = mins.get(3).copied().flatten() {
            let zv =
                need(self.const_of(Some(wz)).and_then(|t| t.to_i64_vec()), "the weight zero point is not constant")?;
            ensure(zv.iter().all(|&v| v == 0), "a weight zero point is not 0")?;
        }
        let s = Value::new(id, 1);
        let ws_v = g.node(scale_mul).inputs().iter().flatten().copied().find(|&v| v != s);
        let ws = need(self.const_of(ws_v).and_then(|t| t.as_f32().map(|v| v.to_vec())), "the weight scale is not f32")?;
        let ws_shape = self.const_of(ws_v).map(|t| t.shape().to_vec()).unwrap_or_default();
        let out = Value::new(last, 0);
        let od = need(dims(&self.types[&out]), "the result shape is not fixed")?;
        let name = g.node(mmi).name.clone();
        let mut label = g.node(id).name.clone();
        for &c in chain {
            label.push('+');
            label.push_str(&g.node(c).name);
        }
        let pack_failed = |bytes: u128| {
            let what = format!("node `{name}`: packed weights");
            move |_| super::Skip::Fail(JitError::Alloc { what, bytes: usize::try_from(bytes).unwrap_or(usize::MAX) })
        };
        let data = need(super::conv::i8_data(&w), "the weight data are not i8")?;
        if let Op::ConvInteger(conv) = &g.node(mmi).op {
            // one group, 2-D, NCHW in and the result's channel the GEMM's column
            let wd = w.shape().to_vec();
            ensure(
                wd.len() == 4 && conv.group == 1 && xd.len() == 4 && od.len() == 4,
                "not a 2-D convolution of one group",
            )?;
            let (cout, cin, kh, kw) = (wd[0], wd[1], wd[2], wd[3]);
            ensure(xd[1] == cin && od[1] == cout, "the channels do not fit the weights")?;
            let geom = need(super::conv::conv_geom(conv, &xd, &od, cin), "not a 2-D convolution")?;
            // one scale, or one per output channel broadcast over the image ([C, 1, 1])
            let trimmed: Vec<usize> = ws_shape.iter().copied().skip_while(|&d| d == 1).collect();
            let per_channel = ws.len() == cout && (trimmed == [cout, 1, 1] || (cout == 1 && ws_shape.len() <= 3));
            ensure(ws.len() == 1 || per_channel, "the weight scale is not one value or one per output channel")?;
            let k = kh * kw * cin;
            ensure(k <= MAX_K, "the reduction is too long for i32 sums")?;
            let bytes = micro::int8::packed_bytes(cout, k);
            self.check_size(&name, Allocation::PackedWeights, bytes)?;
            let wk = super::conv::to_ohwi(data, 0..cout, cin, kh, kw).map_err(pack_failed(bytes))?;
            let weights = micro::int8::pack_weights_i8(&wk, cout, k).map_err(pack_failed(bytes))?;
            let d = DynamicConv { images: xd[0], geom, weights, w_scale: ws };
            let input = self.plain(x, &g.node(id).name)?;
            let output = self.define(out, Layout::Nhwc);
            let op = RowOp { n: cout, dynamic_conv: Some(Arc::new(d)), ..RowOp::elementwise(RowKind::DynamicConv, 0) };
            let units = (od[0] * od[2] * od[3]).div_ceil(micro::dynamic::ROWS);
            self.push(&label, StepKind::Rows { op, input, input2: None, output, units });
            return Ok(());
        }
        ensure(w.shape().len() == 2, "the weights are not a matrix")?;
        let (k, n) = (w.shape()[0], w.shape()[1]);
        ensure(xd.last() == Some(&k), "the inner dimensions differ")?;
        ensure(k <= MAX_K, "the reduction is too long for i32 sums")?;
        let m: usize = xd[..xd.len() - 1].iter().product();
        ensure(numel(&self.types[&out]) == m * n && od.last() == Some(&n), "the result is not the product's shape")?;
        let per_column = ws.len() == n && ws_shape.last() == Some(&n) && ws_shape.iter().rev().skip(1).all(|&d| d == 1);
        ensure(ws.len() == 1 || per_column, "the weight scale is not one value or one per column")?;
        let bytes = micro::int8::packed_bytes(n, k);
        self.check_size(&name, Allocation::PackedWeights, bytes)?;
        let weights = micro::int8::pack_weights_i8_kn(data, k, n).map_err(pack_failed(bytes))?;
        // the bias add's constant: `v + b` and `b + v` are the same value (a NaN in `v` comes
        // out whichever side it is on; the bias has none)
        let bias = match bias_add {
            [add] => {
                let v = Value::new(chain[3], 0);
                let b = g.node(*add).inputs().iter().flatten().copied().find(|&u| u != v);
                need(self.const_of(b).and_then(|t| t.as_f32().map(|x| x.to_vec())), "the bias is not f32")?
            }
            _ => vec![],
        };
        let d = DynamicMatMul { m, k, n, weights, w_scale: ws, bias };
        let input = self.plain(x, &g.node(id).name)?;
        let output = self.define(out, Layout::Plain);
        let op = RowOp { n, dynamic: Some(Arc::new(d)), ..RowOp::elementwise(RowKind::DynamicMatMul, 0) };
        self.push(&label, StepKind::Rows { op, input, input2: None, output, units: m.div_ceil(micro::dynamic::ROWS) });
        Ok(())
    }
}
