"""The feature run over a real store: both passes, every scene and virtual view, the
values the model gives, a killed run that resumes, the CLI, and bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from store_helpers import teacher_arrays, write_teacher_stage

from distillprep.flows.cli import main
from distillprep.storage_schemas.feature_runs import FeatureRunError, run_prefix
from distillprep.storage_schemas.store import create_store, open_store
from distillprep.storage_schemas.validate import validate_store
from distillprep.teachers.foundation.extract import FeatureConfig, load_extractor
from distillprep.teachers.foundation.job import (
    ImageSet,
    read_images,
    run_features,
    saved_basis,
)
from distillprep.teachers.foundation.pca import project
from distillprep.teachers.foundation.positional import position_share

# 56 px wide: a 2 x 4 grid of 14 px patches on the 192 x 108 images (fast on the CPU)
CONFIG = FeatureConfig(model="dinov2-vits14", channels=4, input_width=56, pca_images=10,
                       random_init=True)
VIEWS = 5


@pytest.fixture(scope="module")
def extractor():
    return load_extractor(CONFIG, batch_size=4)


@pytest.fixture
def store_with_views(small_store, tmp_path):
    """The small store with teacher outputs (5 half-size virtual views) in scene-0001."""
    path = shutil.copytree(small_store, tmp_path / "store.zarr")
    store = open_store(path, mode="a")
    n = store.scene_attrs("scene-0001").num_samples
    write_teacher_stage(store, "scene-0001", teacher_arrays(n, VIEWS, size=(54, 96)))
    return store


def test_features_fill_every_scene_with_the_models_projected_features(store_with_views,
                                                                        extractor):
    store = store_with_views
    summary = run_features(store, extractor, CONFIG)
    assert summary.done == ["scene-0001", "scene-0002"] and summary.skipped == []
    basis = saved_basis(store, "dino")
    pca = basis.pca
    assert basis.pattern is None
    group = store.scene("scene-0001")
    n = store.scene_attrs("scene-0001").num_samples
    assert group["dino_features"].shape == (n, 4, 2, 4)
    assert group["dino_virtual_features"].shape == (VIEWS, 4, 1, 2)  # half size, half grid
    np.testing.assert_array_equal(group["dino_pca_basis"][...], pca.basis)
    np.testing.assert_array_equal(store.scene("scene-0002")["dino_pca_basis"][...], pca.basis)
    # the stored values are the model's features of those very images, projected
    real = ImageSet("scene-0001", "real", n, 108, 192)
    expected = project(pca, extractor(read_images(group, real, 3, 5), (2, 4)))
    np.testing.assert_allclose(group["dino_features"][3:5].astype(np.float32), expected,
                               rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    views = ImageSet("scene-0001", "virtual", VIEWS, 54, 96)
    expected = project(pca, extractor(read_images(group, views, 0, VIEWS), (1, 2)))
    np.testing.assert_allclose(group["dino_virtual_features"][...].astype(np.float32),
                               expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    # provenance, manifest and validation; random weights are said loudly
    record = store.scene("scene-0001").provenance("dino_features")
    assert record.random_init is True and record.model == "dinov2-vits14"
    assert 0 < record.pca_explained_ratio <= 1 and record.run_id == basis.run.run_id
    norms = store.manifest(["scene-0001"]).column("dino_feature_norm_mean").to_pylist()
    assert all(v is not None and v > 0 for v in norms)
    assert all(store.manifest().column("has_dino_features").to_pylist())
    report = validate_store(store.location.location, deep=True)
    assert report.ok, [f.message for f in report.findings if f.severity == "error"]
    warned = {f.scene for f in report.findings if f.rule == "random-weights"}
    assert warned == {"scene-0001", "scene-0002"}
    assert not store.location.children(f"{run_prefix('dino')}/partial")


class _Killed(Exception):
    pass


def test_a_killed_run_resumes_with_the_same_result(store_with_views, extractor, tmp_path):
    clean = open_store(shutil.copytree(store_with_views.location.location,
                                       tmp_path / "clean.zarr"), mode="a")
    run_features(clean, extractor, CONFIG)
    store = store_with_views
    seen = []

    def kill_in_scene_two(n):
        seen.append(n)
        if sum(seen) >= 10 + 18 + VIEWS + 8:  # PCA sample, scene 1, two batches of scene 2
            raise _Killed

    with pytest.raises(_Killed):
        run_features(store, extractor, CONFIG, progress=kill_in_scene_two)
    assert store.scene("scene-0002").provenance("dino_features") is None
    kept = store.location.find(f"{run_prefix('dino')}/partial/scene-0002")
    assert [k.rsplit("/", 1)[-1] for k in kept] == ["real-0.npz", "real-4.npz"]
    resumed = run_features(store, extractor, CONFIG)
    assert resumed.skipped == ["scene-0001"] and resumed.done == ["scene-0002"]
    assert resumed.images == 18 - 8  # neither the PCA sample nor the kept batches again
    for scene in ("scene-0001", "scene-0002"):
        np.testing.assert_array_equal(store.scene(scene)["dino_features"][...],
                                      clean.scene(scene)["dino_features"][...])
    assert validate_store(store.location.location, deep=True).ok
    # views rendered again after the features: only their scene is redone
    n = store.scene_attrs("scene-0002").num_samples
    write_teacher_stage(store, "scene-0002", teacher_arrays(n, 3, size=(54, 96)))
    again = run_features(store, extractor, CONFIG)
    assert again.done == ["scene-0002"] and again.skipped == ["scene-0001"]
    assert store.scene("scene-0002")["dino_virtual_features"].shape[0] == 3


def test_positional_denoising_takes_the_pattern_out_before_the_pca(store_with_views,
                                                                   extractor):
    store = store_with_views
    config = FeatureConfig(**{**CONFIG.__dict__, "denoise_positions": True, "pca_images": 30})
    run_features(store, extractor, config)
    basis = saved_basis(store, "dino")
    assert basis.pattern.shape == (extractor.spec.width, 2, 4)
    real = ImageSet("scene-0002", "real", 18, 108, 192)
    raw = extractor(read_images(store.scene("scene-0002"), real, 0, 18), (2, 4))
    expected = project(basis.pca, raw - basis.pattern)
    stored = store.scene("scene-0002")["dino_features"][...].astype(np.float32)
    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    # the position explains less of the denoised features than of the raw ones
    assert position_share(raw - basis.pattern) < 0.5 * position_share(raw)
    record = store.scene("scene-0002").provenance("dino_features")
    assert record.config["config"]["denoise_positions"] is True
    assert record.position_pattern_sha256


def test_another_run_is_refused_unless_forced(store_with_views, extractor):
    store = store_with_views
    run_features(store, extractor, CONFIG, scene_ids=["scene-0002"])
    other = FeatureConfig(**{**CONFIG.__dict__, "channels": 3})
    with pytest.raises(FeatureRunError, match="holds dino features of another run.*--force"):
        run_features(store, extractor, other)
    forced = run_features(store, extractor, other, force=True)
    assert forced.done == ["scene-0001", "scene-0002"]
    assert store.scene("scene-0002")["dino_features"].shape[1] == 3


def test_a_store_without_images_is_a_clear_error(tmp_path, extractor):
    store = create_store(tmp_path / "empty.zarr", "nuscenes", "v1.0-mini")
    with pytest.raises(FeatureRunError, match="no committed scenes.*ingest"):
        run_features(store, extractor, CONFIG)


def test_cli_features_then_query_write_heat_maps(store_with_views, tmp_path, capsys):
    path = str(store_with_views.location.location)
    args = ["--random-init", "--pca", "4", "--input-width", "64", "--pca-images", "6"]
    assert main(["query", path, "--text", "car", "--png", str(tmp_path / "q")]) == 1
    assert "no CLIP features" in capsys.readouterr().err
    assert main(["features", path, "--model", "clip-vitb16", *args, "--json"]) == 0
    captured = capsys.readouterr()
    assert "RANDOM weights" in captured.err and '"random_init": true' in captured.out
    assert main(["features", path, "--model", "clip-vitb16", *args]) == 0
    assert "0 scene(s), 2 already done" in capsys.readouterr().out
    assert main(["query", path, "--text", "car", "--png", str(tmp_path / "q"),
                 "--max-images", "2"]) == 0
    out = capsys.readouterr()
    pngs = out.out.split()
    assert len(pngs) == 2 + 2 + 2  # two images per scene and two of scene 1's views
    from PIL import Image

    with Image.open(pngs[0]) as image:
        assert image.size == (192, 108)
    assert "RANDOM weights" in out.err
    assert main(["features", path, "--model", "clip-vitb16", "--weights",
                 str(tmp_path / "missing.pth")]) == 1
    assert "missing.pth does not exist" in capsys.readouterr().err


def test_kept_batches_of_other_images_are_never_reused(store_with_views, extractor,
                                                       small_dataset):
    """A run killed inside a scene, the scene re-ingested with other images, the run
    resumed: the kept batches belong to the old images (their key names the old content),
    so every image of the new version is extracted again."""
    from distillprep.scenes.nuscenes import read_nuscenes
    from distillprep.storage_schemas.ingest import IngestConfig, ingest

    store = store_with_views
    seen = []

    def kill_in_scene_two(n):
        seen.append(n)
        if sum(seen) >= 10 + 18 + VIEWS + 8:  # PCA sample, scene 1, two batches of scene 2
            raise _Killed

    with pytest.raises(_Killed):
        run_features(store, extractor, CONFIG, progress=kill_in_scene_two)
    read = read_nuscenes(small_dataset, scenes=["scene-0002"], sweeps=True)
    result = ingest(store, read.scenes, IngestConfig("nuscenes", read.version, sweeps=True))
    assert result.written == ["scene-0002"]  # 30 images now, the first ones other images
    resumed = run_features(store, extractor, CONFIG)
    assert resumed.done == ["scene-0002"] and resumed.images == 30
    view = store.scene("scene-0002")
    real = ImageSet("scene-0002", "real", 30, 108, 192)
    expected = project(saved_basis(store, "dino").pca,
                       extractor(read_images(view, real, 0, 8), (2, 4)))
    np.testing.assert_allclose(view["dino_features"][:8].astype(np.float32), expected,
                               rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    assert validate_store(store.location.location, deep=True).ok


def test_a_teacher_committed_during_a_feature_run_is_a_clear_retryable_refusal(
        store_with_views, extractor, capsys):
    """The virtual views change under a running feature extraction: nothing stale is
    committed, the run says why (no KeyError), and running it again does the work."""
    from distillprep.storage_schemas.errors import InputsChangedError
    from distillprep.teachers.foundation.job import extract_scene_features, fit_feature_basis

    store = store_with_views
    basis = fit_feature_basis(store, extractor, CONFIG)
    n = store.scene_attrs("scene-0001").num_samples
    rendered = []

    def render_meanwhile(images):
        if not rendered:  # another process renders the teacher again now
            rendered.append(write_teacher_stage(store, "scene-0001",
                                                teacher_arrays(n, 2, size=(54, 96), seed=5)))

    with pytest.raises(InputsChangedError, match="replaced while it ran") as info:
        extract_scene_features(store, "scene-0001", extractor, CONFIG, basis,
                               progress=render_meanwhile)
    assert info.value.retryable
    assert store.scene("scene-0001").provenance("dino_features") is None
    again = extract_scene_features(store, "scene-0001", extractor, CONFIG, basis)
    assert again.status == "written"
    assert store.scene("scene-0001")["dino_virtual_features"].shape[0] == 2
    assert validate_store(store.location.location, deep=True).ok
