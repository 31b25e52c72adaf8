"""Tensor files this project writes: safetensors, never pickle.

`write_tensors` writes a flat `name -> tensor` file (what `weights convert` makes);
`write_tree` / `read_tree` a checkpoint: any nesting of dicts, lists and tuples of
tensors, numbers, strings, booleans and None (a model's and an optimiser's
`state_dict()`, step counters, configs). The tensors are the file's tensors, named `0`,
`1`, ...; the rest is a JSON tree in the file's metadata (safetensors' str -> str table,
key `distillprep`), where a tensor is `{"@tensor": "3"}`, a tuple `{"@tuple": [...]}` and a
dict whose keys are not all strings (an optimiser's parameter ids) `{"@items": [[k, v],
...]}`: a round trip gives back equal types and bit-equal tensors. Reading runs no code
(safetensors' header is JSON, the tree is JSON). Files are written to a temporary name
and renamed: a killed writer leaves the previous file intact.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from distillprep.scenes.errors import DataError

TREE_KEY = "distillprep"
"""Metadata key of the JSON tree."""
KIND_KEY = "distillprep_kind"
"""Metadata key naming what the file is (e.g. `teacher-checkpoint`)."""
_TAGS = ("@tensor", "@tuple", "@items", "@float")


class TensorFileError(DataError):
    """A tensor file that cannot be read (its readers re-raise it as their own error)."""


def is_safetensors(path: str | Path) -> bool:
    """Whether the file starts as a safetensors file does (an 8-byte header length, then
    the JSON header's `{`); torch.save's zip and legacy pickles never do."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return (len(head) == 9 and head[8:9] == b"{"
            and 2 <= int.from_bytes(head[:8], "little") <= os.path.getsize(path) - 8)


def is_torchscript(path: str | Path) -> bool:
    """Whether the file is a TorchScript archive (a zip with `code/` or `constants.pkl`):
    never to be opened with `torch.jit.load`, which runs its code."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") or "/code/" in name
                       for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False  # not a zip: torch.save's legacy format, or junk its reader names


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # a copy of each: safetensors refuses views and tensors sharing memory
    return {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
            for k, v in tensors.items()}


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor],
                  metadata: dict[str, str] | None = None) -> Path:
    """Write `name -> tensor` (any device, any layout) as a safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(_contiguous(tensors), str(tmp), metadata={"format": "pt", **(metadata or {})})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = value
        return {"@tensor": name}
    if isinstance(value, tuple):
        return {"@tuple": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not set(_TAGS) & set(value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"@items": [[_encode(k, tensors), _encode(v, tensors)]
                           for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"@float": repr(value)}
    raise TypeError(f"a {type(value).__name__} in a tensor file's tree (only containers, "
                    "tensors, numbers, strings, booleans and None)")


def write_tree(path: str | Path, tree: Any, kind: str) -> Path:
    """Write `tree` (see the module docstring) as a safetensors file of `kind`."""
    tensors: dict[str, torch.Tensor] = {}
    encoded = json.dumps(_encode(tree, tensors), allow_nan=False)
    return write_tensors(path, tensors, {TREE_KEY: encoded, KIND_KEY: kind})


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and next(iter(value)) in _TAGS:
        tag, body = next(iter(value.items()))
        if tag == "@tensor":
            return tensors[body]
        if tag == "@float":
            return float({"inf": "inf", "-inf": "-inf", "nan": "nan"}[body])
        if tag == "@tuple":
            return tuple(_decode(v, tensors) for v in body)
        return {_decode(k, tensors): _decode(v, tensors) for k, v in body}
    return {k: _decode(v, tensors) for k, v in value.items()}


def read_tree(path: str | Path, kind: str) -> Any:
    """The tree a `write_tree(path, tree, kind)` wrote; TensorFileError names the file
    and what is wrong (not safetensors, another kind, a damaged tree)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get(KIND_KEY) != kind:
                raise TensorFileError(f"{path}: a safetensors file that is not a {kind} "
                                      f"(it says {metadata.get(KIND_KEY)!r})")
            # copies: get_tensor maps the file, and a file changed in place under a
            # mapped tensor is a bus error
            tensors = {name: f.get_tensor(name).clone() for name in f.keys()}  # noqa: SIM118
        return _decode(json.loads(metadata[TREE_KEY]), tensors)
    except TensorFileError:
        raise
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, RecursionError,
            AttributeError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise TensorFileError(f"{path}: not a readable {kind} ({type(exc).__name__}: "
                              f"{first})") from None
