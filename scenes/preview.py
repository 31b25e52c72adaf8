"""Preview images a person can look at: one frame's cameras with colour-mapped depth."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from .model import CameraSample, Frame

# Surround-view layout: front cameras on top, back cameras below, as seen from the car.
SURROUND_LAYOUT = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
                   ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))
# Waymo's five cameras, left to right.
WAYMO_LAYOUT = (("SIDE_LEFT", "FRONT_LEFT", "FRONT", "FRONT_RIGHT", "SIDE_RIGHT"),)


def layout_for(frame: Frame) -> tuple[tuple[str, ...], ...]:
    """The known layout holding the frame's cameras, else one row of them in order."""
    for layout in (SURROUND_LAYOUT, WAYMO_LAYOUT):
        if any(name in frame.cameras for row in layout for name in row):
            return layout
    return (tuple(frame.cameras),)


def colorize_depth(depth: np.ndarray, max_depth: float = 80.0) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) uint8 with the turbo map on inverse depth (near = red,
    far = blue); pixels without depth (0) are black."""
    valid = depth > 0
    inv = np.where(valid, 1.0 / np.maximum(depth, 1e-6), 0.0)
    lo = 1.0 / max_depth
    x = np.clip((inv - lo) / (1.0 / 2.0 - lo), 0.0, 1.0)
    rgb = (colormaps["turbo"](x)[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def dilate_sparse(depth: np.ndarray, radius: int = 1) -> np.ndarray:
    """Grow sparse depth points to (2r+1)^2 squares so they show in a preview (nearest
    wins)."""
    out = np.where(depth > 0, depth, np.inf)
    padded = np.pad(out, radius, constant_values=np.inf)
    h, w = depth.shape
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out = np.minimum(out, padded[dy:dy + h, dx:dx + w])
    return np.where(np.isfinite(out), out, 0.0).astype(np.float32)


def frame_preview(frame: Frame, depth_of: Callable[[CameraSample], np.ndarray],
                  layout=None, tile_width: int = 480) -> np.ndarray:
    """(H, W, 3) uint8 grid: for each layout row, a row of images and a row of their depth.

    depth_of(sample) returns (H, W) metres for a camera sample (0 = unknown); layout: rows
    of camera names (default: `layout_for(frame)`).
    """
    layout = layout_for(frame) if layout is None else layout
    rows = []
    for names in layout:
        images, depths = [], []
        for name in names:
            sample = frame.cameras.get(name)
            if sample is None:
                continue
            scale = tile_width / sample.width
            size = (tile_width, max(1, round(sample.height * scale)))
            rgb = Image.fromarray(sample.load_image()).resize(size, Image.BILINEAR)
            depth = Image.fromarray(colorize_depth(depth_of(sample))).resize(size, Image.NEAREST)
            for tile in (rgb, depth):
                ImageDraw.Draw(tile).text((6, 4), name, fill=(255, 255, 255))
            images.append(np.asarray(rgb))
            depths.append(np.asarray(depth))
        if images:
            height = min(i.shape[0] for i in images)
            rows.append(np.concatenate([i[:height] for i in images], axis=1))
            rows.append(np.concatenate([d[:height] for d in depths], axis=1))
    if not rows:
        raise ValueError(f"frame {frame.index} has none of the cameras {layout}")
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows])
