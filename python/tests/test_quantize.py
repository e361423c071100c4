"""Model.quantize and Model.precision, and what a Staged model does: compile, export, save,
report; calibration from arrays, dicts and iterables."""

import json
import subprocess

import numpy as np
import onnxruntime as ort
import pytest

import qforge
from conftest import cli, corpus, require_vnni, top1
from models import two_inputs


class Loader:
    """A DataLoader-like re-iterable: (x, label) batches, a fresh iterator per pass, a length."""

    def __init__(self, x, batch):
        self.x, self.batch, self.passes = x, batch, 0

    def __len__(self):
        return -(-len(self.x) // self.batch)

    def __iter__(self):
        self.passes += 1
        for i in range(0, len(self.x), self.batch):
            yield self.x[i : i + self.batch], np.zeros(len(self.x[i : i + self.batch]), np.int64)


def test_int8_accuracy_matches_the_readme(int8, int8_exe, test_x, test_y):
    assert int8.mode == "int8"
    assert int8.stages == ["canonicalize", "fold-batch-norm", "calibrate", "bias-correction", "quantize"]
    assert top1(int8_exe.run(test_x), test_y) == pytest.approx(594 / 597)
    assert int8.passes[0]["pass"] == "canonicalize" and all("time_ms" in p for p in int8.passes)
    assert "quantize" in int8.ir() and int8.summary()["ops"]["quantize"] >= 1
    assert int8.warnings == []
    assert int8.inputs == int8_exe.inputs and int8.outputs == int8_exe.outputs


def test_every_calibration_form_gives_the_same_model(digits, calib_x, int8_exe, test_x):
    """An array is cut into batches of calib_batch rows, as --calib files are; the same batches
    from a list, a generator or a loader calibrate the same ranges. Bias correction takes what it
    needs in the calibration pass, so a one-shot iterator gives the same model too."""
    ref = int8_exe.run(test_x)
    batches = [calib_x[i : i + 50] for i in range(0, 200, 50)]
    loader = Loader(calib_x, 50)
    for calib in (batches, iter(batches), (b for b in batches), loader, {"input": calib_x}):
        exe = digits.quantize(calib=calib).compile()
        assert np.array_equal(exe.run(test_x), ref), type(calib)
    assert loader.passes == 1  # static INT8 reads the data once: calibration (and bias correction's means)


def test_multi_pass_stages_reiterate(digits, calib_x, test_x, test_y):
    loader = Loader(calib_x, 40)
    q = digits.quantize(calib=loader, min_sqnr=40, method="mse")
    assert loader.passes >= 2  # calibration, then the sensitivity study of the fallback
    assert "float-fallback" in q.stages
    assert top1(q.compile().run(test_x), test_y) >= 0.99


def test_options_reach_the_pipeline(digits, calib_x):
    per_tensor = digits.quantize(calib=calib_x, per_channel=False).ir()
    per_channel = digits.quantize(calib=calib_x, per_channel=True).ir()
    assert "const i8<axis=0:" in per_channel and "const i8<axis=0:" not in per_tensor
    sym = digits.quantize(calib=calib_x, symmetric=True).summary()
    assert any(n["dtype"] == "i8" and n["op"] == "quantize" for n in sym["nodes"])
    skip = digits.quantize(calib=calib_x, qconfig={"node": [{"match": "/fc/*", "skip": True}]})
    assert "gemm" in skip.summary()["ops"]
    assert digits.quantize(calib=calib_x, profile="nvidia-xavier").stages[-1] == "align-channels"
    for m in ("minmax", "ema", "percentile", "entropy", "mse"):
        digits.quantize(calib=calib_x, method=m)


def test_qconfig_file(digits, calib_x, tmp_path):
    p = tmp_path / "q.toml"
    p.write_text('[[node]]\nmatch = "/fc/*"\nskip = true\n')
    a = digits.quantize(calib=calib_x, qconfig=p).ir()
    b = digits.quantize(calib=calib_x, qconfig={"node": [{"match": "/fc/*", "skip": True}]}).ir()
    assert a == b


def test_dynamic_needs_no_calibration(digits, test_x, test_y):
    q = digits.quantize(mode="dynamic")
    assert q.mode == "dynamic" and "calibrate" not in q.stages
    assert top1(q.compile().run(test_x), test_y) >= 0.99


def test_precision_modes(digits, calib_x, test_x, test_y):
    for mode in ("fp16", "bf16", "amp"):
        s = digits.precision(mode)
        assert s.mode == mode and "precision" in s.stages
        assert top1(s.compile().run(test_x), test_y) >= 0.99
    guarded = digits.precision("fp16", calib=[calib_x[:100], calib_x[100:]], min_sqnr=40)
    assert any(p["pass"] == "precision" for p in guarded.passes)
    xavier = digits.precision("amp", profile="nvidia-xavier")
    assert any(p["pass"] == "align-channels" for p in xavier.passes)


def test_dict_calibration_for_two_inputs():
    m = qforge.load(two_inputs())
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 64, 4)).astype(np.float32)
    q1 = m.quantize(calib={"a": a, "b": b})
    q2 = m.quantize(calib=[{"a": a[i : i + 50], "b": b[i : i + 50]} for i in (0, 50)])
    q3 = m.quantize(calib=[(a[i : i + 50], b[i : i + 50]) for i in (0, 50)])
    assert q1.ir() == q2.ir() == q3.ir()
    y, r = q1.compile().run([a, b])
    assert y.shape == (64, 3) and r.shape == (64, 4)


def test_export_onnx_runs_in_onnxruntime_with_the_same_top1(int8, int8_exe, test_x, test_y, tmp_path):
    """The ONNX Runtime cross-check: the QDQ export of qforge's quantization, run by ORT, gets
    the top-1 qforge gets on the digits test set."""
    require_vnni()
    path = tmp_path / "digits_int8.onnx"
    assert int8.export_onnx(path) is None
    data = int8.export_onnx()
    assert data == path.read_bytes()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    ort_logits = sess.run(None, {"input": test_x})[0]
    assert top1(ort_logits, test_y) == top1(int8_exe.run(test_x), test_y)
    print(f"\ndigits static INT8 top-1: qforge {top1(int8_exe.run(test_x), test_y):.4f}, ORT on the export {top1(ort_logits, test_y):.4f}")


def test_save_and_load_artifact(int8, int8_exe, test_x, tmp_path):
    path = tmp_path / "digits_int8.qfa"
    int8.save(path)
    a = qforge.load(path)
    assert a.compiled and a.artifact["model"] == "digits_cnn.onnx"
    assert a.artifact["pipeline"]["quantize"] == "int8"
    assert a.artifact["pipeline"]["calib"].startswith("<python: `ndarray`")
    assert np.array_equal(a.compile().run(test_x), int8_exe.run(test_x))
    assert np.array_equal(qforge.load(path.read_bytes()).compile(threads=2).run(test_x), int8_exe.run(test_x))
    # the executable saves the same graph
    p2 = tmp_path / "again.qfa"
    int8_exe.save(p2)
    assert qforge.load(p2).ir(full=True) == a.ir(full=True)


def test_report(int8, test_x, test_y, tmp_path):
    path = tmp_path / "digits.html"
    r = int8.report(path, input=test_x, labels=test_y, latency_iters=3)
    html = path.read_text()
    assert '<section id="sensitivity"' in html or 'id="sensitivity"' in html
    assert r["samples"] == 597 and r["compiled_top1"] == pytest.approx(594 / 597)
    assert r["fp32_top1"] == pytest.approx(594 / 597) and r["sqnr_db"] > 20


def test_sensitivity_rows(digits, calib_x, test_x, test_y, tmp_path):
    s = digits.sensitivity(calib=calib_x, input=test_x, labels=test_y)
    assert isinstance(s, qforge.Sensitivity) and s.samples == 597
    assert all(isinstance(r, qforge.SensitivityRow) for r in s.layers)
    assert [r.sqnr_db for r in s.layers] == sorted(r.sqnr_db for r in s.layers)  # least robust first
    assert s.fp32_top1 == pytest.approx(594 / 597) and s.kept_float is None
    # the rows of `qforge sensitivity --json`, to the last digit
    args = ["sensitivity", corpus("digits_cnn.onnx"), "--calib", corpus("digits_calib_x.npy")]
    args += ["--input", corpus("digits_test_x.npy"), "--labels", corpus("digits_test_y.npy"), "--json"]
    j = json.loads(subprocess.run([str(cli()), *map(str, args)], check=True, capture_output=True, text=True).stdout)
    assert [(r.node, r.op, r.sqnr_db, r.top1, r.origins) for r in s.layers] == [
        (r["node"], r["op"], r["sqnr_db"], r["top1"], r["from"]) for r in j["layers"]
    ]
    assert (s.all_int8_sqnr_db, s.all_int8_top1) == (j["all_int8_sqnr_db"], j["all_int8_top1"])
    # the float fallback to an SQNR target, and the qconfig it writes, used by quantize
    f = digits.sensitivity(calib=calib_x, min_sqnr=45)
    assert f.kept_float and f.reached >= 45 and f.layers[0].top1 is None
    p = tmp_path / "keep.toml"
    p.write_text(f.qconfig)
    q = digits.quantize(calib=calib_x, qconfig=p)
    assert q.summary()["ops"]["quantize"] < digits.quantize(calib=calib_x).summary()["ops"]["quantize"]
