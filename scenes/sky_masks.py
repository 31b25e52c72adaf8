"""Sky masks a dataset carries beside its images: a segmentation model's output, which
EmerNeRF and DriveStudio fit Waymo with (the LiDAR cannot say what lies above its top
beam: Waymo's TOP laser stops at +2.4 degrees, so LiDAR-derived sky covers little of it).

Layout, one rule for every dataset: the mask of an image is
`{dataroot}/sky_masks/<the image's path under the dataroot, suffix .png>`, the path being
the sample's `source_file` relative to the dataroot, as `distillprep scenes --json` and
the store's manifest show it:

- nuScenes: `sky_masks/samples/CAM_FRONT/<name>.png` (and `sky_masks/sweeps/...`);
- Waymo v1: `sky_masks/segment-<name>_with_camera_labels.tfrecord/FRONT/<frame us>.png`;
- Waymo v2: `sky_masks/camera_image/<segment>.parquet/FRONT/<frame us>.png`.

A mask is a single-channel PNG (8-bit grey, 1-bit or palette) of the image's size, nonzero
on sky. Masks are read when asked for (`ingest --sky-masks`): then every image of a scene
must have one.
"""

from __future__ import annotations

import dataclasses
import os
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import SceneDataError
from .model import Scene
from .paths import inside_root

SKY_MASK_DIR = "sky_masks"
"""The folder under the dataroot that holds the masks."""


def sky_mask_file(dataroot: str | Path, source_file: str | Path) -> Path:
    """Where the mask of the image `source_file` (absolute, under `dataroot`) lies."""
    relative = os.path.relpath(source_file, dataroot)
    return Path(dataroot) / SKY_MASK_DIR / Path(relative).with_suffix(".png")


def checked_sky_mask_file(scene: Scene, source_file: str, token: str) -> Path:
    """`sky_mask_file`, refused with PathOutsideRootError when it (a symlink on its way)
    would lead out of the dataroot."""
    path = sky_mask_file(scene.dataroot, source_file)
    return inside_root(scene.dataroot, os.path.relpath(path, scene.dataroot),
                       table=Path(scene.dataroot) / SKY_MASK_DIR, record=f"image {token}",
                       scene=scene.scene_id)


def read_sky_mask(path: str | Path, scene_id: str, width: int, height: int) -> np.ndarray:
    """The mask at `path`, (height, width) bool, True on sky; SceneDataError naming the
    scene and the file when it is not a single-channel PNG of that size."""
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise SceneDataError(scene_id, path, f"a sky mask must be a PNG, found "
                                     f"{image.format}")
            if image.mode not in ("1", "L", "P", "I;16", "I"):
                raise SceneDataError(scene_id, path, f"a sky mask must have one channel "
                                     f"(grey, 1-bit or palette), found mode {image.mode}")
            if image.size != (width, height):
                raise SceneDataError(scene_id, path, f"sky mask is {image.size[0]}x"
                                     f"{image.size[1]}; its image is {width}x{height}")
            return np.asarray(image) != 0
    except FileNotFoundError:
        raise SceneDataError(scene_id, path, "sky mask not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise SceneDataError(scene_id, path, f"sky mask is not a readable PNG: {exc}") from None


def with_sky_masks(scene: Scene) -> Scene:
    """The scene with every camera sample's sky mask attached (`CameraSample.sky`, read
    lazily). SceneDataError naming the first missing file (and how many are missing) when
    an image has no mask."""
    missing = []
    frames = []
    for frame in scene.frames:
        cameras = {}
        for name, sample in frame.cameras.items():
            path = checked_sky_mask_file(scene, sample.source_file, sample.token)
            if not path.is_file():
                missing.append(path)
            cameras[name] = dataclasses.replace(sample, sky=partial(
                read_sky_mask, path, scene.scene_id, sample.width, sample.height))
        frames.append(dataclasses.replace(frame, cameras=cameras))
    if missing:
        total = len(scene.camera_samples)
        raise SceneDataError(scene.scene_id, missing[0], f"sky mask not found ({len(missing)} "
                             f"of the scene's {total} images have none under "
                             f"{Path(scene.dataroot) / SKY_MASK_DIR}; every image needs one)")
    return dataclasses.replace(scene, frames=tuple(frames))

