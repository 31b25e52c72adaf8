"""`make bench`: speed figures, each as a ratio against a baseline timed in this process.

One figure per line. These machines are shared and noisy, so every figure is relative to
something measured in the same run, never an absolute threshold.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_commit import bench_stage_commits
from bench_features import bench_feature_codecs, bench_features, bench_position_denoising
from bench_flow import bench_flows
from bench_ingest_checks import bench_ingest_checks
from bench_loader import bench_loader
from bench_store import bench_store
from bench_student import bench_student
from bench_student_ablation import bench_student_ablation
from bench_teacher import bench_hash_grid
from bench_teacher_fit import bench_teacher
from bench_timing import best_of
from bench_waymo import bench_waymo
from PIL import Image

from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.scenes.synthetic.builder import build_world
from distillprep.scenes.synthetic.capture import ego_to_world
from distillprep.scenes.synthetic.generate import SynthConfig, generate
from distillprep.scenes.synthetic.render import camera_rays, render_view
from distillprep.scenes.synthetic.rig import NUSCENES_RIG

WIDTH, HEIGHT = 320, 180


def bench_generator() -> None:
    world = build_world(0, 10.0)
    cams = NUSCENES_RIG.cameras
    poses = [ego_to_world(world, 2.0) @ cam.cam_to_ego() for cam in cams]

    def ray_plane_pass():  # floor: the rays of every camera against one plane, nothing else
        for cam, pose in zip(cams, poses, strict=True):
            origin, dirs = camera_rays(cam.intrinsics(WIDTH, HEIGHT), pose, WIDTH, HEIGHT)
            with np.errstate(divide="ignore"):
                np.where(dirs[:, 2] < 0, -origin[0, 2] / dirs[:, 2], np.inf)

    for supersample in (1, 2):
        def render_all(supersample=supersample):
            for cam, pose in zip(cams, poses, strict=True):
                render_view(world, cam.intrinsics(WIDTH, HEIGHT), pose, 2.0, WIDTH, HEIGHT,
                            supersample=supersample)

        per_image = best_of(render_all, 2) / len(cams)
        floor = best_of(ray_plane_pass) / len(cams)
        print(f"synth.render_{WIDTH}x{HEIGHT}_ss{supersample}.seconds_per_image: {per_image:.3f}")
        print(f"synth.render_{WIDTH}x{HEIGHT}_ss{supersample}.ratio_to_one_ray_plane_pass: "
              f"{per_image / floor:.1f}")


def bench_reader(root: Path) -> None:
    read_nuscenes(root)  # warm: imports, page cache
    files = sorted(str(p) for p in root.glob("samples/CAM_*/*.jpg"))

    def plain_decode():
        for f in files:
            with Image.open(f) as im:
                np.asarray(im.convert("RGB"))

    def reader():
        for scene in read_nuscenes(root).scenes:
            for sample in scene.camera_samples:
                sample.load_image()

    floor = best_of(plain_decode) / len(files)
    ours = best_of(reader) / len(files)
    print(f"reader.camera_samples: {len(files)}")
    print(f"reader.seconds_per_camera_sample: {ours:.5f}")
    print(f"reader.ratio_to_plain_jpeg_decode: {ours / floor:.2f}")


def main() -> None:
    bench_hash_grid()
    bench_generator()
    with tempfile.TemporaryDirectory() as tmp:
        config = SynthConfig(scenes=2, frames=10, width=WIDTH, height=HEIGHT, seed=1,
                             supersample=1)
        start = time.perf_counter()
        root = generate(Path(tmp) / "nuscenes", "nuscenes", config)
        images = config.scenes * config.frames * len(NUSCENES_RIG.cameras)
        print(f"synth.dataset_seconds_per_camera_image_all_cores: "
              f"{(time.perf_counter() - start) / images:.3f}")
        bench_reader(root)
        bench_store(root)
        bench_stage_commits(root)
        bench_ingest_checks(root)
        files = sorted(root.glob("samples/CAM_*/*.jpg"))  # 24 images across the cameras
        images = np.stack([np.asarray(Image.open(p).convert("RGB"))
                           for p in files[::max(1, len(files) // 24)][:24]])
        bench_position_denoising(images)
        bench_feature_codecs(images)
        bench_flows(Path(tmp))
    bench_waymo(float(os.environ.get("DISTILLPREP_BENCH_WAYMO_FIT_MINUTES", "3")))
    bench_loader()
    bench_student()
    # the distillation ablations on held-out scenes: fast by default, =full for ~1 hour,
    # =off to skip
    if os.environ.get("DISTILLPREP_BENCH_ABLATION", "fast") != "off":
        bench_student_ablation()
    bench_features()
    # A short fit by default; DISTILLPREP_BENCH_FIT_MINUTES=20 for the full run.
    bench_teacher(float(os.environ.get("DISTILLPREP_BENCH_FIT_MINUTES", "3")),
                  float(os.environ.get("DISTILLPREP_BENCH_DYNAMIC_MINUTES", "2")))


if __name__ == "__main__":
    main()
