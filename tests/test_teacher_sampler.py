"""The occupancy grid: carving along LiDAR and sky rays, pruning by density, candidates."""

import numpy as np
import pytest
import torch

from distillprep.teachers.nerf.sampler import (
    OccupancyGrid,
    RaySamples,
    RaySampling,
    SamplerConfig,
    _resample_reference,
    candidate_edges,
    resample,
)
from distillprep.teachers.volume.contraction import SceneBox

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


def test_pruning_keeps_the_cells_rays_used_since_the_last_pruning():
    """A 20 cm pole in 1.25 m cells: one random point per cell misses it most of the time;
    the cells that camera rays put weight in stay, once."""
    grid = OccupancyGrid(SamplerConfig(grid_resolution=32, prune_density=1.0), BOX)
    centre = torch.tensor([3.0, -2.0])

    def pole(points):  # density 100 within 10 cm of a vertical axis
        return torch.where((points[:, :2] - centre).norm(dim=-1) < 0.1, 100.0, 0.0)

    on_pole = torch.tensor([[3.05, -2.0, z] for z in np.linspace(-4.0, 14.0, 40)])
    grid.use(on_pole)
    grid.prune(pole, seed=0)
    occupied = grid.occupied.view(-1)
    assert occupied[grid.cells(on_pole)].all()
    assert occupied.sum() == len(torch.unique(grid.cells(on_pole)))
    grid.prune(pole, seed=1)  # unused since: back to the random point's verdict
    assert occupied[grid.cells(on_pole)].float().mean() < 0.5


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
    edges = candidate_edges(SamplerConfig(spacing="log", near=0.5, far=500.0),
                            box_radius=30.0, candidates=64)
    ratios = edges[1:] / edges[:-1]
    np.testing.assert_allclose(ratios, (1000.0) ** (1 / 64), rtol=1e-9)
    assert edges[0] == 0.5 and np.isclose(edges[-1], 500.0)


def test_jittered_samples_sit_at_their_offset_and_are_culled_there():
    """A sample's point is `offset` of the way along its interval, and whether it is kept
    depends on the cell that point falls in."""
    grid = OccupancyGrid(SamplerConfig(grid_resolution=32), BOX)
    origins, directions = torch.zeros(3, 3), torch.tensor([[1.0, 0.0, 0.0]] * 3)
    sampling = RaySampling(candidates=64, max_samples=64)
    offsets = torch.tensor([0.0, 0.5, 0.9])
    samples = grid.sample(origins, directions, sampling, offsets)
    share = (samples.t_point - samples.t_start) / (samples.t_end - samples.t_start)
    np.testing.assert_allclose(share.numpy(), offsets[:, None].expand(-1, 64).numpy(),
                               atol=1e-5)
    middle = grid.sample(origins[:1], directions[:1], sampling)
    torch.testing.assert_close(middle.t_point, samples.t_point[1:2])
    # free every cell but the one holding x = 10.2 m: only the sample whose point is there
    grid.occupied[:] = False
    grid.mark_occupied(np.array([[10.2, 0.0, 0.0]]))
    for offset in (0.0, 0.5, 0.9):
        one = grid.sample(origins[:1], directions[:1], sampling, torch.tensor([offset]))
        point = one.t_point[one.valid]
        assert len(point) >= 1
        cells = grid.cells(torch.stack([point, torch.zeros_like(point),
                                        torch.zeros_like(point)], dim=-1))
        assert (cells == grid.cells(torch.tensor([10.2, 0.0, 0.0]))).all()


def _coarse():
    t0 = torch.tensor([[0.0, 1.0, 5.0, 9.0]])
    t1 = torch.tensor([[1.0, 2.0, 6.0, 9.5]])
    return RaySamples(t0, t1, torch.tensor([[True, True, True, False]]))


def test_resampling_tiles_the_interval_that_holds_the_weight_and_the_one_before():
    """Weight in [5, 6] only: it and the interval before it, [1, 2] (across the gap),
    share the fine intervals; [0, 1], two slots away, gets none."""
    fine = resample(_coarse(), torch.tensor([[0.0, 0.0, 1.0, 5.0]]), 8, uniform_mix=0.0)
    centres = ((fine.t_start + fine.t_end) / 2)[0].numpy()
    np.testing.assert_allclose(centres, np.r_[1.0 + (np.arange(4) + 0.5) / 4,
                                              5.0 + (np.arange(4) + 0.5) / 4], atol=1e-6)
    np.testing.assert_allclose((fine.t_end - fine.t_start)[0].numpy(), 0.25, atol=1e-6)
    assert fine.valid.all()  # the padding's weight (5.0) is ignored


def test_resampling_covers_the_occupied_length_and_skips_the_gaps():
    """Fine intervals, laid end to end, are exactly the occupied metres (3 of them here);
    each is centred in occupied space, and the weight decides how finely each coarse
    interval is cut."""
    fine = resample(_coarse(), torch.tensor([[0.2, 0.0, 0.8, 0.0]]), 20, uniform_mix=0.3)
    starts, ends = fine.t_start[0].numpy(), fine.t_end[0].numpy()
    assert np.sum(ends - starts) == pytest.approx(3.0, abs=1e-5)
    centres = (starts + ends) / 2
    assert np.all(np.diff(centres) > 0)
    assert np.all(((centres >= 0) & (centres <= 2)) | ((centres >= 5) & (centres <= 6)))
    # w'_k = max(w_k, w_k+1) = 0.2, 0.8, 0.8; p = 0.7 w' / 1.8 + 0.3 len / 3: metres per
    # fine interval 1 / (20 p)
    p = 0.7 * 0.8 / 1.8 + 0.1
    widths = (ends - starts)[(centres > 5) & (centres < 6)]
    widths = widths[1:-1]  # the two at the edges of [5, 6] may be shared with a neighbour
    np.testing.assert_allclose(widths, 1 / (20 * p), rtol=1e-4)


def test_resampling_matches_the_reference_on_random_rays():
    rng = np.random.default_rng(4)
    for _ in range(20):
        k = int(rng.integers(1, 9))
        gaps = rng.uniform(0.0, 2.0, k) * (rng.random(k) < 0.5)
        lengths = rng.uniform(0.05, 3.0, k)
        t_start = np.cumsum(gaps + np.r_[0.0, lengths[:-1]]) + 0.5
        t_end = t_start + lengths
        weights = rng.random(k) * (rng.random(k) < 0.7)
        if weights.sum() == 0:
            weights[0] = 1.0
        mix = float(rng.choice([0.0, 0.05, 0.5]))
        count = int(rng.integers(2, 17))
        pad = 3  # padding slots after the valid ones, with garbage values
        samples = RaySamples(
            torch.tensor(np.r_[t_start, np.full(pad, 99.0)])[None],
            torch.tensor(np.r_[t_end, np.full(pad, 100.0)])[None],
            torch.tensor([True] * k + [False] * pad)[None])
        fine = resample(samples, torch.tensor(np.r_[weights, np.ones(pad)])[None], count, mix)
        starts, ends = _resample_reference(t_start, t_end, weights, count, mix)
        np.testing.assert_allclose(fine.t_start[0].numpy(), starts, atol=1e-9)
        np.testing.assert_allclose(fine.t_end[0].numpy(), ends, atol=1e-9)


def test_rays_without_occupied_candidates_get_no_samples():
    empty = RaySamples(torch.zeros(1, 3), torch.ones(1, 3), torch.zeros(1, 3, dtype=torch.bool))
    assert not resample(empty, torch.zeros(1, 3), 4, 0.1).valid.any()
