"""Open-vocabulary queries over a store's CLIP features: a text -> a similarity heat map
over each camera image and virtual view. Plain functions, no Prefect."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from distillprep.storage_schemas.feature_runs import FeatureRunError
from distillprep.storage_schemas.scene_view import SceneView
from distillprep.storage_schemas.store import Store

from .dense import encode_text
from .extract import FeatureConfig, load_extractor
from .job import image_sets, read_images
from .pca import PCA, reduced_cosine


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


@dataclass(frozen=True)
class QueryResult:
    """Heat maps of one text over a store's images, on one colour scale."""

    maps: list[Heatmap]
    low: float
    """Similarity at the bottom of the colour scale (1st percentile over all maps)."""
    high: float
    """Similarity at its top (99th percentile)."""
    random_init: bool
    """The features come from RANDOM weights: the maps mean nothing."""


def stored_pca(view: SceneView, family: str = "clip") -> PCA:
    """The PCA a scene's features were projected with."""
    if f"{family}_features" not in view:
        raise FeatureRunError(view.missing_message(f"{family}_features"))
    variance = np.asarray(view[f"{family}_pca_explained_variance"][...])
    return PCA(np.asarray(view[f"{family}_pca_basis"][...]),
               np.asarray(view[f"{family}_pca_mean"][...]), variance, float(variance.sum()), 0)


def scene_heatmaps(view: SceneView, text: np.ndarray, max_images: int) -> list[Heatmap]:
    """Similarity of a CLIP text embedding (D,) with the scene's CLIP features, for its
    first `max_images` real images and every virtual view up to that count."""
    pca = stored_pca(view)
    attrs = view.attrs
    maps = []
    for images in image_sets(view):
        array = "clip_features" if images.kind == "real" else "clip_virtual_features"
        if array not in view:
            continue
        count = min(images.count, max_images)
        reduced = np.asarray(view[array][:count])
        pixels = read_images(view, images, 0, count)
        cameras = np.asarray(view["camera_index"][:count])
        for i in range(count):
            name = (f"{attrs.cameras[int(cameras[i])]}_{i:04d}" if images.kind == "real"
                    else f"virtual_{i:04d}")
            maps.append(Heatmap(view.scene_id, name, pixels[i],
                                reduced_cosine(pca, reduced[i], text)))
    return maps


def clip_text_embedding(store: Store, scene_ids: list[str], text: str,
                        weights: Path | None = None) -> tuple[np.ndarray, bool]:
    """(the CLIP text embedding (D,) of `text` by the model the scenes' CLIP features were
    made with, whether that model's weights were random); the weights must be those the
    features were made with (checked by SHA-256), the scenes' features of one run."""
    records = {s: store.scene(s).provenance("clip_features") for s in scene_ids}
    missing = [s for s, r in records.items() if r is None]
    if missing:
        raise FeatureRunError(f"store {store.location.location}: scene(s) {missing} have no "
                              "CLIP features: run `distillprep features --model clip-...` first")
    runs = {r.run_id for r in records.values()}
    if len(runs) > 1:
        raise FeatureRunError(f"store {store.location.location}: the scenes' CLIP features "
                              f"come from {len(runs)} different runs; query them one run at a "
                              "time")
    record = next(iter(records.values()))
    config = FeatureConfig(**record.config["config"])
    extractor = load_extractor(config, weights)
    if extractor.provenance["weights_sha256"] != record.weights_sha256:
        raise FeatureRunError(f"--weights {extractor.provenance['weights']}: sha256 "
                              f"{extractor.provenance['weights_sha256']} is not that of the "
                              f"weights the features were made with ({record.weights_sha256})")
    with torch.inference_mode():
        embedding = encode_text(extractor.model, extractor.spec.architecture,
                                [text])[0].float().numpy()
    return embedding, config.random_init


def query_store(store: Store, text: str, scene_ids: list[str] | None = None,
                weights: Path | None = None, max_images: int = 12) -> QueryResult:
    """Heat maps of `text` over the scenes' (all, or those named) CLIP features; the
    weights must be those the features were made with (checked by SHA-256)."""
    scene_ids = list(scene_ids or store.scenes())
    embedding, random_init = clip_text_embedding(store, scene_ids, text, weights)
    views = [store.scene(s) for s in scene_ids]
    maps = [m for view in views for m in scene_heatmaps(view, embedding, max_images)]
    low, high = similarity_range([m.similarity for m in maps])
    return QueryResult(maps, low, high, random_init)


def similarity_range(maps: list[np.ndarray]) -> tuple[float, float]:
    """(1st, 99th) percentile of the similarities of all maps: one colour scale."""
    low, high = np.percentile(np.concatenate([m.ravel() for m in maps]), [1, 99])
    return float(low), float(high)


def overlay(heatmap: Heatmap, low: float, high: float, alpha: float = 0.55) -> np.ndarray:
    """(H, W, 3) uint8: the image with the similarity (low..high -> the turbo map,
    upsampled bilinearly to the image) blended over it."""
    height, width = heatmap.image.shape[:2]
    scaled = np.clip((heatmap.similarity - low) / max(high - low, 1e-12), 0.0, 1.0)
    big = Image.fromarray(scaled.astype(np.float32), mode="F").resize((width, height),
                                                                        Image.BILINEAR)
    colour = colormaps["turbo"](np.asarray(big))[..., :3] * 255.0
    return np.round(heatmap.image * (1 - alpha) + colour * alpha).astype(np.uint8)
