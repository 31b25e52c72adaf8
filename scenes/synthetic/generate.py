"""`distillprep synth`: build worlds, plan captures, render them exactly, hand them to a
dataset writer. Another dataset format is one more writer in `WRITERS`."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import ConfigError, OutputExistsError
from ..sky_masks import SKY_MASK_DIR
from .builder import WorldConfig, build_world
from .capture import CaptureEvent, capture_plan, ego_to_world, scene_duration_s
from .nuscenes_writer import NuScenesWriter
from .range_scan import RangeImageSpec, RangeScan, cast_range_image
from .render import LidarScan, RenderedView, cast_lidar, render_view
from .rig import NUSCENES_RIG, WAYMO_RIG, Rig
from .truth import has_ground_truth
from .waymo_writer import WaymoWriter
from .world import World

SCENE_SPACING_US = 3_600_000_000
BASE_TIMESTAMP_US = 1_533_111_111_000_000


@dataclass(frozen=True)
class SynthConfig:
    """What `distillprep synth` generates."""

    scenes: int = 2
    """Number of scenes."""
    frames: int = 10
    """Keyframes per scene (nuScenes 2 Hz, Waymo 10 Hz)."""
    width: int = 800
    """Image width in pixels of the rig's largest camera (every camera's size and
    intrinsics scale with it: nuScenes 1600, Waymo 1920)."""
    height: int = 450
    """Image height in pixels of the rig's largest camera (nuScenes 900, Waymo 1280)."""
    sweeps: int = 0
    """Non-keyframe captures of every sensor between consecutive keyframes (0-9)."""
    seed: int = 0
    """Seed of everything: the same config gives byte-identical output."""
    version: str = "v1.0-mini"
    """Name of the table folder (nuScenes: v1.0-*)."""
    supersample: int = 2
    """Anti-aliasing: S x S colour rays per pixel (depth always from the pixel centre)."""
    workers: int = 0
    """Render processes; 0 uses every core."""
    lidar_beams: int | None = None
    """Beams of the main LiDAR respaced over its elevations (nuScenes' HDL-32E: 32 over
    -30.67..+10.67 degrees; Waymo's TOP: 64 over -17.6..+2.4); None: the rig's own.
    Fewer keep its sparsity in render pixels when images are shrunk."""
    sky_masks: bool = False
    """Also write every image's sky mask where `ingest --sky-masks` reads them
    (`scenes.sky_masks`): the exact ones, standing in for a segmentation model's."""


@dataclass(frozen=True)
class _Format:
    rig: Rig
    writer: Callable
    sweeps: bool = True
    """Whether the format has non-keyframe captures (Waymo: every frame is a keyframe)."""


WRITERS = {"nuscenes": _Format(NUSCENES_RIG, NuScenesWriter),
           "waymo-v1": _Format(WAYMO_RIG, partial(WaymoWriter, container="v1"), sweeps=False),
           "waymo-v2": _Format(WAYMO_RIG, partial(WaymoWriter, container="v2"), sweeps=False)}


def scene_seed(seed: int, index: int) -> int:
    """The world seed of scene `index` of a dataset generated with `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def with_lidar_beams(rig: Rig, beams: int | None) -> Rig:
    """The rig with each LiDAR's listed beams respaced to `beams` over the same elevations
    (None: the rig's own)."""
    if beams is None:
        return rig
    return replace(rig, lidars=tuple(replace(m, spec=m.spec.with_beams(beams))
                                     for m in rig.lidars))


def scene_name(index: int) -> str:
    return f"scene-{index + 1:04d}"


def render_capture(world: World, rig: Rig, width: int, height: int, supersample: int,
                   event: CaptureEvent,
                   ) -> tuple[np.ndarray, RenderedView | LidarScan | RangeScan]:
    """Ego pose (4, 4) at the capture time and what the sensor recorded (a camera of the
    rig at its own size when the rig's reference size renders at width x height)."""
    ego = ego_to_world(world, event.t)
    if event.modality == "lidar":
        lidar = rig.lidar(event.sensor)
        if isinstance(lidar.spec, RangeImageSpec):
            return ego, cast_range_image(world, lidar.sensor_to_ego(), lidar.spec, event.t,
                                         partial(ego_to_world, world))
        return ego, cast_lidar(world, ego @ lidar.sensor_to_ego(), event.t, lidar.spec)
    cam = rig.camera(event.sensor)
    w, h = rig.camera_size(cam, width, height)
    view = render_view(world, cam.intrinsics(w, h), ego @ cam.cam_to_ego(), event.t,
                       w, h, supersample=supersample, count_visibility=event.is_keyframe)
    return ego, view


def generate(out: str | Path, fmt: str = "nuscenes", config: SynthConfig | None = None,
             overwrite: bool = False, progress: Callable[[Iterable], Iterable] | None = None,
             ) -> Path:
    """Write a synthetic dataset to `out`; returns `out`. Refuses a non-empty `out`, except
    with `overwrite` when `out` holds an earlier `distillprep synth` output, which is then
    removed first (never a folder of anything else)."""
    config = config or SynthConfig()
    if fmt not in WRITERS:
        raise ConfigError(f"unknown format {fmt!r}; choose from {sorted(WRITERS)}")
    if config.width < 16 or config.height < 16:
        raise ConfigError(f"image size {config.width}x{config.height} is too small (min 16x16)")
    if config.sweeps and not WRITERS[fmt].sweeps:
        raise ConfigError(f"--sweeps {config.sweeps}: {fmt} has no sweeps (every frame is a "
                          "keyframe); leave it at 0")
    if config.scenes < 1:
        raise ConfigError(f"--scenes must be at least 1, got {config.scenes}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{out} is not empty; pass --overwrite to replace an earlier "
                                  "synthetic dataset there")
        if not has_ground_truth(out):
            raise OutputExistsError(f"{out} is not empty and is not an earlier `distillprep "
                                  "synth` output (no ground_truth/world.json): not touching it")
        shutil.rmtree(out)
    if config.lidar_beams is not None and not 1 <= config.lidar_beams <= 128:
        raise ConfigError(f"--lidar-beams must be 1..128, got {config.lidar_beams}")
    spec = replace(WRITERS[fmt], rig=with_lidar_beams(WRITERS[fmt].rig, config.lidar_beams))
    writer = spec.writer(out, config.version, spec.rig, config.width, config.height,
                         namespace=f"distillprep-synth/{config.seed}")
    worlds = {}
    workers = config.workers or os.cpu_count() or 1
    duration = scene_duration_s(config.frames, spec.rig)
    with ProcessPoolExecutor(workers) if workers > 1 else _Serial() as pool:
        for index in range(config.scenes):
            world = build_world(scene_seed(config.seed, index), duration, WorldConfig())
            name = scene_name(index)
            worlds[name] = world.to_json()
            plan = capture_plan(spec.rig, config.frames, config.sweeps)
            render = partial(render_capture, world, spec.rig, config.width, config.height,
                             config.supersample)
            results = pool.map(render, plan, chunksize=max(1, len(plan) // (4 * workers)))
            if progress is not None:
                results = progress(results, total=len(plan), desc=name)
            writer.begin_scene(index, name, world, BASE_TIMESTAMP_US + index * SCENE_SPACING_US)
            for event, (ego, result) in zip(plan, results, strict=True):
                writer.add_capture(event, ego, result)
            writer.end_scene()
    writer.finish()
    if config.sky_masks:  # the exact masks, at the dataset's own layout for them
        shutil.copytree(out / "ground_truth" / "sky", out / SKY_MASK_DIR)
    truth = out / "ground_truth" / "world.json"
    truth.parent.mkdir(parents=True, exist_ok=True)
    truth.write_text(json.dumps({
        "generator": "distillprep synth", "format": fmt,
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__ if k != "workers"},
        "scenes": worlds,
    }, indent=1))
    return out


def load_worlds(dataroot: str | Path) -> dict[str, World]:
    """Rebuild every scene's world from `dataroot/ground_truth/world.json`."""
    data = json.loads((Path(dataroot) / "ground_truth" / "world.json").read_text())
    return {name: World.from_json(w) for name, w in data["scenes"].items()}


class _Serial:
    """A stand-in for a process pool when one worker is asked for."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(fn, items, chunksize=1):
        return map(fn, items)
