"""Type stubs of the native module ``qforge._qforge`` (the classes ``qforge`` re-exports)."""

import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

from . import BenchReport, Sensitivity, TensorInfo

__version__: str
DEFAULT_MAX_TENSOR_BYTES: int

PathLike = Union[str, "os.PathLike[str]"]
ArrayLike = npt.ArrayLike
#: One batch: an array (a model with one input), a sequence of arrays in input order, or a dict by name.
Batch = Union[ArrayLike, Sequence[ArrayLike], Mapping[str, ArrayLike]]
#: Calibration data: an array, a dict of arrays by input name, or an iterable of batches.
CalibData = Union[ArrayLike, Mapping[str, ArrayLike], Iterable[Batch]]
#: Inputs of a run: one array, a list of arrays in input order, or a dict by input name.
Inputs = Union[np.ndarray, Sequence[np.ndarray], Mapping[str, np.ndarray]]

def load(source: Union[PathLike, bytes, bytearray, memoryview, Any], *, max_tensor_bytes: int = ...) -> Model: ...

class Model:
    @property
    def name(self) -> str: ...
    @property
    def path(self) -> Optional[str]: ...
    @property
    def inputs(self) -> List[TensorInfo]: ...
    @property
    def outputs(self) -> List[TensorInfo]: ...
    @property
    def compiled(self) -> bool: ...
    @property
    def artifact(self) -> Optional[Dict[str, Any]]: ...
    def ir(self, full: bool = False) -> str: ...
    def summary(self) -> Dict[str, Any]: ...
    def quantize(
        self,
        calib: Optional[CalibData] = None,
        *,
        mode: str = "int8",
        method: Optional[str] = None,
        per_channel: Optional[bool] = None,
        symmetric: Optional[bool] = None,
        qconfig: Optional[Union[PathLike, Dict[str, Any]]] = None,
        profile: Optional[Union[str, PathLike]] = None,
        calib_batch: int = 50,
        min_sqnr: Optional[float] = None,
        smooth: Optional[float] = None,
        opt_level: int = 2,
    ) -> Staged: ...
    def precision(
        self,
        mode: str,
        *,
        profile: Optional[Union[str, PathLike]] = None,
        calib: Optional[CalibData] = None,
        min_sqnr: Optional[float] = None,
        precision_config: Optional[PathLike] = None,
        calib_batch: int = 50,
        opt_level: int = 2,
    ) -> Staged: ...
    def compile(
        self,
        *,
        threads: int = 1,
        engine: str = "jit",
        kernels: str = "native",
        opt_level: int = 2,
        profile: Optional[Union[str, PathLike]] = None,
    ) -> Executable: ...
    def sensitivity(
        self,
        calib: CalibData,
        *,
        labels: Optional[ArrayLike] = None,
        input: Optional[Union[ArrayLike, Mapping[str, ArrayLike]]] = None,
        batch: int = 64,
        method: Optional[str] = None,
        per_channel: Optional[bool] = None,
        symmetric: Optional[bool] = None,
        qconfig: Optional[Union[PathLike, Dict[str, Any]]] = None,
        profile: Optional[Union[str, PathLike]] = None,
        calib_batch: int = 50,
        max_accuracy_drop: Optional[float] = None,
        min_sqnr: Optional[float] = None,
        smooth: Optional[float] = None,
    ) -> Sensitivity: ...

class Staged:
    @property
    def inputs(self) -> List[TensorInfo]: ...
    @property
    def outputs(self) -> List[TensorInfo]: ...
    @property
    def mode(self) -> str: ...
    @property
    def stages(self) -> List[str]: ...
    @property
    def passes(self) -> List[Dict[str, Any]]: ...
    @property
    def warnings(self) -> List[str]: ...
    def ir(self, full: bool = False) -> str: ...
    def summary(self) -> Dict[str, Any]: ...
    def compile(self, *, threads: int = 1, engine: str = "jit", kernels: str = "native") -> Executable: ...
    def export_onnx(self, path: Optional[PathLike] = None) -> Optional[bytes]: ...
    def save(self, path: PathLike) -> None: ...
    def report(
        self,
        path: PathLike,
        *,
        calib: Optional[CalibData] = None,
        input: Optional[ArrayLike] = None,
        labels: Optional[ArrayLike] = None,
        sensitivity_samples: int = 100,
        latency_iters: int = 20,
        batch: int = 64,
    ) -> Dict[str, Any]: ...

class Executable:
    @property
    def inputs(self) -> List[TensorInfo]: ...
    @property
    def outputs(self) -> List[TensorInfo]: ...
    @property
    def engine(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @property
    def compile_ms(self) -> float: ...
    def run(self, inputs: Inputs) -> Union[np.ndarray, List[np.ndarray]]: ...
    def __call__(self, inputs: Inputs) -> Union[np.ndarray, List[np.ndarray]]: ...
    def ir(self, full: bool = False) -> str: ...
    def summary(self) -> Dict[str, Any]: ...
    def bench(
        self,
        batch: Optional[Union[int, Sequence[int]]] = None,
        *,
        iters: int = 30,
        warmup: int = 5,
        input: Optional[Inputs] = None,
        profile_kernels: bool = False,
    ) -> BenchReport: ...
    def save(self, path: PathLike) -> None: ...
    # the Rust API's time per run in seconds, for measuring the Python layer's overhead
    def _rust_run_times(self, inputs: Inputs, iters: int = 1000) -> List[float]: ...
