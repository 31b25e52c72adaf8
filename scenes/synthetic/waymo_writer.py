"""Writes captured scenes as Waymo Open Dataset segments, v1 (TFRecord of `Frame` protos,
`OUT/training/segment-<name>_with_camera_labels.tfrecord`) or v2 (Parquet components,
`OUT/training/<component>/<name>.parquet`), plus exact ground truth beside it, never
inside it: `OUT/ground_truth/depth/<image path>.npy` and `.../sky/<image path>.png`, where
an image's path names it inside its file (`scenes/waymo/records.image_source`).

Every 10 Hz frame is a keyframe (Waymo labels every frame). The frame time is the TOP
laser's first column; each camera image carries the car's pose and velocity at its own
trigger time (global shutter: trigger, pose and readout times agree). Range images hold
the first return (intensity in [0, 1], elongation 0, no-label-zone -1); the second
return is stored empty (range -1), as for pixels where a real laser saw one surface.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..waymo.range_image import pose_vectors
from ..waymo.records import (
    CAMERA_NAMES,
    GLOBAL_SHUTTER,
    LASER_NAMES,
    OPENCV_IN_WAYMO_CAMERA,
    CameraCalibration,
    CameraMeta,
    FrameData,
    FrameMeta,
    LaserCalibration,
    RangeImages,
    SegmentData,
    image_source,
)
from ..waymo.v1 import segment_file, write_v1_segment
from .capture import CaptureEvent, ego_to_world
from .range_scan import RangeScan
from .render import RenderedView
from .rig import Rig
from .truth import ground_truth_path
from .world import World

JPEG_QUALITY = 95
CAMERA_ENUMS = {name: enum for enum, name in CAMERA_NAMES.items()}
LASER_ENUMS = {name: enum for enum, name in LASER_NAMES.items()}


@dataclass
class _Segment:
    name: str
    world: World
    base_us: int
    frames: dict[int, dict] = field(default_factory=dict)


class WaymoWriter:
    """Collects a scene's captures frame by frame and writes the segment at its end."""

    def __init__(self, out: Path, version: str, rig: Rig, width: int, height: int,
                 namespace: str, container: str = "v1"):
        if container not in ("v1", "v2"):
            raise ValueError(f"container must be v1 or v2, got {container!r}")
        self.out, self.rig, self.container = Path(out), rig, container
        self.width, self.height = width, height
        self.segment: _Segment | None = None
        self.cameras = tuple(self._camera_calibration(c) for c in rig.cameras)
        self.lasers = tuple(self._laser_calibration(m) for m in rig.lidars)

    def _camera_calibration(self, cam) -> CameraCalibration:
        w, h = self.rig.camera_size(cam, self.width, self.height)
        k = cam.intrinsics(w, h)
        # Waymo's principal point counts from the first pixel's edge, OpenCV's from its centre
        intrinsic = np.array([k[0, 0], k[1, 1], k[0, 2] + 0.5, k[1, 2] + 0.5, 0, 0, 0, 0, 0.0])
        extrinsic = cam.cam_to_ego().copy()
        extrinsic[:3, :3] = extrinsic[:3, :3] @ OPENCV_IN_WAYMO_CAMERA.T
        return CameraCalibration(CAMERA_ENUMS[cam.name], intrinsic, extrinsic, w, h,
                                 GLOBAL_SHUTTER)

    @staticmethod
    def _laser_calibration(mount) -> LaserCalibration:
        spec = mount.spec
        lo, hi = np.deg2rad(spec.inclination_range_deg)
        listed = np.deg2rad(spec.elevations_deg) if spec.elevations_deg else None
        return LaserCalibration(LASER_ENUMS[mount.name], mount.sensor_to_ego(), float(lo),
                                float(hi), listed)

    def _container(self, name: str) -> Path:
        """The file holding the segment's images."""
        if self.container == "v1":
            return segment_file(self.out / "training", name)
        from ..waymo.v2 import component_file

        return component_file(self.out / "training", "camera_image", name)

    def begin_scene(self, index: int, name: str, world: World, base_us: int) -> None:
        self.segment = _Segment(name, world, base_us)

    def add_capture(self, event: CaptureEvent, ego: np.ndarray,
                    result: RenderedView | RangeScan) -> None:
        seg = self.segment
        frame = seg.frames.setdefault(event.keyframe, {"cameras": {}, "images": {},
                                                       "ranges": {}})
        timestamp = seg.base_us + event.keyframe * self.rig.keyframe_interval_us
        if event.modality == "lidar":
            frame["pose"] = ego
            frame["ranges"][LASER_ENUMS[event.sensor]] = _range_images(result)
            return
        enum = CAMERA_ENUMS[event.sensor]
        buffer = io.BytesIO()
        Image.fromarray(result.rgb).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        frame["images"][enum] = buffer.getvalue()
        seconds = (seg.base_us + event.offset_us) / 1e6
        frame["cameras"][enum] = CameraMeta(enum, ego, seconds,
                                            _velocity(seg.world, event.t), 0.0, seconds,
                                            seconds)
        relpath = image_source(self._container(seg.name), enum, timestamp).relative_to(self.out)
        depth_path = ground_truth_path(self.out, relpath, "depth")
        depth_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(depth_path, result.depth)
        sky_path = ground_truth_path(self.out, relpath, "sky")
        sky_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((result.sky * 255).astype(np.uint8)).save(sky_path)

    def end_scene(self) -> None:
        seg = self.segment
        frames = []
        for k in sorted(seg.frames):
            f = seg.frames[k]
            meta = FrameMeta(seg.base_us + k * self.rig.keyframe_interval_us, f["pose"],
                             tuple(f["cameras"][c] for c in sorted(f["cameras"])),
                             tuple(sorted(f["ranges"])))
            frames.append(FrameData(meta, f["images"], f["ranges"]))
        data = SegmentData(seg.name, self.cameras, self.lasers, tuple(frames))
        if self.container == "v1":
            write_v1_segment(self.out / "training", data)
        else:
            from ..waymo.v2 import write_v2_segment

            write_v2_segment(self.out / "training", data)
        self.segment = None

    def finish(self) -> None:
        pass


def _range_images(scan: RangeScan) -> RangeImages:
    h, w = scan.ranges.shape
    first = np.stack([scan.ranges, scan.intensity, np.zeros((h, w), np.float32),
                      np.full((h, w), -1.0, np.float32)], axis=-1).astype(np.float32)
    second = np.zeros_like(first)
    second[..., 0] = -1.0
    second[..., 3] = -1.0
    pose = None if scan.pixel_pose is None else pose_vectors(scan.pixel_pose).astype(np.float32)
    return RangeImages(first, second, pose)


def _velocity(world: World, t: float, dt: float = 1e-3) -> tuple[float, ...]:
    """The car's linear (m/s) and angular (rad/s) velocity in world axes at t (s)."""
    before, after = ego_to_world(world, t - dt), ego_to_world(world, t + dt)
    linear = (after[:3, 3] - before[:3, 3]) / (2 * dt)
    turn = after[:3, :3] @ before[:3, :3].T
    yaw_rate = np.arctan2(turn[1, 0], turn[0, 0]) / (2 * dt)
    return (*(float(v) for v in linear), 0.0, 0.0, float(yaw_rate))
