"""The dynamic field: static/dynamic blending against a plain reference (values and
gradients), time dependence learnt by a short fit, gradients into the 4D table."""

import numpy as np
import pytest
import torch

from distillprep.teachers.nerf.dynamic import (
    DynamicField,
    DynamicFieldConfig,
    _blend_reference,
    blend,
    check_compatible,
    normalise_times,
    sparsity_loss,
    time_scale,
)
from distillprep.teachers.nerf.field import FieldConfig, density_activation
from distillprep.teachers.nerf.hash_grid import HashGridConfig
from distillprep.teachers.volume.contraction import SceneBox, contract

BOX = SceneBox((-20.0, -10.0, -2.0), (30.0, 10.0, 6.0))
TINY = DynamicFieldConfig(
    grid=HashGridConfig(input_dim=4, levels=4, features_per_level=2, log2_table_size=12,
                        base_resolution=4, max_resolution=32),
    hidden=16, geometry_features=3, time_cell_s=0.0)  # time as the grid's 4th coordinate


def _blend_inputs(rng, n=64):
    sigma_s = rng.exponential(2.0, n)
    sigma_d = rng.exponential(2.0, n)
    sigma_s[:8] = 0.0  # only dynamic
    sigma_d[8:16] = 0.0  # only static
    sigma_s[16:20] = sigma_d[16:20] = 0.0  # empty space
    return sigma_s, rng.uniform(0, 1, (n, 3)), sigma_d, rng.uniform(0, 1, (n, 3))


def test_blend_values_match_the_reference():
    sigma_s, rgb_s, sigma_d, rgb_d = _blend_inputs(np.random.default_rng(0))
    got = blend(*(torch.from_numpy(a) for a in (sigma_s, rgb_s, sigma_d, rgb_d)))
    want = _blend_reference(sigma_s, rgb_s, sigma_d, rgb_d)
    np.testing.assert_allclose(got[0].numpy(), want[0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(got[1].numpy(), want[1], rtol=1e-12, atol=1e-15)
    # the edge cases, by hand: one field alone gives its own colour; empty space the mean
    np.testing.assert_allclose(got[1][:8].numpy(), rgb_d[:8], rtol=1e-12)
    np.testing.assert_allclose(got[1][8:16].numpy(), rgb_s[8:16], rtol=1e-12)
    np.testing.assert_allclose(got[1][16:20].numpy(), (rgb_s[16:20] + rgb_d[16:20]) / 2)
    assert np.all(got[0][16:20].numpy() == 0.0)


def test_blend_works_on_ray_by_sample_layouts():
    rng = np.random.default_rng(1)
    sigma_s, rgb_s, sigma_d, rgb_d = _blend_inputs(rng, 24)
    shaped = [torch.from_numpy(a).reshape((4, 6) + a.shape[1:])
              for a in (sigma_s, rgb_s, sigma_d, rgb_d)]
    sigma, rgb = blend(*shaped)
    assert sigma.shape == (4, 6) and rgb.shape == (4, 6, 3)
    want = _blend_reference(sigma_s, rgb_s, sigma_d, rgb_d)
    np.testing.assert_allclose(rgb.reshape(-1, 3).numpy(), want[1], rtol=1e-12, atol=1e-15)


def test_blend_gradients_match_finite_differences_of_the_reference():
    rng = np.random.default_rng(2)
    inputs = _blend_inputs(rng, 32)
    g_sigma, g_rgb = rng.normal(size=32), rng.normal(size=(32, 3))

    def objective(*arrays):
        sigma, rgb = _blend_reference(*arrays)
        return float((sigma * g_sigma).sum() + (rgb * g_rgb).sum())

    tensors = [torch.tensor(a, requires_grad=True) for a in inputs]
    sigma, rgb = blend(*tensors)
    ((sigma * torch.from_numpy(g_sigma)).sum() + (rgb * torch.from_numpy(g_rgb)).sum()).backward()
    eps = 1e-6
    for k, (array, tensor) in enumerate(zip(inputs, tensors, strict=True)):
        grad = tensor.grad.numpy()
        assert np.all(np.isfinite(grad))
        numeric = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            if k in (0, 2) and array[index] == 0.0:
                continue  # densities are >= 0: no two-sided difference at 0 (checked below)
            plus, minus = [a.copy() for a in inputs], [a.copy() for a in inputs]
            plus[k][index] += eps
            minus[k][index] -= eps
            numeric[index] = (objective(*plus) - objective(*minus)) / (2 * eps)
        at_zero = (array == 0.0) if k in (0, 2) else np.zeros(array.shape, bool)
        np.testing.assert_allclose(grad[~at_zero], numeric[~at_zero], rtol=1e-6, atol=1e-7)
    # empty space (both densities 0): the densities get gradient only from sigma itself
    np.testing.assert_allclose(tensors[0].grad[16:20].numpy(), g_sigma[16:20], rtol=1e-12)
    np.testing.assert_allclose(tensors[2].grad[16:20].numpy(), g_sigma[16:20], rtol=1e-12)


def test_density_activation_is_a_clamped_exponential():
    np.testing.assert_allclose(density_activation(torch.tensor([1.0, 15.0, 40.0])).numpy(),
                               [1.0, np.exp(14.0), np.exp(14.0)], rtol=1e-6)


def test_density_is_the_grid_then_the_mlp_on_contracted_space_time():
    torch.manual_seed(0)
    field = DynamicField(TINY, BOX)
    with torch.no_grad():
        field.grid.table.uniform_(-1.0, 1.0)  # make the encoding matter
        points = torch.rand(100, 3) * 60 - 25
        times = torch.rand(100)
        sigma, feats = field.density(points, times)
        assert sigma.shape == (100,) and feats.shape == (100, TINY.geometry_features)
        x = torch.cat([contract(points, BOX), times[:, None]], dim=1)
        raw = field.density_mlp(field.grid(x))
        np.testing.assert_allclose(sigma.numpy(), torch.exp(raw[:, 0] - 1.0).numpy(),
                                   rtol=1e-6)
        np.testing.assert_array_equal(feats.numpy(), raw[:, 1:].numpy())
        assert torch.all(sigma > 0)
        # time is an input: the same points at another time encode differently
        other, _ = field.density(points, 1.0 - times)
        assert (other - sigma).abs().max() > 1e-3
    with pytest.raises(ValueError, match="times"):
        field.density(points, times[:50])


def test_fit_learns_a_density_that_changes_with_time():
    torch.manual_seed(0)
    field = DynamicField(TINY, BOX)
    p = torch.tensor([[3.0, 1.0, 0.5]] * 2)
    times = torch.tensor([0.0, 1.0])
    target = torch.log(torch.tensor([20.0, 0.01]))  # a car at p at t = 0, gone at t = 1
    with torch.no_grad():
        start = field.density(p, times)[0]
    np.testing.assert_allclose(start[0].item(), start[1].item(), rtol=1e-3)  # no time yet
    optimizer = torch.optim.Adam(field.parameters(), lr=1e-2, eps=1e-15)
    for _ in range(100):
        loss = ((torch.log(field.density(p, times)[0]) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        sigma = field.density(p, times)[0]
        middle = field.density(p[:1], torch.tensor([0.5]))[0]
    assert sigma[0] > 10.0 and sigma[1] < 0.05, sigma
    assert sigma[1] < middle[0] < sigma[0]  # in between, interpolated along time


def test_gradients_reach_the_4d_table_where_the_point_reads_it():
    torch.manual_seed(0)
    field = DynamicField(TINY, BOX)
    with torch.no_grad():
        field.grid.table.uniform_(-1.0, 1.0)
    point, time = torch.tensor([[2.0, -1.0, 1.0]]), torch.tensor([0.37], requires_grad=True)
    x = torch.cat([contract(point, BOX), time[:, None]], dim=1)
    weights = torch.randn(1, TINY.grid.output_dim)
    encoded = field.grid(x)
    (encoded * weights).sum().backward()
    grad = field.grid.table.grad
    # every level is read at its 2^4 cell corners, nowhere else
    touched = (grad.abs().sum(dim=-1) > 0).sum(dim=1)
    assert torch.all((touched >= 1) & (touched <= 16)), touched
    # the encoding is linear in the table: <d out / d table, table> = out
    np.testing.assert_allclose((grad * field.grid.table).sum().item(),
                               (encoded * weights).sum().item(), rtol=1e-4)
    assert time.grad is not None and time.grad.abs().item() > 0  # time is differentiable
    field.zero_grad()
    sigma, feats = field.density(point, time.detach())
    (sigma.sum() + feats.sum()).backward()
    assert field.grid.table.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in field.parameters())


def test_sparsity_loss_is_the_mean_dynamic_density():
    sigma = torch.tensor([0.0, 1.0, 3.0, 4.0], requires_grad=True)
    loss = sparsity_loss(sigma)
    assert loss.item() == 2.0
    loss.backward()
    np.testing.assert_array_equal(sigma.grad.numpy(), [0.25] * 4)
    assert sparsity_loss(torch.zeros(0)).item() == 0.0
    assert DynamicFieldConfig().sparsity_weight == 0.01


def test_config_defaults_fit_the_static_colour_head_and_need_4d():
    config = DynamicFieldConfig()
    assert config.grid.input_dim == 4
    check_compatible(config, FieldConfig().geometry_features)
    with pytest.raises(ValueError, match="geometry features"):
        check_compatible(TINY, FieldConfig().geometry_features)
    with pytest.raises(ValueError, match="input_dim 4"):
        DynamicField(DynamicFieldConfig(grid=HashGridConfig(input_dim=3)), BOX)


def test_normalise_times():
    np.testing.assert_allclose(normalise_times(np.array([0.0, 1.5, 4.5, 5.0, -1.0]), 4.5),
                               [0.0, 1.5 / 4.5, 1.0, 1.0, 0.0])
    t = normalise_times(torch.tensor([0.0, 2.25, 4.5]), 4.5)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(normalise_times(np.array([0.0, 0.0]), 0.0), [0.0, 0.0])
    with pytest.raises(ValueError, match="duration"):
        normalise_times(np.zeros(2), -1.0)


def test_time_scale_gives_the_finest_level_cells_of_the_configured_seconds():
    config = DynamicFieldConfig(time_cell_s=0.1)  # finest level: 1024 cells
    assert time_scale(config, 20.48) == pytest.approx(20.48 / 102.4)
    assert time_scale(config, 500.0) == 1.0  # never finer than the grid itself
    assert time_scale(DynamicFieldConfig(time_cell_s=0.0), 20.48) == 1.0
    field = DynamicField(config, BOX, duration_s=20.48)
    seen = []
    field.grid.forward = lambda x: seen.append(x) or torch.zeros(len(x), 20)
    field.density(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    # the last capture of the scene sits 204.8 cells (20.48 s / 0.1 s) along the finest level
    assert seen[0][1, 3].item() * 1024 == pytest.approx(204.8, rel=1e-5)
