#!/usr/bin/env python3
"""A zoo of real architectures as small fixtures, made the way a user makes them.

Run by hand (CI never runs it; its outputs are committed under tests/fixtures/zoo/):

    python3 -m pip install torch torchvision onnx onnxruntime onnxscript numpy
    python3 scripts/gen_zoo_fixtures.py [model ...]

Each model is a torchvision architecture (or, where torchvision has none, a module of the same
shape written here) at reduced width so the committed file stays small, with random weights
after `torch.manual_seed(0)` (no pretrained file is downloaded). Batch-norm statistics are then
recalibrated on the calibration images (train-mode forward passes with cumulative averaging), so
activations have the ranges a trained network's have rather than those of a random one.
Detectors and segmenters are exported up to their raw head outputs (what is deployed; box
decoding and NMS run after the network).

Every model is exported twice, with dynamic batch, height and width:

* `<name>.onnx`: the TorchScript exporter (`dynamo=False`, opset 17);
* `<name>_dynamo.onnx`: the dynamo exporter at its default opset (18 and up), when it succeeds
  (`manifest.json` records the error otherwise).

For each pair of image sizes A and B (the manifest's `images` names the set a model uses):
calibration images (`images_<A>_<B>_calib.npy`, 16 at size A), test images at size A
(`images_<A>_<B>_test_a.npy`, 4) and size B (`images_<A>_<B>_test_b.npy`, 2). For each model:
ONNX Runtime FP32 outputs of the TorchScript export for batch 1 and batch 4 at size A and batch
2 at size B (`<name>_out_a_b1.npy`, `<name>_out_a.npy`, `<name>_out_b.npy`), and in `manifest.json` the shapes, parameter count, file sizes and ONNX Runtime's
`quantize_static` (QDQ, default settings, the same calibration images) SQNR against FP32 on the
size-A test images.
"""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "zoo")
OPSET = 17


# ----------------------------------------------------------------------------- models

# The MobileNetV3-large width of the detection and segmentation backbones (a quarter: the
# committed files stay near a megabyte).
BACKBONE_WIDTH = 0.25


def mobilenet_v3_large_small():
    from torchvision.models import mobilenet_v3_large
    return mobilenet_v3_large(weights=None, width_mult=BACKBONE_WIDTH)


class SsdLiteHeads(nn.Module):
    """torchvision's SSDlite320 (MobileNetV3-large backbone with extra layers, SSDLite head)
    returning the raw box regression and class logits of every anchor."""

    def __init__(self):
        super().__init__()
        from torchvision.models.detection import ssdlite320_mobilenet_v3_large
        m = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=6,
                                          width_mult=BACKBONE_WIDTH)
        self.backbone, self.head = m.backbone, m.head

    def forward(self, x):
        feats = list(self.backbone(x).values())
        out = self.head(feats)
        return torch.cat([out["bbox_regression"], out["cls_logits"]], dim=2)


class FpnBackbone(nn.Module):
    """MobileNetV3-large (a quarter of the width) features at strides 8, 16, 32 into a feature pyramid with
    P6/P7 (torchvision's FeaturePyramidNetwork and LastLevelP6P7), as RetinaNet and FCOS use."""

    def __init__(self, out_channels=32):
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7
        feats = mobilenet_v3_large_small().features
        # the last block of each stride: 8 (index 6), 16 (index 12), 32 (index 16)
        self.stages = nn.ModuleList([feats[:7], feats[7:13], feats[13:]])
        chans = []
        x = torch.zeros(1, 3, 64, 64)
        for s in self.stages:
            x = s(x)
            chans.append(x.shape[1])
        self.fpn = FeaturePyramidNetwork(chans, out_channels,
                                         extra_blocks=LastLevelP6P7(out_channels, out_channels))

    def forward(self, x):
        from collections import OrderedDict
        feats = OrderedDict()
        for i, s in enumerate(self.stages):
            x = s(x)
            feats[str(i)] = x
        return list(self.fpn(feats).values())


class RetinaNetHeads(nn.Module):
    """torchvision's RetinaNetHead on the pyramid: class logits and box deltas of every anchor."""

    def __init__(self):
        super().__init__()
        from torchvision.models.detection.retinanet import RetinaNetHead
        self.body = FpnBackbone(32)
        self.head = RetinaNetHead(32, num_anchors=9, num_classes=6)

    def forward(self, x):
        feats = self.body(x)
        cls = self.head.classification_head(feats)
        box = self.head.regression_head(feats)
        return torch.cat([box, cls], dim=2)


class FcosHeads(nn.Module):
    """torchvision's FCOSHead (GroupNorm towers) on the pyramid: box deltas, centerness and class
    logits of every location."""

    def __init__(self):
        super().__init__()
        from torchvision.models.detection.fcos import FCOSHead
        # FCOSHead normalizes with GroupNorm(32 groups): 64 channels keep two per group, so the
        # 1x1 P7 level still has a variance.
        self.body = FpnBackbone(64)
        self.head = FCOSHead(64, num_anchors=1, num_classes=6, num_convs=2)

    def forward(self, x):
        feats = self.body(x)
        cls = self.head.classification_head(feats)
        box, ctr = self.head.regression_head(feats)
        return torch.cat([box, ctr, cls], dim=2)


class DeepLabV3(nn.Module):
    """torchvision's DeepLabV3 on a dilated MobileNetV3-large (a quarter of the width), with the DeepLabHead
    structure (ASPP at rates 12/24/36, 3x3 conv, 1x1 classifier) at 32 channels instead of 256,
    upsampled bilinearly to the input size."""

    def __init__(self):
        super().__init__()
        from torchvision.models import mobilenet_v3_large
        from torchvision.models.segmentation.deeplabv3 import ASPP
        feats = mobilenet_v3_large(weights=None, width_mult=BACKBONE_WIDTH, dilated=True).features
        self.backbone = feats
        c = feats(torch.zeros(1, 3, 64, 64)).shape[1]
        self.classifier = nn.Sequential(ASPP(c, [12, 24, 36], out_channels=32),
                                        nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                                        nn.ReLU(), nn.Conv2d(32, 5, 1))

    def forward(self, x):
        y = self.classifier(self.backbone(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class LrAspp(nn.Module):
    """torchvision's LRASPP on MobileNetV3-large (a quarter of the width): the low/high feature split at
    strides 8 and 16 (dilated), sigmoid-gated pooling branch, bilinear upsampling."""

    def __init__(self):
        super().__init__()
        from torchvision.models import mobilenet_v3_large
        from torchvision.models.segmentation.lraspp import LRASPP
        from torchvision.models._utils import IntermediateLayerGetter
        backbone = mobilenet_v3_large(weights=None, width_mult=BACKBONE_WIDTH, dilated=True).features
        stage_indices = [0] + [i for i, b in enumerate(backbone) if getattr(b, "_is_cn", False)] + \
            [len(backbone) - 1]
        low_pos, high_pos = stage_indices[-4], stage_indices[-1]
        low_c = backbone[low_pos].out_channels
        high_c = backbone[high_pos].out_channels
        body = IntermediateLayerGetter(backbone, return_layers={str(low_pos): "low", str(high_pos): "high"})
        self.m = LRASPP(body, low_c, high_c, num_classes=5, inter_channels=32)

    def forward(self, x):
        return self.m(x)["out"]


def efficientnet_b0_half():
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
    setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.5)
    return EfficientNet(setting, dropout=0.2, num_classes=10, last_channel=last)


def convnext_small_width():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt
    cfg = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 1), CNBlockConfig(64, 128, 2),
           CNBlockConfig(128, None, 1)]
    return ConvNeXt(cfg, stochastic_depth_prob=0.0, num_classes=10)


def regnet_y_small():
    from torchvision.models.regnet import BlockParams, RegNet
    params = BlockParams.from_init_params(depth=6, w_0=16, w_a=8.0, w_m=2.0, group_width=8,
                                          se_ratio=0.25)
    return RegNet(params, num_classes=10)


def shufflenet_v2_small():
    from torchvision.models.shufflenetv2 import ShuffleNetV2
    return ShuffleNetV2([2, 3, 2], [12, 24, 48, 96, 256], num_classes=10)


class UNet(nn.Module):
    """A UNet: two 3x3 conv blocks per level, max-pool down, ConvTranspose 2x2 stride 2 up,
    skip concatenation, 1x1 classifier."""

    def __init__(self, c=8, levels=3, classes=3):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(),
                                 nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

        chans = [c * 2 ** i for i in range(levels + 1)]
        self.down = nn.ModuleList([block(3 if i == 0 else chans[i - 1], chans[i]) for i in range(levels)])
        self.mid = block(chans[levels - 1], chans[levels])
        self.up = nn.ModuleList([nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2)
                                 for i in reversed(range(levels))])
        self.dec = nn.ModuleList([block(chans[i] * 2, chans[i]) for i in reversed(range(levels))])
        self.head = nn.Conv2d(c, classes, 1)

    def forward(self, x):
        skips = []
        for d in self.down:
            x = d(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.mid(x)
        for up, dec, s in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), s], dim=1))
        return self.head(x)


def swin_small():
    from torchvision.models.swin_transformer import SwinTransformer
    return SwinTransformer(patch_size=[4, 4], embed_dim=24, depths=[2, 2], num_heads=[2, 4],
                           window_size=[4, 4], stochastic_depth_prob=0.0, num_classes=10)


class EncoderBlock(nn.Module):
    """A pre-norm transformer block (multi-head self-attention, GELU MLP), written with shapes read
    from the input so the exported graph keeps the sequence length dynamic (the exporter bakes
    the example's length into nn.MultiheadAttention's reshapes)."""

    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))

    def forward(self, x):
        n, t, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = F.softmax(q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5, dim=-1)
        x = x + self.proj((a @ v).transpose(1, 2).reshape(n, t, c))
        return x + self.mlp(self.norm2(x))


class TextRecognizer(nn.Module):
    """An SVTR/CRNN-shaped text recognizer: a conv stem that reduces a 32-pixel-high line to
    height 2 (strides on height, and on width twice), the height averaged away, transformer
    blocks over the width, and a CTC head (linear, log-softmax) giving per-column class
    log-probabilities."""

    def __init__(self, c=32, classes=37, layers=2):
        super().__init__()

        def cbr(i, o, stride):
            return nn.Sequential(nn.Conv2d(i, o, 3, stride=stride, padding=1, bias=False),
                                 nn.BatchNorm2d(o), nn.Hardswish())

        self.stem = nn.Sequential(cbr(3, c // 2, (2, 2)), cbr(c // 2, c, (2, 1)), cbr(c, c, (2, 2)),
                                  cbr(c, c, (2, 1)))
        self.blocks = nn.Sequential(*[EncoderBlock(c, 4) for _ in range(layers)])
        self.norm = nn.LayerNorm(c)
        self.ctc = nn.Linear(c, classes)

    def forward(self, x):
        f = self.stem(x)  # [N, C, 2, W/4]
        f = f.mean(dim=2)  # [N, C, W/4]
        f = f.transpose(1, 2)  # [N, T, C]
        f = self.norm(self.blocks(f))
        return F.log_softmax(self.ctc(f), dim=-1)


class LearnableAffine(nn.Module):
    """PP-LCNetV3's learnable affine block: y = scale * x + bias with learned scalars."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.1))
        self.bias = nn.Parameter(torch.tensor(0.05))

    def forward(self, x):
        return self.scale * x + self.bias


class SqueezeExcite(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class LcBlock(nn.Module):
    """PP-LCNet's depthwise-separable block: depthwise conv, BN, hardswish (with learnable affine),
    optional SE, pointwise conv, BN, hardswish."""

    def __init__(self, i, o, k, stride, se):
        super().__init__()
        self.dw = nn.Sequential(nn.Conv2d(i, i, k, stride, k // 2, groups=i, bias=False), nn.BatchNorm2d(i))
        self.aff1 = LearnableAffine()
        self.se = SqueezeExcite(i) if se else nn.Identity()
        self.pw = nn.Sequential(nn.Conv2d(i, o, 1, bias=False), nn.BatchNorm2d(o))
        self.aff2 = LearnableAffine()

    def forward(self, x):
        x = self.aff1(F.hardswish(self.dw(x)))
        x = self.se(x)
        return self.aff2(F.hardswish(self.pw(x)))


class PpLcNet(nn.Module):
    """A PP-LCNet-style backbone (x0.5 widths): conv stem, depthwise-separable blocks with
    hardswish, learnable affine blocks, SE in the last stage with 5x5 kernels, global pooling,
    a 1x1 conv head with hardswish, classifier."""

    def __init__(self, classes=10):
        super().__init__()
        cfg = [  # in, out, kernel, stride, se
            (8, 16, 3, 1, False), (16, 32, 3, 2, False), (32, 32, 3, 1, False), (32, 64, 3, 2, False),
            (64, 64, 3, 1, False), (64, 128, 3, 2, False), (128, 128, 5, 1, False), (128, 256, 5, 2, True),
            (256, 256, 5, 1, True)]
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
        self.blocks = nn.Sequential(*[LcBlock(*c) for c in cfg])
        self.head = nn.Conv2d(256, 320, 1)
        self.fc = nn.Linear(320, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = F.hardswish(self.head(F.adaptive_avg_pool2d(x, 1)))
        return self.fc(torch.flatten(x, 1))


class ConvBnSilu(nn.Module):
    def __init__(self, i, o, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(i, o, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(o)

    def forward(self, x):
        return F.silu(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c, shortcut=True):
        super().__init__()
        self.cv1, self.cv2 = ConvBnSilu(c, c, 3), ConvBnSilu(c, c, 3)
        self.add = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """YOLOv8's C2f: 1x1 conv, split in two, a chain of bottlenecks on one half, concatenation
    of every intermediate, 1x1 conv."""

    def __init__(self, i, o, n=1, shortcut=False):
        super().__init__()
        self.c = o // 2
        self.cv1 = ConvBnSilu(i, 2 * self.c)
        self.cv2 = ConvBnSilu((2 + n) * self.c, o)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class Sppf(nn.Module):
    """YOLOv8's SPPF: three chained 5x5 max-pools, concatenated."""

    def __init__(self, i, o):
        super().__init__()
        self.cv1 = ConvBnSilu(i, i // 2)
        self.cv2 = ConvBnSilu(i // 2 * 4, o)

    def forward(self, x):
        x = self.cv1(x)
        y1 = F.max_pool2d(x, 5, 1, 2)
        y2 = F.max_pool2d(y1, 5, 1, 2)
        y3 = F.max_pool2d(y2, 5, 1, 2)
        return self.cv2(torch.cat([x, y1, y2, y3], 1))


class YoloV8Style(nn.Module):
    """A YOLOv8n-shaped detector (following ultralytics' yolov8.yaml at a quarter of the width):
    CSP backbone with C2f and SPPF, PAN neck with nearest upsampling and concatenation, and the
    decoupled head with distribution focal loss boxes, decoded as the exported model does
    (softmax over 16 bins, expectation) and concatenated with sigmoid class scores per anchor."""

    def __init__(self, classes=6, w=4, reg_max=16):
        super().__init__()
        c = [w, 2 * w, 4 * w, 8 * w, 16 * w]
        self.b0 = ConvBnSilu(3, c[0], 3, 2)
        self.b1 = nn.Sequential(ConvBnSilu(c[0], c[1], 3, 2), C2f(c[1], c[1], 1, True))
        self.b2 = nn.Sequential(ConvBnSilu(c[1], c[2], 3, 2), C2f(c[2], c[2], 2, True))
        self.b3 = nn.Sequential(ConvBnSilu(c[2], c[3], 3, 2), C2f(c[3], c[3], 2, True))
        self.b4 = nn.Sequential(ConvBnSilu(c[3], c[4], 3, 2), C2f(c[4], c[4], 1, True), Sppf(c[4], c[4]))
        self.n1 = C2f(c[4] + c[3], c[3])
        self.n2 = C2f(c[3] + c[2], c[2])
        self.d1 = ConvBnSilu(c[2], c[2], 3, 2)
        self.n3 = C2f(c[2] + c[3], c[3])
        self.d2 = ConvBnSilu(c[3], c[3], 3, 2)
        self.n4 = C2f(c[3] + c[4], c[4])
        self.reg_max, self.classes = reg_max, classes
        c2, c3 = max(16, c[2] // 4, reg_max * 4), max(c[2], classes)
        self.box = nn.ModuleList(nn.Sequential(ConvBnSilu(ch, c2, 3), ConvBnSilu(c2, c2, 3),
                                               nn.Conv2d(c2, 4 * reg_max, 1)) for ch in (c[2], c[3], c[4]))
        self.cls = nn.ModuleList(nn.Sequential(ConvBnSilu(ch, c3, 3), ConvBnSilu(c3, c3, 3),
                                               nn.Conv2d(c3, classes, 1)) for ch in (c[2], c[3], c[4]))
        self.register_buffer("bins", torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1))

    def forward(self, x):
        x = self.b1(self.b0(x))
        p3 = self.b2(x)
        p4 = self.b3(p3)
        p5 = self.b4(p4)
        t4 = self.n1(torch.cat([F.interpolate(p5, scale_factor=2.0, mode="nearest"), p4], 1))
        o3 = self.n2(torch.cat([F.interpolate(t4, scale_factor=2.0, mode="nearest"), p3], 1))
        o4 = self.n3(torch.cat([self.d1(o3), t4], 1))
        o5 = self.n4(torch.cat([self.d2(o4), p5], 1))
        outs = []
        for f, box, cls in zip((o3, o4, o5), self.box, self.cls):
            n = f.shape[0]
            b = box(f).reshape(n, 4, self.reg_max, -1)  # [N, 4, 16, A]
            dist = (F.softmax(b, dim=2) * self.bins.view(1, 1, self.reg_max, 1)).sum(2)  # [N, 4, A]
            s = torch.sigmoid(cls(f)).reshape(n, self.classes, -1)
            outs.append(torch.cat([dist, s], 1))
        return torch.cat(outs, 2)


# name: (constructor, size A (H, W), size B (H, W), kind)
MODELS = {
    "ssdlite_mobilenet_v3": (SsdLiteHeads, (96, 96), (128, 96), "detection"),
    "retinanet_fpn": (RetinaNetHeads, (96, 96), (128, 96), "detection"),
    "fcos_fpn": (FcosHeads, (96, 96), (128, 96), "detection"),
    "deeplabv3_mobilenet_v3": (DeepLabV3, (96, 96), (128, 96), "segmentation"),
    "lraspp_mobilenet_v3": (LrAspp, (96, 96), (128, 96), "segmentation"),
    "efficientnet_b0": (efficientnet_b0_half, (64, 64), (96, 96), "classification"),
    "convnext_tiny": (convnext_small_width, (64, 64), (96, 96), "classification"),
    "regnet_y_400mf": (regnet_y_small, (64, 64), (96, 96), "classification"),
    "shufflenet_v2": (shufflenet_v2_small, (64, 64), (96, 96), "classification"),
    "unet": (UNet, (64, 64), (96, 64), "segmentation"),
    "swin_t": (swin_small, (64, 64), (96, 96), "classification"),
    "text_recognizer": (TextRecognizer, (32, 128), (32, 96), "recognition"),
    "pp_lcnet": (PpLcNet, (64, 64), (96, 96), "classification"),
    "yolov8_style": (YoloV8Style, (96, 96), (128, 96), "detection"),
}


# ----------------------------------------------------------------------------- data and export

def images(g, n, hw):
    """Smooth random images: low-frequency noise upsampled, plus a little pixel noise, scaled as
    ImageNet-normalized inputs are (roughly zero mean, unit variance)."""
    h, w = hw
    low = torch.randn(n, 3, max(2, h // 8), max(2, w // 8), generator=g)
    x = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    x = x + 0.1 * torch.randn(n, 3, h, w, generator=g)
    return (x / x.std()).float()


def recalibrate_bn(model, batches):
    """Batch-norm running statistics from the calibration images (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for b in batches:
            model(b)
    model.eval()


def init_weights(model):
    """Random weights with the scales torchvision's initializers give, plus non-trivial
    normalization affine parameters (a trained model's are not all 1 and 0)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.Linear) and m.weight.abs().max() == 0:
                nn.init.normal_(m.weight, std=0.1)


def export_torchscript(model, x, path):
    dyn = {"x": {0: "N", 2: "H", 3: "W"}, "y": {0: "N"}}
    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=OPSET, input_names=["x"],
                      output_names=["y"], dynamic_axes=dyn, do_constant_folding=True)


def export_dynamo(model, x, path):
    from torch.export import Dim
    shapes = {"x": {0: Dim("N", min=1, max=64), 2: Dim.AUTO, 3: Dim.AUTO}}
    prog = torch.onnx.export(model, (x,), dynamo=True, input_names=["x"], output_names=["y"],
                             dynamic_shapes=shapes, optimize=True)
    prog.save(path)


def ort_run(path, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def sqnr_db(ref, x):
    ref = ref.astype(np.float64)
    err = x.astype(np.float64) - ref
    return float(10 * np.log10((ref ** 2).sum() / max((err ** 2).sum(), 1e-300)))


class Reader(CalibrationDataReader):
    def __init__(self, batches):
        self.it = iter([{"x": b} for b in batches])

    def get_next(self):
        return next(self.it, None)


def make(name):
    ctor, size_a, size_b, kind = MODELS[name]
    torch.manual_seed(0)
    model = ctor().eval()
    init_weights(model)
    g = torch.Generator().manual_seed(1)
    calib = images(g, 16, size_a)
    test_a = images(g, 4, size_a)
    test_b = images(g, 2, size_b)
    recalibrate_bn(model, [calib[i:i + 8] for i in range(0, 16, 8)] + [test_b])
    path = os.path.join(OUT, f"{name}.onnx")
    export_torchscript(model, test_a[:1], path)
    info = {"kind": kind, "size_a": list(size_a), "size_b": list(size_b),
            "params": int(sum(p.numel() for p in model.parameters())),
            "opset": OPSET, "bytes": os.path.getsize(path)}
    dpath = os.path.join(OUT, f"{name}_dynamo.onnx")
    try:
        # (an example batch of 2: torch.export specializes a dim whose example size is 1)
        export_dynamo(model, test_a[:2], dpath)
        m = onnx.load(dpath)
        info["dynamo"] = {"opset": next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
                          "bytes": os.path.getsize(dpath)}
        # the dynamo exporter writes the weights into an external data file when asked to; keep
        # one self-contained file
        onnx.save(m, dpath, save_as_external_data=False)
    except Exception as e:  # noqa: BLE001 (recorded, the fixture still has the TorchScript export)
        info["dynamo"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        if os.path.exists(dpath):
            os.remove(dpath)
    for f in os.listdir(OUT):
        if f.startswith(f"{name}_dynamo.onnx") and f != f"{name}_dynamo.onnx":
            os.remove(os.path.join(OUT, f))
    # the images depend only on the two sizes (the same seed and draws for every model): one set
    # per pair of sizes
    data = "images_{}x{}_{}x{}".format(*size_a, *size_b)
    info["images"] = data
    np.save(os.path.join(OUT, f"{data}_calib.npy"), calib.numpy())
    np.save(os.path.join(OUT, f"{data}_test_a.npy"), test_a.numpy())
    np.save(os.path.join(OUT, f"{data}_test_b.npy"), test_b.numpy())
    with torch.no_grad():
        torch_a = model(test_a).numpy()
    out_a = ort_run(path, test_a.numpy())
    out_a1 = ort_run(path, test_a[:1].numpy())
    out_b = ort_run(path, test_b.numpy())
    np.save(os.path.join(OUT, f"{name}_out_a.npy"), out_a)
    np.save(os.path.join(OUT, f"{name}_out_a_b1.npy"), out_a1)
    np.save(os.path.join(OUT, f"{name}_out_b.npy"), out_b)
    info["output_a"] = list(out_a.shape)
    info["output_b"] = list(out_b.shape)
    info["torch_vs_ort_max_abs"] = float(np.abs(torch_a - out_a).max())
    info["output_max_abs"] = float(np.abs(out_a).max())
    if "error" not in info["dynamo"]:
        d = ort_run(dpath, test_a.numpy())
        info["dynamo"]["vs_torchscript_max_abs"] = float(np.abs(d - out_a).max())
    qdq = os.path.join(OUT, f"{name}_ort_int8_qdq.tmp.onnx")
    try:
        quantize_static(path, qdq, Reader([calib[i:i + 4].numpy() for i in range(0, 16, 4)]),
                        quant_format=QuantFormat.QDQ)
        q = ort_run(qdq, test_a.numpy())
        info["ort_int8_qdq_sqnr_db"] = sqnr_db(out_a, q)
    except Exception as e:  # noqa: BLE001
        info["ort_int8_qdq_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    finally:
        for f in os.listdir(OUT):
            if f.startswith(f"{name}_ort_int8_qdq.tmp"):
                os.remove(os.path.join(OUT, f))
    return info


def main():
    os.makedirs(OUT, exist_ok=True)
    names = sys.argv[1:] or list(MODELS)
    mpath = os.path.join(OUT, "manifest.json")
    manifest = json.load(open(mpath)) if os.path.exists(mpath) else {"models": {}}
    import torchvision
    import onnxscript
    manifest["versions"] = {"python": sys.version.split()[0], "torch": torch.__version__,
                            "torchvision": torchvision.__version__, "onnx": onnx.__version__,
                            "onnxruntime": ort.__version__, "onnxscript": onnxscript.__version__}
    for n in names:
        print(f"{n} ...", flush=True)
        manifest["models"][n] = make(n)
        print(json.dumps(manifest["models"][n]), flush=True)
    manifest["models"] = dict(sorted(manifest["models"].items()))
    with open(mpath, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
