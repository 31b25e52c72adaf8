"""The student on CUDA against the same student on the CPU (skipped without a GPU): one
frame's encoding and rendering agree in values and in the gradients of every parameter,
and a training run on the GPU resumes on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch

from distillprep.student.model.distillnerf import (
    DistillNeRFStudent,
    StudentConfig,
    scale_intrinsics,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _frame():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import bench_student

    k, poses = bench_student.rig()
    k = scale_intrinsics(k, 0.25)  # 57 x 32 inputs
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 32, 57, generator=g), k, poses


def _run(model: DistillNeRFStudent, images, k, poses):
    device = model.edges.device
    images, k, poses = images.to(device), k.to(device), poses.to(device)
    scene = model.encode(images, k, poses)
    out = model.render(scene, scale_intrinsics(k, 0.5), poses,
                       torch.arange(6, device=device), scene["size"])
    loss = out["rgb"].mean() + out["depth"].mean() / 50 + scene["coarse_depth"].mean() / 50
    loss.backward()
    return {k: v.detach().cpu() for k, v in out.items() if k != "weights"}


def test_cuda_student_equals_the_cpu_student():
    torch.manual_seed(0)
    cpu = DistillNeRFStudent(StudentConfig(channels=8, conv_channels=8, levels=(64, 16),
                                           decoder_hidden=8))
    gpu = copy.deepcopy(cpu).cuda()
    frame = _frame()
    a, b = _run(cpu, *frame), _run(gpu, *frame)
    for name in ("depth", "opacity", "rgb"):
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-3, msg=name)
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        if p.grad is not None:
            scale = float(p.grad.abs().max()) + 1e-8
            torch.testing.assert_close(q.grad.cpu() / scale, p.grad / scale, rtol=0,
                                       atol=1e-2, msg=name)


def test_a_run_trained_on_cuda_resumes_on_the_cpu(tmp_path):
    from dataclasses import replace

    from loader_store import build_loader_store
    from test_student_train import CONFIG

    from distillprep.student.train import train

    store = str(build_loader_store(tmp_path / "s.zarr", {"scene-a": 3}))
    train([store], tmp_path / "run", replace(CONFIG, steps=2), device="cuda")
    result = train([store], tmp_path / "run", replace(CONFIG, steps=3), device="cpu")
    assert result.resumed_from == 2 and result.steps == 3
