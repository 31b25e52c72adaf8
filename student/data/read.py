"""Reading a worker's frames: the arrays the fields need, one contiguous range per array
and read group (a run of frames of one block), decoded and resampled into samples.

Scenes are opened through `storage_schemas.reader.SceneReader` with exactly the arrays the
fields need, so nothing else is opened or read; a worker keeps a few scenes open (their
small tables are all it caches). A scene whose commits changed since the plan was built
is refused: the plan's frames and views describe the version it saw.
"""

from __future__ import annotations

import zlib
from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from distillprep.storage_schemas.reader import SceneReader
from distillprep.storage_schemas.store import Store, open_store
from distillprep.teachers.nerf.virtual import scaled_intrinsics

from .config import CAMERA_FIELDS, NEXT_FIELDS, VIRTUAL_FIELDS, VIRTUAL_TABLES, LoaderError
from .plan import FrameRef, Plan
from .resample import decode_rgb, resize_nearest, resize_rgb, resize_smooth, resize_sparse_depth

OPEN_SCENES = 4
"""Scenes a worker keeps open (a block never spans scenes: one is enough to stream)."""

_RESAMPLE = {"lidar_depth": resize_sparse_depth, "teacher_depth": resize_nearest,
             "virtual_depth": resize_nearest, "teacher_opacity": resize_smooth,
             "virtual_opacity": resize_smooth, "virtual_rgb": resize_rgb}


def virtual_pick(seed: int, epoch: int, frame: FrameRef, camera: int, count: int) -> int:
    """Which of a camera's `count` virtual views the frame gets with virtual="random":
    a function of (seed, epoch, scene, frame, camera) only, whoever reads it."""
    key = [seed, epoch, zlib.crc32(frame.scene_id.encode()), frame.frame_index, camera]
    return int(np.random.default_rng(key).integers(count))


class FrameReader:
    """Reads frames of a plan into samples (dicts of numpy arrays and scalars)."""

    def __init__(self, plan: Plan):
        self.plan, self.config = plan, plan.config
        self.arrays = self.config.store_arrays()
        self._stores: dict[int, Store] = {}
        self._scenes: OrderedDict[tuple[int, str], SceneReader] = OrderedDict()
        self.samples_read: Counter = Counter()
        """Array -> samples (or views) read: what a worker actually fetched."""

    def _scene(self, frame: FrameRef) -> SceneReader:
        key = (frame.store, frame.scene_id)
        if key in self._scenes:
            self._scenes.move_to_end(key)
            return self._scenes[key]
        if frame.store not in self._stores:
            self._stores[frame.store] = open_store(self.plan.locations[frame.store],
                                                   storage_options=self.plan.storage_options)
        reader = SceneReader(self._stores[frame.store], frame.scene_id, self.arrays)
        now = {s: r.content_sha256 for s, r in sorted(reader.view.commits.items())}
        if now != self.plan.commits[f"{frame.store}:{frame.scene_id}"]:
            raise LoaderError(f"store {self.plan.locations[frame.store]}, scene "
                              f"{frame.scene_id!r}: committed again since the loader's plan "
                              "was built (its stages now differ): build the dataset again")
        self._scenes[key] = reader
        while len(self._scenes) > OPEN_SCENES:
            self._scenes.popitem(last=False)
        return reader

    def read(self, frames: Sequence[FrameRef], epoch: int) -> list[dict[str, Any]]:
        """Samples of `frames` (all of one scene), each array read as one range."""
        scene = self._scene(frames[0])
        cams = len(self.plan.cameras)
        own = [a for f in self.config.camera_fields() for a in CAMERA_FIELDS[f]]
        nxt = [a for f in self.config.next_fields() for a in NEXT_FIELDS[f]]
        starts = [f.first_sample for f in frames]
        starts += [f.next_first_sample for f in frames if nxt]
        lo, hi = min(starts), max(starts) + cams
        names = tuple(n for n in dict.fromkeys(own + nxt) if n in scene.sample_arrays)
        block = scene.read_block(lo, hi, names) if names else {}
        for name in names:
            self.samples_read[name] += hi - lo
        picks = [self._views(f, epoch) for f in frames]
        views = self._read_views(scene, picks)
        return [self._sample(scene, f, block, lo, views, p)
                for f, p in zip(frames, picks, strict=True)]

    def _views(self, frame: FrameRef, epoch: int) -> list[list[int]]:
        """Per camera, the virtual views the sample gets (empty list: none)."""
        if not self.config.virtual_fields():
            return []
        if self.config.virtual == "all":
            return [list(v) for v in frame.views]
        return [[v[virtual_pick(self.config.seed, epoch, frame, c, len(v))]] if v else []
                for c, v in enumerate(frame.views)]

    def _read_views(self, scene: SceneReader, picks: list[list[list[int]]]) -> dict:
        wanted = sorted({v for p in picks for cam in p for v in cam})
        names = tuple(a for f in self.config.virtual_fields() for a in VIRTUAL_FIELDS[f])
        if not wanted or not names:
            return {}
        lo, hi = wanted[0], wanted[-1] + 1
        block = scene.read_block(lo, hi, names)
        for name in names:
            self.samples_read[name] += hi - lo
        return {name: {v: block[name][v - lo] for v in wanted} for name in names}

    def _sample(self, scene: SceneReader, frame: FrameRef, block: dict, lo: int,
                views: dict, picks: list[list[int]]) -> dict[str, Any]:
        size = self.config.resize
        cams = len(self.plan.cameras)
        own = range(frame.first_sample, frame.first_sample + cams)
        where = f"store {self.plan.locations[frame.store]}, scene {frame.scene_id!r}"
        sample: dict[str, Any] = {"scene_id": frame.scene_id, "frame_index": frame.frame_index,
                                  "timestamp_us": frame.timestamp_us,
                                  "sample_index": np.arange(frame.first_sample,
                                                            frame.first_sample + cams)}
        for field in self.config.fields:
            if field in ("rgb", "next_rgb"):
                rows = own if field == "rgb" else range(frame.next_first_sample,
                                                        frame.next_first_sample + cams)
                sample[field] = np.stack([decode_rgb(
                    block["rgb_jpeg"][i - lo], int(scene.jpeg_nbytes[i]), size,
                    f"{where}, sample {i}") for i in rows])
            elif field in ("intrinsics", "next_intrinsics"):
                first = frame.first_sample if field == "intrinsics" else frame.next_first_sample
                k = scene.tables["intrinsics"][first:first + cams]
                sample[field] = np.stack([self._scaled(m, scene.attrs.width,
                                                       scene.attrs.height) for m in k])
            elif field in ("cam_to_world", "next_cam_to_world"):
                first = frame.first_sample if field == "cam_to_world" else frame.next_first_sample
                sample[field] = scene.tables["cam_to_world"][first:first + cams]
            elif field in CAMERA_FIELDS:
                data = block[field][frame.first_sample - lo:frame.first_sample - lo + cams]
                resample = _RESAMPLE.get(field)
                # a copy: a view would keep the whole read block alive while it waits
                sample[field] = (np.stack([resample(d, size) for d in data]) if resample
                                 else np.array(data))
        if self.config.virtual_fields():
            sample.update(self._virtual(scene, views, picks))
        return sample

    def _scaled(self, k: np.ndarray, width: int, height: int) -> np.ndarray:
        if self.config.resize is None:
            return np.asarray(k, dtype=np.float64)
        w, h = self.config.resize
        return scaled_intrinsics(k, (w / width, h / height))

    def _virtual(self, scene: SceneReader, views: dict, picks: list[list[int]],
                 ) -> dict[str, np.ndarray]:
        """(C, K, ...) virtual fields, the padding slots zero and `virtual_valid` false."""
        slots, cams = self.plan.virtual_slots, len(self.plan.cameras)
        size = self.config.resize
        names = [a for f in self.config.virtual_fields() for a in VIRTUAL_FIELDS[f]]
        tables = [n for n in VIRTUAL_TABLES if n != "virtual_source_sample"]
        out = {"virtual_valid": np.zeros((cams, slots), bool)}
        for name in (*tables, *names):
            shape, dtype = self._view_shape(scene, name)
            out[name] = np.zeros((cams, slots, *shape), dtype)
        stored = _view_size(scene)
        for c, chosen in enumerate(picks):
            for s, v in enumerate(chosen):
                out["virtual_valid"][c, s] = True
                for name in tables:
                    value = scene.tables[name][v]
                    if name == "virtual_intrinsics" and size is not None and stored:
                        value = scaled_intrinsics(value, (size[0] / stored[1],
                                                          size[1] / stored[0]))
                    out[name][c, s] = value
                for name in names:
                    resample = _RESAMPLE.get(name)
                    out[name][c, s] = resample(views[name][v], size) if resample \
                        else views[name][v]
        return out

    def _view_shape(self, scene: SceneReader, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of one view of `name` as the loader yields it."""
        if name in scene.tables:
            return scene.tables[name].shape[1:], scene.tables[name].dtype
        array = scene.sample_arrays[name]
        shape = tuple(array.shape[1:])
        if self.config.resize is not None and name in _RESAMPLE:
            w, h = self.config.resize
            shape = (h, w, *shape[2:])
        return shape, np.dtype(array.dtype)


def _view_size(scene: SceneReader) -> tuple[int, int] | None:
    """(height, width) of the scene's stored virtual views, None when no image of them is
    read (their K then stays as stored)."""
    for name in ("virtual_rgb", "virtual_depth", "virtual_opacity"):
        if name in scene.sample_arrays:
            shape = scene.sample_arrays[name].shape
            return int(shape[1]), int(shape[2])
    return None
