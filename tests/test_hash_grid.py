"""The torch hash encoding against its plain numpy definition: values and gradients."""

import numpy as np
import pytest
import torch

from distillprep.teachers.nerf.hash_grid import (
    HashGrid,
    HashGridConfig,
    _hash_encode_reference,
    hash_encode,
    hash_encode_naive,
)

# Small tables so that fine levels hash and coarse levels stay dense: both paths tested.
CONFIGS = [
    HashGridConfig(input_dim=3, levels=6, features_per_level=2, log2_table_size=10,
                   base_resolution=4, max_resolution=96),
    HashGridConfig(input_dim=4, levels=4, features_per_level=3, log2_table_size=9,
                   base_resolution=2, max_resolution=40),
]


def _inputs(config, n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, config.input_dim))
    x[:4] = [[0.0] * config.input_dim, [1.0] * config.input_dim,
             [0.5] * config.input_dim, [0.999999] * config.input_dim]
    table = rng.normal(size=(config.levels, config.table_size, config.features_per_level))
    return x, table


@pytest.mark.parametrize("config", CONFIGS, ids=["3d", "4d"])
def test_values_match_the_reference(config):
    assert config.dense_levels().any() and not config.dense_levels().all()
    x, table = _inputs(config)
    want = _hash_encode_reference(x, table, config)
    got = hash_encode(torch.from_numpy(x), torch.from_numpy(table), config).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    naive = hash_encode_naive(torch.from_numpy(x), torch.from_numpy(table), config).numpy()
    np.testing.assert_allclose(naive, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("config", CONFIGS, ids=["3d", "4d"])
def test_table_gradient_matches_the_reference(config):
    x, table = _inputs(config, n=16)
    rng = np.random.default_rng(1)
    upstream = rng.normal(size=(len(x), config.output_dim))
    t = torch.from_numpy(table).requires_grad_(True)
    (hash_encode(torch.from_numpy(x), t, config) * torch.from_numpy(upstream)).sum().backward()
    # The encoding is linear in the table: the reference gradient is the encoding of the
    # upstream gradient against unit tables, entry by entry; check a random subset.
    flat = t.grad.numpy()
    for _ in range(40):
        level = rng.integers(config.levels)
        entry = rng.integers(config.table_size)
        feature = rng.integers(config.features_per_level)
        unit = np.zeros_like(table)
        unit[level, entry, feature] = 1.0
        want = (_hash_encode_reference(x, unit, config) * upstream).sum()
        assert flat[level, entry, feature] == pytest.approx(want, abs=1e-12)
    # ...and the whole gradient equals torch's own autograd of the naive version.
    t2 = torch.from_numpy(table).requires_grad_(True)
    (hash_encode_naive(torch.from_numpy(x), t2, config) * torch.from_numpy(upstream)).sum(
    ).backward()
    np.testing.assert_allclose(flat, t2.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("config", CONFIGS, ids=["3d", "4d"])
def test_position_gradient_matches_finite_differences_of_the_reference(config):
    x, table = _inputs(config, n=16, seed=3)
    x = x[4:]  # random points only: the encoding has kinks on cell faces (e.g. at 0.5)
    rng = np.random.default_rng(2)
    upstream = rng.normal(size=(len(x), config.output_dim))
    xt = torch.from_numpy(x).requires_grad_(True)
    (hash_encode(xt, torch.from_numpy(table), config) * torch.from_numpy(upstream)).sum(
    ).backward()
    eps = 1e-7
    for i in range(config.input_dim):
        step = np.zeros_like(x)
        step[:, i] = eps
        plus = (_hash_encode_reference(x + step, table, config) * upstream).sum(axis=1)
        minus = (_hash_encode_reference(x - step, table, config) * upstream).sum(axis=1)
        np.testing.assert_allclose(xt.grad.numpy()[:, i], (plus - minus) / (2 * eps),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_module_trains_a_target_function(backend):
    config = HashGridConfig(levels=8, features_per_level=2, log2_table_size=12,
                            base_resolution=4, max_resolution=128)
    grid = HashGrid(config, seed=0, backend=backend)
    head = torch.nn.Linear(config.output_dim, 1)
    opt = torch.optim.Adam(list(grid.parameters()) + list(head.parameters()), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4096, 3, generator=gen)
    target = torch.sin(6 * x[:, :1]) * torch.cos(4 * x[:, 1:2]) + x[:, 2:3]
    first = None
    for _ in range(150):
        loss = ((head(grid(x)) - target) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.02 * first
    assert grid.backend == backend
