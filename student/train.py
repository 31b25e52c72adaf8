"""Training the student from prepared stores: `train(stores, run_dir, config)`.

A run folder holds `config.json` (the TrainConfig it was started with), checkpoints
`checkpoints/step_0000100.pt` (model, optimiser, loader position, torch RNG state, step;
a safetensors file, `teachers.tensor_files.write_tree`: nothing pickled; written to a
temporary file and renamed; older runs' `torch.save` files are still read, with
`weights_only=True`), TensorBoard
scalars under `tensorboard/` and, every `preview_every` steps, PNG previews (rendered
RGB beside the camera's, depth). Started again on the same folder it resumes exactly
where the latest checkpoint left it: the same batches, in the same order, with the same
random draws, so an interrupted run ends where an uninterrupted one does (tested bit for
bit on the CPU). A checkpoint of another config is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from distillprep.scenes.errors import ConfigError, DataError
from distillprep.teachers.nerf.config_io import to_dict
from distillprep.teachers.tensor_files import (
    TensorFileError,
    is_safetensors,
    is_torchscript,
    read_tree,
    write_tree,
)

from .data import LoaderConfig, StoreDataset, StoreLoader
from .losses import LossConfig
from .model.distillnerf import DistillNeRFStudent, StudentConfig, scale_intrinsics
from .objective import frame_inputs, objective, to_device

CHECKPOINT_KIND = "distillprep-student-checkpoint"
"""What a student checkpoint's safetensors metadata says it is."""


@dataclass(frozen=True)
class TrainConfig:
    """What a training run does."""

    steps: int = 1000
    """Optimiser steps (one frame each)."""
    lr: float = 2e-4
    """Adam learning rate (official: 2e-4)."""
    betas: tuple[float, float] = (0.0, 0.99)
    """Adam betas (official: (0, 0.99))."""
    grad_clip: float = 35.0
    """Gradient L2 norm clip (official: 35)."""
    seed: int = 0
    """Seed of the model's initialisation, the loader's order and the ray jitter."""
    resize: tuple[int, int] = (228, 128)
    """(width, height) the loader resamples images to (official: 228 x 128)."""
    split: Literal["all", "train", "val"] = "train"
    """Scene split the run trains on (whole scenes; `LoaderConfig.split`)."""
    val_fraction: float = 0.1
    """Share of scenes held out (`LoaderConfig.val_fraction`) when val_scenes is None."""
    val_scenes: tuple[str, ...] | None = None
    """Scene ids held out of training (None: drawn by val_fraction); eval defaults to them."""
    workers: int = 0
    """DataLoader workers."""
    checkpoint_every: int = 100
    """Steps between checkpoints (and at the last step)."""
    preview_every: int = 0
    """Steps between PNG previews (0: none)."""
    features: Literal["dino", "clip"] = "dino"
    """Foundation-model features the feature head distils (with
    model.foundation_channels > 0: the width of that family's PCA)."""
    model: StudentConfig = field(default_factory=StudentConfig)
    """The student's sizes."""
    losses: LossConfig = field(default_factory=LossConfig)
    """Loss weights (0 switches a term off)."""

    def fields(self) -> tuple[str, ...]:
        """Loader fields the losses need (a store without one fails at the start)."""
        fields = ["rgb", "intrinsics", "cam_to_world"]
        if self.losses.lidar_depth:
            fields.append("lidar_depth")
        if self.losses.teacher_depth:
            fields += ["teacher_depth", "teacher_opacity"]
        elif self.losses.lidar_depth and self.losses.lidar_sky:
            fields.append("teacher_opacity")
        if self.losses.features and self.model.foundation_channels:
            fields.append(f"{self.features}_features")
        if self.losses.virtual:
            fields += ["virtual_rgb", "virtual_depth", "virtual_opacity"]
        return tuple(fields)

    def __post_init__(self) -> None:
        if self.features not in ("dino", "clip"):
            raise ConfigError(f"TrainConfig.features = {self.features!r}: use dino or clip")

    def loader(self) -> LoaderConfig:
        return LoaderConfig(fields=self.fields(), resize=self.resize, split=self.split,
                            val_fraction=self.val_fraction, val_scenes=self.val_scenes,
                            seed=self.seed)


@dataclass
class TrainResult:
    steps: int
    """Steps done by the end (including those of runs it resumed)."""
    resumed_from: int
    """Step of the checkpoint it started from (0: a fresh run)."""
    last_losses: dict[str, float]
    checkpoint: Path | None


def check_device(device: str) -> torch.device:
    """The torch device named, refused when it is not there."""
    out = torch.device(device)
    if out.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: torch sees no CUDA device here; use cpu")
    if out.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}: use cpu or cuda")
    return out


def check_rig(dataset: StoreDataset, model: StudentConfig) -> None:
    """Refuse stores whose rig has more cameras than the decoder has slots for."""
    cameras = dataset.plan.cameras
    if len(cameras) > model.cameras:
        raise ConfigError(f"the stores' frames have {len(cameras)} cameras ({', '.join(cameras)})"
                          f", the student's decoder {model.cameras} slots: set "
                          f"model.cameras to at least {len(cameras)}")


def checkpoints(run: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    return sorted((run / "checkpoints").glob("step_*.pt"))


def _config_json(config: TrainConfig) -> str:
    data = to_dict(config)
    for name in ("steps", "workers", "checkpoint_every", "preview_every"):
        data.pop(name)  # how long and how it runs, not what it trains
    return json.dumps(data, sort_keys=True)


def _same_config(saved: str | None, config: TrainConfig) -> bool:
    """Whether a checkpoint's config is `config`, compared as values with this version's
    defaults filled in (a weight written 0 is 0.0; a field added since takes its default)."""
    from distillprep.teachers.nerf.config_io import from_dict

    try:
        old = from_dict(TrainConfig, json.loads(saved), "checkpoint config")
    except (ConfigError, TypeError, ValueError):
        return False
    return json.loads(_config_json(old)) == json.loads(_config_json(config))


class StudentCheckpointError(DataError):
    """A student checkpoint that cannot be read (not one, damaged, or a refused pickle)."""


def load_checkpoint(path: Path, config: TrainConfig | None = None) -> dict:
    """A checkpoint's contents (safetensors, or an older run's `torch.save` file read with
    `weights_only=True`); with `config`, refused unless it was written by a run of the
    same config (run length aside)."""
    if is_safetensors(path):
        try:
            state = read_tree(path, CHECKPOINT_KIND)
        except TensorFileError as exc:
            raise StudentCheckpointError(f"checkpoint {exc}") from None
    elif is_torchscript(path):  # torch.load would hand it to torch.jit.load
        raise StudentCheckpointError(f"checkpoint {path}: a TorchScript archive, not a "
                                     "checkpoint")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch fails in many ways on a non-checkpoint
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise StudentCheckpointError(f"checkpoint {path}: not a readable checkpoint "
                                         f"({type(exc).__name__}: {first})") from None
    if not isinstance(state, dict):
        raise StudentCheckpointError(f"checkpoint {path}: holds a {type(state).__name__}, "
                                     "not a student checkpoint")
    if config is not None and not _same_config(state.get("config"), config):
        raise ConfigError(f"checkpoint {path} was written by a run of another config; "
                          "train into a new folder, or use that run's config")
    return state


def prior_record(model: DistillNeRFStudent) -> dict | None:
    """What the model's frozen prior is (model, weights sha256 or random_init), or None."""
    return None if model.prior is None else dict(model.prior.provenance)


def check_prior(state: dict, model: DistillNeRFStudent, path: Path) -> None:
    """Refuse a checkpoint trained over another frozen prior than the model's now."""
    saved, now = state.get("prior"), prior_record(model)
    if saved != now:
        raise ConfigError(f"checkpoint {path} was trained with the frozen prior {saved}, "
                          f"the one loaded now is {now}: model.prior.weights names other "
                          "weights than the run's")


def _save(path: Path, state: dict) -> None:
    write_tree(path, state, CHECKPOINT_KIND)


def _preview(path: Path, rgb: torch.Tensor, target: torch.Tensor, depth: torch.Tensor,
             ) -> None:
    """Rendered RGB over the camera's, and depth (near bright), for the first camera."""
    def image(x):
        return (x.detach().clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)

    d = depth.detach()[0]
    d = (1.0 - (d / max(float(d.max()), 1e-6))).clamp(0, 1)
    d = torch.nn.functional.interpolate(d[None, None], size=rgb.shape[-2:])[0, 0]
    grey = (d.numpy() * 255).astype(np.uint8)
    rows = np.concatenate([image(rgb[0]), image(target[0]), np.stack([grey] * 3, -1)], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rows).save(path)


def train(stores: list[str], run: str | Path, config: TrainConfig,
          storage_options: dict | None = None,
          progress: Callable[[Iterable], Iterable] | None = None,
          report: Callable[[int, dict[str, float]], None] | None = None,
          device: str = "cpu") -> TrainResult:
    """Train (or resume) a run in folder `run` on the stores' frames on `device` (cpu or
    cuda; a run may resume on the other); `progress` wraps the steps, `report(step,
    losses)` hears each step's losses."""
    run = Path(run)
    where = check_device(device)
    torch.manual_seed(config.seed)
    model = DistillNeRFStudent(config.model).to(where)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    dataset = StoreDataset(stores, config.loader(), storage_options=storage_options)
    check_rig(dataset, config.model)
    loader = StoreLoader(dataset, num_workers=config.workers)
    step, resumed = 0, 0
    saved = checkpoints(run)
    if saved:
        state = load_checkpoint(saved[-1], config)
        check_prior(state, model, saved[-1])
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"])
        step = resumed = int(state["step"])
    else:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(to_dict(config), indent=1))
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run / "tensorboard"), purge_step=step + 1)
    last: dict[str, float] = {}
    checkpoint = saved[-1] if saved else None
    steps = range(step, config.steps)
    batches = _forever(loader)
    try:
        for step in progress(steps) if progress else steps:
            batch = to_device(next(batches), where)
            optimiser.zero_grad()
            total, last = objective(model, batch, config.losses)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimiser.step()
            done = step + 1
            if report is not None:
                report(done, last)
            for name, value in {"loss/total": float(total.detach()),
                                **{f"loss/{k}": v for k, v in last.items()}}.items():
                writer.add_scalar(name, value, done)
            if config.preview_every and done % config.preview_every == 0:
                _preview_step(model, batch, run / "previews" / f"step_{done:07d}.png")
            if done % config.checkpoint_every == 0 or done == config.steps:
                checkpoint = run / "checkpoints" / f"step_{done:07d}.pt"
                _save(checkpoint, {"model": model.state_dict(),
                                   "optimizer": optimiser.state_dict(),
                                   "loader": loader.state_dict(), "step": done,
                                   "rng": torch.get_rng_state(),
                                   "config": _config_json(config),
                                   "prior": prior_record(model)})
    finally:
        writer.close()
    return TrainResult(steps=max(config.steps, resumed), resumed_from=resumed,
                       last_losses=last, checkpoint=checkpoint)


def _forever(loader: StoreLoader) -> Iterator[dict]:
    """The loader's batches, epoch after epoch, from where the loader stands."""
    while True:
        yield from loader


def _preview_step(model: DistillNeRFStudent, batch: dict, path: Path) -> None:
    with torch.no_grad():
        inputs = frame_inputs(batch)
        scene = model.encode(inputs["images"], inputs["intrinsics"], inputs["cam_to_ref"])
        out = model.render(scene, scale_intrinsics(inputs["intrinsics"], 0.5),
                           inputs["cam_to_ref"],
                           torch.arange(len(inputs["images"]), device=model.edges.device),
                           scene["size"])
    _preview(path, out["rgb"].cpu(), inputs["images"].cpu(), out["depth"].cpu())
