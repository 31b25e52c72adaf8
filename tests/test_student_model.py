"""The assembled student: one frame of a store streams through it (every loss finite,
gradients reach every network), and a tiny student fitted to one frame of an analytic
scene (a wall 10 m ahead) lowers its loss and renders depth towards the wall's."""

from __future__ import annotations

import math

import numpy as np
import torch
from loader_store import build_loader_store

from distillprep.student.data import LoaderConfig, StoreDataset, StoreLoader
from distillprep.student.losses import LossConfig
from distillprep.student.model.distillnerf import DistillNeRFStudent, StudentConfig
from distillprep.student.objective import frame_inputs, objective, sparse_min_pool

TINY = StudentConfig(channels=8, conv_channels=8, levels=(64, 16), decoder_hidden=8,
                     cameras=2)


def test_a_store_frame_streams_through_the_student(tmp_path):
    store = build_loader_store(tmp_path / "s.zarr", {"scene-a": 2})
    dataset = StoreDataset(str(store), LoaderConfig(fields=(
        "rgb", "intrinsics", "cam_to_world", "lidar_depth", "teacher_depth")))
    batch = next(iter(StoreLoader(dataset)))
    torch.manual_seed(0)
    model = DistillNeRFStudent(TINY)
    total, terms = objective(model, batch, LossConfig())
    assert set(terms) == {"rgb_l1", "lidar_depth", "teacher_depth", "entropy", "opacity"}
    assert math.isfinite(float(total.detach()))
    total.backward()
    for name in ("encoder", "coarse_head", "fine_head", "conv", "decoder"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name


def wall_batch() -> dict:
    """Two cameras 1 m apart looking along +x at a textured wall 10 m ahead: images,
    LiDAR on a sparse grid and a teacher depth, all of the wall."""
    h, w = 16, 24
    k = torch.tensor([[20.0, 0, (w - 1) / 2], [0, 20.0, (h - 1) / 2], [0, 0, 1]],
                     dtype=torch.float64)
    poses = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    poses[:, :3, :3] = torch.tensor([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=torch.float64)
    poses[0, :3, 3], poses[1, :3, 3] = torch.tensor([0, 0.5, 1.5]), torch.tensor([0, -0.5, 1.5])
    u = np.arange(w)[None, :, None]
    stripes = (0.5 + 0.4 * np.sin(u / 2.0 + np.arange(3))) * np.ones((h, 1, 1))
    rgb = torch.tensor(np.stack([stripes, np.roll(stripes, 3, axis=1)]) * 255).to(torch.uint8)
    lidar = torch.zeros(2, h, w, dtype=torch.float16)
    lidar[:, ::3, ::2] = 10.0
    return {"rgb": rgb[None], "intrinsics": k.repeat(2, 1, 1)[None],
            "cam_to_world": poses[None], "lidar_depth": lidar[None],
            "teacher_depth": torch.full((1, 2, h, w), 10.0, dtype=torch.float16)}


def test_fitting_one_frame_lowers_the_loss_and_finds_the_wall():
    torch.manual_seed(0)
    model = DistillNeRFStudent(TINY)
    batch = wall_batch()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        optimiser.zero_grad()
        total, _ = objective(model, batch, LossConfig())
        total.backward()
        optimiser.step()
        first = float(total) if first is None else first
    with torch.no_grad():
        total, _ = objective(model, batch, LossConfig())
        inputs = frame_inputs(batch)
        scene = model.encode(inputs["images"], inputs["intrinsics"], inputs["cam_to_ref"])
    coarse = scene["coarse_depth"]
    assert float(total) < 0.5 * first
    assert float((coarse - 10.0).abs().median()) < 2.0


def test_sparse_min_pool_keeps_the_nearest_return():
    depth = torch.tensor([[[0.0, 5.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]]])
    assert sparse_min_pool(depth, 2).tolist() == [[[3.0, 0.0]]]


def test_virtual_cameras_add_their_own_targets(tmp_path):
    store = build_loader_store(tmp_path / "s.zarr", {"scene-a": 3})
    dataset = StoreDataset(str(store), LoaderConfig(fields=(
        "rgb", "intrinsics", "cam_to_world", "teacher_depth", "virtual_rgb",
        "virtual_depth"), resize=(16, 12), shuffle=False))
    batches = list(StoreLoader(dataset))
    torch.manual_seed(0)
    model = DistillNeRFStudent(TINY)
    _, terms = objective(model, batches[0], LossConfig())
    assert {"virtual_rgb_l1", "virtual_teacher_depth"} <= set(terms)
    _, without = objective(model, batches[0], LossConfig(virtual=0.0))
    assert not any(k.startswith("virtual") for k in without)
    # frame 2's second camera has no view (placement dropped them): only the first counts
    assert batches[2]["virtual_valid"][0, :, 0].tolist() == [True, False]
    total, _ = objective(model, batches[2], LossConfig())
    total.backward()
    assert math.isfinite(float(total.detach()))


def test_chunked_rendering_equals_rendering_at_once():
    from dataclasses import replace

    from distillprep.student.model.distillnerf import scale_intrinsics

    batch = wall_batch()
    inputs = frame_inputs(batch)
    grads = []
    for chunk in (4096, 7):
        torch.manual_seed(0)
        model = DistillNeRFStudent(replace(TINY, render_chunk=chunk))
        scene = model.encode(inputs["images"], inputs["intrinsics"], inputs["cam_to_ref"])
        out = model.render(scene, scale_intrinsics(inputs["intrinsics"], 0.5),
                           inputs["cam_to_ref"], torch.arange(2), scene["size"])
        (out["rgb"].sum() + out["depth"].sum()).backward()
        grads.append((out["depth"].detach(), [p.grad.clone() for p in model.parameters()
                                              if p.grad is not None]))
    (depth_a, grad_a), (depth_b, grad_b) = grads
    assert torch.allclose(depth_a, depth_b)
    assert len(grad_a) == len(grad_b)
    # float32 sums taken in another order: equal to 1e-4 of the largest gradient (some
    # parameters' gradients, a bias before a normalisation, are rounding noise alone)
    scale = max(float(a.abs().max()) for a in grad_a)
    for a, b in zip(grad_a, grad_b, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-4 * scale)
