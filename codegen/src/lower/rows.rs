//! Row steps ([`crate::micro::rowops`]): softmax and log-softmax over any axis, layer norm with
//! constant scale and bias, an f32 tensor combined with a per-channel or last-axis constant (a
//! batch norm left as mul/add, a transformer's bias), and transposes of any dtype.

use super::{dims, ensure, host, need, numel, At, Layout, Lowerer, Lw, StepKind};
use crate::micro::rowops::{self, RowKind, RowOp};
use qforge_ir::{infer, BinaryOp, Op, Tensor};
use std::sync::Arc;

impl Lowerer<'_> {
    /// A permutation of axes: each output element reads the input at the permuted strides.
    pub(super) fn transpose(&mut self, n: &At, perm: &[usize]) -> Lw {
        let x = need(n.input(0).filter(|v| !self.is_const(*v)), "the input is a constant")?;
        let (din, dout) = need(dims(&self.types[&x]).zip(dims(&n.oty)), "a shape is not fixed")?;
        let elem = n.oty.dtype.size_bytes();
        let rank = din.len();
        ensure(perm.len() == rank && dout.len() == rank, "the permutation does not fit the rank")?;
        ensure(matches!(elem, 1 | 2 | 4 | 8), "an element size other than 1, 2, 4 or 8 bytes")?;
        // row-major input strides, in elements
        let mut stride = vec![1usize; rank];
        for a in (0..rank.saturating_sub(1)).rev() {
            stride[a] = stride[a + 1] * din[a + 1];
        }
        let mut index = dout.clone();
        for &p in perm {
            index.push(*need(stride.get(p), "a permutation entry is out of range")?);
        }
        let input = self.plain(x, &n.name)?;
        let output = self.define(n.out, Layout::Plain);
        let len = numel(&n.oty);
        let kind = RowKind::Transpose { elem };
        let op = RowOp { index, ..RowOp::elementwise(kind, len) };
        self.push(&n.name, StepKind::Rows { op, input, input2: None, output, units: len.div_ceil(rowops::CHUNK) });
        Ok(())
    }

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
        let op = RowOp { kind, x: 0, y: 0, n, inner, scale, bias, index: vec![], lut: vec![], x2: 0, plan: None };
        self.push(name, StepKind::Rows { op, input, input2: None, output, units });
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{check_family, Case};

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
}
