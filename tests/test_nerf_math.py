"""Scene contraction and volume rendering against plain references and analytic truth."""

import numpy as np
import pytest
import torch

from distillprep.teachers.volume.compositing import (
    _distortion_loss_reference,
    _render_weights_reference,
    composite,
    distortion_loss,
    expected_depth,
    render_weights,
)
from distillprep.teachers.volume.contraction import (
    SceneBox,
    _contract_reference,
    contract,
    uncontract,
)

BOX = SceneBox((-40.0, -30.0, -2.0), (60.0, 30.0, 10.0))


def test_contraction_matches_reference_and_stays_in_the_unit_cube():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(-50, 70, (500, 3)),
                          rng.normal(size=(500, 3)) * 10.0 ** rng.uniform(1, 6, (500, 1))])
    got = contract(torch.from_numpy(pts), BOX).numpy()
    want = np.stack([_contract_reference(p, BOX) for p in pts])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert got.min() >= 0.0 and got.max() <= 1.0


def test_contraction_is_affine_inside_and_continuous_at_the_box_face():
    inside = torch.tensor([[-40.0, -30.0, -2.0], [60.0, 30.0, 10.0], [10.0, 0.0, 4.0]],
                          dtype=torch.float64)
    np.testing.assert_allclose(contract(inside, BOX).numpy(),
                               [[0.25] * 3, [0.75] * 3, [0.5] * 3], atol=1e-12)
    face = torch.tensor([[60.0, 0.0, 4.0]], dtype=torch.float64)
    beyond = face + torch.tensor([[1e-9, 0.0, 0.0]], dtype=torch.float64)
    np.testing.assert_allclose(contract(beyond, BOX).numpy(), contract(face, BOX).numpy(),
                               atol=1e-9)


def test_contraction_is_monotone_along_rays_from_the_centre():
    t = torch.logspace(-1, 5, 400, dtype=torch.float64)[:, None]
    direction = torch.tensor([[0.6, -0.3, 0.2]], dtype=torch.float64)
    centre = torch.tensor([[10.0, 0.0, 4.0]], dtype=torch.float64)
    c = contract(centre + t * direction, BOX)
    dist = (c - 0.5).abs().amax(dim=-1)
    assert torch.all(torch.diff(dist) > 0) and dist[-1] < 0.5


def test_scene_box_from_lidar_uses_percentiles():
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 10, (10000, 3))
    pts[:50] = 1e6  # far outliers (0.5 %) do not stretch the box
    box = SceneBox.from_lidar(pts)
    assert all(0.0 <= lo < 0.5 and 9.5 < hi <= 10.0 for lo, hi in zip(box.lower, box.upper,
                                                                    strict=True))
    with pytest.raises(ValueError, match="without LiDAR"):
        SceneBox.from_lidar(np.zeros((0, 3)))


def test_uncontract_inverts_contract():
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.uniform(-50, 70, (500, 3)),
                          rng.normal(size=(500, 3)) * 10.0 ** rng.uniform(1, 4, (500, 1))])
    back = uncontract(contract(torch.from_numpy(pts), BOX), BOX).numpy()
    np.testing.assert_allclose(back, pts, rtol=1e-9, atol=1e-9)


def test_scene_box_is_raised_to_a_minimum_height():
    flat = np.array([[0.0, 0.0, 0.0], [80.0, 40.0, 4.0]])
    box = SceneBox.from_lidar(flat, percentile=0.0)
    assert box.upper[2] == pytest.approx(20.0)  # 0.25 x the longest side, 80 m
    tall = SceneBox.from_lidar(flat, percentile=0.0, min_height_ratio=0.01)
    assert tall.upper[2] == pytest.approx(4.0)


def test_weights_match_the_reference():
    rng = np.random.default_rng(2)
    edges = np.sort(rng.uniform(0.1, 80, (32, 65)), axis=1)
    sigma = rng.exponential(0.3, (32, 64))
    got = render_weights(torch.from_numpy(sigma), torch.from_numpy(edges[:, :-1]),
                         torch.from_numpy(edges[:, 1:])).numpy()
    want = _render_weights_reference(sigma, edges[:, :-1], edges[:, 1:])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


def test_a_wall_at_known_depth_renders_that_depth():
    """Empty space, then a dense wall from 12.5 m on: depth 12.5 m, opacity 1, the wall's
    colour; with the wall gone, the sky colour and opacity 0."""
    edges = torch.linspace(0.1, 40.0, 40001, dtype=torch.float64)[None]
    start, end = edges[:, :-1], edges[:, 1:]
    sigma = torch.where(start >= 12.5, 1e4, 0.0)
    w = render_weights(sigma, start, end)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-9)
    assert expected_depth(w, (start + end) / 2).item() == pytest.approx(12.5, abs=2e-3)
    wall = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64).expand(1, 40000, 3)
    sky = torch.tensor([[0.5, 0.7, 0.9]], dtype=torch.float64)
    np.testing.assert_allclose(composite(w, wall, sky).numpy(), [[0.2, 0.4, 0.6]], atol=1e-9)
    empty = render_weights(torch.zeros_like(sigma), start, end)
    np.testing.assert_allclose(composite(empty, wall, sky).numpy(), sky.numpy())


def test_weights_gradient_matches_autograd_of_the_product_form():
    rng = np.random.default_rng(3)
    edges = torch.from_numpy(np.sort(rng.uniform(0.1, 20, (4, 17)), axis=1))
    sigma = torch.from_numpy(rng.exponential(0.5, (4, 16))).requires_grad_(True)
    render_weights(sigma, edges[:, :-1], edges[:, 1:]).pow(2).sum().backward()
    fast = sigma.grad.clone()
    sigma.grad = None
    alpha = 1 - torch.exp(-sigma * (edges[:, 1:] - edges[:, :-1]))
    trans = torch.cumprod(torch.cat([torch.ones(4, 1, dtype=alpha.dtype), 1 - alpha[:, :-1]],
                                    dim=1), dim=1)
    (trans * alpha).pow(2).sum().backward()
    np.testing.assert_allclose(fast.numpy(), sigma.grad.numpy(), rtol=1e-9, atol=1e-12)


def _sorted_intervals(rng, rays, samples):
    edges = np.sort(rng.uniform(0.5, 300.0, (rays, samples + 1)), axis=1)
    return edges[:, :-1], edges[:, 1:]


def test_distortion_loss_matches_the_pairwise_sum_in_values_and_gradients():
    rng = np.random.default_rng(4)
    t0, t1 = _sorted_intervals(rng, 6, 9)
    w = rng.uniform(0, 0.3, (6, 9))
    w[:, -2:] = 0.0  # empty slots, as the occupancy sampler leaves them
    weights = torch.tensor(w, requires_grad=True)
    got = distortion_loss(weights, torch.from_numpy(t0), torch.from_numpy(t1), 20.0)
    np.testing.assert_allclose(got.detach().numpy(),
                               _distortion_loss_reference(w, t0, t1, 20.0), rtol=1e-10)
    got.sum().backward()
    numeric = np.zeros_like(w)
    for r, i in np.ndindex(*w.shape):
        bumped = [w.copy(), w.copy()]
        bumped[0][r, i] += 1e-6
        bumped[1][r, i] -= 1e-6
        numeric[r, i] = (_distortion_loss_reference(bumped[0], t0, t1, 20.0)[r]
                         - _distortion_loss_reference(bumped[1], t0, t1, 20.0)[r]) / 2e-6
    np.testing.assert_allclose(weights.grad.numpy(), numeric, rtol=1e-5, atol=1e-9)


def test_distortion_loss_prefers_one_surface_to_a_floater():
    t0 = torch.tensor([[5.0, 10.0, 30.0]])
    t1 = t0 + 0.5
    surface = torch.tensor([[0.0, 0.0, 1.0]])
    floater = torch.tensor([[0.3, 0.0, 0.7]])
    assert distortion_loss(floater, t0, t1, 20.0) > 10 * distortion_loss(surface, t0, t1, 20.0)


def test_median_depth_matches_the_reference_and_sits_on_a_surface():
    from distillprep.teachers.volume.compositing import _median_depth_reference, median_depth

    rng = np.random.default_rng(5)
    weights = rng.random((50, 12)) * (rng.random((50, 12)) < 0.6)
    weights[:5] = 0.0  # rays that see nothing: 0
    t = np.sort(rng.uniform(1, 80, (50, 12)), axis=1)
    got = median_depth(torch.tensor(weights), torch.tensor(t)).numpy()
    np.testing.assert_array_equal(got, _median_depth_reference(weights, t))
    assert np.all(got[:5] == 0)
    # a faint pole (0.3) before a wall (0.7): expected depth floats between, median on the wall
    w = torch.tensor([[0.0, 0.3, 0.0, 0.0, 0.7, 0.0]])
    ts = torch.tensor([[2.0, 4.0, 6.0, 8.0, 10.0, 12.0]])
    assert median_depth(w, ts).item() == 10.0
    assert expected_depth(w, ts).item() == pytest.approx(8.2)
