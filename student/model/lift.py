"""Lifting image features into 3D along each pixel's ray, weighted by its depth
distribution, and pooling them into the two voxel levels (DistillNeRF section 3.2).

Depths are camera z (as the store's depths): a ray's direction has camera z = 1, so a
point at depth d is origin + d * direction. Each pixel contributes one point per depth
interval, carrying [w * feature, density logit] (the interval's weight times the pixel's
feature, and its density logit), mean-pooled per voxel.
"""

from __future__ import annotations

import torch

from .space import SpaceConfig, contract
from .sparse_conv import SparseVoxels
from .voxels import pool


def camera_rays(intrinsics: torch.Tensor, cam_to_ego: torch.Tensor, height: int,
                width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins (C, 3) and directions (C, H * W, 3) in the ego frame, camera z = 1, of
    every pixel centre (row-major) of C cameras with K (C, 3, 3) and OpenCV cam_to_ego
    (C, 4, 4)."""
    v, u = torch.meshgrid(torch.arange(height, dtype=intrinsics.dtype),
                          torch.arange(width, dtype=intrinsics.dtype), indexing="ij")
    pixels = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(height * width,
                                                                   dtype=u.dtype)], -1)
    cam = pixels.to(intrinsics.device) @ torch.linalg.inv(intrinsics).transpose(1, 2)
    cam = cam / cam[..., 2:3]
    return cam_to_ego[:, :3, 3], cam @ cam_to_ego[:, :3, :3].transpose(1, 2)


def lift(origins: torch.Tensor, directions: torch.Tensor, depths: torch.Tensor,
         weights: torch.Tensor, logits: torch.Tensor, features: torch.Tensor,
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (C * P * S, 3) ego and their values (C * P * S, F + 1) from C cameras'
    rays (origins (C, 3), directions (C, P, 3)), depths (C, P, S) of S intervals per
    pixel, their weights and density logits (C, P, S), and pixel features (C, P, F)."""
    points = origins[:, None, None, :] + depths[..., None] * directions[:, :, None, :]
    values = torch.cat([weights[..., None] * features[:, :, None, :], logits[..., None]],
                       dim=-1)
    return points.reshape(-1, 3), values.reshape(-1, values.shape[-1])


def pool_levels(points: torch.Tensor, values: torch.Tensor, batch: torch.Tensor,
                space: SpaceConfig, resolutions: tuple[int, int], batch_size: int,
                ) -> tuple[SparseVoxels, SparseVoxels]:
    """(fine, coarse) levels: the points' values mean-pooled at each resolution of the
    contracted cube (official: 512 and 128)."""
    coords = contract(points, space)
    fine, coarse = resolutions
    return (pool(coords, values, batch, fine, batch_size),
            pool(coords, values, batch, coarse, batch_size))
