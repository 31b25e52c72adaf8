"""Export a Waymo store's teacher outputs in the layout DistillNeRF's Waymo loader reads.

What that code reads (NVlabs/distillnerf: `projects/DistillNeRF/datasets/
waymo_multimodal_dataset.py`, `WaymoMultiModalDatasetV2` on mmdet3d's `WaymoDataset`;
`pipelines/multi_cam_pipelines.py`, `LoadDepthImagesFromFilesWaymo`; `configs/datasets/
dataset_config_waymo.py`): mmdet3d's KITTI-format conversion of Waymo, whose root its
config calls `data/waymo/kitti_format/` (OUT here):

    OUT/waymo_infos_<set>.pkl               the info list, one dict per frame (set: train
                                            or val, the config's `ann_file`s)
    OUT/<split>/image_<c>/<idx>.jpg         camera c's image: the store's JPEG bytes
    OUT/<split>/depth_img_<c>/<idx>.npy     teacher depth (Ht, Wt) float32, metres along
                                            the camera z axis (`np.load`)
    OUT/<split>/sky_mask_<c>/<idx>.png      8-bit grey, 255 on sky (read as gray / 255)
    OUT/<split>/velodyne/<idx>.bin          LiDAR, float32 (P, 6), vehicle frame

- split: the config's `data_split`, `emernerf_notr`; c: Waymo's camera index (CameraName
  - 1: 0 FRONT, 1 FRONT_LEFT, 2 FRONT_RIGHT, 3 SIDE_LEFT, 4 SIDE_RIGHT; the loader takes
  cameras [1, 0, 2], so those three must be in the store); idx: mmdet3d's
  `<prefix><scene:03d><frame:03d>` with prefix 0 for train, 1 for val (so the two sets
  exported into one OUT never share a file), scenes numbered in export order.
- The loader maps an image path to its depth and sky files by replacing `/image` with
  `/depth_img` (suffix .npy) and `/sky_mask` (suffix .png); both must exist. Sky: the
  store's sky masks (`ingest --sky-masks`) at the depth's size where the scene has them,
  else the teacher's opacity below `sky_opacity` (as the nuScenes export).
- Info dict, as the loader uses it: `image` (`image_idx`, `image_path` relative to OUT, one
  per camera index, `image_shape` (H, W)); `calib` (`P<c>` (4, 4) with K in [:3, :3],
  `R0_rect` = I, `Tr_velo_to_cam_<c>` (4, 4) vehicle -> OpenCV camera, `Tr_velo_to_cam`
  camera 0's); `pose` (4, 4) vehicle -> world at the frame time; `timestamp` (us; the
  loader keys frames by timestamp / 1e5, so 10 Hz frames); `point_cloud`
  (`velodyne_path`, `num_features` 6); `annos` without objects (labels are not exported).
  The loader's camera pose is `pose @ inv(Tr_velo_to_cam_<c>)`: the extrinsic written is
  `inv(cam_to_world) @ pose`, so that product is each image's own stored pose, exactly.
- LiDAR columns: x, y, z (the frame's vehicle frame), intensity, elongation (0: not
  stored), and mmdet3d's sixth (0); its config loads 6 and uses 5.
- Only frames whose every camera the teacher rendered are written (the others are
  reported); DistillNeRF's Waymo configs read no virtual views, so none are written.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from distillprep.scenes.waymo.records import CAMERA_NAMES

from .errors import StoreError
from .export_distillnerf import (
    ExportReport,
    SkippedView,
    check_values,
    save_npy,
    sky_mask,
    write_atomic,
)
from .store import Store
from .stored_scene import load_scene

SPLIT = "emernerf_notr"
"""The folder DistillNeRF's Waymo config reads (`data_split`)."""
SET_PREFIX = {"train": 0, "val": 1}
"""Info set (`waymo_infos_<set>.pkl`, its configs' `ann_file`s) -> mmdet3d's index prefix."""
CAMERA_INDEX = {name: enum - 1 for enum, name in CAMERA_NAMES.items()}
"""Waymo camera name -> the camera index of mmdet3d's conversion."""
LOADER_CAMERAS = (0, 1, 2)
"""Camera indices DistillNeRF's Waymo loader reads (FRONT_LEFT, FRONT, FRONT_RIGHT)."""


def frame_index_name(scene: int, frame: int, prefix: int = 0) -> str:
    """mmdet3d's 7-digit sample index of a frame: `<prefix><scene:03d><frame:03d>`."""
    if not (0 <= scene < 1000 and 0 <= frame < 1000):
        raise StoreError(f"scene {scene} / frame {frame}: mmdet3d's Waymo index holds at "
                         "most 1000 scenes of 1000 frames")
    return f"{prefix}{scene:03d}{frame:03d}"


def _empty_annos() -> dict:
    return {"name": np.zeros(0, dtype="<U10"), "truncated": np.zeros(0),
            "occluded": np.zeros(0, dtype=np.int64), "alpha": np.zeros(0),
            "bbox": np.zeros((0, 4)), "dimensions": np.zeros((0, 3)),
            "location": np.zeros((0, 3)), "rotation_y": np.zeros(0), "score": np.zeros(0),
            "difficulty": np.zeros(0, dtype=np.int32),
            "num_points_in_gt": np.zeros(0, dtype=np.int32)}


def _png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def _write(out: Path, rel: str, data: bytes, report: ExportReport) -> None:
    write_atomic(out / rel, lambda handle: handle.write(data))
    report.files.append(rel)


def _resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = (np.arange(height) + 0.5) * mask.shape[0] / height
    cols = (np.arange(width) + 0.5) * mask.shape[1] / width
    return mask[rows.astype(int)[:, None], cols.astype(int)[None, :]]


def _camera_indices(scene_id: str, cameras: list[str]) -> dict[str, int]:
    unknown = [c for c in cameras if c not in CAMERA_INDEX]
    if unknown:
        raise StoreError(f"scene {scene_id!r}: cameras {unknown} are not Waymo's")
    index = {c: CAMERA_INDEX[c] for c in cameras}
    missing = [CAMERA_NAMES[i + 1] for i in LOADER_CAMERAS if i not in index.values()]
    if missing:
        raise StoreError(f"scene {scene_id!r} lacks cameras {missing}, which DistillNeRF's "
                         "Waymo loader reads (FRONT_LEFT, FRONT, FRONT_RIGHT)")
    return index


def _export_scene(store: Store, scene_id: str, number: int, prefix: int, out: Path,
                  split: str, sky_opacity: float, report: ExportReport) -> list[dict]:
    view = store.scene(scene_id)
    scene = load_scene(store, scene_id, view)
    cameras = _camera_indices(scene_id, list(scene.camera_names))
    rows = view.manifest().select(["sample_index", "frame_index", "camera",
                                   "has_teacher_depth"]).to_pylist()
    sample_of = {(r["frame_index"], r["camera"]): r["sample_index"] for r in rows}
    rendered = {r["sample_index"]: r["has_teacher_depth"] for r in rows}
    depth, opacity = view["teacher_depth"], (view["teacher_opacity"]
                                             if "teacher_opacity" in view else None)
    given_sky = view["sky_mask"] if "sky_mask" in view else None
    jpeg, nbytes = view["rgb_jpeg"], np.asarray(view["rgb_jpeg_nbytes"][...])
    infos = []
    for frame in scene.frames:
        samples = [sample_of[frame.index, name] for name in frame.cameras]
        if not all(rendered[i] for i in samples):
            report.skipped.extend(
                SkippedView(scene_id, "real", i, split, "not-rendered", "the teacher did not "
                            "render this image; its frame is left out") for i in samples)
            continue
        idx = frame_index_name(number, frame.index, prefix)
        world_to_vehicle = np.linalg.inv(frame.ego_to_world)
        calib = {"R0_rect": np.eye(4)}
        paths = {}
        for i, (name, camera) in zip(samples, frame.cameras.items(), strict=True):
            c = cameras[name]
            d = np.asarray(depth[i], dtype=np.float32)
            check_values(scene_id, "teacher_depth", i, d, 0.0, np.inf)
            o = None if opacity is None else np.asarray(opacity[i], dtype=np.float32)
            if o is not None:
                check_values(scene_id, "teacher_opacity", i, o, 0.0, 1.0)
            sky = (sky_mask(d, o, sky_opacity) if given_sky is None
                   else _resize_nearest(np.asarray(given_sky[i]) != 0, *d.shape))
            k = np.eye(4)
            k[:3, :3] = camera.intrinsics
            calib[f"P{c}"] = k
            calib[f"Tr_velo_to_cam_{c}"] = np.linalg.inv(camera.cam_to_world) @ frame.ego_to_world
            paths[c] = f"{split}/image_{c}/{idx}.jpg"
            _write(out, paths[c], np.asarray(jpeg[i][: int(nbytes[i])]).tobytes(), report)
            save_npy(out / f"{split}/depth_img_{c}/{idx}.npy", d)
            report.files.append(f"{split}/depth_img_{c}/{idx}.npy")
            _write(out, f"{split}/sky_mask_{c}/{idx}.png", _png(sky), report)
            report.real_views += 1
        calib["Tr_velo_to_cam"] = calib[f"Tr_velo_to_cam_{min(paths)}"]
        points = []
        for sweep in frame.lidar:
            world = sweep.load()
            vehicle = world.points @ world_to_vehicle[:3, :3].T + world_to_vehicle[:3, 3]
            points.append(np.column_stack([vehicle, world.intensity, np.zeros((len(vehicle), 2))]))
        cloud = (np.concatenate(points) if points else np.zeros((0, 6))).astype(np.float32)
        velodyne = f"{split}/velodyne/{idx}.bin"
        _write(out, velodyne, cloud.tobytes(), report)
        first = frame.cameras[next(iter(frame.cameras))]
        infos.append({
            "image": {"image_idx": int(idx),
                      "image_path": [paths.get(c, "") for c in range(max(paths) + 1)],
                      "image_shape": np.array([first.height, first.width], dtype=np.int32)},
            "calib": calib, "pose": np.asarray(frame.ego_to_world, dtype=np.float64),
            "timestamp": int(frame.timestamp_us),
            "point_cloud": {"num_features": 6, "velodyne_path": velodyne},
            "annos": _empty_annos(), "scene_id": scene_id, "frame_index": frame.index})
    return infos


def export_distillnerf_waymo(store: Store, out_dir: str | Path,
                             scene_ids: list[str] | None = None, sky_opacity: float = 0.5,
                             info_set: str = "train", split: str = SPLIT) -> ExportReport:
    """Write the teacher outputs of a Waymo `store` under out_dir in the layout of
    DistillNeRF's Waymo loader (module docstring), as its `info_set` (train or val): all
    committed scenes, or those named, each checked for teacher depth before anything is
    written."""
    if info_set not in SET_PREFIX:
        raise StoreError(f"info set {info_set!r}: DistillNeRF's Waymo configs read "
                         f"{sorted(SET_PREFIX)}")
    scene_ids = store.scenes() if scene_ids is None else list(scene_ids)
    for scene_id in scene_ids:
        if "teacher_depth" not in store.scene(scene_id):
            raise StoreError(f"scene {scene_id!r} in store {store.location.location} has no "
                             "teacher depth: run `distillprep teacher render` first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out_dir=str(out))
    infos = []
    for number, scene_id in enumerate(scene_ids):
        infos += _export_scene(store, scene_id, number, SET_PREFIX[info_set], out, split,
                               sky_opacity, report)
        report.scenes.append(scene_id)
    _write(out, f"waymo_infos_{info_set}.pkl", pickle.dumps(infos, protocol=4), report)
    return report
