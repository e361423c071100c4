"""Compare qforge's static INT8 with ONNX Runtime's quantize_static on the same model and data.

    python python/examples/compare_with_ort.py                      # the digits model of ../shared/models
    python python/examples/compare_with_ort.py --model m.onnx --calib c.npy --test-x x.npy [--test-y y.npy]

Both quantizers get the same float model and the same calibration batches, with the same scheme
(MinMax ranges, weights int8 per output channel, activations uint8 asymmetric: qforge's
defaults, and what ORT is asked for). Printed: top-1 (with labels), SQNR of the logits against
the float model run by ONNX Runtime, and latency at batch 1 (median, one thread, both timed by the
same Python loop). A third row runs qforge's own QDQ export in ONNX Runtime.

Needs: pip install onnx onnxruntime numpy, and the qforge package (pip install ./python).
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

import qforge

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "models"


class Batches(CalibrationDataReader):
    """ORT's calibration reader over the same batches qforge calibrates on."""

    def __init__(self, name, batches):
        self.name, self.batches = name, batches
        self.it = iter(batches)

    def get_next(self):
        b = next(self.it, None)
        return None if b is None else {self.name: b}

    def rewind(self):
        self.it = iter(self.batches)


def session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def latency_ms(run, x, iters):
    for _ in range(10):
        run(x)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def sqnr_db(ref, y):
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / max(np.sum((ref - y).astype(np.float64) ** 2), 1e-30))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=SHARED / "digits_cnn.onnx")
    ap.add_argument("--calib", type=Path, default=SHARED / "digits_calib_x.npy")
    ap.add_argument("--test-x", type=Path, default=SHARED / "digits_test_x.npy")
    ap.add_argument("--test-y", type=Path, default=SHARED / "digits_test_y.npy")
    ap.add_argument("--calib-batch", type=int, default=50)
    ap.add_argument("--iters", type=int, default=200)
    args = ap.parse_args()

    calib, x = np.load(args.calib), np.load(args.test_x)
    y = np.load(args.test_y) if args.test_y and args.test_y.exists() else None
    batches = [calib[i : i + args.calib_batch] for i in range(0, len(calib), args.calib_batch)]

    fp32 = session(str(args.model))
    name = fp32.get_inputs()[0].name
    ref = fp32.run(None, {name: x})[0]

    # qforge: load, quantize on the batches, compile, run
    m = qforge.load(args.model)
    t0 = time.perf_counter()
    q = m.quantize(calib=batches)  # a list of batches: streamed, one at a time
    exe = q.compile()
    qforge_s = time.perf_counter() - t0
    out_qforge = exe.run(x)

    with tempfile.TemporaryDirectory() as d:
        # ONNX Runtime: its pre-processing (shape inference, batch norm folded), then quantize_static
        pre, ort_int8, export = Path(d) / "pre.onnx", Path(d) / "ort_int8.onnx", Path(d) / "qforge_int8.onnx"
        t0 = time.perf_counter()
        quant_pre_process(str(args.model), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(ort_int8),
            Batches(name, batches),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        ort_s = time.perf_counter() - t0
        ort_sess = session(str(ort_int8))
        out_ort = ort_sess.run(None, {name: x})[0]

        q.export_onnx(export)
        exp_sess = session(str(export))
        out_export = exp_sess.run(None, {name: x})[0]

        one = x[:1]
        rows = [
            ("fp32", "ONNX Runtime", ref, latency_ms(lambda a: fp32.run(None, {name: a}), one, args.iters), None),
            ("int8", "qforge", out_qforge, latency_ms(exe.run, one, args.iters), qforge_s),
            ("int8", "ONNX Runtime quantize_static", out_ort, latency_ms(lambda a: ort_sess.run(None, {name: a}), one, args.iters), ort_s),
            ("int8", "ONNX Runtime on qforge's export", out_export, latency_ms(lambda a: exp_sess.run(None, {name: a}), one, args.iters), None),
        ]

    print(f"{args.model.name}: {len(x)} test samples, {len(calib)} calibration samples in batches of {args.calib_batch}")
    head = f"| {'precision':9} | {'runtime':32} | {'top-1':>7} | {'SQNR vs fp32 dB':>15} | {'batch-1 ms':>10} | {'quantize s':>10} |"
    print(head)
    print("|" + "|".join("-" * (len(c) + 0) for c in head.split("|")[1:-1]) + "|")
    for prec, who, out, ms, qs in rows:
        top1 = f"{100 * float((out.argmax(axis=1) == y).mean()):6.2f}%" if y is not None else "-"
        s = "-" if who == "ONNX Runtime" and prec == "fp32" else f"{sqnr_db(ref, out):.2f}"
        print(f"| {prec:9} | {who:32} | {top1:>7} | {s:>15} | {ms:10.4f} | {'-' if qs is None else f'{qs:.2f}':>10} |")


if __name__ == "__main__":
    main()
