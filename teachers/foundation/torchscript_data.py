"""Reading a TorchScript archive's tensors as data, without running any of its code.

A TorchScript archive (`torch.jit.save`; OpenAI's original CLIP `.pt` is one) is a zip:
`<root>/data.pkl` pickles the module tree (each module an object of a `__torch__.*` class
whose state is a dict of its attributes), `<root>/data/<key>` holds each tensor's storage
bytes, and `<root>/code/` holds the classes' TorchScript source. `torch.jit.load` compiles
that source and calls each object's `__setstate__`: the archive's own code runs. Here
`data.pkl` is read by a restricted unpickler instead: `__torch__.*` classes become inert
`ScriptObject` records that only store their state, tensors are rebuilt from the zip's
storages by this module's own function, and any other global is refused. Which of a
module's tensor attributes are parameters or buffers (what `state_dict()` holds) is read
from the `__parameters__` / `__buffers__` lists of its class in `code/`, parsed as text
(`ast.literal_eval` of two list literals; the source is never compiled).

The tensors equal `torch.jit.load(path).state_dict()` (TorchScript does not record a
buffer's `persistent=False`: such buffers are listed, as `torch.jit.load` lists them).
"""

from __future__ import annotations

import ast
import collections
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import torch

from .weights import NotACheckpointError

_DTYPES = {f"{name}Storage": dtype for name, dtype in (
    ("Double", torch.float64), ("Float", torch.float32), ("Half", torch.float16),
    ("BFloat16", torch.bfloat16), ("Long", torch.int64), ("Int", torch.int32),
    ("Short", torch.int16), ("Char", torch.int8), ("Byte", torch.uint8),
    ("Bool", torch.bool), ("ComplexFloat", torch.complex64),
    ("ComplexDouble", torch.complex128))}
_TAGS = {f"torch.jit._pickle.{name}" for name in (
    "restore_type_tag", "build_intlist", "build_tensorlist", "build_doublelist",
    "build_boollist")}
_CLASS = re.compile(r"^class (\w+)\(", re.MULTILINE)
_DECLARED = re.compile(r"^  (__parameters__|__buffers__) = (\[.*\])\s*$", re.MULTILINE)


class ScriptObject:
    """An object of a `__torch__.*` class, as data: its class name and the state it was
    pickled with (a module's: a dict of its attributes). Nothing of it ever runs."""

    qualname: ClassVar[str] = ""
    """The TorchScript class, e.g. `__torch__.torch.nn.modules.linear.Linear`."""
    state: Any = None
    """What the pickle's BUILD gave it (None until then: NEWOBJ skips `__init__`)."""

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD: store, never apply
        self.state = state


class _StorageType:
    """A storage class named in the pickle (`torch.FloatStorage`): its dtype only."""

    def __init__(self, name: str):
        self.name, self.dtype = name, _DTYPES[name]


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple,
                    requires_grad: bool = False, hooks: Any = None, metadata: Any = None,
                    ) -> torch.Tensor:
    """`torch._utils._rebuild_tensor_v2`'s arguments -> a view of the flat storage."""
    if not isinstance(storage, torch.Tensor):
        raise TypeError(f"a tensor over {type(storage).__name__}, not a storage")
    if not all(isinstance(v, int) for v in (offset, *size, *stride)):
        raise TypeError("a tensor whose offset, size or stride are not integers")
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


def _untag(value: Any, *_: Any) -> Any:
    """`torch.jit._pickle.restore_type_tag(value, type)` / `build_*list(value)`: value."""
    return value


class _Unpickler(pickle._Unpickler):
    """`data.pkl` of one archive: only inert records, tensors and ordered dicts.

    Python's own unpickler, not the C one: TorchScript pickles an enum value as
    `REDUCE(EnumClass, "NAME")`, an argument the C unpickler refuses (it must be a tuple),
    and its BUILD and REDUCE are restricted here to the inert records.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, path: Path):
        super().__init__(io.BytesIO(data))
        self.archive, self.root, self.path = archive, root, path
        self.classes: dict[str, type[ScriptObject]] = {}
        self.storages: dict[str, torch.Tensor] = {}

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if isinstance(func, type) and issubclass(func, ScriptObject):
            self.stack[-1] = func(*args) if isinstance(args, tuple) else func(args)
        elif func in (_rebuild_tensor, _untag, collections.OrderedDict) and isinstance(
                args, tuple):
            self.stack[-1] = func(*args)
        else:
            raise pickle.UnpicklingError(f"a call of {func!r:.60} with {type(args).__name__}")
    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_build(self) -> None:
        state = self.stack.pop()
        if not isinstance(self.stack[-1], ScriptObject):
            raise pickle.UnpicklingError(f"BUILD of a {type(self.stack[-1]).__name__}")
        self.stack[-1].__setstate__(state)
    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if module == "__torch__" or module.startswith("__torch__."):
            if qualname not in self.classes:
                self.classes[qualname] = type(name, (ScriptObject,), {"qualname": qualname})
            return self.classes[qualname]
        if qualname == "torch._utils._rebuild_tensor_v2":
            return _rebuild_tensor
        if qualname == "collections.OrderedDict":
            return collections.OrderedDict
        if qualname in _TAGS:  # TorchScript's container type tags: identity functions
            return _untag
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        raise NotACheckpointError(
            f"{self.path}: a TorchScript archive whose data.pkl names the global "
            f"{qualname!r}, which is not tensor data: refused (nothing of it was run)")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int)):
            raise NotACheckpointError(f"{self.path}: a TorchScript archive with a "
                                      f"storage reference {pid!r:.100} that is not one")
        _, kind, key, _, numel = pid
        if key not in self.storages:
            name = f"{self.root}/data/{key}"
            try:
                raw = bytearray(self.archive.read(name))
            except KeyError:
                raise NotACheckpointError(f"{self.path}: a TorchScript archive without "
                                          f"{name}, a storage its data.pkl uses") from None
            if len(raw) != numel * kind.dtype.itemsize:
                raise NotACheckpointError(
                    f"{self.path}: {name} holds {len(raw)} bytes, not the {numel} "
                    f"{kind.name[:-7].lower()} values data.pkl says")
            self.storages[key] = torch.frombuffer(raw, dtype=kind.dtype) if raw else \
                torch.empty(0, dtype=kind.dtype)
        return self.storages[key]


def _root(archive: zipfile.ZipFile, path: Path) -> str:
    roots = {name.split("/", 1)[0] for name in archive.namelist()}
    if len(roots) != 1 or f"{next(iter(roots))}/data.pkl" not in archive.namelist():
        raise NotACheckpointError(f"{path}: a zip that is not a TorchScript archive (no "
                                  "single <root>/data.pkl)")
    return roots.pop()


def declarations(archive: zipfile.ZipFile, root: str) -> dict[str, tuple[list, list]]:
    """Module class name -> (its parameter names, its buffer names), read as text from the
    archive's `code/` (each class's `__parameters__` / `__buffers__` lines)."""
    out = {}
    prefix = f"{root}/code/"
    for name in archive.namelist():
        if not (name.startswith(prefix) and name.endswith(".py")):
            continue
        module = name[len(prefix):-3].replace("/", ".")
        text = archive.read(name).decode("utf-8", errors="replace")
        starts = [(m.start(), m.group(1)) for m in _CLASS.finditer(text)] + [(len(text), "")]
        for (start, cls), (end, _) in zip(starts, starts[1:], strict=False):
            found = dict(_DECLARED.findall(text[start:end]))
            try:
                lists = [ast.literal_eval(found.get(k, "[]"))
                         for k in ("__parameters__", "__buffers__")]
            except (ValueError, SyntaxError):
                continue
            if found and all(isinstance(x, list) and all(isinstance(n, str) for n in x)
                             for x in lists):
                out[f"{module}.{cls}"] = (lists[0], lists[1])
    return out


def _walk(obj: ScriptObject, prefix: str, declared: dict, out: dict, path: Path,
          depth: int = 0) -> None:
    """Parameters and buffers of `obj` and of its submodules, as `a.b.name -> tensor`."""
    where = prefix.rstrip(".") or "the root module"
    if depth > 200:
        raise NotACheckpointError(f"{path}: modules nested over 200 deep at {where}")
    if not isinstance(obj.state, dict):
        raise NotACheckpointError(
            f"{path}: {where} ({obj.qualname}) stores its state through its own "
            "__setstate__ code, which is never run here: refused (only where you trust the "
            "file, save torch.jit.load(FILE).state_dict() as safetensors and pass that)")
    params, buffers = declared[obj.qualname]
    for name in (*params, *buffers):
        value = obj.state.get(name)
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif value is not None:
            raise NotACheckpointError(f"{path}: {prefix + name} is declared a parameter or "
                                      f"buffer but holds a {type(value).__name__}")
    for name, value in obj.state.items():
        if isinstance(value, ScriptObject) and value.qualname in declared:
            _walk(value, f"{prefix}{name}.", declared, out, path, depth + 1)


def read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    """The parameters and buffers of the TorchScript archive at `path` (dotted names, as
    `state_dict()`), read as data; NotACheckpointError names the file and what is wrong
    (a refused global among them)."""
    try:
        with zipfile.ZipFile(path) as archive:
            root = _root(archive, path)
            order = f"{root}/byteorder"  # absent in old archives: little-endian
            if order in archive.namelist() and archive.read(order).strip() != b"little":
                raise NotACheckpointError(f"{path}: a TorchScript archive that is not "
                                          "little-endian")
            declared = declarations(archive, root)
            unpickler = _Unpickler(archive.read(f"{root}/data.pkl"), archive, root, path)
            tree = unpickler.load()
    except NotACheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, pickle.UnpicklingError, RecursionError,
            ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError,
            MemoryError) as exc:
        raise NotACheckpointError(f"{path}: a TorchScript archive whose data.pkl does not "
                                  f"read as data: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200] if str(exc) else ''}"
                                  ) from None
    if not isinstance(tree, ScriptObject) or tree.qualname not in declared:
        raise NotACheckpointError(f"{path}: a TorchScript archive whose data.pkl holds a "
                                  f"{type(tree).__name__}, not a module")
    out: dict[str, torch.Tensor] = {}
    _walk(tree, "", declared, out, path)
    if not out:
        raise NotACheckpointError(f"{path}: a TorchScript archive without parameters or "
                                  "buffers")
    return out
