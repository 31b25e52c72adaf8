"""Ingest refuses what validate would fail: one set of value rules (`value_rules`) serves
both. Each implausible dataset (a tiny synthetic nuScenes scene with one table or file
edited) is refused by ingest naming the rule, the scene and the source file, with
nothing committed; the same values committed anyway (bypassing the check) are reported
by validate --deep under the same rule."""

from __future__ import annotations

import json
import math
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_helpers import ingest_arrays, ingest_provenance

from distillprep.flows.cli import main
from distillprep.scenes.errors import SceneDataError
from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.scenes.synthetic.generate import SynthConfig, generate
from distillprep.storage_schemas.attrs import SceneAttrs
from distillprep.storage_schemas.errors import ValueRuleError
from distillprep.storage_schemas.ingest import IngestConfig, ingest_scene, scene_payload
from distillprep.storage_schemas.spec import ARRAYS
from distillprep.storage_schemas.store import create_store
from distillprep.storage_schemas.validate import format_report, validate_store
from distillprep.storage_schemas.value_rules import check_block, check_tables, focal_range

TINY = SynthConfig(scenes=1, frames=2, width=64, height=36, sweeps=0, seed=5, supersample=1,
                   workers=1)
SCENE = "scene-0001"
VERSION = TINY.version


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A read-only one-scene, two-frame synthetic nuScenes dataroot."""
    return generate(tmp_path_factory.mktemp("tiny") / "nuscenes", "nuscenes", TINY)


def _table(root: Path, name: str) -> list[dict]:
    return json.loads((root / VERSION / f"{name}.json").read_text())


def _save(root: Path, name: str, records: list[dict]) -> None:
    (root / VERSION / f"{name}.json").write_text(json.dumps(records))


def _first(root: Path, channel: str) -> dict:
    """The sample_data of `channel` in the scene's first sample."""
    first = _table(root, "scene")[0]["first_sample_token"]
    sensors = {s["token"]: s["channel"] for s in _table(root, "sensor")}
    calib = {c["token"]: sensors[c["sensor_token"]] for c in _table(root, "calibrated_sensor")}
    return next(sd for sd in _table(root, "sample_data") if sd["sample_token"] == first
                and calib[sd["calibrated_sensor_token"]] == channel)


def _edit_timestamps(root: Path, new) -> str:
    records = _table(root, "sample_data")
    stamps = [r["timestamp"] for r in records]
    for record in records:
        record["timestamp"] = new(record["timestamp"], stamps)
    _save(root, "sample_data", records)
    return _first(root, "LIDAR_TOP")["filename"]


def _equal_timestamps(root: Path) -> str:
    _edit_timestamps(root, lambda t, all_: min(all_))
    return "/LIDAR_TOP/"  # frame 1's time is its LiDAR keyframe's


def _reversed_timestamps(root: Path) -> str:
    _edit_timestamps(root, lambda t, all_: max(all_) + min(all_) - t)
    return "/LIDAR_TOP/"


def _calibration(root: Path, channel: str, edit) -> str:
    sd = _first(root, channel)
    records = _table(root, "calibrated_sensor")
    for record in records:
        if record["token"] == sd["calibrated_sensor_token"]:
            edit(record["camera_intrinsic"])
    _save(root, "calibrated_sensor", records)
    return sd["filename"]


def _huge_focal_length(root: Path) -> str:
    def edit(k):
        k[0][0] = k[1][1] = 1e300
    return _calibration(root, "CAM_FRONT", edit)


def _principal_point_far_out(root: Path) -> str:
    return _calibration(root, "CAM_BACK", lambda k: k[0].__setitem__(2, -1e9))


def _huge_ego_translation(root: Path) -> str:
    sd = _first(root, "LIDAR_TOP")
    records = _table(root, "ego_pose")
    for record in records:
        if record["token"] == sd["ego_pose_token"]:
            record["translation"] = [1e300, 0.0, 0.0]
    _save(root, "ego_pose", records)
    return sd["filename"]


def _far_lidar(root: Path) -> str:
    """Garbage LiDAR: every point 1e4 times too far (a unit error), whose depths overflow
    float16 to infinity: committed before, and failed by validate --deep."""
    sd = _first(root, "LIDAR_TOP")
    path = root / sd["filename"]
    raw = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
    raw[:, :3] *= 1e4
    raw.tofile(path)
    return sd["filename"]


# case -> (edit of the dataset returning (part of) the file to name, rule, array)
CASES = {
    "equal-timestamps": (_equal_timestamps, "timestamps-increasing", "frame_timestamp_us"),
    "reversed-timestamps": (_reversed_timestamps, "timestamps-increasing",
                            "frame_timestamp_us"),
    "focal-length-1e300": (_huge_focal_length, "focal-length", "intrinsics"),
    "principal-point-minus-1e9": (_principal_point_far_out, "principal-point", "intrinsics"),
    "ego-translation-1e300": (_huge_ego_translation, "pose-translation", "ego_to_world"),
    "lidar-points-100-km": (_far_lidar, "lidar-range", "lidar_points"),
}


def _commit_unchecked(store, scene, edit=None) -> None:
    """Commit a scene's ingest payload as ingest did before the value rules: the values
    reach the store unchecked."""
    arrays, dims, manifest, sources, lidars = scene_payload(scene)
    if edit is not None:
        edit(arrays)
    attrs = SceneAttrs(scene_id=scene.scene_id, dataset="nuscenes", dataset_version=VERSION,
                       created=datetime.now(UTC), cameras=list(scene.camera_names),
                       lidars=lidars, width=dims["W"], height=dims["H"],
                       num_samples=dims["N"], num_frames=dims["F"], source_files=sources)
    store.write_scene(attrs, arrays, manifest, ingest_provenance())


def _assert_reported(path: Path, rule: str, array: str) -> None:
    report = validate_store(path, deep=True)
    assert not report.ok, format_report(report)
    assert any(f.rule == rule and f.array == array and f.scene == SCENE
               for f in report.errors), format_report(report)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ingest_refuses_and_validate_reports_the_same_rule(case, tiny, tmp_path):
    edit, rule, array = CASES[case]
    root = Path(shutil.copytree(tiny, tmp_path / "nuscenes"))
    file = edit(root)
    [scene] = read_nuscenes(root).scenes
    store = create_store(tmp_path / "refused.zarr", "nuscenes", VERSION)
    with pytest.raises(ValueRuleError) as info:
        ingest_scene(store, scene, IngestConfig("nuscenes", VERSION))
    err = info.value
    assert (err.rule, err.array, err.scene, err.exit_code) == (rule, array, SCENE, 1)
    assert file in err.file and str(root) in err.file, err.file
    assert f"[{rule}]" in str(err) and SCENE in str(err) and err.file in str(err)
    refused = validate_store(tmp_path / "refused.zarr", deep=True)
    assert refused.ok and refused.scenes == 0 and not refused.findings, format_report(refused)
    assert not (tmp_path / "refused.zarr" / "scenes" / SCENE).exists()

    committed = create_store(tmp_path / "committed.zarr", "nuscenes", VERSION)
    _commit_unchecked(committed, scene)
    _assert_reported(tmp_path / "committed.zarr", rule, array)


def test_nan_lidar_is_refused_and_reported(tiny, tmp_path):
    """NaN written into a .pcd.bin: the reader refuses the file when ingest loads it
    (naming scene and file); NaN points committed anyway are validate's `finite`."""
    root = Path(shutil.copytree(tiny, tmp_path / "nuscenes"))
    sd = _first(root, "LIDAR_TOP")
    raw = np.fromfile(root / sd["filename"], dtype=np.float32).reshape(-1, 5)
    raw[::7, 1] = np.nan
    raw.tofile(root / sd["filename"])
    [scene] = read_nuscenes(root).scenes
    store = create_store(tmp_path / "refused.zarr", "nuscenes", VERSION)
    with pytest.raises(SceneDataError, match="NaN") as info:
        ingest_scene(store, scene, IngestConfig("nuscenes", VERSION))
    assert info.value.scene == SCENE and info.value.file.endswith(sd["filename"])
    assert validate_store(tmp_path / "refused.zarr").scenes == 0

    def nan_points(arrays):
        arrays["lidar_points"][::7, 1] = np.nan

    committed = create_store(tmp_path / "committed.zarr", "nuscenes", VERSION)
    _commit_unchecked(committed, read_nuscenes(tiny).scenes[0], nan_points)
    _assert_reported(tmp_path / "committed.zarr", "finite", "lidar_points")


def test_cli_ingest_exits_1_naming_rule_scene_and_file(tiny, tmp_path, capsys):
    root = Path(shutil.copytree(tiny, tmp_path / "nuscenes"))
    file = _huge_focal_length(root)
    code = main(["ingest", str(root), "--out", str(tmp_path / "store.zarr"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["written"] == []
    message = out["failed"][SCENE]
    assert "[focal-length]" in message and f"scene '{SCENE}'" in message and file in message
    assert main(["validate", str(tmp_path / "store.zarr"), "--deep"]) == 0


def test_the_real_datasets_calibration_passes():
    """nuScenes' CAM_FRONT (fx 1266 px, 1600 x 900) and Waymo's FRONT (fx ~2060 px,
    1920 x 1280), with their poses in map frames kilometres wide."""
    for fx, cx, cy, w, h in ((1266.4, 816.3, 491.5, 1600, 900),
                             (2059.0, 935.0, 636.0, 1920, 1280)):
        arrays = ingest_arrays(2, h, w)
        arrays["intrinsics"][:] = [[fx, 0, cx], [0, fx, cy], [0, 0, 1]]
        arrays["ego_to_world"][:, :3, 3] = [411.3, 1180.9, 0.0]
        arrays["cam_to_world"][:, :3, 3] = [-9.0e4, 6.1e4, 120.0]
        assert check_tables(arrays, {"N": 2, "F": 2, "W": w, "H": h}, 1, 1) == []


def test_each_sensor_s_timestamps_must_increase():
    """A camera channel or a LiDAR whose own times go back is a break even when the
    frames' times increase."""
    arrays = ingest_arrays(4, 6, 8, sweeps=3)
    arrays["camera_index"][:] = [0, 1, 0, 1]
    arrays["frame_index"][:] = [0, 0, 1, 1]
    arrays["timestamp_us"][:] = [10, 11, 9, 20]  # camera 0 goes back at row 2
    arrays["lidar_timestamp_us"][:] = [5, 7, 7]  # equal: not strictly increasing
    dims = {"N": 4, "F": 4, "W": 8, "H": 6}
    found = {(f.rule, f.array): f.rows for f in check_tables(arrays, dims, 2, 1)}
    assert found == {("timestamps-increasing", "timestamp_us"): (2,),
                     ("timestamps-increasing", "lidar_timestamp_us"): (2,)}


def _reference_ok(fx: float, fy: float, cx: float, cy: float, w: int, h: int) -> bool:
    """The plausibility of a pinhole camera in plain words: finite, a field of view of 5
    to 179 degrees along each axis, the principal point at most half an image out."""
    values = (fx, fy, cx, cy)
    if not all(math.isfinite(v) for v in values) or fx <= 0 or fy <= 0:
        return False
    fov_x, fov_y = (math.degrees(2 * math.atan(size / (2 * f))) for size, f in
                    ((w, fx), (h, fy)))
    return (5 - 1e-9 <= fov_x <= 179 + 1e-9 and 5 - 1e-9 <= fov_y <= 179 + 1e-9
            and -w / 2 <= cx <= 1.5 * w and -h / 2 <= cy <= 1.5 * h)


NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.floats(-1e4, 1e5), st.sampled_from([0.0, -0.0, 1e300, -1e300]))


@settings(max_examples=200, deadline=None)
@given(fx=NUMBERS, fy=NUMBERS, cx=NUMBERS, cy=NUMBERS, w=st.integers(16, 4096),
       h=st.integers(16, 4096))
def test_calibration_rules_agree_with_a_plain_reference(fx, fy, cx, cy, w, h):
    if any(math.isclose(f, b, rel_tol=1e-9) for f, size in ((fx, w), (fy, h))
           for b in focal_range(size)):
        return  # on a bound itself: the two compute it in other ways
    k = np.array([[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]])
    found = {f.rule for f in check_tables({"intrinsics": k}, {"N": 1, "F": 1, "W": w, "H": h},
                                          1, 1)}
    assert found.isdisjoint({"intrinsics", "pose-orthonormal", "value-range"})
    assert (not found) == _reference_ok(fx, fy, cx, cy, w, h), found


@settings(max_examples=100, deadline=None)
@given(bits=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=24),
       name=st.sampled_from(["lidar_depth", "teacher_opacity", "clip_features"]))
def test_float16_rules_agree_with_a_plain_reference(bits, name):
    """The float16 screen reads values off their bits; any bit pattern (NaN, infinities,
    negatives, subnormals) gives what plain float64 comparisons give."""
    block = np.array(bits, dtype=np.uint16).view(np.float16).reshape(-1, 1, 1)
    values = block.astype(np.float64)
    expected = set()
    if not np.all(np.isfinite(values)):
        expected.add("finite")
    if ARRAYS[name].value_range is not None:
        lo, hi = ARRAYS[name].value_range
        if np.any(values < lo) or np.any(values > hi):
            expected.add("value-range")
    assert {f.rule for f in check_block(name, block, 3)} == expected


@settings(max_examples=100, deadline=None)
@given(points=st.lists(st.tuples(NUMBERS, NUMBERS, NUMBERS), min_size=1, max_size=16))
def test_lidar_point_rules_agree_with_a_plain_reference(points):
    with np.errstate(over="ignore"):  # huge float64 values are infinite float32 points
        block = np.array(points, dtype=np.float64).astype(np.float32)
    wide = block.astype(np.float64)
    expected = set()
    if not np.all(np.isfinite(wide)):
        expected.add("finite")
    with np.errstate(over="ignore", invalid="ignore"):
        if np.any((wide ** 2).sum(axis=1) > 1000.0 ** 2):
            expected.add("lidar-range")
    found = check_block("lidar_points", block)
    assert {f.rule for f in found} == expected
    assert all(f.rows and 0 <= min(f.rows) for f in found)


@settings(max_examples=100, deadline=None)
@given(t=st.tuples(NUMBERS, NUMBERS, NUMBERS))
def test_translation_rule_agrees_with_a_plain_reference(t):
    poses = np.tile(np.eye(4), (2, 1, 1))
    poses[1, :3, 3] = t
    found = {f.rule: f.rows for f in check_tables({"ego_to_world": poses}, {"N": 1, "F": 2},
                                                   1, 1)}
    plausible = all(math.isfinite(v) for v in t) and math.hypot(*t) <= 2e7
    assert ("pose-translation" not in found) == plausible
    assert found.get("pose-translation", (1,)) == (1,)
