"""The teacher stage's jobs over a store: fit a scene's teacher, render it into the store.
Plain functions, no argparse, no printing: progress goes to a callback.

Both read the scene from the store alone (`storage_schemas.stored_scene`): the dataset
is read once, by ingest. A checkpoint records the scene's content fingerprint, so a
checkpoint of other content is refused whatever path the store has now. Both are
idempotent: a fit whose checkpoint has reached its steps does nothing; a render whose
current commit came from the same checkpoint, configs and code version does nothing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from distillprep.scenes.io import file_sha256
from distillprep.storage_schemas.attrs import CommitRecord, config_hash
from distillprep.storage_schemas.partials import Pieces, drop_pieces, partial_prefix
from distillprep.storage_schemas.provenance import TeacherProvenance, VirtualViewCounts
from distillprep.storage_schemas.scene_view import SceneView
from distillprep.storage_schemas.store import Store, package_version
from distillprep.storage_schemas.stored_scene import load_scene

from ..errors import TeacherConfigError, TeacherDivergedError
from .checkpoint import check_matches, load_checkpoint, save_checkpoint
from .config import FitConfig
from .config_io import identity_hash, to_dict
from .fit import TrainingRays, resume_state, start_fit, train
from .outputs import RenderConfig, render_outputs
from .rays import check_scene_for_fit, holdout_frames

CODE_VERSION = 1
"""Version of what the teacher stage writes (bumped when its outputs change meaning)."""
RENDER_ROOT = "teacher_runs"
"""Where a render's finished images wait for its commit (`storage_schemas.partials`)."""

FitProgress = Callable[[int, int, dict[str, Any]], None]
"""Called with the step reached, the steps to reach and the logged losses (`fit.train`'s
record)."""


@dataclass(frozen=True)
class TeacherFitJob:
    """One scene's teacher fit, as the stage runs it."""

    fit: FitConfig | None = None
    """What is fitted; None: the checkpoint's own when resuming, else the defaults."""
    steps: int | None = None
    """Total steps to reach (None: the fit config's `steps`)."""
    holdout: int = 2
    """Interior keyframes held out of the fit to measure the teacher (0: none)."""
    keyframes_only: bool = False
    """Fit on keyframes alone; by default on every frame the store holds: the keyframes
    and, when the scene was ingested with --sweeps, the sweeps between them (EmerNeRF)."""
    checkpoint_every: int = 500
    """Steps between checkpoints (one is always written at the end)."""
    device: str = "cpu"
    """Torch device the fit runs on (cuda: the same code, hash grids on tiny-cuda-nn where
    it imports)."""


@dataclass(frozen=True)
class FitResult:
    """What `fit_teacher` did."""

    scene_id: str
    checkpoint: Path
    status: Literal["fitted", "resumed", "done"]
    """fitted: from step 0; resumed: from a checkpoint; done: it had its steps already."""
    step: int
    """Steps the checkpoint holds now."""
    steps_now: int
    """Steps this call took."""
    wall_time_s: float
    """Seconds of fitting, over every run of the fit."""
    backend: str
    """Hash-encoding backend."""
    frames: list[int]
    """Frames of the scene the teacher was fitted on."""
    last: dict[str, Any]
    """The last logged losses (`fit.train`'s record)."""


@dataclass(frozen=True)
class TeacherRenderJob:
    """What rendering a fitted teacher into the store writes."""

    render: RenderConfig = field(default_factory=RenderConfig)
    """Dense depth scale, virtual views, samples per ray, depth kind."""
    samples: Literal["keyframes", "all"] = "keyframes"
    """Camera samples rendered: the keyframes (what DistillNeRF trains on) or also the
    sweeps the store holds; the others' teacher arrays stay empty (has_teacher_depth
    false in the manifest)."""
    fit: FitConfig | None = None
    """The config the checkpoint must have been fitted with (None: whichever)."""
    device: str = "cpu"
    """Torch device the teacher renders on."""


@dataclass(frozen=True)
class RenderResult:
    """What `render_teacher` did."""

    scene_id: str
    status: Literal["written", "skipped"]
    """written: rendered and committed now; skipped: the same teacher was committed."""
    commit: CommitRecord
    """The scene's teacher commit."""
    wall_time_s: float


def _fit_source(config: TeacherFitJob) -> dict[str, Any]:
    """What a fit was asked for beyond its FitConfig (the checkpoint keeps it)."""
    return {"keyframes_only": config.keyframes_only, "holdout": config.holdout}


def _run_config(fit: FitConfig, steps: int | None) -> FitConfig:
    """The config a fit runs (and its checkpoint records): `steps` (None: the config's)
    and losses logged at least every 10 steps."""
    return dataclasses.replace(fit, steps=fit.steps if steps is None else steps,
                               log_every=min(fit.log_every, 10))


def teacher_request(fit: TeacherFitJob, render: TeacherRenderJob) -> dict[str, Any]:
    """What the teacher commit of these two jobs records in its provenance config (all
    of it but the checkpoint's hash, which exists only once fitted)."""
    return {"fit": to_dict(_run_config(fit.fit or FitConfig(), fit.steps)),
            "fit_source": _fit_source(fit), "render": to_dict(render.render),
            "samples": render.samples}


def teacher_done(view: SceneView, fit: TeacherFitJob, render: TeacherRenderJob) -> bool:
    """Whether the scene's current (not stale) teacher commit came from these jobs and
    this code: then neither the fit nor the render has anything to do."""
    record = view.provenance("teacher")
    if record is None or record.code_version != CODE_VERSION:
        return False
    return all(record.config.get(k) == v for k, v in teacher_request(fit, render).items())


def checkpoint_name(view: SceneView, fit: TeacherFitJob) -> str:
    """`<scene>/<key>.pt`: a checkpoint path keyed to the fit's config and the scene's
    content, so that a changed config or re-ingested scene starts a new fit."""
    request = {"fit": identity_hash(fit.fit or FitConfig()),  # a longer fit resumes it
               "fit_source": _fit_source(fit), "scene": view.fingerprint}
    return f"{view.scene_id}/{config_hash(request)[:16]}.pt"


def _fit_frames(scene, config: TeacherFitJob) -> list[int]:
    train_frames = (holdout_frames(scene, config.holdout)[0] if config.holdout
                    else [f.index for f in scene.frames])
    if config.keyframes_only:
        train_frames = [f for f in train_frames if scene.frames[f].is_keyframe]
    return train_frames


def fit_teacher(store: Store, scene_id: str, checkpoint: str | Path,
                config: TeacherFitJob = TeacherFitJob(),
                progress: FitProgress | None = None) -> FitResult:
    """Fit (or resume fitting) a scene's teacher from the store to `checkpoint`; a
    KeyboardInterrupt saves the checkpoint before it goes on up. Raises TeacherDataError
    for a scene a teacher cannot be fitted to (naming what is missing), CheckpointError
    for a checkpoint of another scene or config, TeacherDivergedError naming the last good
    checkpoint."""
    checkpoint = Path(checkpoint)
    view = store.scene(scene_id)
    scene = load_scene(store, scene_id, view)
    check_scene_for_fit(scene)
    # what the fit was asked for; the scene itself is named by id and content fingerprint
    source = _fit_source(config)
    if checkpoint.exists():
        saved = load_checkpoint(checkpoint, config.device)
        check_matches(saved, scene_id, view.fingerprint, config.fit)
        if bool(saved.source.get("keyframes_only")) != config.keyframes_only:
            was, now = ("with", "without") if config.keyframes_only else ("without", "with")
            raise TeacherConfigError(f"checkpoint {checkpoint} was fitted {was} sweep "
                                     f"frames; resume it {now} --keyframes-only")
        state, frames, status = resume_state(saved), saved.frames, "resumed"
        fit_config = saved.teacher.config
    else:
        fit_config = config.fit or FitConfig()
        frames, status = _fit_frames(scene, config), "fitted"
        state = None
    fit_config = _run_config(fit_config, config.steps)
    steps = fit_config.steps
    if state is not None and state.step >= steps:
        return _fit_result(scene_id, checkpoint, "done", state, 0, frames)
    if state is None:
        state, rays = start_fit(scene, frames, fit_config, config.device)
    else:
        rays = TrainingRays.of(scene, frames, fit_config, config.device)
    state.teacher.config = fit_config
    first, saved_at = state.step, {"step": state.step if status == "resumed" else None}

    def save() -> None:
        save_checkpoint(checkpoint, state, scene_id, view.fingerprint, frames, source)
        saved_at["step"] = state.step

    def callback(step, record, teacher) -> bool:
        if progress is not None:
            progress(step, steps, record)
        if step - (saved_at["step"] or 0) >= config.checkpoint_every:
            save()
        return False

    try:
        train(state, rays, steps, callback)
    except TeacherDivergedError as exc:
        good = (f"last good checkpoint: {checkpoint} (step {saved_at['step']})"
                if saved_at["step"] is not None else "no checkpoint was written before it")
        exc.args = (f"scene {scene_id!r}: fit stopped, {exc}; {good}",)
        raise
    except KeyboardInterrupt:
        save()
        raise
    save()
    return _fit_result(scene_id, checkpoint, status, state, state.step - first, frames)


def _fit_result(scene_id, checkpoint, status, state, steps_now, frames) -> FitResult:
    history = state.teacher.history
    return FitResult(scene_id, checkpoint, status, state.step, steps_now, state.wall_time_s,
                     state.teacher.field.grid.backend, list(frames),
                     history[-1] if history else {})


def render_teacher(store: Store, scene_id: str, checkpoint: str | Path,
                   config: TeacherRenderJob = TeacherRenderJob(),
                   progress: Callable[[Iterable], Iterable] | None = None) -> RenderResult:
    """Render a fitted teacher's dense depth and virtual views of a scene into the store
    (the teacher stage's commit: its arrays and manifest columns, nothing else).
    `progress(iterable)` wraps the loop over the rendered samples. Every finished image is
    kept in the store until the commit, keyed to the checkpoint, configs and the scene's
    content: a killed render resumes where it stopped."""
    start = time.perf_counter()
    checkpoint = Path(checkpoint)
    view = store.scene(scene_id)
    saved = load_checkpoint(checkpoint, config.device)
    check_matches(saved, scene_id, view.fingerprint, config.fit)
    settings = {"fit": to_dict(saved.teacher.config), "fit_source": dict(saved.source),
                "render": to_dict(config.render), "samples": config.samples,
                "checkpoint_sha256": file_sha256(checkpoint)}
    identity = config_hash(settings)
    current = view.provenance("teacher")
    if (current is not None and current.config_hash == identity
            and current.code_version == CODE_VERSION):
        return RenderResult(scene_id, "skipped", view.commits["teacher"],
                            time.perf_counter() - start)
    base = view.heads["teacher"].sequence if "teacher" in view.heads else 0
    scene = load_scene(store, scene_id, view)
    samples = [i for i, s in enumerate(scene.camera_samples)
               if config.samples == "all" or s.is_keyframe]
    kept = Pieces(store, partial_prefix(RENDER_ROOT, scene_id, {
        "render": identity, "inputs": view.input_fingerprints("teacher")}))
    outputs = render_outputs(saved.teacher, scene, saved.frames, config.render,
                             samples=samples, progress=progress, pieces=kept)
    figures, teacher = outputs.figures, saved.teacher
    history = teacher.history[-1] if teacher.history else {}
    counts = figures["virtual_views"]
    provenance = TeacherProvenance(
        stage="teacher", config=settings, config_hash=identity, code_version=CODE_VERSION,
        package_version=package_version(), finished_at=datetime.now(UTC),
        wall_time_s=saved.wall_time_s + figures["render_time_s"],
        inputs=view.input_fingerprints("teacher"), backend=saved.backend,
        device=str(teacher.device), steps=saved.step,
        fit_wall_time_s=round(saved.wall_time_s, 1), render_time_s=figures["render_time_s"],
        checkpoint_sha256=settings["checkpoint_sha256"], fitted_frames=list(saved.frames),
        heldout_frames=figures["heldout_frames"], rendered_samples=samples,
        final_losses={k: history.get(k) for k in ("rgb_loss", "depth_loss")},
        heldout_psnr_db=figures["heldout_psnr_db"], train_psnr_db=figures["train_psnr_db"],
        lidar_abs_rel=figures["lidar_abs_rel"],
        lidar_abs_rel_heldout=figures["lidar_abs_rel_heldout"],
        virtual_views=VirtualViewCounts(**counts))
    record = store.commit_stage(scene_id, provenance, outputs.arrays, outputs.columns,
                                expect_sequence=base)
    drop_pieces(store, RENDER_ROOT, scene_id)
    return RenderResult(scene_id, "written", record, time.perf_counter() - start)
