"""The fused C++ hash encoding against the numpy definition and the torch path: values,
table gradients and position gradients, for dense, hashed and mixed grids."""

import contextlib

import numpy as np
import pytest
import torch

from distillprep.teachers.nerf import hash_kernel
from distillprep.teachers.nerf.hash_grid import (
    HashGrid,
    HashGridConfig,
    _hash_encode_reference,
    hash_encode,
)

pytestmark = pytest.mark.skipif(
    not hash_kernel.available(),
    reason=f"the C++ hash kernel did not build: {hash_kernel.load_error()}")


def _config(dim, levels, features, log2, base, top):
    return HashGridConfig(input_dim=dim, levels=levels, features_per_level=features,
                          log2_table_size=log2, base_resolution=base, max_resolution=top)


# (config, which levels are dense): every kind of grid in 3-d and 4-d, F = 1, 2, 4, plus a
# run-time F (3) and F = 8.
CONFIGS = {
    "3d-dense-F1": (_config(3, 3, 1, 12, 2, 8), "dense"),
    "3d-hashed-F2": (_config(3, 3, 2, 10, 16, 64), "hashed"),
    "3d-mixed-F4": (_config(3, 5, 4, 10, 4, 96), "mixed"),
    "4d-dense-F2": (_config(4, 2, 2, 12, 2, 6), "dense"),
    "4d-hashed-F1": (_config(4, 2, 1, 9, 8, 24), "hashed"),
    "4d-mixed-F4": (_config(4, 4, 4, 9, 2, 40), "mixed"),
    "3d-mixed-F3": (_config(3, 4, 3, 10, 4, 64), "mixed"),
    "4d-mixed-F8": (_config(4, 3, 8, 9, 2, 24), "mixed"),
}


def _check_kind(config, kind):
    dense = config.dense_levels()
    assert {"dense": dense.all(), "hashed": not dense.any(),
            "mixed": dense.any() and not dense.all()}[kind]


def _points(config, n, seed):
    """n random points, the first ones on the domain's corners and on cell faces of every
    level (x = (k - 1/2) / s_l puts p = x * s_l + 1/2 on the integer k)."""
    rng = np.random.default_rng(seed)
    d = config.input_dim
    x = rng.uniform(0, 1, (n, d))
    special = [np.zeros(d), np.ones(d), np.full(d, 0.5), np.r_[0.0, np.ones(d - 1)]]
    for s in config.scales():
        k = rng.integers(1, int(s) + 1, d)
        face = (k - 0.5) / s
        special += [face, np.r_[face[:1], x[0, 1:]]]
    special = np.array(special)[:n]
    x[:len(special)] = special
    return x


def _table(config, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    shape = (config.levels, config.table_size, config.features_per_level)
    return rng.normal(size=shape).astype(dtype)


@contextlib.contextmanager
def _one_thread():
    """For the torch path's ~200 small ops per call: on a busy 2-core machine each OpenMP
    barrier can wait a time slice, which made these comparisons 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _encode_with_grads(fn, x, table, config, upstream, need_x=True, need_table=True):
    xt = torch.from_numpy(x).requires_grad_(need_x)
    tt = torch.from_numpy(table).requires_grad_(need_table)
    with _one_thread() if fn is hash_encode else contextlib.nullcontext():
        out = fn(xt, tt, config)
        (out * torch.from_numpy(upstream)).sum().backward()
    return (out.detach().numpy(), xt.grad.numpy() if need_x else None,
            tt.grad.numpy() if need_table else None)


@pytest.mark.parametrize("name", CONFIGS)
def test_values_and_table_gradient_match_the_reference(name):
    config, kind = CONFIGS[name]
    _check_kind(config, kind)
    x = _points(config, 24, seed=0)
    table = _table(config, 1)
    upstream = np.random.default_rng(2).normal(size=(len(x), config.output_dim))
    out, _, grad_table = _encode_with_grads(hash_kernel.hash_encode_cpp, x, table, config,
                                            upstream, need_x=False)
    np.testing.assert_allclose(out, _hash_encode_reference(x, table, config),
                               rtol=1e-12, atol=1e-12)
    # The encoding is linear in the table, so <grad_table, V> = sum(encode(x, V) * upstream)
    # for every direction V: random directions check the whole gradient at once.
    rng = np.random.default_rng(3)
    for _ in range(2):
        direction = rng.normal(size=table.shape)
        want = (_hash_encode_reference(x, direction, config) * upstream).sum()
        assert (grad_table * direction).sum() == pytest.approx(want, rel=1e-10, abs=1e-10)
    # ...and entry by entry it equals the torch path's scatter.
    _, _, torch_grad = _encode_with_grads(hash_encode, x, table, config, upstream,
                                          need_x=False)
    np.testing.assert_allclose(grad_table, torch_grad, rtol=1e-12, atol=1e-12)


def _away_from_faces(x, config, margin=1e-4):
    pos = x[:, None, :] * config.scales()[None, :, None] + 0.5
    frac = pos - np.floor(pos)
    return ((frac > margin) & (frac < 1 - margin)).all(axis=(1, 2))


@pytest.mark.parametrize("name", ["3d-dense-F1", "3d-mixed-F4", "4d-hashed-F1",
                                  "4d-mixed-F4"])
def test_position_gradient_matches_finite_differences_of_the_reference(name):
    config, _ = CONFIGS[name]
    x = np.random.default_rng(4).uniform(0, 1, (40, config.input_dim))
    x = x[_away_from_faces(x, config)][:8]  # off the kinks on cell faces
    table = _table(config, 5)
    upstream = np.random.default_rng(6).normal(size=(len(x), config.output_dim))
    _, grad_x, _ = _encode_with_grads(hash_kernel.hash_encode_cpp, x, table, config,
                                      upstream, need_table=False)
    eps = 1e-6  # the encoding is linear along an axis inside a cell: central differences
    for i in range(config.input_dim):  # are exact up to rounding
        step = np.zeros_like(x)
        step[:, i] = eps
        plus = (_hash_encode_reference(x + step, table, config) * upstream).sum(axis=1)
        minus = (_hash_encode_reference(x - step, table, config) * upstream).sum(axis=1)
        np.testing.assert_allclose(grad_x[:, i], (plus - minus) / (2 * eps),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_the_torch_path_on_larger_inputs(name, dtype):
    config, _ = CONFIGS[name]
    x = _points(config, 3000, seed=7).astype(dtype)
    table = _table(config, 8, dtype)
    upstream = np.random.default_rng(9).normal(size=(len(x), config.output_dim)).astype(dtype)
    got = _encode_with_grads(hash_kernel.hash_encode_cpp, x, table, config, upstream)
    want = _encode_with_grads(hash_encode, x, table, config, upstream)
    # Same entries and weights: equal up to the order of float sums.
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * np.abs(w).max())


def test_points_outside_the_unit_cube_select_the_same_entries():
    config, _ = CONFIGS["3d-mixed-F4"]
    x = np.random.default_rng(10).uniform(-0.5, 1.5, (500, 3)).astype(np.float32)
    table = _table(config, 11, np.float32)
    got = hash_kernel.hash_encode_cpp(torch.from_numpy(x), torch.from_numpy(table), config)
    with _one_thread():
        want = hash_encode(torch.from_numpy(x), torch.from_numpy(table), config)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_table_gradient_does_not_depend_on_the_thread_count():
    config, _ = CONFIGS["3d-mixed-F4"]
    x = _points(config, 2000, seed=12).astype(np.float32)
    table = _table(config, 13, np.float32)
    upstream = np.random.default_rng(14).normal(size=(len(x), config.output_dim))
    upstream = upstream.astype(np.float32)
    threads = torch.get_num_threads()
    try:
        grads = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            grads.append(_encode_with_grads(hash_kernel.hash_encode_cpp, x, table, config,
                                            upstream)[1:])
    finally:
        torch.set_num_threads(threads)
    for grad_x, grad_table in grads[1:]:
        np.testing.assert_array_equal(grad_table, grads[0][1])  # one writer per level
        np.testing.assert_allclose(grad_x, grads[0][0], rtol=1e-5, atol=1e-3)


def test_inference_and_partial_gradients():
    config, _ = CONFIGS["4d-mixed-F4"]
    x = torch.from_numpy(_points(config, 300, seed=15).astype(np.float32))
    table = torch.from_numpy(_table(config, 16, np.float32))
    with torch.no_grad():
        out = hash_kernel.hash_encode_cpp(x, table, config)
    with _one_thread():
        want = hash_encode(x, table, config)
    torch.testing.assert_close(out, want)
    # a non-contiguous x and an x that needs a gradient while the table does not
    xt = torch.from_numpy(np.ascontiguousarray(x.numpy().T)).T.requires_grad_(True)
    assert not xt.is_contiguous()
    hash_kernel.hash_encode_cpp(xt, table, config).square().sum().backward()
    xr = x.clone().requires_grad_(True)
    with _one_thread():
        hash_encode(xr, table, config).square().sum().backward()
    torch.testing.assert_close(xt.grad, xr.grad, rtol=1e-5, atol=1e-5 * xr.grad.abs().max())


def test_rejects_inputs_it_does_not_handle():
    config, _ = CONFIGS["3d-mixed-F4"]
    table = torch.zeros(config.levels, config.table_size, config.features_per_level)
    with pytest.raises(ValueError, match="d in"):
        hash_kernel.hash_encode_cpp(torch.zeros(4, 3, dtype=torch.float64), table, config)
    with pytest.raises(ValueError, match="table must be"):
        hash_kernel.hash_encode_cpp(torch.zeros(4, 3), table[:, :8], config)


def test_hash_grid_backends():
    config = _config(3, 6, 2, 12, 4, 128)
    assert HashGrid(config, backend="auto").backend == "cpp"
    assert HashGrid(config).backend == "cpp"
    assert HashGrid(_config(2, 4, 2, 12, 4, 64)).backend == "torch"  # d = 2: torch only
    with pytest.raises(ValueError, match="auto, tcnn, cpp, torch"):
        HashGrid(config, backend="cuda")
    cpp, ref = HashGrid(config, backend="cpp"), HashGrid(config, backend="torch")
    assert ref.backend == "torch"
    x = torch.rand(1000, 3, generator=torch.Generator().manual_seed(0))
    with _one_thread():
        outs = [grid(x) for grid in (cpp, ref)]
        torch.testing.assert_close(outs[0], outs[1])
        for grid, out in zip((cpp, ref), outs, strict=True):
            out.square().sum().backward()
            assert grid.table.grad.abs().sum() > 0
    torch.testing.assert_close(cpp.table.grad, ref.table.grad)


def test_a_failed_build_crashes_nothing(tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken.cpp"
    broken.write_text("#error deliberately broken\n")
    monkeypatch.setenv("DISTILLPREP_EXT_DIR", str(tmp_path / "ext"))
    for name, value in (("_SOURCE", broken), ("_NAME", "distillprep_hash_kernel_broken"),
                        ("_module", None), ("_error", None), ("_tried", False)):
        monkeypatch.setattr(hash_kernel, name, value)
    assert not hash_kernel.available()
    assert "Error" in hash_kernel.load_error()
    assert hash_kernel.main() == 0
    assert capsys.readouterr().out.startswith("hash_kernel: failed")
    with pytest.raises(RuntimeError, match="not available"):
        hash_kernel.hash_encode_cpp(torch.zeros(1, 3), torch.zeros(1, 2, 1),
                                    _config(3, 1, 1, 1, 2, 2))
