"""qforge.load and the Model object: every way to load, the model's description, compile()."""

import numpy as np
import onnx
import pytest

import qforge
from conftest import ASSETS, corpus, top1
from models import two_inputs


def test_load_path_bytes_proto_agree(digits_path, test_x):
    by_path = qforge.load(digits_path)
    by_str = qforge.load(str(digits_path))
    by_bytes = qforge.load(digits_path.read_bytes())
    by_bytearray = qforge.load(bytearray(digits_path.read_bytes()))
    by_proto = qforge.load(onnx.load(str(digits_path)))
    ref = by_path.compile().run(test_x)
    for m in (by_str, by_bytes, by_bytearray, by_proto):
        assert np.array_equal(m.compile().run(test_x), ref)
    assert by_path.path == str(digits_path) and by_bytes.path is None
    assert by_path.name == "digits_cnn"


def test_inputs_outputs_and_repr(digits):
    assert digits.inputs == [qforge.TensorInfo("input", "float32", ("N", 1, 8, 8))]
    assert digits.outputs == [qforge.TensorInfo("logits", "float32", ("N", 10))]
    assert not digits.compiled and digits.artifact is None
    assert repr(digits) == "<qforge.Model digits_cnn (model): input float32[N,1,8,8] -> logits float32[N,10]>"


def test_ir_text_and_qir_round_trip(digits, tmp_path, test_x):
    text = digits.ir()
    assert text.startswith("graph digits_cnn(")
    full = digits.ir(full=True)
    assert len(full) > len(text)
    p = tmp_path / "digits.qir"
    p.write_text(full)
    again = qforge.load(p)
    assert again.ir(full=True) == full
    assert np.array_equal(again.compile().run(test_x), digits.compile().run(test_x))


def test_summary_has_inspect_json_keys(digits):
    s = digits.summary()
    assert {"inputs", "outputs", "ops", "params", "weight_bytes", "nodes"} <= set(s)
    assert s["ops"]["conv"] == 3 and s["params"] > 0


def test_compile_fp32_accuracy_and_options(digits, test_x, test_y):
    exe = digits.compile()
    assert (exe.engine, exe.threads) == ("jit", 1)
    assert top1(exe.run(test_x), test_y) == pytest.approx(594 / 597)
    # the other engine and kernels compute the same model
    for e in (digits.compile(engine="interp"), digits.compile(kernels="cranelift"), digits.compile(threads=2)):
        assert np.allclose(e.run(test_x), exe.run(test_x), rtol=1e-4, atol=1e-4)
    assert digits.compile(opt_level=0).summary()["ops"].get("batch_norm") == 3


def test_bundled_assets_load():
    m = qforge.load(ASSETS / "digits_cnn.onnx")
    x = np.load(ASSETS / "digits_samples_x.npy")
    assert m.compile().run(x).shape == (x.shape[0], 10)


def test_two_inputs_two_outputs_by_list_and_dict():
    m = qforge.load(two_inputs())
    assert [i.name for i in m.inputs] == ["a", "b"] and [o.name for o in m.outputs] == ["y", "r"]
    exe = m.compile()
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), np.float32)
    y, r = exe.run([a, b])
    y2, r2 = exe({"b": b, "a": a})
    assert np.array_equal(y, y2) and np.array_equal(r, r2)
    assert np.array_equal(r, np.maximum(a + b, 0))


def test_mobilenet_loads_with_symbolic_batch():
    m = qforge.load(corpus("mobilenet_v2.onnx"))
    (inp,) = m.inputs
    assert inp.dtype == "float32" and inp.shape[1:] == (3, 224, 224)
