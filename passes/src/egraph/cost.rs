//! The cost model: what one e-node costs on the target, from a table of unit costs.
//!
//! A node costs a fixed overhead (one kernel), its memory traffic (bytes of every non-constant
//! operand read and every result written) and its arithmetic (multiply-accumulates for conv and
//! matrix products, element operations otherwise), each priced by the [`CostTable`]. So:
//! integer kernels are cheaper than float ones (`int8_mac < float_mac`); a fused node is cheaper
//! than the separate nodes it replaces (one overhead and one round trip to memory instead of
//! several; each epilogue step only costs `epilogue_elem` per element); every quantize,
//! dequantize, requantize and cast pays its traffic; views (reshape, flatten, squeeze, unsqueeze)
//! cost almost nothing. Constants cost their bytes at `const_byte` (so an i8 weight beats its f32
//! original, and two copies of a weight cost twice).
//!
//! Batch normalization is priced as it is computed unfused, `(x - mean) / sqrt(var + eps) *
//! scale + bias` per element (a division and a square root among its six operations), so a per-channel
//! multiply and add with precomputed constants is cheaper, and folding into a conv cheaper still.
//!
//! Symbolic dimensions (the batch) count as `batch`. The table is a plain struct: the compiler
//! derives it from the hardware profile ([`CostTable::from_profile`]); [`CostTable::host`] is the
//! default.

use super::analysis::EG;
use super::lang::QNode;
use crate::precision::profile::{CostClass, NumType, Profile};
use egg::{Id, Language};
use qforge_ir::{DType, Epilogue, Op, TensorType};

/// Unit costs of a target (arbitrary units: one f32 element operation is 1).
#[derive(Clone, Debug, PartialEq)]
pub struct CostTable {
    /// Whether the target has int8 kernels; without, the integer lowering rules do not run and
    /// the fusion report says so.
    pub int8: bool,
    /// Fixed cost of one kernel.
    pub node: f64,
    /// Per byte read or written by a kernel.
    pub byte: f64,
    /// Per byte of constant data.
    pub const_byte: f64,
    /// Per multiply-accumulate: f32, f16/bf16, int8.
    pub float_mac: f64,
    pub half_mac: f64,
    pub int8_mac: f64,
    /// Per element of a float element-wise operation (a division or square root counts 4).
    pub float_elem: f64,
    /// Per element of an integer element-wise operation.
    pub int_elem: f64,
    /// Per element of each fused epilogue step.
    pub epilogue_elem: f64,
    /// Views (reshape and friends) cost this fraction of a node and nothing per element.
    pub view: f64,
    /// The size assumed for symbolic dimensions.
    pub batch: usize,
}

impl Default for CostTable {
    fn default() -> Self {
        CostTable::host()
    }
}

impl CostTable {
    /// A generic x86-64 host with int8 dot products (VNNI or `pmaddubsw`).
    pub fn host() -> CostTable {
        CostTable {
            int8: true,
            node: 64.0,
            byte: 0.25,
            const_byte: 0.01,
            float_mac: 1.0,
            half_mac: 1.0,
            int8_mac: 0.25,
            float_elem: 1.0,
            int_elem: 0.5,
            epilogue_elem: 0.125,
            view: 0.125,
            batch: 1,
        }
    }

    /// The table a hardware profile prices with: its multiply-accumulate costs (conv, relative to
    /// f32 conv), element-wise costs, byte cost, int8 support and preferred batch. The overhead
    /// per kernel, constant bytes, epilogue steps and views keep [`CostTable::host`]'s values
    /// (a profile does not state them). A profile without a type (no f16, say) prices it as f32:
    /// it never runs in it anyway, precision assignment refuses it.
    pub fn from_profile(p: &Profile) -> CostTable {
        let host = CostTable::host();
        let cost = |class: CostClass, t: NumType| p.cost(class, t);
        let f32_mac = cost(CostClass::Conv, NumType::F32).filter(|c| *c > 0.0).unwrap_or(1.0);
        let rel = |class: CostClass, t: NumType, or: f64| cost(class, t).map(|c| c / f32_mac).unwrap_or(or);
        let half_mac = match (cost(CostClass::Conv, NumType::F16), cost(CostClass::Conv, NumType::Bf16)) {
            (Some(a), Some(b)) => a.min(b) / f32_mac,
            (Some(a), None) | (None, Some(a)) => a / f32_mac,
            (None, None) => 1.0,
        };
        let float_elem = rel(CostClass::Elementwise, NumType::F32, host.float_elem);
        CostTable {
            int8: p.dtypes.int8,
            byte: p.cost.byte / f32_mac,
            float_mac: 1.0,
            half_mac,
            int8_mac: rel(CostClass::Conv, NumType::I8, 1.0),
            float_elem,
            int_elem: rel(CostClass::Elementwise, NumType::I8, float_elem),
            batch: p.layout.preferred_batch.max(1),
            ..host
        }
    }

    fn numel(&self, t: &TensorType) -> f64 {
        t.shape.dims().iter().map(|d| d.fixed().unwrap_or(self.batch) as f64).product()
    }

    fn bytes(&self, t: &TensorType) -> f64 {
        self.numel(t) * t.dtype.size_bytes() as f64
    }

    fn mac(&self, dtype: DType) -> f64 {
        match dtype {
            DType::F32 => self.float_mac,
            DType::F16 | DType::BF16 => self.half_mac,
            _ => self.int8_mac,
        }
    }

    /// The cost of `node` alone (its operands not included).
    pub fn node_cost(&self, eg: &EG, class: Id, node: &QNode) -> f64 {
        let d = match node {
            QNode::Root(_) | QNode::Absent | QNode::Input(_) | QNode::Proj(..) => return 0.0,
            QNode::Const(r) => return self.bytes(&eg.analysis.konst(*r).ty) * self.const_byte,
            QNode::Op(d, _) => d,
        };
        let ch = node.children();
        let out_types = &eg[class].data.types;
        let in_types: Vec<Option<&TensorType>> = ch.iter().map(|&c| eg[c].data.ty()).collect();
        let is_const = |i: usize| ch.get(i).is_some_and(|&c| eg[c].data.konst.is_some());
        let out_elems: f64 = out_types.iter().map(|t| self.numel(t)).sum();
        let op = d.op();
        if matches!(
            op,
            Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } | Op::Identity
        ) {
            return self.node * self.view;
        }
        let mut traffic: f64 = out_types.iter().map(|t| self.bytes(t)).sum();
        for (i, t) in in_types.iter().enumerate() {
            if let Some(t) = t {
                if !is_const(i) {
                    traffic += self.bytes(t);
                }
            }
        }
        let w = |i: usize| in_types.get(i).copied().flatten();
        let epilogue = |ep: &[Epilogue]| ep.len() as f64 * out_elems * self.epilogue_elem;
        let compute = match op {
            Op::Conv(_) | Op::QConv { .. } | Op::ConvInteger(_) => {
                let k: f64 = w(1)
                    .map(|t| self.numel(t) / t.shape.dims().first().and_then(|d| d.fixed()).unwrap_or(1) as f64)
                    .unwrap_or(1.0);
                let dt = w(0).map(|t| t.dtype).unwrap_or(DType::F32);
                let ep = match op {
                    Op::QConv { epilogue: e, .. } => epilogue(e),
                    _ => 0.0,
                };
                out_elems * k * self.mac(dt) + ep
            }
            Op::MatMul | Op::Gemm { .. } | Op::QMatMul { .. } | Op::QGemm { .. } | Op::MatMulInteger => {
                let k = match (op, w(0)) {
                    (Op::Gemm { trans_a: true, .. } | Op::QGemm { trans_a: true, .. }, Some(a)) => {
                        a.shape.dims().first().and_then(|d| d.fixed()).unwrap_or(1)
                    }
                    (_, Some(a)) => a.shape.dims().last().and_then(|d| d.fixed()).unwrap_or(1),
                    _ => 1,
                } as f64;
                let dt = w(0).map(|t| t.dtype).unwrap_or(DType::F32);
                let ep = match op {
                    Op::QMatMul { epilogue: e } | Op::QGemm { epilogue: e, .. } => epilogue(e),
                    Op::Gemm { .. } if ch.len() > 2 => out_elems * self.epilogue_elem,
                    _ => 0.0,
                };
                out_elems * k * self.mac(dt) + ep
            }
            Op::BatchNorm { .. } => out_elems * self.float_elem * 12.0,
            Op::MaxPool(p) | Op::AveragePool(p) | Op::QAveragePool(p) => {
                out_elems * p.kernel.iter().product::<usize>() as f64 * self.float_elem
            }
            Op::GlobalAveragePool | Op::GlobalMaxPool | Op::QGlobalAveragePool => {
                w(0).map(|t| self.numel(t)).unwrap_or(out_elems) * self.float_elem
            }
            Op::QAdd | Op::QMul | Op::QConcat { .. } => out_elems * self.int_elem * 2.0,
            Op::Unary(u) => {
                use qforge_ir::UnaryOp::*;
                let per = match u {
                    Relu | Neg | Abs | Floor | Ceil | Not => 1.0,
                    _ => 8.0,
                };
                out_elems * per * self.float_elem
            }
            Op::Binary(qforge_ir::BinaryOp::Div | qforge_ir::BinaryOp::Pow) => out_elems * 4.0 * self.float_elem,
            Op::Softmax { .. } | Op::LogSoftmax { .. } | Op::LayerNorm { .. } | Op::Lrn { .. } => {
                out_elems * 10.0 * self.float_elem
            }
            Op::Quantize | Op::Requantize | Op::DynamicQuantize => out_elems * 2.0 * self.float_elem,
            _ => out_elems * self.float_elem,
        };
        self.node + traffic * self.byte + compute
    }
}

#[cfg(test)]
mod tests {
    use super::CostTable;
    use crate::precision::Profile;

    /// Every shipped profile prices arithmetic the way its hardware does: int8 below f32 where it
    /// has int8, f16 no dearer than f32, and the host profile as written keeps the host table's
    /// int8 and batch assumptions.
    #[test]
    fn shipped_profiles_make_sane_tables() {
        for p in Profile::all_shipped() {
            let t = CostTable::from_profile(&p);
            assert_eq!(t.float_mac, 1.0, "{}", p.name);
            assert!(t.half_mac <= t.float_mac, "{}: {t:?}", p.name);
            assert_eq!(t.int8, p.dtypes.int8, "{}", p.name);
            if p.dtypes.int8 {
                assert!(t.int8_mac < t.float_mac, "{}: {t:?}", p.name);
            }
            assert!(t.byte > 0.0 && t.batch >= 1, "{}: {t:?}", p.name);
        }
        let xavier = Profile::shipped("nvidia-xavier").expect("shipped");
        let t = CostTable::from_profile(&xavier);
        assert_eq!((t.half_mac, t.int8_mac, t.batch), (0.125, 0.0625, 8));
    }
}
