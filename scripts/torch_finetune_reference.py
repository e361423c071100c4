"""PyTorch reference figures for `qforge finetune` on the digits CNN.

Usage:
    python3 scripts/torch_finetune_reference.py [--models /work/shared/models]
                                                [--out tests/fixtures/finetune/torch_reference.json]
                                                [--sweep-seeds 0,1,2,3,4]

Prints every figure and writes them as JSON. Needs torch (tested with 2.15.0) and numpy; the
data and the fp32 state dict come from the shared corpus (`digits_cnn.pt`, `digits_calib_x.npy`
[200,1,8,8], `digits_test_x.npy`/`digits_test_y.npy` [597]). Runs in a few minutes on one core.

Determinism: `torch.set_num_threads(1)`, `torch.use_deterministic_algorithms(True,
warn_only=True)`, and every experiment re-seeds torch with SEED before it starts (the shuffles
use their own `torch.Generator().manual_seed(SEED)`), so each figure is reproducible on its own;
two runs give byte-identical JSON.

What runs (all on the 597 test images; training only ever sees the 200 calibration images and
never their labels: the targets are the fp32 model's own logits):
  1. fp32 top-1.
  2. torch PTQ: eager mode, Conv-BN-ReLU fused (BN folded into the conv), MinMaxObserver
     activations (quint8 [0,255], per-tensor affine, like ORT's uint8 activations),
     PerChannelMinMaxObserver weights (qint8 [-127,127], per-channel symmetric, like ORT's
     symmetric int8 weights), calibrated on the 200 images, `convert`ed, run on the x86 engine.
  3. QAT INT8 + distillation (see RECIPES): fused ConvBnReLU2d QAT modules with BN statistics
     frozen from the start (BN is folded as at inference; the fp32 model's running statistics
     come from its 1000 training images, 200 images are too few to re-estimate them), torch's
     default moving-average observers, observers disabled after OBSERVER_FREEZE of the epochs
     (textbook 6.1.3). Loss (textbook 6.4.2, T=4): 0.1 * CE(s, argmax t) + 0.9 * T^2 *
     KL(softmax(t/T) || softmax(s/T)); the hard target is the teacher's argmax because the
     labels are not used. Evaluated as the fake-quant model and as the converted int8 model.
  4. W4A8: the same with weights fake-quantized to [-7,7] (per-channel symmetric 4-bit,
     restricted range so that the zero point is 0 and scale = max|w| / 7), conv and linear.
     torch has no int4 conv/linear kernels, so the figure is the fake-quant model; a
     post-training W4A8 fake-quant baseline (min-max observers, no training) is given too.
  5. Structured pruning: `prune.ln_structured(amount=0.3, n=2, dim=0)` on every conv of the fp32
     model (it picks the output channels with the smallest L2 norm: 5/16, 10/32, 19/64). The
     pruned channels are then removed physically (their conv bias and BN affine go with them,
     and their consumers' input channels), giving a 11-22-45 CNN, which is QAT-INT8 fine-tuned
     with distillation from the unpruned fp32 model, in one stage (the textbook's
     compress_pipeline) and in two (fp32 distillation, then QAT). MACs (conv + linear, one
     image) are counted on both models. For comparison, the one-stage recipe also runs on the
     channels the same L2 rule keeps when BN is folded into the weights first.
  6. Mixed-precision training (`fp16_experiments`, `mp_train`): a fresh DigitsCNN distilled on the 200 images
     in fp32, fp16 autocast, fp16 autocast + torch.amp.GradScaler("cpu"), bf16 autocast, at the
     natural gradient scale and with gradients 2^16 times smaller (fp32 unchanged, bit for bit);
     plus the share of weight-gradient elements that flush to zero at initialisation, also for
     the whole model in fp16 (model.half()).
  7. Textbook exercise 6.3: 1e-8 in fp16, in fp16 scaled by 2^16, in bf16.
  8. Seed sweep: the QAT INT8, W4A8 and prune+QAT recipes with shuffle seeds 0-4 (top-1 only).
"""
import argparse
import copy
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.ao.nn.intrinsic.qat as nniqat
import torch.ao.quantization as tq
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune

SEED = 0
T = 4.0  # distillation temperature (textbook 6.4.2)
CE_WEIGHT = 0.1  # loss = CE_WEIGHT * CE(s, argmax t) + (1 - CE_WEIGHT) * KD
OBSERVER_FREEZE = 0.6  # observers are disabled after this fraction of the epochs
BATCH = 50
# Fine-tuning recipes: Adam, cosine decay to 0 over all steps (4 steps per epoch on 200 images).
RECIPES = {
    "qat_int8": {"epochs": 20, "lr": 1e-4},
    "qat_w4a8": {"epochs": 40, "lr": 5e-4},
    # the textbook's compress_pipeline: prune -> QAT + distillation in one stage
    "prune_qat_int8": {"epochs": 200, "lr": 3e-3},
    # two stages: fp32 distillation of the pruned model, then QAT + distillation
    "prune_fp32_distill": {"epochs": 200, "lr": 3e-3},
    "prune_then_qat_int8": {"epochs": 100, "lr": 3e-4},
}


class DigitsCNN(nn.Module):
    """The corpus `DigitsCNN` (gen/gen_digits_cnn.py) with configurable widths, same names."""

    def __init__(self, c1=16, c2=32, c3=64):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3, self.bn3, self.relu3 = nn.Conv2d(c2, c3, 3, padding=1), nn.BatchNorm2d(c3), nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c3, 10)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.pool(x)
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(self.flatten(self.gap(x)))


class QuantDigits(nn.Module):
    """Eager-mode quantization wrapper: quant -> 3 x Conv-BN-ReLU -> GAP -> (dequant, quant) ->
    fc -> dequant. The classifier input gets its own quantization point, as in the corpus QAT
    model and in ORT's QDQ graph."""

    def __init__(self, m: DigitsCNN):
        super().__init__()
        self.quant = tq.QuantStub()
        for name in ("conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "pool", "conv3", "bn3",
                     "relu3", "gap", "flatten", "fc"):
            setattr(self, name, getattr(m, name))
        self.dequant_fc_in = tq.DeQuantStub()
        self.quant_fc_in = tq.QuantStub()
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.pool(x)
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.quant_fc_in(self.dequant_fc_in(self.flatten(self.gap(x))))
        return self.dequant(self.fc(x))


FUSE = [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["conv3", "bn3", "relu3"]]


def qconfig(wbits: int, fake: bool, moving: bool) -> tq.QConfig:
    """Activations quint8 [0,255] per-tensor affine; weights per-channel symmetric on axis 0 in
    [-(2^(b-1)-1), 2^(b-1)-1]. `fake`: FakeQuantize modules (QAT), else plain observers (PTQ).
    `moving`: torch's QAT default moving-average observers, else min-max over all batches."""
    qmax = 2 ** (wbits - 1) - 1
    act_obs = tq.MovingAverageMinMaxObserver if moving else tq.MinMaxObserver
    wt_obs = tq.MovingAveragePerChannelMinMaxObserver if moving else tq.PerChannelMinMaxObserver
    act_kw = dict(dtype=torch.quint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine)
    wt_kw = dict(dtype=torch.qint8, quant_min=-qmax, quant_max=qmax,
                 qscheme=torch.per_channel_symmetric, ch_axis=0)
    if fake:
        return tq.QConfig(activation=tq.FakeQuantize.with_args(observer=act_obs, **act_kw),
                          weight=tq.FakeQuantize.with_args(observer=wt_obs, **wt_kw))
    return tq.QConfig(activation=act_obs.with_args(**act_kw), weight=wt_obs.with_args(**wt_kw))


def top1(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def kd_loss(s, t):
    """Textbook 6.4.2: 0.1 * CE + 0.9 * KL(log_softmax(s/T), softmax(t/T)) * T^2, CE against
    the teacher's argmax (no labels)."""
    kd = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T
    return CE_WEIGHT * F.cross_entropy(s, t.argmax(1)) + (1 - CE_WEIGHT) * kd


def count_macs(model: nn.Module) -> dict:
    """Multiply-accumulates of every Conv2d and Linear for one 1x8x8 image."""
    macs = {}

    def hook(name):
        def f(mod, inp, out):
            if isinstance(mod, nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
                macs[name] = int(out[0].numel() * k)
            else:
                macs[name] = int(mod.in_features * mod.out_features)
        return f

    hs = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
          if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, 8, 8))
    for h in hs:
        h.remove()
    macs["total"] = sum(macs.values())
    return macs


def ptq_int8(fp32, calib, x, y) -> dict:
    m = QuantDigits(copy.deepcopy(fp32)).eval()
    tq.fuse_modules(m, FUSE, inplace=True)
    m.qconfig = qconfig(8, fake=False, moving=False)
    tq.prepare(m, inplace=True)
    with torch.no_grad():
        for i in range(0, len(calib), BATCH):
            m(calib[i:i + BATCH])
    q = tq.convert(m)
    return {"top1": top1(q, x, y), "engine": torch.backends.quantized.engine,
            "observers": "MinMaxObserver quint8 [0,255] affine / PerChannelMinMaxObserver qint8 "
                         "[-127,127] symmetric axis 0", "calib_batch": BATCH}


def prepare_qat_model(fp32, wbits, moving=True):
    m = QuantDigits(copy.deepcopy(fp32)).train()
    tq.fuse_modules_qat(m, FUSE, inplace=True)
    m.qconfig = qconfig(wbits, fake=True, moving=moving)
    tq.prepare_qat(m, inplace=True)
    m.apply(nniqat.freeze_bn_stats)  # BN folded with the fp32 running statistics throughout
    return m


def ptq_fakequant(fp32, wbits, calib, x, y) -> float:
    """Post-training fake-quant baseline: min-max observers over the calibration set, no
    training (the same numerics as QAT's evaluation)."""
    m = prepare_qat_model(fp32, wbits, moving=False).eval()
    with torch.no_grad():
        for i in range(0, len(calib), BATCH):
            m(calib[i:i + BATCH])
    m.apply(tq.disable_observer)
    return top1(m, x, y)


def finetune(model, teacher_logits, calib, epochs, lr, x, y, log="", bn_eval=False, seed=SEED):
    """Adam + cosine over epochs*ceil(200/BATCH) steps, shuffled with a seeded generator;
    observers (if any) disabled after OBSERVER_FREEZE of the epochs. `bn_eval`: plain BatchNorm2d
    layers stay on their running statistics (the QAT modules freeze theirs with freeze_bn_stats)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(calib) / BATCH)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    freeze_at = int(round(OBSERVER_FREEZE * epochs))
    losses = []
    for ep in range(epochs):
        if ep == freeze_at:
            model.apply(tq.disable_observer)
        model.train()
        if bn_eval:
            for mod in model.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.eval()
        perm = torch.randperm(len(calib), generator=g)
        tot = 0.0
        for i in range(0, len(calib), BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad()
            loss = kd_loss(model(calib[idx]), teacher_logits[idx])
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        losses.append(tot / len(calib))
        if log and ((ep + 1) % 10 == 0 or ep == epochs - 1):
            print(f"  {log} epoch {ep + 1:3d} loss {losses[-1]:.5f} test top1 {top1(model, x, y):.4f}",
                  flush=True)
    model.apply(tq.disable_observer)
    model.eval()
    return losses


def recipe_json(name):
    r = RECIPES[name]
    return {"epochs": r["epochs"], "lr": r["lr"], "optimizer": "Adam (betas 0.9/0.999, no weight decay)",
            "schedule": "cosine to 0 per step", "batch": BATCH,
            "steps": r["epochs"] * 4, "seed": SEED, "T": T, "ce_weight": CE_WEIGHT,
            "loss": "0.1*CE(s, argmax t) + 0.9*T^2*KL(softmax(t/T)||softmax(s/T)), batchmean",
            "observer_freeze_epoch": int(round(OBSERVER_FREEZE * r["epochs"])),
            "bn": "frozen (running stats of the fp32 model), folded into conv weights before fake quant",
            "data": "200 calibration images, no labels"}


def qat_run(name, fp32, teacher_logits, wbits, calib, x, y, convert=True, seed=SEED) -> dict:
    m = prepare_qat_model(fp32, wbits)
    r = RECIPES[name]
    losses = finetune(m, teacher_logits, calib, r["epochs"], r["lr"], x, y,
                      log=name if seed == SEED else "", seed=seed)
    out = {"config": recipe_json(name), "weight_bits": wbits, "final_loss": losses[-1],
           "loss_curve": [round(v, 6) for v in losses], "top1_fakequant": top1(m, x, y)}
    if convert:
        q = tq.convert(copy.deepcopy(m).eval())
        out["top1_converted"] = top1(q, x, y)
        # largest |q| of the converted weights: convert re-quantizes with the observer's scale
        # and clamps only to int8, so it shows whether the weights stayed in the trained range.
        out["converted_max_abs_weight_q"] = max(
            int(mod.weight().int_repr().abs().max()) for mod in q.modules()
            if hasattr(mod, "weight") and callable(mod.weight))
    return out


def prune_and_slim(fp32):
    """ln_structured on every conv's weight (the textbook's call), then physical removal of the
    pruned output channels (with their bias and BN entries) and of the matching input channels
    of the consumer. Returns (masked fp32 model, slim fp32 model, kept channels)."""
    masked = copy.deepcopy(fp32)
    keep = {}
    for name in ("conv1", "conv2", "conv3"):
        conv = getattr(masked, name)
        prune.ln_structured(conv, name="weight", amount=0.3, n=2, dim=0)
        mask = conv.weight_mask.flatten(1).amax(1) > 0
        prune.remove(conv, "weight")
        keep[name] = torch.nonzero(mask).flatten()
    return masked.eval(), slim_model(fp32, keep), {n: v.tolist() for n, v in keep.items()}


def slim_model(fp32, keep):
    """The DigitsCNN holding only the `keep` output channels of each conv (conv bias and BN
    entries included) and the matching input channels of each consumer."""
    k1, k2, k3 = (torch.as_tensor(keep[n]) for n in ("conv1", "conv2", "conv3"))
    slim = DigitsCNN(len(k1), len(k2), len(k3))
    sd, src = slim.state_dict(), fp32.state_dict()
    prev = {1: None, 2: k1, 3: k2}
    with torch.no_grad():
        for i, k in ((1, k1), (2, k2), (3, k3)):
            w = src[f"conv{i}.weight"][k]
            if prev[i] is not None:
                w = w[:, prev[i]]
            sd[f"conv{i}.weight"].copy_(w)
            sd[f"conv{i}.bias"].copy_(src[f"conv{i}.bias"][k])
            for p in ("weight", "bias", "running_mean", "running_var"):
                sd[f"bn{i}.{p}"].copy_(src[f"bn{i}.{p}"][k])
        sd["fc.weight"].copy_(src["fc.weight"][:, k3])
        sd["fc.bias"].copy_(src["fc.bias"])
    slim.load_state_dict(sd)
    return slim.eval()


def kept_if_bn_folded(fp32):
    """The channels the same L2 rule keeps when BN is folded into the conv weights first
    (w * gamma / sqrt(var + eps)), as a compiler working on the inference graph would see them;
    recorded for comparison only."""
    out = {}
    for i in (1, 2, 3):
        conv, bn = getattr(fp32, f"conv{i}"), getattr(fp32, f"bn{i}")
        sf = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        w = conv.weight.detach() * sf.reshape(-1, 1, 1, 1)
        norms = w.flatten(1).norm(dim=1)
        n_prune = int(round(0.3 * len(norms)))  # torch's _compute_nparams_toprune rounding
        out[f"conv{i}"] = sorted(torch.topk(norms, len(norms) - n_prune).indices.tolist())
    return out


def exercise_6_3() -> dict:
    """Textbook exercise 6.3: a 1e-8 gradient in fp16, fp16 with loss scale 2^16, bf16."""
    g = torch.tensor(1e-8, dtype=torch.float32)
    fp16 = g.half()
    scaled = (g * 2.0 ** 16).half()
    bf16 = g.bfloat16()
    res = {
        "fp32": float(g),
        "fp16": float(fp16),
        "fp16_scaled_2^16": float(scaled),
        "fp16_scaled_2^16_unscaled_in_fp32": float(scaled.float() / 2.0 ** 16),
        "bf16": float(bf16),
        "fp16_smallest_subnormal": float(torch.finfo(torch.float16).smallest_normal) / 1024,
        "fp16_smallest_normal": float(torch.finfo(torch.float16).smallest_normal),
        "bf16_smallest_normal": float(torch.finfo(torch.bfloat16).smallest_normal),
    }
    # the textbook's second snippet: a 1e-5 update on a weight of 1.0
    w = torch.tensor(1.0)
    res["1.0 - 1e-5 in fp16"] = float(w.half() - torch.tensor(1e-5).half())
    res["1.0 - 1e-5 in bf16"] = float(w.bfloat16() - torch.tensor(1e-5).bfloat16())
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="/work/shared/models")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent
                                         / "tests/fixtures/finetune/torch_reference.json"))
    ap.add_argument("--sweep-seeds", default="0,1,2,3,4",
                    help="shuffle seeds for the seed sweep of the QAT recipes ('' to skip)")
    ap.add_argument("--only", default="", help="comma list of sections to run (debugging)")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    run = lambda s: not only or s in only  # noqa: E731

    torch.set_num_threads(1)
    # warn_only: torch flags the quantized kernels' output resize as nondeterministic; on CPU
    # with one thread they are deterministic (reruns give identical figures).
    torch.use_deterministic_algorithms(True, warn_only=True)
    warnings.filterwarnings("ignore")
    torch.manual_seed(SEED)
    md = Path(args.models)
    calib = torch.from_numpy(np.load(md / "digits_calib_x.npy"))
    x = torch.from_numpy(np.load(md / "digits_test_x.npy"))
    y = torch.from_numpy(np.load(md / "digits_test_y.npy"))
    fp32 = DigitsCNN()
    fp32.load_state_dict(torch.load(md / "digits_cnn.pt"))
    fp32.eval()
    with torch.no_grad():
        teacher = fp32(calib)

    res = {"torch": torch.__version__, "threads": 1, "seed": SEED, "test_images": len(y),
           "train_images": len(calib), "labels_used": False}
    res["fp32_top1"] = top1(fp32, x, y)
    print("fp32 top1", res["fp32_top1"], flush=True)

    if run("ptq"):
        res["ptq_int8_per_channel_minmax"] = ptq_int8(fp32, calib, x, y)
        res["ptq_int8_fakequant_top1"] = ptq_fakequant(fp32, 8, calib, x, y)
        res["ptq_w4a8_fakequant_top1"] = ptq_fakequant(fp32, 4, calib, x, y)
        print("ptq", res["ptq_int8_per_channel_minmax"], "fake int8",
              res["ptq_int8_fakequant_top1"], "fake w4a8", res["ptq_w4a8_fakequant_top1"], flush=True)

    if run("qat"):
        res["qat_int8_distill"] = qat_run("qat_int8", fp32, teacher, 8, calib, x, y)
        print("qat int8", {k: v for k, v in res["qat_int8_distill"].items() if k != "loss_curve"})
    if run("w4a8"):
        r = qat_run("qat_w4a8", fp32, teacher, 4, calib, x, y)
        r["note"] = ("torch has no int4 conv/linear kernels: top1_fakequant is the W4A8 figure; "
                     "top1_converted runs the 4-bit values in torch's int8 kernels")
        res["qat_w4a8_distill"] = r
        print("qat w4a8", {k: v for k, v in r.items() if k != "loss_curve"})

    if run("prune"):
        masked, slim, kept = prune_and_slim(fp32)
        macs_full, macs_slim = count_macs(fp32), count_macs(slim)
        r = {"method": "prune.ln_structured(amount=0.3, n=2, dim=0) on conv1..3 weights, then the "
                       "pruned channels removed (conv bias and BN entries too) with the consumers' "
                       "input channels; teacher = the unpruned fp32 model",
             "kept_channels": {n: len(v) for n, v in kept.items()},
             "total_channels": {"conv1": 16, "conv2": 32, "conv3": 64},
             "kept_channel_indices": kept,
             "kept_channel_indices_if_bn_folded_first": kept_if_bn_folded(fp32),
             "top1_fp32_masked_weights_only": top1(masked, x, y),
             "top1_fp32_channels_removed": top1(slim, x, y),
             "macs_unpruned": macs_full, "macs_pruned": macs_slim,
             "mac_reduction": 1 - macs_slim["total"] / macs_full["total"]}
        r.update(qat_run("prune_qat_int8", slim, teacher, 8, calib, x, y))
        res["prune30_qat_int8_distill"] = r
        print("prune", {k: v for k, v in r.items() if k != "loss_curve"})
        # two-stage variant: recover in fp32 first (BN frozen: eval-mode BN, as in the QAT runs)
        slim2 = copy.deepcopy(slim)
        fr = RECIPES["prune_fp32_distill"]
        l1 = finetune(slim2, teacher, calib, fr["epochs"], fr["lr"], x, y, log="prune_fp32_distill",
                      bn_eval=True)
        cfg = recipe_json("prune_fp32_distill")
        del cfg["observer_freeze_epoch"]
        cfg["bn"] = "eval mode (the fp32 model's running statistics), no quantization"
        r2 = {"fp32_stage": {"config": cfg, "final_loss": l1[-1],
                             "top1_fp32": top1(slim2, x, y)}}
        r2.update(qat_run("prune_then_qat_int8", slim2, teacher, 8, calib, x, y))
        res["prune30_fp32distill_then_qat_int8"] = r2
        print("prune two-stage", {k: v for k, v in r2.items() if k != "loss_curve"})
        # the same one-stage recipe on the channels the L2 rule keeps after BN folding
        folded = slim_model(fp32, r["kept_channel_indices_if_bn_folded_first"])
        r3 = {"top1_fp32_channels_removed": top1(folded, x, y)}
        r3.update(qat_run("prune_qat_int8", folded, teacher, 8, calib, x, y))
        res["prune30_bnfolded_selection_qat_int8_distill"] = r3
        print("prune (BN-folded selection)", {k: v for k, v in r3.items() if k != "loss_curve"})

    if run("sweep") and args.sweep_seeds:
        # the same recipes with other shuffle seeds: the spread a re-implementation with its
        # own random order should expect (top-1 of the fake-quant model)
        _, slim, _ = prune_and_slim(fp32)
        sw = {}
        for name, model, wbits in (("qat_int8", fp32, 8), ("qat_w4a8", fp32, 4),
                                   ("prune_qat_int8", slim, 8)):
            accs = {}
            for sd in (int(v) for v in args.sweep_seeds.split(",")):
                accs[str(sd)] = qat_run(name, model, teacher, wbits, calib, x, y, convert=False,
                                        seed=sd)["top1_fakequant"]
            sw[name] = {"top1_by_seed": accs, "min": min(accs.values()),
                        "max": max(accs.values()),
                        "mean": sum(accs.values()) / len(accs)}
            print("seed sweep", name, sw[name], flush=True)
        res["seed_sweep"] = sw

    if run("fp16"):
        res["mixed_precision_training"] = fp16_experiments(fp32, calib, teacher, x, y)
    res["exercise_6_3"] = exercise_6_3()
    print("exercise 6.3", res["exercise_6_3"])

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print("wrote", out)


# Mixed-precision training: from-scratch distillation of a fresh DigitsCNN (seed SEED) on the 200
# images, SGD momentum 0.9, batch BATCH. With the loss multiplied by 2^-k and the learning rate by
# 2^k, fp32 training is bit-identical for every k (power-of-two scaling is exact), so any change in
# a 16-bit run comes from the 16-bit format alone: k=0 is digits' natural gradient scale, k=16
# puts the gradients where fp16 underflows (the regime loss scaling exists for).
MP_EPOCHS, MP_LR, MP_SHIFTS = 50, 0.05, (0, 16)
MP_MODES = ("fp32", "fp16_autocast", "fp16_autocast_gradscaler", "bf16_autocast")


def mp_train(mode, shift, calib, teacher, x, y):
    torch.manual_seed(SEED)
    m = DigitsCNN().train()
    g = torch.Generator().manual_seed(SEED)
    lr = MP_LR * 2.0 ** shift
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)
    dtype = torch.bfloat16 if mode.startswith("bf16") else torch.float16
    scaler = torch.amp.GradScaler("cpu") if mode.endswith("gradscaler") else None
    losses, skipped = [], 0
    for ep in range(MP_EPOCHS):
        perm = torch.randperm(len(calib), generator=g)
        tot = 0.0
        for i in range(0, len(calib), BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad()
            with torch.autocast("cpu", dtype=dtype, enabled=mode != "fp32"):
                out = m(calib[idx])
            loss = kd_loss(out.float(), teacher[idx])  # the loss itself in fp32
            scaled = loss * 2.0 ** -shift
            if scaler is None:
                scaled.backward()
                opt.step()
            else:
                before = scaler.get_scale()
                scaler.scale(scaled).backward()
                scaler.step(opt)  # skipped when a gradient is inf/nan
                scaler.update()
                skipped += int(scaler.get_scale() < before)
            tot += loss.item() * len(idx)
        losses.append(tot / len(calib))
    r = {"final_loss": losses[-1], "top1": top1(m, x, y),
         "loss_curve_every_5_epochs": [round(v, 5) for v in losses[4::5]]}
    if scaler is not None:
        r["final_scale"] = scaler.get_scale()
        r["skipped_steps"] = skipped
    return r


def grad_underflow(fp32_init, calib, teacher, mode, shift):
    """Share of weight-gradient elements that are exactly 0 although the fp32 gradient is not,
    and the relative L2 error of the gradient, for one batch of BATCH at initialisation.
    'fp16_true' runs the whole model in fp16 (model.half(), fp16 backward)."""
    m = copy.deepcopy(fp32_init).train()
    xb, tb = calib[:BATCH], teacher[:BATCH]

    def grads(kind):
        mm = copy.deepcopy(m)
        if kind == "fp16_true":
            mm = mm.half()
            out = mm(xb.half())
        else:
            dt = {"fp16_autocast": torch.float16, "bf16_autocast": torch.bfloat16}.get(kind)
            with torch.autocast("cpu", dtype=dt or torch.float16, enabled=dt is not None):
                out = mm(xb)
        (kd_loss(out.float(), tb) * 2.0 ** -shift).backward()
        # conv biases are skipped: BN after them makes their exact gradient 0
        return torch.cat([p.grad.float().flatten() for n, p in mm.named_parameters()
                          if not (n.startswith("conv") and n.endswith("bias"))])

    ref, got = grads("fp32"), grads(mode)
    return {"zeroed": float(((got == 0) & (ref != 0)).float().mean()),
            "rel_err": float((got - ref).norm() / ref.norm()),
            "median_abs_fp32_grad": float(ref.abs().median())}


def fp16_experiments(fp32, calib, teacher, x, y):
    torch.manual_seed(SEED)
    init = DigitsCNN()
    res = {"setup": {"model": "DigitsCNN from scratch (torch.manual_seed(0) init), BN in train mode",
                     "data": "200 calibration images, targets = fp32 model logits (no labels)",
                     "loss": "kd_loss (0.1*CE(argmax t) + 0.9*T^2*KL, T=4) in fp32, times 2^-k",
                     "optimizer": f"SGD momentum 0.9, lr {MP_LR} * 2^k, no weight decay",
                     "epochs": MP_EPOCHS, "batch": BATCH, "seed": SEED,
                     "autocast": "torch.autocast('cpu', dtype) around the forward pass",
                     "scaler": "torch.amp.GradScaler('cpu') defaults (init 2^16, growth 2 every "
                               "2000 steps, backoff 0.5)"},
           "grad_underflow_at_init": {}, "runs": {}}
    for k in MP_SHIFTS:
        res["grad_underflow_at_init"][f"k={k}"] = {
            mode: grad_underflow(init, calib, teacher, mode, k)
            for mode in ("fp16_autocast", "fp16_true", "bf16_autocast")}
        print(f"grad underflow k={k}", res["grad_underflow_at_init"][f"k={k}"], flush=True)
    for k in MP_SHIFTS:
        for mode in MP_MODES:
            r = mp_train(mode, k, calib, teacher, x, y)
            res["runs"][f"k={k} {mode}"] = r
            print(f"mixed precision k={k} {mode}: final loss {r['final_loss']:.4f} "
                  f"top1 {r['top1']:.4f}", {a: b for a, b in r.items() if a not in
                                             ("final_loss", "top1")}, flush=True)
    return res


if __name__ == "__main__":
    main()
