"""`distillprep export distillnerf` on a Waymo store: the layout of DistillNeRF's Waymo
loader (mmdet3d's KITTI-format conversion), read back the way that loader reads it."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image
from test_teacher_fit import TINY

from distillprep.flows.cli import main
from distillprep.scenes.datasets import read_dataset
from distillprep.scenes.synthetic.generate import SynthConfig, generate
from distillprep.scenes.synthetic.truth import load_ground_truth_depth, load_ground_truth_sky
from distillprep.storage_schemas.errors import StoreError
from distillprep.storage_schemas.export_distillnerf_waymo import (
    _camera_indices,
    _resize_nearest,
    frame_index_name,
)
from distillprep.storage_schemas.store import open_store
from distillprep.storage_schemas.stored_scene import load_scene
from distillprep.teachers.nerf.config_io import to_dict

SEGMENT = SynthConfig(scenes=1, frames=3, width=192, height=128, supersample=1, workers=1,
                      sky_masks=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A synthetic v1 segment with sky masks, ingested, a tiny teacher fitted and
    rendered, exported."""
    tmp = tmp_path_factory.mktemp("export_waymo")
    root = generate(tmp / "waymo", "waymo-v1", SEGMENT)
    store = tmp / "s.zarr"
    assert main(["ingest", str(root), "--dataset", "waymo", "--out", str(store),
                 "--sky-masks", "--json"]) == 0
    config = tmp / "tiny.json"
    config.write_text(json.dumps(to_dict(TINY)))
    assert main(["teacher", "fit", str(store), "--scene", "scene-0001", "--out",
                 str(tmp / "t.pt"), "--config", str(config), "--holdout", "0", "--steps", "20",
                 "--json"]) == 0
    render = tmp / "render.json"
    render.write_text(json.dumps({"scale": 0.25, "virtual": {
        "offsets": [[1, 0, 0, 0, 0, 0]], "resolution_scale": 0.25}}))
    assert main(["teacher", "render", str(store), "--checkpoint", str(tmp / "t.pt"),
                 "--render-config", str(render), "--json"]) == 0
    out = tmp / "kitti_format"
    assert main(["export", "distillnerf", str(store), str(out), "--json"]) == 0
    return root, open_store(store), out


def test_the_loader_finds_every_file_and_the_stored_values(exported):
    root, store, out = exported
    infos = pickle.loads((out / "waymo_infos_train.pkl").read_bytes())
    scene = load_scene(store, "scene-0001")
    dataset = read_dataset("waymo", str(root)).scenes[0]
    view = store.scene("scene-0001")
    assert len(infos) == len(scene.frames) == SEGMENT.frames
    keys = [int(np.floor(info["timestamp"] / 1e5)) for info in infos]
    assert len(set(keys)) == len(keys)  # the loader's timestamp -> frame index is one to one
    depth = np.asarray(view["teacher_depth"][...], dtype=np.float32)
    stored_sky = np.asarray(view["sky_mask"][...]) != 0
    sample = 0
    for frame, info in zip(scene.frames, infos, strict=True):
        assert info["image"]["image_idx"] == int(frame_index_name(0, frame.index))
        assert tuple(info["image"]["image_shape"]) == (128, 192)
        rect = info["calib"]["R0_rect"]
        for name, camera in frame.cameras.items():
            c = ["FRONT", "FRONT_LEFT", "FRONT_RIGHT"].index(name)
            # WaymoMultiModalDatasetV2.get_data_info, step by step
            image_path = str(out) + "/" + info["image"]["image_path"][c]
            p, tr_v2c = info["calib"][f"P{c}"], info["calib"][f"Tr_velo_to_cam_{c}"]
            np.testing.assert_array_equal(p[:3, :3], camera.intrinsics)
            np.testing.assert_allclose(info["pose"] @ np.linalg.inv(tr_v2c),
                                       camera.cam_to_world, atol=1e-9)
            assert open(image_path, "rb").read() == (
                dataset.frames[frame.index].cameras[name].load_jpeg())
            # LoadDepthImagesFromFilesWaymo's path rules
            d = np.load(image_path.replace("/image", "/depth_img").replace("png", "npy")
                        .replace("jpg", "npy"))
            np.testing.assert_array_equal(d, depth[sample])
            sky = np.asarray(Image.open(image_path.replace("/image", "/sky_mask")
                                        .replace("jpg", "png")).convert("L")) / 255
            np.testing.assert_array_equal(sky == 1, _resize_nearest(stored_sky[sample],
                                                                    *d.shape))
            exact = load_ground_truth_sky(root, camera.source_file)
            assert np.mean((sky == 1) == _resize_nearest(exact, *d.shape)) == 1.0
            # LiDAR in the vehicle frame, projected by lidar2img = P @ R0_rect @ Tr_v2c,
            # lands on the exact depth of the image
            if name == "FRONT":
                cloud = np.fromfile(str(out / info["point_cloud"]["velodyne_path"]),
                                    dtype=np.float32).reshape(-1, 6)
                homogeneous = np.column_stack([cloud[:, :3], np.ones(len(cloud))])
                pixels = homogeneous @ (p @ rect @ tr_v2c).T
                z = pixels[:, 2]
                front = z > 1.0
                u = np.round(pixels[front, 0] / z[front]).astype(int)
                v = np.round(pixels[front, 1] / z[front]).astype(int)
                inside = (u >= 0) & (u < 192) & (v >= 0) & (v < 128)
                truth = load_ground_truth_depth(root, camera.source_file)[v[inside], u[inside]]
                hit = truth > 0
                error = np.abs(z[front][inside][hit] - truth[hit]) / truth[hit]
                assert hit.sum() > 200 and np.median(error) < 0.01
            sample += 1
    assert infos[0]["point_cloud"]["num_features"] == 6
    assert len(infos[0]["annos"]["name"]) == 0 and infos[0]["annos"]["location"].shape == (0, 3)


def test_a_store_without_the_loaders_cameras_or_teacher_is_refused(exported, tmp_path, capsys):
    with pytest.raises(StoreError, match=r"lacks cameras \['FRONT_LEFT'\]"):
        _camera_indices("scene-0001", ["FRONT", "FRONT_RIGHT"])
    with pytest.raises(StoreError, match="not Waymo's"):
        _camera_indices("scene-0001", ["CAM_FRONT"])
    root, _, _ = exported
    bare = tmp_path / "bare.zarr"
    assert main(["ingest", str(root), "--dataset", "waymo", "--out", str(bare), "--json"]) == 0
    capsys.readouterr()
    assert main(["export", "distillnerf", str(bare), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "scene 'scene-0001'" in err and "run `distillprep teacher render` first" in err
    assert not (tmp_path / "out").exists()


def test_train_and_val_sets_share_one_root(exported):
    _, store, out = exported
    train = (out / "waymo_infos_train.pkl").read_bytes()
    assert main(["export", "distillnerf", str(store.location.location), str(out),
                 "--waymo-set", "val", "--json"]) == 0
    val = pickle.loads((out / "waymo_infos_val.pkl").read_bytes())
    assert [info["image"]["image_idx"] for info in val] == [1000000, 1000001, 1000002]
    assert all((out / path).is_file() for info in val for path in info["image"]["image_path"])
    assert (out / "waymo_infos_train.pkl").read_bytes() == train
    assert (out / "emernerf_notr" / "image_0" / "0000000.jpg").is_file()
