"""PyTorch's CPU training-step time, the reference for qforge's fine-tuning speed.

Usage:
    python3 scripts/torch_train_step_bench.py [--steps 10] [--warmup 3] [--bn train|eval|both]
                                              [--models /work/shared/models]
                                              [--out tests/fixtures/finetune/torch_train_step_bench.json]

One thread (`torch.set_num_threads(1)`), fp32. One step = zero_grad + forward + cross-entropy loss
+ backward + `torch.optim.SGD(lr=0.01, momentum=0.9)` step, on fixed random inputs and labels
(`torch.manual_seed(0)`). Reports the median (and min/max) over `--steps` steps after `--warmup`
untimed steps, plus the median of each phase, for:
  * torchvision `resnet18(weights=None)` (the architecture of the corpus `resnet18.onnx`),
    batch 8, 3x224x224, 1000 classes;
  * the corpus `DigitsCNN` (`digits_cnn.pt`), batch 32, 1x8x8, 10 classes (200 x --steps steps).
`--bn train` runs BatchNorm in training mode (batch statistics), `--bn eval` on its running
statistics (as a trainer that folds BN into the conv would), `--bn both` (default) both. Timings depend on the machine and its load: the load average (`/proc/loadavg`) before
and after each model is recorded; run it on an otherwise idle machine if you can.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_finetune_reference import DigitsCNN  # noqa: E402


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench(model, x, y, steps, warmup, bn):
    model.train()
    if bn == "eval":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    phases = {"forward_loss": [], "backward": [], "step": [], "total": []}
    load_before = loadavg()
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i >= warmup:
            for k, v in (("forward_loss", t1 - t0), ("backward", t2 - t1), ("step", t3 - t2),
                         ("total", t3 - t0)):
                phases[k].append(v * 1e3)
    return {"median_ms": statistics.median(phases["total"]),
            "min_ms": min(phases["total"]), "max_ms": max(phases["total"]),
            "phase_median_ms": {k: statistics.median(v) for k, v in phases.items() if k != "total"},
            "steps": steps, "warmup": warmup, "final_loss": loss.item(),
            "loadavg_before": load_before, "loadavg_after": loadavg()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--bn", choices=("train", "eval", "both"), default="both")
    ap.add_argument("--models", default="/work/shared/models")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent
                                         / "tests/fixtures/finetune/torch_train_step_bench.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    import torchvision

    res = {"torch": torch.__version__, "torchvision": torchvision.__version__, "threads": 1,
           "cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "cpus_on_machine": os.cpu_count(),
           "optimizer": "SGD lr 0.01 momentum 0.9", "dtype": "float32", "models": {}}

    modes = ("train", "eval") if args.bn == "both" else (args.bn,)
    for bn in modes:
        torch.manual_seed(0)
        rn = torchvision.models.resnet18(weights=None)
        x = torch.randn(8, 3, 224, 224)
        y = torch.randint(0, 1000, (8,))
        r = bench(rn, x, y, args.steps, args.warmup, bn)
        res["models"][f"resnet18_b8_224_bn_{bn}"] = {"batch": 8, "input": [8, 3, 224, 224], **r}
        print(f"resnet18 batch 8, BN {bn}: median {r['median_ms']:.1f} ms/step "
              f"(min {r['min_ms']:.1f}, max {r['max_ms']:.1f}) {r['phase_median_ms']} "
              f"load {r['loadavg_before']} -> {r['loadavg_after']}", flush=True)

        dg = DigitsCNN()
        dg.load_state_dict(torch.load(Path(args.models) / "digits_cnn.pt"))
        xd = torch.from_numpy(np.load(Path(args.models) / "digits_calib_x.npy")[:32])
        yd = torch.randint(0, 10, (32,))
        r = bench(dg, xd, yd, 200 * args.steps, 10 * args.warmup, bn)
        res["models"][f"digits_cnn_b32_bn_{bn}"] = {"batch": 32, "input": [32, 1, 8, 8], **r}
        print(f"digits_cnn batch 32, BN {bn}: median {r['median_ms']:.3f} ms/step "
              f"(min {r['min_ms']:.3f}, max {r['max_ms']:.3f}) {r['phase_median_ms']} "
              f"load {r['loadavg_before']} -> {r['loadavg_after']}", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
