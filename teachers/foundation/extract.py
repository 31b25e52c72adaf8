"""A feature model ready to run on batches of images: built, its weights loaded (or
random, said so), on a device, and what it was made from for the store's provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dense import dense_features, prepare
from .models import ModelSpec, build_model, grid_size, model_spec, strided_grid
from .weights import find_weights, load_weights


@dataclass(frozen=True)
class FeatureConfig:
    """What a feature run computes (its hash names the run in the store)."""

    model: str = "dinov2-vitb14"
    """Feature model (`models.MODELS`): dinov2-vits14, dinov2-vitb14, clip-vitb16,
    clip-vitl14-336."""
    channels: int = 64
    """Channels kept by the PCA."""
    input_width: int | None = None
    """Width in pixels each image is resized to before the model (None: the model's
    default); the height follows the aspect ratio, both rounded to patch multiples."""
    stride: int | None = None
    """Pixels between patches (None: the patch size); smaller gives a denser grid at the
    cost of (patch / stride)^2 times the tokens (EmerNeRF runs DINOv2 at 7)."""
    pca_images: int = 64
    """Images sampled across the store (real and virtual) to fit the PCA on (pass 1)."""
    denoise_positions: bool = False
    """Subtract the feature pattern fixed to the image position, estimated on the PCA
    sample (`positional.py`), before the PCA."""
    seed: int = 0
    """Seeds the PCA sample and, with random_init, the random weights."""
    random_init: bool = False
    """Random weights of the same architecture (tests, demos): never pretrained features."""


@dataclass
class FeatureExtractor:
    """A model that turns uint8 images into dense features."""

    spec: ModelSpec
    """Which model."""
    model: torch.nn.Module
    """The model, in eval mode, on `device`."""
    device: torch.device
    """Where it runs."""
    batch_size: int
    """Images per forward pass."""
    stride: int | None = None
    """Pixels between patches (None: the patch size)."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Weights file, its sha256 or random_init, device and precision, for the store."""

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """bf16 on a CUDA device (full precision on the CPU, where bf16 is slower here)."""
        return torch.bfloat16 if self.device.type == "cuda" else None

    def grid(self, height: int, width: int, input_width: int | None) -> tuple[int, int]:
        """(rows, cols) of the patch grid an (height, width) image is resized to."""
        return grid_size(self.spec, height, width, input_width)

    def feature_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of the features of an image resized to patch grid `grid`."""
        return strided_grid(self.spec, grid, self.stride)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        """images (B, H, W, 3) uint8, resized to patch grid `grid` -> features (B, D,
        *feature_grid(grid)) float32, run in batches of `batch_size`; a batch the device
        has no memory for is retried at half the size (and the size kept)."""
        out = []
        start = 0
        while start < len(images):
            batch = torch.as_tensor(images[start:start + self.batch_size]).to(self.device)
            try:
                out.append(self._forward(batch, grid))
            except torch.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size //= 2
                del batch
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            start += len(batch)
        if not out:
            return np.zeros((0, self.spec.width, *self.feature_grid(grid)), np.float32)
        return np.concatenate(out)

    def _forward(self, batch: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
        x = prepare(self.spec, batch, grid)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None):
            features = dense_features(self.spec, self.model, x, self.stride)
        return features.float().cpu().numpy()


def load_extractor(config: FeatureConfig, weights: str | Path | None = None,
                   device: str = "cpu", batch_size: int | None = None) -> FeatureExtractor:
    """The model of `config` with its weights from `weights` (or the weights folder), or
    random ones when config.random_init; `batch_size` None: 8 on the CPU, 32 on CUDA."""
    spec = model_spec(config.model)
    strided_grid(spec, (1, 1), config.stride)  # a bad stride fails before the model builds
    model = build_model(spec, seed=config.seed)
    if config.random_init:
        provenance = {"weights": None, "weights_sha256": None, "random_init": True}
    else:
        path = find_weights(spec, weights)
        provenance = {"weights": path.name, "weights_sha256": load_weights(spec, model, path),
                      "random_init": False}
    torch_device = torch.device(device)
    model = model.to(torch_device)
    batch_size = batch_size or (32 if torch_device.type == "cuda" else 8)
    provenance.update(model=spec.name, library=spec.library, architecture=spec.architecture,
                      device=str(torch_device), batch_size=batch_size,
                      precision="bf16" if torch_device.type == "cuda" else "fp32")
    provenance["stride"] = config.stride or spec.patch
    return FeatureExtractor(spec, model, torch_device, batch_size, config.stride, provenance)
