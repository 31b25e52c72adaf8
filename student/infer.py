"""Inference of a trained student on any one frame of a store: its cameras in, rendered
back (decoded RGB, expected depth, foundation features where the run has a head), the
time a frame takes (encoding and rendering, after one warm-up pass), the outputs written
as PNG and .npy files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from distillprep.scenes.errors import ConfigError

from .data import StoreDataset, StoreLoader
from .evaluate import load_student, render_frame
from .train import check_rig


def _depth_png(depth: np.ndarray, far: float) -> np.ndarray:
    """(h, w, 3) uint8: depth on a log scale from 1 m (bright) to `far` (dark)."""
    scaled = np.log(np.clip(depth, 1.0, far)) / np.log(far)
    return (colormaps["magma"](1.0 - scaled)[..., :3] * 255).astype(np.uint8)


def infer(stores: list[str], checkpoint: str | Path, scene: str, frame: int,
          out: Path | None = None, storage_options: dict | None = None,
          repeat: int = 1, device: str = "cpu") -> dict:
    """Render frame `frame` of `scene`; seconds per frame = mean of `repeat` passes after
    a warm-up. With `out`: rgb_<camera>.png, depth_<camera>.png, depth.npy (C, h, w)
    metres along camera z, features.npy (C, F, h, w) when the run renders features."""
    model, config, file = load_student(checkpoint, device)
    fields = ("rgb", "intrinsics", "cam_to_world")
    dataset = StoreDataset(stores, replace(config.loader(), fields=fields, shuffle=False,
                                           split="all", scenes=(scene,)),
                           storage_options=storage_options)
    check_rig(dataset, config.model)
    frames = []
    for batch in StoreLoader(dataset):
        index = int(batch["frame_index"][0])
        frames.append(index)
        if index == frame:
            break
    else:
        raise ConfigError(f"scene {scene!r} has no frame {frame} the student can read "
                          f"(frames: {frames})")
    seconds = []
    with torch.no_grad():
        for _ in range(repeat + 1):
            inputs, _, own, spent = render_frame(model, batch)
            seconds.append(spent)
    cameras = dataset.plan.cameras
    report = {"checkpoint": str(file), "scene": scene, "frame": frame, "device": device,
              "cameras": list(cameras), "seconds_per_frame": float(np.mean(seconds[1:])),
              "render_size": list(own["depth"].shape[-2:]),
              "rgb_size": list(own["rgb"].shape[-2:]), "files": []}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        depth = own["depth"].numpy()
        np.save(out / "depth.npy", depth)
        report["files"].append(str(out / "depth.npy"))
        if "features" in own:
            np.save(out / "features.npy", own["features"].numpy())
            report["files"].append(str(out / "features.npy"))
        for i, camera in enumerate(cameras):
            rgb = (own["rgb"][i].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            for name, image in ((f"rgb_{camera}.png", rgb),
                                (f"depth_{camera}.png",
                                 _depth_png(depth[i], config.model.space.far))):
                Image.fromarray(image).save(out / name)
                report["files"].append(str(out / name))
    return report
