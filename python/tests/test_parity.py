"""The same call gives the same numbers as the same command: outputs from Python equal
`qforge run`'s bit for bit on the corpus models (../shared/models), in fp32, static and dynamic
INT8 and FP16/AMP, with the CLI's defaults on both sides."""

import subprocess

import numpy as np
import pytest

import qforge
from conftest import cli, corpus

DIGITS_X, DIGITS_C = "digits_test_x.npy", "digits_calib_x.npy"
IMG_X, IMG_C = "imagenet_like_test_x.npy", "imagenet_like_calib_x.npy"

# (model, input, calibration file or None, the CLI's pipeline flags, the Python call on a Model
# given the calibration array)
CASES = [
    ("digits_cnn.onnx", DIGITS_X, None, [], lambda m, c: m.compile()),
    ("digits_cnn.onnx", DIGITS_X, DIGITS_C, ["--quantize", "int8"], lambda m, c: m.quantize(calib=c).compile()),
    (
        "digits_cnn.onnx",
        DIGITS_X,
        DIGITS_C,
        ["--quantize", "int8", "--calib-method", "entropy", "--per-tensor", "--symmetric"],
        lambda m, c: m.quantize(calib=c, method="entropy", per_channel=False, symmetric=True).compile(),
    ),
    (
        "digits_cnn.onnx",
        DIGITS_X,
        DIGITS_C,
        ["--quantize", "int8", "--calib-method", "mse", "--profile", "nvidia-xavier", "--calib-batch", "64"],
        lambda m, c: m.quantize(calib=c, method="mse", profile="nvidia-xavier", calib_batch=64).compile(),
    ),
    ("digits_cnn.onnx", DIGITS_X, None, ["--quantize", "dynamic"], lambda m, c: m.quantize(mode="dynamic").compile()),
    ("digits_cnn.onnx", DIGITS_X, None, ["--precision", "fp16"], lambda m, c: m.precision("fp16").compile()),
    (
        "digits_cnn.onnx",
        DIGITS_X,
        None,
        ["--precision", "amp", "--profile", "nvidia-xavier"],
        lambda m, c: m.precision("amp", profile="nvidia-xavier").compile(),
    ),
    ("digits_cnn.onnx", DIGITS_X, None, ["--threads", "2"], lambda m, c: m.compile(threads=2)),
    ("digits_cnn_int8_qdq.onnx", DIGITS_X, None, [], lambda m, c: m.compile()),
    ("digits_cnn_int8_qop.onnx", DIGITS_X, None, [], lambda m, c: m.compile()),
    ("digits_cnn_int8_dynamic.onnx", DIGITS_X, None, [], lambda m, c: m.compile()),
    ("digits_cnn_qat.onnx", DIGITS_X, None, [], lambda m, c: m.compile()),
    ("mobilenet_v2.onnx", IMG_X, None, [], lambda m, c: m.compile()),
    ("mobilenet_v2.onnx", IMG_X, IMG_C, ["--quantize", "int8"], lambda m, c: m.quantize(calib=c).compile()),
    ("resnet18.onnx", IMG_X, IMG_C, ["--quantize", "int8"], lambda m, c: m.quantize(calib=c).compile()),
    ("resnet18.onnx", IMG_X, None, ["--precision", "bf16"], lambda m, c: m.precision("bf16").compile()),
]
for name in ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet", "vgg19", "zfnet512"):
    x = f"light/light_{name}_input.npy"
    CASES.append((f"light/light_{name}.onnx", x, None, [], lambda m, c: m.compile()))
    CASES.append((f"light/light_{name}.onnx", x, x, ["--quantize", "int8"], lambda m, c: m.quantize(calib=c).compile()))


def case_id(c):
    return " ".join([c[0].split("/")[-1].removesuffix(".onnx"), *c[3]]) or c[0]


@pytest.mark.parametrize("model,x,calib,flags,call", CASES, ids=[case_id(c) for c in CASES])
def test_python_equals_the_cli_bit_for_bit(model, x, calib, flags, call, tmp_path):
    out = tmp_path / "out.npy"
    args = [str(cli()), "run", corpus(model), "--input", corpus(x), "--output", out, *flags]
    if calib:
        args[7:7] = ["--calib", corpus(calib)]
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    want = np.load(out)
    got = call(qforge.load(corpus(model)), np.load(corpus(calib)) if calib else None).run(np.load(corpus(x)))
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes(), f"{np.abs(got - want).max()} max difference"
