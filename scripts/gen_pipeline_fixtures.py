#!/usr/bin/env python3
"""A three-stage perception-planning-control pipeline for `qforge pipeline`.

Run by hand (CI never runs it; its outputs are committed under tests/fixtures/pipeline/):

    python3 scripts/gen_pipeline_fixtures.py

Made with torch 2.15 and onnx 1.23.2. Every model has random weights after `torch.manual_seed(0)`
(batch-norm statistics set from a forward pass over the calibration frames, so activations have
an ordinary scale) and is exported with `torch.onnx.export(..., dynamo=False, opset_version=17)`
with a dynamic batch `N`. The three stages have costs of the same order (about a millisecond
each on one Zen 4 core), so running them on their own threads can overlap them.

Files:
* `detector.onnx`: a detector-like CNN. Input `image` f32[N,3,96,96]; a conv backbone (six 3x3
  convolutions with batch norm and ReLU, two of stride 2) gives `features` f32[N,64,24,24], and a
  1x1 head gives `boxes` f32[N,6,24,24] (objectness, four box offsets, one class score per cell).
* `planner.onnx`: a small transformer encoder. Input `features` f32[N,64,24,24], average-pooled
  3x3 to 64 tokens of 64 channels, a linear embedding plus a learned position embedding, two
  pre-norm encoder layers (one-head self-attention written as matmuls and softmax, layer norm, a
  GELU MLP of width 128), a final layer norm. Output `tokens` f32[N,64,64].
* `control.onnx`: an MLP. Inputs `tokens` f32[N,64,64] and `boxes` f32[N,6,24,24] (the
  detector's head, read again: a second consumer of the detector); the 8x8 tokens are put back on
  the 24x24 grid (nearest), each cell's token concatenated with its box values goes through a
  per-cell MLP (70 -> 128 -> 128 -> 64, ReLU), the cells are averaged, and a linear layer gives
  `control` f32[N,3] (steer, throttle, brake).
* `frames.npy`: 4 sample camera frames f32[4,3,96,96]; `calib.npy`: 4 other frames for the
  detector's INT8 calibration.
* `pipeline.toml`: the pipeline (detector INT8, planner FP16, control FP32, as the seed's
  exercise 6.8 assigns perception, planning and control), with per-stage and end-to-end budgets.
"""

import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "pipeline")
OPSET = 17


def conv_bn(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            conv_bn(3, 16, 1), conv_bn(16, 32, 2), conv_bn(32, 64, 1), conv_bn(64, 64, 1), conv_bn(64, 64, 2),
            conv_bn(64, 64, 1),
        )
        self.head = nn.Conv2d(64, 6, 1)

    def forward(self, image):
        f = self.backbone(image)
        return f, self.head(f)


class Block(nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x):
        d = x.shape[2]
        h = self.ln1(x)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        # one head: the scores are a [N, T, T] product; the scale is applied to q (T x d values)
        # rather than to the scores (T x T)
        a = torch.softmax((q * d**-0.5) @ k.transpose(-1, -2), dim=-1)
        x = x + self.proj(a @ v)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Planner(nn.Module):
    def __init__(self, c=64, d=64, tokens=64):
        super().__init__()
        self.embed = nn.Linear(c, d)
        self.pos = nn.Parameter(torch.randn(1, tokens, d) * 0.1)
        self.blocks = nn.Sequential(Block(d, 1, 128), Block(d, 1, 128))
        self.ln = nn.LayerNorm(d)

    def forward(self, features):
        x = F.avg_pool2d(features, 3).flatten(2).transpose(1, 2)
        x = self.embed(x) + self.pos
        return self.ln(self.blocks(x))


class Control(nn.Module):
    def __init__(self, d=64, boxes=6, hidden=128):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(d + boxes, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, d), nn.ReLU()
        )
        self.out = nn.Linear(d, 3)

    def forward(self, tokens, boxes):
        # the 8x8 tokens back on the detector's 24x24 grid (nearest), one per cell with its boxes
        g = tokens.transpose(1, 2).reshape(-1, tokens.shape[2], 8, 8)
        g = F.interpolate(g, scale_factor=3.0, mode="nearest").flatten(2).transpose(1, 2)
        b = boxes.flatten(2).transpose(1, 2)
        h = self.mlp(torch.cat([g, b], dim=-1))
        return self.out(h.mean(dim=1))


def export(model, args, names, outputs, path, dynamic):
    torch.onnx.export(
        model,
        args,
        path,
        dynamo=False,
        opset_version=OPSET,
        input_names=names,
        output_names=outputs,
        dynamic_axes=dynamic,
    )
    size = os.path.getsize(path)
    assert size < 600 * 1024, f"{path} is {size} bytes"
    print(f"wrote {path} ({size} bytes)")


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    # frames: smooth random images (a low-resolution pattern upsampled) plus a little noise
    def frames(n):
        low = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
        up = F.interpolate(torch.from_numpy(low), size=(96, 96), mode="bilinear", align_corners=False).numpy()
        return (up + 0.1 * rng.standard_normal(up.shape)).astype(np.float32)

    sample, calib = frames(4), frames(4)
    det, plan, ctrl = Detector(), Planner(), Control()
    # batch-norm statistics from the calibration frames, then inference mode
    det.train()
    for m in det.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        det(torch.from_numpy(calib))
    for m in (det, plan, ctrl):
        m.eval()
    with torch.no_grad():
        f, b = det(torch.from_numpy(sample[:1]))
        t = plan(f)
        y = ctrl(t, b)
    print("shapes:", tuple(f.shape), tuple(b.shape), tuple(t.shape), tuple(y.shape))
    n = {0: "N"}
    export(det, (torch.from_numpy(sample[:1]),), ["image"], ["features", "boxes"], f"{OUT}/detector.onnx",
           {"image": n, "features": n, "boxes": n})
    export(plan, (f,), ["features"], ["tokens"], f"{OUT}/planner.onnx", {"features": n, "tokens": n})
    export(ctrl, (t, b), ["tokens", "boxes"], ["control"], f"{OUT}/control.onnx",
           {"tokens": n, "boxes": n, "control": n})
    np.save(f"{OUT}/frames.npy", sample)
    np.save(f"{OUT}/calib.npy", calib)


if __name__ == "__main__":
    main()
