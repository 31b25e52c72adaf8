"""Bench of the flows: the orchestration overhead of `prepare_dataset` (threads, local
API) against the same step functions called in a plain loop, the Prefect API's start-up
on its own line, and the Dask speed-up of 2 workers against 1. All on 20 tiny scenes,
each run on a fresh store."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

# Prefect reads these when it is imported: a home of this bench, the local API
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="distillprep-bench-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "true"
os.environ.pop("PREFECT_API_URL", None)

SCENES = 20
CONFIG = """
ingest: {sweeps: false}
teacher:
  steps: 10
  holdout: 0
  fit:
    model: {grid: {levels: 8, log2_table_size: 14, base_resolution: 8, max_resolution: 256},
            hidden: 32}
    sampler: {grid_resolution: 32, rays: {candidates: 64, max_samples: 16}}
    camera_rays: 512
    lidar_rays: 256
    pixel_stride: 2
    dynamic: null
render:
  render: {scale: 0.25, virtual: {resolution_scale: 0.25}}
features:
  - {model: dinov2-vits14, channels: 4, input_width: 56, pca_images: 8, random_init: true}
threads: 1
retries: 0
"""


def _plain_loop(dataroot: Path, store: str, config_file: Path) -> float:
    """The same step functions, one after the other, no Prefect: seconds."""
    from distillprep.flows import steps
    from distillprep.flows.prepare_config import load_prepare_config

    config = load_prepare_config(config_file)
    start = time.perf_counter()
    import torch

    torch.set_num_threads(config.threads)
    target = steps.Target(str(dataroot), "nuscenes", store, steps.default_work_dir(store))
    version, scene_ids = steps.discover(target, config)
    for scene in scene_ids:
        steps.ingest_step(target, config, version, scene)
        steps.teacher_fit_step(target, config, scene)
        steps.teacher_render_step(target, config, scene)
    for model in config.features:
        steps.feature_basis_step(target, config, model)
        for scene in scene_ids:
            steps.features_step(target, config, model, scene)
    for scene in scene_ids:
        steps.validate_step(target, config, scene)
    return time.perf_counter() - start


def _prepare(dataroot: Path, store: str, config_file: Path, *extra: str) -> dict:
    from distillprep.flows.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["prepare", str(dataroot), "--out", store, "--config", str(config_file),
                     "--json", *extra])
    summary = json.loads(out.getvalue())
    assert code == 0 and summary["counts"]["done"] == SCENES, summary["counts"]
    return summary


def bench_flows(root: Path) -> None:
    from distillprep.scenes.synthetic.generate import SynthConfig, generate

    dataroot = generate(root / "flow_nuscenes", "nuscenes",
                        SynthConfig(scenes=SCENES, frames=3, width=96, height=54, sweeps=0,
                                    seed=3, supersample=1, workers=2))
    config_file = root / "flow_bench.yaml"
    config_file.write_text(CONFIG)
    loop_s = _plain_loop(dataroot, str(root / "loop.zarr"), config_file)
    start = time.perf_counter()
    flow = _prepare(dataroot, str(root / "flow.zarr"), config_file)
    total_s = time.perf_counter() - start
    print(f"flows.prefect_api_startup.seconds: {flow['prefect_startup_s']:.1f}")
    print(f"flows.prepare_{SCENES}_scenes.plain_loop.seconds: {loop_s:.1f}")
    print(f"flows.prepare_{SCENES}_scenes.ratio_to_plain_loop: "
          f"{flow['wall_time_s'] / loop_s:.2f}")
    print(f"flows.prepare_{SCENES}_scenes.ratio_to_plain_loop_with_startup: "
          f"{total_s / loop_s:.2f}")
    walls = {}
    for workers in (1, 2):
        start = time.perf_counter()
        summary = _prepare(dataroot, str(root / f"dask{workers}.zarr"), config_file,
                           "--runner", "dask", "--workers", str(workers))
        walls[workers] = summary["wall_time_s"]
        print(f"flows.dask_{workers}_workers.startup_and_shutdown.seconds: "
              f"{time.perf_counter() - start - summary['wall_time_s']:.1f}")
    print(f"flows.dask.speedup_2_workers_vs_1: {walls[1] / walls[2]:.2f}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        bench_flows(Path(folder))
