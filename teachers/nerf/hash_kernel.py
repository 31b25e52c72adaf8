"""The fused C++ hash encoding (hash_kernel.cpp) for CPU tensors: build, load, autograd.

The extension is compiled on first use with `torch.utils.cpp_extension.load` (ninja and
the system C++ compiler, `-O3` for any x86_64 machine) into
`$DISTILLPREP_EXT_DIR/hash_kernel`, by default
`~/.cache/distillprep/torch_extensions/<torch version>/hash_kernel`; later processes load
the cached library in well under a second. `make venv` builds it at install time with
`python -m distillprep.teachers.nerf.hash_kernel`. A failed build crashes nothing:
`available()` is False, `load_error()` says why, and `HashGrid` keeps the torch path.

`hash_encode_cpp` computes exactly `hash_encode`'s definition (same entries selected, values
equal to float rounding), with gradients to the table and to x.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:  # hash_grid imports this module
    from .hash_grid import HashGridConfig

_SOURCE = Path(__file__).with_name("hash_kernel.cpp")
_NAME = "distillprep_hash_kernel"
_CFLAGS = ["-O3", "-ffp-contract=off", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_module = None
_error: str | None = None
_tried = False


def build_directory() -> Path:
    """Where the extension is built and cached."""
    root = os.environ.get("DISTILLPREP_EXT_DIR")
    if root:
        base = Path(root)
    else:
        base = Path.home() / ".cache" / "distillprep" / "torch_extensions" / torch.__version__
    return base / "hash_kernel"


def _ninja_dir() -> str:
    try:
        import ninja

        return ninja.BIN_DIR
    except (ImportError, AttributeError):
        return os.path.dirname(sys.executable)


def _import_load():
    """torch.utils.cpp_extension.load, without the import's warning that a CPU-only
    machine has no CUDA runtime (irrelevant to a CPU extension)."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load
    finally:
        logger.setLevel(level)
    return load


def _load(verbose: bool = False):
    """Build (if needed) and import the extension once per process; never raises."""
    global _module, _error, _tried
    with _lock:
        if _tried:
            return _module
        _tried = True
        path = os.environ.get("PATH")
        try:
            load = _import_load()
            directory = build_directory()
            directory.mkdir(parents=True, exist_ok=True)
            if not any(directory.glob(f"{_NAME}*.so")):
                print(f"distillprep: building the C++ hash kernel in {directory} (once, about "
                      "a minute)", file=sys.stderr, flush=True)
            # torch looks for `ninja` on PATH; the pip-installed one sits in the venv's bin,
            # which is not on PATH when the venv's python runs without activation.
            os.environ["PATH"] = os.pathsep.join(p for p in (_ninja_dir(), path) if p)
            _module = load(name=_NAME, sources=[str(_SOURCE)], extra_cflags=_CFLAGS,
                           extra_ldflags=_LDFLAGS, build_directory=str(directory),
                           verbose=verbose)
        except Exception as exc:  # any build or import failure: the torch path remains
            _module, _error = None, f"{type(exc).__name__}: {exc}"
        finally:
            if path is None:
                os.environ.pop("PATH", None)
            else:
                os.environ["PATH"] = path
        return _module


def available() -> bool:
    """True when the extension is built and loaded (builds it on the first call)."""
    return _load() is not None


def load_error() -> str | None:
    """Why the extension could not be built or loaded, None if it was (or was not tried)."""
    return _error


@dataclass(frozen=True)
class _Grid:
    scales: list[float]
    sides: list[int]
    rows: list[int]
    dense_count: int


@functools.lru_cache(maxsize=64)
def _grid(config: HashGridConfig) -> _Grid:
    """Per-level constants, the config's as `hash_encode` uses them (s_l, res_l, S_l)."""
    scales = [float(s) for s in config.scales()]
    dense = [bool(d) for d in config.dense_levels()]
    dense_count = sum(dense)
    if not all(dense[:dense_count]):
        raise ValueError("dense levels must precede hashed ones")
    if config.log2_table_size > 32:
        raise ValueError("the C++ hash kernel needs a table of at most 2^32 entries")
    return _Grid(scales, [int(r) for r in config.resolutions()],
                 [int(r) for r in config.level_sizes()], dense_count)


def supports(x: torch.Tensor, table: torch.Tensor, config: HashGridConfig) -> bool:
    """Whether `hash_encode_cpp` handles these inputs (CPU, float32/64, d in {3, 4})."""
    return (x.device.type == "cpu" and table.device.type == "cpu"
            and x.dtype == table.dtype and x.dtype in (torch.float32, torch.float64)
            and config.input_dim in (3, 4) and config.log2_table_size <= 32)


class _HashEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, grid):
        ctx.grid = grid
        ctx.save_for_backward(x, table)
        return _module.forward(x, table, grid.scales, grid.sides, grid.rows, grid.dense_count)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, table = ctx.saved_tensors
        grid = ctx.grid
        need_x, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x, grad_table = _module.backward(grad.contiguous(), x, table, grid.scales,
                                              grid.sides, grid.rows, grid.dense_count, need_x,
                                              need_table)
        return (grad_x if need_x else None, grad_table if need_table else None, None)


def hash_encode_cpp(x: torch.Tensor, table: torch.Tensor, config: HashGridConfig,
                    ) -> torch.Tensor:
    """`hash_encode` by the C++ kernel: x (N, d) in [0, 1], tables (L, T, F) -> (N, L * F),
    differentiable in the table and in x (not twice)."""
    if not available():
        raise RuntimeError(f"the C++ hash kernel is not available: {load_error()}")
    if not supports(x, table, config):
        raise ValueError("the C++ hash kernel needs CPU float32/float64 tensors of one dtype "
                         f"and d in (3, 4); got {x.device}/{x.dtype}, {table.device}/"
                         f"{table.dtype}, d={config.input_dim}")
    config.check_shapes(x, table)
    return _HashEncode.apply(x.contiguous(), table.contiguous(), _grid(config))


def main() -> int:
    """Build or load the extension and say which; exit 0 either way (torch path remains)."""
    directory = build_directory()
    before = {p: p.stat().st_mtime_ns for p in directory.glob(f"{_NAME}*.so")}
    if _load() is None:
        print(f"hash_kernel: failed, the torch path will be used ({load_error()})")
        return 0
    after = {p: p.stat().st_mtime_ns for p in directory.glob(f"{_NAME}*.so")}
    state = "cached" if after and after == before else "built"
    print(f"hash_kernel: {state} in {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
