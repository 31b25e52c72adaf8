"""The tiny-cuda-nn backend: its parameter layout (on any machine, against a numpy
emulation of tiny-cuda-nn's grid lookup written from its kernel), and, where a GPU and
tinycudann are present, its values and gradients against the torch path."""

import numpy as np
import pytest
import torch

from distillprep.teachers.nerf import hash_tcnn
from distillprep.teachers.nerf.hash_grid import HashGrid, HashGridConfig, hash_encode

CONFIGS = {  # dense, hashed and mixed levels in 2-d, 3-d and 4-d
    "3d-mixed-F2": HashGridConfig(input_dim=3, levels=6, features_per_level=2,
                                  log2_table_size=10, base_resolution=4, max_resolution=96),
    "3d-dense-F1": HashGridConfig(input_dim=3, levels=3, features_per_level=1,
                                  log2_table_size=12, base_resolution=2, max_resolution=8),
    "4d-mixed-F4": HashGridConfig(input_dim=4, levels=4, features_per_level=4,
                                  log2_table_size=9, base_resolution=2, max_resolution=40),
    "2d-mixed-F8": HashGridConfig(input_dim=2, levels=5, features_per_level=8,
                                  log2_table_size=8, base_resolution=3, max_resolution=64),
    "3d-default": HashGridConfig(),
}
PRIMES = (1, 2654435761, 805459861, 3674653429)


def _tcnn_lookup(x: np.ndarray, params: np.ndarray, config: HashGridConfig) -> np.ndarray:
    """tiny-cuda-nn's HashGrid forward as its kernel computes it (float32 scales, offset
    table of min(next_multiple(res^d, 8), 2^log2) rows per level, the stride loop that
    falls back to the hash once the stride exceeds the level's rows, uint32 corners, index
    mod the level's rows), on its flat parameter vector."""
    d, f = config.input_dim, config.features_per_level
    log2_scale = np.log2(np.float32(config.per_level_scale))
    offsets, offset = [], 0
    for level in range(config.levels):
        scale = np.exp2(np.float32(level) * log2_scale) * np.float32(config.base_resolution) - 1
        resolution = int(np.ceil(np.float32(scale))) + 1
        rows = min(-(-resolution**d // 8) * 8, 1 << config.log2_table_size)
        offsets.append((offset, rows, np.float32(scale), resolution))
        offset += rows
    assert offset * f == params.size
    out = np.zeros((len(x), config.levels * f))
    for p, point in enumerate(x.astype(np.float32)):
        for level, (start, rows, scale, resolution) in enumerate(offsets):
            pos = point * scale + np.float32(0.5)
            grid = np.floor(pos)
            frac = pos - grid
            grid = grid.astype(np.int64) & 0xFFFFFFFF  # (uint32_t)(int)floor(pos)
            for corner in range(1 << d):
                up = [(corner >> i) & 1 for i in range(d)]
                local = [(int(grid[i]) + up[i]) & 0xFFFFFFFF for i in range(d)]
                stride, index = 1, 0
                for i in range(d):
                    if stride > rows:
                        break
                    index = (index + local[i] * stride) & 0xFFFFFFFF
                    stride *= resolution
                if rows < stride:
                    index = 0
                    for i in range(d):
                        index ^= (local[i] * PRIMES[i]) & 0xFFFFFFFF
                index %= rows
                weight = np.prod([frac[i] if up[i] else 1 - frac[i] for i in range(d)])
                row = params[(start + index) * f:(start + index + 1) * f]
                out[p, level * f:(level + 1) * f] += weight * row
    return out


def _table(config, seed):
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(config.levels, config.table_size, config.features_per_level))
    for level, rows in enumerate(config.level_sizes()):
        table[level, rows:] = 0.0  # rows tiny-cuda-nn does not hold
    return torch.from_numpy(table.astype(np.float32))


def _points(config, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, config.input_dim)).astype(np.float32)
    x[:3] = [np.zeros(config.input_dim), np.ones(config.input_dim),
             np.full(config.input_dim, 0.999)]  # the last cells, where dense levels wrap
    return x


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "3d-default"])
def test_packed_table_read_the_tcnn_way_equals_the_encoding(name):
    config = CONFIGS[name]
    dense = config.dense_levels()
    assert dense.any() or name == "3d-default"
    table = _table(config, 0)
    params = hash_tcnn.pack(table, config)
    assert params.numel() == hash_tcnn.n_params(config)
    x = _points(config, 40, 1)
    want = hash_encode(torch.from_numpy(x), table, config).numpy()
    np.testing.assert_allclose(_tcnn_lookup(x, params.numpy(), config), want,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pack_and_unpack_invert_each_other(name):
    config = CONFIGS[name]
    table = _table(config, 2).requires_grad_()
    params = hash_tcnn.pack(table, config)
    torch.testing.assert_close(hash_tcnn.unpack(params.detach(), config), table.detach())
    params.sum().backward()  # gradients reach exactly the rows tiny-cuda-nn holds
    for level, rows in enumerate(config.level_sizes()):
        assert torch.all(table.grad[level, :rows] == 1)
        assert torch.all(table.grad[level, rows:] == 0)
    with pytest.raises(ValueError, match="values, the config needs"):
        hash_tcnn.unpack(params.detach()[1:], config)


def test_default_grid_layout_and_config():
    config = CONFIGS["3d-default"]
    sizes = config.level_sizes()
    dense = config.dense_levels()
    # 16^3 = 4096 rows at level 0; the dense levels are those with res^3 <= 2^19
    assert sizes[0] == 16**3 and dense[0] and not dense[-1]
    assert np.all(sizes[~dense] == config.table_size)
    cfg = hash_tcnn.encoding_config(config)
    assert cfg["otype"] == "HashGrid" and cfg["n_levels"] == 16
    assert cfg["per_level_scale"] == pytest.approx((2048 / 16) ** (1 / 15))


needs_tcnn = pytest.mark.skipif(
    not hash_tcnn.available(),
    reason=f"tiny-cuda-nn not available here: {hash_tcnn.load_error()}")


@pytest.mark.skipif(hash_tcnn.available(), reason="tiny-cuda-nn is available here")
def test_asking_for_tcnn_without_it_is_a_clear_error():
    with pytest.raises(RuntimeError, match="hash grid backend 'tcnn'"):
        HashGrid(CONFIGS["3d-mixed-F2"], backend="tcnn")
    with pytest.raises(RuntimeError, match="tiny-cuda-nn is not available"):
        hash_tcnn.hash_encode_tcnn(torch.zeros(1, 3), torch.zeros(6, 1024, 2),
                                   CONFIGS["3d-mixed-F2"])


@needs_tcnn
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_tcnn_matches_the_torch_path_in_values_and_gradients(name):
    config = CONFIGS[name]
    device = torch.device("cuda")
    table = _table(config, 3).to(device)
    x = torch.from_numpy(_points(config, 5000, 4)).to(device)
    upstream = torch.randn(len(x), config.output_dim, device=device,
                           generator=torch.Generator(device).manual_seed(5))
    results = []
    for fn in (hash_tcnn.hash_encode_tcnn, hash_encode):
        t = table.clone().requires_grad_()
        xr = x.clone().requires_grad_()
        out = fn(xr, t, config)
        (out * upstream).sum().backward()
        results.append((out.detach(), t.grad, xr.grad))
    (out_t, grad_t, gx_t), (out_r, grad_r, gx_r) = results
    torch.testing.assert_close(out_t, out_r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_t, grad_r, rtol=1e-4, atol=1e-4)
    # x-gradients differ where tcnn's fused x * s + 0.5 lands in another cell than torch's
    close = torch.isclose(gx_t, gx_r, rtol=1e-3, atol=1e-3).all(dim=1)
    assert close.float().mean() > 0.999


@needs_tcnn
def test_auto_picks_tcnn_on_cuda_and_a_fitted_table_reads_the_same_on_cpu():
    config = CONFIGS["3d-mixed-F2"]
    grid = HashGrid(config).cuda()
    x = torch.rand(4096, 3, device="cuda")
    target = torch.sin(6 * x[:, :1])
    head = torch.nn.Linear(config.output_dim, 1).cuda()
    opt = torch.optim.Adam([*grid.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(50):
        loss = ((head(grid(x)) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert grid.backend == "tcnn"
    on_gpu = grid(x).detach().cpu()
    grid.cpu()
    torch.testing.assert_close(grid(x.cpu()).detach(), on_gpu, rtol=1e-4, atol=1e-5)
    assert grid.backend in ("cpp", "torch")
