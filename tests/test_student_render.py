"""Rendering the student's voxels: a slab of solid voxels whose face is an analytic plane
renders that plane's depth along every ray; the fine level's density wins where it has a
voxel and the coarse level's fills in elsewhere (the density complement); mean pooling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from distillprep.student.model.render import RaySamplingConfig, render_rays
from distillprep.student.model.space import SpaceConfig, coarse_bin_edges
from distillprep.student.model.sparse_conv import SparseVoxels
from distillprep.student.model.voxels import EMPTY_LOGIT, Level, pool, query

SPACE = SpaceConfig()
EDGES = torch.tensor(coarse_bin_edges(SPACE))


def slab(n: int, xs: range, ys: range, zs: range, logit: float, feature: float = 1.0,
         ) -> SparseVoxels:
    cells = torch.tensor([[0, z, y, x] for x, y, z in itertools.product(xs, ys, zs)],
                         dtype=torch.int32)
    features = torch.tensor([[feature, logit]], dtype=torch.float64).expand(len(cells), -1)
    return SparseVoxels(features.clone(), cells, (n, n, n), 1)


def x_face(cell: int, n: int) -> float:
    """Metres of the face between x cells cell - 1 and cell (inside the inner box)."""
    return (-1 + 2 * cell / n) / SPACE.alpha * SPACE.inner_xy


def rays(yaws, pitches):
    d = torch.tensor([[np.cos(p) * np.cos(y), np.cos(p) * np.sin(y), np.sin(p)]
                      for y in np.radians(yaws) for p in np.radians(pitches)])
    return torch.zeros_like(d), d


def empty(n: int) -> SparseVoxels:
    return SparseVoxels(torch.zeros(0, 2, dtype=torch.float64),
                        torch.zeros(0, 4, dtype=torch.int32), (n, n, n), 1)


def test_a_plane_of_voxels_renders_its_exact_depth():
    wall = slab(64, range(40, 46), range(26, 38), range(22, 42), logit=10.0, feature=0.5)
    levels = (Level.of(wall), Level.of(empty(32)))
    origins, directions = rays(np.linspace(-8, 8, 5), np.linspace(-4, 4, 3))
    out = render_rays(levels, origins, directions, torch.zeros(len(origins), dtype=torch.long),
                      EDGES, SPACE)
    truth = x_face(40, 64) / directions[:, 0]  # 15.625 m straight ahead
    assert torch.allclose(out["depth"], truth, atol=0.1)  # the fine samples' spacing
    assert torch.allclose(out["opacity"], torch.ones(len(origins), dtype=torch.float64))
    # empty space keeps a trace of density (its clamped logit): 3e-4 of the weight
    assert torch.allclose(out["features"][:, 0], torch.full((len(origins),), 0.5,
                                                            dtype=torch.float64), atol=1e-3)
    # the depth converges to the exact one as the samples around the surface tighten
    fine = render_rays(levels, origins, directions, torch.zeros(len(origins), dtype=torch.long),
                       EDGES, SPACE, RaySamplingConfig(fine_samples=300, fine_spacing=0.01))
    assert torch.allclose(fine["depth"], truth, atol=0.01)


def test_fine_voxels_decide_where_they_exist_coarse_ones_elsewhere():
    coarse = slab(32, range(21, 26), range(10, 22), range(8, 24), logit=10.0)
    hole = slab(64, range(42, 46), range(32, 38), range(22, 42), logit=EMPTY_LOGIT)
    levels = (Level.of(hole), Level.of(coarse))
    origins, directions = rays([-6.0, 6.0], [0.0])  # right of the car: y < 0; left: y > 0
    out = render_rays(levels, origins, directions, torch.zeros(2, dtype=torch.long),
                      EDGES, SPACE)
    right, left = out["depth"] * directions[:, 0]
    assert right == pytest.approx(x_face(21, 32), abs=0.1)  # the coarse wall
    assert left == pytest.approx(x_face(46, 64), abs=0.1)  # through the fine hole to its end
    points = torch.tensor([[[0.33, 0.02, 0.0], [0.33, -0.02, 0.0], [-0.5, 0.0, 0.0]]])
    feats, logit = query(levels, points, torch.zeros(1, 3, dtype=torch.long))
    assert logit.tolist() == [[EMPTY_LOGIT, 10.0, EMPTY_LOGIT]]
    assert feats.shape == (1, 3, 2)


def test_pooling_takes_the_mean_per_voxel():
    coords = torch.tensor([[0.01, 0.01, 0.01], [0.02, 0.03, 0.01], [-0.5, 0.2, 0.9],
                           [0.01, 0.01, 0.01]], dtype=torch.float64)
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]],
                          dtype=torch.float64)
    batch = torch.tensor([0, 0, 0, 1])
    voxels = pool(coords, values, batch, 16, batch_size=2)
    found = {tuple(i): f.tolist() for i, f in zip(voxels.indices.tolist(), voxels.features,
                                                   strict=True)}
    assert found == {(0, 8, 8, 8): [2.0, 3.0], (0, 15, 9, 4): [5.0, 6.0],
                     (1, 8, 8, 8): [7.0, 8.0]}


def test_lifted_features_land_in_the_voxel_of_their_depth():
    from distillprep.student.model.lift import camera_rays, lift, pool_levels
    from distillprep.student.model.space import contract
    from distillprep.student.model.voxels import voxel_of

    k = torch.tensor([[[20.0, 0, 2.0], [0, 20.0, 1.0], [0, 0, 1]]], dtype=torch.float64)
    # an OpenCV camera looking along ego +x (ego: x forward, y left, z up), 1.5 m up
    pose = torch.eye(4, dtype=torch.float64)[None].clone()
    pose[0, :3, :3] = torch.tensor([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=torch.float64)
    pose[0, :3, 3] = torch.tensor([0.0, 0.0, 1.5])
    origins, directions = camera_rays(k, pose, 4, 5)
    assert torch.allclose(directions[0, 7], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    depth = torch.tensor([12.0, 30.0], dtype=torch.float64)
    depths = depth.expand(1, 20, 2)
    weights = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(1, 20, 2)
    features = torch.arange(20, dtype=torch.float64).reshape(1, 20, 1)
    points, values = lift(origins, directions, depths, weights,
                          torch.full((1, 20, 2), 5.0, dtype=torch.float64), features)
    assert torch.allclose(points[14], torch.tensor([12.0, 0.0, 1.5], dtype=torch.float64))
    fine, coarse = pool_levels(points, values, torch.zeros(len(points), dtype=torch.long),
                               SPACE, (512, 128), 1)
    # the centre pixel's point at 12 m holds its feature alone (weight 1) and logit 5
    cell = voxel_of(contract(points[14:15], SPACE), 512)[0]
    row = [i for i, v in enumerate(fine.indices.tolist()) if v[1:] == cell.tolist()]
    assert len(row) == 1 and fine.features[row[0]].tolist() == [7.0, 5.0]
    assert len(coarse.indices) <= len(fine.indices) <= 40


def test_dense_and_sorted_lookups_agree():
    g = torch.Generator().manual_seed(1)
    cells = torch.unique(torch.randint(0, 32, (500, 3), generator=g), dim=0)
    batch = torch.randint(0, 2, (len(cells), 1), generator=g)
    voxels = SparseVoxels(torch.randn(len(cells), 3, dtype=torch.float64),
                          torch.cat([batch, cells], 1).int(), (32, 32, 32), 2)
    dense, sparse = Level.of(voxels), Level.of(voxels, dense=False)
    assert dense.grid is not None and sparse.grid is None
    points = torch.rand(4000, 3, generator=g, dtype=torch.float64) * 2 - 1
    items = torch.randint(0, 2, (4000,), generator=g)
    (row_a, found_a), (row_b, found_b) = dense.lookup(points, items), sparse.lookup(points,
                                                                                    items)
    assert torch.equal(found_a, found_b) and found_a.any() and not found_a.all()
    assert torch.equal(row_a[found_a], row_b[found_b])


@pytest.mark.parametrize("dense", [True, False])
def test_located_samples_composite_as_the_plain_query_does(dense):
    """`locate` + `composite_levels` (the renderer's path) equal `query` + `composite`:
    density logits, composited features, and the gradients of both with respect to the
    voxel features and the weights."""
    from distillprep.student.model.voxels import composite_levels, locate
    from distillprep.teachers.volume.compositing import composite

    g = torch.Generator().manual_seed(2)

    def level(n, count, channels):
        cells = torch.unique(torch.randint(0, n, (count, 3), generator=g), dim=0)
        batch = torch.randint(0, 2, (len(cells), 1), generator=g)
        feats = torch.randn(len(cells), channels, dtype=torch.float64, generator=g)
        return SparseVoxels(feats.requires_grad_(), torch.cat([batch, cells], 1).int(),
                            (n, n, n), 2)

    fine, coarse = level(16, 900, 4), level(8, 200, 3)
    levels = (Level.of(fine, dense), Level.of(coarse, dense))
    coords = torch.rand(50, 20, 3, generator=g, dtype=torch.float64) * 2 - 1
    items = torch.randint(0, 2, (50, 1), generator=g).expand(-1, 20)
    weights = torch.rand(50, 20, generator=g, dtype=torch.float64).requires_grad_()
    feats, logit = query(levels, coords, items)
    reference = composite(weights, feats)
    samples = locate(levels, coords, items)
    fast = composite_levels(levels, samples, weights)
    assert torch.equal(samples.logit, logit)
    assert (samples.logit != EMPTY_LOGIT).any() and (samples.logit == EMPTY_LOGIT).any()
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-12)
    up = torch.randn(fast.shape, generator=g, dtype=torch.float64)
    pick = torch.randn(logit.shape, generator=g, dtype=torch.float64)
    args = (fine.features, coarse.features, weights)
    want = torch.autograd.grad((reference * up).sum() + (logit * pick).sum(), args)
    got = torch.autograd.grad((fast * up).sum() + (samples.logit * pick).sum(), args)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    nothing = SparseVoxels(torch.zeros(0, 4, dtype=torch.float64),
                           torch.zeros(0, 4, dtype=torch.int32), (16, 16, 16), 2)
    bare = (Level.of(nothing, dense), levels[1])
    torch.testing.assert_close(composite_levels(bare, locate(bare, coords, items), weights),
                               composite(weights, query(bare, coords, items)[0]))
