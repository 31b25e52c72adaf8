"""Teacher checkpoints: one safetensors file holding the field, the occupancy grid, the
optimiser and ray-sampler state, the config and what scene it was fitted on.

Written with `teachers.tensor_files.write_tree` (tensors as safetensors, everything else
a JSON tree in its metadata: nothing pickled), atomically (temporary file, then rename),
so a killed fit leaves the previous checkpoint intact; read onto the CPU, then moved to
the device asked for. Checkpoints written before (one `torch.save` file, same content)
are still read, with `torch.load(weights_only=True)` only (plain containers and tensors,
no pickled code); they keep their `.pt` name, as new ones do. A
checkpoint names its scene by id and by a content fingerprint the caller supplies (an
opaque string: the SHA-256 of the scene's ingested content, or `scene_fingerprint` of a
scene read from a dataroot); `check_matches` refuses one from another scene or config.

Loading is all rendering needs and imports no training code: the optimiser state stays
a plain dict here, and `fit.resume_state` builds the optimiser of a resumed fit from it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from distillprep.scenes.model import Scene
from distillprep.teachers.errors import CheckpointError
from distillprep.teachers.tensor_files import (
    TensorFileError,
    is_safetensors,
    is_torchscript,
    read_tree,
    write_tree,
)
from distillprep.teachers.volume.contraction import SceneBox

from .config import FitConfig
from .config_io import RUN_LENGTH_FIELDS, from_dict, identity_hash, to_dict
from .dynamic import DynamicField
from .field import StaticField
from .sampler import OccupancyGrid
from .teacher import Teacher

if TYPE_CHECKING:  # fit imports this module; a checkpoint is loaded without fit
    from .fit import FitState

FORMAT = "distillprep-teacher-checkpoint"
VERSION = 3  # 3: hash tables laid out and indexed as tiny-cuda-nn does


def scene_fingerprint(scene: Scene) -> str:
    """SHA-256 over the scene id, camera names, frame times and image file names: equal
    for the same scene read again, different for any other scene."""
    parts = [scene.scene_id, *scene.camera_names]
    for frame in scene.frames:
        parts.append(str(frame.timestamp_us))
        parts.extend(os.path.basename(s.source_file) for s in frame.cameras.values())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass
class Checkpoint:
    """A loaded checkpoint: the teacher, ready to render, and what a resumed fit needs
    (`fit.resume_state` builds the fit from it)."""

    teacher: Teacher
    """On the device it was loaded to."""
    step: int
    """Steps the fit had taken."""
    wall_time_s: float
    """Seconds spent in steps (over all runs of a resumed fit)."""
    optimizer_state: dict[str, Any]
    """The optimiser's `state_dict()`, tensors on the CPU."""
    rng_state: dict[str, Any]
    """The ray sampler's numpy bit-generator state."""
    scene_id: str
    fingerprint: str
    """Content fingerprint of the scene it was fitted on, as the fit's caller gave it."""
    frames: list[int]
    """Frames the teacher was fitted on (the others were held out)."""
    backend: str
    """Hash-encoding backend that fitted it."""
    source: dict[str, Any]
    """Where the scene was read from: dataset, dataroot, version."""
    path: Path


def save_checkpoint(path: str | Path, state: FitState, scene_id: str, fingerprint: str,
                    frames: list[int], source: dict[str, Any] | None = None) -> Path:
    """Write `state` (a fit of `frames` of scene `scene_id`, whose content has
    `fingerprint`) atomically to `path`; `source` says where the scene was read from
    (dataset, dataroot, version), so that rendering can find it again. Tensors on any
    device; a checkpoint loads on every device."""
    path = Path(path)
    teacher = state.teacher
    payload = {
        "format": FORMAT, "version": VERSION,
        "scene_id": scene_id, "fingerprint": fingerprint,
        "num_cameras": teacher.field.num_cameras, "frames": list(frames),
        "source": json.dumps(source or {}),
        "config": json.dumps(to_dict(teacher.config)),
        "config_hash": identity_hash(teacher.config),
        "backend": teacher.field.grid.backend,
        "box": [list(teacher.field.box.lower), list(teacher.field.box.upper)],
        "occupancy": teacher.grid.occupied.to("cpu", copy=True),
        "occupancy_in_use": teacher.grid.in_use.to("cpu", copy=True),
        "field": teacher.field.state_dict(),
        "dynamic": teacher.dynamic.state_dict() if teacher.dynamic is not None else {},
        "duration_s": teacher.duration_s,
        "optimizer": state.optimizer.state_dict(),
        "rng": json.dumps(state.rng.bit_generator.state),
        "step": state.step, "wall_time_s": state.wall_time_s,
        "history": json.dumps(teacher.history),
    }
    return write_tree(path, payload, FORMAT)


def damaged(path: str | Path, exc: Exception) -> CheckpointError:
    """The error of a checkpoint whose content does not fit together (`exc` says how)."""
    return CheckpointError(f"checkpoint {path}: damaged or inconsistent: "
                           f"{str(exc).splitlines()[0][:300]}")


def _read(path: Path) -> Any:
    """A checkpoint file's tree: safetensors, or an older `torch.save` file."""
    if is_safetensors(path):
        try:
            return read_tree(path, FORMAT)
        except TensorFileError as exc:
            raise CheckpointError(f"checkpoint {exc}") from None
    if is_torchscript(path):  # torch.load would hand it to torch.jit.load
        raise CheckpointError(f"checkpoint {path}: a TorchScript archive, not a checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(f"checkpoint {path}: not a readable torch checkpoint "
                              f"({type(exc).__name__}: {first})") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint (weights_only, onto the CPU) and move its teacher to `device`;
    CheckpointError names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    raw = _read(path)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a distillprep teacher checkpoint")
    if raw.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path}: version {raw.get('version')!r}; this "
                              f"distillprep reads version {VERSION}")
    try:
        config = from_dict(FitConfig, json.loads(raw["config"]), f"checkpoint {path} config")
        box = SceneBox(tuple(raw["box"][0]), tuple(raw["box"][1]))
        field = StaticField(config.model, box, raw["num_cameras"])
        field.load_state_dict(raw["field"])
        grid = OccupancyGrid(config.sampler, box)
        if raw["occupancy"].shape != grid.occupied.shape:
            raise ValueError(f"occupancy grid {tuple(raw['occupancy'].shape)} does not match "
                             f"the config's {tuple(grid.occupied.shape)}")
        grid.occupied = raw["occupancy"].to(torch.bool)
        grid.in_use = raw["occupancy_in_use"].to(torch.bool).reshape(grid.occupied.shape)
        dynamic = None
        if config.dynamic is not None:
            dynamic = DynamicField(config.dynamic, box, float(raw["duration_s"]))
            dynamic.load_state_dict(raw["dynamic"])
        teacher = Teacher(field, grid, config, json.loads(raw["history"]), dynamic,
                          float(raw["duration_s"]))
        optimizer, rng = raw["optimizer"], json.loads(raw["rng"])
        if not isinstance(optimizer, dict) or not isinstance(rng, dict):
            raise ValueError("optimiser or ray sampler state is not a table")
        checkpoint = Checkpoint(
            teacher, int(raw["step"]), float(raw["wall_time_s"]), optimizer, rng,
            raw["scene_id"], raw["fingerprint"], list(raw["frames"]), raw["backend"],
            json.loads(raw.get("source", "{}")), path)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise damaged(path, exc) from None
    teacher.to(device)  # outside the try: a device torch cannot use is not a damaged file
    return checkpoint


def check_matches(checkpoint: Checkpoint, scene_id: str, fingerprint: str,
                  config: FitConfig | None = None) -> None:
    """Refuse a checkpoint fitted on another scene than `scene_id` with content
    `fingerprint` (the same kind of fingerprint the fit saved), or with a config that fits
    a different teacher (run-length fields such as `steps` may differ)."""
    where = f"checkpoint {checkpoint.path}"
    if checkpoint.scene_id != scene_id:
        raise CheckpointError(f"{where} was fitted on scene {checkpoint.scene_id!r}, not "
                              f"{scene_id!r}")
    if checkpoint.fingerprint != fingerprint:
        raise CheckpointError(f"{where}: scene {scene_id!r} differs from the one it was "
                              "fitted on (other frames or images under the same id)")
    if config is not None and identity_hash(config) != identity_hash(checkpoint.teacher.config):
        ours, theirs = to_dict(config), to_dict(checkpoint.teacher.config)
        changed = sorted(k for k in ours if ours[k] != theirs.get(k)
                         and k not in RUN_LENGTH_FIELDS)
        raise CheckpointError(f"{where} was fitted with another config (differs in "
                              f"{changed}); refit, or drop --config to use the checkpoint's")


def summary(checkpoint: Checkpoint) -> dict[str, Any]:
    """Plain facts for the CLI."""
    return {"path": str(checkpoint.path), "scene_id": checkpoint.scene_id,
            "step": checkpoint.step, "wall_time_s": round(checkpoint.wall_time_s, 1),
            "backend": checkpoint.backend, "frames": checkpoint.frames}
