"""Shared fixtures: the bundled digits model and the corpus beside the checkout
(``../shared/models/``), and the release CLI for the parity tests.

Nothing here skips: a missing corpus file or CLI binary fails the test that needs it, with
the command that provides it."""

import os
from pathlib import Path

import numpy as np
import pytest

import qforge

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "compiler" / "assets"
SHARED = Path(os.environ.get("QFORGE_SHARED_MODELS", REPO.parent / "shared" / "models"))


def require_vnni() -> None:
    """ONNX Runtime's u8 x i8 kernels are an exact oracle only on a CPU with AVX-512 VNNI or
    AVX-VNNI: without them they multiply with `vpmaddubsw`, which saturates each pair of products
    (ONNX Runtime's quantization guide), and its top-1 on the digits export drops to 97.3% where
    qforge's exact kernels keep 99.5%. A test that needs it fails without it (`.ci/run` leaves it
    out by name on such a CPU, listed in `.ci/cpu_feature_tests`)."""
    flags = ""
    try:
        flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
    except OSError:
        pass
    words = flags.split()
    assert "avx512_vnni" in words or "avx_vnni" in words, "this test needs a CPU with AVX-512 VNNI or AVX-VNNI"


def corpus(name: str) -> Path:
    """A file of the shared corpus; fails (never skips) when it is missing."""
    p = SHARED / name
    if not p.exists():
        pytest.fail(f"{p} is missing: the tests read the shared corpus at ../shared/models/ (QFORGE_SHARED_MODELS)")
    return p


def cli() -> Path:
    """The release `qforge` binary the parity tests compare with."""
    p = Path(os.environ.get("QFORGE_BIN", REPO / "target" / "release" / "qforge"))
    if not p.exists():
        pytest.fail(f"{p} is missing: build it with `cargo build --release` (or set QFORGE_BIN)")
    return p


@pytest.fixture(scope="session")
def digits_path() -> Path:
    return corpus("digits_cnn.onnx")


@pytest.fixture(scope="session")
def digits(digits_path) -> "qforge.Model":
    return qforge.load(digits_path)


@pytest.fixture(scope="session")
def calib_x() -> np.ndarray:
    return np.load(corpus("digits_calib_x.npy"))


@pytest.fixture(scope="session")
def test_x() -> np.ndarray:
    return np.load(corpus("digits_test_x.npy"))


@pytest.fixture(scope="session")
def test_y() -> np.ndarray:
    return np.load(corpus("digits_test_y.npy"))


@pytest.fixture(scope="session")
def int8(digits, calib_x) -> "qforge.Staged":
    return digits.quantize(calib=calib_x)


@pytest.fixture(scope="session")
def int8_exe(int8) -> "qforge.Executable":
    return int8.compile()


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())
