"""qforge's fine-tuning step against PyTorch's CPU training step, side by side in one run.

Usage:
    python3 scripts/train_step_compare.py [--qforge target/release/qforge] [--steps 6] [--warmup 2]
                                          [--models /work/shared/models]
                                          [--out tests/fixtures/finetune/train_step_compare.json]

ResNet-18 (the corpus `resnet18.onnx`, torchvision's architecture), batch 8, 3x224x224, one
thread each, measured one after the other on the same machine:
  * qforge: `qforge finetune resnet18.onnx --epochs warmup+steps --batch 8 --threads 1` on 8
    images drawn as the corpus calibration set was (`torch.randn`); one step = the QAT step
    (fake quantization of every weight and activation, forward, distillation loss from the FP32
    teacher's stored outputs, backward, Adam, observers in the first quarter of the steps); the
    median of its step times (qforge prints it; the first step includes compiling the training
    graph on the JIT, the median leaves it out);
  * PyTorch FP32: torchvision `resnet18`, cross-entropy, backward, SGD with momentum, BatchNorm
    in training mode (`scripts/torch_train_step_bench.py`'s step);
  * PyTorch QAT: torchvision's quantizable `resnet18` fused for QAT (conv-bn-relu) with
    `get_default_qat_qconfig("x86")` (fake quantization of weights per channel and of
    activations), the same loss and optimizer: the work qforge's step does, in PyTorch.
Prints the medians and the ratios qforge / PyTorch; writes them with the machine's load average
(`/proc/loadavg`) before and after each measurement to `--out`.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_train_step_bench import cpu_name, loadavg  # noqa: E402


def torch_step(model, x, y, steps, warmup):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def qforge_step(qforge, model, steps, warmup):
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(1)
        x = torch.randn(8, 3, 224, 224).numpy().astype(np.float32)
        np.save(Path(d) / "x.npy", x)
        cmd = [qforge, "finetune", str(model), "--calib", str(Path(d) / "x.npy"), "--batch", "8",
               "--epochs", str(warmup + steps), "--threads", "1", "-o", str(Path(d) / "out.onnx")]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    m = re.search(r"median step ([0-9.]+) ms", out)
    if not m:
        raise SystemExit(f"no median step in qforge's output:\n{out}")
    return float(m.group(1)), out.strip().splitlines()[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qforge", default="target/release/qforge")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--models", default="/work/shared/models")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent
                                         / "tests/fixtures/finetune/train_step_compare.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    import torchvision
    from torch.ao.quantization import get_default_qat_qconfig, prepare_qat

    res = {"torch": torch.__version__, "torchvision": torchvision.__version__, "threads": 1,
           "cpu": cpu_name(), "cpus_on_machine": os.cpu_count(), "batch": 8, "steps": a.steps,
           "warmup": a.warmup, "median_ms": {}, "loadavg": {}}

    before = loadavg()
    ms, line = qforge_step(a.qforge, Path(a.models) / "resnet18.onnx", a.steps, a.warmup)
    res["median_ms"]["qforge_qat"], res["qforge_summary"] = ms, line
    res["loadavg"]["qforge_qat"] = [before, loadavg()]
    print(f"qforge QAT step: {ms:.1f} ms", flush=True)

    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))
    before = loadavg()
    ms = torch_step(torchvision.models.resnet18(weights=None), x, y, a.steps, a.warmup)
    res["median_ms"]["torch_fp32"] = ms
    res["loadavg"]["torch_fp32"] = [before, loadavg()]
    print(f"PyTorch FP32 step: {ms:.1f} ms", flush=True)

    qm = torchvision.models.quantization.resnet18(weights=None, quantize=False)
    qm.train()
    qm.fuse_model(is_qat=True)
    qm.qconfig = get_default_qat_qconfig("x86")
    prepare_qat(qm, inplace=True)
    before = loadavg()
    ms = torch_step(qm, x, y, a.steps, a.warmup)
    res["median_ms"]["torch_qat"] = ms
    res["loadavg"]["torch_qat"] = [before, loadavg()]
    print(f"PyTorch QAT step: {ms:.1f} ms", flush=True)

    q = res["median_ms"]["qforge_qat"]
    res["ratio"] = {"qforge_qat / torch_fp32": q / res["median_ms"]["torch_fp32"],
                    "qforge_qat / torch_qat": q / res["median_ms"]["torch_qat"]}
    for k, v in res["ratio"].items():
        print(f"{k}: {v:.2f}x")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
