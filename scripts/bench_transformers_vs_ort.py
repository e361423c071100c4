#!/usr/bin/env python3
"""Transformers: qforge against ONNX Runtime, measured side by side in one run (single thread),
FP32 and dynamic INT8, at batch 1 and 8. Prints a Markdown table for the README.

Models:

* `minilm`: a MiniLM-shaped sentence encoder (the all-MiniLM-L6-v2 architecture):
  `transformers.BertModel` with vocab 30522, hidden 384, 6 layers, 12 heads, intermediate
  1536, eager attention, random weights after `torch.manual_seed(0)`, then masked mean pooling;
  exported with `torch.onnx.export(..., dynamo=False)` (opset 17) with dynamic batch and
  sequence, measured at sequence 32. Built on first use into `target/minilm/` (about 90 MB,
  not committed); needs `pip install torch transformers`.
* `vit`, `bert`: the fixtures under `tests/fixtures/transformers/` (see
  `gen_transformer_fixtures.py`); BERT at sequence 16.

ORT's INT8 is `quantize_dynamic(per_channel=True, weight_type=QInt8)` of the FP32 file; qforge
compiles the FP32 file with `--quantize dynamic`. ORT is timed as `../shared/bench/ort_latency.py`
times it (5 warm-ups, then timed runs of one inference each, median), with every input fed
(that script feeds only the first input).

    cargo build --release && python3 scripts/bench_transformers_vs_ort.py [--iters 50] [--models minilm,vit,bert]
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "transformers")
QFORGE = os.path.join(ROOT, "target", "release", "qforge")
MINILM_DIR = os.path.join(ROOT, "target", "minilm")
SEQ = 32


def build_minilm():
    """The MiniLM-shaped encoder's ONNX file (built once)."""
    path = os.path.join(MINILM_DIR, "minilm.onnx")
    if os.path.exists(path):
        return path
    import torch
    from transformers import BertConfig, BertModel

    # the BERT fixture's masked mean pooling
    sys.path.insert(0, HERE)
    from gen_transformer_fixtures import MeanPooled

    os.makedirs(MINILM_DIR, exist_ok=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512, attn_implementation="eager")
    model = MeanPooled(BertModel(cfg)).eval()
    ids, mask = tokens(2, SEQ, 0)
    dyn = {"input_ids": {0: "N", 1: "S"}, "attention_mask": {0: "N", 1: "S"}, "pooled": {0: "N"}}
    torch.onnx.export(model, (torch.from_numpy(ids), torch.from_numpy(mask)), path, dynamo=False,
                      opset_version=17, input_names=["input_ids", "attention_mask"], output_names=["pooled"],
                      dynamic_axes=dyn)
    return path


def tokens(n, s, seed, vocab=1000):
    """Token ids and an attention mask: every other sequence padded to between s/2 and s tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (n, s), dtype=np.int64)
    mask = np.ones((n, s), dtype=np.int64)
    for i in range(1, n, 2):
        keep = int(rng.integers(s // 2, s))
        mask[i, keep:] = 0
        ids[i, keep:] = 0
    return ids, mask


def ort_median(path, feeds, iters, warmup=5):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def qforge_bench(path, inputs, batch, iters, quantize):
    cmd = [QFORGE, "bench", path, "--batch", str(batch), "--iters", str(iters), "--json", "--threads", "1"]
    for name, f in inputs.items():
        cmd += ["--input", f"{name}={f}"]
    if quantize:
        cmd += ["--quantize", "dynamic"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["median_ms"], r["host_ops"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--models", default="minilm,vit,bert")
    a = p.parse_args()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = tempfile.mkdtemp(prefix="qforge-transformers-")
    models = {}
    for m in a.models.split(","):
        if m == "minilm":
            ids, mask = tokens(8, SEQ, 1, vocab=30522)
            models[m] = (build_minilm(), {"input_ids": ids, "attention_mask": mask})
        elif m == "bert":
            ids, mask = tokens(8, 16, 1)
            models[m] = (os.path.join(FIXTURES, "bert.onnx"), {"input_ids": ids, "attention_mask": mask})
        elif m == "vit":
            x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
            models[m] = (os.path.join(FIXTURES, "vit.onnx"), {"input": x})
        else:
            sys.exit(f"unknown model {m}")

    print("| model | batch | qforge FP32 ms | ORT FP32 ms | ratio | qforge dyn INT8 ms | ORT dyn INT8 ms | ratio | host steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (fp32, data) in models.items():
        dyn = os.path.join(tmp, f"{name}_dynamic.onnx")
        quantize_dynamic(fp32, dyn, per_channel=True, weight_type=QuantType.QInt8)
        files = {}
        for k, v in data.items():
            files[k] = os.path.join(tmp, f"{name}_{k}.npy")
            np.save(files[k], v)
        for batch in (1, 8):
            feeds = {k: v[:batch] for k, v in data.items()}
            q32, h32 = qforge_bench(fp32, files, batch, a.iters, False)
            o32 = ort_median(fp32, feeds, a.iters)
            q8, h8 = qforge_bench(fp32, files, batch, a.iters, True)
            o8 = ort_median(dyn, feeds, a.iters)
            host = sum(n for _, n in h32) + sum(n for _, n in h8)
            print(f"| {name} | {batch} | {q32:.3f} | {o32:.3f} | {q32 / o32:.2f} | {q8:.3f} | {o8:.3f} | "
                  f"{q8 / o8:.2f} | {host} |", flush=True)


if __name__ == "__main__":
    main()
