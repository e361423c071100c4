#!/usr/bin/env python3
"""Layer-by-layer agreement of OpenVINO with ONNX Runtime on a QDQ export (`qforge quantize
--profile intel-movidius`): every activation DequantizeLinear becomes an extra output, and for
each one the share of elements within one step (its scale) and bit-exact is printed, in graph
order. ONNX Runtime stands in for qforge here: on the ONNX Runtime-style exports the two agree
bit for bit (tests/tests/export_profiles.rs). Extra outputs may change which ops OpenVINO fuses,
so the figures describe the trend, not each fused kernel.

    python3 scripts/ov_layer_agreement.py OUT.onnx X.npy
"""
import sys
import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
from onnx import numpy_helper

model, x = onnx.load(sys.argv[1]), np.load(sys.argv[2])
init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
final = model.graph.output[0].name
acts = [(n.output[0], float(init[n.input[1]])) for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] not in init and n.output[0] != final]
typed = onnx.shape_inference.infer_shapes(model)
info = {v.name: v for v in list(typed.graph.value_info) + list(typed.graph.output)}
for name, _ in acts:
    model.graph.output.append(info[name])
path = sys.argv[1] + ".layers.onnx"
onnx.save(model, path)
names = [n for n, _ in acts]
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
ref = sess.run(names, {sess.get_inputs()[0].name: x})
cm = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
got = cm({0: x})
for (name, step), r in zip(acts, ref):
    d = np.abs(got[cm.output(name)] - r) / step
    print(f"{name[:64]:64s} within one step {(d <= 1.001).mean():7.4f}  exact {(d == 0).mean():7.4f}")
