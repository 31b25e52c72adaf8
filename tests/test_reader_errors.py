"""Bad input gets a clear error naming the scene, the file and what is wrong."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from distillprep.scenes import SceneDataError
from distillprep.scenes.errors import DatasetNotFoundError
from distillprep.scenes.nuscenes import read_nuscenes

VERSION = "v1.0-mini"


def _table(root: Path, name: str) -> list[dict]:
    return json.loads((root / VERSION / f"{name}.json").read_text())


def _save(root: Path, name: str, records: list[dict]) -> None:
    (root / VERSION / f"{name}.json").write_text(json.dumps(records))


def _first_sample_data(root: Path, channel: str, scene_index: int = 0) -> dict:
    """The keyframe sample_data of `channel` in the first sample of a scene."""
    scene = _table(root, "scene")[scene_index]
    sensors = {s["token"]: s["channel"] for s in _table(root, "sensor")}
    calib = {c["token"]: sensors[c["sensor_token"]] for c in _table(root, "calibrated_sensor")}
    return next(sd for sd in _table(root, "sample_data")
                if sd["sample_token"] == scene["first_sample_token"] and sd["is_key_frame"]
                and calib[sd["calibrated_sensor_token"]] == channel)


def _edit(root: Path, table: str, token: str, **changes) -> None:
    records = _table(root, table)
    for record in records:
        if record["token"] == token:
            record.update(changes)
    _save(root, table, records)


def _expect(root: Path, file_suffix: str, *fragments: str) -> SceneDataError:
    with pytest.raises(SceneDataError) as info:
        read_nuscenes(root)
    err = info.value
    assert err.scene == "scene-0001"
    assert err.file is not None and err.file.endswith(file_suffix), err.file
    message = str(err)
    assert "scene-0001" in message and file_suffix in message
    for fragment in fragments:
        assert fragment in message, message
    return err


def test_missing_image_file(dataset_copy):
    sd = _first_sample_data(dataset_copy, "CAM_BACK")
    (dataset_copy / sd["filename"]).unlink()
    _expect(dataset_copy, sd["filename"], "image file is missing")


def test_truncated_jpeg(dataset_copy):
    sd = _first_sample_data(dataset_copy, "CAM_FRONT_LEFT")
    path = dataset_copy / sd["filename"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _expect(dataset_copy, sd["filename"], "truncated JPEG")


def test_corrupt_jpeg_body_fails_on_load_with_names(dataset_copy):
    sd = _first_sample_data(dataset_copy, "CAM_FRONT")
    path = dataset_copy / sd["filename"]
    data = bytearray(path.read_bytes())
    data[2:600] = b"\x00" * 598  # markers intact, headers destroyed
    path.write_bytes(bytes(data))
    scene = read_nuscenes(dataset_copy, scenes=["scene-0001"]).scenes[0]
    with pytest.raises(SceneDataError, match="cannot decode image") as info:
        scene.frames[0].cameras["CAM_FRONT"].load_image()
    assert info.value.scene == "scene-0001" and info.value.file.endswith(sd["filename"])


def test_nan_in_ego_pose(dataset_copy):
    sd = _first_sample_data(dataset_copy, "CAM_FRONT")
    pose = next(p for p in _table(dataset_copy, "ego_pose") if p["token"] == sd["ego_pose_token"])
    _edit(dataset_copy, "ego_pose", pose["token"],
          translation=[math.nan] + pose["translation"][1:])
    _expect(dataset_copy, "ego_pose.json", "NaN or infinite", pose["token"])


def test_non_unit_quaternion(dataset_copy):
    sd = _first_sample_data(dataset_copy, "LIDAR_TOP")
    pose = next(p for p in _table(dataset_copy, "ego_pose") if p["token"] == sd["ego_pose_token"])
    _edit(dataset_copy, "ego_pose", pose["token"], rotation=[v * 1.5 for v in pose["rotation"]])
    _expect(dataset_copy, "ego_pose.json", "expected a unit quaternion", "norm 1.5")


def test_calibration_with_wrong_shape(dataset_copy):
    sd = _first_sample_data(dataset_copy, "CAM_BACK_RIGHT")
    _edit(dataset_copy, "calibrated_sensor", sd["calibrated_sensor_token"],
          camera_intrinsic=[[100.0, 0.0, 50.0], [0.0, 100.0, 40.0]])
    _expect(dataset_copy, "calibrated_sensor.json", "camera_intrinsic has shape (2, 3)")


def test_calibration_rotation_with_wrong_shape(dataset_copy):
    sd = _first_sample_data(dataset_copy, "CAM_BACK_RIGHT")
    _edit(dataset_copy, "calibrated_sensor", sd["calibrated_sensor_token"],
          rotation=[1.0, 0.0, 0.0])
    _expect(dataset_copy, "calibrated_sensor.json", "rotation has shape (3,)")


def test_unknown_camera_channel(dataset_copy):
    sensors = _table(dataset_copy, "sensor")
    for s in sensors:
        if s["channel"] == "CAM_FRONT":
            s["channel"] = "CAM_FRONT_ZOOM"
    _save(dataset_copy, "sensor", sensors)
    _expect(dataset_copy, "sensor.json", "unknown sensor channel 'CAM_FRONT_ZOOM'")


def test_empty_lidar_file(dataset_copy):
    sd = _first_sample_data(dataset_copy, "LIDAR_TOP")
    (dataset_copy / sd["filename"]).write_bytes(b"")
    _expect(dataset_copy, sd["filename"], "LiDAR file is empty")


def test_truncated_lidar_file(dataset_copy):
    sd = _first_sample_data(dataset_copy, "LIDAR_TOP")
    path = dataset_copy / sd["filename"]
    path.write_bytes(path.read_bytes()[:-6])
    _expect(dataset_copy, sd["filename"], "not a whole number")


def test_scene_id_that_escapes(dataset_copy):
    scenes = _table(dataset_copy, "scene")
    scenes[0]["name"] = "../scene-0001"
    _save(dataset_copy, "scene", scenes)
    with pytest.raises(SceneDataError) as info:
        read_nuscenes(dataset_copy)
    assert info.value.scene == "../scene-0001"
    assert info.value.file.endswith("scene.json")
    assert "slash" in str(info.value)


def test_requested_scene_id_that_escapes(small_dataset):
    with pytest.raises(Exception, match="slash"):
        read_nuscenes(small_dataset, scenes=["../../etc"])


def test_table_that_is_not_json(dataset_copy):
    (dataset_copy / VERSION / "sample.json").write_text("[{broken")
    with pytest.raises(SceneDataError, match="not valid JSON") as info:
        read_nuscenes(dataset_copy)
    assert info.value.file.endswith("sample.json")


def test_not_a_dataroot(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no nuScenes table folder"):
        read_nuscenes(tmp_path)


def test_skip_bad_scenes_reports_and_goes_on(dataset_copy):
    sd = _first_sample_data(dataset_copy, "CAM_BACK")
    (dataset_copy / sd["filename"]).unlink()
    read = read_nuscenes(dataset_copy, skip_bad=True)
    assert [s.scene_id for s in read.scenes] == ["scene-0002"]
    assert [f.scene for f in read.failures] == ["scene-0001"]
    assert read.failures[0].to_json()["file"].endswith(sd["filename"])


def test_lidar_values_that_are_nan_fail_on_load(dataset_copy):
    sd = _first_sample_data(dataset_copy, "LIDAR_TOP")
    path = dataset_copy / sd["filename"]
    data = np.fromfile(path, dtype=np.float32)
    data[0] = np.nan
    data.tofile(path)
    scene = read_nuscenes(dataset_copy, scenes=["scene-0001"]).scenes[0]
    with pytest.raises(SceneDataError, match="NaN"):
        scene.frames[0].lidar_points()


def test_a_sample_chain_that_loops_back_is_refused(dataset_copy):
    """A damaged `next` pointer would make the reader walk the scene forever."""
    scene = _table(dataset_copy, "scene")[0]
    samples = {s["token"]: s for s in _table(dataset_copy, "sample")}
    last = samples[scene["last_sample_token"]]
    _edit(dataset_copy, "sample", last["token"], next=scene["first_sample_token"])
    _expect(dataset_copy, "sample.json", "loops back to sample "
            f"{scene['first_sample_token']}", "after 3 samples")


def test_two_scenes_of_one_name_are_refused_naming_both(dataset_copy):
    scenes = _table(dataset_copy, "scene")
    scenes[1]["name"] = scenes[0]["name"]
    _save(dataset_copy, "scene", scenes)
    with pytest.raises(SceneDataError) as info:
        read_nuscenes(dataset_copy)
    message = str(info.value)
    assert "2 scenes have this name" in message and "scene-0001" in message
    assert scenes[0]["token"] in message and scenes[1]["token"] in message
    read = read_nuscenes(dataset_copy, skip_bad=True)  # reported, never one silently lost
    assert read.scenes == [] and [f.scene for f in read.failures] == ["scene-0001"]


def test_a_sensor_path_that_is_a_folder_is_a_named_error(tmp_path):
    """The OS's own refusals (a folder where a file should be) name the scene and the
    file, for LiDAR and images alike, instead of escaping as IsADirectoryError."""
    from distillprep.scenes.errors import SceneDataError
    from distillprep.scenes.io import check_jpeg_file, read_pcd_bin

    folder = tmp_path / "LIDAR_TOP.pcd.bin"
    folder.mkdir()
    for check in (read_pcd_bin, check_jpeg_file):
        with pytest.raises(SceneDataError, match=r"scene 'scene-0001'.*cannot be read"):
            check(str(folder), "scene-0001")
