"""Virtual-camera policy: where the teacher renders the extra views the student learns from.

DistillNeRF's policy (its default here) puts, per real camera, three virtual cameras with
the real camera's orientation: 1 m to the right, 1 m to the left and 1 m up. Its code
names them after the offset, `samples_1_0_0_0_0_0`, `samples_-1_0_0_0_0_0`,
`samples_0_-1_0_0_0_0`, and builds the pose as `cam_to_x @ T(offset)`: the translation is
in the real camera's own OpenCV frame (x right, y down, z forward).

An offset here is `(x, y, z, pitch, yaw, roll)`: metres in the source camera's OpenCV
frame, then degrees about the camera's own axes, applied as yaw (about y), then pitch
(about the new x), then roll (about the new z): R = R_y(yaw) R_x(pitch) R_z(roll). Signs
follow the right-hand rule about the OpenCV axes, so with y pointing down a positive yaw
turns the view to the right (+90 deg: forward becomes the old x axis) and a positive pitch
turns it up (+90 deg: forward becomes the old -y axis).

A requested spot can lie inside solid geometry (a wall 0.5 m to the right of a side
camera). `place_virtual_camera` then backs off towards the source camera, and drops the
view when no spot on the way is free.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from distillprep.teachers.errors import TeacherConfigError

DensityFn = Callable[[np.ndarray], np.ndarray]
"""density_fn(points (P, 3) float64 world) -> (P,) density in 1/m (numpy, or anything
`np.asarray` turns into one, such as a CPU torch tensor without grad)."""

DISTILLNERF_OFFSETS: tuple[tuple[float, ...], ...] = (
    (1.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    (-1.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    (0.0, -1.0, 0.0, 0.0, 0.0, 0.0),
)
"""DistillNeRF's virtual cameras: 1 m right, 1 m left, 1 m up; same orientation."""

Status = Literal["kept", "moved", "dropped"]


@dataclass(frozen=True)
class VirtualViewConfig:
    """Where virtual cameras go and how they are rendered."""

    offsets: tuple[tuple[float, ...], ...] = DISTILLNERF_OFFSETS
    """Per real camera, one virtual camera per (x, y, z, pitch, yaw, roll): metres in the
    source camera's OpenCV frame, degrees about its own x, y, z axes (module docstring)."""
    yaw_jitter_deg: float = 0.0
    """Uniform random yaw added to every view, in [-j, +j] degrees (0: none)."""
    pitch_jitter_deg: float = 0.0
    """Uniform random pitch added to every view, in [-j, +j] degrees (0: none)."""
    seed: int = 0
    """Seed of the jitter draws."""
    resolution_scale: float = 1.0
    """Render size relative to the source image (0.5: half width and height)."""
    solid_density: float = 10.0
    """Density (1/m) at or above which the field counts as solid for placement."""
    clearance: float = 0.3
    """Metres of free space the camera centre needs around it."""
    backoff: tuple[float, ...] = (0.75, 0.5, 0.25)
    """Fractions of the requested translation tried, in order, when the spot is solid."""
    segment_step: float = 0.05
    """Metres between density probes on the segment from the source camera to the spot."""

    def __post_init__(self) -> None:
        for i, offset in enumerate(self.offsets):
            if len(offset) != 6 or not all(math.isfinite(float(v)) for v in offset):
                raise TeacherConfigError(
                    f"VirtualViewConfig.offsets[{i}] = {offset!r}: expected 6 finite numbers "
                    "(x, y, z metres, pitch, yaw, roll degrees)")
        if not self.offsets:
            raise TeacherConfigError("VirtualViewConfig.offsets is empty: no virtual view to "
                                     "render")
        for name in ("yaw_jitter_deg", "pitch_jitter_deg", "clearance"):
            if not getattr(self, name) >= 0:
                raise TeacherConfigError(f"VirtualViewConfig.{name} = "
                                         f"{getattr(self, name)!r} must be >= 0")
        for name in ("resolution_scale", "solid_density", "segment_step"):
            if not getattr(self, name) > 0:
                raise TeacherConfigError(f"VirtualViewConfig.{name} = "
                                         f"{getattr(self, name)!r} must be > 0")
        if any(not 0 < f < 1 for f in self.backoff):
            raise TeacherConfigError(f"VirtualViewConfig.backoff = {self.backoff!r}: every "
                                     "fraction must lie strictly between 0 and 1")


@dataclass(frozen=True)
class Placement:
    """Where one virtual camera ended up."""

    cam_to_world: np.ndarray
    """(4, 4) OpenCV camera -> world of the placed camera."""
    status: Status
    """"kept" (as requested), "moved" (backed off towards the source) or "dropped"."""
    shift_m: float
    """Metres between the requested and the placed centre (0 when kept or dropped)."""


@dataclass(frozen=True)
class VirtualView:
    """One planned virtual view."""

    source_sample: int
    """Index of the real camera sample it derives from."""
    offset_index: int
    """Index into `VirtualViewConfig.offsets`."""
    offset: np.ndarray
    """(6,) float64 the policy's requested offset (x, y, z, pitch, yaw, roll), no jitter."""
    jitter_deg: tuple[float, float]
    """(pitch, yaw) degrees of jitter drawn for this view and added to the offset."""
    cam_to_world: np.ndarray
    """(4, 4) OpenCV camera -> world where it was placed (for a dropped view: requested)."""
    intrinsics: np.ndarray
    """(3, 3) K at the render size, OpenCV pixel centres."""
    size: tuple[int, int]
    """(height, width) of the render."""
    status: Status
    """"kept", "moved" or "dropped" (see `Placement`)."""
    shift_m: float
    """Metres it was moved back towards the source camera."""


@dataclass(frozen=True)
class VirtualPlan:
    """The views to render (kept and moved) and those dropped, in policy order."""

    views: list[VirtualView]
    dropped: list[VirtualView]


def rotation_from_angles(pitch_deg: float, yaw_deg: float, roll_deg: float) -> np.ndarray:
    """(3, 3) R = R_y(yaw) R_x(pitch) R_z(roll) in the camera frame: the columns are the
    rotated camera's axes in the source camera frame."""
    p, y, r = np.radians([pitch_deg, yaw_deg, roll_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return ry @ rx @ rz


def virtual_pose(cam_to_world: np.ndarray, offset: Sequence[float],
                 pitch_jitter_deg: float = 0.0, yaw_jitter_deg: float = 0.0) -> np.ndarray:
    """(4, 4) OpenCV cam_to_world of the virtual camera at `offset` from a camera with
    cam_to_world (4, 4) OpenCV.

    offset (6,): x, y, z metres in the source camera frame and pitch, yaw, roll degrees
    about its own axes (module docstring); the jitter is added to pitch and yaw. The
    result is cam_to_world @ [[R, t], [0, 1]]: the centre moves by cam_to_world[:3, :3] @ t
    and the rotation turns the camera about its new centre.
    """
    offset = np.asarray(offset, dtype=np.float64)
    if offset.shape != (6,):
        raise ValueError(f"virtual offset has shape {offset.shape}, expected (6,): "
                         "x, y, z, pitch, yaw, roll")
    local = np.eye(4)
    local[:3, :3] = rotation_from_angles(offset[3] + pitch_jitter_deg,
                                         offset[4] + yaw_jitter_deg, offset[5])
    local[:3, 3] = offset[:3]
    return np.asarray(cam_to_world, dtype=np.float64) @ local


def scaled_intrinsics(intrinsics: np.ndarray,
                      scale: float | tuple[float, float]) -> np.ndarray:
    """(3, 3) K' of an image resampled by `scale` (one factor, or (sx, sy) per axis) from
    an image with K (3, 3).

    OpenCV convention, as `scenes.projection.pixel_rays`: integer pixel coordinates are
    pixel centres, so pixel i covers [i - 1/2, i + 1/2] and the image's left edge is at
    -1/2. Scaling the image maps u + 1/2 to s (u + 1/2): f' = s f and c' = s (c + 1/2) - 1/2.
    """
    sx, sy = (scale, scale) if np.isscalar(scale) else scale
    if not (sx > 0 and sy > 0):
        raise ValueError(f"intrinsics scale {scale!r} must be > 0")
    k = np.asarray(intrinsics, dtype=np.float64)
    scaling = np.array([[sx, 0.0, 0.5 * (sx - 1.0)], [0.0, sy, 0.5 * (sy - 1.0)],
                        [0.0, 0.0, 1.0]])
    return scaling @ k


def _probe_offsets(clearance: float) -> np.ndarray:
    """(7, 3) the centre and the six points `clearance` away along +-x, +-y, +-z."""
    return np.vstack([np.zeros(3), clearance * np.eye(3), -clearance * np.eye(3)])


def spot_is_free(source_centre: np.ndarray, centre: np.ndarray, axes: np.ndarray,
                 density_fn: DensityFn, config: VirtualViewConfig) -> bool:
    """Whether a camera centre (3,) world is free: the density at it, at the six probes
    `config.clearance` away along the columns of axes (3, 3) world, and on the straight
    segment from source_centre (3,) world to it (every `config.segment_step` metres, both
    ends included) stays below `config.solid_density`."""
    length = float(np.linalg.norm(centre - source_centre))
    steps = max(1, math.ceil(length / config.segment_step))
    t = np.linspace(0.0, 1.0, steps + 1)[:, None]
    segment = source_centre + t * (centre - source_centre)
    probes = centre + _probe_offsets(config.clearance) @ axes.T
    points = np.vstack([probes, segment])
    density = np.asarray(density_fn(points), dtype=np.float64).reshape(-1)
    if density.shape != (len(points),):
        raise ValueError(f"density_fn returned {density.shape[0]} values for "
                         f"{len(points)} points; expected one density per point")
    return bool(np.all(density < config.solid_density))


def place_virtual_camera(source_c2w: np.ndarray, target_c2w: np.ndarray,
                         density_fn: DensityFn, config: VirtualViewConfig) -> Placement:
    """Place a virtual camera requested at target_c2w (4, 4) OpenCV, derived from the
    camera at source_c2w (4, 4) OpenCV, out of solid geometry.

    The requested spot is kept when free (`spot_is_free`). Otherwise the centre moves
    back along the requested translation to each `config.backoff` fraction in turn
    (orientation unchanged) and the first free spot is taken ("moved", shift = metres
    moved); when none is free the view is "dropped".
    """
    source_c2w = np.asarray(source_c2w, dtype=np.float64)
    target_c2w = np.asarray(target_c2w, dtype=np.float64)
    source_centre, target_centre = source_c2w[:3, 3], target_c2w[:3, 3]
    axes = target_c2w[:3, :3]
    if spot_is_free(source_centre, target_centre, axes, density_fn, config):
        return Placement(target_c2w.copy(), "kept", 0.0)
    translation = target_centre - source_centre
    for fraction in config.backoff:
        centre = source_centre + fraction * translation
        if spot_is_free(source_centre, centre, axes, density_fn, config):
            placed = target_c2w.copy()
            placed[:3, 3] = centre
            return Placement(placed, "moved",
                             float(np.linalg.norm(target_centre - centre)))
    return Placement(target_c2w.copy(), "dropped", 0.0)


def render_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of a render at `scale`, rounded, at least 1 pixel each."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def plan_virtual_views(cam_to_worlds: np.ndarray, intrinsics: np.ndarray,
                       sizes: np.ndarray | Sequence[Sequence[int]], density_fn: DensityFn,
                       config: VirtualViewConfig) -> VirtualPlan:
    """Virtual views of N real cameras: cam_to_worlds (N, 4, 4) OpenCV, intrinsics
    (N, 3, 3), sizes (N, 2) (height, width) or one (2,) for all.

    Views come sample-major in offset order. The render size is the source size times
    `config.resolution_scale`, rounded; K is scaled by the exact per-axis ratio of the
    rounded size so that the render covers the source image's field of view. Jitter is
    drawn for every (sample, offset) in that order from `config.seed`, whatever the
    placement, so that a plan is a function of its inputs and the seed.
    """
    c2w = np.asarray(cam_to_worlds, dtype=np.float64)
    ks = np.asarray(intrinsics, dtype=np.float64)
    n = len(c2w)
    hw = np.asarray(sizes, dtype=np.int64)
    if hw.shape == (2,):
        hw = np.tile(hw, (n, 1))
    if c2w.shape != (n, 4, 4) or ks.shape != (n, 3, 3) or hw.shape != (n, 2):
        raise ValueError(f"plan_virtual_views: cam_to_worlds {c2w.shape}, intrinsics "
                         f"{ks.shape} and sizes {hw.shape} do not describe the same N cameras "
                         "(expected (N, 4, 4), (N, 3, 3), (N, 2))")
    rng = np.random.default_rng(config.seed)
    views: list[VirtualView] = []
    dropped: list[VirtualView] = []
    for i in range(n):
        height, width = int(hw[i, 0]), int(hw[i, 1])
        out_h, out_w = render_size(height, width, config.resolution_scale)
        k = scaled_intrinsics(ks[i], (out_w / width, out_h / height))
        for j, offset in enumerate(config.offsets):
            pitch_j = float(rng.uniform(-config.pitch_jitter_deg, config.pitch_jitter_deg))
            yaw_j = float(rng.uniform(-config.yaw_jitter_deg, config.yaw_jitter_deg))
            requested = virtual_pose(c2w[i], offset, pitch_j, yaw_j)
            placement = place_virtual_camera(c2w[i], requested, density_fn, config)
            view = VirtualView(source_sample=i, offset_index=j,
                               offset=np.asarray(offset, dtype=np.float64),
                               jitter_deg=(pitch_j, yaw_j), cam_to_world=placement.cam_to_world,
                               intrinsics=k, size=(out_h, out_w), status=placement.status,
                               shift_m=placement.shift_m)
            (dropped if placement.status == "dropped" else views).append(view)
    return VirtualPlan(views=views, dropped=dropped)


def plan_arrays(views: Sequence[VirtualView]) -> dict[str, np.ndarray]:
    """The store's per-view arrays (`storage_schemas.spec`, stage "teacher") of planned
    views: virtual_cam_to_world, virtual_intrinsics, virtual_source_sample,
    virtual_offset, virtual_shift, in the views' order."""
    return {
        "virtual_cam_to_world": np.array([v.cam_to_world for v in views],
                                         dtype=np.float64).reshape(-1, 4, 4),
        "virtual_intrinsics": np.array([v.intrinsics for v in views],
                                       dtype=np.float64).reshape(-1, 3, 3),
        "virtual_source_sample": np.array([v.source_sample for v in views], dtype=np.int32),
        "virtual_offset": np.array([v.offset for v in views], dtype=np.float64).reshape(-1, 6),
        "virtual_shift": np.array([v.shift_m for v in views], dtype=np.float32),
    }
