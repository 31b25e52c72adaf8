"""The occupancy grid: carving along LiDAR and sky rays, pruning by density, candidates."""

import numpy as np
import torch

from distillprep.teachers.nerf.contraction import SceneBox
from distillprep.teachers.nerf.sampler import OccupancyGrid, SamplerConfig, candidate_edges

BOX = SceneBox((-20.0, -20.0, -5.0), (20.0, 20.0, 15.0))


def test_pruning_keeps_exactly_the_cells_of_a_solid_ball():
    grid = OccupancyGrid(SamplerConfig(grid_resolution=32, prune_density=1.0), BOX)
    centre, radius = torch.tensor([3.0, -2.0, 4.0]), 4.0

    def ball(points):  # density 100 inside, 0 outside
        return torch.where((points - centre).norm(dim=-1) < radius, 100.0, 0.0)

    grid.prune(ball, seed=0)
    occupied = grid.occupied.view(-1)
    # every cell around points well inside the ball is kept, none far outside
    inside = torch.tensor([[3.0 + dx, -2.0 + dy, 4.0 + dz] for dx in (-1, 0, 1)
                           for dy in (-1, 0, 1) for dz in (-1, 0, 1)])
    assert occupied[grid.cells(inside)].all()
    far = torch.tensor([[-15.0, 15.0, 10.0], [15.0, 15.0, -4.0], [500.0, 0.0, 0.0]])
    assert not occupied[grid.cells(far)].any()
    assert 27 <= occupied.sum() < 0.01 * 32**3


def test_sky_rays_carve_to_the_far_shell_and_returns_stay_occupied():
    grid = OccupancyGrid(SamplerConfig(grid_resolution=32), BOX)
    origins = np.zeros((1, 3))
    up = np.array([[0.0, 0.0, 1.0]])
    grid.carve_to_far(origins, up)
    on_ray = torch.tensor([[0.0, 0.0, z] for z in (2.0, 10.0, 40.0, 300.0)])
    assert not grid.occupied.view(-1)[grid.cells(on_ray)].any()
    grid.mark_occupied(np.array([[0.0, 0.0, 10.0]]))
    assert grid.occupied.view(-1)[grid.cells(on_ray[1:2])].all()
    off_ray = torch.tensor([[10.0, 10.0, 10.0]])
    assert grid.occupied.view(-1)[grid.cells(off_ray)].all()


def test_log_candidates_have_a_constant_ratio():
    edges = candidate_edges(SamplerConfig(spacing="log", candidates=64, near=0.5, far=500.0),
                            box_radius=30.0)
    ratios = edges[1:] / edges[:-1]
    np.testing.assert_allclose(ratios, (1000.0) ** (1 / 64), rtol=1e-9)
    assert edges[0] == 0.5 and np.isclose(edges[-1], 500.0)


def _coarse():
    from distillprep.teachers.nerf.sampler import RaySamples

    t0 = torch.tensor([[0.0, 1.0, 5.0, 9.0]])
    t1 = torch.tensor([[1.0, 2.0, 6.0, 9.5]])
    return RaySamples(t0, t1, torch.tensor([[True, True, True, False]]))


def test_resampling_tiles_the_interval_that_holds_the_weight():
    from distillprep.teachers.nerf.sampler import resample

    fine = resample(_coarse(), torch.tensor([[0.0, 1.0, 0.0, 5.0]]), 8, uniform_mix=0.0)
    np.testing.assert_allclose(fine.t_start[0].numpy(), 1.0 + np.arange(8) / 8, atol=1e-6)
    np.testing.assert_allclose(fine.t_end[0].numpy(), 1.0 + np.arange(1, 9) / 8, atol=1e-6)
    assert fine.valid.all()  # the padding's weight (5.0) is ignored


def test_resampling_never_bridges_a_gap_and_mixes_in_uniform_samples():
    from distillprep.teachers.nerf.sampler import resample

    coarse = _coarse()
    fine = resample(coarse, torch.tensor([[0.2, 0.0, 0.8, 0.0]]), 20, uniform_mix=0.3)
    starts, ends = fine.t_start[0].numpy(), fine.t_end[0].numpy()
    assert np.all(np.diff(starts) > 0) and np.all(ends > starts)
    for a, b in zip(starts, ends, strict=True):  # each inside one coarse interval
        assert (0 <= a and b <= 1) or (1 <= a and b <= 2) or (5 <= a and b <= 6), (a, b)
    counts = [int(np.sum((starts >= lo) & (ends <= hi))) for lo, hi in ((0, 1), (1, 2), (5, 6))]
    # p = 0.7 * w + 0.3 * len / 3: 0.24, 0.1, 0.66 of 20 samples
    assert counts == [5, 2, 13], counts


def test_rays_without_occupied_candidates_get_no_samples():
    from distillprep.teachers.nerf.sampler import RaySamples, resample

    empty = RaySamples(torch.zeros(1, 3), torch.ones(1, 3), torch.zeros(1, 3, dtype=torch.bool))
    assert not resample(empty, torch.zeros(1, 3), 4, 0.1).valid.any()
