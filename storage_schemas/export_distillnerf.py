"""Export a store's teacher outputs in the file layout the official DistillNeRF code reads,
so that its training code runs on our teachers unchanged.

What that code reads (NVlabs/distillnerf, `projects/DistillNeRF/pipelines/
multi_cam_pipelines.py`: `LoadVirtualImagesFromFiles`, `LoadDepthImagesFromFiles`): for a
nuScenes image `<...>/nuscenes/samples/<CAM>/<stem>.jpg` it replaces `nuscenes/` with its
teacher folder (`nuscenes_emernerf/` by default, a sibling of the nuScenes dataroot) and
`samples` with `<view folder>/<kind>`:

    <OUT>/samples_0_0_0_0_0_0/depths/<CAM>/<stem>.npy          real view, teacher depth
    <OUT>/samples_0_0_0_0_0_0/gt_sky_masks/<CAM>/<stem>.npy    real view, sky mask
    <OUT>/samples_1_0_0_0_0_0/rgbs/<CAM>/<stem>.jpg            virtual view 1 m right
    <OUT>/samples_1_0_0_0_0_0/depths/<CAM>/<stem>.npy
    <OUT>/samples_1_0_0_0_0_0/gt_sky_masks/<CAM>/<stem>.npy
    ... samples_-1_0_0_0_0_0 (1 m left), samples_0_-1_0_0_0_0 (1 m up)

so OUT is the folder DistillNeRF calls `nuscenes_emernerf/` (its `virtual_img_path` /
`emernerf_dir` option). Formats, as that code consumes them:
- depths: `np.load`, (H, W) metres along the camera z axis (it is compared with LiDAR
  camera-z depth and resized bilinearly to the render size). Written float32 (the store's
  float16 values exactly), 0 where the teacher saw nothing; those pixels are sky in the
  mask. All views of one training sample are `np.stack`ed, so real and virtual depth must
  share one size (a warning in the report says when they do not).
- gt_sky_masks: `np.load` (or a grayscale .jpg / 255), 1 = sky; a missing file is an
  error there, so it is always written: uint8 (H, W) at the depth's size, 1 where the
  teacher's opacity is below `sky_opacity` or its depth is 0. (For virtual views
  DistillNeRF recomputes sky online with a segmentation model; the file must still exist.)
- rgbs: `matplotlib.image.imread(...)[:, :, ::-1]`, i.e. an 8-bit RGB JPEG under the
  source image's own file name (a PNG would be read as floats in [0, 1] there). DistillNeRF
  concatenates them with the real images after its own resize (which, as far as its code
  shows, touches the real images only), so render virtual views at the training input size
  (e.g. 400x224) for use there.
- the virtual pose is never read from a file: DistillNeRF builds it as the real camera's
  pose times a translation named by the folder, `cam_to_lidar @ T` with T = +1 m camera x
  for `samples_1_0_0_0_0_0`, -1 m x for `samples_-1_...`, -1 m y for `samples_0_-1_...`
  (seen in a virtual-camera variant of its nuScenes dataset class in the code index; the
  NVlabs release's `datasets/nuscenes_multimodal_dataset.py` does not include it). A view
  moved out of solid geometry, or jittered, would be mis-posed there: such views are
  skipped unless `include_moved`.

Only keyframe images (`samples/...`) are exported: DistillNeRF reads no sweeps.
"""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Literal

import numpy as np
from PIL import Image

from distillprep.scenes.paths import inside_root

from .errors import StoreError, StoreReadError
from .store import Store, open_store

REAL_FOLDER = "samples_0_0_0_0_0_0"
"""Folder of the real camera views (offset zero)."""
TEACHER_ARRAYS = ("teacher_depth", "virtual_rgb", "virtual_depth", "virtual_cam_to_world",
                  "virtual_source_sample", "virtual_offset", "virtual_shift")
"""Arrays an export needs (opacities are optional: without them sky = depth 0)."""
POSE_TOLERANCE = 1e-6
"""Metres (and rotation-matrix entries) within which a virtual pose matches its folder."""
JPEG_QUALITY = 95
"""Quality of the virtual RGB JPEGs (4:4:4, no chroma subsampling)."""


@dataclass(frozen=True)
class SkippedView:
    """A view the export did not write, and why."""

    scene_id: str
    """Scene of the view."""
    kind: Literal["real", "virtual"]
    """A real camera image or a virtual view."""
    index: int
    """Sample index (real) or virtual view index (virtual) in the scene."""
    folder: str
    """The DistillNeRF view folder it would have gone to."""
    reason: Literal["moved", "off-pose", "not-keyframe", "duplicate", "not-rendered"]
    """moved: shifted out of solid geometry; off-pose: its pose is not the one its folder
    names (e.g. jitter); not-keyframe: a sweep image; duplicate: an earlier view of the
    same folder and image was written; not-rendered: the teacher rendered no depth for
    it (Waymo: its whole frame is left out)."""
    detail: str
    """The reason in words, with numbers."""


@dataclass
class ExportReport:
    """What one export wrote and skipped."""

    out_dir: str
    """The export root (DistillNeRF's `nuscenes_emernerf/`)."""
    scenes: list[str] = field(default_factory=list)
    """Scenes exported."""
    files: list[str] = field(default_factory=list)
    """Files written, relative to out_dir, POSIX separators."""
    real_views: int = 0
    """Real camera views written (depth + sky mask each)."""
    virtual_views: int = 0
    """Virtual views written (rgb + depth + sky mask each)."""
    skipped: list[SkippedView] = field(default_factory=list)
    """Views not written."""
    warnings: list[str] = field(default_factory=list)
    """Facts that make the export unusable as is for some DistillNeRF configurations."""

    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.skipped:
            counts[item.reason] = counts.get(item.reason, 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "scenes": self.scenes, "files": len(self.files),
                "real_views": self.real_views, "virtual_views": self.virtual_views,
                "skipped_by_reason": self.skipped_by_reason(),
                "skipped": [vars(s) for s in self.skipped], "warnings": self.warnings}


def format_offset_value(value: float) -> str:
    """One number of a DistillNeRF folder name: integers without decimals ("1", "-1",
    "0", never "-0"), others in Python's shortest round-trip form ("0.5", "-1.25")."""
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"virtual offset value {value!r} is not finite")
    if value == int(value):
        return str(int(value))
    return repr(value)


def offset_folder(offset: np.ndarray | tuple[float, ...]) -> str:
    """DistillNeRF's folder of a view at offset (6,) x, y, z, pitch, yaw, roll:
    `samples_1_0_0_0_0_0` for 1 m to the right."""
    values = np.asarray(offset, dtype=np.float64).reshape(-1)
    if values.shape != (6,):
        raise ValueError(f"virtual offset has {values.size} values, expected 6")
    return "samples_" + "_".join(format_offset_value(v) for v in values)


def distillnerf_path(source_file: str, folder: str, kind: str, suffix: str | None) -> str | None:
    """Relative path of an output for the image `source_file` (relative to the dataroot,
    `samples/<CAM>/<stem>.jpg`): `<folder>/<kind>/<CAM>/<stem><suffix>` (suffix None keeps
    the image's own extension); None when the image is not a keyframe under `samples/`."""
    parts = PurePosixPath(source_file.replace(os.sep, "/")).parts
    if len(parts) != 3 or parts[0] != "samples":
        return None
    name = parts[2] if suffix is None else PurePosixPath(parts[2]).stem + suffix
    return f"{folder}/{kind}/{parts[1]}/{name}"


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through a temporary sibling and a rename: readers and a killed export
    see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_npy(path: Path, array: np.ndarray) -> None:
    """`np.save` atomically, to exactly `path` (no suffix appended)."""
    write_atomic(path, lambda handle: np.save(handle, array, allow_pickle=False))


def save_jpeg(path: Path, rgb: np.ndarray) -> None:
    """An (H, W, 3) uint8 RGB image as a JPEG, atomically."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(
        buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    write_atomic(path, lambda handle: handle.write(buffer.getvalue()))


def sky_mask(depth: np.ndarray, opacity: np.ndarray | None, sky_opacity: float) -> np.ndarray:
    """(H, W) uint8, 1 = sky: where depth (H, W) is 0 (nothing seen) or opacity (H, W)
    is below `sky_opacity`."""
    sky = ~(np.asarray(depth, dtype=np.float32) > 0)
    if opacity is not None:
        sky |= np.asarray(opacity, dtype=np.float32) < sky_opacity
    return sky.astype(np.uint8)


def check_values(scene_id: str, array: str, index: int, data: np.ndarray, low: float,
                 high: float) -> None:
    """Refuse to export values no teacher writes (NaN, infinite, out of [low, high]): they
    come from damaged bytes, and DistillNeRF would train on them."""
    values = np.asarray(data, dtype=np.float32)
    bad = ~np.isfinite(values) | (values < low) | (values > high)
    if bad.any():
        raise StoreReadError(f"scene {scene_id!r}, array {array}, view {index}: {int(bad.sum())} "
                             f"values that are NaN, infinite or outside [{low}, {high}]: the "
                             "store is damaged (run `distillprep validate --deep`); nothing "
                             "more was exported")


def _check_teacher_arrays(store: Store, scene_id: str) -> None:
    present = set(store.scene(scene_id).array_names())
    missing = [name for name in TEACHER_ARRAYS if name not in present]
    if len(missing) == len(TEACHER_ARRAYS):
        raise StoreError(f"scene {scene_id!r} in store {store.location.location} has no "
                         "teacher outputs (no teacher_depth, no virtual views): run "
                         "`distillprep teacher render` first")
    if missing:
        raise StoreError(f"scene {scene_id!r} in store {store.location.location}: teacher "
                         f"outputs incomplete, missing arrays {missing}: run "
                         "`distillprep teacher render` again")


def _pose_matches_folder(source_c2w: np.ndarray, view_c2w: np.ndarray,
                         offset: np.ndarray) -> bool:
    """Whether a virtual pose is the source pose moved by the offset's translation in the
    source camera frame with the same orientation, as DistillNeRF builds it (only offsets
    without rotation are named by DistillNeRF; a rotated one never matches)."""
    if np.any(offset[3:] != 0):
        return False
    centre = source_c2w[:3, 3] + source_c2w[:3, :3] @ offset[:3]
    return bool(np.all(np.abs(view_c2w[:3, 3] - centre) <= POSE_TOLERANCE)
                and np.all(np.abs(view_c2w[:3, :3] - source_c2w[:3, :3]) <= POSE_TOLERANCE))


def _export_scene(store: Store, scene_id: str, out: Path, include_moved: bool,
                  sky_opacity: float, report: ExportReport, seen: set[str]) -> None:
    view = store.scene(scene_id)
    arrays = {name: view[name] for name in view.array_names()}
    rows = store.manifest([scene_id]).select(["sample_index", "source_file"]).to_pylist()
    sources = {int(r["sample_index"]): str(r["source_file"]) for r in rows}

    def source_of(index: int) -> str:
        if index not in sources:
            raise StoreError(f"scene {scene_id!r}: sample {index} has no manifest row, so its "
                             "image name is unknown")
        return sources[index]

    def write_view(kind: Literal["real", "virtual"], index: int, source: str, folder: str,
                   depth: np.ndarray, opacity: np.ndarray | None,
                   rgb: np.ndarray | None) -> bool:
        depth_rel = distillnerf_path(source, folder, "depths", ".npy")
        if depth_rel is None:
            report.skipped.append(SkippedView(scene_id, kind, index, folder, "not-keyframe",
                                              f"image {source} is not a keyframe under "
                                              "samples/; DistillNeRF reads keyframes only"))
            return False
        if depth_rel in seen:
            report.skipped.append(SkippedView(scene_id, kind, index, folder, "duplicate",
                                              f"{depth_rel} was already written by an "
                                              "earlier view"))
            return False
        seen.add(depth_rel)
        prefix = "teacher" if kind == "real" else "virtual"
        check_values(scene_id, f"{prefix}_depth", index, depth, 0.0, np.inf)
        if opacity is not None:
            check_values(scene_id, f"{prefix}_opacity", index, opacity, 0.0, 1.0)
        outputs = [(depth_rel, lambda p: save_npy(p, depth.astype(np.float32))),
                   (distillnerf_path(source, folder, "gt_sky_masks", ".npy"),
                    lambda p: save_npy(p, sky_mask(depth, opacity, sky_opacity)))]
        if rgb is not None:
            outputs.append((distillnerf_path(source, folder, "rgbs", None),
                            lambda p: save_jpeg(p, rgb)))
        for rel, write in outputs:  # rel is made of the manifest's source_file
            write(inside_root(out, rel, table=f"{store.location.location} manifest",
                              record=f"{kind} view {index} of image {source}",
                              scene=scene_id))
            report.files.append(rel)
        return True

    depth, opacity = arrays["teacher_depth"], arrays.get("teacher_opacity")
    for index in range(depth.shape[0]):
        if write_view("real", index, source_of(index), REAL_FOLDER, depth[index],
                      None if opacity is None else opacity[index], None):
            report.real_views += 1

    source_sample = arrays["virtual_source_sample"][...]
    offsets = arrays["virtual_offset"][...]
    shifts = arrays["virtual_shift"][...]
    poses = arrays["virtual_cam_to_world"][...]
    cam_to_world = arrays["cam_to_world"][...]
    v_rgb, v_depth = arrays["virtual_rgb"], arrays["virtual_depth"]
    v_opacity = arrays.get("virtual_opacity")
    real_hw, virtual_hw = tuple(depth.shape[1:]), tuple(v_depth.shape[1:])
    if len(source_sample) and virtual_hw != real_hw:
        report.warnings.append(
            f"scene {scene_id!r}: virtual depth is {virtual_hw[1]}x{virtual_hw[0]} but "
            f"real-view depth is {real_hw[1]}x{real_hw[0]}; DistillNeRF's "
            "LoadVirtualImagesFromFiles stacks both and needs one size")
    for view in range(len(source_sample)):
        src, offset, shift = int(source_sample[view]), offsets[view], float(shifts[view])
        folder = offset_folder(offset)
        if shift > 0 or not _pose_matches_folder(cam_to_world[src], poses[view], offset):
            reason = "moved" if shift > 0 else "off-pose"
            detail = (f"moved {shift:.3g} m back out of solid geometry" if shift > 0 else
                      "its pose is not the one its folder name gives (jittered or rotated)")
            if not include_moved:
                report.skipped.append(SkippedView(
                    scene_id, "virtual", view, folder, reason,
                    f"{detail}; DistillNeRF derives the pose from the folder name "
                    "(include_moved writes it anyway)"))
                continue
        if write_view("virtual", view, source_of(src), folder, v_depth[view],
                      None if v_opacity is None else v_opacity[view], v_rgb[view]):
            report.virtual_views += 1


def export_distillnerf(store: Store | str | Path, out_dir: str | Path,
                       scene_ids: list[str] | None = None, include_moved: bool = False,
                       sky_opacity: float = 0.5, waymo_set: str = "train") -> ExportReport:
    """Write the teacher outputs of `store` (a Store, or a path / URL to open) under
    out_dir in DistillNeRF's layout (module docstring; a Waymo store in its Waymo loader's,
    `export_distillnerf_waymo`); all committed scenes, or those named. Every scene is
    checked for teacher arrays before anything is written.

    include_moved: also write virtual views that do not sit where their folder name says
    (moved out of solid geometry, or jittered); they are skipped and reported otherwise.
    sky_opacity: teacher opacity below which a pixel counts as sky in gt_sky_masks.
    waymo_set: the info set (train or val) a Waymo store's scenes are written as.
    """
    if not isinstance(store, Store):
        store = open_store(store)
    if store.attrs.dataset == "waymo":  # its own loader, its own layout
        from .export_distillnerf_waymo import export_distillnerf_waymo

        return export_distillnerf_waymo(store, out_dir, scene_ids, sky_opacity, waymo_set)
    if store.attrs.dataset != "nuscenes":
        raise StoreError(f"store {store.location.location} holds {store.attrs.dataset} "
                         "scenes: DistillNeRF's loaders read nuScenes and Waymo only")
    scene_ids = store.scenes() if scene_ids is None else list(scene_ids)
    for scene_id in scene_ids:
        _check_teacher_arrays(store, scene_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out_dir=str(out))
    seen: set[str] = set()
    for scene_id in scene_ids:
        _export_scene(store, scene_id, out, include_moved, sky_opacity, report, seen)
        report.scenes.append(scene_id)
    return report
