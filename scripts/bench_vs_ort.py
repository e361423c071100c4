#!/usr/bin/env python3
"""qforge against ONNX Runtime, measured side by side in one run on this machine (single thread,
batch 1): FP32 and INT8 latency of resnet18 and mobilenet_v2, INT8 quantized by qforge with the
corpus calibration set (ORT runs the same quantization, exported by `qforge quantize` as QDQ).
Prints a Markdown table for the README. Needs `pip install onnxruntime numpy` and a release build.

    cargo build --release && python3 scripts/bench_vs_ort.py [--iters 50] [--models resnet18,mobilenet_v2]
"""
import argparse, json, os, platform, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = os.path.join(ROOT, "..", "shared", "models")
ORT = os.path.join(ROOT, "..", "shared", "bench", "ort_latency.py")
QFORGE = os.path.join(ROOT, "target", "release", "qforge")


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    a = p.parse_args()
    calib = os.path.join(MODELS, "imagenet_like_calib_x.npy")
    x = os.path.join(MODELS, "imagenet_like_test_x.npy")
    tmp = tempfile.mkdtemp(prefix="qforge-bench-")
    rows = []
    for m in a.models.split(","):
        onnx = os.path.join(MODELS, m + ".onnx")
        qdq = os.path.join(tmp, m + "_int8_qdq.onnx")
        subprocess.run([QFORGE, "quantize", onnx, "--calib", calib, "-o", qdq], check=True, capture_output=True)
        common = ["--iters", str(a.iters), "--warmup", "10", "--input", x, "--json"]
        q32 = run_json([QFORGE, "bench", onnx] + common)
        q8 = run_json([QFORGE, "bench", onnx, "--quantize", "int8", "--calib", calib] + common)
        q8c = run_json([QFORGE, "bench", onnx, "--quantize", "int8", "--calib", calib, "--kernels", "cranelift"] + common)
        o32 = run_json([sys.executable, ORT, onnx, "--input", x, "--iters", str(a.iters), "--warmup", "10"])
        o8 = run_json([sys.executable, ORT, qdq, "--input", x, "--iters", str(a.iters), "--warmup", "10"])
        rows.append((m, q32, q8, q8c, o32, o8))
    print(f"CPU: {cpu_name()}, 1 thread, batch 1, median of {a.iters} runs after 10 warm-ups; "
          f"{run_json([sys.executable, ORT, os.path.join(MODELS, 'digits_cnn.onnx'), '--iters', '1'])['runtime']}\n")
    print("| model | ORT FP32 ms | qforge FP32 ms | FP32 ratio | ORT INT8 ms | qforge INT8 ms | INT8 ratio to ORT | "
          "qforge INT8 speed-up over its FP32 | INT8 GMAC/s | INT8, Cranelift-only GEMMs ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m, q32, q8, q8c, o32, o8 in rows:
        print(f"| {m} | {o32['median_ms']:.2f} | {q32['median_ms']:.2f} | {q32['median_ms'] / o32['median_ms']:.2f} | "
              f"{o8['median_ms']:.2f} | {q8['median_ms']:.2f} | {q8['median_ms'] / o8['median_ms']:.2f} | "
              f"{q32['median_ms'] / q8['median_ms']:.2f}x | {q8['gmacs_per_s']:.0f} | {q8c['median_ms']:.2f} |")


if __name__ == "__main__":
    main()
