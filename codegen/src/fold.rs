//! Constant subgraphs computed once, when a program is compiled.
//!
//! A node whose inputs are all constants (a weight's `dequantize` in a graph that was not
//! optimized, a reshape of a constant shape) would otherwise be a host step that recomputes the
//! same tensor on every run, and would hide a constant weight from the kernel after it (a float
//! convolution whose weights come out of a `dequantize` runs on the interpreter). The JIT
//! evaluates such nodes with the reference interpreter ([`qforge_ir::interp::eval_node`]) at
//! compile time and lowers them as constants: the values are the ones the host step would have
//! computed, bit for bit. A program is compiled for one set of input shapes, so a node whose
//! other inputs are read only for their dims (a range over a sequence length, the masks of
//! shifted-window attention built from the image size) is known then too and folds the same way.

use qforge_ir::interp::{eval_node, RunOptions};
use qforge_ir::{infer, Graph, Op, TensorType, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The concrete type of every value whose type the input types fix (in schedule order; a node
/// whose inference fails, or leaves a symbolic dim, and what depends on it are left out).
fn concrete_types(g: &Graph, order: &[qforge_ir::NodeId], input_types: &[TensorType]) -> HashMap<Value, TensorType> {
    let mut types = HashMap::new();
    for (&id, ty) in g.inputs().iter().zip(input_types) {
        types.insert(Value::new(id, 0), ty.clone());
    }
    for &id in order {
        let node = g.node(id);
        match &node.op {
            Op::Input => {}
            Op::Const(t) => {
                types.insert(Value::new(id, 0), node.outputs[0].with_shape(t.ir_shape()));
            }
            op => {
                let ins: Vec<Option<&TensorType>> =
                    node.inputs().iter().map(|v| v.and_then(|v| types.get(&v))).collect();
                if ins.iter().zip(node.inputs()).any(|(t, v)| v.is_some() && t.is_none()) {
                    continue;
                }
                let Ok(outs) = infer::infer(op, &ins, Some(&node.outputs)) else { continue };
                for (p, t) in outs.into_iter().enumerate() {
                    if t.shape.is_fixed() {
                        types.insert(Value::new(id, p), t);
                    }
                }
            }
        }
    }
    types
}

/// `g` with every single-result node whose value is known before the run replaced by a constant
/// of its value (in schedule order, so chains fold): a node whose inputs are all constants, or,
/// given the program's `input_types`, whose inputs are constants except ones it reads only for
/// their dims ([`Op::reads_only_dims`]: shape, range, the reference inputs of reshape_dyn and
/// expand_dyn). The shape and mask subgraphs of a model with dynamic sizes (a transformer's
/// position ids, shifted-window attention masks built from the image size) are then computed
/// once per input shape instead of on every run. A node the interpreter cannot evaluate is left
/// as it is: running it reports its error as before.
pub fn fold_constants(g: &Graph, input_types: &[TensorType], max_tensor_bytes: u128) -> Graph {
    let mut g = g.clone();
    let Ok(order) = g.schedule() else { return g };
    let types = concrete_types(&g, &order, input_types);
    let opts = RunOptions { max_tensor_bytes };
    for id in order {
        let node = g.node(id);
        if matches!(node.op, Op::Input | Op::Const(_)) || node.outputs.len() != 1 {
            continue;
        }
        let inputs = node.inputs();
        if inputs.iter().flatten().next().is_none() {
            continue;
        }
        let mut tensors = Vec::with_capacity(inputs.len());
        let mut in_types = Vec::with_capacity(inputs.len());
        let mut known = true;
        for (slot, v) in inputs.iter().enumerate() {
            match v {
                None => {
                    tensors.push(None);
                    in_types.push(None);
                }
                Some(v) => match &g.node(v.node).op {
                    Op::Const(t) => {
                        tensors.push(Some(t.clone()));
                        in_types.push(Some(g.value_type(*v).clone()));
                    }
                    _ if node.op.reads_only_dims(slot) && types.contains_key(v) => {
                        tensors.push(None);
                        in_types.push(types.get(v).cloned());
                    }
                    _ => {
                        known = false;
                        break;
                    }
                },
            }
        }
        if !known {
            continue;
        }
        // the concrete result type when the input types fix it (a range's length), else the
        // declared one (a node of constants only)
        let out_types = match types.get(&Value::new(id, 0)) {
            Some(t) => vec![t.clone()],
            None => node.outputs.clone(),
        };
        let refs: Vec<Option<&qforge_ir::Tensor>> = tensors.iter().map(|t| t.as_deref()).collect();
        let type_refs: Vec<Option<&TensorType>> = in_types.iter().map(Option::as_ref).collect();
        let Ok(mut out) = eval_node(&node.name, &node.op, &type_refs, &out_types, &refs, &opts) else { continue };
        let Some(t) = out.pop().filter(|_| out.is_empty()) else { continue };
        let slots = inputs.len();
        g.node_mut(id).op = Op::Const(Arc::new(t));
        for slot in 0..slots {
            g.set_input(id, slot, None);
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JitExecutable, JitOptions};
    use qforge_ir::interp::run;
    use qforge_ir::{text, Tensor};

    /// A float gemm whose weights come out of a `dequantize` of a constant (a graph quantized
    /// but not optimized): the weight is folded, so the gemm gets a constant right operand and
    /// nothing runs on the interpreter; results match the interpreter's.
    const DEQUANTIZED_WEIGHT: &str = include_str!("../../tests/fixtures/qir/per_group.qir");

    #[test]
    fn a_dequantized_constant_weight_is_folded_and_the_gemm_runs_in_generated_code() {
        let g = text::parse(DEQUANTIZED_WEIGHT).expect("fixture");
        let folded = fold_constants(&g, &[], u128::MAX);
        let dq = folded.node_ids().find(|&id| folded.node(id).name == "fc.weight_DequantizeLinear").expect("dq");
        let Op::Const(w) = &folded.node(dq).op else { panic!("not folded: {:?}", folded.node(dq).op) };
        // the constant is what the interpreter computes for the node
        let reference = {
            let mut only = g.clone();
            only.set_output_value(0, qforge_ir::Value::new(dq, 0));
            run(&only, &[Tensor::from_f32(vec![1, 5], vec![0.0; 5])]).expect("run")
        };
        assert_eq!(**w, reference[0]);

        let x = Tensor::from_f32(vec![3, 5], (0..15).map(|i| i as f32 * 0.25 - 1.0).collect());
        let exe = JitExecutable::new(g.clone(), JitOptions::default());
        let report = exe.program(std::slice::from_ref(&x)).expect("program").report.clone();
        assert!(report.host_ops.is_empty(), "host steps: {:?}", report.host_ops);
        let got = exe.run(std::slice::from_ref(&x)).expect("jit");
        let want = run(&g, &[x]).expect("interp");
        let (got, want) = (got[0].to_f32_vec(), want[0].to_f32_vec());
        for (a, b) in got.iter().zip(&want) {
            // float results differ by summation order only (5 products per dot)
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{got:?} vs {want:?}");
        }
    }

    /// A mask built from the input's size (a range over the width, compared, selected) and a
    /// constant broadcast to the batch: folded per input shape, so no step runs on the
    /// interpreter, the range folds to a constant of the width's length, and the results are the
    /// interpreter's at two input shapes.
    const SHAPE_MASK: &str = include_str!("../../tests/fixtures/qir/shape_mask.qir");

    #[test]
    fn shape_subgraphs_fold_per_input_shape() {
        let g = text::parse(SHAPE_MASK).expect("fixture");
        let exe = JitExecutable::new(g.clone(), JitOptions::default());
        for (n, h, w) in [(1, 3, 5), (2, 4, 7)] {
            let x = Tensor::from_f32(vec![n, 4, h, w], (0..n * 4 * h * w).map(|i| (i % 11) as f32 - 5.0).collect());
            let types = [qforge_ir::TensorType::new(qforge_ir::DType::F32, x.ir_shape())];
            let folded = fold_constants(&g, &types, u128::MAX);
            let cols = folded.node_ids().find(|&id| folded.node(id).name == "cols").expect("range");
            let Op::Const(c) = &folded.node(cols).op else { panic!("not folded: {:?}", folded.node(cols).op) };
            assert_eq!(c.to_i64_vec().expect("i64"), (0..w as i64).collect::<Vec<_>>());
            let report = exe.program(std::slice::from_ref(&x)).expect("program").report.clone();
            assert!(report.host_ops.is_empty(), "host steps: {:?}", report.host_ops);
            let got = exe.run(std::slice::from_ref(&x)).expect("jit");
            let want = run(&g, &[x]).expect("interp");
            assert_eq!(got[0].to_f32_vec(), want[0].to_f32_vec());
        }
    }
}
