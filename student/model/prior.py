"""A frozen pretrained 2D prior beside the student's encoder (DistillNeRF section 3.1).

The official student adds the features of a frozen Depth-Anything ViT-B/14 to its own
FPN's. Depth-Anything's weights cannot be downloaded on these machines; here the prior is
a DINOv2 ViT (timm's model code, built and loaded by `teachers.foundation` exactly as the
feature teacher does) with weights from a local file, or random weights of the same
architecture, recorded as such (`provenance`, saved in every checkpoint and compared when
a run resumes or is evaluated). Its patch tokens are projected to the encoder's channels
(a trained 1x1 convolution) and upsampled onto the encoder's grid.

The frozen network is held outside the module's parameters and state: it is never
trained, never in the optimiser, never written into checkpoints (a ViT-B is 330 MB), and
it follows the student across devices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distillprep.scenes.errors import ConfigError


@dataclass(frozen=True)
class PriorConfig:
    """The frozen 2D prior (none by default)."""

    model: str | None = None
    """DINOv2 model (`teachers.foundation.models`: dinov2-vits14, dinov2-vitb14); None: no
    prior."""
    weights: str | None = None
    """Local weights file of that model (its released checkpoint); None: random weights of
    the same architecture (recorded as random_init: tests and demos, never a result)."""
    input_width: int = 224
    """Width in pixels the images are resized to for the prior (rounded to patches)."""


class FrozenPrior(nn.Module):
    """Images (N, 3, H, W) in [0, 1] -> features (N, F, h, w) on the encoder's grid."""

    def __init__(self, config: PriorConfig, channels: int):
        super().__init__()
        from distillprep.teachers.foundation.models import build_model, model_spec
        from distillprep.teachers.foundation.weights import (
            find_weights,
            load_weights,
            read_state_dict,
        )

        if config.model is None:
            raise ConfigError("FrozenPrior needs model.prior.model")
        self.config, self.spec = config, model_spec(config.model)
        if self.spec.family != "dino":
            raise ConfigError(f"model.prior.model {config.model!r}: the student's prior is a "
                              "DINOv2 model (dinov2-vits14 or dinov2-vitb14)")
        path = state = None
        if config.weights is not None:  # read (as data) first: a bad file fails at once
            path = find_weights(self.spec, config.weights)
            state = read_state_dict(path)
        network = build_model(self.spec)
        sha256 = None if path is None else load_weights(self.spec, network, path, state)
        network.requires_grad_(False)
        self._frozen = (network,)  # a tuple: not registered, so neither trained nor saved
        self.provenance = {"model": self.spec.name, "architecture": self.spec.architecture,
                           "weights_sha256": sha256, "random_init": sha256 is None}
        self.project = nn.Conv2d(self.spec.width, channels, 1)

    @property
    def network(self) -> nn.Module:
        return self._frozen[0]

    def _apply(self, fn, recurse: bool = True):
        self.network._apply(fn)  # .to(device) and dtype casts reach the frozen network
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        self.network.eval()  # always: dropout and the like stay off in a frozen prior
        return super().train(mode)

    def forward(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        from distillprep.teachers.foundation.dense import dense_features, normalise
        from distillprep.teachers.foundation.models import grid_size

        grid = grid_size(self.spec, images.shape[-2], images.shape[-1],
                         self.config.input_width)
        with torch.no_grad():
            tokens = dense_features(self.spec, self.network,
                                    normalise(self.spec, images, grid))
        return F.interpolate(self.project(tokens), size=size, mode="bilinear",
                             align_corners=False)
