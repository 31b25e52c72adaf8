"""Which zarr codec pipeline runs: the `zarrs` Rust pipeline where it is installed (it
wins on both writes and reads here, see README), else zarr-python's own, which stays the
tested fallback. `DISTILLPREP_CODEC_PIPELINE=python|zarrs|auto` overrides."""

from __future__ import annotations

import importlib.util
import os

import zarr

PIPELINES = {
    "python": "zarr.core.codec_pipeline.BatchedCodecPipeline",
    "zarrs": "zarrs.ZarrsCodecPipeline",
}


def resolve(name: str | None = None) -> str:
    """`python` or `zarrs` for a requested name (`auto`/None: zarrs when importable)."""
    name = name or os.environ.get("DISTILLPREP_CODEC_PIPELINE", "auto")
    if name == "auto":
        return "zarrs" if importlib.util.find_spec("zarrs") is not None else "python"
    if name not in PIPELINES:
        raise ValueError(f"unknown codec pipeline {name!r}; choose python, zarrs or auto")
    return name


def use(name: str | None = None) -> str:
    """Make zarr use the named pipeline from now on (zarr's config is process-wide);
    returns the one chosen."""
    chosen = resolve(name)
    zarr.config.set({"codec_pipeline.path": PIPELINES[chosen]})
    return chosen


def active() -> str:
    path = zarr.config.get("codec_pipeline.path")
    return next((k for k, v in PIPELINES.items() if v == path), path)
