"""Waymo v2: one Parquet file per component per segment, `{root}/{component}/{segment}.parquet`,
read and written with pyarrow alone (no TensorFlow, no `waymo_open_dataset`).

Columns carry Waymo's own names (`key.*`, `[XComponent].field`) and arrow types. Rows are
sorted by (frame timestamp, sensor enum); the per-frame sensor components (camera_image,
lidar, lidar_pose) hold one row group per frame, so that a filter on
`key.frame_timestamp_micros` reads that frame's row group alone. A range image is stored
as its flattened float32 `values` and its `shape` (H, W, C); a missing second return is
null. Camera linear velocities are float32 in Waymo's schema (everything else float64).

Opening a segment reads the calibrations, the vehicle poses, camera_image's columns other
than the image and lidar's keys; `jpeg` and `range_images` read one frame's rows and keep
the last frame read (one frame per component), so a frame's sensors read in turn cost one
read. Every error is a SceneDataError naming the segment, the offending Parquet file and
the problem.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import SceneDataError
from ..io import atomic_file
from ..paths import inside_root
from ..tables import arrow_kind_matches
from .records import (
    CAMERA_NAMES,
    LASER_NAMES,
    CameraCalibration,
    CameraMeta,
    FrameMeta,
    LaserCalibration,
    RangeImages,
    SegmentData,
    image_source,
    laser_source,
)

_T = TypeVar("_T")

_SEG, _TS = "key.segment_context_name", "key.frame_timestamp_micros"
_CAM, _LASER = "key.camera_name", "key.laser_name"
_CI, _CC = "[CameraImageComponent].", "[CameraCalibrationComponent]."
_LI, _LP, _LC = "[LiDARComponent].", "[LiDARPoseComponent].", "[LiDARCalibrationComponent]."
_IMAGE, _CAM_POSE = _CI + "image", _CI + "pose.transform"
_VELOCITY = tuple(f"{_CI}velocity.{kind}_velocity.{axis}"
                  for kind in ("linear", "angular") for axis in "xyz")
_SHUTTER = tuple(f"{_CI}{field}" for field in (
    "rolling_shutter_params.shutter", "rolling_shutter_params.camera_trigger_time",
    "rolling_shutter_params.camera_readout_done_time"))
_INTRINSIC = tuple(f"{_CC}intrinsic.{p}"
                   for p in ("f_u", "f_v", "c_u", "c_v", "k1", "k2", "p1", "p2", "k3"))
_CAM_EXTRINSIC, _LASER_EXTRINSIC = _CC + "extrinsic.transform", _LC + "extrinsic.transform"
_INCLINATION = tuple(f"{_LC}beam_inclination.{p}" for p in ("min", "max", "values"))
_RETURN1, _RETURN2 = _LI + "range_image_return1", _LI + "range_image_return2"
_POSE_IMAGE = _LP + "range_image_return1"
_VEHICLE_POSE = "[VehiclePoseComponent].world_from_vehicle.transform"
_STATS = {"[StatsComponent].time_of_day": "Day",
          "[StatsComponent].location": "location_synthetic",
          "[StatsComponent].weather": "sunny"}
_MATRIX = pa.list_(pa.float64(), 16)
_KEYS = [(_SEG, pa.string()), (_TS, pa.int64())]


def _range_fields(*prefixes: str) -> list[tuple[str, pa.DataType]]:
    return [field for p in prefixes for field in (
        (p + ".values", pa.list_(pa.float32())), (p + ".shape", pa.list_(pa.int32(), 3)))]


_SCHEMAS: dict[str, pa.Schema] = {
    "camera_image": pa.schema([
        *_KEYS, (_CAM, pa.int8()), (_IMAGE, pa.binary()), (_CAM_POSE, _MATRIX),
        *((c, pa.float32() if "linear" in c else pa.float64()) for c in _VELOCITY),
        (_CI + "pose_timestamp", pa.float64()), *((c, pa.float64()) for c in _SHUTTER)]),
    "camera_calibration": pa.schema([
        (_SEG, pa.string()), (_CAM, pa.int8()), *((c, pa.float64()) for c in _INTRINSIC),
        (_CAM_EXTRINSIC, _MATRIX), (_CC + "width", pa.int32()), (_CC + "height", pa.int32()),
        (_CC + "rolling_shutter_direction", pa.int8())]),
    "lidar": pa.schema([*_KEYS, (_LASER, pa.int8()), *_range_fields(_RETURN1, _RETURN2)]),
    "lidar_pose": pa.schema([*_KEYS, (_LASER, pa.int8()), *_range_fields(_POSE_IMAGE)]),
    "lidar_calibration": pa.schema([
        (_SEG, pa.string()), (_LASER, pa.int8()), (_LASER_EXTRINSIC, _MATRIX),
        *((c, pa.float64()) for c in _INCLINATION[:2]), (_INCLINATION[2], pa.list_(pa.float64()))]),
    "vehicle_pose": pa.schema([*_KEYS, (_VEHICLE_POSE, _MATRIX)]),
    "stats": pa.schema([*_KEYS, *((c, pa.string()) for c in _STATS)]),
}
COMPONENTS: tuple[str, ...] = tuple(_SCHEMAS)
"""The component folders `write_v2_segment` writes."""
REQUIRED: tuple[str, ...] = tuple(c for c in COMPONENTS if c != "stats")
"""The components `V2Segment` reads (each with every column `_SCHEMAS` lists)."""
_PER_FRAME = ("camera_image", "lidar", "lidar_pose")
"""Components written one row group per frame."""
_NULLABLE = frozenset({_RETURN2 + ".values", _RETURN2 + ".shape", _INCLINATION[2]})
"""Columns whose nulls mean something (no second return, uniform inclinations)."""


# ---- writing -------------------------------------------------------------------------

def _flat(matrix: np.ndarray) -> list[float]:
    return np.asarray(matrix, dtype=np.float64).reshape(16).tolist()


def _float_lists(arrays: list[np.ndarray | None]) -> pa.Array:
    """A list<float32> column of flattened arrays (None: null), built without a Python
    loop over the values."""
    sizes = [0 if a is None else int(np.size(a)) for a in arrays]
    offsets = pa.array(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32))
    values = [np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays if a is not None]
    return pa.ListArray.from_arrays(
        offsets, pa.array(np.concatenate(values) if values else np.zeros(0, np.float32)),
        mask=pa.array([a is None for a in arrays], pa.bool_()))


def _range_cells(prefix: str, array: np.ndarray | None) -> dict[str, object]:
    return {prefix + ".values": array,
            prefix + ".shape": None if array is None else list(np.shape(array))}


def _table(schema: pa.Schema, rows: list[dict[str, object]]) -> pa.Table:
    columns: dict[str, object] = {c: [row[c] for row in rows] for c in schema.names}
    for field in schema:
        if field.type == pa.list_(pa.float32()):
            columns[field.name] = _float_lists(columns[field.name])
    return pa.Table.from_pydict(columns, schema=schema)


def _write(root: Path, name: str, component: str, rows: list[dict[str, object]]) -> Path:
    """Write a component's rows atomically (temp file beside it, fsync, replace), sorted by
    (timestamp, sensor); per-frame components get one row group per frame (built one at a
    time: a whole segment's range images are never copied into one table)."""
    schema = _SCHEMAS[component]
    keys = [c for c in (_TS, _CAM, _LASER) if c in schema.names]
    rows = sorted(rows, key=lambda row: tuple(row[c] for c in keys))
    groups = [rows] if component not in _PER_FRAME else [
        list(group) for _, group in groupby(rows, key=lambda row: row[_TS])]
    path = component_file(root, component, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f, pq.ParquetWriter(
            f, schema, use_dictionary=[_SEG], write_statistics=[_TS, _CAM, _LASER]) as writer:
        for group in groups:
            writer.write_table(_table(schema, group))
    return path


def write_v2_segment(root: Path, data: SegmentData) -> list[Path]:
    """Write every component file (`COMPONENTS`) of a segment under root; returns them."""
    rows: dict[str, list[dict[str, object]]] = {c: [] for c in COMPONENTS}
    segment = {_SEG: data.name}
    for cam in data.cameras:
        rows["camera_calibration"].append({
            **segment, _CAM: cam.name, **dict(zip(_INTRINSIC, map(float, cam.intrinsic),
                                                  strict=True)),
            _CAM_EXTRINSIC: _flat(cam.extrinsic), _CC + "width": cam.width,
            _CC + "height": cam.height,
            _CC + "rolling_shutter_direction": cam.rolling_shutter_direction})
    for laser in data.lasers:
        rows["lidar_calibration"].append({
            **segment, _LASER: laser.name, _LASER_EXTRINSIC: _flat(laser.extrinsic),
            **dict(zip(_INCLINATION, (laser.inclination_min, laser.inclination_max, None if
                       laser.inclinations is None else np.asarray(laser.inclinations, float)),
                       strict=True))})
    for frame in data.frames:
        key = {**segment, _TS: frame.meta.timestamp_us}
        rows["vehicle_pose"].append({**key, _VEHICLE_POSE: _flat(frame.meta.pose)})
        rows["stats"].append({**key, **_STATS})
        for cam in frame.meta.cameras:
            rows["camera_image"].append({
                **key, _CAM: cam.name, _IMAGE: frame.images[cam.name],
                _CAM_POSE: _flat(cam.pose), **dict(zip(_VELOCITY, cam.velocity, strict=True)),
                _CI + "pose_timestamp": cam.pose_timestamp,
                **dict(zip(_SHUTTER, (cam.shutter, cam.trigger_time, cam.readout_done_time),
                           strict=True))})
        for laser in frame.meta.lasers:
            ranges = frame.ranges[laser]
            rows["lidar"].append({**key, _LASER: laser, **_range_cells(_RETURN1, ranges.return1),
                                  **_range_cells(_RETURN2, ranges.return2)})
            if ranges.pose is not None:
                rows["lidar_pose"].append({**key, _LASER: laser,
                                           **_range_cells(_POSE_IMAGE, ranges.pose)})
    return [_write(root, data.name, c, rows[c]) for c in COMPONENTS]


# ---- reading -------------------------------------------------------------------------

def component_file(root: str | Path, component: str, name: str) -> Path:
    """`{root}/{component}/{segment}.parquet`, Waymo v2's layout."""
    return Path(root) / component / f"{name}.parquet"


def segment_names(root: Path) -> list[str]:
    """The segments under root (stems of `camera_image/*.parquet`), sorted."""
    return sorted(p.stem for p in (Path(root) / "camera_image").glob("*.parquet"))


class V2Segment:
    """A segment's v2 component files (the `Segment` protocol of records.py).

    Frames are vehicle_pose's timestamps, which must be exactly camera_image's; every
    lidar and lidar_pose row must fall on one of them. `file` is the dataroot; errors name
    the component file itself.
    """

    def __init__(self, root: Path, name: str, dataroot: Path | None = None):
        self.file = Path(root)
        self.name = name
        # every component file must lie inside it, symlinks followed
        self.dataroot = self.file if dataroot is None else Path(dataroot)
        self._cache: dict[str, tuple[int, pa.Table]] = {}
        self._files: dict[str, tuple[pq.ParquetFile, list[tuple[int, int] | None]]] = {}
        for component in REQUIRED:
            have = self._arrow(component, pq.read_schema)
            if missing := [c for c in _SCHEMAS[component].names if c not in have.names]:
                raise self._error(component, f"missing column(s) {', '.join(missing)}")
            for field in _SCHEMAS[component]:
                found = [f.type for f in have if f.name == field.name]
                if len(found) > 1 or not arrow_kind_matches(found[0], field.type):
                    raise self._error(component, f"column {field.name} is "
                                      f"{' and '.join(map(str, found))}, expected {field.type}")
        self.cameras: dict[int, CameraCalibration] = self._camera_calibrations()
        self.lasers: dict[int, LaserCalibration] = self._laser_calibrations()
        table = self._read("vehicle_pose", [_SEG, _TS, _VEHICLE_POSE])
        times = table.column(_TS).to_pylist()
        if len(set(times)) < len(times):
            raise self._error("vehicle_pose", "two rows share a frame timestamp")
        poses = dict(zip(times, self._matrices("vehicle_pose", table, _VEHICLE_POSE),
                         strict=True))
        cameras = self._camera_metas(poses.keys())
        if missing := sorted(poses.keys() - cameras.keys()):
            raise self._error("vehicle_pose", f"{len(missing)} row(s) have no camera_image "
                              f"row, e.g. timestamp {missing[0]}")
        lasers: dict[int, list[int]] = {}
        for ts, laser in self._keys("lidar", self._read("lidar", [_SEG, _TS, _LASER]),
                                    _LASER, poses.keys()):
            lasers.setdefault(ts, []).append(laser)
        self._posed = set(self._keys("lidar_pose", self._read("lidar_pose", [_SEG, _TS, _LASER]),
                                     _LASER, poses.keys()))
        self.frames: list[FrameMeta] = [
            FrameMeta(ts, poses[ts], tuple(sorted(cameras[ts], key=lambda c: c.name)),
                      tuple(sorted(lasers.get(ts, ())))) for ts in sorted(poses)]

    # -- helpers ---------------------------------------------------------------------

    def _path(self, component: str) -> Path:
        return component_file(self.file, component, self.name)

    def _error(self, component: str, problem: str) -> SceneDataError:
        return SceneDataError(self.name, self._path(component), problem)

    def _arrow(self, component: str, read: Callable[[Path], _T]) -> _T:
        """`read(path)` of a component's file, pyarrow's errors wrapped."""
        path = self._path(component)
        inside_root(self.dataroot, path.relative_to(self.dataroot), table=path,
                    record=f"segment {self.name}", scene=self.name)
        try:
            return read(path)
        except FileNotFoundError:
            raise self._error(component, f"missing component {component}: {path}") from None
        except (pa.ArrowException, OSError) as exc:
            raise self._error(component, f"not a readable Parquet file: {exc}") from exc

    def _read(self, component: str, columns: list[str] | None = None,
              timestamp: int | None = None) -> pa.Table:
        """Some columns (None: all) of a component, all rows or one frame's; checks that
        no row belongs to another segment and that only nullable columns hold nulls."""
        if timestamp is None:
            table = self._arrow(component, partial(pq.read_table, columns=columns))
        else:
            table = self._frame_table(component, columns, timestamp)
        for column in table.column_names:
            if column not in _NULLABLE and (nulls := table.column(column).null_count):
                raise self._error(component, f"column {column} holds {nulls} null(s)")
        if _SEG in table.column_names and (
                others := set(table.column(_SEG).to_pylist()) - {self.name}):
            raise self._error(component, f"rows of another segment: {sorted(others)}")
        return table

    def _frame_table(self, component: str, columns: list[str] | None,
                     timestamp: int) -> pa.Table:
        """One frame's rows: only the row groups whose timestamp statistics hold it are
        read, through the component's file opened once (its row groups indexed then)."""
        if component not in self._files:
            handle = self._arrow(component, pq.ParquetFile)
            meta = handle.metadata
            spans: list[tuple[int, int] | None] = []
            for g in range(meta.num_row_groups):
                group = meta.row_group(g)
                stats = next((group.column(c).statistics for c in range(group.num_columns)
                              if group.column(c).path_in_schema == _TS), None)
                spans.append((stats.min, stats.max) if stats is not None and stats.has_min_max
                             else None)
            self._files[component] = (handle, spans)
        handle, spans = self._files[component]
        groups = [g for g, span in enumerate(spans)
                  if span is None or span[0] <= timestamp <= span[1]]
        wanted = None if columns is None else list(dict.fromkeys([_TS, *columns]))
        table = self._arrow(component, lambda _: handle.read_row_groups(groups, wanted))
        return table.filter(pc.equal(table.column(_TS), timestamp))

    def _keys(self, component: str, table: pa.Table, sensor: str,
              frames: Collection[int] | None = None,
              ) -> list[tuple[int | None, int]]:
        """(timestamp or None, sensor enum) of every row: known enums, no duplicates and,
        given the frames' timestamps, timestamps among them."""
        names, kind = (CAMERA_NAMES, "camera") if sensor == _CAM else (LASER_NAMES, "laser")
        enums = table.column(sensor).to_pylist()
        times = [None] * len(enums) if frames is None else table.column(_TS).to_pylist()
        keys = list(zip(times, enums, strict=True))
        for ts, enum in keys:
            at = "" if ts is None else f" at timestamp {ts}"
            if enum not in names:
                known = ", ".join(f"{k}={v}" for k, v in names.items())
                raise self._error(component, f"unknown {kind} name enum {enum}{at} "
                                  f"(known: {known})")
            if frames is not None and ts not in frames:
                raise self._error(component, f"{kind} {names[enum]} row{at} has no "
                                  "vehicle_pose row")
        if len(set(keys)) < len(keys):
            key = kind if frames is None else f"(timestamp, {kind})"
            raise self._error(component, f"two rows share a {key} key")
        return keys

    def _matrices(self, component: str, table: pa.Table, column: str) -> np.ndarray:
        """(N, 4, 4) float64 of a column of 16-value transforms."""
        array = table.column(column).combine_chunks()
        if len(array) and pc.any(pc.not_equal(pc.list_value_length(array), 16)).as_py():
            raise self._error(component, f"column {column} holds a transform without 16 "
                              "values")
        return array.flatten().to_numpy().astype(np.float64).reshape(-1, 4, 4)

    def _camera_calibrations(self) -> dict[int, CameraCalibration]:
        table = self._read("camera_calibration")
        col = table.to_pydict()
        extrinsics = self._matrices("camera_calibration", table, _CAM_EXTRINSIC)
        return {cam: CameraCalibration(
            cam, np.array([col[c][i] for c in _INTRINSIC], dtype=np.float64), extrinsics[i],
            col[_CC + "width"][i], col[_CC + "height"][i],
            col[_CC + "rolling_shutter_direction"][i])
            for i, (_, cam) in enumerate(self._keys("camera_calibration", table, _CAM))}

    def _laser_calibrations(self) -> dict[int, LaserCalibration]:
        table = self._read("lidar_calibration")
        low, high, values = (table.column(c).to_pylist() for c in _INCLINATION)
        extrinsics = self._matrices("lidar_calibration", table, _LASER_EXTRINSIC)
        return {laser: LaserCalibration(
            laser, extrinsics[i], low[i], high[i],
            None if values[i] is None else np.array(values[i], dtype=np.float64))
            for i, (_, laser) in enumerate(self._keys("lidar_calibration", table, _LASER))}

    def _camera_metas(self, frames: Collection[int]) -> dict[int, list[CameraMeta]]:
        """Every camera_image row's metadata by timestamp (the image column is not read)."""
        table = self._read("camera_image", [c for c in _SCHEMAS["camera_image"].names
                                            if c != _IMAGE])
        col = table.to_pydict()
        poses = self._matrices("camera_image", table, _CAM_POSE)
        out: dict[int, list[CameraMeta]] = {}
        for i, (ts, cam) in enumerate(self._keys("camera_image", table, _CAM, frames)):
            out.setdefault(ts, []).append(CameraMeta(
                cam, poses[i], col[_CI + "pose_timestamp"][i],
                tuple(col[c][i] for c in _VELOCITY), *(col[c][i] for c in _SHUTTER)))
        return out

    def _frame_rows(self, component: str, columns: list[str] | None, frame: int) -> pa.Table:
        """One frame's rows of a component; the last frame read is kept per component."""
        ts = self.frames[frame].timestamp_us
        cached = self._cache.get(component)
        if cached is None or cached[0] != ts:
            cached = self._cache[component] = (ts, self._read(component, columns, ts))
        return cached[1]

    def _row(self, component: str, table: pa.Table, sensor: str, enum: int, frame: int) -> int:
        rows = np.flatnonzero(table.column(sensor).to_numpy() == enum)
        if not rows.size:
            names = CAMERA_NAMES if sensor == _CAM else LASER_NAMES
            raise self._error(component, f"no {names.get(enum, enum)} row at timestamp "
                              f"{self.frames[frame].timestamp_us}")
        return int(rows[0])

    def _range_image(self, component: str, table: pa.Table, row: int, prefix: str,
                     channels: int) -> np.ndarray | None:
        """A range image from its flattened values and shape (None when null)."""
        values = table.column(prefix + ".values")[row].values
        if values is None:
            return None
        shape = table.column(prefix + ".shape")[row].as_py()
        if (shape is None or len(shape) != 3 or shape[2] != channels or min(shape) < 0
                or int(np.prod(shape)) != len(values)):
            raise self._error(component, f"{prefix.split('.', 1)[1]} of laser "
                              f"{LASER_NAMES[table.column(_LASER)[row].as_py()]} at timestamp "
                              f"{table.column(_TS)[row].as_py()}: {len(values)} values do not "
                              f"fill shape {shape} (H, W, {channels})")
        return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(shape)

    # -- the Segment protocol ----------------------------------------------------------

    def jpeg(self, frame: int, camera: int) -> bytes:
        table = self._frame_rows("camera_image", [_CAM, _IMAGE], frame)
        return table.column(_IMAGE)[self._row("camera_image", table, _CAM, camera, frame)].as_py()

    def range_images(self, frame: int, laser: int) -> RangeImages:
        table = self._frame_rows("lidar", None, frame)
        row = self._row("lidar", table, _LASER, laser, frame)
        pose = None
        if (self.frames[frame].timestamp_us, laser) in self._posed:
            poses = self._frame_rows("lidar_pose", None, frame)
            pose = self._range_image("lidar_pose", poses,
                                     self._row("lidar_pose", poses, _LASER, laser, frame),
                                     _POSE_IMAGE, 6)
        first = self._range_image("lidar", table, row, _RETURN1, 4)
        assert first is not None  # _read refuses nulls in return 1
        return RangeImages(first, self._range_image("lidar", table, row, _RETURN2, 4), pose)

    def image_source(self, frame: int, camera: int) -> Path:
        return image_source(component_file(self.file, "camera_image", self.name), camera,
                            self.frames[frame].timestamp_us)

    def laser_source(self, frame: int, laser: int) -> Path:
        return laser_source(component_file(self.file, "lidar", self.name), laser,
                            self.frames[frame].timestamp_us)
