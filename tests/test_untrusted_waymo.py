"""Waymo's files and tables are untrusted input as nuScenes' are (test_untrusted_tables.py):
a component or TFRecord symlinked out of the dataroot is refused, malformed Parquet
columns are named errors naming the component and the field, and generated mutations of
a tiny v2 dataset (slow) never see anything but the project's errors."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distillprep.scenes.datasets import read_dataset
from distillprep.scenes.errors import DistillprepError, PathOutsideRootError
from distillprep.scenes.synthetic.generate import SynthConfig, generate
from distillprep.storage_schemas.ingest import scene_payload

WAYMO = SynthConfig(scenes=2, frames=1, width=32, height=24, supersample=1, workers=1, seed=5,
                    lidar_beams=8)


@pytest.fixture(scope="module")
def waymo_v2(tmp_path_factory) -> Path:
    """A tiny Waymo v2 dataset (read-only: `_waymo_copy` it)."""
    root = tmp_path_factory.mktemp("untrusted_waymo") / "v2"
    generate(root, "waymo-v2", WAYMO)
    return root


def _waymo_copy(waymo_v2: Path) -> Path:
    root = waymo_v2.parent / "copies" / uuid.uuid4().hex[:8]
    shutil.copytree(waymo_v2, root, ignore=shutil.ignore_patterns("ground_truth"))
    return root


def test_a_waymo_v2_component_symlinked_out_of_the_dataroot_is_refused(waymo_v2):
    root = _waymo_copy(waymo_v2)
    component = root / "training" / "lidar" / "scene-0001.parquet"
    outside = root.parent / f"{root.name}-outside.parquet"
    component.rename(outside)
    component.symlink_to(outside)
    read = read_dataset("waymo", str(root), skip_bad=True)
    assert [s.scene_id for s in read.scenes] == ["scene-0002"]
    error = read.failures[0].error
    assert isinstance(error, PathOutsideRootError) and "lidar" in error.file


def _set_column(path: Path, column: str, values) -> None:
    """Replace a column of a Parquet file (values: an arrow array or a Python list)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    array = values if isinstance(values, pa.Array) else pa.array(values)
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, array), path)


@pytest.mark.parametrize("component, column, value, fragments", [
    ("vehicle_pose", "key.frame_timestamp_micros", "yesterday",
     ("vehicle_pose", "key.frame_timestamp_micros", "expected int64")),
    ("camera_image", "[CameraImageComponent].pose_timestamp", float("nan"),
     ("camera_image", "pose_timestamp nan s is not a plausible time")),
    ("camera_calibration", "[CameraCalibrationComponent].width", -32,
     ("camera FRONT calibration", "'width' is -32, outside the plausible range")),
])
def test_a_malformed_waymo_v2_column_names_component_and_field(waymo_v2, component, column,
                                                               value, fragments):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = _waymo_copy(waymo_v2)
    path = root / "training" / component / "scene-0001.parquet"
    rows = pq.read_metadata(path).num_rows
    kind = None if isinstance(value, str) else pq.read_schema(path).field(column).type
    _set_column(path, column, pa.array([value] * rows, kind))
    read = read_dataset("waymo", str(root), skip_bad=True)
    assert [s.scene_id for s in read.scenes] == ["scene-0002"]
    message = str(read.failures[0].error)
    for fragment in fragments:
        assert fragment in message, message


_WAYMO_EDITS = st.tuples(
    st.sampled_from(["camera_image", "camera_calibration", "lidar", "lidar_pose",
                     "lidar_calibration", "vehicle_pose"]),
    st.integers(0, 1000),
    st.sampled_from(["strings", "nulls", "huge", "negative", "nan", "drop_column",
                     "no_rows", "duplicate_rows"]))


def _mutate_parquet(path: Path, column_index: int, kind: str) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    i = column_index % table.num_columns
    name, rows, kind_of = table.column_names[i], len(table), table.schema.field(i).type
    if kind == "drop_column":
        table = table.remove_column(i)
    elif kind == "no_rows":
        table = table.slice(0, 0)
    elif kind == "duplicate_rows":
        table = pa.concat_tables([table, table])
    elif kind == "strings":
        table = table.set_column(i, name, pa.array(["\u202e"] * rows))
    elif kind == "nulls":
        table = table.set_column(i, name, pa.nulls(rows, kind_of))
    elif pa.types.is_integer(kind_of) or pa.types.is_floating(kind_of):
        value = {"huge": 2**62 if pa.types.is_integer(kind_of) else 1e300, "negative": -1,
                 "nan": 0 if pa.types.is_integer(kind_of) else float("nan")}[kind]
        table = table.set_column(i, name, pc.cast(pa.array([value] * rows), kind_of,
                                                  safe=False))
    pq.write_table(table, path)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(_WAYMO_EDITS, min_size=1, max_size=2))
def test_mutated_waymo_v2_tables_raise_only_named_errors(waymo_v2, edits):
    root = _waymo_copy(waymo_v2)
    try:
        for component, column, kind in edits:
            _mutate_parquet(root / "training" / component / "scene-0001.parquet", column, kind)
        try:
            read = read_dataset("waymo", str(root), skip_bad=True)
        except DistillprepError:
            return
        for scene in read.scenes:
            with contextlib.suppress(DistillprepError):
                scene_payload(scene)
    finally:
        shutil.rmtree(root)


@pytest.mark.slow
def test_a_waymo_v1_tfrecord_symlinked_out_of_the_dataroot_is_refused(tmp_path):
    root = tmp_path / "v1"
    generate(root, "waymo-v1", WAYMO)
    from distillprep.scenes.waymo.v1 import segment_files

    record = segment_files(root)[0]
    outside = tmp_path / "outside.tfrecord"
    record.rename(outside)
    record.symlink_to(outside)
    read = read_dataset("waymo", str(root), skip_bad=True)
    assert [s.scene_id for s in read.scenes] == ["scene-0002"]
    assert isinstance(read.failures[0].error, PathOutsideRootError)
