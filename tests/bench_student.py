"""Student bench (`make bench`): one frame of 6 cameras at 228 x 128 (DistillNeRF's input
size) through the default student on the CPU: inference time per frame and a training
step (forward, backward, Adam), each with the share of its parts (encoder, depth heads,
lifting and pooling, sparse convolution, rendering, decoder; the training step's
backward and optimiser step as one more part), and their ratio to the machine's matmul
rate (a 2048^2 fp32 matmul timed in the same run). The paper's figure for comparison
(RTX 4090, CUDA): 0.487 s per frame. One figure per line."""

from __future__ import annotations

import math
import os
import time

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's own start/stop chatter
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from distillprep.student.losses import LossConfig, teacher_depth_loss
from distillprep.student.model.distillnerf import (
    DistillNeRFStudent,
    StudentConfig,
    scale_intrinsics,
)

PARTS = ("encoder", "depth", "lift_pool", "sparse_conv", "render", "decoder")
WIDTH, HEIGHT = 228, 128


def rig() -> tuple[torch.Tensor, torch.Tensor]:
    """K (6, 3, 3) and cam_to_ref (6, 4, 4) of a nuScenes-like ring of cameras 1.5 m up."""
    poses = []
    for yaw in (0, 55, -55, 180, 110, -110):
        r = math.radians(yaw)
        pose = torch.eye(4)
        pose[:3, 0] = torch.tensor([math.sin(r), -math.cos(r), 0.0])  # right
        pose[:3, 1] = torch.tensor([0.0, 0.0, -1.0])  # down
        pose[:3, 2] = torch.tensor([math.cos(r), math.sin(r), 0.0])  # forward
        pose[:3, 3] = torch.tensor([0.0, 0.0, 1.5])
        poses.append(pose)
    k = torch.tensor([[125.0, 0, (WIDTH - 1) / 2], [0, 125.0, (HEIGHT - 1) / 2], [0, 0, 1]])
    return k.repeat(6, 1, 1), torch.stack(poses)


def _shares(prof, total_s: float) -> dict[str, float]:
    times = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages()}
    return {p: times.get(f"student.{p}", 0.0) / total_s for p in PARTS}


def matmul_seconds() -> float:
    a = torch.randn(2048, 2048)
    a @ a
    start = time.perf_counter()
    for _ in range(3):
        a @ a
    return (time.perf_counter() - start) / 3


def bench_student() -> None:
    torch.manual_seed(0)
    model = DistillNeRFStudent(StudentConfig())
    k, poses = rig()
    images = torch.rand(6, 3, HEIGHT, WIDTH)
    cams = torch.arange(6)
    floor = matmul_seconds()

    def forward():
        scene = model.encode(images, k, poses)
        return scene, model.render(scene, scale_intrinsics(k, 0.5), poses, cams,
                                   scene["size"])

    with torch.no_grad():
        forward()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            forward()
            seconds = time.perf_counter() - start
    print(f"student.inference_228x128x6.seconds_per_frame: {seconds:.2f} (paper, RTX 4090: "
          f"0.487)")
    print(f"student.inference_228x128x6.ratio_to_2048_matmul: {seconds / floor:.0f}")
    for part, share in _shares(prof, seconds).items():
        print(f"student.inference.share.{part}: {share:.2f}")
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.0, 0.99))
    losses = LossConfig()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        scene, out = forward()
        target = torch.full_like(out["depth"], 10.0)
        loss = (torch.nn.functional.l1_loss(out["rgb"], images)
                + losses.teacher_depth * teacher_depth_loss(out["depth"], target, losses))
        forward_s = time.perf_counter() - start
        loss.backward()
        optimiser.step()
        seconds = time.perf_counter() - start
    print(f"student.train_step_228x128x6.seconds: {seconds:.2f}")
    print(f"student.train_step_228x128x6.ratio_to_2048_matmul: {seconds / floor:.0f}")
    for part, share in _shares(prof, seconds).items():
        print(f"student.train_step.share.{part}: {share:.2f}")
    print(f"student.train_step.share.backward_and_step: {(seconds - forward_s) / seconds:.2f}")


if __name__ == "__main__":
    bench_student()
