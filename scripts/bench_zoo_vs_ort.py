#!/usr/bin/env python3
"""qforge against ONNX Runtime on the zoo (`tests/fixtures/zoo/`, the TorchScript exports),
measured side by side in one run (single thread, batch 1, the first size-A test image): FP32
latency of each runtime on the same ONNX file; INT8 latency of qforge's own static INT8
(`bench --quantize int8` with the model's 16 calibration images) against ONNX Runtime on its own
`quantize_static` QDQ file (default settings, the same calibration images, as
`scripts/gen_zoo_fixtures.py` quantizes); the steps qforge still runs on its interpreter (host
steps) in each. Prints a Markdown table for the README. Needs `pip install onnxruntime numpy`
and a release build.

    cargo build --release && python3 scripts/bench_zoo_vs_ort.py [--iters 50] [--models a,b]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ZOO = os.path.join(ROOT, "tests", "fixtures", "zoo")
ORT = os.path.join(ROOT, "..", "shared", "bench", "ort_latency.py")
QFORGE = os.path.join(ROOT, "target", "release", "qforge")


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ort_qdq(model, calib, path):
    """ONNX Runtime's `quantize_static` QDQ model of `model` on `calib` (batches of 4)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    name = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: calib[i:i + 4]} for i in range(0, len(calib), 4)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(model, path, Reader(), quant_format=QuantFormat.QDQ)


def host(ops):
    """`bench --json`'s host steps (`[op, count]` pairs) as `op count, ...`, or `none`."""
    return ", ".join(f"{k} {v}" for k, v in ops) if ops else "none"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--models", help="comma-separated names (default: every model of the manifest)")
    a = p.parse_args()
    manifest = json.load(open(os.path.join(ZOO, "manifest.json")))["models"]
    names = a.models.split(",") if a.models else sorted(manifest)
    tmp = tempfile.mkdtemp(prefix="qforge-zoo-bench-")
    common = ["--iters", str(a.iters), "--warmup", "10"]
    rows = []
    for m in names:
        info = manifest[m]
        onnx = os.path.join(ZOO, m + ".onnx")
        calib_path = os.path.join(ZOO, info["images"] + "_calib.npy")
        x = os.path.join(tmp, m + "_x.npy")
        np.save(x, np.load(os.path.join(ZOO, info["images"] + "_test_a.npy"))[:1])
        qdq = os.path.join(tmp, m + "_ort_qdq.onnx")
        ort_qdq(onnx, np.load(calib_path), qdq)
        q32 = run_json([QFORGE, "bench", onnx, "--input", x, "--json"] + common)
        q8 = run_json([QFORGE, "bench", onnx, "--quantize", "int8", "--calib", calib_path, "--input", x, "--json"]
                      + common)
        o32 = run_json([sys.executable, ORT, onnx, "--input", x] + common)
        o8 = run_json([sys.executable, ORT, qdq, "--input", x] + common)
        rows.append((m, q32, q8, o32, o8))
        print(f"{m}: done", file=sys.stderr)
    print("| model | ORT FP32 ms | qforge FP32 ms | ratio | ORT INT8 (`quantize_static`) ms | qforge INT8 ms | ratio | "
          "qforge INT8 / its FP32 | qforge FP32 host steps | qforge INT8 host steps |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m, q32, q8, o32, o8 in rows:
        print(f"| {m} | {o32['median_ms']:.3f} | {q32['median_ms']:.3f} | {q32['median_ms'] / o32['median_ms']:.2f} | "
              f"{o8['median_ms']:.3f} | {q8['median_ms']:.3f} | {q8['median_ms'] / o8['median_ms']:.2f} | "
              f"{q8['median_ms'] / q32['median_ms']:.2f} | {host(q32['host_ops'])} | {host(q8['host_ops'])} |")


if __name__ == "__main__":
    main()
