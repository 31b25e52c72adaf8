"""The synthetic dataset is real nuScenes: the devkit loads and walks it, and it carries
exact ground truth beside the official layout."""

import contextlib
import hashlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from nuscenes.nuscenes import NuScenes
from PIL import Image

from distillprep.scenes.errors import ConfigError
from distillprep.scenes.nuscenes import CAMERAS, TABLES
from distillprep.scenes.synthetic.capture import KEYFRAME_INTERVAL_US, ego_to_world
from distillprep.scenes.synthetic.generate import SynthConfig, generate, load_worlds
from distillprep.scenes.synthetic.render import render_view
from distillprep.scenes.synthetic.rig import NUSCENES_RIG
from distillprep.scenes.synthetic.truth import ground_truth_path


@pytest.fixture(scope="module")
def nusc(small_dataset):
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        db = NuScenes(version="v1.0-mini", dataroot=str(small_dataset), verbose=True)
    assert not caught, [str(w.message) for w in caught]
    assert err.getvalue() == ""
    assert "Done loading" in out.getvalue()
    return db


def test_devkit_walks_every_sample_and_sample_data(nusc, small_dataset):
    assert len(nusc.scene) == 2
    walked = 0
    for scene in nusc.scene:
        token, count = scene["first_sample_token"], 0
        while token:
            sample = nusc.get("sample", token)
            assert set(sample["data"]) == set(CAMERAS) | {"LIDAR_TOP"}
            count += 1
            token = sample["next"]
        assert count == scene["nbr_samples"] == 3
    with contextlib.redirect_stdout(io.StringIO()):
        for sd in nusc.sample_data:
            path, boxes, k = nusc.get_sample_data(sd["token"])
            assert Path(path).is_file()
            walked += 1
            if sd["sensor_modality"] == "camera":
                assert k.shape == (3, 3)
    # 2 scenes x (3 keyframes + 2 sweeps) x 7 sensors
    assert walked == len(nusc.sample_data) == 2 * 5 * 7


def test_layout_and_tables(small_dataset):
    for table in TABLES:
        assert (small_dataset / "v1.0-mini" / f"{table}.json").is_file()
    for channel in CAMERAS:
        assert len(list((small_dataset / "samples" / channel).glob("*.jpg"))) == 6
        assert len(list((small_dataset / "sweeps" / channel).glob("*.jpg"))) == 4
    lidar = sorted((small_dataset / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    assert len(lidar) == 6
    points = np.fromfile(lidar[0], dtype=np.float32).reshape(-1, 5)
    assert len(points) > 5000
    assert set(np.unique(points[:, 4]).astype(int)) <= set(range(32))
    assert 0 <= points[:, 3].min() and points[:, 3].max() <= 255


def test_cameras_fire_at_their_own_times_with_their_own_ego_poses(nusc):
    sample = nusc.get("sample", nusc.scene[0]["first_sample_token"])
    times = {ch: nusc.get("sample_data", tok)["timestamp"] for ch, tok in sample["data"].items()}
    assert times["LIDAR_TOP"] == sample["timestamp"]
    assert len({times[c] for c in CAMERAS}) == 6  # six different trigger times
    assert max(times.values()) - min(times.values()) > 30_000
    poses = [nusc.get("ego_pose", nusc.get("sample_data", tok)["ego_pose_token"])
             for tok in sample["data"].values()]
    assert len({p["token"] for p in poses}) == 7
    assert len({tuple(p["translation"]) for p in poses}) == 7  # the car moved between them
    assert all(p["timestamp"] == times[ch] for p, ch in zip(poses, sample["data"], strict=True))
    assert all(p["translation"][2] == 0.0 for p in poses)


def test_sweeps_point_to_the_following_sample(nusc):
    for sd in nusc.sample_data:
        if not sd["is_key_frame"]:
            sample = nusc.get("sample", sd["sample_token"])
            assert sample["timestamp"] > sd["timestamp"]
            assert sample["timestamp"] - sd["timestamp"] < KEYFRAME_INTERVAL_US


def test_vehicles_have_instances_and_annotations(nusc):
    moving = next(a["token"] for a in nusc.attribute if a["name"] == "vehicle.moving")
    anns = nusc.sample_annotation
    assert any(moving in a["attribute_tokens"] for a in anns)
    for inst in nusc.instance:
        chain, token = [], inst["first_annotation_token"]
        while token:
            chain.append(token)
            token = nusc.get("sample_annotation", token)["next"]
        assert len(chain) == inst["nbr_annotations"]
        assert chain[-1] == inst["last_annotation_token"]
    assert sum(a["num_lidar_pts"] for a in anns) > 0
    assert {a["visibility_token"] for a in anns} <= {"1", "2", "3", "4"}


def test_ground_truth_beside_the_layout_and_world_rebuilds_exactly(nusc, small_dataset):
    worlds = load_worlds(small_dataset)
    assert set(worlds) == {"scene-0001", "scene-0002"}
    cams = [sd for sd in nusc.sample_data if sd["sensor_modality"] == "camera"]
    for sd in cams:
        depth = np.load(ground_truth_path(small_dataset, sd["filename"], "depth"))
        sky = np.asarray(Image.open(ground_truth_path(small_dataset, sd["filename"], "sky")))
        assert depth.shape == (108, 192) and depth.dtype == np.float32
        np.testing.assert_array_equal(depth == 0, sky == 255)
    # Re-render one image from world.json alone: depth identical to the stored truth.
    sd = cams[7]
    scene = nusc.get("scene", nusc.get("sample", sd["sample_token"])["scene_token"])
    first = nusc.get("sample", scene["first_sample_token"])
    t = (sd["timestamp"] - first["timestamp"]) / 1e6
    channel = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    spec = next(c for c in NUSCENES_RIG.cameras
                if nusc.get("sensor", channel["sensor_token"])["channel"] == c.name)
    world = worlds[scene["name"]]
    view = render_view(world, spec.intrinsics(192, 108),
                       ego_to_world(world, t) @ spec.cam_to_ego(), t, 192, 108)
    stored = np.load(ground_truth_path(small_dataset, sd["filename"], "depth"))
    np.testing.assert_array_equal(view.depth, stored)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_arguments_give_byte_identical_output(tmp_path):
    config = SynthConfig(scenes=1, frames=2, width=64, height=36, sweeps=1, seed=3,
                         supersample=2, workers=1)
    a = generate(tmp_path / "a", "nuscenes", config)
    b = generate(tmp_path / "b", "nuscenes", SynthConfig(**{**config.__dict__, "workers": 2}))
    assert _digest(a) == _digest(b)
    c = generate(tmp_path / "c", "nuscenes", SynthConfig(**{**config.__dict__, "seed": 4}))
    assert _digest(a) != _digest(c)


def test_refuses_to_write_into_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    tiny = SynthConfig(scenes=1, frames=1, width=32, height=18, workers=1)
    with pytest.raises(FileExistsError, match="not empty"):
        generate(tmp_path, "nuscenes", tiny)
    with pytest.raises(FileExistsError, match="not an earlier"):
        generate(tmp_path, "nuscenes", tiny, overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_overwrite_replaces_an_earlier_synthetic_dataset_whole(tmp_path):
    big = SynthConfig(scenes=2, frames=2, width=32, height=18, workers=1)
    generate(tmp_path / "ds", "nuscenes", big)
    generate(tmp_path / "ds", "nuscenes", SynthConfig(**{**big.__dict__, "scenes": 1}),
             overwrite=True)
    assert len(list((tmp_path / "ds" / "samples" / "CAM_FRONT").glob("*.jpg"))) == 2


def test_world_json_records_the_config(small_dataset):
    data = json.loads((small_dataset / "ground_truth" / "world.json").read_text())
    assert data["config"]["seed"] == 7 and data["config"]["frames"] == 3


def test_lidar_beams_respace_the_hdl32e_elevations(tmp_path):
    data = generate(tmp_path / "ds", "nuscenes", SynthConfig(
        scenes=1, frames=1, width=32, height=18, workers=1, lidar_beams=8))
    scan = next((data / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    points = np.fromfile(scan, dtype=np.float32).reshape(-1, 5)
    rings = points[:, 4].astype(int)
    assert set(rings) <= set(range(8)) and len(set(rings)) >= 4
    elevation = np.degrees(np.arctan2(points[:, 2], np.hypot(points[:, 0], points[:, 1])))
    expected = np.linspace(-30.67, 10.67, 8)[rings]
    np.testing.assert_allclose(elevation, expected, atol=1e-3)
    with pytest.raises(ConfigError, match="lidar-beams"):
        generate(tmp_path / "bad", "nuscenes", SynthConfig(scenes=1, lidar_beams=0))
