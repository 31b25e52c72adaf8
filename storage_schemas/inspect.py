"""`distillprep inspect`: what a store holds, how well it compresses, which stages have
filled which scenes, and preview PNGs a person can look at."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from PIL import Image, ImageDraw

from distillprep.scenes.preview import colorize_depth, dilate_sparse

from .reader import SceneReader
from .spec import FEATURE_FAMILIES
from .store import Store


def summarize(store: Store, scene_ids: list[str] | None = None) -> dict[str, Any]:
    """Sizes, counts, compression per array, statistics and stages, JSON-ready."""
    scene_ids = store.scenes() if scene_ids is None else scene_ids
    arrays: dict[str, dict[str, float]] = {}
    scenes = []
    for scene_id in scene_ids:
        view = store.scene(scene_id)
        attrs = view.attrs
        for record in view.commits.values():
            for name, written in record.arrays.items():
                view[name]  # its metadata must read: a damaged store fails here, named
                entry = arrays.setdefault(name, {"raw_bytes": 0, "stored_bytes": 0})
                entry["raw_bytes"] += (int(np.prod(written.shape))
                                       * np.dtype(written.dtype).itemsize)
                entry["stored_bytes"] += written.stored_bytes
        scenes.append({"scene_id": scene_id, "samples": attrs.num_samples,
                       "frames": attrs.num_frames, "image_size": [attrs.width, attrs.height],
                       "stages": {name: {"finished_at": rec.finished_at.isoformat(),
                                         "config_hash": rec.config_hash[:12],
                                         "package_version": rec.package_version,
                                         **_stage_figures(rec.model_dump(mode="json"))}
                                  for name, rec in view.stages().items()},
                       "stale": dict(view.stale)})
    for entry in arrays.values():
        entry["compression_ratio"] = round(entry["raw_bytes"] / max(1, entry["stored_bytes"]), 2)
    manifest = store.manifest(scene_ids)
    stats = {}
    if manifest.num_rows:
        fraction = manifest.column("lidar_depth_valid_fraction")
        stats["lidar_depth"] = {
            "min_m": pc.min(manifest.column("lidar_depth_min")).as_py(),
            "max_m": pc.max(manifest.column("lidar_depth_max")).as_py(),
            "mean_valid_fraction": round(pc.mean(fraction).as_py(), 4),
        }
    total_raw = sum(a["raw_bytes"] for a in arrays.values())
    total_stored = store.location.size_under("")
    return {
        "store": store.location.location, "dataset": store.attrs.dataset,
        "dataset_version": store.attrs.dataset_version,
        "schema_version": store.attrs.schema_version, "scenes": scenes,
        "samples": manifest.num_rows, "arrays": arrays, "statistics": stats,
        "raw_bytes": total_raw, "stored_bytes": total_stored,
    }


def _fit_height(tile: np.ndarray, height: int) -> np.ndarray:
    """A preview tile (h, w, 3) uint8 scaled to `height` rows, aspect kept."""
    if tile.shape[0] == height:
        return tile
    width = max(1, round(tile.shape[1] * height / tile.shape[0]))
    return np.asarray(Image.fromarray(tile).resize((width, height), Image.NEAREST))


LABEL_HEIGHT = 14
"""Pixels of the caption band above each preview panel."""


def labelled(tile: np.ndarray, text: str) -> np.ndarray:
    """The tile (h, w, 3) uint8 with a black caption band above it naming what it shows."""
    band = Image.new("RGB", (tile.shape[1], LABEL_HEIGHT), (0, 0, 0))
    ImageDraw.Draw(band).text((3, 1), text, fill=(255, 255, 255))
    return np.concatenate([np.asarray(band), tile], axis=0)


def _save_row(tiles: list[tuple[str, np.ndarray]], path: Path) -> Path:
    """Panels (caption, image) side by side, each captioned, at the first one's height."""
    height = tiles[0][1].shape[0]
    Image.fromarray(np.concatenate([labelled(_fit_height(t, height), text)
                                    for text, t in tiles], axis=1)).save(path)
    return path


def _stage_figures(extra: dict[str, Any]) -> dict[str, Any]:
    """The quality figures a stage recorded about itself (teacher: PSNR, depth error,
    virtual views), for people deciding whether to trust it."""
    keys = ("backend", "steps", "heldout_psnr_db", "train_psnr_db", "lidar_abs_rel",
            "virtual_views", "model", "random_init", "weights", "pca_channels",
            "pca_explained_ratio")
    figures = {k: extra[k] for k in keys if k in extra}
    if isinstance(figures.get("virtual_views"), dict):
        figures["virtual_views"] = {k: v for k, v in figures["virtual_views"].items()
                                    if k in ("kept", "moved", "dropped")}
    return figures


FAMILY_NAMES = {"dino": "DINOv2", "clip": "CLIP"}
"""How preview captions name each feature family."""


def feature_preview(features: np.ndarray) -> np.ndarray:
    """(C, h, w) PCA-reduced features -> (h, w, 3) uint8: the first three principal
    channels as RGB, each stretched between its 2nd and 98th percentile."""
    rgb = np.zeros((3, *features.shape[1:]), np.float32)
    for i, channel in enumerate(features[:3].astype(np.float32)):
        low, high = np.percentile(channel, [2, 98])
        rgb[i] = np.clip((channel - low) / max(high - low, 1e-6), 0, 1)
    return (np.moveaxis(rgb, 0, -1) * 255).round().astype(np.uint8)


def write_previews(store: Store, scene_id: str, out_dir: str | Path,
                   samples: int = 6) -> list[Path]:
    """PNGs of the first `samples` camera samples of a scene: RGB beside colour-mapped
    LiDAR depth (then the first three PCA channels of each feature family, and teacher
    depth and opacity, when those stages have run), and one PNG per virtual view of those
    samples (RGB beside its depth); every panel is captioned with what it shows. Returns
    their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reader = SceneReader(store, scene_id)
    paths = []
    cameras = {}
    for sample in reader:
        if sample["sample_index"] >= samples:
            break
        cameras[sample["sample_index"]] = sample["camera"]
        tiles = [("RGB", sample["rgb"]),
                 ("LiDAR depth", colorize_depth(dilate_sparse(
                     sample["lidar_depth"].astype(np.float32), 1)))]
        tiles += [(f"{FAMILY_NAMES[family]} PCA", feature_preview(sample[f"{family}_features"]))
                  for family in FEATURE_FAMILIES if f"{family}_features" in sample]
        if "teacher_depth" in sample:
            tiles.append(("teacher depth",
                          colorize_depth(sample["teacher_depth"].astype(np.float32))))
            opacity = sample["teacher_opacity"].astype(np.float32)
            tiles.append(("teacher opacity", np.repeat(
                (np.clip(opacity, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)))
        path = out_dir / f"{scene_id}_{sample['sample_index']:05d}_{sample['camera']}.png"
        paths.append(_save_row(tiles, path))
    view = reader.view
    if "virtual_source_sample" in view:
        source = view["virtual_source_sample"][...]
        offsets = view["virtual_offset"][...]
        for v in np.flatnonzero(source < samples):
            name = "_".join(f"{x:g}" for x in offsets[v])
            path = out_dir / (f"{scene_id}_{int(source[v]):05d}_{cameras[int(source[v])]}"
                              f"_virtual_{name}.png")
            depth = view["virtual_depth"][int(v)].astype(np.float32)
            paths.append(_save_row([("virtual RGB", view["virtual_rgb"][int(v)]),
                                    ("virtual depth", colorize_depth(depth))], path))
    return paths


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{summary['store']}: {summary['dataset']} {summary['dataset_version']}, schema "
             f"v{summary['schema_version']}, {len(summary['scenes'])} scenes, "
             f"{summary['samples']} camera samples, {summary['stored_bytes'] / 2**20:.1f} MiB "
             f"on disk"]
    lines.append(f"  {'array':<22}{'raw MiB':>10}{'stored MiB':>12}{'ratio':>8}")
    for name, a in sorted(summary["arrays"].items()):
        lines.append(f"  {name:<22}{a['raw_bytes'] / 2**20:>10.2f}"
                     f"{a['stored_bytes'] / 2**20:>12.2f}{a['compression_ratio']:>8.2f}")
    for name, s in summary["statistics"].items():
        lines.append(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in s.items()))
    for scene in summary["scenes"]:
        lines.append(f"  {scene['scene_id']:<16}{scene['samples']:>5} samples  stages: "
                     + ", ".join(scene["stages"]))
        for stage, why in scene["stale"].items():
            lines.append(f"    {stage}: STALE, not shown to readers ({why})")
        for stage, info in scene["stages"].items():
            figures = {k: v for k, v in info.items()
                       if k not in ("finished_at", "config_hash", "package_version")}
            if figures:
                lines.append(f"    {stage}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
            if figures.get("random_init"):
                lines.append(f"    WARNING: {stage} come from RANDOMLY INITIALISED weights "
                             "(--random-init): not pretrained features")
    return "\n".join(lines)
