"""The teacher runs one code path on every device: fits, checkpoints and renders take a
`device` argument (here "cpu"); a step or a render creates no tensor off its teacher's
device (checked on the CPU with "meta" as the default device, where such a tensor would
land); a checkpoint loads onto a device and resumes exactly; on a GPU, a short fit and a
render agree with the CPU's."""

import dataclasses
import zipfile

import numpy as np
import pytest
import torch
from test_teacher_dynamic import DYNAMIC
from test_teacher_fit import TINY

from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.teachers.errors import CheckpointError
from distillprep.teachers.nerf.checkpoint import (
    FORMAT,
    check_matches,
    load_checkpoint,
    save_checkpoint,
)
from distillprep.teachers.nerf.fit import TrainingRays, new_state, resume_state, train_step
from distillprep.teachers.nerf.hash_grid import HashGrid, HashGridConfig
from distillprep.teachers.nerf.render import render_image
from distillprep.teachers.nerf.sampler import RaySampling
from distillprep.teachers.nerf.teacher import Teacher, build_teacher
from distillprep.teachers.tensor_files import is_safetensors, read_tree

FRAMES = [0, 1, 2]
CONFIG = dataclasses.replace(
    TINY, dynamic=DYNAMIC,
    sampler=dataclasses.replace(TINY.sampler, prune_every=5, prune_after=5,
                                rays=RaySampling(candidates=64, max_samples=16,
                                                 fine_samples=8)))
"""Every part a step has: static + dynamic fields, fine samples, pruning (steps 5, 10)."""
RENDER = RaySampling(candidates=64, max_samples=32, fine_samples=16)


@pytest.fixture(scope="module")
def scene(small_dataset):
    return read_nuscenes(small_dataset, scenes=["scene-0001"]).scenes[0]


def _fit_parts(scene, device: str, backend: str = "auto"):
    """A fresh fit of CONFIG on `device`, its hash grids on `backend`: (state, rays)."""
    rays = TrainingRays.of(scene, FRAMES, CONFIG, device)
    teacher = build_teacher(scene, CONFIG, rays.lidar, rays.camera, device)
    grids = [m for part in (teacher.field, teacher.dynamic) for m in part.modules()
             if isinstance(m, HashGrid)]
    for grid in grids if backend != "auto" else []:
        grid.requested_backend = backend
    return new_state(teacher), rays


def _tensors(teacher: Teacher) -> dict[str, torch.Tensor]:
    return {**{f"field.{k}": v for k, v in teacher.field.state_dict().items()},
            **{f"dynamic.{k}": v for k, v in teacher.dynamic.state_dict().items()},
            "occupied": teacher.grid.occupied, "in_use": teacher.grid.in_use}


def test_steps_and_renders_make_tensors_only_on_their_teachers_device(scene):
    """With "meta" as the default device a tensor made without `device=` lands there and
    mixing it with the teacher's fails: what would break the same code on CUDA. The torch
    hash path is the one CUDA runs (without tiny-cuda-nn)."""
    torch.set_num_threads(2)
    state, rays = _fit_parts(scene, "cpu", backend="torch")
    assert state.teacher.device == torch.device("cpu")
    assert {t.device.type for t in rays.tensors.values()} == {"cpu"}
    state.step = CONFIG.sampler.prune_every - 1  # the next step also prunes
    grid, prunings = state.teacher.grid, []
    prune = grid.prune
    grid.prune = lambda *args, **kwargs: prunings.append(1) or prune(*args, **kwargs)
    with torch.device("meta"):
        losses = train_step(state, rays)
        out = render_image(state.teacher, scene, 1, "CAM_FRONT", scale=0.25, sampling=RENDER,
                           device="cpu")
    assert {v.device.type for v in losses.values()} == {"cpu"}
    assert all(np.isfinite(v.item()) for v in losses.values())
    assert prunings == [1]
    assert out["depth"].shape == (27, 48) and np.isfinite(out["depth"]).all()


def test_a_checkpoint_loads_onto_a_device_and_resumes_exactly(scene, tmp_path):
    torch.set_num_threads(2)
    whole, rays = _fit_parts(scene, "cpu")
    part, _ = _fit_parts(scene, "cpu")
    for _ in range(12):  # across both prunings
        train_step(whole, rays)
    for _ in range(7):
        train_step(part, rays)
    path = save_checkpoint(tmp_path / "t.pt", part, scene.scene_id, "sha256-of-content",
                           FRAMES, {"dataset": "nuscenes"})
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.teacher.device == torch.device("cpu") and loaded.step == 7
    assert is_safetensors(path) and not zipfile.is_zipfile(path)  # nothing pickled
    old = tmp_path / "old.pt"  # what distillprep wrote before: one torch.save file
    torch.save(read_tree(path, FORMAT), old)
    before = load_checkpoint(old)
    assert before.step == 7 and before.optimizer_state["param_groups"] == \
        loaded.optimizer_state["param_groups"]
    assert all(torch.equal(v, _tensors(loaded.teacher)[k])
               for k, v in _tensors(before.teacher).items())
    assert loaded.fingerprint == "sha256-of-content" and loaded.frames == FRAMES
    check_matches(loaded, scene.scene_id, "sha256-of-content", CONFIG)
    with pytest.raises(CheckpointError, match="fitted on scene 'scene-0001', not 'other'"):
        check_matches(loaded, "other", "sha256-of-content")
    with pytest.raises(CheckpointError, match="scene 'scene-0001' differs from the one"):
        check_matches(loaded, scene.scene_id, "sha256-of-other-content")
    # rendering the loaded teacher is rendering the fitted one
    ours = render_image(part.teacher, scene, 1, "CAM_FRONT", scale=0.25, sampling=RENDER)
    theirs = render_image(loaded.teacher, scene, 1, "CAM_FRONT", scale=0.25, sampling=RENDER,
                          device="cpu")
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    resumed = resume_state(loaded)
    while resumed.step < whole.step:
        train_step(resumed, rays)
    a, b = _tensors(whole.teacher), _tensors(resumed.teacher)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_damaged_optimiser_state_is_a_checkpoint_error(scene, tmp_path):
    state, _ = _fit_parts(scene, "cpu")
    path = save_checkpoint(tmp_path / "t.pt", state, scene.scene_id, "x", FRAMES)
    loaded = load_checkpoint(path)  # rendering never looks at the optimiser
    loaded.optimizer_state["param_groups"] = []
    with pytest.raises(CheckpointError, match=f"checkpoint {path}: damaged or inconsistent"):
        resume_state(loaded)


def test_the_cpp_kernel_is_chosen_for_cpu_tensors_only():
    """"auto" resolves per call: the C++ kernel for CPU tensors (where it built), never for
    another device's (CUDA: tiny-cuda-nn or torch; here "meta" stands in for one)."""
    grid = HashGrid(HashGridConfig(levels=2, log2_table_size=8))
    assert grid._resolve(torch.zeros(1, 3)) in ("cpp", "torch")
    assert grid._resolve(torch.zeros(1, 3, device="meta")) == "torch"


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device: the CUDA fit and render are compared with the "
                    "CPU's only where torch sees a GPU")
def test_a_cuda_fit_and_render_agree_with_the_cpu(scene):
    """Same seed, same rays, the torch hash path on both devices. Tolerances: every step's
    loss within 2 % (float sums in another order, atomics in the table's scatter), the
    occupancy after two prunings equal but for 0.1 % of the cells (a density at the
    threshold), the depth of opaque pixels within 1 % at the median and 5 % at the 95th
    percentile, colours within 0.01 on average."""
    results = {}
    for device in ("cpu", "cuda"):
        state, rays = _fit_parts(scene, device, backend="torch")
        assert {t.device.type for t in rays.tensors.values()} == {device}
        losses = [train_step(state, rays)["loss"].item() for _ in range(12)]
        out = render_image(state.teacher, scene, 1, "CAM_FRONT", scale=0.5, sampling=RENDER)
        assert state.teacher.field.grid.backend == "torch"
        results[device] = losses, out, state.teacher.grid.occupied.cpu()
    (cpu_losses, cpu, cpu_cells), (cuda_losses, cuda, cuda_cells) = results.values()
    np.testing.assert_allclose(cuda_losses, cpu_losses, rtol=0.02)
    assert (cpu_cells != cuda_cells).float().mean() < 1e-3
    opaque = (cpu["opacity"] > 0.5) & (cuda["opacity"] > 0.5)
    assert opaque.mean() > 0.5
    rel = np.abs(cuda["depth"] - cpu["depth"])[opaque] / cpu["depth"][opaque]
    assert np.median(rel) < 0.01 and np.quantile(rel, 0.95) < 0.05, np.quantile(rel, [.5, .95])
    assert np.abs(cuda["rgb"] - cpu["rgb"]).mean() < 0.01
