//! Constant subgraphs computed once, when a program is compiled.
//!
//! A node whose inputs are all constants (a weight's `dequantize` in a graph that was not
//! optimized, a reshape of a constant shape) would otherwise be a host step that recomputes the
//! same tensor on every run, and would hide a constant weight from the kernel after it (a float
//! convolution whose weights come out of a `dequantize` runs on the interpreter). The JIT
//! evaluates such nodes with the reference interpreter ([`qforge_ir::interp::eval_node`]) at
//! compile time and lowers them as constants: the values are the ones the host step would have
//! computed, bit for bit.

use qforge_ir::interp::{eval_node, RunOptions};
use qforge_ir::{Graph, Op};
use std::sync::Arc;

/// `g` with every single-result node whose inputs are all constants replaced by a constant of
/// its value (in schedule order, so chains fold). A node the interpreter cannot evaluate is left
/// as it is: running it reports its error as before.
pub fn fold_constants(g: &Graph, max_tensor_bytes: u128) -> Graph {
    let mut g = g.clone();
    let Ok(order) = g.schedule() else { return g };
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
        let mut types = Vec::with_capacity(inputs.len());
        let mut all_const = true;
        for v in inputs {
            match v {
                None => {
                    tensors.push(None);
                    types.push(None);
                }
                Some(v) => match &g.node(v.node).op {
                    Op::Const(t) => {
                        tensors.push(Some(t.clone()));
                        types.push(Some(g.value_type(*v)));
                    }
                    _ => {
                        all_const = false;
                        break;
                    }
                },
            }
        }
        if !all_const {
            continue;
        }
        let refs: Vec<Option<&qforge_ir::Tensor>> = tensors.iter().map(|t| t.as_deref()).collect();
        let Ok(mut out) = eval_node(&node.name, &node.op, &types, &node.outputs, &refs, &opts) else { continue };
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
        let folded = fold_constants(&g, u128::MAX);
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
}
