"""A dataset's tables are untrusted input: whatever they hold, the readers raise the
project's errors (never a traceback), read no file outside the dataroot, and let the other
scenes go on. Generated mutations (Hypothesis) of a tiny synthetic nuScenes dataset and
hand-picked regressions of each finding of issue 28 (Waymo's: test_untrusted_waymo.py)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distillprep.flows.cli import main as cli
from distillprep.scenes.datasets import list_scenes, read_dataset
from distillprep.scenes.errors import (
    DistillprepError,
    InvalidSceneIdError,
    PathOutsideRootError,
    SceneDataError,
)
from distillprep.scenes.ids import validate_scene_id
from distillprep.scenes.nuscenes import TABLES, read_nuscenes
from distillprep.scenes.synthetic.generate import SynthConfig, generate
from distillprep.storage_schemas.ingest import scene_payload

VERSION = "v1.0-mini"
TINY = SynthConfig(scenes=2, frames=2, width=64, height=36, sweeps=0, seed=5, supersample=1,
                   workers=1)
SECRET = np.full(40, 31337.25, dtype=np.float32).tobytes()
"""The outside file's bytes: a valid LiDAR file (8 points of 5 float32), so that a reader
that opened it would store it, and a value that no synthetic point has."""
DEEP = "__deeply_nested__"
"""A value replaced, in the written JSON, by lists nested 100,000 deep."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The tiny dataset (read-only) and, beside it, the outside file `secret.pcd.bin`."""
    base = tmp_path_factory.mktemp("untrusted")
    generate(base / "nuscenes", "nuscenes", TINY)
    (base / "outside").mkdir()
    (base / "outside" / "secret.pcd.bin").write_bytes(SECRET)
    return base / "nuscenes"


_counter = itertools.count()


def _dataroot(tiny: Path, tables: dict[str, object] | None = None) -> Path:
    """A fresh dataroot beside the tiny one: its own table folder (`tables`: name -> what
    to write as JSON, a str written as it is), sensor files hard-linked (a symlinked folder
    leads out of the root and would be refused)."""
    root = tiny.parent / "roots" / str(next(_counter))
    root.mkdir(parents=True)
    shutil.copytree(tiny / "samples", root / "samples", copy_function=os.link)
    shutil.copytree(tiny / VERSION, root / VERSION)
    for name, content in (tables or {}).items():
        text = content if isinstance(content, str) else json.dumps(content)
        text = text.replace(json.dumps(DEEP), "[" * 100_000 + "]" * 100_000)
        (root / VERSION / f"{name}.json").write_text(text)
    return root


def _tables(tiny: Path) -> dict[str, list[dict]]:
    return {name: json.loads((tiny / VERSION / f"{name}.json").read_text()) for name in TABLES}


def _sample_data(tables: dict, channel_folder: str, scene: str = "scene-0001") -> dict:
    """The first keyframe sample_data of a scene whose file is under `channel_folder`."""
    return next(sd for sd in tables["sample_data"]
                if sd["filename"].startswith(f"samples/{channel_folder}/")
                and f"-{scene}__" in sd["filename"])


# ---- the property ----------------------------------------------------------------------

_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str | bytes | Path):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # cannot be removed: it records only while _opened is a list


@contextlib.contextmanager
def _recording_opens():
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


def _read_everything(root: Path) -> list[dict]:
    """What `distillprep scenes --json` and ingest read: the scene list, every scene, and
    every scene's payload (images, LiDAR, depth maps); errors are the project's or escape."""
    try:
        list_scenes("nuscenes", str(root))
        read = read_dataset("nuscenes", str(root), skip_bad=True)
    except DistillprepError:
        return []
    json.dumps([s.summary() for s in read.scenes] + [f.to_json() for f in read.failures])
    payloads = []
    for scene in read.scenes:
        try:
            payloads.append(scene_payload(scene)[0])
        except DistillprepError:
            pass
    return payloads


def _check_nothing_outside(root: Path, opened: list[str], payloads: list[dict]) -> None:
    secret = (root.parent.parent / "outside" / "secret.pcd.bin").resolve()
    assert not [p for p in opened if Path(p).resolve() == secret], "the outside file was opened"
    for arrays in payloads:
        assert not np.any(arrays["lidar_points"] == np.float32(31337.25))


_NASTY = st.sampled_from([
    None, True, False, 0, -1, 2**70, -(2**63) - 1, 1e308, float("nan"), float("inf"), "",
    "yesterday", "\u202e\U0001f600\u0000", "..", [], {}, [1, 2, 3], [[1.0] * 3] * 3,
    {"token": "x"}, DEEP, "x" * 10_000, 1.5,
])
_PATHS = st.sampled_from(["/abs", "../", "symlink", "long", "folder"])
_KEYED = ("scene", "sample", "sample_data", "calibrated_sensor", "ego_pose", "sensor")


@st.composite
def _mutations(draw) -> list[tuple]:
    """1 to 3 edits of the tables: (kind, table, record index, field, value)."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        table = draw(st.sampled_from(_KEYED + ("log", "map", "instance")))
        kind = draw(st.sampled_from(["set", "set", "set", "path", "drop_field", "duplicate",
                                     "drop_record", "cycle", "token_of_other", "table"]))
        index = draw(st.integers(0, 10_000))
        field = draw(st.sampled_from(["token", "name", "first_sample_token", "next", "prev",
                                      "timestamp", "filename", "width", "height",
                                      "is_key_frame", "translation", "rotation",
                                      "camera_intrinsic", "channel", "ego_pose_token",
                                      "calibrated_sensor_token", "sample_token", "data"]))
        value = draw(_PATHS if kind == "path" else _NASTY)
        edits.append((kind, table, index, field, value))
    return edits


def _apply(tables: dict[str, list], edits: list[tuple], secret: Path) -> dict:
    """The tables with the edits made; a "path" edit points a sample_data's filename at the
    outside file (absolute, climbing with `..`, or through the symlink `samples/escape`)."""
    for kind, table, index, field, value in edits:
        if kind == "path":
            table, field = "sample_data", "filename"
            value = {"/abs": str(secret), "../": "../../outside/secret.pcd.bin",
                     "symlink": "samples/escape.pcd.bin", "long": "samples/" + "x" * 300,
                     "folder": "samples"}[value]
        records = tables[table]
        if kind == "table":
            tables[table] = value
            continue
        if not isinstance(records, list) or not records:
            continue
        record = records[index % len(records)]
        if not isinstance(record, dict):
            continue
        if kind in ("set", "path"):
            record[field] = value
        elif kind == "drop_field":
            record.pop(field, None)
        elif kind == "duplicate":
            records.append(dict(record))
        elif kind == "drop_record":
            records.remove(record)
        elif kind == "cycle":
            record["next"] = record.get("token")
        elif kind == "token_of_other":
            other = records[(index + 1) % len(records)]
            if isinstance(other, dict):
                record[field] = other.get("token")
    return tables


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=_mutations())
def test_mutated_tables_raise_only_named_errors_and_read_nothing_outside(tiny, edits):
    _property(tiny, edits)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=_mutations())
def test_mutated_tables_many_examples(tiny, edits):
    _property(tiny, edits)


def _property(tiny: Path, edits: list[tuple]) -> None:
    secret = tiny.parent / "outside" / "secret.pcd.bin"
    tables = _apply(_tables(tiny), edits, secret)
    root = _dataroot(tiny, tables)
    (root / "samples" / "escape.pcd.bin").symlink_to(secret)
    try:
        with _recording_opens() as opened:
            payloads = _read_everything(root)
        _check_nothing_outside(root, opened, payloads)
    finally:
        shutil.rmtree(root)


# ---- hand-picked: paths that leave the dataroot -----------------------------------------

@pytest.mark.parametrize("channel", ["LIDAR_TOP", "CAM_FRONT"])
@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_a_sensor_file_outside_the_dataroot_is_refused(tiny, channel, how):
    tables = _tables(tiny)
    sd = _sample_data(tables, channel)
    secret = tiny.parent / "outside" / "secret.pcd.bin"
    sd["filename"] = {"absolute": str(secret), "dotdot": "../../outside/secret.pcd.bin",
                      "symlink": f"samples/{channel}/escape"}[how]
    root = _dataroot(tiny, {"sample_data": tables["sample_data"]})
    (root / "samples" / channel / "escape").symlink_to(secret)
    with _recording_opens() as opened:
        read = read_nuscenes(root, skip_bad=True)
    assert [s.scene_id for s in read.scenes] == ["scene-0002"]  # the other scene goes on
    error = read.failures[0].error
    assert isinstance(error, PathOutsideRootError) and read.failures[0].scene == "scene-0001"
    assert error.file.endswith("sample_data.json") and error.record.endswith(sd["token"])
    assert error.path == sd["filename"] and sd["filename"] in str(error)
    assert not [p for p in opened if Path(p).resolve() == secret.resolve()]


@pytest.mark.parametrize("filename, why", [("samples/" + "x" * 300, "cannot read the file"),
                                           ("samples/CAM_FRONT", "not a regular file"),
                                           (["samples"], "expected a string"),
                                           ("", "is empty")])
def test_a_filename_that_names_no_file_is_a_named_error(tiny, filename, why):
    tables = _tables(tiny)
    sd = _sample_data(tables, "CAM_FRONT")
    sd["filename"] = filename
    read = read_nuscenes(_dataroot(tiny, {"sample_data": tables["sample_data"]}),
                         skip_bad=True)
    assert [s.scene_id for s in read.scenes] == ["scene-0002"]
    assert why in str(read.failures[0].error) and sd["token"] in str(read.failures[0].error)


def test_a_symlink_that_stays_inside_the_dataroot_is_followed(tiny):
    tables = _tables(tiny)
    sd = _sample_data(tables, "LIDAR_TOP")
    root = _dataroot(tiny)
    (root / "samples" / "alias.pcd.bin").symlink_to(root / sd["filename"])
    sd["filename"] = "samples/alias.pcd.bin"
    (root / VERSION / "sample_data.json").write_text(json.dumps(tables["sample_data"]))
    scene = read_nuscenes(root, scenes=["scene-0001"]).scenes[0]
    assert len(scene.frames[0].lidar_points().points) > 0


# ---- hand-picked: malformed tables ------------------------------------------------------

def test_a_scene_table_nested_200000_deep_is_one_dataset_error(tiny):
    root = _dataroot(tiny, {"scene": "[" * 200_000 + "]" * 200_000})
    for read in (lambda: read_nuscenes(root, skip_bad=True), lambda: list_scenes(
            "nuscenes", str(root))):
        with pytest.raises(SceneDataError, match="nested too deep") as info:
            read()
        assert info.value.file.endswith("scene.json")


def test_a_scene_without_first_sample_token_fails_alone(tiny):
    tables = _tables(tiny)
    del tables["scene"][0]["first_sample_token"]
    read = read_nuscenes(_dataroot(tiny, {"scene": tables["scene"]}), skip_bad=True)
    assert [s.scene_id for s in read.scenes] == ["scene-0002"]
    error = read.failures[0].error
    assert isinstance(error, SceneDataError) and error.file.endswith("scene.json")
    assert "'first_sample_token' is missing" in str(error)
    assert tables["scene"][0]["token"] in str(error)


@pytest.mark.parametrize("timestamp, why", [("yesterday", "expected an integer"),
                                            (2**70, "outside the plausible range"),
                                            (-5, "outside the plausible range"),
                                            (1.5e15, "expected an integer")])
def test_an_implausible_timestamp_names_table_record_and_field(tiny, timestamp, why):
    tables = _tables(tiny)
    sd = _sample_data(tables, "CAM_BACK")
    sd["timestamp"] = timestamp
    read = read_nuscenes(_dataroot(tiny, {"sample_data": tables["sample_data"]}),
                         skip_bad=True)
    assert [s.scene_id for s in read.scenes] == ["scene-0002"]
    message = str(read.failures[0].error)
    assert "sample_data.json" in message and sd["token"] in message
    assert "'timestamp'" in message and why in message


def test_two_records_of_one_token_are_refused_naming_the_table(tiny):
    tables = _tables(tiny)
    tables["ego_pose"].append(dict(tables["ego_pose"][0]))
    with pytest.raises(SceneDataError, match="a token must name one record") as info:
        read_nuscenes(_dataroot(tiny, {"ego_pose": tables["ego_pose"]}), skip_bad=True)
    assert info.value.file.endswith("ego_pose.json")
    assert tables["ego_pose"][0]["token"] in str(info.value)


def test_a_scene_named_zarr_json_is_refused_and_the_next_scene_ingested(tiny, capsys):
    tables = _tables(tiny)
    tables["scene"][0]["name"] = "zarr.json"
    root = _dataroot(tiny, {"scene": tables["scene"]})
    store = root.parent / f"{root.name}.zarr"
    code = cli(["ingest", str(root), "--out", str(store), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["written"] == ["scene-0002"]
    assert "zarr.json" in report["failed"] and "store uses for its own" in str(report["failed"])
    assert cli(["validate", str(store)]) == 0
    # every name the store wrote for itself, beside or above the scene, is refused as an id
    own = {p.name for folder in (store, store / "scenes", store / "commits",
                                 store / "manifest") for p in folder.iterdir()}
    assert own - {"scene-0002"} >= {"zarr.json", "scenes", "commits", "manifest"}
    for name in own - {"scene-0002"}:
        with pytest.raises(InvalidSceneIdError):
            validate_scene_id(name)


def test_a_sky_mask_symlinked_out_of_the_dataroot_is_refused(tiny):
    from distillprep.scenes.sky_masks import sky_mask_file, with_sky_masks

    root = _dataroot(tiny)
    scene = read_nuscenes(root, scenes=["scene-0001"]).scenes[0]
    mask = sky_mask_file(scene.dataroot, scene.camera_samples[0].source_file)
    mask.parent.mkdir(parents=True)
    mask.symlink_to(tiny.parent / "outside" / "secret.pcd.bin")
    with pytest.raises(PathOutsideRootError, match="leads through a symlink") as info:
        with_sky_masks(scene)
    assert info.value.scene == "scene-0001"
    assert scene.camera_samples[0].token in info.value.record
