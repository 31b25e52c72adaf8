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


def _forward_time(fn, x, table, config, repeats=3) -> float:
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x, table, config)
            best = min(best, time.perf_counter() - start)
    return best


def _cuda_step_time(fn, x, table, config, repeats=5) -> float:
    fn(x, table, config).square().sum().backward()  # warm-up (tcnn builds its encoder)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        table.grad = None
        start = time.perf_counter()
        fn(x, table, config).square().sum().backward()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def bench_hash_grid_cuda(config: HashGridConfig) -> None:
    """On a GPU: tiny-cuda-nn against the torch path on the same device (2^20 points)."""
    from distillprep.teachers.nerf import hash_tcnn

    if not torch.cuda.is_available():
        return
    table = (torch.rand(config.levels, config.table_size, 2, device="cuda") * 2e-4
             - 1e-4).requires_grad_()
    x = torch.rand(1 << 20, 3, device="cuda")
    fast = _cuda_step_time(hash_encode, x, table, config)
    print(f"hash_grid.cuda.torch.points_per_s_forward_backward: {len(x) / fast:.0f}")
    if not hash_tcnn.available():
        print(f"hash_grid.tcnn: unavailable ({hash_tcnn.load_error()})")
        return
    tcnn = _cuda_step_time(hash_tcnn.hash_encode_tcnn, x, table, config)
    print(f"hash_grid.tcnn.points_per_s_forward_backward: {len(x) / tcnn:.0f}")
    print(f"hash_grid.tcnn.ratio_to_cuda_torch: {fast / tcnn:.2f}")


def bench_hash_grid() -> None:
    """Forward + backward of the vectorised encoding against the per-level loop, on the
    calibration prototype's grid (16 levels x 2 features, 2^19 entries); then the fused C++
    kernel against both, timed in this process, interleaved with the torch path (best of
    several rounds, so that other load on the machine biases no side)."""
    from distillprep.teachers.nerf import hash_kernel

    torch.manual_seed(0)
    config = HashGridConfig(levels=16, features_per_level=2, log2_table_size=19,
                            base_resolution=16, max_resolution=2048)
    table = (torch.rand(config.levels, config.table_size, 2) * 2e-4 - 1e-4).requires_grad_()
    x = torch.rand(1 << 16, 3)
    fast = _step_time(hash_encode, x, table, config)
    naive = _step_time(hash_encode_naive, x, table, config)
    print(f"hash_grid.points_per_s_forward_backward: {len(x) / fast:.0f}")
    print(f"hash_grid.ratio_to_per_level_loop: {naive / fast:.2f}")
    bench_hash_grid_cuda(config)
    if not hash_kernel.available():
        print(f"hash_grid.cpp: unavailable ({hash_kernel.load_error()})")
        return
    cpp = cpp_forward = torch_forward = float("inf")
    for _ in range(3):
        cpp = min(cpp, _step_time(hash_kernel.hash_encode_cpp, x, table, config))
        fast = min(fast, _step_time(hash_encode, x, table, config))
        cpp_forward = min(cpp_forward, _forward_time(hash_kernel.hash_encode_cpp, x, table,
                                                     config))
        torch_forward = min(torch_forward, _forward_time(hash_encode, x, table, config))
    print(f"hash_grid.cpp.points_per_s_forward_backward: {len(x) / cpp:.0f}")
    print(f"hash_grid.cpp.ratio_to_vectorised_torch: {fast / cpp:.2f}")
    print(f"hash_grid.cpp.ratio_to_per_level_loop: {naive / cpp:.2f}")
    inference = torch_forward / cpp_forward
    print(f"hash_grid.cpp.forward_only_ratio_to_vectorised_torch: {inference:.2f}")


if __name__ == "__main__":
    bench_hash_grid()
