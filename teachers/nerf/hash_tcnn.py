"""tiny-cuda-nn's HashGrid encoding behind `HashGrid`'s interface (CUDA tensors only).

`HashGrid` keeps one table layout for every backend, (L, T, F); tiny-cuda-nn keeps a flat
parameter vector holding, level after level, the S_l rows each level uses (dense levels
fewer than T), F features per row. `pack` maps the first layout onto the second
(differentiably, so gradients reach the (L, T, F) table), `unpack` back. The encoding's
definition in hash_grid.py is tiny-cuda-nn's (scales, resolutions, row counts, primes,
wrap-around), so a table fitted on a GPU with this backend is read identically by the
torch and C++ paths on a CPU, and the other way round.

tiny-cuda-nn has no wheel: it is built from source against the local CUDA toolkit
(`pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch`).
Where it does not import (no CUDA, not installed) `available()` is False, `load_error()`
says why, and `HashGrid(backend="auto")` uses the other paths.

Written against tinycudann's torch bindings (`Encoding`, `modules._module_function`,
`_C.batch_size_granularity`); the comparison with the torch path
(tests/test_hash_tcnn.py) runs only where a GPU and tinycudann are present.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # hash_grid imports this module
    from .hash_grid import HashGridConfig

_lock = threading.Lock()
_tcnn: Any = None
_error: str | None = None
_tried = False
_encoders: dict[tuple[HashGridConfig, int], Any] = {}

FEATURES = (1, 2, 4, 8)
"""Features per level tiny-cuda-nn's grid is compiled for."""
DIMS = (2, 3, 4)
"""Input dimensions it is compiled for."""


def _import():
    global _tcnn, _error, _tried
    with _lock:
        if not _tried:
            _tried = True
            if not torch.cuda.is_available():
                _error = "no CUDA device (tiny-cuda-nn runs on CUDA only)"
            else:
                try:
                    import tinycudann
                    _tcnn = tinycudann
                except Exception as exc:  # ImportError, or EnvironmentError from its probe
                    _error = f"tinycudann does not import: {type(exc).__name__}: {exc}"
    return _tcnn


def available() -> bool:
    """True when tinycudann imports on a CUDA device."""
    return _import() is not None


def load_error() -> str | None:
    """Why tinycudann is not available (None when it is, or was not tried)."""
    return _error


def supports(x: torch.Tensor, table: torch.Tensor, config: HashGridConfig) -> bool:
    """Whether this backend handles these inputs: CUDA float32 tensors, d in (2, 3, 4),
    F in (1, 2, 4, 8)."""
    return (x.is_cuda and table.is_cuda and x.dtype == torch.float32
            and table.dtype == torch.float32 and config.input_dim in DIMS
            and config.features_per_level in FEATURES)


def encoding_config(config: HashGridConfig) -> dict[str, Any]:
    """tiny-cuda-nn's JSON configuration of the same encoding."""
    return {"otype": "HashGrid", "n_levels": config.levels,
            "n_features_per_level": config.features_per_level,
            "log2_hashmap_size": config.log2_table_size,
            "base_resolution": config.base_resolution,
            "per_level_scale": config.per_level_scale,
            "interpolation": "Linear", "hash": "CoherentPrime"}


def n_params(config: HashGridConfig) -> int:
    """Length of tiny-cuda-nn's parameter vector: sum_l S_l * F."""
    return int(config.level_sizes().sum()) * config.features_per_level


def pack(table: torch.Tensor, config: HashGridConfig) -> torch.Tensor:
    """Table (L, T, F) -> tiny-cuda-nn's parameters (sum_l S_l * F,), differentiable."""
    sizes = config.level_sizes()
    return torch.cat([table[level, :int(rows)].reshape(-1) for level, rows in enumerate(sizes)])


def unpack(params: torch.Tensor, config: HashGridConfig) -> torch.Tensor:
    """tiny-cuda-nn's parameters -> table (L, T, F), rows a level does not use zero."""
    if params.numel() != n_params(config):
        raise ValueError(f"tiny-cuda-nn parameters: {params.numel()} values, the config "
                         f"needs {n_params(config)}")
    table = params.new_zeros(config.levels, config.table_size, config.features_per_level)
    start = 0
    for level, rows in enumerate(config.level_sizes()):
        count = int(rows) * config.features_per_level
        table[level, :int(rows)] = params[start:start + count].reshape(int(rows), -1)
        start += count
    return table


def _encoder(config: HashGridConfig, device: torch.device):
    key = (config, device.index if device.index is not None else torch.cuda.current_device())
    with _lock:
        if key not in _encoders:
            with torch.cuda.device(key[1]):
                encoder = _tcnn.Encoding(config.input_dim, encoding_config(config),
                                         dtype=torch.float32)
            if encoder.params.numel() != n_params(config):  # the layout this module assumes
                raise RuntimeError(
                    f"tiny-cuda-nn's HashGrid holds {encoder.params.numel()} parameters for "
                    f"{encoding_config(config)}; distillprep's layout has {n_params(config)}: "
                    "this tinycudann version lays out its grid differently")
            _encoders[key] = encoder
        return _encoders[key]


def hash_encode_tcnn(x: torch.Tensor, table: torch.Tensor, config: HashGridConfig,
                     ) -> torch.Tensor:
    """`hash_encode` by tiny-cuda-nn: x (N, d) in [0, 1], tables (L, T, F) -> (N, L * F),
    differentiable in the table and in x."""
    if not available():
        raise RuntimeError(f"tiny-cuda-nn is not available: {load_error()}")
    if not supports(x, table, config):
        raise ValueError("tiny-cuda-nn needs CUDA float32 tensors, d in (2, 3, 4) and F in "
                         f"(1, 2, 4, 8); got {x.device}/{x.dtype}, {table.device}/"
                         f"{table.dtype}, d={config.input_dim}, F={config.features_per_level}")
    config.check_shapes(x, table)
    encoder = _encoder(config, x.device)
    n = x.shape[0]
    granularity = int(_tcnn.modules._C.batch_size_granularity())
    padded = -(-n // granularity) * granularity
    if padded != n:  # tiny-cuda-nn runs batches in multiples of its granularity
        x = torch.nn.functional.pad(x, (0, 0, 0, padded - n))
    out = _tcnn.modules._module_function.apply(
        encoder.native_tcnn_module, x.contiguous(), pack(table, config).contiguous(),
        encoder.loss_scale)
    return out[:n, :config.output_dim]
