"""No code from a data file, ever: each crafted payload (a pickle `__reduce__` calling
os.system or builtins.exec, the same in torch.save's zip and legacy formats, a TorchScript
archive whose `__setstate__` writes a file, a TorchScript archive whose data.pkl names a
malicious global, a run folder whose config names such a file as the prior's weights)
against every entry point that loads a file: no marker file appears, and a named
`DistillprepError` comes out (exit 1 through the CLI).

The default suite holds every payload against the readers and `weights convert`, and the
TorchScript `__setstate__` payload (the one `torch.jit.load` ran) against the CLI commands
that build a model first; the slow suite holds every payload against every command."""

from __future__ import annotations

import ast
import json
import os
import pickle
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Tuple  # noqa: UP035 - TorchScript's annotations need typing's

import pytest
import torch
from conftest import REPO
from test_student_train import CONFIG

from distillprep.flows.cli import main
from distillprep.scenes.errors import DistillprepError
from distillprep.student.model.prior import PriorConfig
from distillprep.student.train import StudentCheckpointError, _config_json
from distillprep.student.train import load_checkpoint as load_student_checkpoint
from distillprep.teachers.errors import CheckpointError
from distillprep.teachers.foundation.models import build_model, model_spec
from distillprep.teachers.foundation.weights import (
    NotACheckpointError,
    WeightsError,
    load_weights,
    read_state_dict,
)
from distillprep.teachers.nerf.checkpoint import load_checkpoint as load_teacher_checkpoint
from distillprep.teachers.nerf.config_io import to_dict
from distillprep.teachers.tensor_files import write_tree

DINO = model_spec("dinov2-vits14")
PAYLOADS = ("pickle-system", "zip-exec", "legacy-system", "torchscript-setstate",
            "torchscript-global")


class _System:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


class _SetState(torch.nn.Module):
    """Its TorchScript `__setstate__` creates and writes the marker file (`from_file`
    with shared=True maps a new file; filling the tensor writes it)."""

    def __init__(self, marker: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2, 3))
        self.marker = marker

    @torch.jit.export
    def __getstate__(self) -> Tuple[bool, torch.Tensor, str]:  # noqa: UP006
        return (self.training, self.weight, self.marker)

    @torch.jit.export
    def __setstate__(self, state: Tuple[bool, torch.Tensor, str]) -> None:  # noqa: UP006
        written = torch.from_file(state[2], True, 3, dtype=torch.uint8)
        written.fill_(65)
        print("__setstate__ ran", written)  # keeps the write from being optimised away
        self.training = state[0]
        self.weight = state[1]
        self.marker = state[2]

    def forward(self, x):
        return x @ self.weight


def _torchscript_with_data(path: Path, data: bytes) -> None:
    """A real TorchScript archive (a scripted Linear) whose data.pkl is `data`."""
    benign = path.with_name("benign.pt")
    torch.jit.script(torch.nn.Linear(3, 2)).save(str(benign))
    with zipfile.ZipFile(benign) as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            body = data if info.filename.endswith("/data.pkl") else src.read(info)
            out.writestr(info.filename.replace("benign/", f"{path.stem}/"), body)


def make_payloads(folder: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (the hostile file, the marker file it writes when its code runs)."""
    marks = folder / "marks"
    marks.mkdir(parents=True)
    out = {name: (folder / f"{name}.pt", marks / name) for name in PAYLOADS}
    path, marker = out["pickle-system"]
    path.write_bytes(pickle.dumps({"weight": _System(marker)}, protocol=2))
    path, marker = out["zip-exec"]
    torch.save({"weight": _Exec(marker)}, path)
    path, marker = out["legacy-system"]
    torch.save({"weight": _System(marker)}, path, _use_new_zipfile_serialization=False)
    path, marker = out["torchscript-setstate"]
    torch.jit.script(_SetState(str(marker))).save(str(path))
    path, marker = out["torchscript-global"]
    _torchscript_with_data(path, pickle.dumps(_System(marker), protocol=2))
    return out


@pytest.fixture(scope="module")
def payloads(tmp_path_factory):
    return make_payloads(tmp_path_factory.mktemp("payloads"))


@pytest.fixture(scope="module")
def dino():
    return build_model(DINO)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    from distillprep.storage_schemas.store import create_store

    path = tmp_path_factory.mktemp("store") / "s.zarr"
    create_store(path, "nuscenes", "v1.0-mini")
    return str(path)


def _no_marker(payloads) -> None:
    marks = next(iter(payloads.values()))[1].parent
    assert sorted(p.name for p in marks.iterdir()) == []


def test_the_payloads_run_code_where_their_own_loaders_open_them(tmp_path, capfd):
    """Each payload is live: opened the unsafe way it writes its marker (this is what
    `torch.jit.load` did in `read_state_dict`)."""
    fresh = make_payloads(tmp_path)
    unsafe = {"pickle-system": lambda p: pickle.loads(p.read_bytes()),
              "zip-exec": lambda p: torch.load(p, weights_only=False),
              "legacy-system": lambda p: torch.load(p, weights_only=False),
              "torchscript-setstate": lambda p: torch.jit.load(str(p))}
    for name, load in unsafe.items():
        path, marker = fresh[name]
        load(path)
        assert marker.exists(), name
    path, marker = fresh["torchscript-global"]  # its data.pkl, unpickled as Python does
    with zipfile.ZipFile(path) as archive:
        pickle.loads(archive.read(f"{path.stem}/data.pkl"))
    assert marker.exists()


@pytest.mark.parametrize("name", PAYLOADS)
def test_weights_readers_refuse_every_payload(payloads, name):
    path, _ = payloads[name]
    with pytest.raises(NotACheckpointError) as error:
        read_state_dict(path)
    assert str(path) in str(error.value)
    _no_marker(payloads)


@pytest.mark.slow
@pytest.mark.parametrize("name", PAYLOADS)
def test_load_weights_refuses_every_payload(payloads, dino, name):
    """(The commands below reach it through `features` and the prior in the fast suite.)"""
    path, _ = payloads[name]
    with pytest.raises(WeightsError, match=str(path)):
        load_weights(DINO, dino, path)
    _no_marker(payloads)


def test_the_refusal_names_the_global(payloads):
    path, _ = payloads["torchscript-global"]
    with pytest.raises(NotACheckpointError, match=r"names the global '(posix|os)\.system'"):
        read_state_dict(path)
    path, _ = payloads["torchscript-setstate"]
    with pytest.raises(NotACheckpointError, match="its own __setstate__ code, which is never"):
        read_state_dict(path)


@pytest.mark.parametrize("name", PAYLOADS)
def test_checkpoint_readers_refuse_every_payload(payloads, name):
    path, _ = payloads[name]
    with pytest.raises(CheckpointError, match=f"checkpoint {path}"):
        load_teacher_checkpoint(path)
    with pytest.raises(StudentCheckpointError, match=f"checkpoint {path}"):
        load_student_checkpoint(path)
    _no_marker(payloads)


@pytest.mark.parametrize("name", PAYLOADS)
def test_weights_convert_refuses_every_payload(payloads, name, tmp_path, capsys):
    path, _ = payloads[name]
    out = tmp_path / "out.safetensors"
    assert main(["weights", "convert", str(path), str(out)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    _no_marker(payloads)


def _prior_config(weights: Path):
    return replace(CONFIG, steps=1, model=replace(CONFIG.model, prior=PriorConfig(
        "dinov2-vits14", str(weights), input_width=28)))


def _shared_run(folder: Path, weights: Path) -> Path:
    """A run folder as a stranger would share it: a valid student checkpoint whose
    config, like its config.json, names `weights` as the frozen prior's file."""
    config = _prior_config(weights)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(to_dict(config)))
    write_tree(folder / "checkpoints" / "step_0000001.pt",
               {"config": _config_json(config), "model": {}, "step": 1, "prior": None},
               "distillprep-student-checkpoint")
    return folder


def _commands(name, payloads, store, tmp_path) -> dict[str, list[str]]:
    path, _ = payloads[name]
    config = tmp_path / "train.json"
    config.write_text(json.dumps(to_dict(_prior_config(path))))
    run = _shared_run(tmp_path / "shared-run", path)
    return {
        "features-dinov2": ["features", store, "--model", "dinov2-vits14", "--weights",
                            str(path)],
        "features-clip": ["features", store, "--model", "clip-vitb16", "--weights",
                          str(path)],
        "train-prior": ["train", "--store", store, "--out", str(tmp_path / "run"),
                        "--config", str(config)],
        "eval-shared-run": ["eval", "--store", store, "--ckpt", str(run)],
    }


def _check_commands(name, commands, payloads, capsys) -> None:
    path, _ = payloads[name]
    for command, argv in commands.items():
        assert main(argv) == 1, command
        err = capsys.readouterr().err
        assert f"distillprep {argv[0]}: error: {path}" in err, (command, err)
        assert "Traceback" not in err, command
        _no_marker(payloads)


def test_commands_that_load_weights_refuse_the_torchscript_payload(payloads, empty_store,
                                                                   tmp_path, capsys):
    """`features --weights`, `train` with model.prior.weights, `eval` of a shared run folder
    whose config names the file: each exits 1 naming it, and nothing of it runs."""
    commands = _commands("torchscript-setstate", payloads, empty_store, tmp_path)
    commands.pop("features-clip")  # a ViT-B/16 build (features builds before it loads)
    _check_commands("torchscript-setstate", commands, payloads, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("name", PAYLOADS)
def test_every_command_refuses_every_payload(payloads, empty_store, tmp_path, capsys, name):
    _check_commands(name, _commands(name, payloads, empty_store, tmp_path), payloads, capsys)


def test_no_module_of_the_project_calls_torch_jit_load():
    """`torch.jit.load` runs an archive's code: the project reads archives as data only."""
    calls = [f"{path.relative_to(REPO)}:{node.lineno}"
             for package in ("scenes", "storage_schemas", "teachers", "student", "flows")
             for path in sorted((REPO / package).rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Attribute) and node.attr == "load"
             and isinstance(node.value, ast.Attribute) and node.value.attr == "jit"]
    assert calls == []


def test_a_refusal_is_a_named_error_of_the_project(payloads):
    for path, _ in payloads.values():
        with pytest.raises(DistillprepError):
            read_state_dict(path)


def _same(a, b) -> bool:
    """Equal values of equal types, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)  # NaN


def test_checkpoints_are_written_as_safetensors_and_read_back_exactly(tmp_path):
    """What the teacher and student checkpoints hold (an optimiser's state: int keys,
    tuples, 0-d tensors, None) comes back with equal types and bits, through JSON and
    safetensors only; a file of another kind or a damaged one is a named error."""
    from distillprep.teachers.tensor_files import TensorFileError, is_safetensors, read_tree

    layer = torch.nn.Linear(3, 2)
    optimiser = torch.optim.Adam(layer.parameters(), lr=1e-3, betas=(0.0, 0.99))
    layer(torch.randn(4, 3)).sum().backward()
    optimiser.step()
    tree = {"model": layer.state_dict(), "optimizer": optimiser.state_dict(), "step": 7,
            "odd": {"@tensor": "not a tag", 3: [float("inf"), float("nan"), -0.0, None]},
            "rng": torch.get_rng_state(), "half": torch.ones(2, dtype=torch.bfloat16)}
    path = write_tree(tmp_path / "c.pt", tree, "test-checkpoint")
    assert is_safetensors(path) and not zipfile.is_zipfile(path)
    back = read_tree(path, "test-checkpoint")
    assert _same(back["optimizer"], tree["optimizer"])
    assert _same({**back, "model": dict(back["model"])}, {**tree, "model": dict(tree["model"])})
    with pytest.raises(TensorFileError, match="not a other-kind"):
        read_tree(path, "other-kind")
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(TensorFileError, match=f"{path}: not a readable test-checkpoint"):
        read_tree(path, "test-checkpoint")
