"""Calibration streamed from a generator: 1,000 batches, never all in memory.

Each measurement runs in a fresh interpreter that loads a model file written here (so no memory
freed while building the model is reused and hidden), with glibc's mmap threshold fixed at 1 MiB
(`MALLOC_MMAP_THRESHOLD_`): a freed batch goes back to the system at once, so the resident size
shows the memory calibration keeps alive rather than what the allocator keeps for later. The
baseline is the resident size once the model is loaded; the peak (VmHWM, reset to the baseline
first) is read after the last batch.

What calibration may hold at its peak, each term measured or computed, none a tolerance:
  * the caller's batch (the generator's array; qforge converts one run's samples at a time),
  * the calibration program's packed weights (the model's matrix, columns rounded up to 16),
  * one run: at most 256 KiB of input samples (`RUN_INPUT_BYTES`), as a tensor and in the arena,
  * the quantized model's int8 weights (a quarter of the model),
  * bias correction's statistic, taken in the calibration pass: the running sums of the corrected
    layer's input per reduction index (one f64 each),
  * the compiler's own working set (Cranelift, the pipeline): measured on a model of 1,024
    features with 4 KiB batches, where the terms above are negligible.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
from models import wide

MIB = 1 << 20
CLASSES = 8
RUN_INPUT_BYTES = 256 << 10  # passes/src/quantize/calibrate.rs

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import qforge

    path, features, rows, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

    def rss(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise RuntimeError(key)

    made = 0
    def stream(n):
        global made
        for i in range(n):
            made += 1
            # a fresh array each time: a kept reference would show up as memory
            yield np.full((rows, features), (i % 97) * 0.01 - 0.5, np.float32)

    m = qforge.load(path)
    base = rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:    # reset VmHWM to the current size
        f.write("5")
    q = m.quantize(calib=stream(batches))
    peak = rss("VmHWM")
    y = q.compile().run(np.zeros((1, features), np.float32))
    print(json.dumps({"batches": made, "base": base, "peak": peak, "out": list(y.shape)}))
    """
)


def measure(tmp_path, features: int, rows: int, batches: int) -> dict:
    path = tmp_path / f"wide_{features}.onnx"
    if not path.exists():
        path.write_bytes(wide(features, CLASSES))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MIB))
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), str(features), str(rows), str(batches)],
        check=True, capture_output=True, text=True, timeout=600, env=env,
    ).stdout
    r = json.loads(out.strip().splitlines()[-1])
    assert r["batches"] == batches and r["out"] == [1, CLASSES]
    r["grew"] = r["peak"] - r["base"]
    r["batch_bytes"] = rows * features * 4
    r["model_bytes"] = features * CLASSES * 4
    return r


def test_generator_of_1000_batches_keeps_memory_bounded(tmp_path):
    machinery = measure(tmp_path, 1024, 1, 1000)["grew"]
    features = 65536
    # the JIT's packed weights: columns rounded up to 16, and with at most 8 columns (and a long
    # reduction, as here) the narrow GEMM's rows after them (4 rows up to 4 columns, else 8)
    narrow_rows = 4 if CLASSES <= 4 else 8 if CLASSES <= 8 else 0
    packed = features * (-(-CLASSES // 16) * 16 + narrow_rows) * 4
    one_run = 2 * RUN_INPUT_BYTES  # the run's input tensor and its copy in the arena
    int8 = features * CLASSES
    # bias correction's statistic, taken in the same streamed pass: the running sums of the
    # corrected layer's input per reduction index (one f64 each)
    means = features * 8
    for rows, batches in [(16, 1000), (64, 125)]:
        r = measure(tmp_path, features, rows, batches)
        b = r["batch_bytes"]
        print(
            f"\ncalibration from a generator of {batches} batches of {b / MIB:.1f} MiB "
            f"({batches * b / (1 << 30):.1f} GiB streamed), model {r['model_bytes'] / MIB:.1f} MiB: peak resident "
            f"size {r['grew'] / MIB:.1f} MiB above the loaded model = {(r['grew'] - machinery) / MIB:.1f} MiB "
            f"beside the compiler's own {machinery / MIB:.1f} MiB; allowed: batch {b / MIB:.1f} + packed weights "
            f"{packed / MIB:.1f} + one run {one_run / MIB:.1f} + int8 weights {int8 / MIB:.1f} + input means "
            f"{means / MIB:.1f}"
        )
        assert r["grew"] <= machinery + b + packed + one_run + int8 + means, r
