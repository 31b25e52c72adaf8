"""Training rays for the per-scene teacher: every camera pixel and every LiDAR return of
the chosen frames, in world coordinates, with unit directions.

Camera rays carry their colour and `range_per_depth` (ray distance per metre of camera
depth: a depth map D converts to distances D * range_per_depth); LiDAR rays carry their
measured range. Times are seconds from the scene's first frame (the dynamic field's t).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distillprep.scenes.model import Scene
from distillprep.scenes.projection import image_pixels, pixel_rays
from distillprep.teachers.errors import TeacherDataError

from .sky import SkyMaskConfig, pixel_masks, scene_returns

MIN_FRAMES = 3
BLACK_IMAGE_MEAN = 2.0
"""An image whose mean pixel value (0-255) is below this is treated as all black."""


@dataclass
class CameraRays:
    origins: np.ndarray
    """(M, 3) float64 world."""
    directions: np.ndarray
    """(M, 3) float64 world, unit length."""
    range_per_depth: np.ndarray
    """(M,) float64: ray distance per metre of camera-z depth (>= 1)."""
    rgb: np.ndarray
    """(M, 3) float32 in [0, 1]."""
    camera_index: np.ndarray
    """(M,) int: index into the scene's camera names (the appearance embedding's id)."""
    frame_index: np.ndarray
    """(M,) int."""
    time_s: np.ndarray
    """(M,) float64 seconds since the scene's first frame."""
    pixel: np.ndarray
    """(M, 2) float64 (column, row) at the source resolution."""
    sky: np.ndarray
    """(M,) bool: confidently sky (`sky.pixel_masks`; all False unless asked for)."""
    silent: np.ndarray
    """(M,) bool: not sky, but the LiDAR swept the ray's direction without a return
    (`sky.pixel_masks`; all False unless asked for)."""


@dataclass
class LidarRays:
    origins: np.ndarray
    """(K, 3) float64 world: the sensor origin of each return."""
    directions: np.ndarray
    """(K, 3) float64 world, unit length."""
    ranges: np.ndarray
    """(K,) float64 metres to the return."""
    frame_index: np.ndarray
    """(K,) int."""
    time_s: np.ndarray
    """(K,) float64 seconds since the scene's first frame."""


def holdout_frames(scene: Scene, count: int = 2) -> tuple[list[int], list[int]]:
    """(train, held out) frame indices: `count` keyframes spread evenly over the scene's
    interior keyframes, never the first or last (a held-out frame is then always between
    training frames); every other frame, sweep frames included, trains (EmerNeRF's
    protocol: a held-out image's neighbours in time stay in the fit)."""
    keys = [f.index for f in scene.frames if f.is_keyframe]
    if len(keys) < MIN_FRAMES + count:
        raise TeacherDataError(scene.scene_id, None, f"{len(keys)} keyframes leave fewer "
                               f"than {MIN_FRAMES} to train on after holding out {count}")
    picks = {int(round(x)) for x in np.linspace(0, len(keys) - 1, count + 2)[1:-1]}
    held = sorted(keys[i] for i in picks)
    return [f.index for f in scene.frames if f.index not in held], held


def check_scene_for_fit(scene: Scene, min_frames: int = MIN_FRAMES) -> None:
    """Fail early with a TeacherDataError, naming the scene and file, on input a teacher
    cannot be fitted to."""
    if len(scene.frames) < min_frames:
        raise TeacherDataError(scene.scene_id, None, f"{len(scene.frames)} frame(s); a "
                               f"teacher needs at least {min_frames}")
    if not any(frame.lidar for frame in scene.frames):
        raise TeacherDataError(scene.scene_id, None, "no LiDAR sweeps: the teacher's depth "
                               "supervision and scene box come from LiDAR")
    for sample in scene.camera_samples:
        if sample.load_image().mean() < BLACK_IMAGE_MEAN:
            raise TeacherDataError(scene.scene_id, sample.source_file,
                                   "image is all black (mean pixel value below "
                                   f"{BLACK_IMAGE_MEAN}): a broken camera or export")


def camera_rays(scene: Scene, frames: list[int], stride: int = 1,
                cameras: list[str] | None = None, with_rgb: bool = True,
                sky: SkyMaskConfig | None = None) -> CameraRays:
    """Rays of every `stride`-th pixel (both axes) of every camera image of `frames` (of
    the named cameras only, when given); without `with_rgb` no image is read and `rgb`
    is zero (rays for rendering); with a `sky` config, `sky` and `silent` mark the rays
    that are sky (the dataset's sky masks where the scene has them, else what the frame's
    LiDAR confirms) or that the LiDAR swept without a return."""
    t0 = scene.frames[0].timestamp_us
    parts = []
    elsewhere = (scene_returns([s for f in frames for s in scene.frames[f].lidar])
                 if sky is not None else None)
    for f in frames:
        for name, sample in scene.frames[f].cameras.items():
            if cameras is not None and name not in cameras:
                continue
            pixels = image_pixels(sample.width, sample.height)
            cols, rows = pixels[:, 0].astype(int), pixels[:, 1].astype(int)
            keep = (cols % stride == 0) & (rows % stride == 0)
            pixels = pixels[keep]
            origin, dirs = pixel_rays(sample.intrinsics, sample.cam_to_world, pixels)
            norm = np.linalg.norm(dirs, axis=1)
            image = sample.load_image() if with_rgb or sky is not None else None
            rgb = (image[rows[keep], cols[keep]].astype(np.float32) / 255.0
                   if with_rgb else np.zeros((len(pixels), 3), np.float32))
            if sky is not None:
                is_sky, silent = (m[rows[keep], cols[keep]] for m in pixel_masks(
                    sample, scene.frames[f].lidar, sky, image, elsewhere))
            else:
                is_sky = silent = np.zeros(len(pixels), dtype=bool)
            parts.append(CameraRays(
                np.broadcast_to(origin, dirs.shape).copy(), dirs / norm[:, None], norm, rgb,
                np.full(len(pixels), scene.camera_names.index(sample.camera)),
                np.full(len(pixels), f), np.full(len(pixels), (sample.timestamp_us - t0) / 1e6),
                pixels, is_sky, silent))
    return CameraRays(*(np.concatenate([getattr(p, name) for p in parts])
                        for name in CameraRays.__dataclass_fields__))


def lidar_rays(scene: Scene, frames: list[int]) -> LidarRays:
    """Rays of every LiDAR return of `frames`."""
    t0 = scene.frames[0].timestamp_us
    parts = []
    for f in frames:
        for sweep in scene.frames[f].lidar:
            pts = sweep.load()
            offset = pts.points - pts.origins
            ranges = np.linalg.norm(offset, axis=1)
            parts.append(LidarRays(pts.origins, offset / ranges[:, None], ranges,
                                   np.full(len(ranges), f),
                                   np.full(len(ranges), (sweep.timestamp_us - t0) / 1e6)))
    if not parts:
        raise TeacherDataError(scene.scene_id, None, f"frames {frames} have no LiDAR returns")
    return LidarRays(*(np.concatenate([getattr(p, name) for p in parts])
                       for name in LidarRays.__dataclass_fields__))
