"""Ingest: the first pipeline step. Writes every scene's real-camera images (the source
JPEG bytes), intrinsics, poses, timestamps and LiDAR-projected sparse depth into a store,
scene by scene; finished scenes are skipped unless forced."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from distillprep.scenes.errors import SceneDataError, SceneError
from distillprep.scenes.model import Scene
from distillprep.scenes.projection import sparse_depth_map

from .attrs import CommitRecord, SceneAttrs, SourceFile, StageRecord, config_hash
from .manifest import SAMPLE_ARRAYS, depth_stats
from .spec import ARRAYS, FEATURE_FAMILIES
from .store import Store, chunk_layout, package_version


@dataclass
class IngestReport:
    """What one `ingest` run did."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"written": self.written, "skipped": self.skipped, "failed": self.failed}


def _file_record(path: str, dataroot: str, data: bytes | None = None) -> SourceFile:
    data = Path(path).read_bytes() if data is None else data
    return SourceFile(path=os.path.relpath(path, dataroot), size=len(data),
                      sha256=hashlib.sha256(data).hexdigest())


def scene_payload(scene: Scene) -> tuple[dict[str, np.ndarray], dict[str, int], pa.Table,
                                         list[SourceFile]]:
    """Arrays, dimension sizes, manifest rows and source files of a scene's ingest stage."""
    samples = scene.camera_samples
    if not samples:
        raise SceneDataError(scene.scene_id, None, "scene has no camera samples")
    width, height = samples[0].width, samples[0].height
    frame_of = {id(s): f.index for f in scene.frames for s in f.cameras.values()}
    cameras = list(scene.camera_names)
    jpegs, depths, sources = [], [], []
    lidar_cache: dict[int, np.ndarray] = {}
    for sample in samples:
        if (sample.width, sample.height) != (width, height):
            raise SceneDataError(scene.scene_id, sample.source_file,
                                 f"image is {sample.width}x{sample.height}; the scene's other "
                                 f"images are {width}x{height}")
        data = Path(sample.source_file).read_bytes()
        with Image.open(io.BytesIO(data)) as image:  # header only, from the bytes read
            if image.size != (width, height) or image.format != "JPEG":
                raise SceneDataError(scene.scene_id, sample.source_file,
                                     f"expected a {width}x{height} JPEG, found {image.format} "
                                     f"{image.size[0]}x{image.size[1]}")
        jpegs.append(data)
        sources.append(_file_record(sample.source_file, scene.dataroot, data))
        frame = frame_of[id(sample)]
        if frame not in lidar_cache:
            lidar_cache[frame] = scene.frames[frame].lidar_points().points
        depths.append(sparse_depth_map(sample, lidar_cache[frame]))
    for frame in scene.frames:
        sources.extend(_file_record(s.source_file, scene.dataroot) for s in frame.lidar)
    longest = max(len(j) for j in jpegs)
    jpeg_array = np.zeros((len(samples), longest), dtype=np.uint8)
    for i, data in enumerate(jpegs):
        jpeg_array[i, : len(data)] = np.frombuffer(data, dtype=np.uint8)
    depth = np.stack(depths).astype(np.float16)
    arrays = {
        "rgb_jpeg": jpeg_array,
        "rgb_jpeg_nbytes": np.array([len(j) for j in jpegs], dtype=np.int64),
        "lidar_depth": depth,
        "intrinsics": np.stack([s.intrinsics for s in samples]).astype(np.float64),
        "cam_to_world": np.stack([s.cam_to_world for s in samples]).astype(np.float64),
        "timestamp_us": np.array([s.timestamp_us for s in samples], dtype=np.int64),
        "camera_index": np.array([cameras.index(s.camera) for s in samples], dtype=np.int16),
        "frame_index": np.array([frame_of[id(s)] for s in samples], dtype=np.int32),
        "ego_to_world": np.stack([f.ego_to_world for f in scene.frames]).astype(np.float64),
        "frame_timestamp_us": np.array([f.timestamp_us for f in scene.frames], dtype=np.int64),
    }
    dims = {"N": len(samples), "F": len(scene.frames), "H": height, "W": width, "J": longest}
    _, shards = chunk_layout(ARRAYS["rgb_jpeg"], jpeg_array.shape)
    stats = [depth_stats(d) for d in depth]
    rows = {
        "scene_id": [scene.scene_id] * len(samples),
        "sample_index": list(range(len(samples))),
        "frame_index": arrays["frame_index"].tolist(),
        "camera": [s.camera for s in samples],
        "timestamp_us": arrays["timestamp_us"].tolist(),
        "is_keyframe": [s.is_keyframe for s in samples],
        "width": [width] * len(samples),
        "height": [height] * len(samples),
        "source_file": [os.path.relpath(s.source_file, scene.dataroot) for s in samples],
        "group": [scene.scene_id] * len(samples),
        "chunk_index": list(range(len(samples))),
        "shard_index": [i // shards[0] for i in range(len(samples))],
        "lidar_depth_min": [s[0] for s in stats],
        "lidar_depth_max": [s[1] for s in stats],
        "lidar_depth_valid_fraction": [s[2] for s in stats],
        **{f"{family}_feature_norm_mean": [None] * len(samples) for family in FEATURE_FAMILIES},
        "teacher_psnr": [None] * len(samples),
        "teacher_lidar_abs_rel": [None] * len(samples),
        "teacher_heldout": [None] * len(samples),
    }
    for name in SAMPLE_ARRAYS:
        rows[f"has_{name}"] = [name in arrays] * len(samples)
    return arrays, dims, pa.table(rows), sources


def ingest_scene(store: Store, scene: Scene, config: dict) -> CommitRecord:
    """Write one scene's ingest arrays and commit them."""
    start = time.perf_counter()
    arrays, dims, manifest, sources = scene_payload(scene)
    record = StageRecord(stage="ingest", config=config, config_hash=config_hash(config),
                         package_version=package_version(), finished_at=datetime.now(UTC),
                         wall_time_s=time.perf_counter() - start,
                         extra={"dataroot": scene.dataroot})
    attrs = SceneAttrs(scene_id=scene.scene_id, dataset=scene.dataset,
                       dataset_version=str(scene.metadata.get("version", "")),
                       created=datetime.now(UTC),
                       cameras=list(scene.camera_names), width=dims["W"], height=dims["H"],
                       num_samples=dims["N"], num_frames=dims["F"], source_files=sources,
                       stages={"ingest": record})
    return store.write_scene(attrs, arrays, manifest, dims)


def ingest(store: Store, scenes: Iterable[Scene], config: dict, force: bool = False,
           progress: Callable[[Iterable], Iterable] | None = None) -> IngestReport:
    """Ingest scenes into `store`; committed scenes are skipped unless `force`."""
    report = IngestReport()
    done = set(store.scenes())
    scenes = list(scenes)
    for scene in progress(scenes) if progress else scenes:
        if scene.scene_id in done and not force:
            report.skipped.append(scene.scene_id)
            continue
        try:
            ingest_scene(store, scene, config)
        except SceneError as exc:
            report.failed[scene.scene_id] = str(exc)
            continue
        report.written.append(scene.scene_id)
    return report
