"""What a `prepare_dataset` run did, per scene and in all: the quarantine records it
writes to the store, the summary it returns (the CLI's `--json`), and the Prefect table
and markdown artifacts it publishes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .prepare_config import PrepareConfig
from .steps import StepResult, Target


class Outcome(enum.StrEnum):
    DONE = "done"
    """Some step did work now and every step succeeded."""
    SKIPPED = "skipped"
    """Everything was already in the store (it was validated again)."""
    QUARANTINED = "quarantined"
    """A step failed for good in this run."""
    QUARANTINED_BEFORE = "quarantined-before"
    """Left alone: an earlier run quarantined it (--retry-quarantined tries it again)."""
    NOT_FINISHED = "not-finished"
    """Stopped by a store-wide failure (a feature basis), not by its own."""


@dataclass
class SceneReport:
    """One scene's steps in this run."""

    scene_id: str
    steps: list[StepResult] = field(default_factory=list)
    outcome: Outcome | None = None
    failed_step: str | None = None
    error: str | None = None
    error_info: dict[str, Any] = field(default_factory=dict)

    @property
    def quarantined(self) -> bool:
        return self.outcome in (Outcome.QUARANTINED, Outcome.QUARANTINED_BEFORE)

    def fail(self, step: str, error: BaseException) -> None:
        self.outcome, self.failed_step = Outcome.QUARANTINED, step
        self.error = f"{type(error).__name__}: {error}"
        self.error_info = {"kind": getattr(error, "kind", "bug"),
                           "error_type": type(error).__name__, "message": str(error),
                           "retryable": bool(getattr(error, "retryable", False)),
                           "attempts": int(getattr(error, "attempts", 1))}

    def settle(self, expected_steps: int) -> None:
        if self.outcome is not None:
            return
        if len(self.steps) < expected_steps:
            self.outcome = Outcome.NOT_FINISHED
        elif any(s.status == "done" for s in self.steps if s.step != "validate"):
            self.outcome = Outcome.DONE
        else:
            self.outcome = Outcome.SKIPPED

    def figures(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for step in self.steps:
            merged.update(step.figures)
        return merged

    def to_json(self) -> dict[str, Any]:
        return {"scene_id": self.scene_id, "status": str(self.outcome),
                "failed_step": self.failed_step, "error": self.error,
                "steps": {s.step: {"status": s.status, "seconds": round(s.seconds, 2),
                                   **s.figures} for s in self.steps}}


def summarize(target: Target, reports: dict[str, SceneReport], run_errors: dict[str, str],
              started: datetime, config: PrepareConfig) -> dict[str, Any]:
    """The run's summary: counts, each scene's status and steps, store-wide errors."""
    expected = 4 + len(config.features)  # ingest, fit, render, features..., validate
    for report in reports.values():
        report.settle(expected)
    counts = {str(o).replace("-", "_"): 0 for o in Outcome}
    for report in reports.values():
        counts[str(report.outcome).replace("-", "_")] += 1
    return {"store": target.store, "dataroot": target.dataroot, "started": started.isoformat(),
            "wall_time_s": round((datetime.now(UTC) - started).total_seconds(), 1),
            "features": [m.config.model for m in config.features], "counts": counts,
            "run_errors": run_errors, "scenes": [r.to_json() for r in reports.values()]}


def record_quarantine(target: Target, reports: dict[str, SceneReport],
                      flow_run: str | None) -> None:
    """Write a record for each scene quarantined now; drop the record of each scene
    prepared now (a retried scene that succeeded)."""
    from distillprep.storage_schemas.quarantine import (
        QuarantineRecord,
        clear_quarantine,
        write_quarantine,
    )

    store = target.open()
    for report in reports.values():
        if report.outcome == Outcome.QUARANTINED:
            write_quarantine(store, QuarantineRecord(
                scene_id=report.scene_id, step=report.failed_step or "?",
                at=datetime.now(UTC), flow_run=flow_run, **report.error_info))
        elif report.outcome in (Outcome.DONE, Outcome.SKIPPED):
            clear_quarantine(store, report.scene_id)


def _table(reports: dict[str, SceneReport]) -> list[dict[str, Any]]:
    rows = []
    for report in reports.values():
        figures = report.figures()
        timings = {s.step: round(s.seconds, 1) for s in report.steps}
        rows.append({"scene": report.scene_id, "status": str(report.outcome),
                     "teacher_fit": figures.get("fit", ""),
                     "heldout_psnr_db": figures.get("heldout_psnr_db", ""),
                     "lidar_abs_rel": figures.get("lidar_abs_rel", ""),
                     "feature_run": figures.get("run_id", ""),
                     "seconds": timings, "error": report.error or ""})
    return rows


def markdown(summary: dict[str, Any]) -> str:
    """The run in a few lines of markdown (the flow's summary artifact)."""
    counts = summary["counts"]
    lines = [f"# distillprep prepare: {summary['store']}", "",
             f"- scenes prepared now: **{counts['done']}**, already done: {counts['skipped']}",
             f"- quarantined now: **{counts['quarantined']}**, by an earlier run: "
             f"{counts['quarantined_before']}, stopped by a store-wide failure: "
             f"{counts['not_finished']}",
             f"- feature models: {', '.join(summary['features']) or 'none'}",
             f"- wall time: {summary['wall_time_s']} s"]
    for model, error in summary["run_errors"].items():
        lines.append(f"- **{model} basis failed**: {error}")
    bad = [s for s in summary["scenes"] if s["error"]]
    if bad:
        lines += ["", "| scene | step | error |", "|---|---|---|"]
        lines += [f"| {s['scene_id']} | {s['failed_step'] or ''} | "
                  f"{s['error'].replace('|', '/')} |" for s in bad]
    return "\n".join(lines)


def publish(target: Target, summary: dict[str, Any], reports: dict[str, SceneReport],
            flow_run: str | None) -> None:
    """Quarantine records into the store, the table and markdown artifacts to Prefect."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    record_quarantine(target, reports, flow_run)
    create_table_artifact(_table(reports), key="distillprep-prepare-scenes",
                          description=f"scenes of {target.store}")
    create_markdown_artifact(markdown(summary), key="distillprep-prepare-summary",
                             description=f"preparation of {target.store}")
