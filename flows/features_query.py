"""Open-vocabulary queries over a store's CLIP features: a text -> a similarity heat map
over each camera image and virtual view. Plain functions, no Prefect."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from PIL import Image

from distillprep.storage_schemas.store import Store
from distillprep.teachers.foundation.pca import PCA, reduced_cosine

from .features_job import FeatureRunError, image_sets, read_images


@dataclass(frozen=True)
class Heatmap:
    """One image's similarity to the query."""

    scene_id: str
    name: str
    """camera name and sample index (CAM_FRONT_0012), or virtual_0005."""
    image: np.ndarray
    """(H, W, 3) uint8 the features came from."""
    similarity: np.ndarray
    """(h, w) float32 cosine similarity per feature pixel."""


def stored_pca(store: Store, scene_id: str, family: str = "clip") -> PCA:
    """The PCA a scene's features were projected with."""
    group = store.group(scene_id)
    if f"{family}_features" not in group.array_keys():
        raise FeatureRunError(f"scene {scene_id!r} of store {store.location.location} has no "
                              f"{family} features: run `distillprep features` with a "
                              f"{family} model first")
    variance = np.asarray(group[f"{family}_pca_explained_variance"][...])
    return PCA(np.asarray(group[f"{family}_pca_basis"][...]),
               np.asarray(group[f"{family}_pca_mean"][...]), variance,
               float(variance.sum()), 0)


def scene_heatmaps(store: Store, scene_id: str, text: np.ndarray, max_images: int,
                   ) -> list[Heatmap]:
    """Similarity of a CLIP text embedding (D,) with the scene's CLIP features, for its
    first `max_images` real images and every virtual view up to that count."""
    pca = stored_pca(store, scene_id)
    group = store.group(scene_id)
    attrs = store.scene_attrs(scene_id)
    maps = []
    for images in image_sets(store, scene_id):
        array = "clip_features" if images.kind == "real" else "clip_virtual_features"
        if array not in group.array_keys():
            continue
        count = min(images.count, max_images)
        reduced = np.asarray(group[array][:count])
        pixels = read_images(group, images, 0, count)
        cameras = np.asarray(group["camera_index"][:count])
        for i in range(count):
            name = (f"{attrs.cameras[int(cameras[i])]}_{i:04d}" if images.kind == "real"
                    else f"virtual_{i:04d}")
            maps.append(Heatmap(scene_id, name, pixels[i], reduced_cosine(pca, reduced[i], text)))
    return maps


def overlay(heatmap: Heatmap, low: float, high: float, alpha: float = 0.55) -> np.ndarray:
    """(H, W, 3) uint8: the image with the similarity (low..high -> the turbo map,
    upsampled bilinearly to the image) blended over it."""
    height, width = heatmap.image.shape[:2]
    scaled = np.clip((heatmap.similarity - low) / max(high - low, 1e-12), 0.0, 1.0)
    big = Image.fromarray(scaled.astype(np.float32), mode="F").resize((width, height),
                                                                        Image.BILINEAR)
    colour = colormaps["turbo"](np.asarray(big))[..., :3] * 255.0
    return np.round(heatmap.image * (1 - alpha) + colour * alpha).astype(np.uint8)
