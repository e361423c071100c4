"""Small ONNX models built in the tests (onnx.helper): several inputs and outputs, and a wide
input that is cheap to run, for the streaming-memory test."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def two_inputs() -> bytes:
    """y = (a + b) @ W (a [N,4], b [N,4], W [4,3]) and r = relu(a + b): two inputs, two outputs."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"], name="add"),
        helper.make_node("MatMul", ["s", "W"], ["y"], name="matmul"),
        helper.make_node("Relu", ["s"], ["r"], name="relu"),
    ]
    g = helper.make_graph(
        nodes,
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 4]),
        ],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()


def wide(features: int, classes: int = 8) -> bytes:
    """logits = x @ W + b with x [N, features]: a large input per sample, little work per byte."""
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array((rng.standard_normal((features, classes)) * 0.01).astype(np.float32), "W")
    b = numpy_helper.from_array(np.zeros(classes, np.float32), "B")
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["logits"], name="fc")],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [w, b],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()
