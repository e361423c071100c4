"""Errors: every failure is a qforge.Error subclass with a one-line message. Where the CLI can
make the same mistake, the message is the CLI's line (without its `error: ` prefix); where the
mistake is Python's own (a dtype, a generator used twice), the message names the Python
argument instead of a flag."""

import subprocess

import numpy as np
import pytest

import qforge
from conftest import cli, corpus


def run_cli(*args) -> str:
    """The CLI's one-line error for a command that fails."""
    p = subprocess.run([str(cli()), *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 1, p
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0][len("error: ") :]


def bad_onnx(tmp_path):
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"garbage\n")
    return p


# (name, exception class, the Python call, the same mistake on the command line or None)
CLI_CASES = [
    (
        "missing file",
        qforge.FileError,
        lambda t, m, x: qforge.load(t / "missing.onnx"),
        lambda t, x: ["run", t / "missing.onnx", "--input", x, "--output", t / "o.npy"],
    ),
    (
        "not onnx",
        qforge.ModelError,
        lambda t, m, x: qforge.load(bad_onnx(t)),
        lambda t, x: ["run", bad_onnx(t), "--input", x, "--output", t / "o.npy"],
    ),
    (
        "unknown profile",
        qforge.OptionError,
        lambda t, m, x: m.quantize(calib=np.load(x), profile="nope"),
        lambda t, x: ["run", corpus("digits_cnn.onnx"), "--quantize", "int8", "--calib", x, "--profile", "nope", "--input", x, "--output", t / "o.npy"],
    ),
    (
        "size limit",
        qforge.LimitError,
        lambda t, m, x: qforge.load(corpus("digits_cnn.onnx"), max_tensor_bytes=1000),
        lambda t, x: ["run", corpus("digits_cnn.onnx"), "--max-tensor-bytes", "1000", "--input", x, "--output", t / "o.npy"],
    ),
]


@pytest.mark.parametrize("name,cls,call,cmd", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_the_clis_message(name, cls, call, cmd, tmp_path, digits):
    x = corpus("digits_calib_x.npy")
    with pytest.raises(cls) as e:
        call(tmp_path, digits, x)
    assert isinstance(e.value, qforge.Error)
    assert str(e.value) == run_cli(*cmd(tmp_path, x))


def gen(items):
    yield from items


def boom():
    yield np.zeros((2, 1, 8, 8), np.float32)
    raise ZeroDivisionError("division by zero")


# (name, exception class, call, a fragment of the message)
PY_CASES = [
    ("load an int", qforge.ModelError, lambda m, x: qforge.load(42), "cannot load a `int`"),
    ("bytes not onnx", qforge.ModelError, lambda m, x: qforge.load(b"\x00\x01garbage"), "`<bytes>` is not a valid ONNX model"),
    ("float64 input", qforge.InputError, lambda m, x: m.compile().run(x.astype(np.float64)), "cast it, e.g. x.astype(numpy.float32)"),
    ("wrong shape", qforge.InputError, lambda m, x: m.compile().run(np.zeros((2, 3), np.float32)), "input `input`"),
    ("unknown input name", qforge.InputError, lambda m, x: m.compile().run({"nope": x}), "`nope` names no model input"),
    ("no calibration", qforge.CalibrationError, lambda m, x: m.quantize(), "needs calibration data"),
    ("calibration dtype", qforge.CalibrationError, lambda m, x: m.quantize(calib=x.astype(np.int64)), "does not fit the model"),
    ("a bad batch", qforge.CalibrationError, lambda m, x: m.quantize(calib=gen([x[:5], np.zeros((3, 2), np.float32)])), "calibration batch 1 does not fit"),
    ("NaN calibration", qforge.CalibrationError, lambda m, x: m.quantize(calib=np.full_like(x, np.nan)), "NaN"),
    ("generator twice", qforge.CalibrationError, lambda m, x: m.quantize(calib=gen([x]), min_sqnr=30), "one-shot iterator"),
    ("not calibration data", qforge.CalibrationError, lambda m, x: m.quantize(calib=3.5), "not calibration data"),
    ("method", qforge.OptionError, lambda m, x: m.quantize(calib=x, method="foo"), "unknown calibration method `foo`"),
    ("mode", qforge.OptionError, lambda m, x: m.quantize(calib=x, mode="int4"), "mode `int4`"),
    ("precision", qforge.OptionError, lambda m, x: m.precision("fp8"), "precision `fp8`"),
    ("threads", qforge.OptionError, lambda m, x: m.compile(threads=0), "threads must be in 1..=256"),
    ("qconfig rule", qforge.OptionError, lambda m, x: m.quantize(calib=x, qconfig={"node": [{"match": "nothing*", "skip": True}]}), "names no node"),
    ("drop without labels", qforge.OptionError, lambda m, x: m.sensitivity(calib=x, max_accuracy_drop=0.01), "needs labels"),
    ("bench iters", qforge.OptionError, lambda m, x: m.compile().bench(iters=0), "iters"),
]


@pytest.mark.parametrize("name,cls,call,fragment", PY_CASES, ids=[c[0] for c in PY_CASES])
def test_python_mistakes(name, cls, call, fragment, digits, calib_x):
    with pytest.raises(cls) as e:
        call(digits, calib_x)
    msg = str(e.value)
    assert isinstance(e.value, qforge.Error) and "\n" not in msg and fragment in msg, msg


def test_the_iterables_exception_is_the_cause(digits):
    with pytest.raises(qforge.CalibrationError) as e:
        digits.quantize(calib=boom())
    assert isinstance(e.value.__cause__, ZeroDivisionError)
    assert "the calibration iterable raised an exception: ZeroDivisionError: division by zero" in str(e.value)


def test_keyboard_interrupt_passes_through(digits):
    def interrupted():
        yield np.zeros((2, 1, 8, 8), np.float32)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        digits.quantize(calib=interrupted())


def test_exception_classes_are_ordinary_python_ones():
    assert issubclass(qforge.InputError, ValueError) and issubclass(qforge.FileError, OSError)
    assert issubclass(qforge.ArtifactError, qforge.ModelError)
    for name in ("ModelError", "ArtifactError", "FileError", "InputError", "CalibrationError", "OptionError", "LimitError", "CompileError", "InternalError"):
        assert issubclass(getattr(qforge, name), qforge.Error)


def test_damaged_artifact(int8, tmp_path):
    p = tmp_path / "d.qfa"
    int8.save(p)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(qforge.ArtifactError):
        qforge.load(bytes(data))
    art = qforge.load(p)
    with pytest.raises(qforge.OptionError, match="compiled artifact"):
        art.quantize(calib=np.zeros((2, 1, 8, 8), np.float32))
