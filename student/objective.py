"""One training objective evaluation of the student on one frame of the streaming loader:
the frame's cameras in, its own views rendered back, every loss term of `LossConfig`.

The frame of reference is the world's axes moved to the mean of the frame's camera
centres (z up, as the stores' worlds), so the voxels sit around the rig. LiDAR depth is
min-pooled to the render size (the nearest return per pixel, as the official loader),
teacher depth taken at the nearest pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import (
    LossConfig,
    entropy_loss,
    feature_loss,
    lidar_depth_loss,
    lidar_target,
    opacity_loss,
    teacher_depth_loss,
    teacher_target,
)
from .model.distillnerf import DistillNeRFStudent, scale_intrinsics


def frame_inputs(batch: dict, item: int = 0) -> dict[str, torch.Tensor]:
    """Model inputs of one frame of a loader batch: images (C, 3, H, W) in [0, 1],
    K (C, 3, 3), cam_to_ref (C, 4, 4) float32, and the reference's offset (3,) world."""
    rgb = batch["rgb"][item].permute(0, 3, 1, 2).float() / 255.0
    poses = batch["cam_to_world"][item].double()
    centre = poses[:, :3, 3].mean(dim=0)
    poses = poses.clone()
    poses[:, :3, 3] -= centre
    return {"images": rgb, "intrinsics": batch["intrinsics"][item].float(),
            "cam_to_ref": poses.float(), "centre": centre}


def to_device(batch: dict, device: str | torch.device) -> dict:
    """The batch with its tensors on `device` (names and ids stay as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def sparse_min_pool(depth: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, H / f, W / f) nearest return of each f x f cell of sparse depth (N, H, W)
    (0 = none)."""
    d = torch.nan_to_num(depth.float())
    d = torch.where(d > 0, d, torch.full_like(d, float("inf")))
    pooled = -F.max_pool2d(-d[:, None], factor)[:, 0]
    return torch.where(torch.isinf(pooled), torch.zeros_like(pooled), pooled)


def objective(model: DistillNeRFStudent, batch: dict, losses: LossConfig, item: int = 0,
              generator: torch.Generator | None = None,
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """(total loss, each weighted term) of one frame: its cameras rendered back."""
    inputs = frame_inputs(batch, item)
    scene = model.encode(inputs["images"], inputs["intrinsics"], inputs["cam_to_ref"])
    h, w = scene["size"]
    cams = len(inputs["images"])
    out = model.render(scene, scale_intrinsics(inputs["intrinsics"], 0.5),
                       inputs["cam_to_ref"], torch.arange(cams, device=model.edges.device),
                       (h, w), generator)
    terms: dict[str, torch.Tensor] = {}
    if losses.rgb_l1:
        terms["rgb_l1"] = losses.rgb_l1 * F.l1_loss(out["rgb"], inputs["images"])
    depths = {"render": out["depth"], "coarse": scene["coarse_depth"]}
    if losses.lidar_depth and "lidar_depth" in batch:
        lidar = sparse_min_pool(batch["lidar_depth"][item], 2)
        if losses.lidar_sky and "teacher_opacity" in batch:
            opacity = F.interpolate(batch["teacher_opacity"][item].float()[:, None],
                                    size=(h, w), mode="nearest")[:, 0]
            lidar = lidar_target(lidar, opacity < losses.sky_opacity, losses)
        terms["lidar_depth"] = losses.lidar_depth * sum(
            lidar_depth_loss(d, lidar, losses) for d in depths.values())
    if losses.teacher_depth and "teacher_depth" in batch:
        teacher = teacher_depth_target(batch, "teacher", item, (h, w), losses, ...)
        terms["teacher_depth"] = losses.teacher_depth * sum(
            teacher_depth_loss(d, teacher, losses) for d in depths.values())
    if losses.entropy:
        terms["entropy"] = losses.entropy * (entropy_loss(scene["coarse_weights"])
                                             + entropy_loss(out["weights"]))
    if losses.opacity:
        terms["opacity"] = losses.opacity * (opacity_loss(scene["coarse_weights"])
                                             + opacity_loss(scene["fine_weights"])
                                             + opacity_loss(out["weights"]))
    for family in ("dino", "clip"):
        name = f"{family}_features"
        if losses.features and name in batch and "features" in out:
            target = F.interpolate(batch[name][item].float(), size=(h, w), mode="bilinear",
                                   align_corners=False)
            terms[name] = losses.features * feature_loss(out["features"], target)
    if losses.virtual and "virtual_rgb" in batch:
        terms.update(_virtual_terms(model, batch, item, inputs, scene, losses, generator))
    total = sum(terms.values())
    return total, {k: float(v.detach()) for k, v in terms.items()}


def teacher_depth_target(batch: dict, kind: str, item: int, size: tuple[int, int],
                         losses: LossConfig, pick) -> torch.Tensor:
    """(T, h, w) teacher depth target of the `kind` ("teacher" or "virtual") views at the
    render size (nearest pixel), sky where the teacher's opacity says so (when loaded);
    `pick` indexes the frame's views (Ellipsis: all)."""
    def at_size(name):
        if name not in batch:
            return None
        return F.interpolate(batch[name][item][pick].float()[:, None], size=size,
                             mode="nearest")[:, 0]

    return teacher_target(at_size(f"{kind}_depth"), at_size(f"{kind}_opacity"), losses)


def _virtual_terms(model, batch, item, inputs, scene, losses, generator) -> dict:
    """The virtual cameras' targets (one per camera, `LoaderConfig.virtual="random"`):
    their teacher-rendered RGB and depth, the same losses as the real views, weighted by
    `losses.virtual`; cameras whose views were all dropped are left out."""
    valid = batch["virtual_valid"][item][:, 0]
    if not bool(valid.any()):
        return {}
    poses = batch["virtual_cam_to_world"][item][valid, 0].double().clone()
    poses[:, :3, 3] -= inputs["centre"]
    k = scale_intrinsics(batch["virtual_intrinsics"][item][valid, 0].float(), 0.5)
    h, w = scene["size"]
    out = model.render(scene, k, poses.float(), torch.nonzero(valid)[:, 0].to(poses.device),
                       (h, w), generator)
    terms = {}
    if losses.rgb_l1:
        target = batch["virtual_rgb"][item][valid, 0].permute(0, 3, 1, 2).float() / 255.0
        terms["virtual_rgb_l1"] = losses.virtual * losses.rgb_l1 * F.l1_loss(out["rgb"],
                                                                             target)
    if losses.teacher_depth and "virtual_depth" in batch:
        depth = teacher_depth_target(batch, "virtual", item, (h, w), losses, (valid, 0))
        terms["virtual_teacher_depth"] = (losses.virtual * losses.teacher_depth
                                          * teacher_depth_loss(out["depth"], depth, losses))
    return terms
