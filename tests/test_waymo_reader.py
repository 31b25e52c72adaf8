"""Waymo v1 and v2 written by the synthetic world, read back without TensorFlow: every
LiDAR point where the world says it is, every camera where the rig says it is (LiDAR
projected through the reader's K and cam_to_world lands on the exact depth), and v1 and
v2 of one segment read into the same scene."""

from __future__ import annotations

import importlib.metadata
import sys
from functools import partial

import numpy as np
import pytest
from test_reader_geometry import _inverse_depth_bilinear

from distillprep.scenes.datasets import list_scenes, read_dataset
from distillprep.scenes.synthetic.capture import ego_to_world
from distillprep.scenes.synthetic.generate import SynthConfig, generate, load_worlds
from distillprep.scenes.synthetic.range_scan import cast_range_image
from distillprep.scenes.synthetic.raycast import cast_rays
from distillprep.scenes.synthetic.rig import WAYMO_RIG
from distillprep.scenes.synthetic.truth import load_ground_truth_depth
from distillprep.scenes.waymo.range_image import pixel_directions

CONFIG = SynthConfig(scenes=1, frames=3, width=240, height=160, supersample=1, workers=1)
ALL_CAMERAS = ("FRONT", "FRONT_LEFT", "FRONT_RIGHT", "SIDE_LEFT", "SIDE_RIGHT")


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same synthetic segment written as v1 and as v2."""
    root = tmp_path_factory.mktemp("waymo")
    return {v: generate(root / v, f"waymo-{v}", CONFIG) for v in ("v1", "v2")}


@pytest.fixture(params=["v1", "v2"])
def waymo(request, both):
    return request.param, both[request.param]


def _truth_points(world, frame_index: int, laser: str, spin: bool = True) -> tuple:
    """(H, W, 3) world point of every range-image pixel, its validity and whether it lies
    on a moving car, from the generator's own world and rig (not from the files)."""
    mount = WAYMO_RIG.lidar(laser)
    t = frame_index * WAYMO_RIG.keyframe_interval_us / 1e6
    scan = cast_range_image(world, mount.sensor_to_ego(), mount.spec, t,
                            partial(ego_to_world, world))
    local = pixel_directions(mount.spec.inclinations(), mount.spec.columns,
                             mount.sensor_to_ego()) * scan.ranges[..., None]
    ext = mount.sensor_to_ego()
    vehicle = local @ ext[:3, :3].T + ext[:3, 3]
    poses = (scan.pixel_pose if scan.pixel_pose is not None and spin
             else np.broadcast_to(ego_to_world(world, t), scan.ranges.shape + (4, 4)))
    world_points = np.einsum("hwij,hwj->hwi", poses[..., :3, :3], vehicle) + poses[..., :3, 3]
    moving = np.array([False] + [o.speed != 0 for o in world.objects])[scan.object_index + 1]
    return world_points, scan.ranges > 0, moving


def test_synth_writes_waymo_layout_and_ground_truth(waymo):
    version, root = waymo
    if version == "v1":
        files = sorted((root / "training").glob("*.tfrecord"))
        assert [f.name for f in files] == ["segment-scene-0001_with_camera_labels.tfrecord"]
    else:
        components = sorted(p.name for p in (root / "training").iterdir())
        for c in ("camera_image", "camera_calibration", "lidar", "lidar_calibration",
                  "lidar_pose", "vehicle_pose"):
            assert c in components and (root / "training" / c / "scene-0001.parquet").is_file()
    assert (root / "ground_truth" / "world.json").is_file()
    assert list_scenes("waymo", str(root)) == (version, ["scene-0001"])


def test_lidar_points_are_where_the_world_put_them(waymo):
    """Both lasers (TOP spinning with its pose range image, FRONT with uniform
    inclinations), to the float32 precision of the files."""
    version, root = waymo
    scene = read_dataset("waymo", str(root)).scenes[0]
    world = load_worlds(root)[scene.scene_id]
    for frame in scene.frames:
        assert [s.sensor for s in frame.lidar] == ["TOP", "FRONT"]
        for sweep in frame.lidar:
            truth, valid, _ = _truth_points(world, frame.index, sweep.sensor)
            read = sweep.load()
            assert len(read.points) == valid.sum() > 1000
            np.testing.assert_allclose(read.points, truth[valid], atol=2e-3)
            np.testing.assert_allclose(read.origins, sweep.sensor_to_world[:3, 3][None]
                                       + 0 * read.points)


def test_ignoring_the_pose_range_image_would_misplace_the_top_laser(both):
    """What a reader that skips the TOP's per-pixel poses would get: the car moves about
    a metre in the laser's 0.1 s turn."""
    world = load_worlds(both["v1"])["scene-0001"]
    truth, valid, _ = _truth_points(world, 1, "TOP")
    naive, _, _ = _truth_points(world, 1, "TOP", spin=False)
    error = np.linalg.norm(naive - truth, axis=-1)[valid]
    assert np.median(error) > 0.3


def test_lidar_projects_onto_the_exact_depth_of_every_camera(waymo):
    """Static points that a camera sees (decided from the world, not the reader),
    projected through the reader's K and cam_to_world, hit the exact depth."""
    version, root = waymo
    scene = read_dataset("waymo", str(root), cameras=ALL_CAMERAS).scenes[0]
    world = load_worlds(root)[scene.scene_id]
    errors = []
    for frame in scene.frames:
        truth, valid, moving = _truth_points(world, frame.index, "TOP")
        points = truth[valid & ~moving]
        for name, sample in frame.cameras.items():
            centre = sample.cam_to_world[:3, 3]
            t_cam = (sample.timestamp_us - scene.frames[0].timestamp_us) / 1e6
            hits = cast_rays(world.primitives_at(t_cam), centre, points - centre)
            seen = points[hits.t > 1.0 - 1e-6]
            uv, z = sample.world_to_pixels(seen)
            inside = (z > 0.5) & (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (
                uv[:, 0] <= sample.width - 1) & (uv[:, 1] <= sample.height - 1)
            depth = _inverse_depth_bilinear(
                load_ground_truth_depth(root, sample.source_file), uv[inside])
            rel = np.abs(depth - z[inside]) / z[inside]
            assert inside.sum() > 200, name
            errors.append(np.where(np.isnan(rel), np.inf, rel))
    errors = np.concatenate(errors)
    assert np.median(errors) < 0.005, np.median(errors)
    assert np.mean(errors < 0.02) >= 0.95, np.mean(errors < 0.02)


def test_cameras_are_where_the_rig_puts_them_at_their_own_time(waymo):
    version, root = waymo
    scene = read_dataset("waymo", str(root), cameras=ALL_CAMERAS).scenes[0]
    world = load_worlds(root)[scene.scene_id]
    start = scene.frames[0].timestamp_us
    for frame in scene.frames:
        assert frame.is_keyframe
        for name, sample in frame.cameras.items():
            spec = WAYMO_RIG.camera(name)
            assert sample.timestamp_us - frame.timestamp_us == spec.fire_offset_us
            truth = ego_to_world(world, (sample.timestamp_us - start) / 1e6) @ spec.cam_to_ego()
            np.testing.assert_allclose(sample.cam_to_world, truth, atol=1e-9)
            w, h = WAYMO_RIG.camera_size(spec, 240, 160)
            np.testing.assert_allclose(sample.intrinsics, spec.intrinsics(w, h), atol=1e-9)
            assert sample.load_image().shape == (h, w, 3)
    assert {s.height for s in scene.camera_samples} == {160, 111}  # 1280 and 886 scaled


def test_default_cameras_are_the_three_front_ones(waymo):
    _, root = waymo
    scene = read_dataset("waymo", str(root)).scenes[0]
    assert scene.camera_names == ("FRONT", "FRONT_LEFT", "FRONT_RIGHT")
    assert {(s.width, s.height) for s in scene.camera_samples} == {(240, 160)}


def test_v1_and_v2_of_one_segment_read_into_the_same_scene(both):
    v1, v2 = (read_dataset("waymo", str(both[v]), cameras=ALL_CAMERAS).scenes[0]
              for v in ("v1", "v2"))
    assert (v1.scene_id, v1.camera_names, len(v1.frames)) == (
        v2.scene_id, v2.camera_names, len(v2.frames))
    for a, b in zip(v1.frames, v2.frames, strict=True):
        assert (a.index, a.timestamp_us, a.is_keyframe) == (b.index, b.timestamp_us,
                                                            b.is_keyframe)
        np.testing.assert_array_equal(a.ego_to_world, b.ego_to_world)
        for name in v1.camera_names:
            x, y = a.cameras[name], b.cameras[name]
            assert (x.timestamp_us, x.width, x.height, x.token) == (
                y.timestamp_us, y.width, y.height, y.token)
            np.testing.assert_array_equal(x.intrinsics, y.intrinsics)
            np.testing.assert_array_equal(x.cam_to_world, y.cam_to_world)
            assert x.load_jpeg() == y.load_jpeg()
        for x, y in zip(a.lidar, b.lidar, strict=True):
            assert (x.sensor, x.timestamp_us) == (y.sensor, y.timestamp_us)
            np.testing.assert_array_equal(x.sensor_to_world, y.sensor_to_world)
            (px, ix), (py, iy) = x.loader(), y.loader()
            np.testing.assert_array_equal(px, py)
            np.testing.assert_array_equal(ix, iy)


def test_neither_tensorflow_nor_the_wheels_numpy_pin_is_installed():
    names = {d.metadata["Name"].lower().replace("_", "-")
             for d in importlib.metadata.distributions()}
    assert "waymo-open-dataset-tf-2-12-0" in names  # its protos, installed --no-deps
    assert not {n for n in names if n.startswith(("tensorflow", "tf-", "jax"))}, names
    assert importlib.metadata.version("numpy").split(".")[0] == "2"
    assert "tensorflow" not in sys.modules


def test_ingest_stores_the_segment_and_export_asks_for_the_teacher(waymo, tmp_path, capsys):
    """Every later stage reads the store: ingest commits the segment (the JPEG bytes as
    stored in the container, LiDAR depth from both lasers), the store validates, and the
    DistillNeRF export (its Waymo layout: test_export_waymo.py) says the teacher is missing."""
    from distillprep.flows.cli import main as cli
    from distillprep.storage_schemas.store import open_store

    version, root = waymo
    store_path = tmp_path / "store.zarr"
    assert cli(["ingest", str(root), "--dataset", "waymo", "--out", str(store_path),
                "--json"]) == 0
    assert cli(["validate", str(store_path), "--deep", "--json"]) == 0
    store = open_store(store_path)
    assert (store.attrs.dataset, store.attrs.dataset_version) == ("waymo", version)
    view = store.scene("scene-0001")
    scene = read_dataset("waymo", str(root)).scenes[0]
    first = scene.camera_samples[0]
    nbytes = int(np.asarray(view["rgb_jpeg_nbytes"][0]))
    assert bytes(np.asarray(view["rgb_jpeg"][0][:nbytes])) == first.load_jpeg()
    assert (np.asarray(view["lidar_depth"][0]) > 0).sum() > 100
    capsys.readouterr()
    assert cli(["export", "distillnerf", str(store_path), str(tmp_path / "out")]) == 1
    assert "run `distillprep teacher render` first" in capsys.readouterr().err


def test_preview_lays_out_waymo_cameras_left_to_right(both, tmp_path):
    from PIL import Image

    from distillprep.flows.cli import main as cli

    out = tmp_path / "preview.png"
    assert cli(["preview", str(both["v1"]), "--dataset", "waymo", "--out", str(out),
                "--json"]) == 0
    image = np.asarray(Image.open(out))
    # the three front cameras in one row of images over one row of their exact depth
    assert image.shape == (2 * 320, 3 * 480, 3)
