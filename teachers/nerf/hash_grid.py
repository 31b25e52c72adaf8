"""Multi-resolution hash encoding (Instant-NGP), as EmerNeRF's fields use it.

`hash_encode` is the vectorised torch path: all levels at once, a Python loop only over
the 2^d cell corners, and a custom backward that scatters table gradients with one
`index_add_` (torch's own backward of the gather was several times slower). Beside it,
`_hash_encode_reference` is the plainly written numpy definition the tests compare
values and gradients against, and `hash_encode_naive` a per-level torch loop kept as the
benchmark's baseline. `HashGrid.backend` names the implementation that runs: `cpp`, the
fused C++/OpenMP kernel of hash_kernel.py (CPU tensors), `tcnn`, tiny-cuda-nn's
HashGrid encoding (CUDA tensors, hash_tcnn.py), or `torch`, the path above.

Definition, tiny-cuda-nn's exactly (so a table fitted by one backend is read the same by
every other): inputs x (N, d) in [0, 1]; level l has the float32 scale
s_l = 2^(l * log2 b) * base - 1, b the per-level growth (max / base)^(1 / (levels - 1)),
and res_l = ceil(s_l) + 1 grid vertices per side; the point sits at p = x * s_l + 0.5 in
grid units, its cell corner at floor(p). A level with res_l^d <= T entries is dense: it
uses the first S_l = min(res_l^d rounded up to a multiple of 8, T) rows of its table,
corner c at (sum_i c_i * res_l^i) mod S_l; the others hash corner c to
XOR_i(c_i * prime_i) mod T (uint32 products) with primes (1, 2654435761, 805459861,
3674653429). Features are d-linearly interpolated between the 2^d corners.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import hash_kernel, hash_tcnn

PRIMES = (1, 2654435761, 805459861, 3674653429)


@dataclass(frozen=True)
class HashGridConfig:
    """One hash grid (EmerNeRF static: 10 levels x 4 features, 16 -> 8192, 2^20)."""

    input_dim: int = 3
    """d: 3 for space, 4 for space-time."""
    levels: int = 16
    """Number of resolution levels L."""
    features_per_level: int = 2
    """Features F stored per table entry."""
    log2_table_size: int = 19
    """log2 of the entries T per level."""
    base_resolution: int = 16
    """Coarsest grid resolution."""
    max_resolution: int = 2048
    """Finest grid resolution."""

    @property
    def table_size(self) -> int:
        return 1 << self.log2_table_size

    @property
    def output_dim(self) -> int:
        return self.levels * self.features_per_level

    @property
    def per_level_scale(self) -> float:
        """b, the resolution growth from one level to the next."""
        if self.levels == 1:
            return 1.0
        return math.exp((math.log(self.max_resolution) - math.log(self.base_resolution))
                        / (self.levels - 1))

    def scales(self) -> np.ndarray:
        """(L,) s_l of every level, computed in float32 as tiny-cuda-nn does (returned as
        float64 holding those float32 values)."""
        log2_b = np.log2(np.float32(self.per_level_scale))
        levels = np.arange(self.levels, dtype=np.float32)
        s = np.exp2(levels * log2_b) * np.float32(self.base_resolution) - np.float32(1)
        return s.astype(np.float64)

    def resolutions(self) -> np.ndarray:
        """(L,) int64 res_l = ceil(s_l) + 1, grid vertices per side."""
        return np.ceil(self.scales()).astype(np.int64) + 1

    def level_sizes(self) -> np.ndarray:
        """(L,) int64 S_l, the table rows level l uses: res_l^d rounded up to a multiple of
        8, at most T (tiny-cuda-nn's parameter layout)."""
        sizes = [min(-(-int(r) ** self.input_dim // 8) * 8, self.table_size)
                 for r in self.resolutions()]
        return np.array(sizes, dtype=np.int64)

    def check_shapes(self, x: torch.Tensor, table: torch.Tensor) -> None:
        """Raise ValueError unless x is (N, d) and table (L, T, F) of this grid."""
        if x.dim() != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"x must be (N, {self.input_dim}), got {tuple(x.shape)}")
        want = (self.levels, self.table_size, self.features_per_level)
        if tuple(table.shape) != want:
            raise ValueError(f"table must be {want}, got {tuple(table.shape)}")

    def dense_levels(self) -> np.ndarray:
        """(L,) bool: levels small enough to index densely (no hashing)."""
        return np.array([int(r) ** self.input_dim <= self.table_size
                         for r in self.resolutions()])


def _corner_offsets(dim: int) -> np.ndarray:
    """(2^d, d) 0/1 offsets of a cell's corners, corner c has bit i = offset along i."""
    return np.array([[(c >> i) & 1 for i in range(dim)] for c in range(1 << dim)])


def _level_indices(corner: torch.Tensor, config: HashGridConfig, dense_count: int,
                   res: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Table index (N, L) int64 of integer corners (N, L, d) int64: the first
    `dense_count` levels (the coarse ones) indexed densely modulo their S_l rows, the
    others hashed modulo T, each level computing only its own kind (int64 products of
    corners < 2^15 and 32-bit primes cannot overflow, and `& (T - 1)` keeps only bits the
    uint32 products share; int32 arithmetic measured slower here)."""
    coarse, fine = corner[:, :dense_count], corner[:, dense_count:]
    strided = torch.zeros_like(coarse[..., 0])
    stride = torch.ones_like(res[:dense_count])
    hashed = torch.zeros_like(fine[..., 0])
    for i in range(config.input_dim):
        strided += coarse[..., i] * stride
        stride = stride * res[:dense_count]
        hashed ^= fine[..., i] * PRIMES[i]
    # & 0xFFFFFFFF: the uint32 value tcnn indexes with, also for corners outside [0, 1]
    strided = (strided & 0xFFFFFFFF) % sizes[:dense_count]
    return torch.cat([strided, hashed & (config.table_size - 1)], dim=1)


def hash_encode(x: torch.Tensor, table: torch.Tensor, config: HashGridConfig) -> torch.Tensor:
    """Encode points x (N, d) in [0, 1] with tables (L, T, F); returns (N, L * F).

    Gradients flow to the table (scattered with one index_add_) and to x.
    """
    n, dim = x.shape
    levels, size, features = table.shape
    scales = torch.as_tensor(config.scales(), dtype=x.dtype, device=x.device)
    dense = config.dense_levels()
    dense_count = int(dense.sum())
    if not np.all(dense[:dense_count]):  # resolutions grow, so dense levels come first
        raise ValueError("dense levels must precede hashed ones")
    res = torch.as_tensor(config.resolutions(), device=x.device)
    sizes = torch.as_tensor(config.level_sizes(), device=x.device)
    pos = x[:, None, :] * scales[None, :, None] + 0.5  # (N, L, d)
    base = torch.floor(pos)
    frac = pos - base
    base = base.to(torch.int64)
    offsets = torch.as_tensor(_corner_offsets(dim), dtype=torch.int64, device=x.device)
    index, weight = [], []
    for corner in offsets:
        index.append(_level_indices(base + corner, config, dense_count, res, sizes))
        w = torch.where(corner.bool(), frac, 1.0 - frac)
        weight.append(w.prod(dim=-1))
    level_base = torch.arange(levels, device=x.device)[None, :, None] * size
    index = torch.stack(index, dim=-1) + level_base  # (N, L, C) into the flat table
    weight = torch.stack(weight, dim=-1)  # (N, L, C), differentiable in x
    feats = _Gather.apply(table.reshape(levels * size, features), index, weight)
    return feats.reshape(n, levels * features)


class _Gather(torch.autograd.Function):
    """features (N, L, F) = sum_c weight[n, l, c] * table_flat[index[n, l, c]], with a
    scatter backward for the table and the plain gradient for the weights."""

    @staticmethod
    def forward(ctx, table_flat, index, weight):
        ctx.save_for_backward(table_flat, index, weight)
        return torch.einsum("nlcf,nlc->nlf", table_flat[index], weight)

    @staticmethod
    def backward(ctx, grad):
        table_flat, index, weight = ctx.saved_tensors
        grad_table = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_table = torch.zeros_like(table_flat)
            contrib = weight[..., None] * grad[:, :, None, :]
            grad_table.index_add_(0, index.reshape(-1), contrib.reshape(-1, table_flat.shape[1]))
        if ctx.needs_input_grad[2]:
            grad_weight = torch.einsum("nlcf,nlf->nlc", table_flat[index], grad)
        return grad_table, None, grad_weight


def hash_encode_naive(x: torch.Tensor, table: torch.Tensor, config: HashGridConfig,
                      ) -> torch.Tensor:
    """The same encoding with a Python loop per level and torch's own autograd: the
    benchmark's baseline."""
    outputs = []
    scales = config.scales()
    dense = config.dense_levels()
    resolutions, sizes = config.resolutions(), config.level_sizes()
    offsets = _corner_offsets(x.shape[1])
    for level in range(config.levels):
        pos = x * float(scales[level]) + 0.5
        base = torch.floor(pos)
        frac = pos - base
        base = base.to(torch.int64)
        res, size = int(resolutions[level]), int(sizes[level])
        feats = 0.0
        for corner in offsets:
            c = base + torch.as_tensor(corner, device=x.device)
            if dense[level]:
                idx = (sum(c[:, i] * res**i for i in range(x.shape[1])) & 0xFFFFFFFF) % size
            else:
                idx = torch.zeros_like(c[:, 0])
                for i in range(x.shape[1]):
                    idx = idx ^ (c[:, i] * PRIMES[i])
                idx = idx & (config.table_size - 1)
            w = torch.ones_like(x[:, 0])
            for i in range(x.shape[1]):
                w = w * (frac[:, i] if corner[i] else 1.0 - frac[:, i])
            feats = feats + w[:, None] * table[level][idx]
        outputs.append(feats)
    return torch.cat(outputs, dim=1)


def _hash_encode_reference(x: np.ndarray, table: np.ndarray, config: HashGridConfig,
                           ) -> np.ndarray:
    """Plain numpy definition, one point, level and corner at a time (tests only)."""
    n, dim = x.shape
    out = np.zeros((n, config.levels * config.features_per_level))
    scales = config.scales()
    for p in range(n):
        for level in range(config.levels):
            res = int(np.ceil(scales[level])) + 1
            dense = res**dim <= config.table_size
            rows = min(-(-res**dim // 8) * 8, config.table_size)
            pos = x[p] * scales[level] + 0.5
            base = np.floor(pos).astype(np.int64)
            frac = pos - base
            acc = np.zeros(config.features_per_level)
            for corner in _corner_offsets(dim):
                c = base + corner
                if dense:
                    idx = (sum(int(c[i]) * res**i for i in range(dim)) & 0xFFFFFFFF) % rows
                else:
                    idx = 0
                    for i in range(dim):
                        idx ^= (int(c[i]) * PRIMES[i]) & 0xFFFFFFFF
                    idx %= config.table_size
                w = np.prod([frac[i] if corner[i] else 1 - frac[i] for i in range(dim)])
                acc += w * table[level, idx]
            f = config.features_per_level
            out[p, level * f:(level + 1) * f] = acc
    return out


class HashGrid(torch.nn.Module):
    """A trainable hash grid: tables (L, T, F) initialised uniformly in +-1e-4.

    `backend` is "auto" (tiny-cuda-nn for CUDA tensors it supports when it imports, the
    C++ kernel for CPU tensors it supports when it built, else torch; resolved again at
    every call, so moving the module to another device switches), "tcnn", "cpp" or
    "torch"; `self.backend` records the one used last. The table layout is the same for
    all of them, so checkpoints move freely between backends and devices.
    """

    BACKENDS = ("auto", "tcnn", "cpp", "torch")

    def __init__(self, config: HashGridConfig, seed: int = 0, backend: str = "auto"):
        super().__init__()
        if backend not in self.BACKENDS:
            raise ValueError(f"unknown hash grid backend {backend!r}; choose one of "
                             f"{', '.join(self.BACKENDS)}")
        if backend == "tcnn" and not hash_tcnn.available():
            raise RuntimeError(f"hash grid backend 'tcnn': {hash_tcnn.load_error()}")
        if backend == "cpp" and not hash_kernel.available():
            raise RuntimeError(f"the C++ hash kernel is not available: "
                               f"{hash_kernel.load_error()}")
        self.config = config
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(
            (torch.rand(config.levels, config.table_size, config.features_per_level,
                        generator=generator) * 2 - 1) * 1e-4)
        self.requested_backend = backend
        self.backend = backend if backend != "auto" else self._resolve(
            torch.empty(0, config.input_dim, dtype=self.table.dtype))

    def _resolve(self, x: torch.Tensor) -> str:
        """The backend for x: the requested one (its function refuses inputs it does not
        handle), or for "auto" the fastest that handles x."""
        if self.requested_backend != "auto":
            return self.requested_backend
        if x.is_cuda:
            tcnn = hash_tcnn.supports(x, self.table, self.config) and hash_tcnn.available()
            return "tcnn" if tcnn else "torch"
        usable = hash_kernel.supports(x, self.table, self.config)
        return "cpp" if usable and hash_kernel.available() else "torch"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, d) in [0, 1] -> (N, L * F)."""
        self.backend = self._resolve(x)
        if self.backend == "tcnn":
            return hash_tcnn.hash_encode_tcnn(x, self.table, self.config)
        if self.backend == "cpp":
            return hash_kernel.hash_encode_cpp(x, self.table, self.config)
        return hash_encode(x, self.table, self.config)
