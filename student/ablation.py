"""The paper's distillation ablations (DistillNeRF Table 1 and 2), run from config alone:
the same TrainConfig (steps, seed, model, data) with only the loss weights changed, each
variant trained into its own run folder and scored by `evaluate` on scenes held out of
training (whole scenes), against the exact depth where the data is synthetic.

    lidar_only             LiDAR depth only (no teacher depth, no virtual cameras)
    teacher_depth          + the teacher's dense depth (Table 1 "+Depth")
    teacher_depth_virtual  + the teacher's virtual-camera views (Table 1 "+Virt")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .evaluate import evaluate
from .losses import LossConfig
from .train import TrainConfig, train

PAPER_VARIANTS: dict[str, Callable[[LossConfig], LossConfig]] = {
    "lidar_only": lambda losses: replace(losses, teacher_depth=0.0, virtual=0.0),
    "teacher_depth": lambda losses: replace(losses, virtual=0.0),
    "teacher_depth_virtual": lambda losses: losses,
}
"""Variant name -> its loss weights made from the base config's (the other weights kept)."""


def ablate(stores: list[str], out: str | Path, base: TrainConfig, val_scenes: tuple[str, ...],
           truth: str | Path | None = None, variants: tuple[str, ...] = tuple(PAPER_VARIANTS),
           storage_options: dict | None = None,
           progress: Callable[[str, dict], None] | None = None) -> dict[str, dict]:
    """Train each variant of `base` into `out/<variant>` (resumed where a run exists) on
    every scene but `val_scenes`, and evaluate its last checkpoint on `val_scenes`;
    `progress(variant, report)` hears each variant's evaluation as it finishes. Returns
    variant -> `evaluate`'s report (with `train_seconds` of this call's training)."""
    import time

    out = Path(out)
    base = replace(base, split="train", val_scenes=tuple(val_scenes))
    reports = {}
    for name in variants:
        config = replace(base, losses=PAPER_VARIANTS[name](base.losses))
        start = time.perf_counter()
        train(stores, out / name, config, storage_options)
        report = evaluate(stores, out / name, tuple(val_scenes), storage_options, truth=truth)
        report["train_seconds"] = time.perf_counter() - start
        reports[name] = report
        if progress is not None:
            progress(name, report)
    return reports
