"""Rendering a fitted teacher through a pinhole camera: colour, depth along the camera
axis and accumulated opacity per pixel, for real cameras and virtual ones alike, on the
teacher's device (numpy out). Imports the model (`teacher.py`), never the training code."""

from __future__ import annotations

import numpy as np
import torch

from distillprep.scenes.model import Scene
from distillprep.scenes.projection import image_pixels, pixel_rays

from .sampler import RaySampling
from .teacher import Teacher, render_rays
from .virtual import render_size, scaled_intrinsics

RENDER_SAMPLING = RaySampling(candidates=256, max_samples=64, fine_samples=64)
"""Rendering outputs: more candidates and kept samples than a training step affords, and a
second pass that puts 64 samples where the first found the surface (depth resolution well
below the candidates' spacing)."""
RENDER_CHUNK = 2048
"""Rays rendered at once: small enough that a chunk's samples stay in the CPU's caches
through the MLPs (16,384 rendered 1.7x slower here); raise it on a GPU."""


@torch.no_grad()
def render_view(teacher: Teacher, intrinsics: np.ndarray, cam_to_world: np.ndarray,
                height: int, width: int, camera_index: int, time_s: float = 0.0,
                chunk: int = RENDER_CHUNK, sampling: RaySampling = RENDER_SAMPLING,
                device: str | torch.device | None = None) -> dict[str, np.ndarray]:
    """Render a (height, width) image of a camera with K (3, 3) and cam_to_world (4, 4)
    OpenCV, world, at `time_s` seconds since the scene's first frame (what a dynamic field
    shows); `camera_index` picks the appearance embedding (the real camera's); `sampling`
    how many samples a ray gets. The rays are rendered on `device`: None, the teacher's;
    another device moves the teacher there first (in place, `Teacher.to`).

    Returns rgb (H, W, 3) float32 in [0, 1], depth (H, W) float32 metres along the camera z
    axis (expected depth of the normalised weights), median_depth (H, W) likewise (where
    half the opacity is reached; see `compositing.median_depth`) and opacity (H, W)
    float32 in [0, 1].
    """
    if device is not None:
        teacher.to(device)
    device = teacher.device
    origin, dirs = pixel_rays(intrinsics, cam_to_world, image_pixels(width, height))
    per_depth = np.linalg.norm(dirs, axis=1)  # ray metres per metre of camera z
    o = torch.as_tensor(origin, dtype=torch.float32, device=device).expand(len(dirs), 3)
    d = torch.as_tensor(dirs / per_depth[:, None], dtype=torch.float32, device=device)
    cam = torch.full((len(d),), camera_index, dtype=torch.long, device=device)
    times = torch.full((len(d),), float(time_s), device=device)
    parts = {"rgb": [], "distance": [], "median_distance": [], "opacity": []}
    for s in range(0, len(d), chunk):
        out = render_rays(teacher, o[s:s + chunk], d[s:s + chunk], cam[s:s + chunk],
                          times[s:s + chunk], sampling)
        for key in parts:
            parts[key].append(out[key])
    result = {key: torch.cat(values).cpu().numpy() for key, values in parts.items()}

    def depth(key):
        return (result[key] / per_depth).astype(np.float32).reshape(height, width)

    return {"rgb": result["rgb"].reshape(height, width, 3),
            "depth": depth("distance"), "median_depth": depth("median_distance"),
            "opacity": result["opacity"].reshape(height, width)}


def render_image(teacher: Teacher, scene: Scene, frame: int, camera: str,
                 scale: float = 1.0, sampling: RaySampling = RENDER_SAMPLING,
                 device: str | torch.device | None = None) -> dict[str, np.ndarray]:
    """Render one real camera image of the scene, at `scale` times its size (on `device`,
    as `render_view`)."""
    sample = scene.frames[frame].cameras[camera]
    k, height, width = scaled_camera(sample.intrinsics, sample.height, sample.width, scale)
    return render_view(teacher, k, sample.cam_to_world, height, width,
                       scene.camera_names.index(camera), sample_time(scene, sample),
                       sampling=sampling, device=device)


def sample_time(scene: Scene, sample) -> float:
    """Seconds from the scene's first frame to a camera sample's exposure."""
    return (sample.timestamp_us - scene.frames[0].timestamp_us) / 1e6


def scaled_camera(intrinsics: np.ndarray, height: int, width: int, scale: float,
                  ) -> tuple[np.ndarray, int, int]:
    """K (3, 3), height, width of the same camera rendered at `scale` times the size (the
    exact per-axis ratio of the rounded size, so that the field of view is kept)."""
    h, w = render_size(height, width, scale)
    return scaled_intrinsics(intrinsics, (w / width, h / height)), h, w
