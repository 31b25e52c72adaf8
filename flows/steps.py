"""The steps of `prepare_dataset` as plain functions: each opens the store, asks its
provenance whether the step is done (then it returns "skipped" without touching the
scene), else calls the stage's job. Prefect tasks wrap these one to one
(`prepare.py`); tests call them without Prefect.

Arguments are small and picklable (a `Target`, the config, a scene id), so that a step
runs the same in a thread, a process or on a Dask worker; results are small too.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from distillprep.scenes.errors import DataError
from distillprep.storage_schemas.store import Store, open_store

from . import failpoints
from .prepare_config import FeatureModel, PrepareConfig

Log = Callable[[str], None]
NO_SLOT = contextlib.nullcontext()
"""What a device step holds while it works when no device slot is asked for."""


class SceneInvalidError(DataError):
    """A prepared scene that `validate` finds broken (the message lists the findings)."""


@dataclass(frozen=True)
class Target:
    """Where a preparation reads and writes."""

    dataroot: str
    """The dataset's root folder."""
    dataset: str
    """The dataset reader (`scenes.datasets.READERS`)."""
    store: str
    """Store path or URL."""
    work_dir: str
    """Teacher checkpoints (`<work_dir>/checkpoints/<scene>/<key>.pt`)."""
    storage_options: dict[str, str] = field(default_factory=dict)
    """fsspec options of a store URL."""
    slots: str = "local"
    """The kind of device slots steps hold (`slots.py`): local, dask, prefect:<name>,
    none."""

    def open(self, mode: str = "a") -> Store:
        return open_store(self.store, mode=mode, storage_options=self.storage_options)


@dataclass(frozen=True)
class StepResult:
    """What one step did for one scene (or, for a feature basis, for the store)."""

    scene_id: str
    step: str
    status: Literal["done", "skipped"]
    """done: work was done now; skipped: the store already held it."""
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)
    """A few numbers worth a summary (PSNR, depth error, images, fit status)."""


def default_work_dir(store: str) -> str:
    """`<store>.work` beside a local store; `./distillprep_work` for a URL."""
    return f"{store.rstrip('/')}.work" if "://" not in store else "distillprep_work"


def discover(target: Target, config: PrepareConfig, scenes: list[str] | None = None,
             ) -> tuple[str, list[str]]:
    """The dataset's version and its scene ids (all, or those named, in that order);
    the store is created when it does not exist yet."""
    from distillprep.scenes.datasets import list_scenes
    from distillprep.storage_schemas.store import create_store

    version, found = list_scenes(target.dataset, target.dataroot, config.ingest.version)
    create_store(target.store, target.dataset, version, target.storage_options)
    return version, list(scenes) if scenes else found


def _ingest_config(target: Target, config: PrepareConfig, version: str):
    from distillprep.storage_schemas.ingest import IngestConfig

    return IngestConfig(dataset=target.dataset, version=version, sweeps=config.ingest.sweeps,
                        sky_masks=config.ingest.sky_masks)


def ingest_step(target: Target, config: PrepareConfig, version: str, scene_id: str,
                ) -> StepResult:
    """Ingest one scene (reading only that scene of the dataset), unless the store holds
    it from the same dataroot, config and code."""
    from distillprep.scenes.datasets import read_dataset
    from distillprep.storage_schemas.ingest import ingest_committed, ingest_scene

    start, store = time.perf_counter(), target.open()
    settings = _ingest_config(target, config, version)
    if ingest_committed(store, scene_id, settings, target.dataroot) is not None:
        return StepResult(scene_id, "ingest", "skipped", time.perf_counter() - start)
    read = read_dataset(target.dataset, target.dataroot, version=version, scenes=[scene_id],
                        sweeps=config.ingest.sweeps)
    result = ingest_scene(store, read.scenes[0], settings)
    return StepResult(scene_id, "ingest", "done" if result.status == "written" else "skipped",
                      time.perf_counter() - start,
                      {"stale_stages": result.stale_stages} if result.stale_stages else {})


def checkpoint_path(target: Target, store: Store, scene_id: str, config: PrepareConfig) -> Path:
    from distillprep.teachers.nerf.job import checkpoint_name

    return Path(target.work_dir) / "checkpoints" / checkpoint_name(
        store.scene(scene_id), _fit_job(config))


def _fit_job(config: PrepareConfig):
    import dataclasses

    return dataclasses.replace(config.teacher, device=config.device)


def _render_job(config: PrepareConfig):
    import dataclasses

    return dataclasses.replace(config.render, device=config.device)


def teacher_fit_step(target: Target, config: PrepareConfig, scene_id: str,
                     log: Log | None = None,
                     slot: AbstractContextManager = NO_SLOT) -> StepResult:
    """Fit (or resume) the scene's teacher, unless its current teacher commit came from
    this config (then the fit has nothing to add)."""
    from distillprep.teachers.nerf.job import fit_teacher, teacher_done

    start, store = time.perf_counter(), target.open()
    if teacher_done(store.scene(scene_id), _fit_job(config), _render_job(config)):
        return StepResult(scene_id, "teacher-fit", "skipped", time.perf_counter() - start)
    checkpoint = checkpoint_path(target, store, scene_id, config)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    every = max(1, (config.teacher.steps or 1) // 5)

    def progress(step: int, total: int, record: dict) -> None:
        if step > config.teacher.checkpoint_every:  # past a checkpoint: a fault test's
            failpoints.hit("teacher-fit-midway", scene_id, target.work_dir)
        if log is not None and (step % every == 0 or step == total):
            log(f"scene {scene_id}: teacher step {step}/{total}, PSNR "
                f"{record.get('psnr', float('nan')):.2f} dB")

    with slot:
        result = fit_teacher(store, scene_id, checkpoint, _fit_job(config), progress)
    return StepResult(scene_id, "teacher-fit", "skipped" if result.status == "done" else "done",
                      time.perf_counter() - start,
                      {"fit": result.status, "steps": result.step, "steps_now": result.steps_now,
                       "backend": result.backend})


def teacher_render_step(target: Target, config: PrepareConfig, scene_id: str,
                        slot: AbstractContextManager = NO_SLOT) -> StepResult:
    """Render the fitted teacher into the store (skipped when the same teacher is
    committed)."""
    from distillprep.teachers.nerf.job import render_teacher, teacher_done

    start, store = time.perf_counter(), target.open()
    checkpoint = checkpoint_path(target, store, scene_id, config)
    if teacher_done(store.scene(scene_id), _fit_job(config), _render_job(config)):
        slot = NO_SLOT  # render_teacher finds it committed: nothing to hold a device for
    with slot:
        result = render_teacher(store, scene_id, checkpoint, _render_job(config))
    record = result.commit.provenance
    return StepResult(scene_id, "teacher-render",
                      "done" if result.status == "written" else "skipped",
                      time.perf_counter() - start,
                      {"heldout_psnr_db": record.heldout_psnr_db,
                       "lidar_abs_rel": record.lidar_abs_rel,
                       "virtual_views": record.virtual_views.kept})


_extractors: dict[tuple, Any] = {}
_extractors_lock = threading.Lock()


def extractor_for(model: FeatureModel, device: str):
    """The model's extractor, built once per process (threads of a runner share it)."""
    from distillprep.teachers.foundation.extract import load_extractor

    key = (model, device)
    with _extractors_lock:
        if key not in _extractors:
            _extractors[key] = load_extractor(model.config, model.weights, device,
                                              model.batch_size)
        return _extractors[key]


def check_feature_weights(config: PrepareConfig) -> None:
    """Refuse, before anything runs, a feature model whose weights cannot be found."""
    from distillprep.scenes.errors import ConfigError
    from distillprep.teachers.foundation.models import model_spec
    from distillprep.teachers.foundation.weights import WeightsNotFoundError, find_weights

    for model in config.features:
        if model.config.random_init:
            continue
        try:
            find_weights(model_spec(model.config.model), model.weights)
        except WeightsNotFoundError as exc:
            raise ConfigError(
                f"{exc}. Either configure the weights (`weights:` of this model under "
                "`features:` in the --config file, or <model>.pth in $DISTILLPREP_WEIGHTS_DIR) "
                "or pass --random-init-features for a run with random weights (tests, "
                "demos)") from None


def feature_basis_step(target: Target, config: PrepareConfig, model: FeatureModel,
                       replace_run: bool = False,
                       slot: AbstractContextManager = NO_SLOT) -> StepResult:
    """The model's PCA basis over the store's real and virtual images (reused when the
    store holds this run)."""
    from distillprep.teachers.foundation.job import fit_feature_basis, saved_basis

    start, store = time.perf_counter(), target.open()
    extractor = extractor_for(model, config.device)
    before = saved_basis(store, extractor.spec.family)
    with slot:
        basis = fit_feature_basis(store, extractor, model.config, force=replace_run)
    reused = before is not None and before.run.run_id == basis.run.run_id
    return StepResult("*", f"basis-{model.config.model}", "skipped" if reused else "done",
                      time.perf_counter() - start, {"run_id": basis.run.run_id[:12]})


def features_step(target: Target, config: PrepareConfig, model: FeatureModel,
                  scene_id: str, slot: AbstractContextManager = NO_SLOT) -> StepResult:
    """One scene's features of the model's saved run (skipped when it holds them)."""
    from distillprep.scenes.errors import ConfigError
    from distillprep.teachers.foundation.job import (
        extract_scene_features,
        saved_basis,
        scene_done,
    )

    start, store = time.perf_counter(), target.open()
    extractor = extractor_for(model, config.device)
    basis = saved_basis(store, extractor.spec.family)
    if basis is None:
        raise ConfigError(f"store {target.store}: no {extractor.spec.family} feature run to "
                          "extract with (its basis step did not finish)")
    if scene_done(store.scene(scene_id), extractor.spec.family, basis.run.run_id):
        slot = NO_SLOT  # extract_scene_features skips it: nothing to hold a device for
    with slot:
        result = extract_scene_features(store, scene_id, extractor, model.config, basis)
    return StepResult(scene_id, f"features-{model.config.model}",
                      "done" if result.status == "written" else "skipped",
                      time.perf_counter() - start, {"images": result.images})


def validate_step(target: Target, config: PrepareConfig, scene_id: str) -> StepResult:
    """Check the prepared scene against the schema; SceneInvalidError lists the errors."""
    from distillprep.storage_schemas.validate import validate_scene

    start = time.perf_counter()
    report = validate_scene(target.open("r"), scene_id)
    if not report.ok:
        raise SceneInvalidError(f"scene {scene_id!r} in {target.store} is invalid: "
                                + "; ".join(str(f) for f in report.errors))
    return StepResult(scene_id, "validate", "done", time.perf_counter() - start,
                      {"warnings": len(report.findings)})
