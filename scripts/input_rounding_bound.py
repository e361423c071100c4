#!/usr/bin/env python3
"""The best output SQNR any model with an 8-bit quantized input can reach against an FP32 model.

A W8A8 model sees its input only through the first QuantizeLinear: every input in one
rounding cell gives it the same codes, so its output is a function of the codes alone, and the
best such function is the FP32 model's mean output over the cell. Its error against the FP32
output is the spread of the FP32 outputs within each cell, whatever the weights, the other
activations' precision or the training. This script estimates that bound by drawing inputs
uniformly inside the cells of the test inputs (the static quantizer's u8 asymmetric min-max
range of the calibration set, as `qforge quantize` and ONNX Runtime's `quantize_static`
choose it), and prints, next to it, the output SQNR with only the input rounded and with
Gaussian input noise at 40, 50 and 60 dB (the model's noise gain).

    python3 scripts/input_rounding_bound.py MODEL.onnx CALIB.npy TEST.npy [--draws K]

On the corpus's random-weight MobileNetV2 (`imagenet_like_*`, 2 test inputs), rounding the
input alone gives 16.9 dB and no model of the rounded input can exceed 17.7 dB (ResNet-18:
35.3 dB and 35.2 dB); narrower input ranges (finer cells, clipped tails) allow at most 19.4 dB.
"""
import argparse

import numpy as np
import onnxruntime as ort


def sqnr(out, ref):
    return 10 * np.log10((ref.astype(np.float64) ** 2).sum() / ((out - ref).astype(np.float64) ** 2).sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("calib")
    ap.add_argument("test")
    ap.add_argument("--draws", type=int, default=16, help="inputs drawn per rounding cell")
    a = ap.parse_args()
    sess = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    run = lambda x: sess.run(None, {name: x.astype(np.float32)})[0].astype(np.float64)
    cal, x = np.load(a.calib), np.load(a.test)
    ref = run(x)
    rng = np.random.default_rng(0)

    def cells(lo, hi):
        """The u8 asymmetric quantizer of [lo, hi] (the range widened to include 0): the codes'
        cell centers and bounds (the saturated codes' cells extend to the data)."""
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = (hi - lo) / 255.0
        zp = np.round(-lo / scale)
        codes = np.clip(np.round(x / scale) + zp, 0, 255)
        center = (codes - zp) * scale
        lo_c = np.where(codes == 0, np.minimum(x, center - scale / 2), center - scale / 2)
        hi_c = np.where(codes == 255, np.maximum(x, center + scale / 2), center + scale / 2)
        return scale, zp, center, lo_c, hi_c

    def bound(lo_c, hi_c):
        """The SQNR of the cells' mean FP32 outputs: E||t(x) - mean||^2 = var (1 + 1/draws)
        for x one more draw from its cell, so the spread is the error over (1 + 1/draws)."""
        mean = np.zeros_like(ref)
        for _ in range(a.draws):
            mean += run(rng.uniform(lo_c, hi_c)) / a.draws
        spread = ((mean - ref) ** 2).sum() / (1 + 1 / a.draws)
        return 10 * np.log10((ref ** 2).sum() / spread)

    # the static quantizer's range: the calibration set's min-max (qforge, quantize_static)
    lo, hi = float(cal.min()), float(cal.max())
    scale, zp, center, lo_c, hi_c = cells(lo, hi)
    print(f"input scale {scale:.6g}, zero point {zp:.0f}; input SNR after rounding {sqnr(center, x):.2f} dB")
    print(f"output SQNR, only the input rounded: {sqnr(run(center), ref):.2f} dB")
    print(f"best SQNR of any model of the rounded input (the cells' mean FP32 output, {a.draws} draws): "
          f"{bound(lo_c, hi_c):.2f} dB")
    # narrower input ranges: finer cells, the tails clipped
    best = []
    for f in (0.9, 0.8, 0.7, 0.6, 0.5):
        _, _, center, lo_c, hi_c = cells(lo * f, hi * f)
        best.append((bound(lo_c, hi_c), f, sqnr(center, x)))
        print(f"  range x{f}: input SNR {best[-1][2]:.2f} dB, best output SQNR {best[-1][0]:.2f} dB")
    b, f, _ = max(best + [(bound(lo_c, hi_c), 1.0, 0.0)])
    print(f"the best of these ranges (x{f}) allows at most {b:.2f} dB")
    for snr in (40, 50, 60):
        noise = rng.standard_normal(x.shape) * np.sqrt((x.astype(np.float64) ** 2).mean() / 10 ** (snr / 10))
        print(f"input noise at {snr} dB -> output SQNR {sqnr(run(x + noise), ref):.2f} dB")


if __name__ == "__main__":
    main()
