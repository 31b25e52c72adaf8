"""The student's frozen 2D prior (`student/model/prior.py`): DINOv2 weights from a local
file, frozen and kept out of the checkpoints, its provenance saved with every checkpoint
and compared when a run resumes or is evaluated."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from loader_store import build_loader_store
from test_student_train import CONFIG

from distillprep.scenes.errors import ConfigError
from distillprep.scenes.io import file_sha256
from distillprep.student.evaluate import evaluate
from distillprep.student.model.distillnerf import DistillNeRFStudent
from distillprep.student.model.prior import PriorConfig
from distillprep.student.train import load_checkpoint, train
from distillprep.teachers.foundation.models import build_model, model_spec
from distillprep.teachers.foundation.weights import WrongArchitectureError

SPEC = model_spec("dinov2-vits14")


def _weights(path, seed: int):
    torch.save(build_model(SPEC, seed=seed).state_dict(), path)
    return path


def _config(weights=None, model="dinov2-vits14"):
    return replace(CONFIG, model=replace(CONFIG.model, prior=PriorConfig(
        model, None if weights is None else str(weights), input_width=28)))


def test_the_prior_loads_a_local_file_is_frozen_and_stays_out_of_the_state(tmp_path):
    weights = _weights(tmp_path / "vits.pth", seed=3)
    model = DistillNeRFStudent(_config(weights).model)
    expected = torch.load(weights, weights_only=True)
    assert torch.equal(model.prior.network.state_dict()["blocks.0.attn.qkv.weight"],
                       expected["blocks.0.attn.qkv.weight"])
    assert model.prior.provenance == {"model": "dinov2-vits14",
                                      "architecture": SPEC.architecture,
                                      "weights_sha256": file_sha256(weights),
                                      "random_init": False}
    assert all(not k.startswith("prior.") or k.startswith("prior.project.")
               for k in model.state_dict())
    images = torch.rand(2, 3, 24, 32)
    k = torch.tensor([[20.0, 0, 15.5], [0, 20.0, 11.5], [0, 0, 1]]).expand(2, 3, 3)
    poses = torch.eye(4).expand(2, 4, 4).clone()
    model.train()
    assert not model.prior.network.training  # frozen: always in eval mode
    scene = model.encode(images, k, poses)
    scene["coarse_depth"].mean().backward()
    assert all(p.grad is None for p in model.prior.network.parameters())
    assert model.prior.project.weight.grad is not None
    assert model.prior.project.weight.grad.abs().sum() > 0
    # the prior changes what the encoder gives: zeroing its projection removes it
    with torch.no_grad():
        with_prior = model.encode(images, k, poses)["coarse_depth"]
        model.prior.project.weight.zero_()
        model.prior.project.bias.zero_()
        model.prior = None
        without = model.encode(images, k, poses)["coarse_depth"]
    assert not torch.allclose(with_prior, without)
    moved = DistillNeRFStudent(_config(weights).model).double()
    assert next(moved.prior.network.parameters()).dtype == torch.float64


def test_other_weights_and_other_models_are_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(WrongArchitectureError, match="bad.pth.*not dinov2-vits14"):
        DistillNeRFStudent(_config(bad).model)
    with pytest.raises(ConfigError, match="DINOv2"):
        DistillNeRFStudent(_config(model="clip-vitb16").model)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return str(build_loader_store(tmp_path_factory.mktemp("prior") / "s.zarr",
                                  {"scene-a": 2}))


def test_a_run_records_its_prior_and_resumes_only_over_the_same_weights(store, tmp_path):
    weights = _weights(tmp_path / "vits.pth", seed=3)
    config = replace(_config(weights), steps=2, checkpoint_every=2)
    result = train([store], tmp_path / "run", config)
    saved = load_checkpoint(result.checkpoint)["prior"]
    assert saved["weights_sha256"] == file_sha256(weights) and not saved["random_init"]
    report = evaluate([store], tmp_path / "run", ("scene-a",))
    assert report["prior"] == saved
    _weights(weights, seed=4)  # the same file name, other weights
    with pytest.raises(ConfigError, match="frozen prior"):
        train([store], tmp_path / "run", replace(config, steps=4))
    with pytest.raises(ConfigError, match="frozen prior"):
        evaluate([store], tmp_path / "run", ("scene-a",))
    random = train([store], tmp_path / "random", replace(_config(), steps=1))
    assert load_checkpoint(random.checkpoint)["prior"]["random_init"] is True
