"""Sparse hierarchical voxels over the contracted cube [-1, 1]^3 (DistillNeRF section 3.2):
lifted points mean-pooled into two levels, and queried at sample points with the
"density complement" (a sample takes the fine level's density where a fine voxel exists,
the coarse level's elsewhere, and empty space where neither does).

A level is `SparseVoxels` (`sparse_conv.py`) whose last feature channel is the density
logit. A level small enough has a dense grid of voxel rows for lookups; a larger one (512^3
would be 512 MB of int32) keeps its occupied voxels' linear keys sorted and searches them
(`torch.searchsorted`).
Voxel (z, y, x) of a level of resolution n covers contracted coordinates
[-1 + 2 i / n, -1 + 2 (i + 1) / n) along each axis, indices in (z, y, x) order of the
point's (x, y, z) reversed, as spconv's indices are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sparse_conv import SparseVoxels

EMPTY_LOGIT = -30.0
"""Density logit of space no voxel covers (DistillNeRF's value)."""


def voxel_of(coords: torch.Tensor, resolution: int) -> torch.Tensor:
    """(..., 3) int64 voxel (z, y, x) of contracted points (..., 3) (x, y, z) in [-1, 1)."""
    cell = torch.floor((coords.clamp(-1.0, 1.0 - 1e-7) + 1.0) * (resolution / 2.0)).long()
    return cell.flip(-1)


def pool(coords: torch.Tensor, values: torch.Tensor, batch: torch.Tensor,
         resolution: int, batch_size: int) -> SparseVoxels:
    """Mean of the values (P, C) of points (P, 3) contracted, of batch items (P,), per
    occupied voxel of a level."""
    cells = voxel_of(coords, resolution)
    keys = _keys(batch, cells, resolution)
    unique, inverse = torch.unique(keys, return_inverse=True)
    sums = values.new_zeros((len(unique), values.shape[1])).index_add(0, inverse, values)
    counts = torch.bincount(inverse, minlength=len(unique)).to(values.dtype)
    n = resolution
    indices = torch.stack([unique // n**3, unique // n**2 % n, unique // n % n, unique % n],
                          dim=1).int()
    return SparseVoxels(sums / counts[:, None], indices, (n, n, n), batch_size)


def _keys(batch: torch.Tensor, cells: torch.Tensor, resolution: int) -> torch.Tensor:
    n = resolution
    return ((batch.long() * n + cells[..., 0]) * n + cells[..., 1]) * n + cells[..., 2]


DENSE_LOOKUP_CELLS = 2 ** 24
"""Levels of at most this many cells (batch x n^3) get a dense index grid (int32, 64 MB
at most): a lookup is one read instead of a binary search. Official sizes: 128^3 does,
512^3 does not."""


@dataclass(frozen=True)
class Level:
    """One level, ready for lookups: its voxels' keys sorted, and for small levels a
    dense grid of rows (-1: no voxel)."""

    voxels: SparseVoxels
    keys: torch.Tensor
    """(N,) sorted linear keys."""
    order: torch.Tensor
    """(N,) row of each sorted key in `voxels`."""
    grid: torch.Tensor | None = None
    """(batch * n^3,) int32 row of every cell, -1 where no voxel is; None: too large."""

    @staticmethod
    def of(voxels: SparseVoxels, dense: bool = True) -> Level:
        cells = voxels.indices[:, 1:].long()
        keys = _keys(voxels.indices[:, 0], cells, voxels.spatial_shape[0])
        keys, order = torch.sort(keys)
        size = voxels.batch_size * voxels.spatial_shape[0] ** 3
        grid = None
        if dense and size <= DENSE_LOOKUP_CELLS:
            grid = torch.full((size,), -1, dtype=torch.int32, device=keys.device)
            grid[keys] = order.int()
        return Level(voxels, keys, order, grid)

    def lookup(self, coords: torch.Tensor, batch: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(row (...,) of the voxel holding each point, found (...,) bool) for contracted
        points (..., 3) of batch items (...,)."""
        keys = _keys(batch, voxel_of(coords, self.voxels.spatial_shape[0]),
                     self.voxels.spatial_shape[0])
        if self.grid is not None:
            row = self.grid[keys].long()
            return row.clamp(min=0), row >= 0
        return self._lookup_sorted(keys)

    def _lookup_sorted(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same by binary search over the sorted keys (large levels; the reference
        of the dense grid in the tests)."""
        if len(self.keys) == 0:
            return torch.zeros_like(keys), torch.zeros_like(keys, dtype=torch.bool)
        at = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        return self.order[at], self.keys[at] == keys


def cell_keys(coords: torch.Tensor, batch: torch.Tensor, resolution: int) -> torch.Tensor:
    """(...,) linear keys of the voxels holding contracted points (..., 3) of batch items
    (...,): `_keys(batch, voxel_of(coords, n), n)` without the flipped copy."""
    n = resolution
    cell = torch.floor((coords.clamp(-1.0, 1.0 - 1e-7) + 1.0) * (n / 2.0)).long()
    return ((batch.long() * n + cell[..., 2]) * n + cell[..., 1]) * n + cell[..., 0]


@dataclass(frozen=True)
class Samples:
    """Where sample points fall in the levels (`locate`): per level the voxel row of
    each sample (R, S) and whether a voxel holds it, and the density logit (R, S) with
    the density complement applied."""

    rows: tuple[torch.Tensor, torch.Tensor]
    found: tuple[torch.Tensor, torch.Tensor]
    logit: torch.Tensor


def locate(levels: tuple[Level, Level], coords: torch.Tensor, batch: torch.Tensor,
           ) -> Samples:
    """The fast path of `query`'s density: contracted points (R, S, 3) of batch items
    (R, S); features are composited from the rows later (`composite_levels`) instead of
    gathered for every sample here."""
    logit = torch.full(coords.shape[:-1], EMPTY_LOGIT, dtype=coords.dtype,
                       device=coords.device)
    rows, founds = [], []
    for level in reversed(levels):  # coarse first: the fine level overrides it
        n = level.voxels.spatial_shape[0]
        keys = cell_keys(coords, batch, n)
        if level.grid is not None:
            row = level.grid[keys].long()
            row, found = row.clamp(min=0), row >= 0
        else:
            row, found = level._lookup_sorted(keys)
        table = level.voxels.features
        if len(table):
            value = table[:, -1].index_select(0, row.reshape(-1)).reshape(row.shape)
            logit = torch.where(found, value, logit)
        rows.insert(0, row)
        founds.insert(0, found)
    return Samples((rows[0], rows[1]), (founds[0], founds[1]), logit)


def composite_levels(levels: tuple[Level, Level], samples: Samples,
                     weights: torch.Tensor) -> torch.Tensor:
    """(R, C_fine - 1 + C_coarse - 1) sum over samples of weight (R, S) times the
    features `query` gives there, level by level (a batched matmul over gathered rows;
    no (R, S, C) concatenation)."""
    out = []
    for level, row, found in zip(levels, samples.rows, samples.found, strict=True):
        table = level.voxels.features[:, :-1]
        if not len(table):
            out.append(weights.new_zeros((len(weights), table.shape[1])))
            continue
        gathered = table.index_select(0, row.reshape(-1)).reshape(*row.shape, -1)
        w = torch.where(found, weights, torch.zeros_like(weights))
        out.append(torch.bmm(w[:, None, :], gathered)[:, 0])
    return torch.cat(out, dim=-1)


def query(levels: tuple[Level, Level], coords: torch.Tensor, batch: torch.Tensor,
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain reference of `locate` and `composite_levels`: (features (..., C_fine - 1
    + C_coarse - 1), density logit (...,)) at contracted
    points (..., 3): both levels' features side by side (zeros where a level has no
    voxel), the density of the fine level where it has a voxel, else the coarse one's,
    else EMPTY_LOGIT."""
    fine, coarse = levels
    feats, density = [], torch.full(coords.shape[:-1], EMPTY_LOGIT, dtype=coords.dtype,
                                    device=coords.device)
    found_any = []
    for level in (fine, coarse):
        row, found = level.lookup(coords, batch)
        table = level.voxels.features
        values = (table[row] * found[..., None] if len(table)
                  else table.new_zeros((*coords.shape[:-1], table.shape[1])))
        feats.append(values[..., :-1])
        found_any.append((found, values[..., -1]))
    (fine_found, fine_logit), (coarse_found, coarse_logit) = found_any
    density = torch.where(coarse_found, coarse_logit, density)
    density = torch.where(fine_found, fine_logit, density)
    return torch.cat(feats, dim=-1), density
