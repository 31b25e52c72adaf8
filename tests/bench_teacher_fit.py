"""`make bench`: fit a teacher on a synthetic nuScenes scene (320x180, 6 cameras, 10
keyframes, moving vehicles, two keyframes held out) for a set time and print its figures
against the generator's exact ground truth, beside a LiDAR-only baseline, with a table of
how they moved over the fit and a profile of where a step's time goes.

The scene has nuScenes' camera sweeps (5 captures between 2 Hz keyframes, as its 12 Hz
cameras give) and the teacher fits every frame but the two held-out keyframes, as EmerNeRF
does on nuScenes.

DISTILLPREP_BENCH_FIT_MINUTES sets the fitting time (default 3; the issue's figure: 20);
DISTILLPREP_BENCH_DYNAMIC_MINUTES the time of each fit in the static-vs-dynamic comparison
on moving cars (default 2; 0 skips it).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distillprep.scenes.datasets import read_dataset
from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.scenes.sky_masks import with_sky_masks
from distillprep.scenes.synthetic.generate import SynthConfig, generate, load_worlds
from distillprep.scenes.synthetic.render import render_view as exact_view
from distillprep.scenes.synthetic.truth import load_ground_truth_depth, moving_object_mask
from distillprep.teachers.nerf.config import FitConfig
from distillprep.teachers.nerf.evaluate import depth_metrics, lidar_nearest_fill, psnr
from distillprep.teachers.nerf.fit import new_state, start_fit, train, train_step
from distillprep.teachers.nerf.outputs import RenderConfig, static_density
from distillprep.teachers.nerf.rays import holdout_frames
from distillprep.teachers.nerf.render import render_image, render_view, sample_time
from distillprep.teachers.nerf.teacher import build_teacher
from distillprep.teachers.nerf.virtual import plan_virtual_views


def _mean(rows, key):
    return float(np.nanmean([r[key] for r in rows]))


def score_real(teacher, scene, root, frames, cameras):
    """Held-out PSNR and depth figures of the teacher and of the LiDAR baseline."""
    rows = {"psnr": [], "teacher": [], "teacher_no_lidar": [], "teacher_median": [],
            "teacher_median_no_lidar": [], "lidar": [], "lidar_no_lidar": [],
            "teacher_within": [], "teacher_beyond": []}
    for f in frames:
        points = scene.frames[f].lidar_points().points
        for cam in cameras:
            sample = scene.frames[f].cameras[cam]
            out = render_image(teacher, scene, f, cam)
            gt = load_ground_truth_depth(root, sample.source_file)
            base, has_return = lidar_nearest_fill(sample, points)
            solid = gt > 0
            rows["psnr"].append(psnr(out["rgb"], sample.load_image() / 255.0))
            rows["teacher"].append(depth_metrics(out["depth"], gt, solid))
            rows["teacher_no_lidar"].append(depth_metrics(out["depth"], gt, solid & ~has_return))
            rows["teacher_median"].append(depth_metrics(out["median_depth"], gt, solid))
            rows["teacher_median_no_lidar"].append(
                depth_metrics(out["median_depth"], gt, solid & ~has_return))
            rows["teacher_within"].append(depth_metrics(out["depth"], gt, solid & (gt < FAR_M)))
            rows["teacher_beyond"].append(depth_metrics(out["depth"], gt, solid & (gt >= FAR_M)))
            rows["lidar"].append(depth_metrics(base, gt, solid))
            rows["lidar_no_lidar"].append(depth_metrics(base, gt, solid & ~has_return))
    pixels = {k: sum(r["pixels"] for r in rows[k]) for k in ("teacher", "teacher_beyond")}
    return {"psnr": float(np.mean(rows["psnr"])),
            "beyond_share": pixels["teacher_beyond"] / max(1, pixels["teacher"]),
            **{f"{k}.{m}": _mean(v, m) for k, v in rows.items() if k != "psnr"
               for m in ("abs_rel", "delta_1_25")}}


def score_virtual(teacher, scene, root, frames):
    """Virtual views of the held-out frames (the default policy) against the generator's
    exact render of the same poses at the same time."""
    world = load_worlds(root)[scene.scene_id]
    samples = [s for f in frames for s in scene.frames[f].cameras.values()]

    plan = plan_virtual_views(np.stack([s.cam_to_world for s in samples]),
                              np.stack([s.intrinsics for s in samples]),
                              [(s.height, s.width) for s in samples], static_density(teacher),
                              RenderConfig().virtual)
    scores, errors, rays, seconds = [], [], 0, 0.0
    for view in plan.views:
        sample = samples[view.source_sample]
        h, w = view.size
        start = time.perf_counter()
        ours = render_view(teacher, view.intrinsics, view.cam_to_world, h, w,
                           scene.camera_names.index(sample.camera), sample_time(scene, sample))
        seconds += time.perf_counter() - start
        rays += h * w
        exact = exact_view(world, view.intrinsics, view.cam_to_world,
                           sample_time(scene, sample), w, h, supersample=2)
        scores.append(psnr(ours["rgb"], exact.rgb / 255.0))
        errors.append(depth_metrics(ours["depth"], exact.depth, exact.depth > 0)["abs_rel"])
    return {"psnr": float(np.mean(scores)), "abs_rel": float(np.nanmean(errors)),
            "views": len(plan.views), "dropped": len(plan.dropped),
            "rays_per_s": rays / max(seconds, 1e-9)}


def profile_steps(state, rays, steps: int = 5) -> list[tuple[str, float]]:
    """Share of self CPU time per operator over a few training steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train_step(state, rays)
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events)
    return [(k, t / total) for k, t in sorted(events, key=lambda e: -e[1])[:10]]


FAR_M = 40.0
"""Depth (m) from which pixels are scored apart as far."""
CALIBRATION_STEPS = 60
LATER_STEPS_FASTER = 1.2
BENCH_SCENE = SynthConfig(scenes=1, frames=10, width=320, height=180, sweeps=5, seed=3)


def bench_teacher_fit(root: Path, minutes: float, dataset: str = "nuscenes",
                      prefix: str = "", sky_masks: bool = False) -> None:
    """Fit and score a teacher on the first scene of `root` (with the dataset's sky masks
    when `sky_masks`, else the LiDAR's); every printed key starts with `prefix`."""
    torch.set_num_threads(2)
    scene = read_dataset(dataset, str(root), sweeps=True).scenes[0]
    if sky_masks:
        scene = with_sky_masks(scene)

    def say(line: str) -> None:  # table rows (indented) stay as they are
        print(line if line.startswith("  ") else prefix + line)

    train_frames, held = holdout_frames(scene, 2)
    config = FitConfig(steps=10**9, log_every=5)
    start = time.perf_counter()
    state, rays = start_fit(scene, train_frames, config)
    prepare = time.perf_counter() - start
    # The learning-rate schedule runs over `steps`: size it to the time budget from the
    # step rate of a throwaway teacher's first steps. Later steps run faster (the grid
    # prunes): 3,759 steps sized so took 16.5 of 20 minutes, hence the factor.
    probe = new_state(build_teacher(scene, config, rays.lidar, rays.camera))
    train(probe, rays, CALIBRATION_STEPS)
    steps = int(LATER_STEPS_FASTER * minutes * 60 / (probe.wall_time_s / CALIBRATION_STEPS))
    config = dataclasses.replace(config, steps=steps)
    state.teacher.config = config
    say(f"teacher.scheduled_steps: {steps} (from {CALIBRATION_STEPS} calibration steps)")
    rows, every = [], max(60.0, minutes * 60 / 8)
    marks = [every * (i + 1) for i in range(int(minutes * 60 / every))]

    def callback(step, record, teacher):
        if marks and record["seconds"] >= marks[0]:
            marks.pop(0)
            figures = score_real(teacher, scene, root, held, [scene.camera_names[0]])
            rows.append((step, record["seconds"], figures))
        return not marks

    train(state, rays, config.steps, callback)
    fit_s = state.wall_time_s
    say(f"teacher.backend: {state.teacher.field.grid.backend}")
    say(f"teacher.prepare_s: {prepare:.1f}")
    say(f"teacher.fit_minutes: {fit_s / 60:.1f}")
    say(f"teacher.steps: {state.step}")
    say(f"teacher.camera_rays_per_s: {state.step * config.camera_rays / fit_s:.0f}")
    say("teacher.progress (step, minutes, held-out PSNR of the front cameras, depth "
          "AbsRel non-sky: expected, median):")
    for step, seconds, figures in rows:
        say(f"  {step:6d} {seconds / 60:6.1f} {figures['psnr']:7.2f} "
              f"{figures['teacher.abs_rel']:7.3f} {figures['teacher_median.abs_rel']:7.3f}")
    final = score_real(state.teacher, scene, root, held, list(scene.camera_names))
    say(f"teacher.heldout_psnr_db: {final['psnr']:.2f}")
    for who in ("teacher", "teacher_median", "lidar"):
        for where, key in (("non_sky", who), ("no_lidar_return", f"{who}_no_lidar")):
            say(f"{who}.depth_abs_rel.{where}: {final[key + '.abs_rel']:.3f}")
            say(f"{who}.depth_delta_1_25.{where}: {final[key + '.delta_1_25']:.3f}")
    # Where the error lives: far facades and the ground near the horizon, beyond the
    # LiDAR's reach, weigh far more than their share of the pixels.
    say(f"teacher.depth_abs_rel.non_sky_within_{FAR_M:g}m: "
          f"{final['teacher_within.abs_rel']:.3f}")
    say(f"teacher.depth_abs_rel.non_sky_beyond_{FAR_M:g}m: "
          f"{final['teacher_beyond.abs_rel']:.3f} ({final['beyond_share'] * 100:.1f} % of "
          "the non-sky pixels)")
    # What the store holds: depth of keyframes the teacher was fitted on (two of them).
    fitted = [f.index for f in scene.frames if f.is_keyframe and f.index not in held]
    seen = score_real(state.teacher, scene, root, fitted[2:6:3], list(scene.camera_names))
    say(f"teacher.fitted_keyframes_psnr_db: {seen['psnr']:.2f}")
    for who in ("teacher", "teacher_median", "lidar"):
        say(f"{who}.fitted_keyframes.depth_abs_rel.non_sky: {seen[who + '.abs_rel']:.3f}")
        say(f"{who}.fitted_keyframes.depth_abs_rel.no_lidar_return: "
              f"{seen[who + '_no_lidar.abs_rel']:.3f}")
    start = time.perf_counter()
    virtual = score_virtual(state.teacher, scene, root, held)
    say(f"teacher.virtual_psnr_db: {virtual['psnr']:.2f}")
    say(f"teacher.virtual_depth_abs_rel: {virtual['abs_rel']:.3f}")
    say(f"teacher.virtual_views: {virtual['views']} ({virtual['dropped']} dropped)")
    say(f"teacher.render_s_per_view: "
          f"{(time.perf_counter() - start) / max(1, virtual['views']):.2f} "
          "(teacher and exact render)")
    # a rendered ray takes two passes of 64 samples, a training ray 24 samples with backward
    say(f"teacher.render_rays_per_s: {virtual['rays_per_s']:.0f}")
    say(f"teacher.render_ratio_to_training_camera_rays_per_s: "
          f"{virtual['rays_per_s'] / (state.step * config.camera_rays / fit_s):.2f}")
    say("teacher.profile (share of self CPU time per operator, 5 steps):")
    for name, share in profile_steps(state, rays):
        say(f"  {share * 100:5.1f} %  {name}")


def bench_dynamic(root: Path, minutes: float) -> None:
    """Static vs dynamic teacher, each fitted for `minutes`, on the moving cars' pixels of
    the held-out frames (exact masks from the generator's world)."""
    torch.set_num_threads(2)
    scene = read_nuscenes(root, sweeps=True).scenes[0]
    world = load_worlds(root)[scene.scene_id]
    train_frames, held = holdout_frames(scene, 2)
    results = {}
    for name, dynamic in (("static", None), ("dynamic", FitConfig().dynamic)):
        config = FitConfig(steps=10**9, log_every=5, dynamic=dynamic)
        state, rays = start_fit(scene, train_frames, config)
        train(state, rays, config.steps,
              lambda step, record, teacher: record["seconds"] >= minutes * 60)
        scores, everything = [], []
        for f in held:
            for cam, sample in scene.frames[f].cameras.items():
                out = render_image(state.teacher, scene, f, cam)
                image = sample.load_image() / 255.0
                everything.append(psnr(out["rgb"], image))
                mask = moving_object_mask(world, sample.intrinsics, sample.cam_to_world,
                                          sample_time(scene, sample), sample.width,
                                          sample.height)
                if mask.sum() >= 20:
                    scores.append(psnr(out["rgb"][mask], image[mask]))
        results[name] = (float(np.mean(scores)), float(np.mean(everything)), state.step)
    for name, (moving, whole, steps) in results.items():
        print(f"teacher.{name}.moving_car_psnr_db: {moving:.2f} (whole images "
              f"{whole:.2f}, {steps} steps in {minutes:g} min)")
    print(f"teacher.dynamic_gain_on_moving_cars_db: "
          f"{results['dynamic'][0] - results['static'][0]:.2f}")


def bench_teacher(fit_minutes: float, dynamic_minutes: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = generate(Path(tmp) / "nuscenes", "nuscenes", BENCH_SCENE)
        print(f"teacher.scene_generation_s: {time.perf_counter() - start:.0f}")
        bench_teacher_fit(root, fit_minutes)
        if dynamic_minutes > 0:
            bench_dynamic(root, dynamic_minutes)


if __name__ == "__main__":
    bench_teacher(float(os.environ.get("DISTILLPREP_BENCH_FIT_MINUTES", "3")),
                  float(os.environ.get("DISTILLPREP_BENCH_DYNAMIC_MINUTES", "2")))
