"""What a stage commit costs, for `make bench`: bytes written and peak memory of a teacher
render commit and of a feature commit on the bench's scene, each against the size of that
stage's own arrays (a stage writes only its own arrays: the goal is <= 1.1; before schema
3 every commit rewrote the whole scene, `whole_scene_ratio` says how much that was).

Bytes written are the process's `wchar` (bytes handed to write calls, /proc/self/io);
peak memory is the resident high-water mark (reset through /proc/self/clear_refs before
the commit, after handing freed heap back with malloc_trim so that the commit cannot hide
in pages already resident) above the resident size before it. Linux (glibc) only, as
these machines are.
"""

from __future__ import annotations

import ctypes
import gc
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from store_helpers import feature_record, teacher_record

from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.scenes.synthetic.truth import load_ground_truth_depth
from distillprep.storage_schemas.ingest import IngestConfig, ingest
from distillprep.storage_schemas.store import create_store


def _io_written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _measure(commit) -> tuple[int, int]:
    """(bytes written, peak resident bytes above the start) of commit()."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system: a clean start
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts here
    rss, written = _status_kb("VmRSS"), _io_written()
    commit()
    return _io_written() - written, (_status_kb("VmHWM") - rss) * 1024


def _teacher_arrays(dataset: Path, scene) -> dict[str, np.ndarray]:
    """Teacher-sized arrays with real content: the generator's exact depth stands in for
    the teacher's depth (full resolution), the camera images for 3 virtual views each."""
    samples = scene.camera_samples
    depth = np.stack([load_ground_truth_depth(dataset, s.source_file)
                      for s in samples]).astype(np.float16)
    rgb = np.stack([np.asarray(Image.open(s.source_file).convert("RGB")) for s in samples])
    views = np.repeat(np.arange(len(samples)), 3)
    k = np.stack([samples[i].intrinsics for i in views])
    poses = np.stack([samples[i].cam_to_world for i in views])
    return {"teacher_depth": depth, "teacher_opacity": (depth > 0).astype(np.float16),
            "virtual_rgb": rgb[views], "virtual_depth": depth[views],
            "virtual_opacity": (depth[views] > 0).astype(np.float16),
            "virtual_intrinsics": k, "virtual_cam_to_world": poses,
            "virtual_source_sample": views.astype(np.int32),
            "virtual_offset": np.tile([1.0, 0, 0, 0, 0, 0], (len(views), 1)),
            "virtual_shift": np.zeros(len(views), np.float32)}


def _feature_arrays(n: int, views: int, seed: int = 0) -> dict[str, np.ndarray]:
    """PCA-64 DINOv2-sized features of a 644-px-wide input (46 x 26 patches)."""
    rng = np.random.default_rng(seed)
    return {"dino_features": rng.normal(size=(n, 64, 26, 46)).astype(np.float16),
            "dino_virtual_features": rng.normal(size=(views, 64, 13, 23)).astype(np.float16),
            "dino_pca_basis": rng.normal(size=(64, 768)).astype(np.float32),
            "dino_pca_mean": rng.normal(size=768).astype(np.float32),
            "dino_pca_explained_variance": np.sort(rng.uniform(0, 1, 64))[::-1].astype(
                np.float32)}


def bench_stage_commits(dataset: Path) -> None:
    read = read_nuscenes(dataset)
    scene = read.scenes[0]
    with tempfile.TemporaryDirectory(dir=dataset.parent) as tmp:
        store = create_store(Path(tmp) / "commit.zarr", "nuscenes", read.version)
        ingest(store, [scene], IngestConfig("nuscenes", read.version))
        teacher = _teacher_arrays(dataset, scene)
        n = len(scene.camera_samples)
        stages = (("teacher", teacher, lambda: teacher_record(store, scene.scene_id)),
                  ("dino_features", _feature_arrays(n, len(teacher["virtual_rgb"])),
                   lambda: feature_record(store, scene.scene_id, "dino")))
        for stage, arrays, provenance in stages:
            made = provenance()
            written, peak = _measure(lambda arrays=arrays, made=made: store.commit_stage(
                scene.scene_id, made, arrays))
            view = store.scene(scene.scene_id)
            own = sum(r.stored_bytes for r in view.commits[stage].arrays.values())
            raw = sum(a.nbytes for a in arrays.values())
            scene_bytes = sum(r.stored_bytes for c in view.commits.values()
                              for r in c.arrays.values())
            print(f"stage_commit.{stage}.stored_mb: {own / 1e6:.1f}")
            print(f"stage_commit.{stage}.bytes_written_ratio_to_own_arrays: {written / own:.3f}")
            print(f"stage_commit.{stage}.whole_scene_ratio: {scene_bytes / own:.2f}")
            print(f"stage_commit.{stage}.peak_memory_ratio_to_own_arrays_raw: "
                  f"{peak / raw:.2f}")
