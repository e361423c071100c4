#!/usr/bin/env python3
"""Writes the fixtures of the ONNX ops the importer composes from IR ops (Attention,
RotaryEmbedding, RMSNormalization, the losses, Hardmax, LpPool, ...): a few cases of ONNX's own
backend node tests per op, taken from the generators shipped in the `onnx` wheel
(`onnx.backend.test.case.node`, what `backend-test-tools generate-data` writes), in ONNX's
data-set layout: `tests/fixtures/composed/<case>/model.onnx`, `input_<j>.pb`, `output_<k>.pb`.
The expected outputs are the generators' (the ONNX reference's); ops whose suite cases are all
float64 get float32 models of their own with onnx.reference outputs. When onnxruntime is installed the
script also prints its agreement with them, as a cross-check. `tests/tests/composed.rs` runs every
case on the interpreter and the JIT.

Usage: python3 scripts/gen_composed_fixtures.py   (from the repository root; onnx 1.23)
"""
from __future__ import annotations

import os
import shutil
import sys
import warnings

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "composed")

# One to a few cases per composed op, covering its attributes and optional inputs/outputs.
CASES = [
    "test_attention_3d_gqa_causal",
    "test_attention_3d_with_past_and_present_qk_matmul_softcap",
    "test_attention_4d_attn_mask_bool_4d",
    "test_attention_4d_diff_heads_with_past_and_present_mask3d",
    "test_attention_4d_with_past_and_present_qk_matmul_bias",
    "test_attention_4d_with_qk_matmul_softmax",
    "test_attention_4d_softcap_neginf_mask_poison",
    "test_attention_causal_boolmask_nan_robustness",
    "test_attention_4d_gqa_causal_nonpad_decode",
    "test_attention_local_window_with_past",
    "test_attention_24_qk_matmul_output_mode3_softmax_precision",
    "test_rotary_embedding",
    "test_rotary_embedding_interleaved",
    "test_rotary_embedding_3d_input",
    "test_rotary_embedding_with_rotary_dim",
    "test_rms_normalization_3d_axis1_epsilon",
    "test_nllloss_NCd1d2d3_none_no_weight_negative_ii",
    "test_nllloss_NCd1_weight_ii",
    "test_sce_mean_weight_ii_4d_log_prob",
    "test_sce_NCd1d2d3_sum_weight_high_ii",
    "test_hardmax_axis_1",
    "test_lppool_2d_pads",
    "test_reduce_min_keepdims_random",
    "test_reduce_min_default_axes_keepdims_random",
    "test_swish",
    "test_swiglu",
    "test_shrink_soft",
    "test_mvn",
    "test_layer_normalization_3d_axis1_epsilon",
]

# Cases whose inputs after the first must be constants for qforge (a reduction's axes): they are
# written with those inputs as initializers (the same values, so the same semantics).
FREEZE = {"test_reduce_min_keepdims_random"}


def own_cases():
    """Cases the suite lacks (its ReduceLogSumExp cases are float64, its ReduceMin ones float or
    bool): small models with onnx.reference outputs."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    out = []
    for keepdims in (0, 1):
        x = rng.uniform(-4, 4, (3, 2, 4)).astype(np.float32)
        axes = numpy_helper.from_array(np.array([-1, 0], np.int64), "axes")
        node = helper.make_node("ReduceLogSumExp", ["x", "axes"], ["y"], keepdims=keepdims)
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [axes])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
        y = ReferenceEvaluator(m).run(None, {"x": x})[0]
        out.append((f"reduce_log_sum_exp_f32_keepdims{keepdims}", m, [x], [y]))
    for dt, np_dt in ((TensorProto.INT32, np.int32), (TensorProto.UINT8, np.uint8), (TensorProto.INT8, np.int8)):
        info = np.iinfo(np_dt)
        x = rng.integers(info.min, info.max, (3, 4), endpoint=True).astype(np_dt)
        x[0, 0], x[2, 3] = info.min, info.max
        axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
        node = helper.make_node("ReduceMin", ["x", "axes"], ["y"], keepdims=0)
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", dt, x.shape)],
                              [helper.make_tensor_value_info("y", dt, None)], [axes])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
        y = ReferenceEvaluator(m).run(None, {"x": x})[0]
        out.append((f"reduce_min_{np.dtype(np_dt).name}", m, [x], [y]))
    return out


def freeze(model, inputs):
    """The model with every graph input but the first an initializer holding its value."""
    from onnx import numpy_helper

    m = type(model)()
    m.CopyFrom(model)
    g = m.graph
    keep = [g.input[0]]
    for vi, a in zip(list(g.input)[1:], inputs[1:]):
        g.initializer.append(numpy_helper.from_array(np.asarray(a), vi.name))
    del g.input[:]
    g.input.extend(keep)
    return m, inputs[:1]


def main() -> int:
    warnings.filterwarnings("ignore")
    import onnx
    from onnx import numpy_helper
    from onnx.backend.test.case import node as node_cases

    by_name = {c.name: c for c in node_cases.collect_testcases()}
    missing = [n for n in CASES if n not in by_name]
    if missing:
        print("not among the onnx", onnx.__version__, "cases:", ", ".join(missing), file=sys.stderr)
        return 1
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    shutil.rmtree(OUT, ignore_errors=True)
    todo = []
    for name in CASES:
        case = by_name[name]
        inputs, outputs = case.data_sets[0]
        model = case.model
        if name in FREEZE:
            model, inputs = freeze(model, list(inputs))
        todo.append((name, model, inputs, outputs))
    for name, model, inputs, outputs in todo + own_cases():
        d = os.path.join(OUT, name)
        os.makedirs(d)
        with open(os.path.join(d, "model.onnx"), "wb") as f:
            f.write(model.SerializeToString())
        g = model.graph
        for j, (vi, a) in enumerate(zip(g.input, inputs)):
            with open(os.path.join(d, f"input_{j}.pb"), "wb") as f:
                f.write(numpy_helper.from_array(np.asarray(a), vi.name).SerializeToString())
        for k, (vi, a) in enumerate(zip(g.output, outputs)):
            with open(os.path.join(d, f"output_{k}.pb"), "wb") as f:
                f.write(numpy_helper.from_array(np.asarray(a), vi.name).SerializeToString())
        note = ""
        if ort is not None:
            try:
                s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
                got = s.run(None, {vi.name: np.asarray(a) for vi, a in zip(g.input, inputs)})
                err = max(float(np.nanmax(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
                          for x, y in zip(got, outputs))
                note = f"ORT max |diff| {err:.2e}"
            except Exception as e:  # ORT lacks some of the newest ops and types
                note = "ORT: " + str(e).splitlines()[0][:80]
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print(f"{name}: {size} bytes; {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
