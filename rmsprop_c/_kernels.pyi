"""Type stub of the compiled module rmsprop_c._kernels (checked by mypy.stubtest)."""

import threading
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

from rmsprop_c._rowgrad import RowGrad

SIMD_NAMES: tuple[str, ...]
GROUP_KEYS: tuple[str, ...]
STATE_KEYS: tuple[str, ...]
MAX_STEP: int

_FloatArray = npt.NDArray[np.floating[Any]]
# float32/float64, or bfloat16 (ml_dtypes) and float16 where low precision is allowed.
_Array = npt.NDArray[Any]

def simd_targets_built() -> tuple[str, ...]: ...
def simd_targets_supported() -> tuple[str, ...]: ...
def get_simd_target() -> str: ...
def set_simd_target(name: str | None) -> str: ...
def build_info() -> dict[str, Any]: ...
def openmp_enabled() -> bool: ...
def max_threads() -> int: ...
def cpu_count() -> int: ...
def forked_after_parallel() -> bool: ...
def fork_generation() -> int: ...
def threading_policy() -> dict[str, Any]: ...
def rmsprop_step(
    param: _Array,
    grad: _Array,
    square_avg: _Array,
    *,
    lr: float,
    alpha: float,
    eps: float,
    momentum: float = 0.0,
    centered: bool = False,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    amsgrad: bool = False,
    bias_correction: bool = False,
    eps_in_sqrt: bool = False,
    lr_in_momentum: bool = False,
    grad_scale: float = 1.0,
    clip_value: float | None = ...,
    step: int = 1,
    n_threads: int | None = None,
    momentum_buffer: _Array | None = None,
    grad_avg: _Array | None = None,
    max_square_avg: _Array | None = None,
    rounding: str = "nearest",
    seed: int = 0,
    tensor_index: int = 0,
    param_copy: _Array | None = None,
) -> None: ...
def global_grad_norm(
    grads: Sequence[_FloatArray],
    norm_type: float = 2,
    *,
    grad_scale: float = 1.0,
    clip_value: float | None = ...,
    n_threads: int | None = None,
) -> float: ...
def same_traffic_step(
    param: _Array,
    grad: _Array,
    square_avg: _Array,
    *,
    momentum_buffer: _Array | None = None,
    grad_avg: _Array | None = None,
    max_square_avg: _Array | None = None,
    n_threads: int | None = None,
    param_copy: _Array | None = None,
) -> None: ...

@disjoint_base
class MultiTensorStep:
    @property
    def params(self) -> list[_FloatArray]: ...
    def __init__(
        self,
        params: list[_FloatArray],
        group_of_param: list[int],
        states: list[dict[str, _FloatArray]],
        n_groups: int,
    ) -> None: ...
    def exclusive(self) -> threading.Lock: ...
    @property
    def total_elements(self) -> int: ...
    def get_steps(self) -> list[int]: ...
    def set_steps(self, steps: Sequence[int]) -> None: ...
    def get_tensor_steps(self) -> list[int]: ...
    def set_tensor_steps(self, steps: Sequence[int]) -> None: ...
    def set_rounding(self, rounding: str, seed: int) -> None: ...
    def threading(self) -> dict[str, Any]: ...
    def check_groups(self, param_groups: list[dict[str, Any]]) -> None: ...
    def validate(
        self,
        grads: Sequence[_FloatArray | RowGrad | None],
        param_groups: list[dict[str, Any]],
        duplicates: str = "sum",
    ) -> None: ...
    def step(
        self,
        grads: Sequence[_FloatArray | RowGrad | None],
        param_groups: list[dict[str, Any]],
        n_threads: int | None = None,
        skip_nonfinite: bool = False,
        max_grad_norm: float | None = None,
        norm_type: float = 2.0,
        duplicates: str = "sum",
    ) -> bool: ...
    def step_addresses(
        self,
        addresses: npt.ArrayLike,
        param_groups: list[dict[str, Any]],
        n_threads: int | None = None,
        skip_nonfinite: bool = False,
        max_grad_norm: float | None = None,
        norm_type: float = 2.0,
    ) -> bool: ...
    @property
    def last_grad_norm(self) -> float | None: ...

_IndexArray = npt.NDArray[np.signedinteger[Any]]

def rmsprop_step_rows(
    param: _FloatArray,
    indices: _IndexArray,
    grad_rows: _FloatArray,
    square_avg: _FloatArray,
    *,
    lr: float,
    alpha: float,
    eps: float,
    momentum: float = 0.0,
    centered: bool = False,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    amsgrad: bool = False,
    bias_correction: bool = False,
    eps_in_sqrt: bool = False,
    lr_in_momentum: bool = False,
    grad_scale: float = 1.0,
    clip_value: float | None = None,
    momentum_buffer: _FloatArray | None = None,
    grad_avg: _FloatArray | None = None,
    max_square_avg: _FloatArray | None = None,
    step: int = 1,
    duplicates: str = "sum",
    n_threads: int | None = None,
) -> None: ...
def same_traffic_step_rows(
    param: _FloatArray,
    indices: _IndexArray,
    grad_rows: _FloatArray,
    square_avg: _FloatArray,
    *,
    momentum_buffer: _FloatArray | None = None,
    grad_avg: _FloatArray | None = None,
    max_square_avg: _FloatArray | None = None,
    duplicates: str = "sum",
    n_threads: int | None = None,
) -> None: ...
