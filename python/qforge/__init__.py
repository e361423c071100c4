"""qforge: compile trained models to INT8, FP16 and BF16, from Python.

The package mirrors the compiler's pipeline; every call goes through the same library as the
``qforge`` command line, with the command's defaults, so the same call gives the same numbers
as the same command::

    import numpy as np
    import qforge

    m = qforge.load("digits_cnn.onnx")                 # or bytes, an onnx.ModelProto, a .qir, a .qfa
    q = m.quantize(calib=np.load("digits_calib_x.npy"))  # static INT8, calibrated now
    exe = q.compile()                                  # the optimizer, then the JIT
    logits = exe.run(np.load("digits_test_x.npy"))     # NumPy in, NumPy out
    print(exe.bench(batch=[1, 8]).median_ms)
    q.export_onnx("digits_int8.onnx")                  # QDQ ONNX for other runtimes
    q.save("digits_int8.qfa")                          # an artifact: qforge.load() runs it as is

Objects, one per point of the pipeline:

* :func:`load` returns a :class:`Model` (``inputs``, ``outputs``, ``ir()``, ``summary()``,
  ``quantize()``, ``precision()``, ``sensitivity()``, ``compile()``);
* :meth:`Model.quantize` and :meth:`Model.precision` return a :class:`Staged` model: every stage
  up to the optimizer has run (calibration data is read there, once), and it keeps the compiler's
  state (``compile()``, ``export_onnx()``, ``save()``, ``report()``, ``ir()``, ``passes``);
* ``compile()`` returns an :class:`Executable` (``run()``/``__call__``, ``bench()``, ``save()``).

Calibration data (``calib=``) is a NumPy array (a model with one input), a dict of arrays by
input name, or any iterable of those (a PyTorch ``DataLoader``'s batches, a list, a generator).
Batches are streamed, never all held at once; an iterable is iterated afresh for each pass a stage
needs, so a one-shot iterator (a generator) serves one pass: plain static INT8 needs one, while
``min_sqnr``, ``smooth``, ``sensitivity()`` and the fp16 guards need more (pass a list or a
``DataLoader`` for those).

Every error is a :class:`qforge.Error` subclass carrying the CLI's one-line message.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union


class Error(Exception):
    """Base class of every error qforge raises; the message is the CLI's one-line message."""


class ModelError(Error):
    """The model cannot be loaded: not ONNX, an unsupported op, a graph that does not verify."""


class ArtifactError(ModelError):
    """A compiled artifact (``.qfa``) that cannot be read: corrupted, truncated, or written by a
    newer qforge."""


class FileError(Error, OSError):
    """A file that cannot be read or written (a bad path); the OS error is in the message."""


class InputError(Error, ValueError):
    """Inputs that do not fit the model: their count, names, dtype or shape."""


class CalibrationError(Error):
    """Calibration data that is missing, does not fit the model, holds NaN or infinity, or cannot
    be iterated again when a stage needs a second pass (a generator). An exception raised by the
    calibration iterable itself is this error's ``__cause__``."""


class OptionError(Error, ValueError):
    """An option value or combination the pipeline refuses (also qconfig and profile files, and
    an operation a compiled artifact cannot do, such as quantizing it again)."""


class LimitError(Error):
    """A tensor larger than the size limit (``max_tensor_bytes``, 2 GiB by default)."""


class CompileError(Error):
    """A stage of the pipeline, code generation or a run failed."""


class InternalError(Error):
    """A bug in qforge (a Rust panic caught at the boundary). Please report it."""


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: its name, NumPy dtype name and shape (symbolic dims, such as a
    dynamic batch ``"N"``, as strings)."""

    name: str
    dtype: str
    shape: Tuple[Union[int, str], ...]


@dataclass(frozen=True)
class BenchBatch:
    """One batch size of a bench sweep (``qforge bench --json``'s ``sweep`` entries)."""

    batch: int
    median_ms: float
    p99_ms: float
    min_ms: float
    throughput: float
    arena_bytes: Optional[int] = None
    intermediate_bytes: Optional[int] = None
    codegen_ms: Optional[float] = None


@dataclass(frozen=True)
class KernelTime:
    """One step of the JIT program in a per-kernel profile (``profile_kernels=True``)."""

    name: str
    what: str
    ms: float
    share: float
    gmacs: Optional[float] = None


@dataclass(frozen=True)
class BenchReport:
    """What :meth:`Executable.bench` measured, with the keys of ``qforge bench --json``: the first
    batch size's ``median_ms``, ``p99_ms`` and ``throughput`` at the top level, every batch size in
    ``sweep``, ``best_batch`` (the best throughput), the microkernels, the ops the JIT hands to
    the interpreter, and with ``profile_kernels`` the time per kernel."""

    model: str
    engine: str
    threads: int
    batch: int
    median_ms: float
    p99_ms: float
    throughput: float
    compile_ms: float
    best_batch: int
    macs: int
    gmacs_per_s: float
    kernels: List[Tuple[str, str]] = field(default_factory=list)
    sweep: List[BenchBatch] = field(default_factory=list)
    host_ops: List[Tuple[str, int]] = field(default_factory=list)
    profile: List[KernelTime] = field(default_factory=list)

    @classmethod
    def _from_dict(cls, d: Dict[str, Any]) -> "BenchReport":
        d = dict(d)
        d["kernels"] = [tuple(k) for k in d.get("kernels", [])]
        d["host_ops"] = [tuple(h) for h in d.get("host_ops", [])]
        d["sweep"] = [BenchBatch(**b) for b in d.get("sweep", [])]
        d["profile"] = [KernelTime(**k) for k in d.get("profile", [])]
        return cls(**d)

    def to_dict(self) -> Dict[str, Any]:
        """The report as ``qforge bench --json`` prints it."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SensitivityRow:
    """One quantizable layer quantized alone (the rest float): the output's SQNR against the float
    model in dB, and top-1 accuracy when labels were given. ``origins`` are the ONNX nodes the
    layer stands for (``qforge sensitivity --json``'s ``from``)."""

    node: str
    op: str
    sqnr_db: float
    top1: Optional[float] = None
    origins: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class Sensitivity:
    """What :meth:`Model.sensitivity` measured: ``layers`` least robust first, every layer
    quantized (``all_int8_sqnr_db``, ``all_int8_top1``), the float model's top-1; with
    ``max_accuracy_drop`` or ``min_sqnr``, the layers kept float, the top-1 or SQNR that reaches,
    and the qconfig text that keeps them float (pass it to ``quantize(qconfig=path)`` once
    written to a file)."""

    layers: List[SensitivityRow]
    all_int8_sqnr_db: float
    all_int8_top1: Optional[float]
    fp32_top1: Optional[float]
    samples: int
    kept_float: Optional[List[str]] = None
    reached: Optional[float] = None
    qconfig: Optional[str] = None

    @classmethod
    def _from_dict(cls, d: Dict[str, Any]) -> "Sensitivity":
        d = dict(d)
        d["layers"] = [
            SensitivityRow(
                node=r["node"], op=r["op"], sqnr_db=r["sqnr_db"], top1=r.get("top1"), origins=list(r.get("from", []))
            )
            for r in d["layers"]
        ]
        return cls(**d)


from ._qforge import DEFAULT_MAX_TENSOR_BYTES, Executable, Model, Staged, __version__  # noqa: E402
from ._qforge import load as _load  # noqa: E402


def load(source: Any, *, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> Model:
    """Load a model.

    ``source`` is a path (``str`` or ``os.PathLike``) to an ONNX model (``.onnx``), an IR text
    file (``.qir``) or a compiled artifact (``.qfa``); or the bytes of an ONNX model or an
    artifact; or an ``onnx.ModelProto`` (loaded from ``SerializeToString()``).

    An artifact loads as an already compiled model: ``compile()`` runs its stored graph as is
    (only ``threads``, ``engine`` and ``kernels`` apply), and ``quantize()``/``precision()`` are
    refused. ``max_tensor_bytes`` bounds every tensor the importer (and later every stage and
    engine) may create, as ``--max-tensor-bytes`` does.

    Raises :class:`FileError` for a path that cannot be read, :class:`ModelError` for a model that
    cannot be imported, :class:`ArtifactError` for a damaged artifact, :class:`LimitError` for a
    tensor over the limit.

    >>> m = qforge.load("digits_cnn.onnx")
    >>> m.inputs
    [TensorInfo(name='input', dtype='float32', shape=('N', 1, 8, 8))]
    >>> import onnx; m = qforge.load(onnx.load("digits_cnn.onnx"))
    """
    return _load(source, max_tensor_bytes=max_tensor_bytes)


__all__ = [
    "load",
    "Model",
    "Staged",
    "Executable",
    "TensorInfo",
    "BenchReport",
    "BenchBatch",
    "KernelTime",
    "Sensitivity",
    "SensitivityRow",
    "Error",
    "ModelError",
    "ArtifactError",
    "FileError",
    "InputError",
    "CalibrationError",
    "OptionError",
    "LimitError",
    "CompileError",
    "InternalError",
    "DEFAULT_MAX_TENSOR_BYTES",
    "__version__",
]
