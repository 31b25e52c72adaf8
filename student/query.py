"""A CLIP text query rendered from the student's features (DistillNeRF's open-vocabulary
use of its foundation-feature head): the student renders PCA-reduced CLIP features for a
frame's cameras; each pixel's cosine similarity with the text's CLIP embedding is taken
through the run's PCA (`teachers.foundation.pca.reduced_cosine`), beside the same map
from the CLIP teacher's stored features, and the two are compared (Pearson correlation
per camera image: how far the student reproduces what the teacher would answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from distillprep.scenes.errors import ConfigError
from distillprep.storage_schemas.feature_runs import FeatureBasis
from distillprep.teachers.foundation.pca import reduced_cosine
from distillprep.teachers.foundation.query import (
    Heatmap,
    clip_text_embedding,
    overlay,
    similarity_range,
)

from .data import StoreDataset


@dataclass
class TextQuery:
    """One text asked of a run's rendered CLIP features."""

    text: str
    embedding: np.ndarray
    """(D,) the text's CLIP embedding, by the model of the stores' CLIP features."""
    basis: FeatureBasis
    """The CLIP run's PCA the student's features are in."""
    random_init: bool
    """The CLIP teacher had RANDOM weights: the maps mean nothing."""
    png: Path | None = None
    """Folder for the overlays (student above teacher, per camera), or None."""
    agreement: list[float] | None = None
    """Pearson correlation of each scored image's student and teacher maps."""
    drawn: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] | None = None


def prepare_query(dataset: StoreDataset, features: str, text: str,
                  weights: Path | None = None, png: Path | None = None) -> TextQuery:
    """The query of `text` for a run whose feature head distils `features`; refused
    unless that is CLIP."""
    from distillprep.storage_schemas.store import open_store

    if features != "clip":
        raise ConfigError(f"a text query needs a student whose feature head distils CLIP "
                          f"features (TrainConfig.features: clip and "
                          f"model.foundation_channels > 0); this run distils {features}")
    location = dataset.plan.locations[0]
    store = open_store(location, storage_options=dataset.plan.storage_options)
    scenes = [k.split(":", 1)[1] for k in dataset.plan.commits if k.startswith("0:")]
    embedding, random_init = clip_text_embedding(store, scenes, text, weights)
    return TextQuery(text, embedding, dataset.feature_basis("clip"), random_init, png, [],
                     [])


def similarity(query: TextQuery, reduced: torch.Tensor) -> np.ndarray:
    """(T, h, w) cosine similarity with the text of reduced CLIP features (T, C, h, w)."""
    return reduced_cosine(query.basis, reduced.detach().float().numpy(), query.embedding)


def score_frame(query: TextQuery, rendered: torch.Tensor, teacher: torch.Tensor,
                images: torch.Tensor, name: str) -> None:
    """Compare the student's map (rendered (T, C, h, w)) with the teacher's (its stored
    features (T, C, hf, wf), resampled bilinearly to (h, w)); keep the images (T, 3, H, W)
    in [0, 1] for the overlays."""
    teacher = F.interpolate(teacher.float(), size=rendered.shape[-2:], mode="bilinear",
                            align_corners=False)
    student_maps, teacher_maps = similarity(query, rendered), similarity(query, teacher)
    for i, (a, b) in enumerate(zip(student_maps, teacher_maps, strict=True)):
        if a.std() > 0 and b.std() > 0:
            query.agreement.append(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]))
        if query.png is not None:
            image = (images[i].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            query.drawn.append((f"{name}_cam{i}", image, a, b))


def write_overlays(query: TextQuery) -> list[str]:
    """PNGs of the kept maps (student above teacher), on one colour scale; their paths."""
    if query.png is None or not query.drawn:
        return []
    low, high = similarity_range([m for d in query.drawn for m in d[2:]])
    query.png.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image, student, teacher in query.drawn:
        rows = [overlay(Heatmap("", name, image, m), low, high) for m in (student, teacher)]
        path = query.png / f"{name}.png"
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)
        paths.append(str(path))
    return paths
