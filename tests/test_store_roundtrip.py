"""What is written is read back bit-identically; commits replace cleanly; ingest is
resumable; opening is read-only by default."""

from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from store_helpers import (
    ingest_arrays,
    ingest_provenance,
    manifest,
    rigid_poses,
    scene_attrs,
    teacher_arrays,
    teacher_record,
)

from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.scenes.projection import sparse_depth_map
from distillprep.storage_schemas import store as store_module
from distillprep.storage_schemas.errors import SceneIncompleteError, SchemaViolationError
from distillprep.storage_schemas.ingest import IngestConfig, ingest
from distillprep.storage_schemas.reader import SceneReader, iter_samples, read_sample
from distillprep.storage_schemas.spec import ARRAYS
from distillprep.storage_schemas.store import create_store, open_store

# Arrays of every kind, written as a scene's ingest and teacher stages; small for speed.
_KINDS = ("lidar_depth", "teacher_depth", "teacher_opacity", "rgb_jpeg", "intrinsics",
          "timestamp_us", "camera_index", "frame_index", "frame_timestamp_us", "lidar_points",
          "lidar_intensity")


def _arrays_strategy():
    dims = st.fixed_dictionaries({"N": st.integers(1, 5), "H": st.integers(1, 6),
                                  "W": st.integers(1, 6), "J": st.integers(4, 40),
                                  "Ht": st.integers(1, 4), "Wt": st.integers(1, 4),
                                  "P": st.integers(0, 70)})

    def build(d):
        d = {**d, "F": d["N"]}
        arrays = {}
        for name in _KINDS:
            spec = ARRAYS[name]
            shape = tuple(d[x] if isinstance(x, str) else x for x in spec.shape)
            dtype = np.dtype(spec.dtype)
            if dtype.kind == "f":
                elements = st.floats(-1e4, 1e4, width=dtype.itemsize * 8,
                                     allow_nan=False, allow_infinity=False)
            else:
                elements = st.integers(0, min(np.iinfo(dtype).max, 10**12))
            arrays[name] = hnp.arrays(dtype, shape, elements=elements)
        return st.tuples(st.just(d), st.fixed_dictionaries(arrays))

    return dims.flatmap(build)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(payload=_arrays_strategy())
def test_random_arrays_of_every_kind_read_back_bit_identically(tmp_path_factory, payload):
    dims, arrays = payload
    n, p = dims["N"], dims["P"]
    rng = np.random.default_rng(0)
    arrays.update(cam_to_world=rigid_poses(n, rng), ego_to_world=rigid_poses(dims["F"], rng),
                  rgb_jpeg_nbytes=np.full(n, 4, dtype=np.int64),
                  frame_is_keyframe=np.ones(n, np.uint8),
                  lidar_sweep_points=np.array([p], np.int64),
                  lidar_sensor_to_world=rigid_poses(1, rng),
                  lidar_timestamp_us=np.zeros(1, np.int64),
                  lidar_frame_index=np.zeros(1, np.int32),
                  lidar_is_keyframe=np.ones(1, np.uint8),
                  lidar_sensor_index=np.zeros(1, np.int16))
    drawn = {k: arrays.pop(k) for k in ("teacher_depth", "teacher_opacity")}
    teacher = {**teacher_arrays(n, 0, size=(dims["Ht"], dims["Wt"])), **drawn}
    path = tmp_path_factory.mktemp("rt") / "s.zarr"
    store = create_store(path, "synthetic", "v0")
    store.write_scene(scene_attrs("s", n, dims["F"], dims["H"], dims["W"]), arrays,
                      manifest("s", n, arrays), ingest_provenance())
    store.commit_stage("s", teacher_record(store, "s"), teacher)
    view = open_store(path).scene("s")
    for name, data in {**arrays, **teacher}.items():
        back = view[name][...]
        assert back.dtype == data.dtype and back.shape == data.shape
        assert back.tobytes() == data.tobytes(), name  # float16 exactly as stored


def test_write_refuses_data_that_breaks_the_schema(tmp_path):
    store = create_store(tmp_path / "s.zarr", "synthetic", "v0")
    arrays = {**ingest_arrays(3, 2, 2), "timestamp_us": np.zeros(3, dtype=np.float32)}
    with pytest.raises(SchemaViolationError, match="timestamp_us: dtype float32.*int64"):
        store.write_scene(scene_attrs("s", 3, 3, 2, 2), arrays, manifest("s", 3, arrays),
                          ingest_provenance())
    assert store.scenes() == []


def test_ingested_samples_equal_the_reader(small_store, small_dataset):
    scene = read_nuscenes(small_dataset, scenes=["scene-0002"]).scenes[0]
    expected = scene.camera_samples
    reader = SceneReader(open_store(small_store), "scene-0002")
    assert len(reader) == len(expected) == 18
    for got, want in zip(reader, expected, strict=True):
        np.testing.assert_array_equal(got["rgb"], want.load_image())
        assert got["camera"] == want.camera and got["timestamp_us"] == want.timestamp_us
        np.testing.assert_array_equal(got["cam_to_world"], want.cam_to_world)
        np.testing.assert_array_equal(got["intrinsics"], want.intrinsics)
        frame = scene.frames[got["frame_index"]]
        np.testing.assert_array_equal(got["ego_to_world"], frame.ego_to_world)
        depth = sparse_depth_map(want, frame.lidar_points().points).astype(np.float16)
        np.testing.assert_array_equal(got["lidar_depth"], depth)
    one = read_sample(small_store, "scene-0002", 7)
    np.testing.assert_array_equal(one["rgb"], expected[7].load_image())


def test_stored_jpeg_bytes_are_the_source_files(small_store, small_dataset):
    store = open_store(small_store)
    attrs = store.scene_attrs("scene-0001")
    group = store.scene("scene-0001")
    nbytes = group["rgb_jpeg_nbytes"][...]
    rows = store.manifest(["scene-0001"]).to_pylist()
    for row in rows[:6]:
        data = group["rgb_jpeg"][row["sample_index"]][: nbytes[row["sample_index"]]]
        assert data.tobytes() == (small_dataset / row["source_file"]).read_bytes()
    assert {s.path for s in attrs.source_files} >= {r["source_file"] for r in rows}


def test_manifest_rows_and_iteration_order(small_store):
    store = open_store(small_store)
    table = store.manifest()
    assert table.num_rows == 36
    assert set(table.column("scene_id").to_pylist()) == {"scene-0001", "scene-0002"}
    order = [(s["scene_id"], s["sample_index"]) for s in iter_samples(store)]
    assert order == sorted(order)
    fractions = np.array(table.column("lidar_depth_valid_fraction").to_pylist())
    assert np.all((fractions > 0) & (fractions < 1))
    assert all(table.column("has_rgb_jpeg").to_pylist())
    assert not any(table.column("has_teacher_depth").to_pylist())


def test_ingest_is_resumable_and_force_replaces_cleanly(small_dataset, tmp_path,
                                                        monkeypatch):
    read = read_nuscenes(small_dataset)
    config = IngestConfig("nuscenes", read.version)
    store = create_store(tmp_path / "s.zarr", "nuscenes", read.version)
    first = ingest(store, read.scenes[:1], config)
    assert first.written == ["scene-0001"]
    second = ingest(store, read.scenes, config)
    assert second.skipped == ["scene-0001"] and second.written == ["scene-0002"]
    before = store.head("scene-0001", "ingest")
    forced = ingest(store, read.scenes[:1], config, force=True)
    assert forced.written == ["scene-0001"] and forced.stale == {}
    after = store.head("scene-0001", "ingest")
    assert after.attempt != before.attempt and after.sequence == before.sequence + 1
    assert after.content_sha256 == before.content_sha256  # the same data again
    # the superseded version stays for its readers until SUPERSEDED_GRACE has passed
    assert store.location.children("scenes/scene-0001/ingest") == sorted(
        [before.attempt, after.attempt, "zarr.json"])
    monkeypatch.setattr(store_module, "SUPERSEDED_GRACE", timedelta(0))
    forced = ingest(store, read.scenes[:1], config, force=True)
    last = store.head("scene-0001", "ingest")
    assert store.location.children("scenes/scene-0001/ingest") == sorted(
        [last.attempt, "zarr.json"])
    assert store.location.children("manifest/scene-0001/ingest") == [
        f"{last.attempt}.parquet"]
    # another config (with the sweeps) is not the scene that is there: it is written
    with_sweeps = ingest(store, read_nuscenes(small_dataset, sweeps=True).scenes[:1],
                         IngestConfig("nuscenes", read.version, sweeps=True))
    assert with_sweeps.written == ["scene-0001"]
    assert store.scene_attrs("scene-0001").num_frames == 5


def test_ingest_keeps_every_lidar_sweep_with_its_pose(small_dataset, tmp_path):
    """The store holds what a teacher needs, so nothing reads the dataroot again: every
    sweep's points as the dataset stored them, with its own pose and time."""
    from distillprep.storage_schemas.stored_scene import load_scene

    read = read_nuscenes(small_dataset, scenes=["scene-0002"], sweeps=True)
    store = create_store(tmp_path / "s.zarr", "nuscenes", read.version)
    ingest(store, read.scenes, IngestConfig("nuscenes", read.version, sweeps=True))
    stored, original = load_scene(store, "scene-0002"), read.scenes[0]
    assert stored.camera_names == original.camera_names
    assert len(stored.frames) == len(original.frames) == 5
    for a, b in zip(stored.frames, original.frames, strict=True):
        assert (a.timestamp_us, a.is_keyframe) == (b.timestamp_us, b.is_keyframe)
        np.testing.assert_array_equal(a.ego_to_world, b.ego_to_world)
        assert [s.timestamp_us for s in a.lidar] == [s.timestamp_us for s in b.lidar]
        for x, y in zip(a.lidar, b.lidar, strict=True):
            np.testing.assert_array_equal(x.sensor_to_world, y.sensor_to_world)
        got, want = a.lidar_points(), b.lidar_points()
        np.testing.assert_array_equal(got.points, want.points)
        np.testing.assert_array_equal(got.origins, want.origins)
        np.testing.assert_array_equal(got.intensity, want.intensity)
    for x, y in zip(stored.camera_samples, original.camera_samples, strict=True):
        assert (x.camera, x.timestamp_us, x.is_keyframe) == (y.camera, y.timestamp_us,
                                                             y.is_keyframe)
        np.testing.assert_array_equal(x.cam_to_world, y.cam_to_world)
        np.testing.assert_array_equal(x.intrinsics, y.intrinsics)
        np.testing.assert_array_equal(x.load_image(), y.load_image())


def test_open_is_read_only_by_default(small_store):
    store = open_store(small_store)
    with pytest.raises(PermissionError):
        store.delete_scene("scene-0001")
    with pytest.raises(SceneIncompleteError, match="not in store"):
        store.scene("scene-9999")


def test_store_refuses_another_dataset(small_store):
    from distillprep.storage_schemas.errors import StoreError

    with pytest.raises(StoreError, match="holds nuscenes"):
        create_store(small_store, "waymo", "v2")


def test_preview_pngs_of_a_store(small_store, tmp_path):
    from distillprep.storage_schemas.inspect import (
        LABEL_HEIGHT,
        labelled,
        summarize,
        write_previews,
    )

    store = open_store(small_store)
    paths = write_previews(store, "scene-0001", tmp_path, samples=3)
    assert len(paths) == 3
    image = np.asarray(Image.open(paths[0]))
    # RGB and LiDAR depth side by side, each under a caption band naming it
    assert image.shape[:2] == (108 + LABEL_HEIGHT, 2 * 192) and image.std() > 10
    for i, caption in enumerate(("RGB", "LiDAR depth")):
        band = labelled(np.zeros((1, 192, 3), np.uint8), caption)[:LABEL_HEIGHT]
        assert band.max() > 200  # the caption is drawn, and it is this one
        np.testing.assert_array_equal(image[:LABEL_HEIGHT, 192 * i:192 * (i + 1)], band)
    summary = summarize(store)
    assert summary["samples"] == 36
    assert summary["arrays"]["lidar_depth"]["compression_ratio"] > 1.5


@pytest.mark.parametrize("writer, reader", [("python", "zarrs"), ("zarrs", "python"),
                                            ("python", "python")])
def test_codec_pipelines_write_and_read_the_same_bytes(small_dataset, small_store, tmp_path,
                                                       monkeypatch, writer, reader):
    """zarrs is the fast path; zarr-python's own pipeline is the tested fallback: each
    reads what the other wrote, bit for bit."""
    from distillprep.storage_schemas import codec_pipeline

    read = read_nuscenes(small_dataset, scenes=["scene-0001"])
    monkeypatch.setenv("DISTILLPREP_CODEC_PIPELINE", writer)
    store = create_store(tmp_path / "s.zarr", "nuscenes", read.version)
    assert codec_pipeline.active() == writer
    ingest(store, read.scenes, IngestConfig("nuscenes", read.version))
    monkeypatch.setenv("DISTILLPREP_CODEC_PIPELINE", reader)
    ours = open_store(tmp_path / "s.zarr")
    assert codec_pipeline.active() == reader
    reference = open_store(small_store)
    for name in ("rgb_jpeg", "lidar_depth", "cam_to_world"):
        np.testing.assert_array_equal(ours.scene("scene-0001")[name][...],
                                      reference.scene("scene-0001")[name][...])
    monkeypatch.delenv("DISTILLPREP_CODEC_PIPELINE")
    codec_pipeline.use()
