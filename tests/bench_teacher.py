"""Teacher figures for `make bench` (so far: the hash encoding's throughput)."""

from __future__ import annotations

import time

import torch

from distillprep.teachers.nerf.hash_grid import HashGridConfig, hash_encode, hash_encode_naive


def _step_time(fn, x, table, config, repeats=3) -> float:
    best = float("inf")
    for _ in range(repeats):
        table.grad = None
        start = time.perf_counter()
        fn(x, table, config).square().sum().backward()
        best = min(best, time.perf_counter() - start)
    return best


def bench_hash_grid() -> None:
    """Forward + backward of the vectorised encoding against the per-level loop, on the
    calibration prototype's grid (16 levels x 2 features, 2^19 entries)."""
    torch.manual_seed(0)
    config = HashGridConfig(levels=16, features_per_level=2, log2_table_size=19,
                            base_resolution=16, max_resolution=2048)
    table = (torch.rand(config.levels, config.table_size, 2) * 2e-4 - 1e-4).requires_grad_()
    x = torch.rand(1 << 16, 3)
    fast = _step_time(hash_encode, x, table, config)
    naive = _step_time(hash_encode_naive, x, table, config)
    print(f"hash_grid.points_per_s_forward_backward: {len(x) / fast:.0f}")
    print(f"hash_grid.ratio_to_per_level_loop: {naive / fast:.2f}")


if __name__ == "__main__":
    bench_hash_grid()
