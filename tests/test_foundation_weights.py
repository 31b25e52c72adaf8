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


def test_a_torchscript_archive_is_read_by_its_own_loader(tmp_path):
    """OpenAI ships CLIP as TorchScript: such a file is opened with torch.jit.load (no
    pickled Python), and its tensors are then checked like any other."""
    archive = tmp_path / "ViT-B-16.pt"
    torch.jit.script(torch.nn.Linear(3, 2)).save(str(archive))
    clip = model_spec("clip-vitb16")
    with pytest.raises(WrongArchitectureError, match="ViT-B-16.pt: not clip-vitb16 weights"):
        load_weights(clip, build_model(clip), archive)


def test_random_init_is_recorded_as_such():
    extractor = load_extractor(FeatureConfig(model="dinov2-vits14", random_init=True))
    assert extractor.provenance["random_init"] is True
    assert extractor.provenance["weights_sha256"] is None
    assert extractor.provenance["architecture"] == "vit_small_patch14_dinov2"
