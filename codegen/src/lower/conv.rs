//! Convolutions, GEMMs and matrix products as fused kernels ([`KernelSpec`]) over packed
//! weights: float convolutions (grouped, depthwise, 1x1 direct) with what they absorb (bias,
//! ReLU, Clip, hard-swish, per-channel constants, a residual add), quantized convolutions and
//! GEMMs with their requantizing or dequantizing epilogue (a convolution also with the float ops
//! and the quantize after a dequantization, and a byte table after its rounding), and float
//! GEMMs and matrix products with a constant right operand.
//!
//! Quantized kernels compute `sum (x - zx) * w` as `sum x * w - zx * colsum(w)`: the u8 x i8
//! GEMM runs on the stored bytes and the zero-point correction joins the bias in the first
//! epilogue step (i8 activations become u8 with zero point + 128 by flipping the sign bit as
//! rows are gathered).

use super::tables::TableRegion;
use super::{dims, ensure, host, int_ty, need, per_tensor, window_geom, At, Layout, Lowerer, Lw, Skip, StepKind};
use crate::emit::elementwise::IntTy;
use crate::micro::rowops::{RowKind, RowOp};
use crate::micro::{self, ConvGeom};
use crate::reuse;
use crate::spec::{mark_bounded, KernelSpec, MainOp, Rows, Step, Store};
use crate::JitError;
use qforge_ir::{
    numerics, Allocation, BinaryOp, ConvAttrs, DType, Epilogue, NodeId, Op, QuantParams, Tensor, TensorType,
};
use qforge_ir::{UnaryOp, Value};
use std::collections::{HashMap, HashSet, TryReserveError};
use std::sync::Arc;

/// A failed allocation of `bytes` for node `name`'s `what`, as an error.
fn alloc_failed(name: &str, what: &str, bytes: u128) -> impl FnOnce(TryReserveError) -> JitError {
    let what = format!("node `{name}`: {what}");
    move |_| JitError::Alloc { what, bytes: usize::try_from(bytes).unwrap_or(usize::MAX) }
}

/// Conv attributes as a [`ConvGeom`] for an NCHW input `d` and output `od`.
pub(super) fn conv_geom(a: &ConvAttrs, d: &[usize], od: &[usize], cin: usize) -> Option<ConvGeom> {
    window_geom(&a.kernel, &a.strides, &a.pads, &a.dilations, d, od, cin)
}

/// Whether a constant of dims `kd`, broadcast against a 4-D NCHW value of `c` channels, varies
/// along the channel axis only (right-aligned: every axis but axis 1 is 1).
fn along_channels(kd: &[usize], c: usize) -> bool {
    kd.len() <= 4 && kd.iter().enumerate().all(|(i, &m)| m == 1 || (i + 4 - kd.len() == 1 && m == c))
}

/// The quantized add of an activation and a constant a kernel can end with as a byte table: its
/// parameters, the constant's values (one, or one per channel) and the operand types.
pub(super) struct QAddConst {
    p: numerics::QAddParams,
    values: Vec<i64>,
    x: DType,
    out: DType,
}

impl QAddConst {
    /// The tables (entry `b` of table `c`: the result's byte for the activation's byte `b`) and
    /// whether there is one per channel.
    fn table(&self) -> (Vec<u8>, bool) {
        (super::elementwise::qadd_lut(&self.p, &self.values, self.x, self.out), self.values.len() > 1)
    }
}

/// The nodes absorbed into float convolutions, and the groups: last node -> (conv, chain).
pub(super) type FusionGroups = (HashSet<NodeId>, HashMap<NodeId, (NodeId, Vec<NodeId>)>);

/// Records the fusion group of `id` and `chain` (none when `chain` is empty): `id` and every
/// node of `chain` but the last, where the group runs, are absorbed.
fn claim(
    absorbed: &mut HashSet<NodeId>,
    groups: &mut HashMap<NodeId, (NodeId, Vec<NodeId>)>,
    id: NodeId,
    chain: Vec<NodeId>,
) {
    if let Some(&last) = chain.last() {
        absorbed.insert(id);
        absorbed.extend(chain[..chain.len() - 1].iter().copied());
        groups.insert(last, (id, chain));
    }
}

impl Lowerer<'_> {
    /// Fusion groups of float and quantized convolutions and of float matrix products with a
    /// constant right operand over the schedule `order`: each with the chain of nodes it
    /// absorbs, keyed by the chain's last node (where the group runs). The nodes of `tables`
    /// (the byte tables' regions, claimed before) join no group, but for a region a quantized
    /// convolution absorbs whole as a byte function of its result ([`Self::byte_function`]):
    /// those regions' roots are returned too.
    pub(super) fn fusion_groups(
        &self,
        order: &[NodeId],
        tables: &HashMap<NodeId, TableRegion>,
    ) -> (FusionGroups, Vec<NodeId>) {
        let taken: HashSet<NodeId> = tables.values().flat_map(|r| r.nodes.iter().copied()).collect();
        // the regions by their source value (where two read one value, neither can be absorbed:
        // `byte_function` wants every reader of the value inside the region)
        let by_src: HashMap<Value, &TableRegion> = tables.values().map(|r| (r.src, r)).collect();
        let mut fused = Vec::new();
        let mut absorbed: HashSet<NodeId> = taken.clone();
        let mut groups: HashMap<NodeId, (NodeId, Vec<NodeId>)> = HashMap::new();
        for &id in order {
            if taken.contains(&id) {
                continue;
            }
            let main = match &self.g.node(id).op {
                Op::Conv(_) | Op::QConv { .. } => true,
                Op::MatMul | Op::Gemm { trans_a: false, .. } => self.is_const_input(id, 1),
                _ => false,
            };
            // a GELU's and a dynamic quantization chain's nodes are their own (each used once)
            let gelu = self.gelu_chain(id).filter(|c| !c.iter().any(|n| absorbed.contains(n)));
            if let Some(chain) = gelu.or_else(|| self.dynamic_chain(id)) {
                claim(&mut absorbed, &mut groups, id, chain);
                continue;
            }
            if main {
                // A node joins at most one group (a residual add is claimed by the first of its
                // two producers in schedule order).
                let quantized = matches!(self.g.node(id).op, Op::QConv { .. });
                // a quantized convolution: the float ops after a dequantizing one and a quantize
                let mut chain =
                    if quantized { self.quantized_chain(id, self.float_chain(id)) } else { self.float_chain(id) };
                if let Some(p) = chain.iter().position(|c| absorbed.contains(c) || groups.contains_key(c)) {
                    chain.truncate(p);
                }
                if quantized {
                    // a byte result: a function of the byte after it (a table)
                    let result = match chain.last() {
                        Some(&last) => Value::new(last, 0),
                        None => Value::new(id, 0),
                    };
                    let byte = self.ty(result).is_some_and(|t| int_ty(t.dtype).is_some());
                    if let Some((nodes, region)) = self.byte_function(result, &by_src).filter(|_| byte) {
                        let free = nodes.iter().all(|n| !groups.contains_key(n))
                            && (region || nodes.iter().all(|n| !absorbed.contains(n)));
                        if free {
                            if region {
                                fused.extend(nodes.last().copied());
                            }
                            chain.extend(nodes);
                        }
                    }
                }
                claim(&mut absorbed, &mut groups, id, chain);
            }
        }
        absorbed.retain(|n| !taken.contains(n));
        ((absorbed, groups), fused)
    }

    /// Whether input `i` of node `id` is a constant.
    pub(super) fn is_const_input(&self, id: NodeId, i: usize) -> bool {
        self.g.node(id).inputs().get(i).copied().flatten().is_some_and(|v| self.is_const(v))
    }

    /// The f32 values of `k`, one per column, when it is a constant that `cur` is combined with
    /// along the last axis only (`[.., C] + [C]`, a linear layer's bias).
    fn last_axis_const(&self, k: Value, cur: Value) -> Option<Vec<f32>> {
        let d = dims(self.ty(cur)?)?;
        let kt = self.const_of(Some(k))?;
        let kd = kt.shape();
        let cols = *d.last()?;
        let along = kd.len() <= d.len() && kd.iter().rev().skip(1).all(|&m| m == 1);
        let n = kd.last().copied().unwrap_or(1);
        if !along || (n != cols && n != 1) || kt.dtype() != DType::F32 {
            return None;
        }
        let v = kt.as_f32()?.to_vec();
        Some(if v.len() == 1 { vec![v[0]; cols] } else { v })
    }

    /// The f32 values of `k`, one per output channel of the kernel producing `cur`, when `k` is
    /// a constant combined with `cur` along that channel only (or one value for all): the last
    /// axis of a matrix product's result, axis 1 of a convolution's NCHW one.
    fn channel_const(&self, k: Value, cur: Value, matmul: bool) -> Option<Vec<f32>> {
        if matmul {
            return self.last_axis_const(k, cur);
        }
        let d = dims(self.ty(cur)?)?;
        let kt = self.const_of(Some(k))?;
        if d.len() != 4 || kt.dtype() != DType::F32 || !along_channels(kt.shape(), d[1]) {
            return None;
        }
        let v = kt.as_f32()?.to_vec();
        if v.len() != 1 && v.len() != d[1] {
            return None;
        }
        Some(if v.len() == 1 { vec![v[0]; d[1]] } else { v })
    }

    /// The SiLU of the f32 value `v`, `mul(v, sigmoid(v))` in either operand order, when the
    /// sigmoid and the product are `v`'s only readers and the sigmoid is read by the product
    /// only: the sigmoid's node and the product's.
    fn silu_at(&self, v: Value) -> Option<(NodeId, NodeId)> {
        if self.outputs.contains(&v) || self.users.get(&v).copied() != Some(2) || self.ty(v)?.dtype != DType::F32 {
            return None;
        }
        let users = self.g.value_users(v);
        let s = users.iter().map(|u| u.0).find(|&u| matches!(self.g.node(u).op, Op::Unary(UnaryOp::Sigmoid)))?;
        let m = self.only_user(Value::new(s, 0))?;
        let n = self.g.node(m);
        let ins: Vec<Value> = n.inputs().iter().flatten().copied().collect();
        let pair = ins.len() == 2 && ins.contains(&v) && ins.contains(&Value::new(s, 0));
        let same = self
            .ty(Value::new(m, 0))
            .is_some_and(|t| t.dtype == DType::F32 && Some(&t.shape) == self.ty(v).map(|t| &t.shape));
        (matches!(n.op, Op::Binary(BinaryOp::Mul)) && pair && same && users.iter().any(|u| u.0 == m)).then_some((s, m))
    }

    /// When `u` is a cast of an f32 value to f16 or bf16 whose only reader casts it back to f32,
    /// that reader: the pair is a rounding to the low type kept in f32 (widening is exact).
    fn round_trip(&self, u: NodeId) -> Option<NodeId> {
        let n = self.g.node(u);
        let Op::Cast { to: DType::F16 | DType::BF16 } = n.op else { return None };
        let x = n.inputs().first().copied().flatten()?;
        if self.ty(x)?.dtype != DType::F32 {
            return None;
        }
        let back = self.only_user(Value::new(u, 0))?;
        matches!(self.g.node(back).op, Op::Cast { to: DType::F32 }).then_some(back)
    }

    /// The nodes a float conv or matrix product at `id` absorbs (empty: none; the last one is
    /// where it runs): ReLU, Clip, one residual add of the result's shape, and for an f32 kernel
    /// hard-swish, constants added or multiplied along the output channel (a matrix product's
    /// bias; a learnable affine's scale and shift) and the f16/bf16 roundings of the widening
    /// pass read back as f32 ([`Self::round_trip`]).
    fn float_chain(&self, id: NodeId) -> Vec<NodeId> {
        let mut chain = Vec::new();
        let mut cur = Value::new(id, 0);
        let Some(ty) = self.ty(cur) else { return chain };
        let matmul = !matches!(self.g.node(id).op, Op::Conv(_) | Op::QConv { .. });
        // a bf16 conv (the bf16 GEMM) absorbs ops of its own type: a residual add (after rounding
        // the conv's result), ReLU and Clip (which round to the same value before or after them)
        let bf16 = ty.dtype == DType::BF16;
        let dtype = ty.dtype;
        let bf16_conv = bf16 && !matmul;
        if ty.dtype != DType::F32 && !bf16_conv {
            return chain;
        }
        let mut residual = false;
        loop {
            // a SiLU: the value's sigmoid and the product of the two, its only readers
            if let Some((s, m)) = self.silu_at(cur).filter(|_| dtype == DType::F32) {
                chain.push(s);
                chain.push(m);
                cur = Value::new(m, 0);
                continue;
            }
            let Some(u) = self.only_user(cur) else { break };
            let n = self.g.node(u);
            // an f16/bf16 rounding read back only as f32 (the widening pass's rounding of an op's
            // result and the next op's widening): a rounding step, the value staying f32
            if let Some(back) = self.round_trip(u).filter(|_| dtype == DType::F32) {
                chain.push(u);
                chain.push(back);
                cur = Value::new(back, 0);
                continue;
            }
            if n.outputs.first().map(|t| t.dtype) != Some(ty.dtype) {
                break;
            }
            let same_shape = self.ty(Value::new(u, 0)).map(|t| &t.shape) == self.ty(cur).map(|t| &t.shape);
            let f32_only = dtype == DType::F32;
            let ok = match &n.op {
                Op::Unary(UnaryOp::Relu) | Op::Clip { .. } => true,
                Op::Unary(UnaryOp::HardSwish) => f32_only,
                Op::Binary(BinaryOp::Mul) => {
                    let ins = n.inputs();
                    let other = if ins.first().copied().flatten() == Some(cur) { ins.get(1) } else { ins.first() };
                    match other.copied().flatten() {
                        Some(o) if o != cur && self.is_const(o) => {
                            f32_only && same_shape && self.channel_const(o, cur, matmul).is_some()
                        }
                        _ => false,
                    }
                }
                Op::Binary(BinaryOp::Add) => {
                    let ins = n.inputs();
                    let other = if ins.first().copied().flatten() == Some(cur) { ins.get(1) } else { ins.first() };
                    match other.copied().flatten() {
                        Some(o) if self.is_const(o) => {
                            // a bf16 kernel takes only a matrix product's bias (before rounding)
                            (f32_only || (matmul && chain.is_empty()))
                                && same_shape
                                && self.channel_const(o, cur, matmul).is_some()
                        }
                        Some(o) if o != cur && !residual => {
                            residual = self.ty(o).map(|t| t.shape.clone()) == self.ty(cur).map(|t| t.shape.clone())
                                && self.ty(o).map(|t| t.dtype) == Some(dtype);
                            residual
                        }
                        _ => false,
                    }
                }
                _ => false,
            };
            if !ok {
                break;
            }
            chain.push(u);
            cur = Value::new(u, 0);
        }
        chain
    }

    /// A function of each byte of the kernel result `v` that a kernel can apply as a table after
    /// its rounding, when `v` is read by nothing else: the quantized add of a constant of one
    /// value or one per channel (axis 1 of an NCHW result), or a region of `tables` whose source
    /// is `v` (of one table, or one per channel along axis 1). Its nodes (the one to lower
    /// last, last), and whether they are a region.
    fn byte_function(&self, v: Value, regions: &HashMap<Value, &TableRegion>) -> Option<(Vec<NodeId>, bool)> {
        if self.outputs.contains(&v) {
            return None;
        }
        let d = dims(self.ty(v)?)?;
        if let Some(u) = self.only_user(v) {
            let n = self.g.node(u);
            if matches!(n.op, Op::QAdd) && self.byte_qadd(u, v, d.get(1).copied()).is_some() {
                return Some((vec![u], false));
            }
        }
        let r = regions.get(&v)?;
        let inside: HashSet<NodeId> = r.nodes.iter().copied().collect();
        let users = self.g.value_users(v);
        let channels_ok = match r.channels {
            None => true,
            Some((axis, c)) => axis == 1 && d.len() == 4 && d[1] == c,
        };
        (channels_ok && !users.is_empty() && users.iter().all(|u| inside.contains(&u.0)))
            .then(|| (r.nodes.clone(), true))
    }

    /// The quantized add `u` of the activation `x` and a constant of one value or one per
    /// channel (of `channels`, along axis 1 of a 4-D NCHW activation), as a byte table's
    /// ingredients (ONNX Runtime's QLinearAdd formula, [`numerics::QAddParams`], with the
    /// activation as `a`, as for a table step); the table itself is built at lowering only.
    fn byte_qadd(&self, u: NodeId, x: Value, channels: Option<usize>) -> Option<QAddConst> {
        let n = self.g.node(u);
        let ins = n.inputs();
        let k = ins.iter().flatten().copied().find(|&w| w != x && self.is_const(w))?;
        if ins.iter().flatten().filter(|&&w| w == x).count() != 1 || ins.iter().flatten().count() != 2 {
            return None;
        }
        let (tx, tk, to) = (self.ty(x)?, self.ty(k)?, self.ty(Value::new(u, 0))?);
        if tx.shape != to.shape || int_ty(tx.dtype).is_none() || int_ty(to.dtype).is_none() {
            return None;
        }
        let values = self.const_of(Some(k))?.to_i64_vec()?;
        let c = values.len();
        // one value, or one per channel along axis 1 of [N, C, H, W]
        if c != 1 && (dims(tx)?.len() != 4 || channels != Some(c) || !along_channels(&dims(tk)?, c)) {
            return None;
        }
        let ((sx, zx), (sk, zk), (sc, zc)) = (per_tensor(&tx.quant)?, per_tensor(&tk.quant)?, per_tensor(&to.quant)?);
        let p = numerics::QAddParams::new(sx, zx, sk, zk, sc, zc);
        Some(QAddConst { p, values, x: tx.dtype, out: to.dtype })
    }

    /// A dequantizing quantized convolution's (`id`'s) chain: `chain` (its
    /// [`Self::float_chain`]) up to a residual add (the integer store has no residual operand),
    /// then the quantize that reads the last value, if it is the only reader and quantizes per
    /// tensor to u8/i8 with constant parameters: the kernel then rounds back to bytes and the
    /// float values never reach memory.
    fn quantized_chain(&self, id: NodeId, mut chain: Vec<NodeId>) -> Vec<NodeId> {
        if let Some(p) = chain.iter().position(|&c| {
            let n = self.g.node(c);
            matches!(n.op, Op::Binary(BinaryOp::Add)) && !n.inputs().iter().flatten().any(|&v| self.is_const(v))
        }) {
            chain.truncate(p);
        }
        let last = Value::new(chain.last().copied().unwrap_or(id), 0);
        if self.ty(last).is_none_or(|t| t.dtype != DType::F32) {
            return chain;
        }
        if let Some(q) = self.only_user(last) {
            let n = self.g.node(q);
            let fits = matches!(n.op, Op::Quantize)
                && n.inputs().iter().skip(1).all(|v| v.is_none())
                && self
                    .ty(Value::new(q, 0))
                    .is_some_and(|t| int_ty(t.dtype).is_some() && per_tensor(&t.quant).is_some());
            if fits {
                chain.push(q);
            }
        }
        chain
    }

    /// A quantized convolution at `id` followed by the absorbed nodes `chain`; if no kernel
    /// covers it, the convolution and the chain's nodes are lowered one by one (a byte table's
    /// region at its end as its own table step).
    pub(super) fn lower_qconv_chain(&mut self, id: NodeId, chain: &[NodeId]) -> Result<(), JitError> {
        let g = self.g;
        let node = g.node(id);
        let out = Value::new(id, 0);
        let fused = match (&node.op, self.ty(out).cloned()) {
            (op @ Op::QConv { conv, epilogue }, Some(oty)) => {
                let n = At { op, name: node.name.clone(), ins: node.inputs().to_vec(), out, oty };
                self.qconv(&n, conv, epilogue, chain)
            }
            _ => host("not a quantized convolution"),
        };
        let region = chain.last().and_then(|l| self.fused_tables.get(l)).cloned();
        match (fused, region) {
            (Err(Skip::Host(_)), Some(r)) => {
                self.lower_or_host(id)?;
                for &c in chain.iter().filter(|c| !r.nodes.contains(c)) {
                    self.lower_or_host(c)?;
                }
                self.lower_table_region(&r)
            }
            (fused, _) => self.group_or_nodes(fused, id, chain),
        }
    }

    /// The epilogue steps of the nodes `chain` absorbed after a quantized kernel's result `out`
    /// (stored as `store` without them): after a dequantizing kernel, float steps and a
    /// quantize's division and rounding; then, on a byte result, the table of a byte function
    /// ([`Self::byte_function`]). Also the store and the value the kernel then produces.
    fn quantized_chain_steps(
        &self,
        out: Value,
        chain: &[NodeId],
        store: Store,
    ) -> Result<(Vec<Step>, Store, Value), Skip> {
        let mut steps = Vec::new();
        let (mut rest, mut store, mut cur) = (chain, store, out);
        if store == Store::F32 {
            let q = chain.iter().position(|&c| matches!(self.g.node(c).op, Op::Quantize));
            let (float, after) = chain.split_at(q.unwrap_or(chain.len()));
            let (residual, last) = self.chain_steps(out, float, false, &mut steps)?;
            ensure(residual.is_none(), "a residual add after a quantized kernel")?;
            cur = last;
            let Some((&q, after)) = after.split_first() else { return Ok((steps, Store::F32, cur)) };
            cur = Value::new(q, 0);
            let qt = need(self.ty(cur), "the quantize has no type")?;
            let (s, z) = need(per_tensor(&qt.quant), "the quantize is not per tensor")?;
            let (lo, hi) = need(qt.dtype.int_range(), "the quantize is not to an integer type")?;
            store = match qt.dtype {
                DType::U8 => Store::U8,
                DType::I8 => Store::I8,
                _ => return host("the quantize is not to u8 or i8"),
            };
            // `quantize`: saturate(round_half_even(x / scale) + zero_point) (numerics::quantize)
            steps.push(Step::DivF32(s));
            steps.push(Step::RoundToInt { zp: z, lo: lo as i32, hi: hi as i32, bounded: false });
            rest = after;
        }
        let Some(&last) = rest.last() else { return Ok((steps, store, cur)) };
        let channels = dims(need(self.ty(cur), "a value has no type")?).and_then(|d| d.get(1).copied());
        let (table, per_channel) = match (rest, self.fused_tables.get(&last)) {
            ([u], None) => need(self.byte_qadd(*u, cur, channels), "not a quantized add of a constant")?.table(),
            (_, Some(r)) => {
                ensure(r.src == cur && r.nodes == rest, "the region is not the kernel's")?;
                (need(self.region_table(r), "the region did not evaluate on the bytes")?, r.channels.is_some())
            }
            _ => return host("not a function of the byte"),
        };
        let to = need(self.ty(Value::new(last, 0)), "a value has no type")?;
        store = match to.dtype {
            DType::U8 => Store::U8,
            DType::I8 => Store::I8,
            _ => return host("the table's result is not u8 or i8"),
        };
        steps.push(Step::Lut8 { table, per_channel, signed: store == Store::I8 });
        Ok((steps, store, Value::new(last, 0)))
    }

    /// Appends to `steps` the epilogue steps of the nodes `chain` absorbed after the value
    /// `out`; returns the residual operand if one is absorbed, and the chain's last value.
    fn chain_steps(
        &self,
        out: Value,
        chain: &[NodeId],
        bf16: bool,
        steps: &mut Vec<Step>,
    ) -> Result<(Option<Value>, Value), Skip> {
        let mut residual = None;
        let mut cur = out;
        let matmul = !matches!(self.g.node(out.node).op, Op::Conv(_) | Op::QConv { .. });
        for &c in chain {
            let n = self.g.node(c);
            match &n.op {
                Op::Unary(UnaryOp::Relu) => steps.push(Step::MaxF32(0.0)),
                Op::Unary(UnaryOp::HardSwish) if !bf16 => steps.push(Step::HardSwish),
                // a SiLU's sigmoid: its step is the product's, next
                Op::Unary(UnaryOp::Sigmoid) if self.silu_at(cur).is_some_and(|(s, _)| s == c) => continue,
                Op::Binary(BinaryOp::Mul) if self.silu_at(cur).is_some_and(|(_, m)| m == c) => steps.push(Step::Silu),
                Op::Binary(BinaryOp::Mul) if !bf16 => {
                    let i = n.inputs();
                    let other = if i.first().copied().flatten() == Some(cur) { i.get(1) } else { i.first() };
                    let o = need(other.copied().flatten(), "an operand is missing")?;
                    // x * k == k * x in IEEE arithmetic
                    let k = need(self.channel_const(o, cur, matmul), "the constant is not per channel")?;
                    steps.push(Step::MulChannelF32(k));
                }
                Op::Clip { min, max } => {
                    steps.push(Step::MaxF32(*min));
                    steps.push(Step::MinF32(*max));
                }
                Op::Binary(BinaryOp::Add) => {
                    let i = n.inputs();
                    let other = if i.first().copied().flatten() == Some(cur) { i.get(1) } else { i.first() };
                    let o = need(other.copied().flatten(), "an operand is missing")?;
                    if self.is_const(o) {
                        // x + b == b + x in IEEE arithmetic, so the operands' order does not matter
                        let b = need(self.channel_const(o, cur, matmul), "the constant is not per channel")?;
                        steps.push(Step::AddChannelF32(b));
                    } else if bf16 {
                        residual = Some(o);
                        steps.push(Step::RoundBf16);
                        steps.push(Step::AddResidualBf16);
                    } else {
                        residual = Some(o);
                        steps.push(Step::AddResidualF32);
                    }
                }
                Op::Cast { to: DType::F16 } => steps.push(Step::RoundF16),
                Op::Cast { to: DType::BF16 } => steps.push(Step::RoundBf16),
                // the widening back of a rounding (`round_trip`): exact
                Op::Cast { to: DType::F32 } => {}
                op => return host(format!("{} cannot be absorbed", op.name())),
            }
            cur = Value::new(c, 0);
        }
        Ok((residual, cur))
    }

    /// A float matrix product at `id` followed by the absorbed nodes `chain`; if no kernel
    /// covers it, the product and the chain's nodes are lowered one by one.
    pub(super) fn lower_float_matmul(&mut self, id: NodeId, chain: &[NodeId]) -> Result<(), JitError> {
        let node = self.g.node(id);
        let out = Value::new(id, 0);
        let fused = match (&node.op, self.ty(out).cloned()) {
            (op @ (Op::MatMul | Op::Gemm { trans_a: false, .. }), Some(oty)) => {
                let n = At { op, name: node.name.clone(), ins: node.inputs().to_vec(), out, oty };
                match *op {
                    Op::Gemm { alpha, beta, trans_b, .. } => self.fgemm(&n, alpha, beta, trans_b, chain),
                    _ => self.fgemm(&n, 1.0, 0.0, false, chain),
                }
            }
            _ => host("not a matrix product"),
        };
        self.group_or_nodes(fused, id, chain)
    }

    /// A float conv at `id` followed by the absorbed nodes `chain` (Relu, Clip, residual Add);
    /// if no kernel covers it, the conv runs on the host and the chain's nodes one by one.
    pub(super) fn lower_float_conv(&mut self, id: NodeId, chain: &[NodeId]) -> Result<(), JitError> {
        match self.float_conv(id, chain) {
            Ok(()) => Ok(()),
            Err(Skip::Fail(e)) => Err(e),
            Err(Skip::Host(reason)) => {
                self.lower_host(id, reason)?;
                for &c in chain {
                    self.lower_or_host(c)?;
                }
                Ok(())
            }
        }
    }

    fn float_conv(&mut self, id: NodeId, chain: &[NodeId]) -> Lw {
        let node = self.g.node(id);
        let Op::Conv(conv) = &node.op else { return host("not a convolution") };
        let name = node.name.clone();
        let ins = node.inputs().to_vec();
        let out = Value::new(id, 0);
        let (x, wv) = need(ins.first().copied().flatten().zip(ins.get(1).copied().flatten()), "an input is missing")?;
        ensure(!self.is_const(x), "the input is a constant")?;
        let w = need(self.const_of(Some(wv)), "the weights are not a constant")?;
        let (xt, oty) = (self.types[&x].clone(), self.types[&out].clone());
        let (d, od) = need(dims(&xt).zip(dims(&oty)), "a shape is not fixed")?;
        let wd = w.shape().to_vec();
        // bf16 activations and weights: the bf16 GEMM, f32 epilogue, one rounding to bf16
        let bf16 = xt.dtype == DType::BF16;
        let (wdata, wbits): (&[f32], &[u16]) = if bf16 {
            ensure(w.dtype() == DType::BF16 && oty.dtype == DType::BF16, "the weights or result are not bf16")?;
            (&[], bf16_bits(&w))
        } else {
            ensure(xt.dtype == DType::F32, "the input is not f32")?;
            (need(w.as_f32(), "the weights are not f32")?, &[])
        };
        ensure(wd.len() == 4, "the weights are not 4-D")?;
        let bias = match ins.get(2).copied().flatten() {
            Some(b) => Some(need(
                self.const_of(Some(b)).filter(|t| t.dtype() == xt.dtype).map(|t| t.to_f32_vec()),
                "the bias is not a constant of the input's type",
            )?),
            None => None,
        };
        let (cout, cin_g, kh, kw) = (wd[0], wd[1], wd[2], wd[3]);
        let mut geom = need(conv_geom(conv, &d, &od, cin_g), "not a 2-D convolution")?;
        let group = conv.group;
        let depthwise = group > 1 && group == d[1] && cout == d[1] && cin_g == 1;
        ensure(group != 0 && cout % group == 0 && d[1] == cin_g * group, "the groups do not divide the channels")?;
        let mut steps = Vec::new();
        if let Some(b) = bias {
            steps.push(Step::AddChannelF32(b));
        }
        let (residual, cur) = self.chain_steps(out, chain, bf16, &mut steps)?;
        let rows_out = od[0] * od[2] * od[3];
        let mut kernels: Vec<(KernelSpec, usize)> = Vec::new();
        if bf16 && depthwise {
            // bf16 activations and weights, f32 accumulation, the epilogue rounds once to bf16
            geom.cin = 1;
            let bytes = micro::bf16::packed_dw_bytes(cout, kh, kw);
            self.check_size(&name, Allocation::PackedWeights, bytes)?;
            let packed = micro::bf16::pack_depthwise_bf16(wbits, cout, kh, kw).map_err(alloc_failed(
                &name,
                "packed weights",
                bytes,
            ))?;
            let main = MainOp::DepthwiseBf16 { geom, weights: Arc::new(packed) };
            kernels.push((KernelSpec { main, epilogue: steps, store: Store::Bf16, rows: rows_out, cols: cout }, 0));
        } else if depthwise {
            geom.cin = 1;
            let bytes = micro::float::packed_dw_bytes(cout, kh, kw);
            self.check_size(&name, Allocation::PackedWeights, bytes)?;
            let packed = reuse::packed(&w, "depthwise f32", &[cout, kh, kw], bytes, || {
                micro::float::pack_depthwise_f32(wdata, cout, kh, kw)
            })
            .map_err(alloc_failed(&name, "packed weights", bytes))?;
            let main = MainOp::DepthwiseF32 { geom, weights: packed };
            kernels.push((KernelSpec { main, epilogue: steps, store: Store::F32, rows: rows_out, cols: cout }, 0));
        } else if !bf16 && group == 1 && self.winograd && winograd_fits(&geom, cout) {
            // Winograd F(2x2, 3x3): 2.25x fewer multiplies than the GEMM over im2col rows
            let bytes = micro::winograd::packed_bytes(cout, cin_g);
            self.check_size(&name, Allocation::PackedWeights, bytes)?;
            let key = [&[cout][..], &geom.fields()].concat();
            let plan =
                reuse::packed(&w, "winograd f32", &key, bytes, || micro::winograd::WinogradF32::new(wdata, cout, geom))
                    .map_err(alloc_failed(&name, "transformed weights", bytes))?;
            let main = MainOp::WinogradF32 { plan };
            kernels.push((KernelSpec { main, epilogue: steps, store: Store::F32, rows: rows_out, cols: cout }, 0));
        } else {
            // one GEMM per group, over bf16 or f32 weights reordered to (ky, kx, ci)
            let cout_g = cout / group;
            let k = kh * kw * cin_g;
            let bytes = if bf16 { micro::bf16::packed_bytes(cout_g, k) } else { micro::float::packed_bytes(cout_g, k) };
            self.check_size(&name, Allocation::PackedWeights, bytes)?;
            for gi in 0..group {
                let range = gi * cout_g..(gi + 1) * cout_g;
                let direct = group == 1 && is_pointwise(&geom);
                let g_geom = ConvGeom { cin_offset: gi * cin_g, ..geom };
                let rows =
                    if direct { Rows::Direct { lda: d[1] } } else { Rows::Im2col { geom: g_geom, pad: 0, xor: 0 } };
                let reordered = alloc_failed(&name, "reordered weights", bytes);
                let packing = alloc_failed(&name, "packed weights", bytes);
                let (main, store) = if bf16 {
                    let wk = to_ohwi(wbits, range.clone(), cin_g, kh, kw).map_err(reordered)?;
                    let packed = micro::bf16::pack_weights_bf16(&wk, cout_g, k).map_err(packing)?;
                    (MainOp::GemmBf16 { rows, weights: Arc::new(packed) }, Store::Bf16)
                } else {
                    let key = [range.start, range.end, cin_g, kh, kw];
                    let packed = reuse::packed(&w, "conv gemm f32", &key, bytes, || {
                        let wk = to_ohwi(wdata, range.clone(), cin_g, kh, kw).map_err(reordered)?;
                        micro::float::pack_weights_f32(&wk, cout_g, k).map_err(packing)
                    })?;
                    (MainOp::GemmF32 { rows, weights: packed }, Store::F32)
                };
                let spec = KernelSpec {
                    main,
                    epilogue: slice_steps(&steps, range.clone()),
                    store,
                    rows: rows_out,
                    cols: cout_g,
                };
                kernels.push((spec, range.start));
            }
        }
        let input = self.in_layout(x, Layout::Nhwc, &name)?;
        let res_buf = match residual {
            Some(r) => Some(self.in_layout(r, Layout::Nhwc, &name)?),
            None => None,
        };
        let output = self.define(cur, Layout::Nhwc);
        let mut label = name;
        for &c in chain {
            label.push('+');
            label.push_str(&self.g.node(c).name);
        }
        let many = kernels.len() > 1;
        for (gi, (spec, out_col)) in kernels.into_iter().enumerate() {
            let l = if many { format!("{label}.group{gi}") } else { label.clone() };
            self.push(&l, StepKind::Kernel { out_col, ld_out: cout, spec, input, residual: res_buf, output });
        }
        Ok(())
    }

    /// A quantized convolution (u8/i8 activations, i8 weights with zero point 0, per tensor or
    /// per output channel): one u8 x i8 GEMM per group, or the depthwise kernel.
    /// `chain`: the nodes absorbed after a dequantizing one ([`Self::quantized_chain`]), or none.
    pub(super) fn qconv(&mut self, n: &At, conv: &ConvAttrs, ep: &[Epilogue], chain: &[NodeId]) -> Lw {
        let (x, wv) = need(n.input(0).zip(n.input(1)), "an input is missing")?;
        ensure(!self.is_const(x), "the input is a constant")?;
        let w = need(self.const_of(Some(wv)), "the weights are not a constant")?;
        let bias = match n.input(2) {
            Some(b) => Some(need(self.const_of(Some(b)), "the bias is not a constant")?),
            None => None,
        };
        let (xt, wt, oty) = (self.types[&x].clone(), self.types[&wv].clone(), n.oty.clone());
        let (d, od, wd) = match (dims(&xt), dims(&oty), dims(&wt)) {
            (Some(d), Some(od), Some(wd)) => (d, od, wd),
            _ => return host("a shape is not fixed"),
        };
        let (sx, zx) = need(per_tensor(&xt.quant), "the input is not quantized per tensor")?;
        let xi = need(int_ty(xt.dtype), "the input is not u8 or i8")?;
        ensure(wt.dtype == DType::I8, "the weights are not i8")?;
        ensure(wd.len() == 4, "the weights are not 4-D")?;
        let cout = wd[0];
        let (sw, zw) = match &wt.quant {
            Some(QuantParams::PerTensor { scale, zero_point }) => (vec![*scale; cout], vec![*zero_point; cout]),
            Some(QuantParams::PerAxis { axis: 0, scales, zero_points }) if scales.len() == cout => {
                (scales.clone(), zero_points.clone())
            }
            _ => return host("the weights are not quantized per tensor or per output channel"),
        };
        ensure(zw.iter().all(|&z| z == 0), "a weight zero point is not 0")?;
        let wdata = need(i8_data(&w), "the weight data are not i8")?;
        let name = n.name.as_str();
        let group = conv.group;
        let cin_g = wd[1];
        let mut geom = need(conv_geom(conv, &d, &od, cin_g), "not a 2-D convolution")?;
        let depthwise = group > 1 && group == d[1] && cout == d[1] && cin_g == 1;
        ensure(group != 0 && cout % group == 0 && d[1] == cin_g * group, "the groups do not divide the channels")?;
        ensure(!depthwise || xi == IntTy::U8, "a depthwise convolution of i8 activations")?;
        let epi = need(QuantEpilogue::new(ep, &oty, sx, &sw, 1.0), "no kernel implements this epilogue")?;
        let (mut tail, store, result) = (epi.steps.clone(), epi.store, n.out);
        let (tail, store, result) = if chain.is_empty() {
            (tail, store, result)
        } else {
            let (more, store, result) = self.quantized_chain_steps(n.out, chain, store)?;
            tail.extend(more);
            (tail, store, result)
        };
        let (kh, kw) = (wd[2], wd[3]);
        let bias_v: Vec<i32> = match &bias {
            Some(b) => match b.to_i64_vec() {
                Some(v) if v.len() == cout => v.into_iter().map(|x| x as i32).collect(),
                _ => return host("the bias is not one integer per output channel"),
            },
            None => vec![0; cout],
        };
        let bias_v = if epi.has_bias { bias_v } else { vec![0; cout] };
        // |sum (x - zx) * w| <= taps * 255 * 128 (activations differ from their zero point by at most 255).
        let bound = (kh * kw * cin_g) as f64 * 255.0 * 128.0;
        let rows_out = od[0] * od[2] * od[3];
        let mut kernels: Vec<(KernelSpec, usize)> = Vec::new();
        if depthwise {
            geom.cin = 1;
            let bytes = micro::int8::packed_dw_bytes(cout, kh, kw);
            self.check_size(name, Allocation::PackedWeights, bytes)?;
            let packed = micro::int8::pack_depthwise_i8(wdata, cout, kh, kw).map_err(alloc_failed(
                name,
                "packed weights",
                bytes,
            ))?;
            let main = MainOp::DepthwiseU8I8 { geom, zx, weights: Arc::new(packed) };
            let mut steps = vec![Step::AddChannelI32(bias_v)];
            steps.extend(tail.iter().cloned());
            mark_bounded(&mut steps, bound);
            kernels.push((KernelSpec { main, epilogue: steps, store, rows: rows_out, cols: cout }, 0));
        } else {
            // One GEMM per group over its input channels, writing its slice of output channels.
            let cout_g = cout / group;
            let k = kh * kw * cin_g;
            let (xor, zxe) = if xi == IntTy::I8 { (0x80u8, zx + 128) } else { (0, zx) };
            let bytes = micro::int8::packed_bytes(cout_g, k);
            self.check_size(name, Allocation::PackedWeights, bytes)?;
            for gi in 0..group {
                // [cout][cin][kh][kw] -> [cout][kh][kw][cin]
                let wk = to_ohwi(wdata, gi * cout_g..(gi + 1) * cout_g, cin_g, kh, kw).map_err(alloc_failed(
                    name,
                    "reordered weights",
                    bytes,
                ))?;
                let packed = micro::int8::pack_weights_i8(&wk, cout_g, k).map_err(alloc_failed(
                    name,
                    "packed weights",
                    bytes,
                ))?;
                let range = gi * cout_g..(gi + 1) * cout_g;
                let corr: Vec<i32> = bias_v[range.clone()]
                    .iter()
                    .zip(&packed.col_sums)
                    .map(|(&b, &s)| b.wrapping_sub(zxe.wrapping_mul(s)))
                    .collect();
                let direct = group == 1 && xor == 0 && is_pointwise(&geom);
                let g_geom = ConvGeom { cin_offset: gi * cin_g, ..geom };
                let rows = if direct {
                    Rows::Direct { lda: d[1] }
                } else {
                    Rows::Im2col { geom: g_geom, pad: (zxe as u8), xor }
                };
                let main = MainOp::GemmU8I8 { rows, weights: Arc::new(packed) };
                let mut steps = vec![Step::AddChannelI32(corr)];
                steps.extend(slice_steps(&tail, range.clone()));
                mark_bounded(&mut steps, bound);
                kernels.push((KernelSpec { main, epilogue: steps, store, rows: rows_out, cols: cout_g }, range.start));
            }
        }
        let input = self.in_layout(x, Layout::Nhwc, &n.name)?;
        let output = self.define(result, Layout::Nhwc);
        let many = kernels.len() > 1;
        let mut name = n.name.clone();
        for &c in chain {
            name.push('+');
            name.push_str(&self.g.node(c).name);
        }
        for (gi, (spec, out_col)) in kernels.into_iter().enumerate() {
            let label = if many { format!("{name}.group{gi}") } else { name.clone() };
            self.push(&label, StepKind::Kernel { out_col, ld_out: cout, spec, input, residual: None, output });
        }
        Ok(())
    }

    /// A quantized GEMM or matrix product with a constant i8 right operand (zero point 0, per
    /// tensor or per output column) and a u8/i8 left operand quantized per tensor.
    pub(super) fn qgemm(&mut self, n: &At, alpha: f32, trans_b: bool, ep: &[Epilogue]) -> Lw {
        let (a, bv) = need(n.input(0).zip(n.input(1)), "an input is missing")?;
        let b = need(self.const_of(Some(bv)), "the right operand is not a constant")?;
        ensure(!self.is_const(a), "the left operand is a constant")?;
        let (at, bt, oty) = (self.types[&a].clone(), self.types[&bv].clone(), n.oty.clone());
        let (ad, bd) = need(dims(&at).zip(dims(&bt)), "a shape is not fixed")?;
        ensure(bd.len() == 2, "the right operand is not a matrix")?;
        ensure(!ad.is_empty(), "the left operand is a scalar")?;
        ensure(matches!(at.dtype, DType::U8 | DType::I8), "the left operand is not u8 or i8")?;
        ensure(bt.dtype == DType::I8, "the right operand is not i8")?;
        let (sa, za) = need(per_tensor(&at.quant), "the left operand is not quantized per tensor")?;
        let (k, cols) = if trans_b { (bd[1], bd[0]) } else { (bd[0], bd[1]) };
        ensure(ad[ad.len() - 1] == k, "the inner dimensions differ")?;
        let m: usize = ad[..ad.len() - 1].iter().product();
        let (sw, zw) = match &bt.quant {
            Some(QuantParams::PerTensor { scale, zero_point }) => (vec![*scale; cols], vec![*zero_point; cols]),
            Some(QuantParams::PerAxis { axis, scales, zero_points })
                if scales.len() == cols && *axis == if trans_b { 0 } else { 1 } =>
            {
                (scales.clone(), zero_points.clone())
            }
            _ => return host("the right operand is not quantized per tensor or per output column"),
        };
        ensure(zw.iter().all(|&z| z == 0), "a weight zero point is not 0")?;
        let bdata = need(i8_data(&b), "the right operand's data are not i8")?;
        let epi = need(QuantEpilogue::new(ep, &oty, sa, &sw, alpha), "no kernel implements this epilogue")?;
        let bias_v: Vec<i32> = if epi.has_bias {
            match self.const_of(n.input(2)).and_then(|t| t.to_i64_vec()) {
                Some(v) if v.len() == cols => v.into_iter().map(|x| x as i32).collect(),
                _ => return host("the bias is not one integer constant per output column"),
            }
        } else {
            vec![0; cols]
        };
        let name = n.name.as_str();
        let bytes = micro::int8::packed_bytes(cols, k);
        self.check_size(name, Allocation::PackedWeights, bytes)?;
        let packed = if trans_b {
            micro::int8::pack_weights_i8(bdata, cols, k)
        } else {
            micro::int8::pack_weights_i8_kn(bdata, k, cols)
        }
        .map_err(alloc_failed(name, "packed weights", bytes))?;
        // i8 activations become u8 (sign bit flipped, zero point + 128) while rows are gathered:
        // the matrix is an NHWC "image" of m pixels with k channels and a 1x1 window.
        let (rows, zae) = if at.dtype == DType::I8 {
            let geom = ConvGeom {
                h: m,
                w: 1,
                c: k,
                oh: m,
                ow: 1,
                kh: 1,
                kw: 1,
                sh: 1,
                sw: 1,
                ph: 0,
                pw: 0,
                dh: 1,
                dw: 1,
                cin: k,
                cin_offset: 0,
            };
            (Rows::Im2col { geom, pad: 0, xor: 0x80 }, za + 128)
        } else {
            (Rows::Direct { lda: k }, za)
        };
        let corr: Vec<i32> =
            bias_v.iter().zip(&packed.col_sums).map(|(&b, &s)| b.wrapping_sub(zae.wrapping_mul(s))).collect();
        let mut steps = vec![Step::AddChannelI32(corr)];
        steps.extend(epi.steps);
        mark_bounded(&mut steps, k as f64 * 255.0 * 128.0);
        let spec = KernelSpec {
            main: MainOp::GemmU8I8 { rows, weights: Arc::new(packed) },
            epilogue: steps,
            store: epi.store,
            rows: m,
            cols,
        };
        let input = self.plain(a, &n.name)?;
        let output = self.define(n.out, Layout::Plain);
        self.push_kernel(&n.name, spec, input, output);
        Ok(())
    }

    /// The quantized matrix product of two u8/i8 activations (per-tensor parameters, batches
    /// paired as numpy does) with its IR epilogue as kernel steps: a row step that accumulates
    /// `(a - za) * (b - zb)` in i32 and applies the steps per element.
    pub(super) fn qmatmul_act(&mut self, n: &At, ep: &[Epilogue]) -> Lw {
        let (a, b) = need(n.input(0).zip(n.input(1)), "an input is missing")?;
        ensure(!self.is_const(a) && !self.is_const(b), "an operand is a constant")?;
        let (at, bt, oty) = (self.types[&a].clone(), self.types[&b].clone(), n.oty.clone());
        let byte = |t: DType| matches!(t, DType::U8 | DType::I8);
        ensure(byte(at.dtype) && byte(bt.dtype), "an operand is not u8 or i8")?;
        let (sa, za) = need(per_tensor(&at.quant), "the left operand is not quantized per tensor")?;
        let (sb, zb) = need(per_tensor(&bt.quant), "the right operand is not quantized per tensor")?;
        let (da, db) = need(dims(&at).zip(dims(&bt)), "a shape is not fixed")?;
        let bm = need(qforge_ir::interp::matmul::BatchedMatMul::of(&da, &db), "the operands do not multiply")?;
        ensure(bm.m != 0 && bm.n != 0, "an empty result")?;
        // |(a - za) * (b - zb)| <= 255 * 255: the i32 sums stay exact below 33,000 terms (the
        // interpreter sums in i64)
        ensure(bm.k <= 33_000, "the reduction is too long for i32 sums")?;
        let epi = need(QuantEpilogue::new(ep, &oty, sa, &vec![sb; bm.n], 1.0), "no kernel implements this epilogue")?;
        let mut steps = Vec::new();
        if epi.has_bias {
            match self.const_of(n.input(2)).and_then(|t| t.to_i64_vec()) {
                Some(v) if v.len() == bm.n => {
                    steps.push(Step::AddChannelI32(v.into_iter().map(|x| x as i32).collect()))
                }
                _ => return host("the bias is not one integer constant per output column"),
            }
        }
        steps.extend(epi.steps);
        let index: Vec<usize> = bm.pairs.iter().flat_map(|&(oa, ob)| [oa, ob]).collect();
        let kind = RowKind::QMatMul {
            m: bm.m,
            k: bm.k,
            a_signed: at.dtype == DType::I8,
            b_signed: bt.dtype == DType::I8,
            za,
            zb,
            store: epi.store,
        };
        let input = self.plain(a, &n.name)?;
        let other = self.plain(b, &n.name)?;
        let output = self.define(n.out, Layout::Plain);
        let units = bm.pairs.len() * bm.m;
        let op = RowOp { index, n: bm.n, epilogue: steps, ..RowOp::elementwise(kind, 0) };
        self.push(&n.name, StepKind::Rows { op, input, input2: Some(other), output, units });
        Ok(())
    }

    /// An f32 GEMM (2-D, `alpha`, a per-column constant `beta * C`) or matrix product with a
    /// constant right operand.
    pub(super) fn fgemm(&mut self, n: &At, alpha: f32, beta: f32, trans_b: bool, chain: &[NodeId]) -> Lw {
        let (a, bv) = need(n.input(0).zip(n.input(1)), "an input is missing")?;
        let b = need(self.const_of(Some(bv)), "the right operand is not a constant")?;
        let at = self.types[&a].clone();
        let (ad, bd) = (need(dims(&at), "a shape is not fixed")?, b.shape().to_vec());
        ensure(bd.len() == 2, "the right operand is not a matrix")?;
        ensure(!ad.is_empty(), "the left operand is a scalar")?;
        // bf16 operands (kept bf16 by the widening pass): the bf16 GEMM, f32 epilogue
        let bf16 = at.dtype == DType::BF16;
        ensure(
            (at.dtype == DType::F32 || bf16) && b.dtype() == at.dtype && n.oty.dtype == at.dtype,
            "an operand is not f32 (or all bf16)",
        )?;
        ensure(!self.is_const(a), "the left operand is a constant")?;
        let is_gemm = matches!(n.op, Op::Gemm { .. });
        ensure(!is_gemm || ad.len() == 2, "a gemm of a left operand that is not a matrix")?;
        let (k, cols) = if trans_b { (bd[1], bd[0]) } else { (bd[0], bd[1]) };
        ensure(ad[ad.len() - 1] == k, "the inner dimensions differ")?;
        let m: usize = ad[..ad.len() - 1].iter().product();
        let name = n.name.as_str();
        let bytes = if bf16 { micro::bf16::packed_bytes(cols, k) } else { micro::float::packed_bytes(cols, k) };
        self.check_size(name, Allocation::PackedWeights, bytes)?;
        let mut steps = Vec::new();
        if alpha != 1.0 {
            steps.push(Step::ScaleToF32(vec![alpha; cols]));
        }
        if is_gemm {
            if let Some(cv) = n.input(2) {
                let c = need(self.const_of(Some(cv)), "C is not a constant")?;
                ensure(c.dtype() == at.dtype, "C is not of the operands' type")?;
                let cd = c.to_f32_vec();
                let shape = c.shape();
                let per_col = shape.iter().product::<usize>() == cols && shape.last() == Some(&cols);
                ensure(per_col, "C is not one value per output column")?;
                if beta != 0.0 {
                    steps.push(Step::AddChannelF32(cd.iter().map(|v| beta * v).collect()));
                }
            }
        }
        let rows = Rows::Direct { lda: k };
        let (main, store) = if bf16 {
            let bits = bf16_bits(&b);
            let packed = if trans_b {
                micro::bf16::pack_weights_bf16(bits, cols, k)
            } else {
                micro::bf16::pack_weights_bf16_kn(bits, k, cols)
            }
            .map_err(alloc_failed(name, "packed weights", bytes))?;
            (MainOp::GemmBf16 { rows, weights: Arc::new(packed) }, Store::Bf16)
        } else {
            let bdata = need(b.as_f32(), "the right operand's data are not f32")?;
            let packed = reuse::packed(&b, "gemm f32", &[usize::from(trans_b), k, cols], bytes, || {
                if trans_b {
                    micro::float::pack_weights_f32(bdata, cols, k)
                } else {
                    micro::float::pack_weights_f32_kn(bdata, k, cols)
                }
            })
            .map_err(alloc_failed(name, "packed weights", bytes))?;
            (MainOp::GemmF32 { rows, weights: packed }, Store::F32)
        };
        let (residual, cur) = self.chain_steps(n.out, chain, bf16, &mut steps)?;
        let spec = KernelSpec { main, epilogue: steps, store, rows: m, cols };
        let input = self.plain(a, &n.name)?;
        let res_buf = match residual {
            Some(r) => Some(self.plain(r, &n.name)?),
            None => None,
        };
        let output = self.define(cur, Layout::Plain);
        let mut label = n.name.clone();
        for &c in chain {
            label.push('+');
            label.push_str(&self.g.node(c).name);
        }
        self.push(&label, StepKind::Kernel { out_col: 0, ld_out: cols, spec, input, residual: res_buf, output });
        Ok(())
    }
}

/// The bits of a bf16 tensor's values, in place (empty for another type).
fn bf16_bits(t: &Tensor) -> &[u16] {
    use half::slice::HalfFloatSliceExt;
    match t.data() {
        qforge_ir::TensorData::BF16(v) => v.reinterpret_cast(),
        _ => &[],
    }
}

/// The i8 data of a tensor.
pub(super) fn i8_data(t: &Tensor) -> Option<&[i8]> {
    match t.data() {
        qforge_ir::TensorData::I8(v) => Some(v),
        _ => None,
    }
}

/// The epilogue of a quantized kernel in codegen steps (after the bias/zero-point add).
struct QuantEpilogue {
    has_bias: bool,
    steps: Vec<Step>,
    store: Store,
}

impl QuantEpilogue {
    /// `None` when the IR epilogue has a form no kernel implements (a clamp on the raw
    /// accumulator, per-axis output parameters).
    fn new(ep: &[Epilogue], oty: &TensorType, sx: f32, sw: &[f32], alpha: f32) -> Option<QuantEpilogue> {
        let sx = alpha * sx;
        let mut has_bias = false;
        let mut conv: Option<bool> = None; // Some(true): requant, Some(false): dequant
        let (mut lo, mut hi) = (i64::MIN, i64::MAX);
        for s in ep {
            match s {
                Epilogue::Bias if conv.is_none() && !has_bias => has_bias = true,
                Epilogue::Requant if conv.is_none() => conv = Some(true),
                Epilogue::Dequant if conv.is_none() => conv = Some(false),
                Epilogue::Clamp { lo: l, hi: h } if conv.is_some() => {
                    lo = lo.max(*l);
                    hi = hi.min((*h).max(*l));
                }
                _ => return None,
            }
        }
        match conv? {
            true => {
                let (sy, zy) = per_tensor(&oty.quant)?;
                let (dlo, dhi) = oty.dtype.int_range()?;
                let store = match oty.dtype {
                    DType::U8 => Store::U8,
                    DType::I8 => Store::I8,
                    _ => return None,
                };
                let lo = lo.max(dlo).min(dhi);
                let hi = hi.min(dhi).max(lo);
                let m: Vec<f32> = sw.iter().map(|&s| numerics::requant_multiplier(sx, s, sy)).collect();
                Some(QuantEpilogue {
                    has_bias,
                    steps: vec![
                        Step::ScaleToF32(m),
                        Step::RoundToInt { zp: zy, lo: lo as i32, hi: hi as i32, bounded: false },
                    ],
                    store,
                })
            }
            false => {
                if oty.dtype != DType::F32 {
                    return None;
                }
                let mut steps = vec![Step::ScaleToF32(sw.iter().map(|&s| sx * s).collect())];
                if lo != i64::MIN {
                    steps.push(Step::MaxF32(lo as f32));
                }
                if hi != i64::MAX {
                    steps.push(Step::MinF32(hi as f32));
                }
                Some(QuantEpilogue { has_bias, steps, store: Store::F32 })
            }
        }
    }
}

/// `steps` restricted to the output channels `range` (per-channel arrays sliced).
fn slice_steps(steps: &[Step], range: std::ops::Range<usize>) -> Vec<Step> {
    steps
        .iter()
        .map(|st| match st {
            Step::AddChannelI32(v) => Step::AddChannelI32(v[range.clone()].to_vec()),
            Step::ScaleToF32(v) => Step::ScaleToF32(v[range.clone()].to_vec()),
            Step::AddChannelF32(v) => Step::AddChannelF32(v[range.clone()].to_vec()),
            Step::MulChannelF32(v) => Step::MulChannelF32(v[range.clone()].to_vec()),
            Step::Lut8 { table, per_channel: true, signed } => Step::Lut8 {
                table: table[range.start * 256..range.end * 256].to_vec(),
                per_channel: true,
                signed: *signed,
            },
            other => other.clone(),
        })
        .collect()
}

/// Conv weights `[cout][cin_g][kh][kw]` for the output channels `oc` as GEMM rows in im2col
/// order: `[oc][kh][kw][cin_g]`.
pub(super) fn to_ohwi<T: Copy + Default>(
    w: &[T],
    oc: std::ops::Range<usize>,
    cin_g: usize,
    kh: usize,
    kw: usize,
) -> Result<Vec<T>, TryReserveError> {
    let k = kh * kw * cin_g;
    let mut out = micro::try_zeroed(oc.len() * k)?;
    for (o, c) in oc.enumerate() {
        for ci in 0..cin_g {
            for y in 0..kh {
                for x in 0..kw {
                    out[o * k + (y * kw + x) * cin_g + ci] = w[((c * cin_g + ci) * kh + y) * kw + x];
                }
            }
        }
    }
    Ok(out)
}

/// Whether a convolution runs as Winograd F(2x2, 3x3): a 3x3 window of stride and dilation 1,
/// at least [`WINOGRAD_MIN_CHANNELS`] input and output channels (with fewer, each tile's
/// transforms weigh more against its products, and the GEMMs' reductions are short). Measured on Zen 4 at one thread, every 3x3 stride-1
/// layer of ResNet-18 is faster this way, the 7x7 maps of 512 channels too (2.65 -> 1.95 ms),
/// although their 16 tiles per image stream 16/9 times the weights the im2col GEMM reads. On a
/// Sapphire Rapids core, where those weights come from memory in the whole model, the 7x7 maps
/// measured 2.1 ms as im2col and 2.25 as Winograd (after the GEMM's prefetch; 2.7 and 3.0-3.2
/// before it), and every larger map is faster as Winograd; the rule stays one rule.
fn winograd_fits(g: &ConvGeom, cout: usize) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.sh == 1
        && g.sw == 1
        && g.dh == 1
        && g.dw == 1
        && g.cin == g.c
        && g.c >= WINOGRAD_MIN_CHANNELS
        && cout >= WINOGRAD_MIN_CHANNELS
}

/// The fewest input and output channels of a Winograd convolution.
const WINOGRAD_MIN_CHANNELS: usize = 16;

/// Whether a convolution reads each output pixel's input pixel and nothing else (1x1, stride 1,
/// no padding), so its NHWC input already is the GEMM's left operand.
fn is_pointwise(g: &ConvGeom) -> bool {
    g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && g.oh == g.h && g.ow == g.w
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{check_family, Case};

    const CASES: &[Case] = &[
        Case {
            name: "float conv 2x2 with bias and relu absorbed",
            shapes: &[&[1, 2, 3, 3]],
            qir: r#"graph c(%x: f32[N,2,3,3]) -> (y: f32[N,2,2,2]) {
  %0 = const f32[2,2,2,2] = [0.5, -0.25, 0.125, 1.0, -1.0, 0.75, 0.0, 0.25, 0.5, 0.5, -0.5, 0.25, 1.0, 0.0, -1.0, 2.0]  # "w"
  %1 = const f32[2] = [0.1, -0.2]  # "b"
  %2 = conv %x, %0, %1 {kernel=[2,2], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=1} : f32[N,2,2,2]  # "conv"
  %3 = relu %2 : f32[N,2,2,2]  # "relu"
  return %3
}"#,
        },
        Case {
            name: "pointwise conv with a residual add and a clip absorbed",
            shapes: &[&[2, 2, 3, 3]],
            qir: r#"graph c(%x: f32[N,2,3,3]) -> (y: f32[N,2,3,3]) {
  %0 = const f32[2,2,1,1] = [0.5, -0.5, 0.25, 1.0]  # "w"
  %1 = conv %x, %0 {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=1} : f32[N,2,3,3]  # "conv"
  %2 = add %1, %x : f32[N,2,3,3]  # "add"
  %3 = clip %2 {min=0.0, max=6.0} : f32[N,2,3,3]  # "clip"
  return %3
}"#,
        },
        Case {
            name: "grouped conv: one gemm per group; the result used twice is not fused",
            shapes: &[&[1, 4, 2, 2]],
            qir: r#"graph c(%x: f32[N,4,2,2]) -> (y: f32[N,2,2,2], z: f32[N,2,2,2]) {
  %0 = const f32[2,2,1,1] = [0.5, -0.5, 0.25, 1.0]  # "w"
  %1 = conv %x, %0 {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=2} : f32[N,2,2,2]  # "conv"
  %2 = relu %1 : f32[N,2,2,2]  # "relu"
  return %1, %2
}"#,
        },
        Case {
            name: "depthwise float conv 3x3 pad 1 stride 2",
            shapes: &[&[1, 2, 4, 4]],
            qir: r#"graph c(%x: f32[N,2,4,4]) -> (y: f32[N,2,2,2]) {
  %0 = const f32[2,1,3,3] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0]  # "w"
  %1 = conv %x, %0 {kernel=[3,3], strides=[2,2], pads=[1,1,1,1], dilations=[1,1], group=2} : f32[N,2,2,2]  # "dw"
  return %1
}"#,
        },
        Case {
            name: "conv whose weights are an input runs on the host",
            shapes: &[&[1, 2, 3, 3], &[2, 2, 1, 1]],
            qir: r#"graph c(%x: f32[N,2,3,3], %w: f32[2,2,1,1]) -> (y: f32[N,2,3,3]) {
  %0 = conv %x, %w {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=1} : f32[N,2,3,3]  # "conv"
  %1 = relu %0 : f32[N,2,3,3]  # "relu"
  return %1
}"#,
        },
        Case {
            name: "qconv with bias, requant and clamp; a 1x1 stride-2 depthwise qconv that dequantizes",
            shapes: &[&[1, 1, 4, 4]],
            qir: r#"graph q(%x: u8<0.003921569:0>[N,1,4,4]) -> (y: u8<0.0213:0>[N,2,4,4], z: f32[N,2,2,2]) {
  %0 = const i8<axis=0: 0.004:0, 0.0025:0>[2,1,2,2] = [10, -20, 30, -40, 127, 0, -127, 5]  # "conv2.weight"
  %1 = const i32[2] = [120, -40]  # "conv2.bias"
  %2 = qconv %x, %0, %1 {kernel=[2,2], strides=[1,1], pads=[1,1,0,0], dilations=[1,1], group=1, epilogue=[bias, requant, clamp(0,255)]} : u8<0.0213:0>[N,2,4,4]  # "qconv"
  %3 = const i8<0.01:0>[2,1,1,1] = [64, -32]  # "dw.weight"
  %4 = qconv %2, %3 {kernel=[1,1], strides=[2,2], pads=[0,0,0,0], dilations=[1,1], group=2, epilogue=[dequant]} : f32[N,2,2,2]  # "qdw"
  return %2, %4
}"#,
        },
        Case {
            name: "pointwise qconv of i8 activations gathers rows with the sign bit flipped",
            shapes: &[&[1, 2, 2, 2]],
            qir: r#"graph q(%x: i8<0.05:-3>[N,2,2,2]) -> (y: i8<0.1:0>[N,2,2,2]) {
  %0 = const i8<0.01:0>[2,2,1,1] = [10, -20, 30, -40]  # "w"
  %1 = qconv %x, %0 {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=1, epilogue=[requant]} : i8<0.1:0>[N,2,2,2]  # "qconv"
  return %1
}"#,
        },
        Case {
            name: "qmatmul with bias and requant; qgemm trans_b with dequant",
            shapes: &[&[3, 4]],
            qir: r#"graph q(%x: u8<0.02:128>[N,4]) -> (y: u8<0.05:0>[N,3], z: f32[N,2]) {
  %0 = const i8<axis=1: 0.01:0, 0.02:0, 0.03:0>[4,3] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]  # "fc1.weight"
  %1 = const i32[3] = [100, -200, 300]  # "fc1.bias"
  %2 = qmatmul %x, %0, %1 {epilogue=[bias, requant]} : u8<0.05:0>[N,3]  # "fc1"
  %3 = const i8<axis=0: 0.01:0, 0.015:0>[2,3] = [-1, 2, -3, 4, -5, 6]  # "fc2.weight"
  %4 = qgemm %2, %3 {alpha=1.0, trans_a=false, trans_b=true, epilogue=[dequant]} : f32[N,2]  # "fc2"
  return %2, %4
}"#,
        },
        Case {
            name: "float gemm with C and alpha; matmul of a 3-D tensor; gemm with trans_a on the host",
            shapes: &[&[2, 4], &[2, 2, 3]],
            qir: r#"graph f(%x: f32[N,4], %y: f32[N,2,3]) -> (a: f32[N,3], b: f32[N,2,2], c: f32[4,3]) {
  %0 = const f32[3,4] = [0.1, 0.2, 0.3, 0.4, -0.5, 0.6, -0.7, 0.8, 0.9, -1.0, 1.1, -1.2]  # "fc.weight"
  %1 = const f32[3] = [0.01, 0.02, -0.03]  # "fc.bias"
  %2 = gemm %x, %0, %1 {alpha=0.5, beta=2.0, trans_a=false, trans_b=true} : f32[N,3]  # "gemm"
  %3 = const f32[3,2] = [1.0, 0.0, 0.0, 2.0, 0.5, 0.5]  # "mm.weight"
  %4 = matmul %y, %3 : f32[N,2,2]  # "matmul"
  %5 = gemm %x, %2, _ {alpha=1.0, beta=1.0, trans_a=true, trans_b=false} : f32[4,3]  # "gemm_ta"
  return %2, %4, %5
}"#,
        },
        Case {
            name: "matmuls absorb a last-axis bias (on either side), relu and a residual add; a bias along another axis does not fuse",
            shapes: &[&[1, 2, 3]],
            qir: r#"graph f(%x: f32[N,2,3]) -> (a: f32[N,2,3], b: f32[N,2,3]) {
  %0 = const f32[3,3] = [0.1, 0.2, 0.3, 0.4, -0.5, 0.6, -0.7, 0.8, 0.9]  # "w"
  %1 = matmul %x, %0 : f32[N,2,3]  # "fc1"
  %2 = const f32[3] = [0.01, 0.02, -0.03]  # "b1"
  %3 = add %2, %1 : f32[N,2,3]  # "fc1_bias"
  %4 = relu %3 : f32[N,2,3]  # "fc1_relu"
  %5 = add %4, %x : f32[N,2,3]  # "fc1_residual"
  %6 = matmul %x, %0 : f32[N,2,3]  # "fc2"
  %7 = const f32[2,1] = [0.5, -0.5]  # "b2"
  %8 = add %6, %7 : f32[N,2,3]  # "fc2_row_bias"
  return %5, %8
}"#,
        },
        Case {
            name: "the integer product of two activations with its epilogue as steps; a quantized add under broadcasting",
            shapes: &[&[1, 2, 4, 3], &[1, 2, 3, 4]],
            qir: r#"graph q(%q: u8<0.02:128>[N,2,4,3], %k: i8<0.03:-5>[1,2,3,4]) -> (s: u8<0.1:120>[N,2,4,4], b: u8<0.12:100>[N,2,4,4]) {
  %0 = qmatmul %q, %k {epilogue=[requant, clamp(125,250)]} : u8<0.1:120>[N,2,4,4]  # "scores"
  %1 = const u8<0.04:7>[4,1] = [0, 255, 10, 200]  # "bias"
  %2 = qadd %1, %0 : u8<0.12:100>[N,2,4,4]  # "biased"
  return %0, %2
}"#,
        },
        Case {
            name: "dynamic quantization chains (quantize, integer matmul or conv, cast, scale) as one step each; one whose scale is used twice is not fused",
            shapes: &[&[2, 4], &[1, 2, 3, 3]],
            qir: r#"graph d(%x: f32[N,4], %i: f32[N,2,3,3]) -> (y: f32[N,3], c: f32[N,2,3,3], s: f32[]) {
  %0, %1, %2 = dynamic_quantize %x : u8[N,4], f32[], u8[]  # "x_dq"
  %3 = const i8[4,3] = [1, -2, 3, -4, 5, -6, 7, -8, 9, -10, 11, -12]  # "w"
  %4 = matmul_integer %0, %3, %2, _ : i32[N,3]  # "mm"
  %5 = cast %4 {to=f32} : f32[N,3]  # "mm_cast"
  %6 = const f32[3] = [0.02, 0.01, 0.03]  # "w_scale"
  %7 = mul %1, %6 : f32[3]  # "mm_scale"
  %8 = mul %5, %7 : f32[N,3]  # "mm_mul"
  %9, %10, %11 = dynamic_quantize %i : u8[N,2,3,3], f32[], u8[]  # "i_dq"
  %12 = const i8[2,2,1,1] = [3, -1, 2, 5]  # "k"
  %13 = conv_integer %9, %12, %11, _ {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=1} : i32[N,2,3,3]  # "conv"
  %14 = cast %13 {to=f32} : f32[N,2,3,3]  # "conv_cast"
  %15 = const f32[] = [0.05]  # "k_scale"
  %16 = mul %10, %15 : f32[]  # "conv_scale"
  %17 = mul %14, %16 : f32[N,2,3,3]  # "conv_mul"
  %18 = mul %1, %15 : f32[]  # "x_scale_again"
  return %8, %17, %18
}"#,
        },
    ];

    #[test]
    fn conv_family_lowering() {
        check_family("conv", CASES);
    }
}
