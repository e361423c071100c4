"""Executable: run and __call__, outputs NumPy owns, bench's dataclass, two Python threads on one
executable (the GIL released while it runs), and what the Python layer adds to a run."""

import threading
import time

import numpy as np
import pytest

import qforge
from conftest import top1


def test_run_and_call_agree(int8_exe, test_x, test_y):
    a = int8_exe.run(test_x)
    b = int8_exe(test_x)
    assert a.dtype == np.float32 and a.shape == (597, 10)
    assert np.array_equal(a, b)
    # the output owns its memory: writable, and unaffected by the next run
    assert a.flags.owndata or a.base is not None
    a[:] = 0
    assert np.array_equal(int8_exe(test_x), b)
    assert top1(b, test_y) == pytest.approx(594 / 597)


def test_inputs_in_any_layout(int8_exe, test_x):
    ref = int8_exe.run(test_x[:7])
    fortran = np.asfortranarray(test_x[:7])
    strided = test_x[:14:2]
    assert not fortran.flags.c_contiguous and not strided.flags.c_contiguous
    assert np.array_equal(int8_exe.run(fortran), ref)
    assert np.array_equal(int8_exe.run(strided), int8_exe.run(np.ascontiguousarray(strided)))
    # array-likes go through numpy.asarray
    assert np.array_equal(int8_exe.run(test_x[:1].tolist() and np.asarray(test_x[:1].tolist(), np.float32)), ref[:1])


def test_bench_returns_a_dataclass(int8_exe):
    r = int8_exe.bench(batch=[1, 4], iters=5, warmup=1)
    assert isinstance(r, qforge.BenchReport)
    assert r.batch == 1 and r.threads == 1 and r.engine == "jit"
    assert [b.batch for b in r.sweep] == [1, 4] and all(isinstance(b, qforge.BenchBatch) for b in r.sweep)
    assert 0 < r.median_ms <= r.p99_ms and r.best_batch in (1, 4)
    assert r.to_dict()["median_ms"] == r.median_ms
    p = int8_exe.bench(iters=3, warmup=0, profile_kernels=True)
    assert p.profile and all(isinstance(k, qforge.KernelTime) for k in p.profile)


def test_two_threads_run_one_executable(digits, test_x):
    """Two Python threads call one executable at once; each gets exactly the single-threaded
    result, and while one thread is inside a run the other Python thread keeps running (the GIL
    is released)."""
    exe = digits.compile()
    ref = exe.run(test_x)
    errors, results = [], {}

    def worker(k):
        try:
            for i in range(40):
                lo = (k * 37 + i * 13) % 500
                y = exe(test_x[lo : lo + 64])
                if not np.array_equal(y, ref[lo : lo + 64]):
                    errors.append((k, i))
            results[k] = True
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == {0: True, 1: True}


def test_the_gil_is_released_while_running(digits):
    """A batch that takes a while: a Python thread counting meanwhile makes progress."""
    exe = digits.compile()
    x = np.random.default_rng(0).random((20000, 1, 8, 8), dtype=np.float32)
    exe.run(x[:10])
    ticks = []
    stop = threading.Event()

    def counter():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=counter)
    t0 = time.perf_counter()
    t.start()
    exe.run(x)
    t1 = time.perf_counter()
    stop.set()
    t.join()
    during = [s for s in ticks if t0 < s < t1]
    assert t1 - t0 > 0.02, "the run was too short to tell"
    assert len(during) >= 5, f"{len(during)} ticks during a {1e3 * (t1 - t0):.0f} ms run"


def test_run_overhead_against_the_rust_api(digits_path):
    """What exe.run(x) adds to the Rust API's run on the digits model at batch 1, measured in the
    same process: the Rust loop times `qforge::Executable::run` on bound inputs, the Python loop
    times exe.run(x) (binding, the GIL release, the output array). Budget: 10 microseconds at the
    median."""
    exe = qforge.load(digits_path).compile()
    x = np.load(digits_path.parent / "digits_test_x.npy")[:1]
    exe.run(x)
    rust, py = [], []
    for _ in range(5):  # interleaved rounds, so a noisy neighbour hits both sides alike
        rust += exe._rust_run_times(x, 400)
        for _ in range(400):
            t0 = time.perf_counter()
            exe.run(x)
            py.append(time.perf_counter() - t0)
    r, p = np.median(rust) * 1e6, np.median(py) * 1e6
    print(f"\ndigits fp32 batch 1: Rust API run {r:.2f} us, Python exe.run {p:.2f} us, overhead {p - r:.2f} us (median of {len(py)})")
    assert p - r < 10.0


def test_bench_takes_every_input_by_name():
    """A model with two integer inputs (the BERT fixture): bench takes them as run does, by name."""
    from conftest import REPO

    t = REPO / "tests" / "fixtures" / "transformers"
    exe = qforge.load(t / "bert.onnx").compile()
    feeds = {"input_ids": np.load(t / "bert_test_ids.npy"), "attention_mask": np.load(t / "bert_test_mask.npy")}
    r = exe.bench(batch=[1, 4], iters=2, warmup=0, input=feeds)
    assert [b.batch for b in r.sweep] == [1, 4] and r.median_ms > 0
    assert not r.host_ops
    with pytest.raises(qforge.InputError, match="attention_mask"):
        exe.bench(iters=1, warmup=0, input={"input_ids": feeds["input_ids"]})
