"""The student's 2D networks: the image encoder, the coarse and fine depth heads, and the
decoder from rendered features to RGB (DistillNeRF sections 3.1 and 3.3).

Deviations from the official networks, chosen for CPU training at this stage: the
encoder is a small strided CNN (the official combines its own FPN with a frozen
Depth-Anything ViT-B/14, whose weights cannot be downloaded here); the fine head scores
each candidate with a per-pixel MLP over [feature * depth embedding] instead of three
Conv3d layers; the decoder conditions on the camera with a learned per-camera scale and
shift (FiLM) instead of adaptive group norm. Each keeps the official interface (what goes
in and out, at which resolution).
"""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
                         nn.GroupNorm(min(8, c_out), c_out), nn.LeakyReLU(0.2))


class Encoder(nn.Module):
    """Images (N, 3, H, W) in [0, 1] -> features (N, F, H / 2, W / 2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(_block(3, channels, 2), _block(channels, channels),
                                 _block(channels, channels))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class CoarseDepthHead(nn.Module):
    """Features (N, F, h, w) -> logits (N, D, h, w) of the coarse depth bins."""

    def __init__(self, channels: int, bins: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1),
                                 nn.LeakyReLU(0.2), nn.Conv2d(channels, bins, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


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
