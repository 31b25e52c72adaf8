"""Ingest: the first pipeline step, and the only one that reads the dataset. Writes every
scene's real-camera images (the source JPEG bytes), intrinsics, poses, timestamps,
LiDAR-projected sparse depth, and every LiDAR sweep's points with its own pose and time
into a store, scene by scene: everything a later stage needs, so that none of them reads
the dataroot again.

`ingest_scene` is the stage's job: idempotent (a scene committed with the same config and
code version is skipped unless forced) and reports which later stages a changed scene
made stale.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from PIL import Image

from distillprep.scenes.errors import (
    ConflictError,
    SceneDataError,
    SceneError,
    TransientError,
)
from distillprep.scenes.geometry import transform_points
from distillprep.scenes.model import Scene
from distillprep.scenes.projection import sparse_depth_map
from distillprep.scenes.sky_masks import sky_mask_file, with_sky_masks

from .attrs import CommitRecord, SceneAttrs, SourceFile, config_hash, content_fingerprint
from .errors import OutputsWouldGoStaleError, SceneSourceError, StoreError, ValueRuleError
from .layout import array_sha256, chunk_layout
from .manifest import SAMPLE_ARRAYS, STAGE_COLUMNS, depth_stats
from .provenance import IngestProvenance
from .spec import ARRAYS
from .store import Store, package_version
from .value_rules import ValueFinding, check_payload

CODE_VERSION = 1
"""Version of what ingest writes (bumped when its outputs change meaning)."""


@dataclass(frozen=True)
class IngestConfig:
    """How scenes are read into the store (its hash says whether a scene is done)."""

    dataset: str = "nuscenes"
    """The dataset reader (`scenes.datasets.READERS`)."""
    version: str = ""
    """The dataset's version, e.g. v1.0-mini (as the reader found it)."""
    sweeps: bool = False
    """Also ingest the frames between keyframes (camera and LiDAR sweeps): what a teacher
    fits on, as EmerNeRF does."""
    sky_masks: bool = False
    """Also ingest every image's sky mask from `{dataroot}/sky_masks` (`scenes.sky_masks`:
    a segmentation model's output; the teacher then takes the sky from them, not from the
    LiDAR). Every image of a scene must have one."""


@dataclass(frozen=True)
class IngestResult:
    """What `ingest_scene` did for one scene."""

    scene_id: str
    """The scene."""
    status: Literal["written", "skipped"]
    """written: committed now; skipped: already committed with this config."""
    commit: CommitRecord
    """The scene's current ingest commit."""
    stale_stages: list[str] = field(default_factory=list)
    """Later stages whose outputs the new version made stale (the content changed)."""
    wall_time_s: float = 0.0
    """Seconds this call took."""


@dataclass
class IngestReport:
    """What one `ingest` run over many scenes did."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    conflicts: dict[str, str] = field(default_factory=dict)
    """Scene -> message: another writer committed the scene first (theirs stands)."""
    stale: dict[str, list[str]] = field(default_factory=dict)
    """Scene -> later stages made stale by its new content."""

    def to_json(self) -> dict:
        return {"written": self.written, "skipped": self.skipped, "failed": self.failed,
                "conflicts": self.conflicts, "stale": self.stale}


def _file_record(path: str, dataroot: str, data: bytes | None = None) -> SourceFile:
    data = Path(path).read_bytes() if data is None else data
    return SourceFile(path=os.path.relpath(path, dataroot), size=len(data),
                      sha256=hashlib.sha256(data).hexdigest())


def _lidar_arrays(scene: Scene) -> tuple[dict[str, np.ndarray], list[str],
                                         dict[int, np.ndarray], list[SourceFile]]:
    """The scene's LiDAR sweeps as store arrays, the LiDAR names, each frame's returns in
    world (P_f, 3) for the sparse depth maps, and the sweep files as sources."""
    sensors: list[str] = []
    points, intensity, counts, poses, times, frames, keys, index = [], [], [], [], [], [], [], []
    world: dict[int, list[np.ndarray]] = {}
    sources = []
    for frame in scene.frames:
        world[frame.index] = []
        for sweep in frame.lidar:
            local, strength = sweep.loader()
            local = np.asarray(local, dtype=np.float32).reshape(-1, 3)
            if sweep.sensor not in sensors:
                sensors.append(sweep.sensor)
            points.append(local)
            intensity.append(np.asarray(strength, dtype=np.float32).reshape(-1))
            counts.append(len(local))
            poses.append(sweep.sensor_to_world)
            times.append(sweep.timestamp_us)
            frames.append(frame.index)
            keys.append(sweep.is_keyframe)
            index.append(sensors.index(sweep.sensor))
            world[frame.index].append(transform_points(sweep.sensor_to_world,
                                                       local.astype(np.float64)))
            sources.append(_file_record(sweep.source_file, scene.dataroot,
                                        local.tobytes() + intensity[-1].tobytes()
                                        if sweep.contained else None))
    arrays = {
        "lidar_points": np.concatenate(points) if points else np.zeros((0, 3), np.float32),
        "lidar_intensity": (np.concatenate(intensity) if intensity
                            else np.zeros(0, np.float32)),
        "lidar_sweep_points": np.array(counts, dtype=np.int64),
        "lidar_sensor_to_world": (np.stack(poses).astype(np.float64) if poses
                                  else np.zeros((0, 4, 4))),
        "lidar_timestamp_us": np.array(times, dtype=np.int64),
        "lidar_frame_index": np.array(frames, dtype=np.int32),
        "lidar_is_keyframe": np.array(keys, dtype=np.uint8),
        "lidar_sensor_index": np.array(index, dtype=np.int16),
    }
    returns = {f: np.concatenate(parts) if parts else np.zeros((0, 3))
               for f, parts in world.items()}
    return arrays, sensors, returns, sources


def scene_payload(scene: Scene) -> tuple[dict[str, np.ndarray], dict[str, int], pa.Table,
                                         list[SourceFile], list[str]]:
    """Arrays, dimension sizes, manifest rows, source files and LiDAR names of a scene's
    ingest stage."""
    samples = scene.camera_samples
    if not samples:
        raise SceneDataError(scene.scene_id, None, "scene has no camera samples")
    width, height = samples[0].width, samples[0].height
    frame_of = {id(s): f.index for f in scene.frames for s in f.cameras.values()}
    cameras = list(scene.camera_names)
    lidar, lidars, returns, lidar_sources = _lidar_arrays(scene)
    jpegs, depths, skies, sources = [], [], [], []
    for sample in samples:
        if (sample.width, sample.height) != (width, height):
            raise SceneDataError(scene.scene_id, sample.source_file,
                                 f"image is {sample.width}x{sample.height}; the scene's other "
                                 f"images are {width}x{height}")
        data = sample.load_jpeg()
        with Image.open(io.BytesIO(data)) as image:  # header only, from the bytes read
            if image.size != (width, height) or image.format != "JPEG":
                raise SceneDataError(scene.scene_id, sample.source_file,
                                     f"expected a {width}x{height} JPEG, found {image.format} "
                                     f"{image.size[0]}x{image.size[1]}")
        jpegs.append(data)
        sources.append(_file_record(sample.source_file, scene.dataroot, data))
        depths.append(sparse_depth_map(sample, returns[frame_of[id(sample)]]))
        if sample.sky is not None:
            skies.append(sample.load_sky())
            sources.append(_file_record(str(sky_mask_file(scene.dataroot, sample.source_file)),
                                        scene.dataroot))
    if skies and len(skies) != len(samples):
        raise SceneDataError(scene.scene_id, None, f"{len(skies)} of the scene's "
                             f"{len(samples)} images have sky masks: all or none")
    sources.extend(lidar_sources)
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
        "frame_is_keyframe": np.array([f.is_keyframe for f in scene.frames], dtype=np.uint8),
        **lidar,
    }
    if skies:
        arrays["sky_mask"] = np.stack(skies).astype(np.uint8)
    dims = {"N": len(samples), "F": len(scene.frames), "H": height, "W": width, "J": longest,
            "S": len(lidar["lidar_sweep_points"]), "P": len(lidar["lidar_points"])}
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
    }
    for name in SAMPLE_ARRAYS:
        if f"has_{name}" in STAGE_COLUMNS["ingest"]:
            rows[f"has_{name}"] = [name in arrays] * len(samples)
    return arrays, dims, pa.table(rows), sources, lidars


def _row_source(scene: Scene, arrays: dict[str, np.ndarray], finding: ValueFinding) -> str:
    """The source file of a finding's first offending row: the camera sample's for a
    per-sample array, the sweep's for a LiDAR one, the reference sensor's for a frame
    (nuScenes: its LiDAR keyframe, else its first camera); the dataroot when the finding
    names no row."""
    axis = ARRAYS[finding.array].shape[0]
    if not finding.rows or axis not in ("N", "F", "S", "P"):
        return scene.dataroot
    row = finding.rows[0]
    if axis == "N":
        return scene.camera_samples[row].source_file
    if axis == "F":
        frame = scene.frames[row]
        if frame.lidar:
            return frame.lidar[0].source_file
        return next(frame.cameras[c] for c in scene.camera_names
                    if c in frame.cameras).source_file
    if axis == "P":  # a point: the sweep whose rows hold it
        row = int(np.searchsorted(np.cumsum(arrays["lidar_sweep_points"]), row, "right"))
    return [s for f in scene.frames for s in f.lidar][row].source_file


def check_scene_payload(scene: Scene, arrays: dict[str, np.ndarray], dims: dict[str, int],
                        lidars: list[str]) -> None:
    """Refuse a scene's ingest payload that breaks a value rule (`value_rules`, what
    validate --deep applies): ValueRuleError naming the first broken rule, the scene and
    the source file of its first offending row, and counting the others."""
    found = check_payload(arrays, dims, len(scene.camera_names), len(lidars))
    if found:
        first = found[0]
        more = "; ".join(f"[{f.rule}] {f.array}" for f in found[1:])
        raise ValueRuleError(scene.scene_id, _row_source(scene, arrays, first), first.rule,
                             first.array, first.message + (f" (also broken: {more})"
                                                           if more else ""))


def settings_hash(config: IngestConfig) -> str:
    """The hash that says whether a scene is done: of the config, less `sky_masks` when
    off (added later: scenes committed before it stay done)."""
    settings = asdict(config)
    if not settings["sky_masks"]:
        del settings["sky_masks"]
    return config_hash(settings)


def source_id(scene: Scene) -> str:
    """The dataset's own identity of a scene (nuScenes: its scene token), which the store
    keeps so that two scenes of one id from different sources are told apart."""
    return f"{scene.dataset}:{scene.metadata.get('scene_token', scene.scene_id)}"


def ingest_committed(store: Store, scene_id: str, config: IngestConfig,
                     dataroot: str | Path) -> CommitRecord | None:
    """The scene's ingest commit when it was read from `dataroot` with this config and
    code version (nothing to ingest again), else None; needs no dataset read."""
    head = store.head(scene_id, "ingest")
    if head is None:
        return None
    record = head.provenance
    same_root = Path(record.dataroot).resolve() == Path(dataroot).resolve()
    if (same_root and record.config_hash == settings_hash(config)
            and record.code_version == CODE_VERSION):
        return head
    return None


def ingest_scene(store: Store, scene: Scene, config: IngestConfig, force: bool = False,
                 replace_outputs: bool = False) -> IngestResult:
    """Write one scene's ingest stage and commit it; a scene already committed with the
    same config and code version is skipped unless `force`.

    Refused (nothing written): a scene whose id the store holds for a scene of another
    source, unless `force` (SceneSourceError); new content for a scene that has later
    stages' outputs, which would go stale, unless `replace_outputs`
    (OutputsWouldGoStaleError). Raises CommitConflictError when another writer committed
    the scene meanwhile."""
    start = time.perf_counter()
    settings = asdict(config)
    ours = source_id(scene)
    head = store.head(scene.scene_id, "ingest")
    if head is not None:
        theirs = head.provenance.source_id
        if theirs and theirs != ours and not force:
            raise SceneSourceError(
                f"scene {scene.scene_id!r}: the store holds the scene {theirs} under this id "
                f"(read from {head.provenance.dataroot}), the dataset's is {ours} (in "
                f"{scene.dataroot}): another scene of the same id; pass --force to replace it")
        if (not force and head.provenance.config_hash == settings_hash(config)
                and head.provenance.code_version == CODE_VERSION):
            return IngestResult(scene.scene_id, "skipped", head)
    before = store.scene(scene.scene_id) if head is not None else None
    if config.sky_masks:
        scene = with_sky_masks(scene)
    arrays, dims, manifest, sources, lidars = scene_payload(scene)
    check_scene_payload(scene, arrays, dims, lidars)  # nothing validate would fail commits
    later = sorted(s for s in (before.commits if before else {}) if s != "ingest")
    if later and not replace_outputs and before.fingerprint != content_fingerprint(
            {name: array_sha256(data) for name, data in arrays.items()}):
        raise OutputsWouldGoStaleError(
            f"scene {scene.scene_id!r}: the dataset's version differs from the one in the "
            f"store, from which its {', '.join(later)} outputs were made; ingesting it makes "
            "them stale (to be made again): pass --replace-outputs to do it anyway")
    provenance = IngestProvenance(
        stage="ingest", config=settings, config_hash=settings_hash(config),
        code_version=CODE_VERSION, package_version=package_version(),
        finished_at=datetime.now(UTC), wall_time_s=time.perf_counter() - start,
        reader=config.dataset, dataroot=scene.dataroot, sweeps=config.sweeps, source_id=ours)
    attrs = SceneAttrs(scene_id=scene.scene_id, dataset=scene.dataset,
                       dataset_version=str(scene.metadata.get("version", config.version)),
                       created=datetime.now(UTC), cameras=list(scene.camera_names),
                       lidars=lidars, width=dims["W"], height=dims["H"],
                       num_samples=dims["N"], num_frames=dims["F"], source_files=sources)
    record = store.write_scene(attrs, arrays, manifest, provenance,
                               expect_sequence=head.sequence if head else 0)
    stale = []
    if before is not None:
        stale = sorted(set(before.commits) - set(store.scene(scene.scene_id).commits))
    return IngestResult(scene.scene_id, "written", record, stale, time.perf_counter() - start)


def ingest(store: Store, scenes: Iterable[Scene], config: IngestConfig, force: bool = False,
           replace_outputs: bool = False,
           progress: Callable[[Iterable], Iterable] | None = None) -> IngestReport:
    """Ingest scenes into `store`; committed scenes are skipped unless `force`. A scene
    that fails (bad data, a refusal) is reported in `failed`, one that another writer
    committed first in `conflicts`, and the others go on; a transient I/O error (a full
    disk: StoreIOError) ends the run, raised."""
    report = IngestReport()
    scenes = list(scenes)
    seen: dict[str, str] = {}
    for scene in progress(scenes) if progress else scenes:
        ours, first = source_id(scene), seen.get(scene.scene_id)
        if first is not None:
            report.failed[scene.scene_id] = (f"scene {scene.scene_id!r}: two scenes of this id "
                                             f"in one run ({first} and {ours}); a scene id "
                                             "must name one scene")
            continue
        seen[scene.scene_id] = ours
        try:
            result = ingest_scene(store, scene, config, force, replace_outputs)
        except ConflictError as exc:
            report.conflicts[scene.scene_id] = str(exc)
            continue
        except TransientError:
            raise  # I/O, a full disk: the next scenes would fail alike (exit 3, retryable)
        except (SceneError, StoreError) as exc:
            report.failed[scene.scene_id] = str(exc)
            continue
        (report.written if result.status == "written" else report.skipped).append(
            scene.scene_id)
        if result.stale_stages:
            report.stale[scene.scene_id] = result.stale_stages
    return report
