"""The whole preparation through the stage job functions alone, as a flow will call them:
ingest -> teacher fit -> teacher render -> DINOv2 and CLIP features -> validate, with the
dataset deleted right after ingest; then every job again, which finds its work done."""

import shutil

import numpy as np
import torch
from test_teacher_fit import TINY

from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.storage_schemas.ingest import IngestConfig, ingest_scene
from distillprep.storage_schemas.store import create_store
from distillprep.storage_schemas.validate import format_report, validate_scene
from distillprep.teachers.foundation.extract import FeatureConfig, load_extractor
from distillprep.teachers.foundation.job import extract_scene_features, fit_feature_basis
from distillprep.teachers.nerf.job import (
    TeacherFitJob,
    TeacherRenderJob,
    fit_teacher,
    render_teacher,
)
from distillprep.teachers.nerf.outputs import RenderConfig
from distillprep.teachers.nerf.virtual import VirtualViewConfig

SCENE = "scene-0001"
MODELS = (FeatureConfig(model="dinov2-vits14", channels=4, input_width=56, pca_images=8,
                        random_init=True),
          FeatureConfig(model="clip-vitb16", channels=4, input_width=64, pca_images=8,
                        random_init=True))


def test_every_stage_runs_from_the_store_alone_and_twice_does_nothing(small_dataset,
                                                                      tmp_path):
    torch.set_num_threads(2)
    dataroot = shutil.copytree(small_dataset, tmp_path / "nuscenes")
    read = read_nuscenes(dataroot, scenes=[SCENE], sweeps=True)
    store = create_store(tmp_path / "store.zarr", "nuscenes", read.version)
    config = IngestConfig("nuscenes", read.version, sweeps=True)
    assert ingest_scene(store, read.scenes[0], config).status == "written"
    shutil.rmtree(dataroot)  # the dataset is read once, by ingest

    ckpt = tmp_path / "teacher.pt"
    fit_job = TeacherFitJob(fit=TINY, steps=40, holdout=0)
    fitted = fit_teacher(store, SCENE, ckpt, fit_job)
    assert fitted.status == "fitted" and fitted.step == 40
    assert fitted.frames == [0, 1, 2, 3, 4]  # 3 keyframes and the sweep frames between
    render_job = TeacherRenderJob(render=RenderConfig(
        scale=0.25, virtual=VirtualViewConfig(resolution_scale=0.25)))
    rendered = render_teacher(store, SCENE, ckpt, render_job)
    assert rendered.status == "written"
    record = rendered.commit.provenance
    assert record.rendered_samples == [i for i in range(30) if i % 12 < 6]  # keyframes
    assert record.train_psnr_db is not None and record.lidar_abs_rel is not None
    for features in MODELS:
        extractor = load_extractor(features, batch_size=8)
        basis = fit_feature_basis(store, extractor, features)
        done = extract_scene_features(store, SCENE, extractor, features, basis)
        assert done.status == "written" and done.images > 0
    report = validate_scene(store, SCENE, deep=True)
    assert report.ok and {f.rule for f in report.findings} == {"random-weights"}, (
        format_report(report))
    view = store.scene(SCENE)
    assert set(view.stages()) == {"ingest", "teacher", "dino_features", "clip_features"}
    views = view["virtual_rgb"].shape[0]
    assert view["dino_virtual_features"].shape[0] == view["clip_virtual_features"].shape[0] \
        == views > 0
    assert np.all(np.isfinite(view["clip_features"][...].astype(np.float32)))

    # every job again: the store says the work is done, nothing is written
    sequences = store.sequences(SCENE)
    assert ingest_scene(store, read.scenes[0], config).status == "skipped"
    assert fit_teacher(store, SCENE, ckpt, fit_job).status == "done"
    assert render_teacher(store, SCENE, ckpt, render_job).status == "skipped"
    for features in MODELS:
        extractor = load_extractor(features, batch_size=8)
        basis = fit_feature_basis(store, extractor, features)
        assert extract_scene_features(store, SCENE, extractor, features,
                                      basis).status == "skipped"
    assert store.sequences(SCENE) == sequences
    # a longer fit is more work: it resumes, and the render that follows is new work
    longer = fit_teacher(store, SCENE, ckpt, TeacherFitJob(fit=TINY, steps=45, holdout=0))
    assert longer.status == "resumed" and longer.steps_now == 5
    assert render_teacher(store, SCENE, ckpt, render_job).status == "written"
    assert set(store.scene(SCENE).stale) == {"dino_features", "clip_features"}


class _Killed(Exception):
    pass


def test_a_killed_render_resumes_with_the_same_outputs(sweeps_store_copy, tmp_path,
                                                       monkeypatch):
    import distillprep.teachers.nerf.outputs as outputs_module
    from distillprep.storage_schemas.store import open_store

    torch.set_num_threads(2)
    store = open_store(sweeps_store_copy, mode="a")
    clean = open_store(shutil.copytree(sweeps_store_copy, tmp_path / "clean.zarr"), mode="a")
    ckpt = tmp_path / "teacher.pt"
    fit_teacher(store, SCENE, ckpt, TeacherFitJob(fit=TINY, steps=20, holdout=0))
    job = TeacherRenderJob(render=RenderConfig(
        scale=0.25, virtual=VirtualViewConfig(resolution_scale=0.25)))
    render_teacher(clean, SCENE, ckpt, job)

    def killed_after_seven(images):
        for i, image in enumerate(images):
            if i == 7:
                raise _Killed
            yield image

    try:
        render_teacher(store, SCENE, ckpt, job, progress=killed_after_seven)
    except _Killed:
        pass
    kept = store.location.find(f"teacher_runs/partial/{SCENE}")
    assert sorted(k.rsplit("/", 1)[-1] for k in kept) == sorted(
        f"real-{i}.npz" for i in (0, 1, 2, 3, 4, 5, 12))  # keyframe samples 0-5 and 12
    calls = []
    real = outputs_module.render_view
    monkeypatch.setattr(outputs_module, "render_view",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    assert render_teacher(store, SCENE, ckpt, job).status == "written"
    ours, theirs = store.scene(SCENE), clean.scene(SCENE)
    assert len(calls) == 18 - 7 + ours["virtual_rgb"].shape[0]  # the seven were not redone
    for name in ours.array_names():
        if name.startswith(("teacher_", "virtual_")):
            np.testing.assert_array_equal(ours[name][...], theirs[name][...], err_msg=name)
    assert store.manifest([SCENE]).equals(clean.manifest([SCENE]))
    assert not store.location.find(f"teacher_runs/partial/{SCENE}")
