"""Where the synthetic generator keeps exact ground truth, and how to read it back.

`OUT/ground_truth/depth/<image path relative to OUT>.npy`: float32 (H, W) metres along
the camera z axis, 0 where the ray meets the sky; `OUT/ground_truth/sky/<same>.png`:
uint8 (H, W), 255 on sky; `OUT/ground_truth/world.json`: every scene's world.
`moving_object_mask` derives, from a world, which pixels of a view see a moving car.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..paths import inside_root
from .raycast import cast_rays
from .render import camera_rays
from .world import World


def ground_truth_path(root: str | Path, image_relpath: str | Path, kind: str) -> Path:
    """Path of the exact `depth` (.npy) or `sky` (.png) map of an image under root."""
    if kind not in ("depth", "sky"):
        raise ValueError(f"kind must be 'depth' or 'sky', got {kind!r}")
    suffix = ".npy" if kind == "depth" else ".png"
    return Path(root) / "ground_truth" / kind / Path(image_relpath).with_suffix(suffix)


def has_ground_truth(root: str | Path) -> bool:
    return (Path(root) / "ground_truth" / "world.json").is_file()


def _truth_file(root: str | Path, image_file: str | Path, kind: str) -> Path:
    root = Path(root).resolve()
    image = Path(image_file)
    rel = image.resolve().relative_to(root) if image.is_absolute() else image
    path = ground_truth_path(root, rel, kind)  # rel may come from a store's manifest
    return inside_root(root, path.relative_to(root), table=root / "ground_truth",
                       record=f"image {image_file}")


def load_ground_truth_depth(root: str | Path, image_file: str | Path) -> np.ndarray | None:
    """Exact depth (H, W) float32 of the image at `image_file` (absolute or relative to
    root), or None when the dataset carries no ground truth for it."""
    path = _truth_file(root, image_file, "depth")
    return np.load(path) if path.is_file() else None


def load_ground_truth_sky(root: str | Path, image_file: str | Path) -> np.ndarray | None:
    """Sky mask (H, W) bool of an image, or None without ground truth."""
    path = _truth_file(root, image_file, "sky")
    return np.asarray(Image.open(path)) > 127 if path.is_file() else None


def moving_object_mask(world: World, intrinsics: np.ndarray, cam_to_world: np.ndarray,
                       t: float, width: int, height: int) -> np.ndarray:
    """(H, W) bool: pixels whose first surface, through the pixel centre at time t (s from
    the scene start), belongs to a moving world object (speed != 0). Cast exactly as
    `render_view` casts depth, so it agrees with the stored depth pixel for pixel."""
    origin, dirs = camera_rays(intrinsics, cam_to_world, width, height)
    hits = cast_rays(world.primitives_at(t), origin[0], dirs)
    moving = np.array([obj.speed != 0 for obj in world.objects] + [False])
    return moving[hits.obj].reshape(height, width)  # obj -1 (ground, sky) -> False
