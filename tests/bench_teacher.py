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


if __name__ == "__main__":
    bench_hash_grid()


def bench_teacher_fit(minutes: float) -> None:
    """Fit a static teacher on a synthetic scene (320x180, 6 cameras, 10 keyframes, two
    held out) for `minutes` of wall time and print its figures against exact ground
    truth, beside the LiDAR-only baseline, with a table of how they moved."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from distillprep.scenes.nuscenes import read_nuscenes
    from distillprep.scenes.synthetic.generate import SynthConfig, generate
    from distillprep.scenes.synthetic.truth import load_ground_truth_depth
    from distillprep.teachers.nerf.evaluate import depth_metrics, lidar_nearest_fill, psnr
    from distillprep.teachers.nerf.fit import FitConfig, fit
    from distillprep.teachers.nerf.rays import holdout_frames
    from distillprep.teachers.nerf.render import render_image

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "nuscenes", "nuscenes",
                        SynthConfig(scenes=1, frames=10, width=320, height=180, seed=3))
        scene = read_nuscenes(root).scenes[0]
        train, held = holdout_frames(len(scene.frames), 2)

        def score(teacher, cameras):
            rows = {"psnr": [], "teacher": [], "teacher_no_lidar": [], "lidar": [],
                    "lidar_no_lidar": []}
            for f in held:
                points = scene.frames[f].lidar_points().points
                for cam in cameras:
                    sample = scene.frames[f].cameras[cam]
                    out = render_image(teacher, scene, f, cam)
                    gt = load_ground_truth_depth(root, sample.source_file)
                    base, has_return = lidar_nearest_fill(sample, points)
                    solid = gt > 0
                    rows["psnr"].append(psnr(out["rgb"], sample.load_image() / 255.0))
                    rows["teacher"].append(depth_metrics(out["depth"], gt, solid))
                    rows["teacher_no_lidar"].append(
                        depth_metrics(out["depth"], gt, solid & ~has_return))
                    rows["lidar"].append(depth_metrics(base, gt, solid))
                    rows["lidar_no_lidar"].append(depth_metrics(base, gt, solid & ~has_return))
            return {"psnr": float(np.mean(rows["psnr"])),
                    **{f"{k}.{m}": float(np.mean([r[m] for r in v]))
                       for k, v in rows.items() if k != "psnr"
                       for m in ("abs_rel", "delta_1_25")}}

        table, eval_seconds, marks = [], [0.0], [minutes * 60 * (i + 1) / 4 for i in range(4)]

        def callback(step, record, teacher):
            fit_seconds = record["seconds"]  # steps only, evaluation excluded
            if marks and fit_seconds >= marks[0]:
                marks.pop(0)
                start = time.perf_counter()
                figures = score(teacher, ["CAM_FRONT"])
                eval_seconds[0] += time.perf_counter() - start
                table.append((step, fit_seconds, figures))
            return not marks

        config = FitConfig(steps=10**9, camera_rays=4096, lidar_rays=1024, log_every=5)
        start = time.perf_counter()
        teacher, cams = fit(scene, train, config, callback=callback)
        wall = time.perf_counter() - start - eval_seconds[0]
        steps = teacher.history[-1]["step"]
        print(f"teacher.fit_minutes: {wall / 60:.1f}")
        print(f"teacher.steps: {steps}")
        print(f"teacher.camera_rays_per_s: {steps * config.camera_rays / wall:.0f}")
        print("teacher.progress (step, minutes, held-out PSNR front cameras, depth AbsRel):")
        for step, seconds, figures in table:
            print(f"  {step:6d} {seconds / 60:6.1f} {figures['psnr']:7.2f} "
                  f"{figures['teacher.abs_rel']:7.3f}")
        final = score(teacher, list(scene.camera_names))
        print(f"teacher.heldout_psnr_db: {final['psnr']:.2f}")
        for who in ("teacher", "lidar"):
            for where, key in (("non_sky", who), ("no_lidar_return", f"{who}_no_lidar")):
                print(f"{who}.depth_abs_rel.{where}: {final[key + '.abs_rel']:.3f}")
                print(f"{who}.depth_delta_1_25.{where}: {final[key + '.delta_1_25']:.3f}")
