"""Sky masks beside a dataset's images (`scenes.sky_masks`): written by `synth --sky-masks`
at the layout `ingest --sky-masks` reads, stored exactly, read back from the store alone,
taken by the teacher over the LiDAR's; each bad mask a clear error naming the file."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from distillprep.flows.cli import main
from distillprep.scenes.datasets import read_dataset
from distillprep.scenes.errors import SceneDataError
from distillprep.scenes.sky_masks import SKY_MASK_DIR, sky_mask_file, with_sky_masks
from distillprep.scenes.synthetic.generate import SynthConfig, generate
from distillprep.scenes.synthetic.truth import load_ground_truth_sky
from distillprep.storage_schemas.attrs import config_hash
from distillprep.storage_schemas.ingest import IngestConfig, scene_payload, settings_hash
from distillprep.storage_schemas.manifest import part_from_parquet_bytes
from distillprep.storage_schemas.store import open_store
from distillprep.storage_schemas.stored_scene import load_scene
from distillprep.teachers.nerf.rays import camera_rays
from distillprep.teachers.nerf.sky import SkyMaskConfig, lidar_masks, pixel_masks

SMALL = SynthConfig(scenes=1, frames=3, width=240, height=160, supersample=1, workers=1,
                    sky_masks=True)


@pytest.fixture(scope="module")
def waymo_masked(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("sky") / "waymo", "waymo-v1", SMALL)


@pytest.fixture
def masked_copy(waymo_masked, tmp_path):
    return shutil.copytree(waymo_masked, tmp_path / "waymo")


def _scene(root):
    return read_dataset("waymo", str(root)).scenes[0]


def test_synth_writes_the_exact_masks_where_ingest_reads_them(waymo_masked, tmp_path):
    scene = with_sky_masks(_scene(waymo_masked))
    for sample in scene.camera_samples:
        path = sky_mask_file(scene.dataroot, sample.source_file)
        assert path.is_relative_to(waymo_masked / SKY_MASK_DIR) and path.suffix == ".png"
        mask = sample.load_sky()
        assert mask.shape == (sample.height, sample.width) and mask.dtype == bool
        np.testing.assert_array_equal(mask, load_ground_truth_sky(waymo_masked,
                                                                  sample.source_file))
    # a 1 MP street scene has sky in its front cameras (the masks are not all empty)
    assert 0.05 < np.mean([s.load_sky().mean() for s in scene.camera_samples]) < 0.8
    # nuScenes: the same rule (samples/CAM_*/<name>.png)
    nus = generate(tmp_path / "nus", "nuscenes", SynthConfig(
        scenes=1, frames=2, width=96, height=54, supersample=1, workers=1, sky_masks=True))
    scene = with_sky_masks(read_dataset("nuscenes", str(nus)).scenes[0])
    first = scene.camera_samples[0]
    assert sky_mask_file(nus, first.source_file) == (
        nus / SKY_MASK_DIR / "samples" / first.camera / (
            first.source_file.rsplit("/", 1)[1].rsplit(".", 1)[0] + ".png"))
    np.testing.assert_array_equal(first.load_sky(),
                                  load_ground_truth_sky(nus, first.source_file))


def test_ingest_stores_the_masks_and_the_store_gives_them_back(waymo_masked, tmp_path, capsys):
    store_path = tmp_path / "s.zarr"
    assert main(["ingest", str(waymo_masked), "--dataset", "waymo", "--out", str(store_path),
                 "--sky-masks", "--json"]) == 0
    assert main(["validate", str(store_path), "--deep"]) == 0
    capsys.readouterr()
    store = open_store(store_path)
    view = store.scene("scene-0001")
    assert "sky_mask" in view
    stored = load_scene(store, "scene-0001")
    for sample in stored.camera_samples:
        np.testing.assert_array_equal(sample.load_sky(), load_ground_truth_sky(
            waymo_masked, sample.source_file))
    assert all(store.manifest().column("has_sky_mask").to_pylist())
    # the mask files are sources of the scene (a changed mask is a changed scene)
    names = [s.path for s in view.attrs.source_files]
    assert sum(n.startswith(SKY_MASK_DIR + "/") for n in names) == len(stored.camera_samples)
    # without --sky-masks: no masks, the manifest says so, the teacher falls back to LiDAR
    plain = tmp_path / "plain.zarr"
    assert main(["ingest", str(waymo_masked), "--dataset", "waymo", "--out", str(plain),
                 "--json"]) == 0
    store = open_store(plain)
    assert "sky_mask" not in store.scene("scene-0001")
    assert not any(store.manifest().column("has_sky_mask").to_pylist())
    assert all(s.load_sky() is None for s in load_scene(store, "scene-0001").camera_samples)


def test_scenes_committed_before_the_option_existed_stay_done(waymo_masked):
    """Stores written before `sky_masks` existed hash their ingest config without it, and
    their manifest parts, without the has_sky_mask column, read as "no masks"."""
    old = {"dataset": "waymo", "version": "v1", "sweeps": True}
    assert settings_hash(IngestConfig(**old)) == config_hash(old)
    assert settings_hash(IngestConfig(**old, sky_masks=True)) != config_hash(old)
    _, _, rows, _, _ = scene_payload(_scene(waymo_masked))
    sink = io.BytesIO()
    pq.write_table(rows.drop_columns(["has_sky_mask"]), sink)
    part = part_from_parquet_bytes(sink.getvalue(), "ingest", "an old part")
    assert part.column("has_sky_mask").to_pylist() == [False] * rows.num_rows


def test_the_teacher_takes_the_dataset_sky_over_the_lidar(waymo_masked):
    scene = with_sky_masks(_scene(waymo_masked))
    frame = scene.frames[1]
    sample = frame.cameras["FRONT"]
    exact = load_ground_truth_sky(waymo_masked, sample.source_file)
    config = SkyMaskConfig()
    sky, silent = pixel_masks(sample, list(frame.lidar), config)
    np.testing.assert_array_equal(sky, exact)
    assert not (silent & sky).any()
    lidar_sky, lidar_silent = lidar_masks(sample, list(frame.lidar), config)
    # Waymo's TOP laser tops out at +2.4 degrees: the LiDAR finds a small part of the sky
    assert lidar_sky.sum() < 0.5 * exact.sum()
    np.testing.assert_array_equal(silent, lidar_silent & ~exact)
    rays = camera_rays(scene, [1], stride=1, cameras=["FRONT"], sky=config)
    np.testing.assert_array_equal(rays.sky, exact.reshape(-1))
    without = camera_rays(_scene(waymo_masked), [1], stride=1, cameras=["FRONT"], sky=config)
    assert without.sky.sum() < 0.5 * exact.sum()


def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@pytest.mark.parametrize("fault, message", [
    ("missing", "sky mask not found (2 of the scene's 9 images have none under"),
    ("size", "sky mask is 120x80; its image is 240x160"),
    ("rgb", "must have one channel (grey, 1-bit or palette), found mode RGB"),
    ("jpeg", "a sky mask must be a PNG, found JPEG"),
    ("junk", "sky mask is not a readable PNG"),
])
def test_a_bad_mask_is_named_with_its_scene_and_file(masked_copy, tmp_path, capsys, fault,
                                                     message):
    scene = _scene(masked_copy)
    samples = scene.camera_samples
    victim = sky_mask_file(masked_copy, samples[4].source_file)
    if fault == "missing":
        victim.unlink()
        sky_mask_file(masked_copy, samples[7].source_file).unlink()
    elif fault == "size":
        _write(victim, Image.new("L", (120, 80)))
    elif fault == "rgb":
        _write(victim, Image.new("RGB", (240, 160)))
    elif fault == "jpeg":
        Image.new("L", (240, 160)).save(victim, format="JPEG")
    else:
        victim.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(SceneDataError) as err:
        for sample in with_sky_masks(scene).camera_samples:
            sample.load_sky()
    assert err.value.scene == "scene-0001" and err.value.file == str(victim)
    assert message in str(err.value)
    # the CLI: the scene reported as failed, by name and file, nothing committed
    out = tmp_path / "s.zarr"
    assert main(["ingest", str(masked_copy), "--dataset", "waymo", "--out", str(out),
                 "--sky-masks", "--json"]) != 0
    report = json.loads(capsys.readouterr().out)
    assert str(victim) in report["failed"]["scene-0001"]
    assert message in report["failed"]["scene-0001"]
