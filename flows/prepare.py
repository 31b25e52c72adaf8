"""`prepare_dataset`: the whole preparation of a dataset as one Prefect flow. It only
wires: every step is a task around a plain function of `steps.py`, and the store says
what is done (each step skips what is committed with the same inputs, config and code).

    discover -> per scene: ingest -> teacher fit -> teacher render
             -> per feature model: its basis over the store's real and virtual images
             -> per scene: features of each model -> validate
             -> quarantine records, artifacts, the summary

A scene whose step fails for good is quarantined (a record in the store), every other
scene goes on, and the flow ends `Completed` named "PartialSuccess". Retries are only for
errors that say retrying can help, with our own randomised backoff. Teacher fits, renders
and feature extraction hold a device slot (`slots.py`: a semaphore for threads, worker
resources on Dask, or a Prefect global concurrency limit).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect.states import Completed, Failed, State

# absolute imports: Prefect may load this file by path (entrypoint flows/prepare.py:...)
from distillprep.flows import failpoints, slots, steps
from distillprep.flows.prepare_config import PrepareConfig, load_prepare_config, with_overrides
from distillprep.flows.summary import Outcome, SceneReport, publish, summarize

Progress = Callable[[steps.StepResult | None, int], None]
"""Called with a finished step (None for a failed one) and the steps the run expects."""
_progress: Progress | None = None
_expected = [0]


def set_progress(callback: Progress | None) -> None:
    """Called in the flow's process as steps finish: the CLI's progress bar. Not a flow
    parameter, so deployments stay serialisable."""
    global _progress
    _progress = callback


def retry_delays(retries: int, first_s: float, rng: random.Random | None = None,
                 ) -> list[float]:
    """Exponential backoff, each delay randomised by +-50 % (Prefect's own jitter does
    nothing for task retries in 3.x)."""
    rng = rng or random.Random()
    return [first_s * 2 ** i * rng.uniform(0.5, 1.5) for i in range(retries)]


def _retryable(task, task_run, state) -> bool:
    """Retry only errors that say retrying can help (`DistillprepError.retryable`)."""
    error = state.result(raise_on_failure=False)
    return bool(getattr(error, "retryable", False))


def _attempt() -> int:
    context = TaskRunContext.get()
    return context.task_run.run_count if context else 1


def _run(name: str, step: Callable[..., steps.StepResult], target: steps.Target,
         config: PrepareConfig, *args, scene_id: str = "*", device: bool = False,
         **kwargs):
    """Run a step (holding a device slot if `device`); its error carries the attempt."""
    if device:  # taken only around real work: a step the store has done takes none
        kwargs["slot"] = slots.slot(target.slots)
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        failpoints.hit(name, scene_id, target.work_dir)
        return step(target, config, *args, **kwargs)
    except Exception as exc:
        exc.attempts = _attempt()
        raise


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(target, config, version, scene_id):
    return _run("ingest", steps.ingest_step, target, config, version, scene_id,
                scene_id=scene_id)


@task(name="teacher-fit", cache_policy=NO_CACHE)
def teacher_fit_task(target, config, scene_id):
    return _run("teacher-fit", steps.teacher_fit_step, target, config, scene_id,
                scene_id=scene_id, log=get_run_logger().info, device=True)


@task(name="teacher-render", cache_policy=NO_CACHE)
def teacher_render_task(target, config, scene_id):
    return _run("teacher-render", steps.teacher_render_step, target, config, scene_id,
                scene_id=scene_id, device=True)


@task(name="feature-basis", cache_policy=NO_CACHE)
def feature_basis_task(target, config, model, replace_run):
    return _run("feature-basis", steps.feature_basis_step, target, config, model,
                replace_run, device=True)


@task(name="features", cache_policy=NO_CACHE)
def features_task(target, config, model, scene_id):
    return _run("features", steps.features_step, target, config, model, scene_id,
                scene_id=scene_id, device=True)


@task(name="validate", cache_policy=NO_CACHE)
def validate_task(target, config, scene_id):
    return _run("validate", steps.validate_step, target, config, scene_id, scene_id=scene_id)


DEVICE_TASKS = {"teacher-fit", "teacher-render", "feature-basis", "features"}


def _submit(t, config: PrepareConfig, target: steps.Target, *args, wait_for=None,
            run_name: str | None = None):
    options = {"retries": config.retries, "retry_condition_fn": _retryable,
               "retry_delay_seconds": retry_delays(config.retries, config.retry_delay_s)}
    if run_name:
        options["task_run_name"] = run_name
    with slots.submit_context(target.slots, t.name in DEVICE_TASKS):
        return t.with_options(**options).submit(target, *args, wait_for=wait_for)


def _outcome(future: PrefectFuture) -> tuple[str, Any]:
    """("ok", StepResult) | ("failed", the exception) | ("not-run", None): an upstream step
    failed. The final state comes from the runner's own future (threads or Dask), with its
    data in memory: the API's copy lags behind and carries no data."""
    state = future.wrapped_future.result()
    if state.is_completed():
        return "ok", state.result()
    if state.is_failed() or state.is_crashed():
        return "failed", state.result(raise_on_failure=False)
    return "not-run", None


def _collect(futures: list[PrefectFuture]) -> None:
    """Wait for every future, telling the progress callback as each finishes."""
    for future in as_completed(futures):
        if _progress is not None:
            kind, value = _outcome(future)
            _progress(value if kind == "ok" else None, _expected[0])


def _settle(report: SceneReport, chain: list[tuple[str, PrefectFuture]]) -> None:
    """Fold a scene's finished steps into its report; the first failure quarantines it
    (the steps after it never ran: their upstream failed)."""
    for step, future in chain:
        kind, value = _outcome(future)
        if kind == "ok":
            report.steps.append(value)
        elif kind == "failed":
            report.fail(step, value)
            return


@flow(name="prepare-dataset")
def prepare_dataset(dataroot: str, store: str, dataset: str = "nuscenes",
                    scenes: list[str] | None = None, config_file: str | None = None,
                    teacher_steps: int | None = None, random_init_features: bool = False,
                    retry_quarantined: bool = False, replace_feature_runs: bool = False,
                    storage_options: dict[str, str] | None = None,
                    work_dir: str | None = None) -> State:
    """Prepare `dataroot`'s scenes (all, or those named) into `store`: ingest, teacher,
    features of each configured model, validation. Returns Completed when every scene is
    prepared, Completed named "PartialSuccess" when some are quarantined, Failed when
    none is or a store-wide step (a feature basis) failed; its data is the summary."""
    logger = get_run_logger()
    started = datetime.now(UTC)
    config = with_overrides(load_prepare_config(config_file) if config_file
                            else PrepareConfig(), teacher_steps, random_init_features)
    steps.check_feature_weights(config)
    target = steps.Target(dataroot, dataset, store, work_dir or config.work_dir
                          or steps.default_work_dir(store), dict(storage_options or {}),
                          _slot_kind(config, logger))
    slots.prepare_slots(target.slots, config.device_slots)
    version, scene_ids = steps.discover(target, config, scenes)
    reports = _quarantine_gate(target, scene_ids, retry_quarantined, logger)
    active = [s for s in scene_ids if not reports[s].quarantined]
    logger.info(f"{len(scene_ids)} scene(s), {len(active)} to prepare, store {store}")
    _expected[0] = len(active) * (4 + len(config.features)) + len(config.features)

    chains = {}
    for s in active:
        ingest = _submit(ingest_task, config, target, config, version, s,
                         run_name=f"ingest-{s}")
        fit = _submit(teacher_fit_task, config, target, config, s, wait_for=[ingest],
                      run_name=f"teacher-fit-{s}")
        render = _submit(teacher_render_task, config, target, config, s, wait_for=[fit],
                         run_name=f"teacher-render-{s}")
        chains[s] = [("ingest", ingest), ("teacher-fit", fit), ("teacher-render", render)]
    _collect([f for chain in chains.values() for _, f in chain])
    for s, chain in chains.items():
        _settle(reports[s], chain)

    ready = [s for s in active if not reports[s].quarantined]
    run_errors: dict[str, str] = {}
    chains = {s: [] for s in ready}
    if ready:
        for model in config.features:
            basis = _submit(feature_basis_task, config, target, config, model,
                            replace_feature_runs, run_name=f"basis-{model.config.model}")
            _collect([basis])
            kind, value = _outcome(basis)
            if kind != "ok":
                run_errors[model.config.model] = f"{type(value).__name__}: {value}"
                continue
            step = f"features-{model.config.model}"
            for s in ready:
                chains[s].append((step, _submit(features_task, config, target, config, model,
                                                s, run_name=f"{step}-{s}")))
        if not run_errors:
            for s in ready:
                chains[s].append(("validate", _submit(
                    validate_task, config, target, config, s, wait_for=[f for _, f in chains[s]],
                    run_name=f"validate-{s}")))
        _collect([f for chain in chains.values() for _, f in chain])
        for s, chain in chains.items():
            _settle(reports[s], chain)

    summary = summarize(target, reports, run_errors, started, config)
    publish(target, summary, reports, flow_run=_flow_run_id())
    return _final_state(summary)


def _quarantine_gate(target: steps.Target, scene_ids: list[str], retry: bool, logger,
                     ) -> dict[str, SceneReport]:
    from distillprep.storage_schemas.quarantine import quarantined

    store = target.open()
    held = quarantined(store)
    reports = {}
    for s in scene_ids:
        reports[s] = SceneReport(s)
        if s in held and not retry:
            reports[s].outcome = Outcome.QUARANTINED_BEFORE
            reports[s].error = f"{held[s].step}: {held[s].message}"
            logger.warning(f"scene {s}: quarantined by an earlier run ({held[s].step}: "
                           f"{held[s].kind}); pass --retry-quarantined to try it again")
    return reports


def _slot_kind(config: PrepareConfig, logger) -> str:
    """Which device slots this run's steps hold (`slots.py`)."""
    if config.slot_limit:
        return f"prefect:{config.slot_limit}"
    from prefect.context import FlowRunContext

    runner = FlowRunContext.get().task_runner
    if type(runner).__name__ != "DaskTaskRunner":
        return "local"
    workers = runner.client.scheduler_info()["workers"].values()
    if any(slots.RESOURCE in w.get("resources", {}) for w in workers):
        return "dask"
    logger.warning(f"no Dask worker offers the resource {slots.RESOURCE!r} (start workers "
                   f"with --resources {slots.RESOURCE}=1): device steps are not limited")
    return "none"


def _flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else None


def _final_state(summary: dict[str, Any]) -> State:
    counts = summary["counts"]
    message = (f"{counts['done']} prepared, {counts['skipped']} already done, "
               f"{counts['quarantined']} quarantined now, {counts['quarantined_before']} "
               "quarantined before")
    if summary["run_errors"] or counts["not_finished"] or (
            counts["quarantined"] and not counts["done"] and not counts["skipped"]):
        return Failed(message=message, data=summary)
    if counts["quarantined"] or counts["quarantined_before"]:
        return Completed(message=message, data=summary, name="PartialSuccess")
    return Completed(message=message, data=summary)
