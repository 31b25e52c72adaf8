"""Weights come from local files only: the released formats load, everything else is a
clear error naming the file."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from distillprep.teachers.foundation.dense import dense_features, prepare
from distillprep.teachers.foundation.extract import FeatureConfig, load_extractor
from distillprep.teachers.foundation.models import build_model, model_spec
from distillprep.teachers.foundation.weights import (
    WEIGHTS_DIR_ENV,
    NotACheckpointError,
    WeightsNotFoundError,
    WrongArchitectureError,
    file_sha256,
    find_weights,
    load_weights,
    read_state_dict,
)

DINO = model_spec("dinov2-vits14")


@pytest.fixture(scope="module")
def dino_source():
    """A DINOv2 ViT-S/14 with its own (random) weights, and its state dict as DINOv2's
    released .pth names it (timm's names plus the mask token)."""
    model = build_model(DINO, seed=5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["mask_token"] = torch.zeros(1, DINO.width)
    return model, state


def _features(model, seed=0):
    rng = np.random.default_rng(seed)
    images = torch.as_tensor(rng.integers(0, 256, (1, 56, 84, 3), dtype=np.uint8))
    with torch.inference_mode():
        return dense_features(DINO, model, prepare(DINO, images, (4, 6)))


def test_dinov2_release_format_loads_and_gives_the_source_models_features(dino_source,
                                                                         tmp_path):
    source, state = dino_source
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    model = build_model(DINO, seed=99)  # other random weights until loaded
    assert not torch.allclose(_features(model), _features(source))
    assert load_weights(DINO, model, path) == file_sha256(path)
    torch.testing.assert_close(_features(model), _features(source))


def test_nested_training_checkpoint_and_safetensors_load(dino_source, tmp_path):
    from safetensors.torch import save_file

    source, state = dino_source
    nested = tmp_path / "train.pt"
    torch.save({"model": state, "epoch": 3}, nested)
    load_weights(DINO, build_model(DINO, seed=1), nested)
    flat = tmp_path / "dinov2-vits14.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(flat))
    model = build_model(DINO, seed=1)
    load_weights(DINO, model, flat)
    torch.testing.assert_close(_features(model), _features(source))


def test_missing_weights_name_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(WeightsNotFoundError, match="nope.pth does not exist"):
        find_weights(DINO, tmp_path / "nope.pth")
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    with pytest.raises(WeightsNotFoundError, match="--weights FILE.*--random-init"):
        find_weights(DINO, None)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="no dinov2-vits14.pth"):
        find_weights(DINO, None)
    (tmp_path / "dinov2-vits14.pth").write_bytes(b"x")
    assert find_weights(DINO, None) == tmp_path / "dinov2-vits14.pth"
    with pytest.raises(WeightsNotFoundError):
        load_extractor(FeatureConfig(model="dinov2-vits14"), tmp_path / "absent.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    pickled = tmp_path / "payload.pth"
    pickled.write_bytes(pickle.dumps(_Payload()))  # weights_only refuses to run it
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    for path, why in ((text, "not a PyTorch checkpoint"), (pickled, "weights_only=True"),
                      (tensor, "holds a Tensor, not a state dict"),
                      (broken, "not a safetensors file")):
        with pytest.raises(NotACheckpointError, match=why) as error:
            load_weights(DINO, build_model(DINO), path)
        assert str(path) in str(error.value)


def test_weights_of_another_architecture_are_refused(dino_source, tmp_path):
    _, state = dino_source
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    base = model_spec("dinov2-vitb14")
    with pytest.raises(WrongArchitectureError, match=r"not dinov2-vitb14 weights.*other "
                       r"shapes \(e\.g\. .*file \(.*384.*\), model \(.*768"):
        load_weights(base, build_model(base), path)
    clip = model_spec("clip-vitb16")
    with pytest.raises(WrongArchitectureError, match="not clip-vitb16 weights.*missing"):
        load_weights(clip, build_model(clip), path)


class _Tree(torch.nn.Module):
    """Parameters, buffers (one a transposed view), a bias-less and a mangled submodule,
    and attributes that are not state (a float, a plain tensor)."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(3, 4)
        self.second = torch.nn.Linear(4, 2, bias=False)
        self.norm = torch.nn.BatchNorm1d(2)
        self.register_buffer("table", torch.arange(6.0).reshape(2, 3).t())
        self.scale = 3.0
        self.offset = torch.ones(2)

    def forward(self, x):
        return self.norm(self.second(self.first(x))) * self.scale + self.offset


@pytest.fixture
def no_jit_load(monkeypatch):
    """TorchScript's loader compiles and runs an archive's code: reading must not use it."""
    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load would run the archive's code")

    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch._C, "import_ir_module", refuse)


def _assert_same_state(state, expected):
    assert list(state) == list(expected)
    for name, value in expected.items():
        assert state[name].dtype == value.dtype and torch.equal(state[name], value), name


def test_a_torchscript_archive_is_read_as_data(tmp_path, no_jit_load):
    """OpenAI ships CLIP as TorchScript: such a file is read without running its code
    (tests/test_untrusted_files.py), and its tensors are exactly the module's state dict,
    whether it was scripted or traced; they are then checked like any other."""
    module = _Tree()
    module(torch.randn(5, 3))  # running statistics that are not the defaults
    module.eval()
    for how, make in (("scripted", torch.jit.script),
                      ("traced", lambda m: torch.jit.trace(m, torch.randn(5, 3)))):
        archive = tmp_path / f"{how}.pt"
        make(module).save(str(archive))
        _assert_same_state(read_state_dict(archive), module.state_dict())
    clip = model_spec("clip-vitb16")
    with pytest.raises(WrongArchitectureError, match="traced.pt: not clip-vitb16 weights"):
        load_weights(clip, build_model(clip), tmp_path / "traced.pt")


def test_a_traced_dinov2_loads_into_the_real_architecture(dino_source, tmp_path,
                                                         no_jit_load):
    source, _ = dino_source
    archive = tmp_path / "dinov2.pt"
    torch.jit.trace(source, torch.zeros(1, 3, 14, 14), check_trace=False).save(str(archive))
    _assert_same_state(read_state_dict(archive), source.state_dict())
    expected = _features(source)
    with torch.no_grad():  # the shared source model itself as the target (no second build)
        for value in source.parameters():
            value.zero_()
    assert not torch.allclose(_features(source), expected)
    load_weights(DINO, source, archive)
    torch.testing.assert_close(_features(source), expected, rtol=0, atol=0)


@pytest.mark.slow
def test_scripted_timm_and_open_clip_models_read_as_data(tmp_path, no_jit_load):
    """Scripted timm ViTs pickle enums and typed containers (`restore_type_tag`); an
    OpenAI-style CLIP archive is a traced open_clip model."""
    import open_clip
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()
    torch.jit.script(vit).save(str(tmp_path / "vit.pt"))
    _assert_same_state(read_state_dict(tmp_path / "vit.pt"), vit.state_dict())
    clip = open_clip.CLIP(32, {"layers": 1, "width": 64, "patch_size": 16, "image_size": 32},
                          {"layers": 1, "width": 32, "heads": 2, "context_length": 8,
                           "vocab_size": 50}).eval()
    text = torch.zeros(1, 8, dtype=torch.long)
    torch.jit.trace(clip, (torch.zeros(1, 3, 32, 32), text)).save(str(tmp_path / "clip.pt"))
    state = read_state_dict(tmp_path / "clip.pt")
    # TorchScript keeps no buffer's persistent=False: such buffers come too, as they did
    # from torch.jit.load (OpenAI's archives hold none: their masks are plain attributes)
    extra = dict(clip.named_buffers())
    assert set(state) - set(clip.state_dict()) == {"attn_mask"} <= set(extra)
    _assert_same_state({k: state[k] for k in clip.state_dict()}, clip.state_dict())


def test_weights_convert_writes_the_tensors_as_safetensors(tmp_path, capsys):
    import json

    from safetensors.torch import load_file

    from distillprep.flows.cli import main

    module = _Tree().eval()
    archive = tmp_path / "tree.pt"
    torch.jit.script(module).save(str(archive))
    out = tmp_path / "tree.safetensors"
    assert main(["weights", "convert", str(archive), str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_sha256"] == file_sha256(archive)
    assert report["output_sha256"] == file_sha256(out) and report["tensors"] == 9
    loaded, expected = load_file(str(out)), module.state_dict()
    assert set(loaded) == set(expected)  # safetensors keeps its own order
    _assert_same_state({k: loaded[k] for k in expected}, expected)
    assert main(["weights", "convert", str(archive), str(out)]) == 2  # no overwrite
    assert "exists (--force replaces it)" in capsys.readouterr().err
    assert main(["weights", "convert", str(archive), str(out), "--force"]) == 0
    assert f"sha256 {file_sha256(archive)}" in capsys.readouterr().out
    assert main(["weights", "convert", str(archive), str(tmp_path / "x.pt")]) == 2


def test_random_init_is_recorded_as_such():
    extractor = load_extractor(FeatureConfig(model="dinov2-vits14", random_init=True))
    assert extractor.provenance["random_init"] is True
    assert extractor.provenance["weights_sha256"] is None
    assert extractor.provenance["architecture"] == "vit_small_patch14_dinov2"
