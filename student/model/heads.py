"""The student's 2D networks: the image encoder, the coarse and fine depth heads, and the
decoder from rendered features to RGB (DistillNeRF sections 3.1 and 3.3).

Deviations from the official networks, chosen for CPU training at this stage: the
encoder is a small CNN feature pyramid (strides 2 to 16, summed back to stride 2; the
official combines its own FPN with a frozen Depth-Anything ViT-B/14, whose weights cannot
be downloaded here); the coarse depth head also sees each pixel's unit ray direction in
the frame of reference (z up), which carries what the official prior's global view gives
it: where the pixel looks relative to the ground; the fine head scores
each candidate with a per-pixel MLP over [feature * depth embedding] instead of three
Conv3d layers; the decoder conditions on the camera with a learned per-camera scale and
shift (FiLM) instead of adaptive group norm. Each keeps the official interface (what goes
in and out, at which resolution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
                         nn.GroupNorm(min(8, c_out), c_out), nn.LeakyReLU(0.2))


class Encoder(nn.Module):
    """Images (N, 3, H, W) in [0, 1] -> features (N, F, H / 2, W / 2): a pyramid of
    strides 2, 4, 8, 16 whose coarser levels are upsampled and summed into the finest, so
    that each pixel's feature sees most of the image (a 3-layer CNN sees ~19 pixels and
    cannot tell a near road from a far one)."""

    def __init__(self, channels: int, levels: int = 4):
        super().__init__()
        self.stem = nn.Sequential(_block(3, channels, 2), _block(channels, channels))
        self.down = nn.ModuleList([_block(channels, channels, 2) for _ in range(levels - 1)])
        self.fuse = _block(channels, channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        pyramid = [x]
        for down in self.down:
            pyramid.append(down(pyramid[-1]))
        top = pyramid[-1]
        for finer in reversed(pyramid[:-1]):
            top = finer + F.interpolate(top, size=finer.shape[-2:], mode="bilinear",
                                        align_corners=False)
        return self.fuse(top)


class CoarseDepthHead(nn.Module):
    """Features (N, F, h, w) and unit ray directions (N, 3, h, w) in the frame of
    reference -> logits (N, D, h, w) of the coarse depth bins."""

    def __init__(self, channels: int, bins: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels + 3, hidden, 3, padding=1),
                                 nn.LeakyReLU(0.2), nn.Conv2d(hidden, hidden, 1),
                                 nn.LeakyReLU(0.2), nn.Conv2d(hidden, bins, 1))

    def forward(self, features: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([features, directions], dim=1))


class FineDepthHead(nn.Module):
    """Per pixel: features (P, F) and candidate depths (P, K) m -> probabilities (P, K)
    that each candidate lies in matter."""

    def __init__(self, channels: int):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(1, channels), nn.LayerNorm(channels))
        self.score = nn.Sequential(nn.Linear(channels, channels), nn.LeakyReLU(0.2),
                                   nn.Linear(channels, 1))

    def forward(self, features: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        # depth in units of 10 m keeps the embedding's input near 1
        mixed = features[:, None, :] * self.embed(candidates[..., None] / 10.0)
        return torch.sigmoid(self.score(mixed)[..., 0])


class Decoder(nn.Module):
    """Rendered features (N, F, h, w) and camera indices (N,) -> RGB (N, 3, 2h, 2w)."""

    def __init__(self, channels: int, hidden: int, cameras: int):
        super().__init__()
        self.first = _block(channels, hidden)
        self.film = nn.Embedding(cameras, 2 * hidden)
        nn.init.zeros_(self.film.weight)
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                _block(hidden, hidden), nn.Conv2d(hidden, 3, 1))

    def forward(self, features: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        x = self.first(features)
        scale, shift = self.film(cameras)[:, :, None, None].chunk(2, dim=1)
        return self.up(x * (1 + scale) + shift)
