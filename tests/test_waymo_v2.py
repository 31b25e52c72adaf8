"""Waymo v2 (Parquet components) without TensorFlow: round trip, layout, reads, errors."""

import io
from dataclasses import fields, is_dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from distillprep.scenes.errors import SceneDataError
from distillprep.scenes.waymo.records import (
    GLOBAL_SHUTTER,
    CameraCalibration,
    CameraMeta,
    FrameData,
    FrameMeta,
    LaserCalibration,
    RangeImages,
    SegmentData,
)
from distillprep.scenes.waymo.v2 import (
    COMPONENTS,
    REQUIRED,
    V2Segment,
    segment_names,
    write_v2_segment,
)

NAME = "10017090168044687777_6380_000_6400_000"
T0 = 1_557_000_000_000_000
CI, LI = "[CameraImageComponent].", "[LiDARComponent]."


def _pose(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    out = np.eye(4)
    out[:3, :3] = q * np.sign(np.linalg.det(q))
    out[:3, 3] = rng.normal(size=3) * 10.0
    return out


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buffer, "JPEG")
    return buffer.getvalue()


def _range(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    return rng.uniform(-1.0, 75.0, size=(h, w, c)).astype(np.float32)


def _segment(name: str = NAME, seed: int = 0) -> SegmentData:
    """2 frames; cameras FRONT and SIDE_LEFT; TOP (pose image, 2 returns, listed
    inclinations) and FRONT (1 return, uniform inclinations)."""
    rng = np.random.default_rng(seed)
    cams = (CameraCalibration(1, rng.normal(size=9), _pose(rng), 8, 6, 2),
            CameraCalibration(4, rng.normal(size=9), _pose(rng), 8, 6, GLOBAL_SHUTTER))
    lasers = (LaserCalibration(1, _pose(rng), -0.31, 0.04, np.sort(rng.uniform(-0.3, 0, 8))),
              LaserCalibration(2, _pose(rng), -1.2, 0.5, None))
    frames = []
    for k in range(2):
        ts = T0 + k * 100_000
        metas = tuple(CameraMeta(
            c.name, _pose(rng), ts / 1e6 + 0.01 * c.name,
            tuple(float(v) for v in rng.normal(size=3).astype(np.float32))  # float32 column
            + tuple(float(v) for v in rng.normal(size=3)),
            0.004 * k, ts / 1e6 + 0.002 * c.name, ts / 1e6 + 0.03 * c.name) for c in cams)
        images = {c.name: _jpeg((100 * k, 40 * c.name, 200)) for c in cams}
        ranges = {1: RangeImages(_range(rng, 8, 16, 4), _range(rng, 8, 16, 4),
                                 _range(rng, 8, 16, 6)),
                  2: RangeImages(_range(rng, 4, 10, 4), None, None)}
        frames.append(FrameData(FrameMeta(ts, _pose(rng), metas, (1, 2)), images, ranges))
    return SegmentData(name, cams, lasers, tuple(frames))


def _same(a, b, where: str = "") -> None:
    """Exact equality of records: same types, dtypes, shapes and values."""
    assert type(a) is type(b), where
    if is_dataclass(a):
        for f in fields(a):
            _same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, np.ndarray):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert np.array_equal(a, b), where
    elif isinstance(a, tuple | list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}[{key}]")
    else:
        assert a == b, where


def _file(root: Path, component: str) -> Path:
    return root / component / f"{NAME}.parquet"


@pytest.fixture
def written(tmp_path) -> tuple[Path, SegmentData]:
    data = _segment()
    paths = write_v2_segment(tmp_path, data)
    assert paths == [_file(tmp_path, c) for c in COMPONENTS]
    return tmp_path, data


def test_round_trip(written):
    root, data = written
    seg = V2Segment(root, NAME)
    assert (seg.name, seg.file) == (NAME, root)
    _same(seg.cameras, {c.name: c for c in data.cameras})
    _same(seg.lasers, {c.name: c for c in data.lasers})
    _same(seg.frames, [f.meta for f in data.frames])
    assert seg.lasers[2].inclinations is None and seg.lasers[1].inclinations is not None
    for i, frame in enumerate(data.frames):
        for cam in (4, 1):
            assert seg.jpeg(i, cam) == frame.images[cam]
        for laser in (2, 1):
            _same(seg.range_images(i, laser), frame.ranges[laser])
    assert seg.range_images(1, 1).pose is not None and seg.range_images(1, 2).pose is None
    assert seg.image_source(1, 4) == seg.file / Path(
        f"camera_image/{NAME}.parquet/SIDE_LEFT/{T0 + 100_000}.jpg")
    assert seg.laser_source(0, 2) == seg.file / Path(f"lidar/{NAME}.parquet/FRONT/{T0}")


def test_writer_sorts_rows(tmp_path):
    data = _segment()
    shuffled = tuple(FrameData(replace(f.meta, cameras=f.meta.cameras[::-1],
                                       lasers=f.meta.lasers[::-1]), f.images, f.ranges)
                     for f in data.frames[::-1])
    write_v2_segment(tmp_path, replace(data, frames=shuffled,
                                       cameras=data.cameras[::-1], lasers=data.lasers[::-1]))
    t1 = T0 + 100_000
    for component, sensor, keys in (
            ("camera_image", "key.camera_name", [(T0, 1), (T0, 4), (t1, 1), (t1, 4)]),
            ("lidar", "key.laser_name", [(T0, 1), (T0, 2), (t1, 1), (t1, 2)]),
            ("lidar_pose", "key.laser_name", [(T0, 1), (t1, 1)])):
        table = pq.read_table(_file(tmp_path, component))
        assert list(zip(table.column("key.frame_timestamp_micros").to_pylist(),
                        table.column(sensor).to_pylist(), strict=True)) == keys
        assert pq.ParquetFile(_file(tmp_path, component)).metadata.num_row_groups == 2
    table = pq.read_table(_file(tmp_path, "camera_calibration"))
    assert table.column("key.camera_name").to_pylist() == [1, 4]
    _same(V2Segment(tmp_path, NAME).frames, [f.meta for f in data.frames])


KEYS = [("key.segment_context_name", pa.string()), ("key.frame_timestamp_micros", pa.int64())]
M16 = pa.list_(pa.float64(), 16)


def _ranges(prefix: str, *returns: str) -> list:
    return [x for r in returns for x in (
        (f"{prefix}{r}.values", pa.list_(pa.float32())),
        (f"{prefix}{r}.shape", pa.list_(pa.int32(), 3)))]


EXPECTED = {
    "camera_image": [*KEYS, ("key.camera_name", pa.int8()), (CI + "image", pa.binary()),
                     (CI + "pose.transform", M16),
                     *((f"{CI}velocity.linear_velocity.{a}", pa.float32()) for a in "xyz"),
                     *((f"{CI}velocity.angular_velocity.{a}", pa.float64()) for a in "xyz"),
                     (CI + "pose_timestamp", pa.float64()),
                     (CI + "rolling_shutter_params.shutter", pa.float64()),
                     (CI + "rolling_shutter_params.camera_trigger_time", pa.float64()),
                     (CI + "rolling_shutter_params.camera_readout_done_time", pa.float64())],
    "camera_calibration": [
        ("key.segment_context_name", pa.string()), ("key.camera_name", pa.int8()),
        *((f"[CameraCalibrationComponent].intrinsic.{p}", pa.float64())
          for p in ("f_u", "f_v", "c_u", "c_v", "k1", "k2", "p1", "p2", "k3")),
        ("[CameraCalibrationComponent].extrinsic.transform", M16),
        ("[CameraCalibrationComponent].width", pa.int32()),
        ("[CameraCalibrationComponent].height", pa.int32()),
        ("[CameraCalibrationComponent].rolling_shutter_direction", pa.int8())],
    "lidar": [*KEYS, ("key.laser_name", pa.int8()),
              *_ranges(LI, "range_image_return1", "range_image_return2")],
    "lidar_pose": [*KEYS, ("key.laser_name", pa.int8()),
                   *_ranges("[LiDARPoseComponent].", "range_image_return1")],
    "lidar_calibration": [
        ("key.segment_context_name", pa.string()), ("key.laser_name", pa.int8()),
        ("[LiDARCalibrationComponent].extrinsic.transform", M16),
        ("[LiDARCalibrationComponent].beam_inclination.min", pa.float64()),
        ("[LiDARCalibrationComponent].beam_inclination.max", pa.float64()),
        ("[LiDARCalibrationComponent].beam_inclination.values", pa.list_(pa.float64()))],
    "vehicle_pose": [*KEYS, ("[VehiclePoseComponent].world_from_vehicle.transform", M16)],
    "stats": [*KEYS, ("[StatsComponent].time_of_day", pa.string()),
              ("[StatsComponent].location", pa.string()),
              ("[StatsComponent].weather", pa.string())],
}


def test_columns_and_types(written):
    root, _ = written
    assert sorted(COMPONENTS) == sorted(EXPECTED)
    assert sorted(REQUIRED) == sorted(c for c in EXPECTED if c != "stats")
    for component, expected in EXPECTED.items():
        schema = pq.read_schema(_file(root, component))
        assert [(f.name, f.type) for f in schema] == expected, component
    stats = pq.read_table(_file(root, "stats")).to_pylist()
    assert [row["[StatsComponent].weather"] for row in stats] == ["sunny", "sunny"]
    assert {row["key.segment_context_name"] for row in stats} == {NAME}


def test_segment_names(tmp_path):
    assert segment_names(tmp_path) == []
    for name in ("seg_b", "seg_a"):
        write_v2_segment(tmp_path, _segment(name))
    (tmp_path / "camera_image" / "notes.txt").write_text("not a segment")
    assert segment_names(tmp_path) == ["seg_a", "seg_b"]


def _smash_images(path: Path, row_groups: list[int]) -> None:
    """Overwrite the image column chunk of some row groups with garbage."""
    meta = pq.ParquetFile(path).metadata
    raw = bytearray(path.read_bytes())
    for g in row_groups:
        chunk = meta.row_group(g).column(meta.schema.names.index(CI + "image"))
        start = chunk.dictionary_page_offset or chunk.data_page_offset
        raw[start:start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    path.write_bytes(bytes(raw))


def test_open_skips_images_and_jpeg_reads_one_frame(written):
    root, data = written
    _smash_images(_file(root, "camera_image"), [0])
    seg = V2Segment(root, NAME)  # column projection: the image column is not read
    _same(seg.frames, [f.meta for f in data.frames])
    assert seg.jpeg(1, 4) == data.frames[1].images[4]  # row filter: row group 0 is skipped
    with pytest.raises(SceneDataError, match="not a readable Parquet file"):
        seg.jpeg(0, 1)


def test_last_frame_is_cached(written, monkeypatch):
    """A frame's sensors read in turn cost one read per component (counted on the real
    pyarrow call)."""
    root, data = written
    seg = V2Segment(root, NAME)
    calls = []
    real = pq.ParquetFile.read_row_groups

    def counted(self, *args, **kwargs):
        calls.append(args[0])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", counted)
    for camera in (1, 4, 1):
        assert seg.jpeg(0, camera) == data.frames[0].images[camera]
    for laser in (1, 2, 1):
        _same(seg.range_images(0, laser), data.frames[0].ranges[laser])
    assert len(calls) == 3  # camera_image, lidar, lidar_pose
    assert seg.jpeg(1, 1) == data.frames[1].images[1]
    assert len(calls) == 4 and calls[-1] == [1]  # frame 1's row group alone


def _set(column: str, row: int, value):
    def change(table: pa.Table) -> pa.Table:
        values = table.column(column).to_pylist()
        values[row] = value
        i = table.schema.get_field_index(column)
        return table.set_column(i, table.field(i), pa.array(values, table.field(i).type))
    return change


T1 = T0 + 100_000
CASES = {
    # id: (changed component, change, blamed component, problem, raised by)
    "missing component": ("lidar_pose", "delete", "lidar_pose",
                          "missing component lidar_pose: ", "open"),
    "missing column": ("lidar_calibration", lambda t: t.drop_columns(
        ["[LiDARCalibrationComponent].beam_inclination.min"]), "lidar_calibration",
        "missing column(s) [LiDARCalibrationComponent].beam_inclination.min", "open"),
    "unknown camera": ("camera_image", _set("key.camera_name", 1, 9), "camera_image",
                       f"unknown camera name enum 9 at timestamp {T0} (known: 1=FRONT, 2=", "open"),
    "unknown laser": ("lidar_calibration", _set("key.laser_name", 0, 9), "lidar_calibration",
                      "unknown laser name enum 9 (known: 1=TOP, ", "open"),
    "duplicate camera": ("camera_image", _set("key.camera_name", 1, 1), "camera_image",
                         "two rows share a (timestamp, camera) key", "open"),
    "no vehicle pose": ("vehicle_pose", lambda t: t.slice(0, 1), "camera_image",
                        f"camera FRONT row at timestamp {T1} has no vehicle_pose row", "open"),
    "no camera image": ("camera_image", lambda t: t.slice(0, 2), "vehicle_pose",
                        f"1 row(s) have no camera_image row, e.g. timestamp {T1}", "open"),
    "other segment": ("vehicle_pose", _set("key.segment_context_name", 1, "other"),
                      "vehicle_pose", "rows of another segment: ['other']", "open"),
    "null": ("camera_calibration", _set("[CameraCalibrationComponent].width", 0, None),
             "camera_calibration", "column [CameraCalibrationComponent].width holds 1 null",
             "open"),
    "not parquet": ("camera_calibration", "garbage", "camera_calibration",
                    "not a readable Parquet file: ", "open"),
    "wrong shape": ("lidar", _set(LI + "range_image_return1.shape", 0, [8, 15, 4]), "lidar",
                    f"range_image_return1 of laser TOP at timestamp {T0}: 512 values do not "
                    "fill shape [8, 15, 4]", "read"),
    "wrong pose shape": ("lidar_pose", _set("[LiDARPoseComponent].range_image_return1.shape",
                                            0, [8, 16, 4]), "lidar_pose",
                         "768 values do not fill shape [8, 16, 4] (H, W, 6)", "read"),
}


@pytest.mark.parametrize("case", CASES)
def test_errors_name_segment_file_and_problem(written, case):
    root, _ = written
    changed, change, blamed, problem, raised_by = CASES[case]
    path = _file(root, changed)
    if change == "delete":
        path.unlink()
    elif change == "garbage":
        path.write_bytes(b"this is not a parquet file" * 10)
    else:
        pq.write_table(change(pq.read_table(path)), path)
    with pytest.raises(SceneDataError) as caught:
        V2Segment(root, NAME).range_images(0, 1)
    error = caught.value
    assert (error.scene, error.file) == (NAME, str(_file(root, blamed)))
    assert problem in error.problem
    assert NAME in str(error) and str(_file(root, blamed)) in str(error)
    if raised_by == "read":
        V2Segment(root, NAME)  # opening does not read range images
