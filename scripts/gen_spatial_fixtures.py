#!/usr/bin/env python3
"""A fully convolutional fixture with symbolic image height and width.

Run by hand (CI never runs it; its outputs are committed under tests/fixtures/spatial/):

    python3 scripts/gen_spatial_fixtures.py

Made with torch 2.15, onnx 1.23.2, onnxruntime 1.32 (the versions are written to
`manifest.json`).

`fcn.onnx` is a small segmentation-shaped network (random weights after `torch.manual_seed(0)`,
batch-norm statistics set from a forward pass over the calibration inputs so activations have
an ordinary scale), exported with `torch.onnx.export(..., dynamo=False, opset_version=17)` and
`dynamic_axes={'x': {0: 'N', 2: 'H', 3: 'W'}}`. It has every spatial pattern a detector or
segmenter has on a symbolic image size: a reflect Pad, a stride-2 convolution with padding, a
ceil-mode max pool, a residual add after a stride-2 branch (3x3 and 1x1 convolutions computing
the same size), an FPN-style nearest `interpolate(scale_factor=2)` plus add, a ConvTranspose
upsampling concatenated with a skip, a pixel shuffle (DepthToSpace), and a segmentation head resized with
`interpolate(size=x.shape[-2:], mode='bilinear')` back to the input's own size. Input `x`
f32[N,3,H,W] (H and W multiples of 16), output `y` f32[N,4,H,W].

Files:
* `fcn.onnx`: the model, dims N, H, W named.
* `fcn_paddle.onnx`: the same graph with the input's dims written as `-1`, as Paddle2ONNX writes
  them (edited with the onnx Python API).
* `fcn_fixed_64x96.onnx`, `fcn_fixed_80x112.onnx`: the same graph with H and W fixed (N stays
  dynamic), the specialized graphs the symbolic one must equal bit for bit.
* `x_64x96.npy` (batch 2), `x_80x112.npy` (batch 2): test inputs; `calib_64x96.npy` (4 samples):
  calibration inputs.
* `y_64x96_b2.npy`, `y_64x96_b1.npy`, `y_80x112_b2.npy`, `y_80x112_b1.npy`: ONNX Runtime FP32
  outputs at both sizes and batch 2 and 1 (the first sample).
"""

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "spatial")
OPSET = 17
SIZES = [(64, 96), (80, 112)]


def conv_bn(cin, cout, k, stride=1, padding=0):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Fcn(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8, 3, stride=2, padding=0)  # after a reflect pad of 1
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.b1 = conv_bn(8, 16, 3, stride=2, padding=1)
        self.b2 = nn.Conv2d(16, 16, 3, padding=1)
        self.short = nn.Conv2d(8, 16, 1, stride=2)
        self.lateral = nn.Conv2d(8, 16, 1)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.merge = conv_bn(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)
        self.shuffle = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        s = self.stem(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        p = self.pool(s)
        b = F.relu(self.b2(self.b1(p)) + self.short(p))  # residual after a stride-2 branch
        f = self.lateral(p) + F.interpolate(b, scale_factor=2.0, mode="nearest")  # FPN top-down
        u = torch.cat([self.up(b), p], dim=1)  # UNet-style skip
        m = self.merge(u) + f
        y = self.head(m)
        y = F.interpolate(y, scale_factor=2.0, mode="nearest") + F.pixel_shuffle(self.shuffle(m), 2)  # DepthToSpace
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def with_input_dims(model, dims):
    """A copy of `model` whose input `x` has `dims` (ints; -1 written as dim_value -1; str names)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    shape = m.graph.input[0].type.tensor_type.shape
    for d, v in zip(shape.dim, dims):
        d.Clear()
        if isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = v
    # the output's declared dims follow the input's
    for o in m.graph.output:
        for d in o.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param != "N":
                d.Clear()
    del m.graph.value_info[:]
    return m


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = Fcn().eval()
    calib = rng.standard_normal((4, 3, *SIZES[0])).astype(np.float32)
    # Batch-norm statistics from the calibration inputs (train-mode forward, no gradient).
    with torch.no_grad():
        model.train()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        model(torch.from_numpy(calib))
        model.eval()
    path = os.path.join(OUT, "fcn.onnx")
    torch.onnx.export(
        model,
        (torch.from_numpy(calib[:2]),),
        path,
        dynamo=False,
        opset_version=OPSET,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}, "y": {0: "N", 2: "H", 3: "W"}},
    )
    base = onnx.load(path)
    onnx.checker.check_model(base)
    onnx.save(with_input_dims(base, [-1, 3, -1, -1]), os.path.join(OUT, "fcn_paddle.onnx"))
    for h, w in SIZES:
        onnx.save(with_input_dims(base, ["N", 3, h, w]), os.path.join(OUT, f"fcn_fixed_{h}x{w}.onnx"))
    np.save(os.path.join(OUT, "calib_64x96.npy"), calib)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for h, w in SIZES:
        x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
        np.save(os.path.join(OUT, f"x_{h}x{w}.npy"), x)
        for n in (2, 1):
            (y,) = sess.run(None, {"x": x[:n]})
            with torch.no_grad():
                t = model(torch.from_numpy(x[:n])).numpy()
            assert np.abs(t - y).max() <= 1e-4 * np.abs(y).max(), "torch and ORT disagree"
            np.save(os.path.join(OUT, f"y_{h}x{w}_b{n}.npy"), y)
    manifest = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__, "opset": OPSET}
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
