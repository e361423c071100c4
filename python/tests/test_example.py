"""The example runs and prints its table (python/examples/compare_with_ort.py)."""

import subprocess
import sys
from pathlib import Path

from conftest import corpus, require_vnni

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "compare_with_ort.py"


def test_compare_with_ort_prints_the_table():
    require_vnni()
    args = [sys.executable, str(EXAMPLE), "--iters", "5"]
    for flag, f in (("--model", "digits_cnn.onnx"), ("--calib", "digits_calib_x.npy"), ("--test-x", "digits_test_x.npy"), ("--test-y", "digits_test_y.npy")):
        args += [flag, str(corpus(f))]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=300).stdout
    rows = {line.split("|")[2].strip(): line.split("|")[3].strip() for line in out.splitlines() if line.startswith("| int8")}
    assert len(rows) == 3, out
    # the README's figures: ORT's quantize_static 99.33 %, qforge (with bias correction, the
    # default) 99.50 %, and ORT running qforge's export gives qforge's own top-1
    assert rows["ONNX Runtime quantize_static"] == "99.33%", out
    assert rows["qforge"] == "99.50%", out
    assert rows["ONNX Runtime on qforge's export"] == rows["qforge"], out
