"""The unified scene model every stage reads: frames x cameras, LiDAR, ego poses.

Units and frames, written once for the whole project:
- Lengths in metres, times in integer microseconds (`timestamp_us`), angles in radians.
- `world`: the dataset's global frame (nuScenes `global`, Waymo world), z up.
- `ego`: the vehicle frame, x forward, y left, z up (nuScenes and Waymo agree).
- Camera frames are OpenCV: x right, y down, z forward. `cam_to_world` (4, 4) maps
  homogeneous camera-frame points to world. Intrinsics K (3, 3) map camera-frame points
  to pixels with OpenCV's convention: the centre of the top-left pixel is (0, 0), so
  `u = fx * x / z + cx` is a column index whose integer values are pixel centres.
- Images are (H, W, 3) uint8 RGB, rows top to bottom; depth maps are (H, W) float32
  metres along the camera z axis.
- LiDAR points are (N, 3) float64 in world coordinates, each with its sensor origin
  (N, 3) world (the ray it came along starts there), plus intensity (N,).

Pixels and points are loaded lazily: a `Scene` holds poses, calibration and file
references, and `CameraSample.load_image()` / `LidarSweep.load()` read the files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .geometry import invert_pose, transform_points
from .ids import validate_scene_id


@dataclass(frozen=True)
class LidarPoints:
    """One or more LiDAR sweeps, in world coordinates."""

    points: np.ndarray
    """(N, 3) float64 world: where each return hit."""
    origins: np.ndarray
    """(N, 3) float64 world: the sensor origin each return's ray started from."""
    intensity: np.ndarray
    """(N,) float32: return intensity as the dataset stores it."""

    @staticmethod
    def concatenate(parts: list[LidarPoints]) -> LidarPoints:
        if not parts:
            empty = np.zeros((0, 3))
            return LidarPoints(empty, empty.copy(), np.zeros(0, np.float32))
        return LidarPoints(
            np.concatenate([p.points for p in parts]),
            np.concatenate([p.origins for p in parts]),
            np.concatenate([p.intensity for p in parts]),
        )


@dataclass(frozen=True)
class CameraSample:
    """One image of one camera, with its calibration and pose at its own timestamp."""

    scene_id: str
    """Scene the image belongs to."""
    camera: str
    """Camera name, e.g. `CAM_FRONT`."""
    timestamp_us: int
    """Exposure time of this very image, microseconds."""
    intrinsics: np.ndarray
    """K (3, 3) float64, OpenCV pixel convention."""
    cam_to_world: np.ndarray
    """(4, 4) float64, OpenCV camera axes -> world, at `timestamp_us`."""
    width: int
    """Image width W in pixels."""
    height: int
    """Image height H in pixels."""
    source_file: str
    """Path of the image file (absolute), for provenance and error messages."""
    is_keyframe: bool
    """True for annotated keyframes (nuScenes `is_key_frame`)."""
    token: str
    """The dataset's own id of this sample (nuScenes sample_data token)."""
    loader: Callable[[], np.ndarray] = field(repr=False, compare=False)
    """Reads the image; returns (H, W, 3) uint8."""
    jpeg: Callable[[], bytes] | None = field(default=None, repr=False, compare=False)
    """Reads the image's JPEG bytes where they sit inside a larger file (Waymo: a TFRecord
    or Parquet file; `source_file` then names the image inside it); None: `source_file`
    is the JPEG file itself."""
    sky: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)
    """Reads the image's sky mask (H, W) bool, a segmentation model's (`scenes.sky_masks`);
    None: the dataset gives none for it."""

    def load_jpeg(self) -> bytes:
        """The image's JPEG bytes, as the dataset stores them."""
        if self.jpeg is not None:
            return self.jpeg()
        from .io import reading

        with reading(self.source_file, None, "image file"), open(self.source_file, "rb") as f:
            return f.read()

    def load_sky(self) -> np.ndarray | None:
        """The image's sky mask (H, W) bool, True on sky; None when it has none."""
        return None if self.sky is None else self.sky()

    def load_image(self) -> np.ndarray:
        """The image, (H, W, 3) uint8 RGB, read from `source_file` now."""
        return self.loader()

    def world_to_pixels(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project points (N, 3) world; returns uv (N, 2) pixels and depth (N,) camera z."""
        cam = transform_points(invert_pose(self.cam_to_world), points)
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (cam[:, :2] / z[:, None]) @ self.intrinsics[:2, :2].T + self.intrinsics[:2, 2]
        return uv, z


@dataclass(frozen=True)
class LidarSweep:
    """One LiDAR sweep, with the sensor pose at its timestamp."""

    scene_id: str
    """Scene the sweep belongs to."""
    sensor: str
    """LiDAR name, e.g. `LIDAR_TOP`."""
    timestamp_us: int
    """Sweep time, microseconds."""
    sensor_to_world: np.ndarray
    """(4, 4) float64, LiDAR frame -> world, at `timestamp_us`."""
    source_file: str
    """Path of the point file (absolute)."""
    is_keyframe: bool
    """True for the keyframe sweep of a frame."""
    token: str
    """The dataset's own id of this sweep."""
    loader: Callable[[], tuple[np.ndarray, np.ndarray]] = field(repr=False, compare=False)
    """Reads the file; returns points (N, 3) in the sensor frame and intensity (N,)."""
    contained: bool = False
    """True when `source_file` names the sweep inside a larger file (Waymo's range images):
    there is no file of its own to hash, so provenance hashes the points read."""

    def load(self) -> LidarPoints:
        """The sweep's points in world coordinates with their origins."""
        local, intensity = self.loader()
        points = transform_points(self.sensor_to_world, local.astype(np.float64))
        origins = np.broadcast_to(self.sensor_to_world[:3, 3], points.shape).copy()
        return LidarPoints(points, origins, intensity.astype(np.float32))


@dataclass(frozen=True)
class Frame:
    """One time step of a scene: the images of (up to) every camera and the LiDAR."""

    index: int
    """Position of the frame in its scene, 0-based, in time order."""
    timestamp_us: int
    """Reference time of the frame (nuScenes: the LiDAR keyframe time)."""
    ego_to_world: np.ndarray
    """(4, 4) float64, ego pose at `timestamp_us`."""
    is_keyframe: bool
    """True for annotated keyframes; False for frames built from sweeps."""
    cameras: dict[str, CameraSample]
    """Camera name -> sample; a sweep frame may lack a camera."""
    lidar: tuple[LidarSweep, ...]
    """The LiDAR sweeps assigned to this frame."""

    def lidar_points(self) -> LidarPoints:
        """All LiDAR sweeps of the frame, concatenated, in world coordinates."""
        return LidarPoints.concatenate([sweep.load() for sweep in self.lidar])


@dataclass(frozen=True)
class Scene:
    """A driving scene: frames in time order, each with cameras and LiDAR."""

    scene_id: str
    """Safe, validated id (a folder and group name downstream)."""
    dataset: str
    """Source dataset kind, e.g. `nuscenes`."""
    dataroot: str
    """Where the dataset lives (absolute path)."""
    camera_names: tuple[str, ...]
    """The rig's cameras, in the dataset's canonical order."""
    frames: tuple[Frame, ...]
    """Frames in time order."""
    metadata: dict = field(default_factory=dict)
    """Dataset-specific extras (version, scene token, description, ...)."""

    def __post_init__(self) -> None:
        validate_scene_id(self.scene_id)

    def keyframes_only(self) -> Scene:
        """The scene without its sweep frames, keyframes renumbered from 0 (what a reader
        returns without sweeps)."""
        keys = [f for f in self.frames if f.is_keyframe]
        return dataclasses.replace(self, frames=tuple(
            dataclasses.replace(f, index=i) for i, f in enumerate(keys)))

    @property
    def camera_samples(self) -> list[CameraSample]:
        """Every camera sample of the scene, frame by frame, in camera order."""
        return [
            frame.cameras[name]
            for frame in self.frames
            for name in self.camera_names
            if name in frame.cameras
        ]

    def summary(self) -> dict:
        """JSON-ready description used by `distillprep scenes --json`."""
        samples = self.camera_samples
        times = [s.timestamp_us for s in samples]
        return {
            "scene_id": self.scene_id,
            "dataset": self.dataset,
            "frames": len(self.frames),
            "keyframes": sum(f.is_keyframe for f in self.frames),
            "cameras": list(self.camera_names),
            "camera_samples": len(samples),
            "lidar_sweeps": sum(len(f.lidar) for f in self.frames),
            "duration_s": (max(times) - min(times)) / 1e6 if times else 0.0,
            **{k: v for k, v in self.metadata.items() if isinstance(v, str | int | float)},
        }


@dataclass
class SceneFailure:
    """A scene that could not be read, when bad scenes are skipped."""

    scene: str
    """The scene's id (or its raw name when that is what is wrong)."""
    error: Exception
    """Why (a SceneError)."""

    def to_json(self) -> dict:
        return {"scene": self.scene, "error": str(self.error),
                "file": getattr(self.error, "file", None)}


@dataclass
class DatasetRead:
    """What a dataset reader returns: the scenes read and, with skip_bad, those skipped."""

    version: str
    """The dataset's version (nuScenes: v1.0-*; Waymo: its container, v1 or v2)."""
    scenes: list[Scene] = field(default_factory=list)
    """Scenes read, in the dataset's order."""
    failures: list[SceneFailure] = field(default_factory=list)
    """Scenes skipped, with why."""
