//! Element-wise kernels: quantize, dequantize, the quantized add, the float add and clamp (ReLU,
//! Clip) as CLIF element-wise steps; unary activations and f16/bf16 casts as row steps (the
//! interpreter's own element formulas). Each keeps its first input's layout.

use super::{ensure, int_ty, need, numel, per_tensor, At, Layout, Lowerer, Lw, StepKind, Vinfo};
use crate::emit::elementwise::Elementwise;
use crate::micro::rowops::{self, RowKind};
use qforge_ir::{numerics, DType, Op, UnaryOp, Value};

/// The types [`RowKind::CastElems`] converts between.
fn plain_cast(t: DType) -> bool {
    matches!(t, DType::Bool | DType::U8 | DType::I8 | DType::I32 | DType::I64 | DType::F32)
}

/// The tables of the quantized add `p` of an activation stored as `x` (u8 or i8) and the
/// constant values `kv` (one table per value): entry `b` of table `c` is the result's stored byte
/// (an i8 in two's complement) for the activation's stored byte `b` (ONNX Runtime's QLinearAdd,
/// the activation as its `a`).
pub(super) fn qadd_lut(p: &numerics::QAddParams, kv: &[i64], x: DType, out: DType) -> Vec<u8> {
    kv.iter()
        .flat_map(|&kc| {
            (0..=255u8).map(move |byte| {
                let q = if x == DType::I8 { byte as i8 as i64 } else { byte as i64 };
                p.apply(q, kc, out) as u8
            })
        })
        .collect()
}

impl Lowerer<'_> {
    /// The quantized add of two per-tensor quantized activations of the result's shape.
    pub(super) fn qadd(&mut self, n: &At) -> Lw {
        let (a, b) = need(n.input(0).zip(n.input(1)), "an input is missing")?;
        let (ta, tb) = (self.types[&a].clone(), self.types[&b].clone());
        if self.is_const(a) != self.is_const(b) {
            return self.qadd_const(n, a, b);
        }
        ensure(!self.is_const(a) && !self.is_const(b), "an input is a constant")?;
        ensure(ta.shape == n.oty.shape && tb.shape == n.oty.shape, "the inputs are broadcast")?;
        let (Some((sa, za)), Some((sb, zb)), Some((sc, zc))) =
            (per_tensor(&ta.quant), per_tensor(&tb.quant), per_tensor(&n.oty.quant))
        else {
            return super::host("an operand is not quantized per tensor");
        };
        let (Some(ia), Some(ib), Some(io)) = (int_ty(ta.dtype), int_ty(tb.dtype), int_ty(n.oty.dtype)) else {
            return super::host("an operand is not u8 or i8");
        };
        ensure(numel(&n.oty) > 1, "a single element")?;
        let p = numerics::QAddParams::new(sa, za, sb, zb, sc, zc);
        self.elementwise(n, &[a, b], Elementwise::QAdd { p, a: ia, b: ib, out: io })
    }

    /// The quantized add of an activation of the result's shape and a constant of one element (a
    /// learnable affine block's bias) or of one per channel of the activation's innermost axis
    /// in memory (a linear layer's bias after a channels-last matmul; a per-channel bias on an
    /// NHWC activation): for each channel a function of the activation's byte alone, tabulated
    /// with the interpreter's formula (ORT hands its kernel the broadcast operand second,
    /// whichever input it is, so the activation is always `a` of [`numerics::QAddParams`]).
    fn qadd_const(&mut self, n: &At, a: Value, b: Value) -> Lw {
        let (x, k) = if self.is_const(b) { (a, b) } else { (b, a) };
        let (tx, tk) = (self.types[&x].clone(), self.types[&k].clone());
        ensure(tx.shape == n.oty.shape && numel(&n.oty) > 1, "the activation is broadcast, or a single element")?;
        let kv = need(self.const_of(Some(k)).and_then(|t| t.to_i64_vec()), "the constant is not integer")?;
        let (Some((sx, zx)), Some((sk, zk)), Some((sc, zc))) =
            (per_tensor(&tx.quant), per_tensor(&tk.quant), per_tensor(&n.oty.quant))
        else {
            return super::host("an operand is not quantized per tensor");
        };
        ensure(int_ty(tx.dtype).is_some() && int_ty(n.oty.dtype).is_some(), "an operand is not u8 or i8")?;
        let (layout, plane) = match kv.len() {
            1 => (self.vals[&x].layout, 1),
            c => need(
                self.channel_tables(x, &tk, c),
                "the constant varies along more than one axis, or along an NHWC value's image axes",
            )?,
        };
        let p = numerics::QAddParams::new(sx, zx, sk, zk, sc, zc);
        let lut = qadd_lut(&p, &kv, tx.dtype, n.oty.dtype);
        self.tables_step(n, x, layout, lut, (kv.len(), plane))
    }

    /// How the `c` values of a constant of type `tk`, broadcast against the activation `x`, meet
    /// its elements in memory: the layout, and the run of elements (`plane`) that share one
    /// value. The last axis in plain order (plane 1), the channel axis of an NHWC activation
    /// (plane 1), or any single axis in plain order (plane = the product of the axes after it,
    /// the image's size for an NCHW channel). `None` when the constant varies along more than
    /// one axis or along an NHWC activation's non-channel axis.
    fn channel_tables(&self, x: Value, tk: &qforge_ir::TensorType, c: usize) -> Option<(super::Layout, usize)> {
        let xd = super::dims(&self.types[&x])?;
        let kd = super::dims(tk)?;
        if kd.len() > xd.len() {
            return None;
        }
        // the constant's axes aligned with the activation's last ones (numpy broadcasting)
        let off = xd.len() - kd.len();
        let varying: Vec<usize> = kd.iter().enumerate().filter(|(_, &d)| d != 1).map(|(i, _)| i + off).collect();
        let [axis] = varying[..] else { return None };
        if xd[axis] != c {
            return None;
        }
        let layout = self.vals[&x].layout;
        match layout {
            super::Layout::Nhwc if xd.len() == 4 && axis == 1 => Some((layout, 1)),
            super::Layout::Nhwc => None,
            _ => Some((super::Layout::Plain, xd[axis + 1..].iter().product())),
        }
    }

    /// f32 -> u8/i8 with per-tensor parameters from the result's type.
    pub(super) fn quantize(&mut self, n: &At) -> Lw {
        let x = need(n.input(0), "the input is missing")?;
        let (Some((s, z)), Some(io)) = (per_tensor(&n.oty.quant), int_ty(n.oty.dtype)) else {
            return super::host("the result is not u8 or i8 quantized per tensor");
        };
        ensure(self.types[&x].dtype == DType::F32, "the input is not f32")?;
        ensure(!n.ins.iter().skip(1).any(|v| v.is_some()), "scale or zero point given as inputs")?;
        self.elementwise(n, &[x], Elementwise::Quantize { scale: s, zp: z, out: io })
    }

    /// u8/i8 with per-tensor parameters -> f32.
    pub(super) fn dequantize(&mut self, n: &At) -> Lw {
        let x = need(n.input(0), "the input is missing")?;
        let t = self.types[&x].clone();
        let (Some((s, z)), Some(ii)) = (per_tensor(&t.quant), int_ty(t.dtype)) else {
            return super::host("the input is not u8 or i8 quantized per tensor");
        };
        ensure(n.oty.dtype == DType::F32, "the result is not f32")?;
        ensure(!n.ins.iter().skip(1).any(|v| v.is_some()), "scale or zero point given as inputs")?;
        self.elementwise(n, &[x], Elementwise::Dequantize { scale: s, zp: z, input: ii })
    }

    /// f32 ReLU and Clip: `min(max(x, lo), hi)`.
    pub(super) fn clamp(&mut self, n: &At) -> Lw {
        let x = need(n.input(0), "the input is missing")?;
        let (lo, hi) = match n.op {
            Op::Clip { min, max } => (*min, *max),
            _ => (0.0, f32::INFINITY),
        };
        self.elementwise(n, &[x], Elementwise::ClampF32 { lo, hi })
    }

    /// The f32 add of two tensors of the result's shape.
    pub(super) fn add_f32(&mut self, n: &At) -> Lw {
        let (a, b) = need(n.input(0).zip(n.input(1)), "an input is missing")?;
        self.elementwise(n, &[a, b], Elementwise::AddF32 { relu: false })
    }

    /// A unary f32 activation (sigmoid, tanh, GELU, ...) as a row step.
    pub(super) fn unary(&mut self, n: &At, u: UnaryOp) -> Lw {
        let x = need(n.input(0).filter(|v| !self.is_const(*v)), "the input is a constant")?;
        let layout = self.vals[&x].layout;
        let input = self.in_layout(x, layout, &n.name)?;
        let output = self.define(n.out, layout);
        let len = numel(&n.oty);
        self.push_rows(&n.name, RowKind::Unary(u), input, output, len, 1, len.div_ceil(rowops::CHUNK), vec![], vec![]);
        Ok(())
    }

    /// A cast to the same dtype aliases its input; f16/bf16 <-> f32 are row steps.
    pub(super) fn cast(&mut self, n: &At, to: DType) -> Lw {
        let x = need(n.input(0).filter(|v| !self.is_const(*v)), "the input is a constant")?;
        let from = self.types[&x].dtype;
        let kind = match (from, to) {
            (a, b) if a == b => {
                let v = self.vals[&x].clone();
                self.vals.insert(n.out, Vinfo { ty: n.oty.clone(), buf: v.buf, layout: v.layout });
                return Ok(());
            }
            (DType::F16, DType::F32) => RowKind::WidenF16,
            (DType::BF16, DType::F32) => RowKind::WidenBf16,
            (DType::F32, DType::F16) => RowKind::RoundF16,
            (DType::F32, DType::BF16) => RowKind::RoundBf16,
            (a, b) if plain_cast(a) && plain_cast(b) => {
                let input = self.plain(x, &n.name)?;
                let output = self.define(n.out, Layout::Plain);
                let len = numel(&n.oty);
                let kind = RowKind::CastElems { from: a, to: b };
                self.push_rows(&n.name, kind, input, output, len, 1, len.div_ceil(rowops::CHUNK), vec![], vec![]);
                return Ok(());
            }
            (a, b) => return super::host(format!("no kernel casts {} to {}", a.name(), b.name())),
        };
        let layout = self.vals[&x].layout;
        let input = self.in_layout(x, layout, &n.name)?;
        let output = self.define(n.out, layout);
        let len = numel(&n.oty);
        self.push_rows(&n.name, kind, input, output, len, 1, len.div_ceil(rowops::CHUNK), vec![], vec![]);
        Ok(())
    }

    /// An element-wise step over `ins` (no constants), in the first input's layout.
    fn elementwise(&mut self, n: &At, ins: &[Value], op: Elementwise) -> Lw {
        ensure(!ins.iter().any(|v| self.is_const(*v)), "an input is a constant")?;
        let layout = self.vals[&ins[0]].layout;
        let mut bufs = Vec::new();
        for &v in ins {
            bufs.push(self.in_layout(v, layout, &n.name)?);
        }
        let output = self.define(n.out, layout);
        let len = numel(&self.types[&n.out]);
        self.push(&n.name, StepKind::Elementwise { op, inputs: bufs, output, len });
        Ok(())
    }
}

/// The exact GELU as `torch.onnx.export` writes it: `d = div(x, c)`, `e = erf(d)`, `a = add(e,
/// 1)`, `p = mul(x, a)`, `y = mul(p, 0.5)` (the adds' and multiplies' operands in either order,
/// the constants one f32 value each), each intermediate used only by the next: one
/// [`RowKind::Gelu`] step.
impl Lowerer<'_> {
    /// The one f32 value of the constant `v`.
    fn scalar_f32(&self, v: Value) -> Option<f32> {
        let t = self.const_of(Some(v))?;
        match t.as_f32()? {
            [k] => Some(*k),
            _ => None,
        }
    }

    /// The operands of the binary node `id` of op `op` when one of them is `v`: the other one,
    /// and whether `v` comes first.
    fn other_operand(&self, id: qforge_ir::NodeId, op: qforge_ir::BinaryOp, v: Value) -> Option<(Value, bool)> {
        let n = self.g.node(id);
        let ins: Vec<Value> = n.inputs().iter().flatten().copied().collect();
        match (&n.op, &ins[..]) {
            (Op::Binary(o), &[a, b]) if *o == op && (a == v) != (b == v) => {
                Some(if a == v { (b, true) } else { (a, false) })
            }
            _ => None,
        }
    }

    /// The GELU nodes after the `div` node `id` (`erf`, `add`, `mul` by the input, `mul`), when
    /// `id` starts one on f32 values of one shape.
    pub(super) fn gelu_chain(&self, id: qforge_ir::NodeId) -> Option<Vec<qforge_ir::NodeId>> {
        use qforge_ir::BinaryOp::{Add, Div, Mul};
        let n = self.g.node(id);
        let (x, c) = match (&n.op, n.inputs()) {
            (Op::Binary(Div), [Some(x), Some(c)]) => (*x, *c),
            _ => return None,
        };
        let ty = self.ty(x)?;
        if ty.dtype != DType::F32 || self.is_const(x) || self.scalar_f32(c).is_none() {
            return None;
        }
        let d = Value::new(id, 0);
        let erf = self.only_user(d)?;
        if !matches!(self.g.node(erf).op, Op::Unary(UnaryOp::Erf)) {
            return None;
        }
        let add = self.only_user(Value::new(erf, 0))?;
        let (one, _) = self.other_operand(add, Add, Value::new(erf, 0))?;
        let mul = self.only_user(Value::new(add, 0))?;
        let (by, _) = self.other_operand(mul, Mul, Value::new(add, 0))?;
        let last = self.only_user(Value::new(mul, 0))?;
        let (half, _) = self.other_operand(last, Mul, Value::new(mul, 0))?;
        let same = [d, Value::new(erf, 0), Value::new(add, 0), Value::new(mul, 0), Value::new(last, 0)]
            .iter()
            .all(|v| self.ty(*v) == Some(ty));
        (by == x && same && self.scalar_f32(one).is_some() && self.scalar_f32(half).is_some())
            .then(|| vec![erf, add, mul, last])
    }

    /// The GELU from the `div` node `id` through `chain` ([`Self::gelu_chain`]) as one step in
    /// the input's layout; if no kernel covers it, its nodes are lowered one by one.
    pub(super) fn lower_gelu(
        &mut self,
        id: qforge_ir::NodeId,
        chain: &[qforge_ir::NodeId],
    ) -> Result<(), crate::JitError> {
        let fused = self.gelu(id, chain);
        self.group_or_nodes(fused, id, chain)
    }

    fn gelu(&mut self, id: qforge_ir::NodeId, chain: &[qforge_ir::NodeId]) -> Lw {
        use qforge_ir::BinaryOp::{Add, Mul};
        let &[erf, add, mul, last] = chain else { return super::host("not a GELU") };
        let n = self.g.node(id);
        let (x, c) = need(
            n.inputs().first().copied().flatten().zip(n.inputs().get(1).copied().flatten()),
            "an input is missing",
        )?;
        let div = need(self.scalar_f32(c), "the divisor is not one f32 value")?;
        let (k1, _) = need(self.other_operand(add, Add, Value::new(erf, 0)), "not an add")?;
        let (kh, _) = need(self.other_operand(last, Mul, Value::new(mul, 0)), "not a multiply")?;
        let (one, half) = need(self.scalar_f32(k1).zip(self.scalar_f32(kh)), "a constant is not one f32 value")?;
        let layout = self.vals[&x].layout;
        let label = std::iter::once(id)
            .chain(chain.iter().copied())
            .map(|c| self.g.node(c).name.clone())
            .collect::<Vec<_>>()
            .join("+");
        let input = self.in_layout(x, layout, &label)?;
        let out = Value::new(last, 0);
        let output = self.define(out, layout);
        let len = numel(&self.types[&out]);
        let kind = RowKind::Gelu { div, one, half };
        self.push_rows(&label, kind, input, output, len, 1, len.div_ceil(rowops::CHUNK), vec![], vec![]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{check_family, Case};

    const CASES: &[Case] = &[
        Case {
            name: "quantize, qadd, dequantize",
            shapes: &[&[2, 4], &[2, 4]],
            qir: r#"graph e(%a: f32[N,4], %b: f32[N,4]) -> (y: f32[N,4]) {
  %0 = quantize %a : u8<0.02:100>[N,4]  # "a_q"
  %1 = quantize %b : i8<0.03:-5>[N,4]  # "b_q"
  %2 = qadd %0, %1 : u8<0.05:10>[N,4]  # "qadd"
  %3 = dequantize %2 : f32[N,4]  # "y_dq"
  return %3
}"#,
        },
        Case {
            name: "a broadcast qadd and a one-element qadd: the broadcasting kernel",
            shapes: &[&[2, 4], &[1, 1]],
            qir: r#"graph e(%a: u8<0.02:100>[N,4], %b: u8<0.03:0>[1,1]) -> (y: u8<0.05:10>[N,4], z: u8<0.05:10>[1,1]) {
  %0 = qadd %a, %b : u8<0.05:10>[N,4]  # "qadd_bcast"
  %1 = qadd %b, %b : u8<0.05:10>[1,1]  # "qadd_one"
  return %0, %1
}"#,
        },
        Case {
            name: "a qadd of a per-channel constant is one table per channel (innermost, or an outer axis in plain order); varying along two axes, the broadcasting kernel",
            shapes: &[&[2, 3, 4], &[4, 2], &[4, 2]],
            qir: r#"graph e(%x: u8<0.02:100>[N,3,4], %w: u8<0.03:7>[4,N], %v: u8<0.03:7>[4,2]) -> (a: u8<0.05:10>[N,3,4], d: u8<0.05:9>[4,N], f: u8<0.05:9>[4,2]) {
  %0 = const i8<0.01:0>[4] = [127, -128, 0, 55]  # "linear.bias"
  %1 = qadd %x, %0 : u8<0.05:10>[N,3,4]  # "linear_add"
  %2 = const u8<0.03:0>[4,1] = [10, 200, 0, 1]  # "col.bias"
  %3 = qadd %w, %2 : u8<0.05:9>[4,N]  # "col_add"
  %4 = const u8<0.03:0>[4,2] = [10, 200, 0, 1, 2, 3, 4, 5]  # "full"
  %5 = qadd %v, %4 : u8<0.05:9>[4,2]  # "full_add"
  return %1, %3, %5
}"#,
        },
        Case {
            name: "relu and clip keep the NHWC layout of a pooled input; same-shape add",
            shapes: &[&[1, 2, 4, 4]],
            qir: r#"graph e(%x: f32[N,2,4,4]) -> (y: f32[N,2,2,2]) {
  %0 = max_pool %x {kernel=[2,2], strides=[2,2], pads=[0,0,0,0], dilations=[1,1], ceil_mode=false, count_include_pad=false} : f32[N,2,2,2]  # "pool"
  %1 = relu %0 : f32[N,2,2,2]  # "relu"
  %2 = clip %0 {min=-1.0, max=6.0} : f32[N,2,2,2]  # "clip"
  %3 = add %1, %2 : f32[N,2,2,2]  # "add"
  return %3
}"#,
        },
        Case {
            name: "unary activations, f16 casts and an integer-to-float cast are row steps; same-dtype cast aliases",
            shapes: &[&[3, 5], &[3, 5]],
            qir: r#"graph e(%x: f32[N,5], %i: i32[N,5]) -> (a: f32[N,5], b: f32[N,5], c: f16[N,5], d: f32[N,5]) {
  %0 = sigmoid %x : f32[N,5]  # "sigmoid"
  %1 = gelu %0 : f32[N,5]  # "gelu"
  %2 = cast %1 {to=f16} : f16[N,5]  # "to_f16"
  %3 = cast %2 {to=f32} : f32[N,5]  # "to_f32"
  %4 = cast %3 {to=f32} : f32[N,5]  # "same"
  %5 = cast %i {to=f32} : f32[N,5]  # "from_i32"
  return %1, %4, %2, %5
}"#,
        },
        Case {
            name: "dequantize per axis and an integer add run on the host",
            shapes: &[&[2, 2], &[2, 2]],
            qir: r#"graph e(%x: i8<axis=1: 0.5:0, 0.25:0>[N,2], %i: i32[N,2]) -> (y: f32[N,2], z: i32[N,2]) {
  %0 = dequantize %x : f32[N,2]  # "dq"
  %1 = add %i, %i : i32[N,2]  # "add_i32"
  return %0, %1
}"#,
        },
    ];

    #[test]
    fn elementwise_family_lowering() {
        check_family("elementwise", CASES);
    }
}
