"""The DistillNeRF student (paper section 3): from one frame's cameras, with no
per-scene optimisation, a sparse-voxel scene rendered to RGB, depth and foundation
features.

    images (C, 3, H, W) -> Encoder (+ frozen prior) -> features (C, F, h, w), h = H / 2
      -> CoarseDepthHead (+ ray directions) -> weights over the 286 coarse bins -> coarse depth
      -> 15 fine candidates around it -> FineDepthHead -> fine weights, fine depth
      -> lift [w * feature, density logit] along the rays -> mean-pool into the fine
         and coarse voxel levels -> sparse convolution of the coarse level
      -> render target cameras' rays (`render.py`) -> features (T, 2F, h, w), depth
      -> Decoder -> RGB (T, 3, H, W); feature head -> foundation features (T, F_f, h, w)

Cameras are given in a frame of the caller's choosing (`cam_to_ref`, metres, z up): the
voxels live around its origin (`space.py`: 50 m x 50 m x 6.4 m at full resolution).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function
from torch.utils.checkpoint import checkpoint

from .depth import LOGIT_CLAMP, coarse_depth, fine_candidates, fine_depth, soft_clamp
from .heads import CoarseDepthHead, Decoder, Encoder, FineDepthHead
from .lift import camera_rays, lift, pool_levels
from .prior import FrozenPrior, PriorConfig
from .render import RaySamplingConfig, render_rays
from .space import SpaceConfig, coarse_bin_edges
from .sparse_conv import SparseConv3d, SparseVoxels
from .voxels import Level


@dataclass(frozen=True)
class StudentConfig:
    """Sizes of the student (defaults small enough to train on a CPU)."""

    channels: int = 32
    """Image and voxel feature channels (official: 64)."""
    conv_channels: int = 32
    """Hidden channels of the coarse level's sparse convolution (official: 128)."""
    levels: tuple[int, int] = (128, 32)
    """(fine, coarse) voxel resolutions over the contracted cube (official: 512, 128)."""
    depth_hidden: int = 64
    """Hidden channels of the coarse depth head (official: 64; its last layer is a linear
    map onto the 286 bins' logits, so its width bounds the depth profiles it can draw)."""
    fine_candidates: int = 15
    """Fine depth candidates per pixel (official: 15)."""
    decoder_hidden: int = 32
    """Hidden channels of the RGB decoder (official: 160)."""
    foundation_channels: int = 0
    """Channels of rendered foundation features (the PCA width; 0: none)."""
    cameras: int = 6
    """Camera slots the decoder conditions on (the rig's size)."""
    prior: PriorConfig = field(default_factory=PriorConfig)
    """A frozen pretrained 2D prior added to the encoder's features (none by default)."""
    space: SpaceConfig = field(default_factory=SpaceConfig)
    """The parameterized space and coarse bins."""
    sampling: RaySamplingConfig = field(default_factory=RaySamplingConfig)
    """Samples along rendered rays."""
    render_chunk: int = 4096
    """Rays rendered at once; with gradients each chunk is recomputed in the backward
    pass instead of kept (the official renders in 16 chunks)."""


def scale_intrinsics(k: torch.Tensor, scale: float) -> torch.Tensor:
    """K (..., 3, 3) of an image resampled by `scale` (pixel centres kept, OpenCV)."""
    s = torch.tensor([[scale, 0.0, 0.5 * (scale - 1)], [0.0, scale, 0.5 * (scale - 1)],
                      [0.0, 0.0, 1.0]], dtype=k.dtype, device=k.device)
    return s @ k


class DistillNeRFStudent(nn.Module):
    """The student network (module docstring)."""

    def __init__(self, config: StudentConfig = StudentConfig()):
        super().__init__()
        self.config = config
        f = config.channels
        self.register_buffer("edges", torch.tensor(coarse_bin_edges(config.space),
                                                   dtype=torch.float32), persistent=False)
        self.encoder = Encoder(f)
        self.prior = FrozenPrior(config.prior, f) if config.prior.model else None
        self.coarse_head = CoarseDepthHead(f, len(self.edges) - 1, config.depth_hidden)
        self.fine_head = FineDepthHead(f)
        self.conv = nn.ModuleList([SparseConv3d(f + 1, config.conv_channels, 3, subm=True),
                                   SparseConv3d(config.conv_channels, f + 1, 3, subm=True)])
        self.decoder = Decoder(2 * f, config.decoder_hidden, config.cameras)
        self.feature_head = (nn.Sequential(nn.Linear(2 * f, 64), nn.ReLU(), nn.Linear(64, 64),
                                           nn.ReLU(), nn.Linear(64, config.foundation_channels))
                             if config.foundation_channels else None)

    def encode(self, images: torch.Tensor, intrinsics: torch.Tensor,
               cam_to_ref: torch.Tensor) -> dict:
        """The scene of one frame: images (C, 3, H, W) in [0, 1], K (C, 3, 3) of the
        images, cam_to_ref (C, 4, 4) OpenCV. Returns the voxel levels and the depths."""
        with record_function("student.encoder"):
            feats = self.encoder(images)
            if self.prior is not None:
                feats = feats + self.prior(images, feats.shape[-2:])
        cams, f, h, w = feats.shape
        pixels = feats.permute(0, 2, 3, 1).reshape(-1, f)
        k = scale_intrinsics(intrinsics, 0.5)
        origins, directions = camera_rays(k, cam_to_ref, h, w)
        with record_function("student.depth"):
            unit = F.normalize(directions, dim=-1).reshape(cams, h, w, 3).permute(0, 3, 1, 2)
            logits = self.coarse_head(feats, unit).permute(0, 2, 3, 1).reshape(cams * h * w,
                                                                               -1)
            coarse_w, coarse_d = coarse_depth(logits, self.edges)
            candidates = fine_candidates(coarse_d, self.config.fine_candidates)
            probabilities = self.fine_head(pixels, candidates)
            fine_w, fine_d = fine_depth(probabilities, candidates)
        # the interval's density logit: the mean of its two candidates'
        cand_logit = (2.0 * probabilities - 1.0) * LOGIT_CLAMP
        interval_logit = 0.5 * (cand_logit[:, 1:] + cand_logit[:, :-1])
        mids = 0.5 * (candidates[:, 1:] + candidates[:, :-1]).detach()  # official: detached
        with record_function("student.lift_pool"):
            points, values = lift(origins, directions, mids.reshape(cams, h * w, -1),
                                  fine_w.reshape(cams, h * w, -1),
                                  interval_logit.reshape(cams, h * w, -1),
                                  pixels.reshape(cams, h * w, f))
            batch = torch.zeros(len(points), dtype=torch.long, device=points.device)
            fine_level, coarse_level = pool_levels(points.detach(), values, batch,
                                                   self.config.space, self.config.levels, 1)
        x = coarse_level
        with record_function("student.sparse_conv"):
            for i, conv in enumerate(self.conv):
                x = conv(x)
                if i < len(self.conv) - 1:
                    x = SparseVoxels(torch.relu(x.features), x.indices, x.spatial_shape, 1)
        coarse_level = SparseVoxels(
            torch.cat([soft_clamp(x.features[:, :-1], 5.0),
                       soft_clamp(x.features[:, -1:], LOGIT_CLAMP)], dim=1),
            x.indices, x.spatial_shape, 1)
        return {"levels": (Level.of(fine_level), Level.of(coarse_level)),
                "coarse_depth": coarse_d.reshape(cams, h, w), "coarse_weights": coarse_w,
                "fine_depth": fine_d.reshape(cams, h, w), "fine_weights": fine_w,
                "size": (h, w)}

    def render(self, scene: dict, intrinsics: torch.Tensor, cam_to_ref: torch.Tensor,
               cameras: torch.Tensor, size: tuple[int, int],
               generator: torch.Generator | None = None) -> dict:
        """Render T target cameras: K (T, 3, 3) of the render size (h, w), cam_to_ref
        (T, 4, 4), camera slot (T,) for the decoder. RGB comes at (2h, 2w)."""
        h, w = size
        origins, directions = camera_rays(intrinsics, cam_to_ref, h, w)
        t = len(origins)
        origins = origins[:, None, :].expand(-1, h * w, -1).reshape(-1, 3)
        directions = directions.reshape(-1, 3)
        batch = torch.zeros(t * h * w, dtype=torch.long, device=origins.device)
        edges = self.edges.to(origins.dtype)

        def chunk(lo: int, hi: int):
            out = render_rays(scene["levels"], origins[lo:hi], directions[lo:hi], batch[lo:hi],
                              edges, self.config.space, self.config.sampling, generator)
            return out["depth"], out["opacity"], out["features"], out["weights"]

        step = self.config.render_chunk
        with record_function("student.render"):
            parts = [checkpoint(chunk, lo, min(lo + step, len(origins)), use_reentrant=False)
                     if torch.is_grad_enabled() else chunk(lo, min(lo + step, len(origins)))
                     for lo in range(0, len(origins), step)]
        depth, opacity, features, weights = (torch.cat(p) for p in zip(*parts, strict=True))
        out = {"depth": depth, "opacity": opacity, "features": features, "weights": weights}
        feats = out["features"].reshape(t, h, w, -1).permute(0, 3, 1, 2)
        result = {"depth": out["depth"].reshape(t, h, w),
                  "opacity": out["opacity"].reshape(t, h, w), "weights": out["weights"],
                  "rgb": self._decode(feats, cameras)}
        if self.feature_head is not None:
            result["features"] = self.feature_head(feats.permute(0, 2, 3, 1)).permute(
                0, 3, 1, 2)
        return result

    def _decode(self, feats: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        with record_function("student.decoder"):
            return self.decoder(feats, cameras)
