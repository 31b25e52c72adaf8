"""Waymo v1: one TFRecord file per segment, one `dataset_pb2.Frame` proto per record,
read and written with protobuf alone (the `waymo-open-dataset-tf-2-12-0` wheel installed
without its TensorFlow dependency provides `dataset_pb2`).

Range images are zlib-compressed `MatrixFloat` protos ([H, W, 4]; the TOP laser's pose
range image [H, W, 6]), camera projections zlib-compressed `MatrixInt32` ([H, W, 6]).
Every frame repeats the segment's calibrations in its context, as real segments do.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from ..errors import SceneDataError
from .records import (
    CAMERA_NAMES,
    LASER_NAMES,
    CameraCalibration,
    CameraMeta,
    FrameData,
    FrameMeta,
    LaserCalibration,
    RangeImages,
    SegmentData,
    image_source,
    laser_source,
)
from .tfrecord import RecordRef, index_records, read_record, write_records

SUFFIX = "_with_camera_labels.tfrecord"


def _pb2():
    # imported late: `distillprep scenes --help` and nuScenes users never pay for it
    from waymo_open_dataset import dataset_pb2

    return dataset_pb2


def segment_file(folder: Path, name: str) -> Path:
    """Where a segment's TFRecord lives in a folder (Waymo's own file naming)."""
    return Path(folder) / f"segment-{name}{SUFFIX}"


def segment_files(root: Path) -> list[Path]:
    """Every `*.tfrecord` file under root (any depth; not in a synthetic dataset's
    `ground_truth/`, whose folders are named after the files), sorted."""
    truth = Path(root) / "ground_truth"
    return sorted(p for p in Path(root).rglob("*.tfrecord")
                  if p.is_file() and truth not in p.parents)


# ---- writing -------------------------------------------------------------------------

def _set_transform(message, matrix: np.ndarray) -> None:
    message.transform[:] = np.asarray(matrix, dtype=np.float64).reshape(16).tolist()


def _compressed_matrix(pb, array: np.ndarray, kind: str) -> bytes:
    matrix = pb.MatrixFloat() if kind == "float" else pb.MatrixInt32()
    matrix.shape.dims[:] = list(array.shape)
    matrix.data[:] = array.reshape(-1).tolist()
    return zlib.compress(matrix.SerializeToString())


def frame_proto(data: SegmentData, frame: FrameData):
    """The `dataset_pb2.Frame` of one frame of a segment."""
    pb = _pb2()
    out = pb.Frame()
    out.context.name = data.name
    for cal in data.cameras:
        c = out.context.camera_calibrations.add()
        c.name, c.width, c.height = cal.name, cal.width, cal.height
        c.intrinsic[:] = np.asarray(cal.intrinsic, dtype=np.float64).tolist()
        _set_transform(c.extrinsic, cal.extrinsic)
        c.rolling_shutter_direction = cal.rolling_shutter_direction
    for cal in data.lasers:
        c = out.context.laser_calibrations.add()
        c.name = cal.name
        c.beam_inclination_min, c.beam_inclination_max = (cal.inclination_min,
                                                          cal.inclination_max)
        if cal.inclinations is not None:
            c.beam_inclinations[:] = np.asarray(cal.inclinations, dtype=np.float64).tolist()
        _set_transform(c.extrinsic, cal.extrinsic)
    out.context.stats.time_of_day, out.context.stats.location = "Day", "location_synthetic"
    out.context.stats.weather = "sunny"
    out.timestamp_micros = frame.meta.timestamp_us
    _set_transform(out.pose, frame.meta.pose)
    for cam in frame.meta.cameras:
        image = out.images.add()
        image.name, image.image = cam.name, frame.images[cam.name]
        _set_transform(image.pose, cam.pose)
        v = image.velocity
        v.v_x, v.v_y, v.v_z, v.w_x, v.w_y, v.w_z = cam.velocity
        image.pose_timestamp, image.shutter = cam.pose_timestamp, cam.shutter
        image.camera_trigger_time = cam.trigger_time
        image.camera_readout_done_time = cam.readout_done_time
    for name in frame.meta.lasers:
        ranges = frame.ranges[name]
        laser = out.lasers.add()
        laser.name = name
        for ri, values in ((laser.ri_return1, ranges.return1), (laser.ri_return2, ranges.return2)):
            if values is None:
                continue
            ri.range_image_compressed = _compressed_matrix(pb, values.astype(np.float32), "float")
            # no camera projections are computed: every pixel says UNKNOWN (0), as Waymo
            # writes for pixels that project into no camera
            ri.camera_projection_compressed = _compressed_matrix(
                pb, np.zeros(values.shape[:2] + (6,), np.int32), "int")
        if ranges.pose is not None:
            laser.ri_return1.range_image_pose_compressed = _compressed_matrix(
                pb, ranges.pose.astype(np.float32), "float")
    return out


def write_v1_segment(folder: Path, data: SegmentData) -> Path:
    """Write a segment as Waymo names it in a folder; returns the file."""
    path = segment_file(folder, data.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_records(path, (frame_proto(data, f).SerializeToString() for f in data.frames))
    return path


# ---- reading -------------------------------------------------------------------------

def _matrix(values, what: str, fail) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (16,):
        raise fail(f"{what} has {values.size} values, not 16")
    return values.reshape(4, 4)


class V1Segment:
    """A segment's TFRecord (the `Segment` protocol of records.py): every frame is parsed
    once when opened (poses, times, calibrations); pixels and ranges are decoded on
    request, from the last frame parsed when it is the one asked for."""

    def __init__(self, path: str | Path, name: str | None = None, verify: bool = True):
        self.file = Path(path)
        self.name = name or self.file.name
        self._verify = verify
        self._refs: list[RecordRef] = index_records(self.file, self.name, verify)
        if not self._refs:
            raise self._error("the file holds no frame")
        self._cached: tuple[int, object] | None = None
        self.frames: list[FrameMeta] = []
        self.cameras: dict[int, CameraCalibration] = {}
        self.lasers: dict[int, LaserCalibration] = {}
        for i in range(len(self._refs)):
            frame = self._frame(i)
            if i == 0:
                if name is not None and frame.context.name not in ("", name):
                    raise self._error(f"the file's name says segment {name!r}, its frames' "
                                      f"context says {frame.context.name!r}")
                self.name = frame.context.name or self.name
                self._calibrations(frame)
            self.frames.append(self._meta(i, frame))
        self.frames.sort(key=lambda f: f.timestamp_us)

    def _error(self, problem: str) -> SceneDataError:
        return SceneDataError(self.name, self.file, problem)

    def _frame(self, index: int):
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        frame = _pb2().Frame()
        try:
            frame.ParseFromString(read_record(self.file, self._refs[index], self.name,
                                              self._verify))
        except DecodeError as exc:
            raise self._error(f"record {index} is not a Waymo Frame proto: {exc}") from exc
        self._cached = (index, frame)
        return frame

    def _camera_enum(self, value: int, where: str) -> int:
        if value not in CAMERA_NAMES:
            raise self._error(f"{where}: unknown camera name enum {value} (known: "
                              f"{', '.join(f'{k}={v}' for k, v in CAMERA_NAMES.items())})")
        return value

    def _laser_enum(self, value: int, where: str) -> int:
        if value not in LASER_NAMES:
            raise self._error(f"{where}: unknown laser name enum {value} (known: "
                              f"{', '.join(f'{k}={v}' for k, v in LASER_NAMES.items())})")
        return value

    def _calibrations(self, frame) -> None:
        for c in frame.context.camera_calibrations:
            name = self._camera_enum(c.name, "context camera calibration")
            if len(c.intrinsic) != 9:
                raise self._error(f"camera {CAMERA_NAMES[name]}: {len(c.intrinsic)} "
                                  "intrinsic values, not 9")
            self.cameras[name] = CameraCalibration(
                name, np.asarray(c.intrinsic, dtype=np.float64),
                _matrix(c.extrinsic.transform, f"camera {CAMERA_NAMES[name]} extrinsic",
                        self._error), c.width, c.height, c.rolling_shutter_direction)
        for c in frame.context.laser_calibrations:
            name = self._laser_enum(c.name, "context laser calibration")
            self.lasers[name] = LaserCalibration(
                name, _matrix(c.extrinsic.transform, f"laser {LASER_NAMES[name]} extrinsic",
                              self._error), c.beam_inclination_min, c.beam_inclination_max,
                np.asarray(c.beam_inclinations, dtype=np.float64) if len(c.beam_inclinations)
                else None)
        if not self.cameras:
            raise self._error("the first frame's context has no camera calibration")

    def _meta(self, index: int, frame) -> FrameMeta:
        where = f"frame {index} (timestamp {frame.timestamp_micros})"
        cameras = []
        for image in frame.images:
            name = self._camera_enum(image.name, where)
            v = image.velocity
            cameras.append(CameraMeta(
                name, _matrix(image.pose.transform, f"{where} {CAMERA_NAMES[name]} pose",
                              self._error), image.pose_timestamp,
                (v.v_x, v.v_y, v.v_z, v.w_x, v.w_y, v.w_z), image.shutter,
                image.camera_trigger_time, image.camera_readout_done_time))
        lasers = tuple(sorted(self._laser_enum(laser.name, where) for laser in frame.lasers))
        cameras.sort(key=lambda c: c.name)
        return FrameMeta(frame.timestamp_micros,
                         _matrix(frame.pose.transform, f"{where} pose", self._error),
                         tuple(cameras), lasers)

    def _record_of(self, frame: int) -> int:
        timestamp = self.frames[frame].timestamp_us
        for i in (frame, *range(len(self._refs))):  # records are usually in time order
            if self._frame(i).timestamp_micros == timestamp:
                return i
        raise self._error(f"no record holds frame timestamp {timestamp}")

    def jpeg(self, frame: int, camera: int) -> bytes:
        record = self._frame(self._record_of(frame))
        for image in record.images:
            if image.name == camera:
                return image.image
        raise self._error(f"frame {frame} has no {CAMERA_NAMES.get(camera, camera)} image")

    def range_images(self, frame: int, laser: int) -> RangeImages:
        record = self._frame(self._record_of(frame))
        for item in record.lasers:
            if item.name == laser:
                where = f"frame {frame} laser {LASER_NAMES[laser]}"
                first = self._decompress(item.ri_return1.range_image_compressed,
                                         f"{where} return 1")
                if first is None:
                    raise self._error(f"{where}: no first-return range image")
                return RangeImages(
                    first,
                    self._decompress(item.ri_return2.range_image_compressed,
                                     f"{where} return 2"),
                    self._decompress(item.ri_return1.range_image_pose_compressed,
                                     f"{where} pose range image"))
        raise self._error(f"frame {frame} has no {LASER_NAMES.get(laser, laser)} range image")

    def _decompress(self, blob: bytes, where: str) -> np.ndarray | None:
        if not blob:
            return None
        matrix = _pb2().MatrixFloat()
        try:
            matrix.ParseFromString(zlib.decompress(blob))
        except (zlib.error, DecodeError) as exc:
            raise self._error(f"{where}: not a zlib-compressed MatrixFloat: {exc}") from exc
        dims = tuple(matrix.shape.dims)
        values = np.asarray(matrix.data, dtype=np.float32)
        if not dims or int(np.prod(dims)) != values.size:
            raise self._error(f"{where}: {values.size} values do not fill shape {list(dims)}")
        return values.reshape(dims)

    def image_source(self, frame: int, camera: int) -> Path:
        return image_source(self.file, camera, self.frames[frame].timestamp_us)

    def laser_source(self, frame: int, laser: int) -> Path:
        return laser_source(self.file, laser, self.frames[frame].timestamp_us)
