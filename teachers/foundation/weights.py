"""Loading a feature model's weights from a local file, never from the network.

Accepted files:
- a PyTorch state dict (`.pth`, `.pt`, `.bin`), read with `torch.load(weights_only=True)`,
  possibly nested under "model" or "state_dict": DINOv2's released `dinov2_*_pretrain.pth`,
  open_clip's `open_clip_pytorch_model.bin`;
- a `.safetensors` file (open_clip's `open_clip_model.safetensors`);
- a TorchScript archive, OpenAI's original CLIP `.pt`: its tensors are read AS DATA
  (`torchscript_data.py`: a restricted unpickler; the archive's code is never compiled or
  run, unlike `torch.jit.load`, which runs its `__setstate__`).

Nothing in a weights file can run code: `torch.load` only with `weights_only=True`,
safetensors by its own (JSON header) reader, TorchScript as above.

Every problem raises a `WeightsError` naming the file: it is missing, it is not a
checkpoint, or it holds another architecture (its keys and shapes are compared with the
model's before anything is loaded).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from distillprep.scenes.errors import DataError
from distillprep.scenes.io import file_sha256
from distillprep.teachers.errors import TeacherError
from distillprep.teachers.tensor_files import is_torchscript

from .models import ModelSpec

WEIGHTS_DIR_ENV = "DISTILLPREP_WEIGHTS_DIR"
"""A folder searched for `<model name>.pth` / `.pt` / `.bin` / `.safetensors` when no
`--weights` file is given."""


class WeightsError(TeacherError, DataError):
    """A weights file that cannot be used."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No weights file where one was asked for or searched."""


class NotACheckpointError(WeightsError):
    """The file is not a PyTorch, safetensors or TorchScript checkpoint."""


class WrongArchitectureError(WeightsError):
    """The checkpoint's tensors do not fit the model."""


def find_weights(spec: ModelSpec, path: str | Path | None) -> Path:
    """The weights file to use: `path` when given, else `<model name>.*` in the folder named
    by $DISTILLPREP_WEIGHTS_DIR."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise WeightsNotFoundError(f"{spec.name}: weights file {path} does not exist")
        return path
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    if not folder:
        raise WeightsNotFoundError(
            f"{spec.name}: no weights given: pass --weights FILE (the model's released "
            f"checkpoint), set ${WEIGHTS_DIR_ENV} to a folder holding {spec.name}.pth, or "
            "use --random-init for a random-weight run (tests, demos)")
    for suffix in (".pth", ".pt", ".bin", ".safetensors"):
        candidate = Path(folder) / f"{spec.name}{suffix}"
        if candidate.is_file():
            return candidate
    raise WeightsNotFoundError(f"{spec.name}: no {spec.name}.pth/.pt/.bin/.safetensors in "
                               f"${WEIGHTS_DIR_ENV} = {folder}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (see the module docstring for what is accepted)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise NotACheckpointError(f"{path}: not a safetensors file: {exc}") from None
    if is_torchscript(path):
        from .torchscript_data import read_torchscript  # it imports this module's errors

        return read_torchscript(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch's unpickler fails in many ways on junk
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NotACheckpointError(f"{path}: not a PyTorch checkpoint that loads with "
                                  f"weights_only=True: {first}") from None
    for key in ("model", "state_dict"):  # training checkpoints nest the weights
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    if not isinstance(raw, dict) or not raw or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()):
        raise NotACheckpointError(f"{path}: holds a {type(raw).__name__}, not a state dict "
                                  "(names -> tensors)")
    return raw


def _to_model_names(spec: ModelSpec, state: dict[str, torch.Tensor],
                    model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the model's own parameter names."""
    if spec.library == "timm":
        from timm.models.vision_transformer import checkpoint_filter_fn

        return checkpoint_filter_fn(dict(state), model)
    # OpenAI archives carry three hyper-parameters as tensors; open_clip drops them too
    drop = ("input_resolution", "context_length", "vocab_size")
    state = {k.removeprefix("module."): v for k, v in state.items() if k not in drop}
    return state


def load_weights(spec: ModelSpec, model: torch.nn.Module, path: Path,
                 state: dict[str, torch.Tensor] | None = None) -> str:
    """Load `path` into `model` (built by `build_model(spec)`); returns the file's
    sha256. `state`: the file's `read_state_dict`, when the caller read it first (to refuse
    a bad file before building a large model). Raises a WeightsError naming the file when
    it does not fit."""
    state = _to_model_names(spec, read_state_dict(path) if state is None else state, model)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the model's tensors missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors the model does not have "
                         f"(e.g. {unexpected[0]})")
        if reshaped:
            k = reshaped[0]
            parts.append(f"{len(reshaped)} of other shapes (e.g. {k}: file "
                         f"{tuple(state[k].shape)}, model {tuple(own[k].shape)})")
        raise WrongArchitectureError(f"{path}: not {spec.name} weights ({spec.library} "
                                     f"{spec.architecture}): {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)
    return file_sha256(path)
