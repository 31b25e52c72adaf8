"""Sparse 3D convolution over voxels, correct on the CPU with many threads.

spconv builds the rulebook (which input voxel feeds which output voxel through which
kernel offset) on the CPU and on CUDA. Its CPU convolution is not usable for training:
its backward asks for a CUDA stream, and its scatter-add races when more than one thread
runs, so forward values and input gradients come out wrong (`../shared/facts/
distillnerf-student.md` section 5). Here the rulebook is spconv's, and the convolution is
a gather-matmul-scatter in torch (`index_add_`), whose autograd is exact with any number
of threads; `_sparse_conv3d_reference` (densify, `F.conv3d`, gather) checks it in the
tests, on values and gradients. A CUDA build of spconv runs the same rulebook on the GPU.

Voxels are `SparseVoxels`: features (N, C) and indices (N, 4) int32 [batch, z, y, x].
A kernel's weight is (K, C_in, C_out) with K = k^3 offsets in (dz, dy, dx) row-major
order, a cross-correlation as `torch.nn.functional.conv3d`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SparseVoxels:
    """Occupied voxels of a batch of grids and their features."""

    features: torch.Tensor
    """(N, C) float."""
    indices: torch.Tensor
    """(N, 4) int32: batch, z, y, x."""
    spatial_shape: tuple[int, int, int]
    """(Z, Y, X) of the grid."""
    batch_size: int

    def dense(self) -> torch.Tensor:
        """(B, C, Z, Y, X), zero where no voxel is."""
        out = self.features.new_zeros((self.batch_size, self.features.shape[1],
                                       *self.spatial_shape))
        b, z, y, x = self.indices.long().unbind(1)
        out[b, :, z, y, x] = self.features
        return out


@dataclass(frozen=True)
class Rulebook:
    """Which input voxel feeds which output voxel through kernel offset k."""

    out_indices: torch.Tensor
    """(M, 4) int32 of the output voxels."""
    pairs: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    """Per kernel offset k: (input rows, output rows), int64."""
    out_shape: tuple[int, int, int]


def out_spatial_shape(shape: tuple[int, int, int], kernel: int, stride: int,
                      padding: int) -> tuple[int, int, int]:
    return tuple((s + 2 * padding - kernel) // stride + 1 for s in shape)


def rulebook(voxels: SparseVoxels, kernel: int, stride: int, padding: int,
             subm: bool) -> Rulebook:
    """spconv's rulebook (its native algorithm) as plain pairs on the voxels' device;
    subm: outputs at the input voxels only (stride 1, padding kernel // 2). Built on the
    CPU whatever the device: the pairs' layout (the subm mirror below) is the one checked
    here, and the CPU package cannot take CUDA tensors."""
    from spconv.core import ConvAlgo
    from spconv.pytorch import ops

    k = [kernel] * 3
    device = voxels.indices.device
    out_inds, pairs, counts = ops.get_indice_pairs(
        voxels.indices.int().contiguous().cpu(), voxels.batch_size, list(voxels.spatial_shape),
        ConvAlgo.Native, k, [stride] * 3, [padding] * 3, [1] * 3, [0] * 3, subm=subm)
    counts = counts.cpu().tolist()
    out_inds, pairs = out_inds.to(device), pairs.to(device)
    volume, centre = kernel ** 3, kernel ** 3 // 2
    rows = torch.arange(len(voxels.indices), device=device)
    out = []
    for i in range(volume):
        if subm and i == centre:
            out.append((rows, rows))
            continue
        # spconv's subm rulebook counts only the first half of the offsets: offset i > centre
        # has the pairs of its mirror kv - 1 - i, stored at i
        n = counts[volume - 1 - i] if subm and i > centre else counts[i]
        out.append((pairs[0, i, :n].long(), pairs[1, i, :n].long()))
    shape = (voxels.spatial_shape if subm
             else out_spatial_shape(voxels.spatial_shape, kernel, stride, padding))
    return Rulebook(out_indices=out_inds, pairs=tuple(out), out_shape=tuple(shape))


def gather_matmul_scatter(features: torch.Tensor, weight: torch.Tensor, book: Rulebook,
                          ) -> torch.Tensor:
    """(M, C_out) = sum over offsets k of W_k applied along the rulebook's pairs."""
    out = features.new_zeros((len(book.out_indices), weight.shape[2]))
    for k, (rows_in, rows_out) in enumerate(book.pairs):
        if len(rows_in):
            out.index_add_(0, rows_out, features[rows_in] @ weight[k])
    return out


def _sparse_conv3d_reference(voxels: SparseVoxels, weight: torch.Tensor,
                             out_indices: torch.Tensor, stride: int, padding: int,
                             ) -> torch.Tensor:
    """The same convolution done densely: `F.conv3d` of the densified grid, read at the
    output voxels. weight (K, C_in, C_out)."""
    kernel = round(weight.shape[0] ** (1 / 3))
    dense_weight = weight.reshape(kernel, kernel, kernel, *weight.shape[1:]).permute(
        4, 3, 0, 1, 2)
    grid = F.conv3d(voxels.dense(), dense_weight, stride=stride, padding=padding)
    b, z, y, x = out_indices.long().unbind(1)
    return grid[b, :, z, y, x]


class SparseConv3d(nn.Module):
    """A sparse 3D convolution (or a submanifold one, `subm`: outputs only where inputs
    are, as `spconv.SubMConv3d`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int | None = None, subm: bool = False,
                 bias: bool = True):
        super().__init__()
        if subm and stride != 1:
            raise ValueError("a submanifold convolution has stride 1")
        self.kernel_size, self.stride, self.subm = kernel_size, stride, subm
        self.padding = kernel_size // 2 if padding is None else padding
        volume = kernel_size ** 3
        self.weight = nn.Parameter(torch.empty(volume, in_channels, out_channels))
        bound = 1 / math.sqrt(in_channels * volume)
        nn.init.uniform_(self.weight, -bound, bound)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        book = rulebook(voxels, self.kernel_size, self.stride, self.padding, self.subm)
        out = gather_matmul_scatter(voxels.features, self.weight, book)
        if self.bias is not None:
            out = out + self.bias
        return SparseVoxels(out, book.out_indices, book.out_shape, voxels.batch_size)
