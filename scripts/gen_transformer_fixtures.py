#!/usr/bin/env python3
"""Transformer fixtures for issue #9, made the way a user would make them.

Run by hand (CI never runs it; its outputs are committed under tests/fixtures/transformers/):

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch torchvision transformers onnx onnxruntime \
        onnxconverter-common numpy
    /tmp/torchenv/bin/python scripts/gen_transformer_fixtures.py

Made with torch 2.15.0, torchvision 0.29.2, transformers 5.24.0, onnxruntime 1.32.0,
onnxconverter-common 1.16.0 (the versions are also written to `manifest.json`).

Two models, both exported with `torch.onnx.export(..., dynamo=False)` (the TorchScript
exporter, opset 17) with dynamic axes, so the graphs carry the shape subgraphs (Shape, Gather,
Unsqueeze, Concat, Range, Expand, ...) and mask construction a real export has:

* `vit.onnx`: torchvision's `VisionTransformer` (image 32x32, patch 8, 2 layers, 4 heads,
  hidden 64, MLP 128, 10 classes), random weights after `torch.manual_seed(0)`. Input `input`
  f32[N,3,32,32], output `logits` f32[N,10].
* `bert.onnx`: `transformers.BertModel` with a small random configuration (vocab 1000, hidden
  64, 2 layers, 4 heads, intermediate 128, 64 positions, eager attention) and masked mean
  pooling of the last hidden state. Inputs `input_ids` i64[N,S], `attention_mask` i64[N,S];
  output `pooled` f32[N,64].

  Trained BERTs carry a few activation channels in the hundreds while 99.9% of values stay
  below a few units (the LayerNorm gains of those channels are large). A random model has none,
  so the script puts them in: every LayerNorm's gain and bias on channels OUTLIER_CHANNELS are
  multiplied by OUTLIER_GAIN, except the last one (so the pooled output has an ordinary scale
  and its error shows what the outliers did inside). The FP32 model is what it is (the references are its outputs);
  the outliers only make per-tensor activation scales as bad as on a trained model.

For each model: calibration and test inputs (.npy), ONNX Runtime FP32 outputs at batch 1 and a
larger batch (and a second sequence length for BERT), ORT's own INT8 versions
(`quantize_dynamic(per_channel=True)` and default `quantize_static` QDQ with the calibration
inputs) and FP16 version (onnxconverter-common, keep_io_types) with their outputs, and
`metrics.json` with each variant's cosine and SQNR against FP32 on the test inputs.
"""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "transformers")
OPSET = 17
OUTLIER_CHANNELS = [5, 37]
OUTLIER_GAIN = 100.0
LAST_LAYER_NORM = "bert.encoder.layer.1.output.LayerNorm"


def save(name, a):
    np.save(os.path.join(OUT, name), a)


def ort_run(path, feeds, optimize=True):
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)[0]


def sqnr_db(ref, x):
    ref = ref.astype(np.float64)
    err = x.astype(np.float64) - ref
    return float(10 * np.log10((ref ** 2).sum() / max((err ** 2).sum(), 1e-300)))


def mean_cosine(ref, x):
    ref = ref.reshape(ref.shape[0], -1).astype(np.float64)
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    c = (ref * x).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(x, axis=1))
    return float(c.mean())


class Reader(CalibrationDataReader):
    def __init__(self, feeds_list):
        self.it = iter(feeds_list)

    def get_next(self):
        return next(self.it, None)


def variants(stem, test_feeds, calib_feeds_list):
    """ORT INT8 (dynamic per-channel, static QDQ) and FP16 versions, their outputs on the test
    inputs, and their figures against the FP32 output."""
    fp32 = os.path.join(OUT, f"{stem}.onnx")
    ref = ort_run(fp32, test_feeds)
    figures = {}

    dyn = os.path.join(OUT, f"{stem}_ort_int8_dynamic.onnx")
    quantize_dynamic(fp32, dyn, per_channel=True, weight_type=QuantType.QInt8)
    qdq = os.path.join(OUT, f"{stem}_ort_int8_qdq.onnx")
    quantize_static(fp32, qdq, Reader(calib_feeds_list), quant_format=QuantFormat.QDQ)
    from onnxconverter_common import float16
    m16 = float16.convert_float_to_float16(onnx.load(fp32), keep_io_types=True)
    # The converter retypes a Cast's output to float16 in value_info but leaves its `to`
    # attribute at float, which ORT rejects (blocking Cast instead makes it loop forever); set
    # `to` to what the converter declared.
    declared = {vi.name: vi.type.tensor_type.elem_type for vi in m16.graph.value_info}
    for n in m16.graph.node:
        if n.op_type == "Cast" and declared.get(n.output[0]) == onnx.TensorProto.FLOAT16:
            for a in n.attribute:
                if a.name == "to" and a.i == onnx.TensorProto.FLOAT:
                    a.i = onnx.TensorProto.FLOAT16
    f16 = os.path.join(OUT, f"{stem}_ort_fp16.onnx")
    onnx.save(m16, f16)

    for tag, path in [("ort_int8_dynamic", dyn), ("ort_int8_qdq", qdq), ("ort_fp16", f16)]:
        # ORT 1.32's graph optimizer segfaults loading the converted fp16 ViT; run the fp16
        # models unoptimized (the numerics are the same kernels).
        out = ort_run(path, test_feeds, optimize=tag != "ort_fp16")
        save(f"{stem}_test_out_{tag}.npy", out)
        figures[tag] = {"cosine": mean_cosine(ref, out), "sqnr_db": sqnr_db(ref, out)}
    return figures


def vit():
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    m = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                          mlp_dim=128, num_classes=10).eval()
    # torchvision zero-initializes the classifier head, which would make every logit 0.
    with torch.no_grad():
        torch.nn.init.normal_(m.heads.head.weight, std=0.5)
        torch.nn.init.normal_(m.heads.head.bias, std=0.1)
    g = torch.Generator().manual_seed(1)
    calib = torch.randn(32, 3, 32, 32, generator=g)
    test = torch.randn(4, 3, 32, 32, generator=g)
    path = os.path.join(OUT, "vit.onnx")
    torch.onnx.export(m, (test[:1],), path, dynamo=False, opset_version=OPSET, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    save("vit_calib_x.npy", calib.numpy())
    save("vit_test_x.npy", test.numpy())
    with torch.no_grad():
        torch_out = m(test).numpy()
    b1 = ort_run(path, {"input": test[:1].numpy()})
    b4 = ort_run(path, {"input": test.numpy()})
    save("vit_test_out_fp32_b1.npy", b1)
    save("vit_test_out_fp32.npy", b4)
    figures = variants("vit", {"input": test.numpy()},
                       [{"input": calib[i:i + 8].numpy()} for i in range(0, 32, 8)])
    return {"torch_vs_ort_max_abs": float(np.abs(torch_out - b4).max()), "ort": figures}


class MeanPooled(torch.nn.Module):
    """BertModel followed by masked mean pooling of the last hidden state."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


def token_batch(g, n, s, vocab):
    ids = torch.randint(0, vocab, (n, s), generator=g)
    mask = torch.ones(n, s, dtype=torch.int64)
    # Padding on every other sequence: lengths between s/2 and s.
    for i in range(1, n, 2):
        keep = int(torch.randint(s // 2, s, (1,), generator=g))
        mask[i, keep:] = 0
        ids[i, keep:] = 0
    return ids, mask


def bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64, attn_implementation="eager")
    model = MeanPooled(BertModel(cfg)).eval()
    with torch.no_grad():
        for name, mod in model.named_modules():
            # Every LayerNorm but the last: the pooled output keeps an ordinary scale, so its
            # error shows what the outliers did inside.
            if isinstance(mod, torch.nn.LayerNorm) and name != LAST_LAYER_NORM:
                mod.weight[OUTLIER_CHANNELS] *= OUTLIER_GAIN
                mod.bias[OUTLIER_CHANNELS] *= OUTLIER_GAIN
    g = torch.Generator().manual_seed(1)
    calib = [token_batch(g, 8, 16, cfg.vocab_size) for _ in range(4)]
    test16 = token_batch(g, 4, 16, cfg.vocab_size)
    test32 = token_batch(g, 2, 32, cfg.vocab_size)
    path = os.path.join(OUT, "bert.onnx")
    dyn = {"input_ids": {0: "N", 1: "S"}, "attention_mask": {0: "N", 1: "S"}, "pooled": {0: "N"}}
    torch.onnx.export(model, test16, path, dynamo=False, opset_version=OPSET,
                      input_names=["input_ids", "attention_mask"], output_names=["pooled"], dynamic_axes=dyn)
    save("bert_calib_ids.npy", torch.cat([c[0] for c in calib]).numpy())
    save("bert_calib_mask.npy", torch.cat([c[1] for c in calib]).numpy())
    save("bert_test_ids.npy", test16[0].numpy())
    save("bert_test_mask.npy", test16[1].numpy())
    save("bert_test_ids_s32.npy", test32[0].numpy())
    save("bert_test_mask_s32.npy", test32[1].numpy())
    # the same sets as one archive per set, one array per input name (qforge's --calib for a
    # model with several inputs)
    np.savez(os.path.join(OUT, "bert_calib.npz"), input_ids=torch.cat([c[0] for c in calib]).numpy(),
             attention_mask=torch.cat([c[1] for c in calib]).numpy())
    np.savez(os.path.join(OUT, "bert_test.npz"), input_ids=test16[0].numpy(), attention_mask=test16[1].numpy())

    def feeds(ids, mask):
        return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}

    with torch.no_grad():
        torch_out = model(*test16).numpy()
        # Where the outliers are: the hidden state entering the first layer.
        h = model.bert.embeddings(input_ids=test16[0])
    a = h.abs().flatten()
    outliers = {
        "max_abs": float(a.max()),
        "p99_9_abs": float(a.quantile(0.999)),
        "share_below_1": float((a < 1).float().mean()),
        "max_abs_outside_outlier_channels": float(
            h[..., [c for c in range(cfg.hidden_size) if c not in OUTLIER_CHANNELS]].abs().max()),
    }
    b1 = ort_run(path, feeds(test16[0][:1], test16[1][:1]))
    b4 = ort_run(path, feeds(*test16))
    s32 = ort_run(path, feeds(*test32))
    save("bert_test_out_fp32_b1.npy", b1)
    save("bert_test_out_fp32.npy", b4)
    save("bert_test_out_fp32_s32.npy", s32)
    figures = variants("bert", feeds(*test16), [feeds(*c) for c in calib])
    return {"torch_vs_ort_max_abs": float(np.abs(torch_out - b4).max()), "embedding_output": outliers,
            "ort": figures}


def main():
    os.makedirs(OUT, exist_ok=True)
    import torchvision
    import transformers
    import onnxconverter_common
    manifest = {
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "transformers": transformers.__version__,
                     "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     "onnxconverter_common": onnxconverter_common.__version__},
        "opset": OPSET,
        "outliers": {"channels": OUTLIER_CHANNELS, "gain": OUTLIER_GAIN},
        "vit": vit(),
        "bert": bert(),
    }
    with open(os.path.join(OUT, "metrics.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    print(json.dumps(manifest, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
