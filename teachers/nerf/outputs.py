"""What a fitted teacher hands to the store: dense depth and opacity for every real camera
image, virtual-camera renders, and the quality figures the teacher can measure on its own.

Plain numpy out (arrays named as in the store's schema, samples in the scene's
`camera_samples` order); writing them is the storage stage's business.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from distillprep.scenes.model import CameraSample, Scene
from distillprep.scenes.projection import MIN_DEPTH
from distillprep.teachers.errors import TeacherConfigError

from .evaluate import psnr
from .render import RENDER_CHUNK, RENDER_SAMPLING, render_view, sample_time, scaled_camera
from .sampler import RaySampling
from .teacher import Teacher
from .virtual import VirtualViewConfig, plan_arrays, plan_virtual_views, render_size

DEPTH_KINDS = {"expected": "depth", "median": "median_depth"}
"""RenderConfig.depth -> the key of `render_view`'s result that holds it."""


@dataclass(frozen=True)
class RenderConfig:
    """What `teacher render` writes."""

    scale: float = 1.0
    """Size of the dense depth maps relative to the camera images."""
    virtual: VirtualViewConfig = field(default_factory=VirtualViewConfig)
    """Virtual cameras: offsets, jitter, render size, solid-geometry checks."""
    chunk: int = RENDER_CHUNK
    """Rays rendered at once (see `render.RENDER_CHUNK`)."""
    sampling: RaySampling = RENDER_SAMPLING
    """Samples per rendered ray."""
    depth: str = "expected"
    """Which depth the store gets: "expected" (the weights' mean distance, EmerNeRF's) or
    "median" (where half the opacity is reached: never between two surfaces)."""

    def __post_init__(self) -> None:
        if self.depth not in DEPTH_KINDS:
            raise TeacherConfigError(f"render config depth {self.depth!r}: use "
                                     f"{' or '.join(map(repr, DEPTH_KINDS))}")
        for name in ("scale", "chunk"):
            if not getattr(self, name) > 0:
                raise TeacherConfigError(f"render config {name} = {getattr(self, name)!r}: "
                                         "must be > 0")


@dataclass
class TeacherOutputs:
    arrays: dict[str, np.ndarray]
    """Store arrays of the teacher stage."""
    columns: dict[str, list]
    """Manifest columns, one value per real sample."""
    figures: dict[str, Any]
    """Scene-level quality figures and virtual-view counts (provenance)."""


def _resized_image(sample: CameraSample, height: int, width: int) -> np.ndarray:
    """The camera image (H, W, 3) in [0, 1], box-filtered to (height, width) if needed."""
    image = sample.load_image()
    if image.shape[:2] != (height, width):
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BOX))
    return image.astype(np.float32) / 255.0


def lidar_abs_rel(depth: np.ndarray, intrinsics: np.ndarray, cam_to_world: np.ndarray,
                  points: np.ndarray) -> float:
    """Mean |d - z| / z of a depth map (H, W) (camera z, metres) at the nearest pixels of
    LiDAR points (P, 3) world seen by a camera with K (3, 3) and cam_to_world (4, 4)."""
    cam = (points - cam_to_world[:3, 3]) @ cam_to_world[:3, :3]
    z = cam[:, 2]
    front = z > MIN_DEPTH
    uv = cam[front] @ intrinsics.T
    col, row = np.round(uv[:, 0] / uv[:, 2]).astype(int), np.round(uv[:, 1] / uv[:, 2]).astype(int)
    h, w = depth.shape
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    if not inside.any():
        return float("nan")
    z = z[front][inside]
    return float(np.mean(np.abs(depth[row[inside], col[inside]] - z) / z))


class Pieces(Protocol):
    """Where finished renders are kept for a resume (`storage_schemas.partials.Pieces`):
    get(name, expected) -> arrays or None, put(name, arrays)."""

    def get(self, name: str, expected: dict | None = None) -> dict[str, np.ndarray] | None: ...

    def put(self, name: str, arrays: dict[str, np.ndarray]) -> None: ...


def render_outputs(teacher: Teacher, scene: Scene, fitted_frames: list[int],
                   config: RenderConfig, samples: list[int] | None = None,
                   progress=None, pieces: Pieces | None = None) -> TeacherOutputs:
    """Render the real camera samples `samples` (indices into `scene.camera_samples`;
    None: all) and their virtual views (on the teacher's device). The arrays cover every
    sample of the scene: those not rendered stay zero and their manifest columns empty
    (`has_teacher_depth` false).

    `fitted_frames` are the frames the teacher was fitted on: the others count as held out
    in the figures. `progress(iterable)` wraps the loop over samples when given. With
    `pieces`, every finished image is kept there and one kept before is used instead of
    rendered again (a killed render resumes; the caller keys `pieces` to this teacher,
    config and scene content).
    """
    start = time.perf_counter()
    every = scene.camera_samples
    picked = list(range(len(every))) if samples is None else list(samples)
    frame_of = {id(s): f.index for f in scene.frames for s in f.cameras.values()}
    cameras = list(scene.camera_names)
    scores: list[float | None] = [None] * len(every)
    errors: list[float | None] = [None] * len(every)
    held: list[bool | None] = [None] * len(every)
    depth = opacity = None
    lidar_cache: dict[int, np.ndarray] = {}
    for index in progress(picked) if progress else picked:
        sample = every[index]
        k, h, w = scaled_camera(sample.intrinsics, sample.height, sample.width, config.scale)
        frame = frame_of[id(sample)]
        expected = {"depth": ((h, w), "float16"), "opacity": ((h, w), "float16"),
                    "scores": ((2,), "float64")}
        piece = pieces.get(f"real-{index}", expected) if pieces is not None else None
        if piece is None:
            out = render_view(teacher, k, sample.cam_to_world, h, w,
                              cameras.index(sample.camera), sample_time(scene, sample),
                              chunk=config.chunk, sampling=config.sampling)
            if frame not in lidar_cache:
                lidar_cache[frame] = scene.frames[frame].lidar_points().points
            piece = {"depth": out[DEPTH_KINDS[config.depth]].astype(np.float16),
                     "opacity": np.clip(out["opacity"], 0.0, 1.0).astype(np.float16),
                     "scores": np.array([psnr(out["rgb"], _resized_image(sample, h, w)),
                                         lidar_abs_rel(out[DEPTH_KINDS[config.depth]], k,
                                                       sample.cam_to_world,
                                                       lidar_cache[frame])])}
            if pieces is not None:
                pieces.put(f"real-{index}", piece)
        if depth is None:
            depth = np.zeros((len(every), h, w), np.float16)
            opacity = np.zeros((len(every), h, w), np.float16)
        depth[index], opacity[index] = piece["depth"], piece["opacity"]
        scores[index], errors[index] = (float(v) for v in piece["scores"])
        held[index] = frame not in fitted_frames
    if depth is None:
        raise TeacherConfigError(f"scene {scene.scene_id!r}: no camera sample to render")
    arrays = {"teacher_depth": depth, "teacher_opacity": opacity}
    virtual, counts = render_virtual_views(teacher, scene, config, picked, pieces)
    arrays.update(virtual)
    rendered = np.array([h is not None for h in held])
    held_mask = np.array([bool(h) for h in held])

    def mean(values, mask):
        chosen = [v for v, m in zip(values, mask, strict=True) if m]
        return round(float(np.nanmean(chosen)), 4) if chosen else None

    keyframes = [f.index for f in scene.frames if f.is_keyframe]
    figures = {
        "heldout_frames": sorted(set(keyframes) - set(fitted_frames)),
        "heldout_psnr_db": mean(scores, held_mask),
        "train_psnr_db": mean(scores, rendered & ~held_mask),
        "lidar_abs_rel": mean(errors, rendered),
        "lidar_abs_rel_heldout": mean(errors, held_mask),
        "virtual_views": counts,
        "render_time_s": round(time.perf_counter() - start, 2),
    }
    columns = {"teacher_psnr": scores, "teacher_lidar_abs_rel": errors,
               "teacher_heldout": held, "has_teacher_depth": rendered.tolist(),
               "has_teacher_opacity": rendered.tolist()}
    return TeacherOutputs(arrays, columns, figures)


def static_density(teacher: Teacher):
    """density_fn(points (P, 3) world numpy) -> (P,) of the static field: what virtual
    cameras must not sit in (a moving car is there only for a moment)."""

    @torch.no_grad()
    def density(points: np.ndarray) -> np.ndarray:
        points = torch.as_tensor(points, dtype=torch.float32, device=teacher.device)
        return teacher.field.density(points)[0].cpu().numpy()

    return density


def render_virtual_views(teacher: Teacher, scene: Scene, config: RenderConfig,
                         samples: list[int] | None = None, pieces: Pieces | None = None,
                         ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Virtual views of the real samples `samples` (indices into `scene.camera_samples`;
    None: all) by the policy, placed out of geometry the field believes solid; returns
    their store arrays (`virtual_source_sample` indexes the scene's samples) and counts of
    kept / moved / dropped. `pieces` as in `render_outputs` (the plan is a function of
    the teacher and the config, so view i is the same view on a resume)."""
    every = scene.camera_samples
    picked = list(range(len(every))) if samples is None else list(samples)
    sources = [every[i] for i in picked]
    cameras = list(scene.camera_names)

    plan = plan_virtual_views(np.stack([s.cam_to_world for s in sources]),
                              np.stack([s.intrinsics for s in sources]),
                              [(s.height, s.width) for s in sources], static_density(teacher),
                              config.virtual)
    arrays = plan_arrays(plan.views)
    arrays["virtual_source_sample"] = np.asarray(picked, np.int32)[
        arrays["virtual_source_sample"]].astype(np.int32)
    height, width = render_size(sources[0].height, sources[0].width,
                                config.virtual.resolution_scale)
    rgb = np.zeros((len(plan.views), height, width, 3), np.uint8)
    depth = np.zeros((len(plan.views), height, width), np.float16)
    opacity = np.zeros_like(depth)
    for i, view in enumerate(plan.views):
        expected = {"rgb": ((height, width, 3), "uint8"), "depth": ((height, width), "float16"),
                    "opacity": ((height, width), "float16")}
        piece = pieces.get(f"virtual-{i}", expected) if pieces is not None else None
        if piece is None:
            source = sources[view.source_sample]
            out = render_view(teacher, view.intrinsics, view.cam_to_world, *view.size,
                              cameras.index(source.camera), sample_time(scene, source),
                              chunk=config.chunk, sampling=config.sampling)
            piece = {"rgb": np.round(np.clip(out["rgb"], 0.0, 1.0) * 255.0).astype(np.uint8),
                     "depth": out[DEPTH_KINDS[config.depth]].astype(np.float16),
                     "opacity": np.clip(out["opacity"], 0.0, 1.0).astype(np.float16)}
            if pieces is not None:
                pieces.put(f"virtual-{i}", piece)
        rgb[i], depth[i], opacity[i] = piece["rgb"], piece["depth"], piece["opacity"]
    arrays.update(virtual_rgb=rgb, virtual_depth=depth, virtual_opacity=opacity)
    statuses = [v.status for v in plan.views]
    counts = {"kept": statuses.count("kept"), "moved": statuses.count("moved"),
              "dropped": len(plan.dropped),
              "dropped_views": [{"source_sample": picked[v.source_sample],
                                 "offset": v.offset.tolist()} for v in plan.dropped]}
    return arrays, counts
