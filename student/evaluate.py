"""Evaluating a trained student on a store's frames (DistillNeRF section 4.1): for each
frame, its cameras in, and rendered back: reconstruction PSNR / SSIM of the decoded RGB;
novel views at the next frame's camera poses against the next frame's images (and, where
the teacher rendered virtual views, at those poses against its images); depth at
render resolution up to 80 m against the frame's LiDAR (min-pooled) and the teacher's
dense depth. Scenes default to the run's held-out side of the split.

With `truth` (the dataroot of a synthetic dataset the store was ingested from), also
depth against the exact ground truth the generator wrote beside each image (what no
published evaluation can give). A run trained with a foundation-feature head is scored
against the DINOv2 features (cosine, PSNR); `query` asks a CLIP text of its features.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distillprep.scenes.errors import ConfigError

from .data import StoreDataset, StoreLoader
from .metrics import eval_depth, psnr, ssim
from .model.distillnerf import DistillNeRFStudent, scale_intrinsics
from .objective import frame_inputs, sparse_min_pool, teacher_depth_target, to_device
from .query import prepare_query, score_frame, write_overlays
from .train import (
    TrainConfig,
    check_device,
    check_prior,
    check_rig,
    checkpoints,
    load_checkpoint,
    prior_record,
)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's latest checkpoint."""
    path = Path(path)
    if path.is_dir():
        found = checkpoints(path)
        if not found:
            raise ConfigError(f"run folder {path} has no checkpoint (checkpoints/step_*.pt)")
        return found[-1]
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    return path


def load_student(path: str | Path, device: str = "cpu",
                 ) -> tuple[DistillNeRFStudent, TrainConfig, Path]:
    """The student of a checkpoint (or a run's latest) on `device`, and its run's config."""
    from distillprep.teachers.nerf.config_io import from_dict, read_config_data

    file = resolve_checkpoint(path)
    run = file.parent.parent
    config = from_dict(TrainConfig, read_config_data(run / "config.json"),
                       f"{run / 'config.json'}")
    state = load_checkpoint(file, config)
    model = DistillNeRFStudent(config.model)
    check_prior(state, model, file)
    model.load_state_dict(state["model"])
    return model.to(check_device(device)).eval(), config, file


def _cpu(tensors: dict) -> dict:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def render_frame(model: DistillNeRFStudent, batch: dict) -> tuple[dict, dict, dict, float]:
    """(inputs, scene, the frame's own cameras rendered, seconds) of a loader batch's
    first frame (CPU tensors) on the model's device: encoding and rendering timed
    together (per-frame inference time, the device synchronised); inputs and renders
    come back on the CPU, the scene stays on the device."""
    device = model.edges.device
    _synchronize(device)
    start = time.perf_counter()
    inputs = frame_inputs(to_device(batch, device))
    scene = model.encode(inputs["images"], inputs["intrinsics"], inputs["cam_to_ref"])
    own = model.render(scene, scale_intrinsics(inputs["intrinsics"], 0.5),
                       inputs["cam_to_ref"],
                       torch.arange(len(inputs["images"]), device=device), scene["size"])
    _synchronize(device)
    return _cpu(inputs), scene, _cpu(own), time.perf_counter() - start


def evaluate(stores: list[str], checkpoint: str | Path, scenes: tuple[str, ...] | None = None,
             storage_options: dict | None = None, truth: str | Path | None = None,
             query: str | None = None, clip_weights: Path | None = None,
             png: Path | None = None, device: str = "cpu") -> dict:
    """Mean metrics over the frames of `scenes` (default: the run's validation scenes);
    `truth`: a synthetic dataroot whose exact depth the renders are also scored on;
    `query`: a text asked of the student's rendered CLIP features (`query.py`: its
    agreement with the CLIP teacher's answer; overlays into `png`)."""
    model, config, file = load_student(checkpoint, device)
    fields = ("rgb", "intrinsics", "cam_to_world", "lidar_depth", "next_rgb",
              "next_intrinsics", "next_cam_to_world")
    features = tuple(f for f in config.fields() if f.endswith("_features"))
    loader_config = replace(config.loader(), fields=fields + features, shuffle=False,
                            split="all" if scenes else "val", scenes=scenes)
    dataset = StoreDataset(stores, loader_config, storage_options=storage_options)
    if all("teacher" in stages for stages in dataset.plan.commits.values()):
        # every scene has a teacher: score against its dense depth (and virtual views) too
        extra = ("teacher_depth", "teacher_opacity")
        if _all_have(dataset, "virtual_rgb"):
            extra += ("virtual_rgb", "virtual_depth", "virtual_opacity")
        dataset = StoreDataset(stores, replace(loader_config, fields=loader_config.fields
                                               + extra, virtual="all"),
                               storage_options=storage_options)
    check_rig(dataset, config.model)
    asked = (prepare_query(dataset, config.features, query, clip_weights, png)
             if query is not None else None)
    rows: dict[str, list[float]] = {}
    seconds = []
    sources: dict[str, list[str]] = {}
    with torch.no_grad():
        for batch in StoreLoader(dataset):
            inputs, scene, own, spent = render_frame(model, batch)
            seconds.append(spent)
            device = model.edges.device
            cams = torch.arange(len(inputs["images"]), device=device)
            nxt = batch["next_cam_to_world"][0].double().clone()
            nxt[:, :3, 3] -= inputs["centre"]
            novel = _cpu(model.render(scene, scale_intrinsics(
                batch["next_intrinsics"][0].float(), 0.5).to(device), nxt.float().to(device),
                cams, scene["size"]))
            target = batch["next_rgb"][0].permute(0, 3, 1, 2).float() / 255.0
            _images(rows, "recon", own["rgb"], inputs["images"])
            _images(rows, "novel_view", novel["rgb"], target)
            if "virtual_rgb" in batch:
                _virtual_views(rows, model, batch, inputs["centre"], scene, config)
            lidar = sparse_min_pool(batch["lidar_depth"][0], 2)
            _depth(rows, "depth_lidar", own["depth"], lidar)
            if truth is not None:
                exact = _exact_depth(dataset, truth, batch, scene["size"], sources)
                _depth(rows, "depth_exact", own["depth"], torch.from_numpy(exact))
            family = f"{config.features}_features"
            if "features" in own and family in batch:
                _features(rows, f"features_{config.features}", own["features"],
                          batch[family][0])
            if "teacher_depth" in batch:
                teacher = teacher_depth_target(batch, "teacher", 0, scene["size"],
                                               config.losses, ...)
                _depth(rows, "depth_teacher", own["depth"], teacher)
            if asked is not None and "features" in own:
                score_frame(asked, own["features"], batch["clip_features"][0],
                            inputs["images"], f"{batch['scene_id'][0]}_frame"
                            f"{int(batch['frame_index'][0]):04d}")
    summary = {k: float(np.nanmean(v)) for k, v in rows.items()}
    report = {"checkpoint": str(file), "frames": len(dataset), "prior": prior_record(model),
              "scenes": dataset.plan.scene_ids(),
              "seconds_per_frame": float(np.mean(seconds)) if seconds else None, **summary}
    if asked is not None:
        report["query_agreement"] = (float(np.mean(asked.agreement)) if asked.agreement
                                     else float("nan"))
        report["query"] = {"text": query, "random_init": asked.random_init,
                           "pngs": write_overlays(asked)}
    return report


def _all_have(dataset: StoreDataset, array: str) -> bool:
    """Whether every scene of the dataset's plan has `array` committed."""
    from distillprep.storage_schemas.store import open_store

    stores = {}
    for key in dataset.plan.commits:
        index, scene_id = key.split(":", 1)
        if index not in stores:
            stores[index] = open_store(dataset.plan.locations[int(index)],
                                       storage_options=dataset.plan.storage_options)
        if array not in stores[index].scene(scene_id):
            return False
    return True


def _virtual_views(rows: dict, model: DistillNeRFStudent, batch: dict, centre: torch.Tensor,
                   scene: dict, config: TrainConfig) -> None:
    """Novel views off the rig: every virtual view the teacher rendered for the frame's
    cameras (DistillNeRF's 1 m left / up / right), rendered by the student from the
    frame's own encoding and scored against the teacher's images (`virtual_view_*`) and
    depth (`depth_virtual_*`)."""
    device = model.edges.device
    valid = batch["virtual_valid"][0]
    if not bool(valid.any()):
        return
    poses = batch["virtual_cam_to_world"][0][valid].double().clone()
    poses[:, :3, 3] -= centre.to(poses.device)
    k = scale_intrinsics(batch["virtual_intrinsics"][0][valid].float(), 0.5)
    out = _cpu(model.render(scene, k.to(device), poses.float().to(device),
                            torch.nonzero(valid)[:, 0].to(device), scene["size"]))
    target = batch["virtual_rgb"][0][valid].permute(0, 3, 1, 2).float() / 255.0
    _images(rows, "virtual_view", out["rgb"], target)
    depth = teacher_depth_target(batch, "virtual", 0, scene["size"], config.losses, valid)
    _depth(rows, "depth_virtual", out["depth"], depth)


def _images(rows: dict, name: str, pred: torch.Tensor, target: torch.Tensor) -> None:
    p = pred.clamp(0, 1).permute(0, 2, 3, 1).numpy()
    t = target.permute(0, 2, 3, 1).numpy()
    rows.setdefault(f"{name}_psnr", []).append(psnr(p, t))
    rows.setdefault(f"{name}_ssim", []).append(float(np.mean([ssim(a, b)
                                                              for a, b in zip(p, t, strict=True)])))


def _features(rows: dict, name: str, pred: torch.Tensor, target: torch.Tensor) -> None:
    """Rendered features (T, C, h, w) against the PCA-reduced teacher's (T, C, hf, wf),
    resampled to the render size: mean per-pixel cosine, and PSNR after scaling both by
    the target's range (as the official code scores features with its image PSNR)."""
    target = F.interpolate(target.float(), size=pred.shape[-2:], mode="bilinear",
                           align_corners=False)
    rows.setdefault(f"{name}_cosine", []).append(
        float(F.cosine_similarity(pred, target, dim=1).mean()))
    lo, hi = float(target.min()), float(target.max())
    span = max(hi - lo, 1e-6)
    rows.setdefault(f"{name}_psnr", []).append(
        psnr(((pred - lo) / span).clamp(0, 1).numpy(), ((target - lo) / span).numpy()))


def _depth(rows: dict, name: str, pred: torch.Tensor, gt: torch.Tensor) -> None:
    metrics = eval_depth(pred.numpy(), gt.numpy())
    for key in ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta_1_25", "delta_1_25_2",
                "delta_1_25_3"):
        rows.setdefault(f"{name}_{key}", []).append(metrics[key])


def _exact_depth(dataset: StoreDataset, truth: str | Path, batch: dict,
                 size: tuple[int, int], sources: dict[str, list[str]]) -> np.ndarray:
    """(C, h, w) exact depth of the frame's cameras at render size (nearest pixel); 0
    where the generator wrote none (the sky). `sources` caches each scene's source files."""
    from distillprep.scenes.synthetic.truth import load_ground_truth_depth
    from distillprep.storage_schemas.store import open_store

    from .data.resample import resize_nearest

    scene_id = batch["scene_id"][0]
    if scene_id not in sources:
        index = next(int(k.split(":", 1)[0]) for k in dataset.plan.commits
                     if k.split(":", 1)[1] == scene_id)
        store = open_store(dataset.plan.locations[index],
                           storage_options=dataset.plan.storage_options)
        sources[scene_id] = store.scene(scene_id).manifest().column("source_file").to_pylist()
    out = []
    for sample in batch["sample_index"][0].tolist():
        source = sources[scene_id][sample]
        depth = load_ground_truth_depth(truth, source)
        if depth is None:
            raise ConfigError(f"{truth}: no ground-truth depth for {source} (scene "
                              f"{scene_id!r}): not the synthetic dataset this store was "
                              "ingested from")
        out.append(resize_nearest(np.nan_to_num(depth, posinf=0.0), (size[1], size[0])))
    return np.stack(out)
