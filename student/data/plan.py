"""The loader's plan: which frames of which stores it serves, grouped into read blocks.

Built once, at the start, from the stores' commits, manifests and array metadata only (no
sample data is read), so that every problem shows before training starts: an asked-for
array a scene lacks is an error naming the store, the scene, the array and the command
that makes it. Frames the filters leave out are counted by reason.

A block is a run of consecutive frames of one scene whose camera samples lie in one shard
of the fields' arrays (or `block_frames` frames): the unit the epoch order shuffles and
a worker reads sequentially.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from distillprep.storage_schemas.manifest import SAMPLE_ARRAYS
from distillprep.storage_schemas.scene_view import SceneView
from distillprep.storage_schemas.store import Store, open_store

from .config import FIELDS, LoaderConfig, LoaderConfigError, LoaderError


@dataclass(frozen=True)
class FrameRef:
    """One frame the loader serves: its camera samples are first_sample .. + C - 1."""

    store: int
    """Index of the store in `Plan.locations`."""
    scene_id: str
    frame_index: int
    first_sample: int
    timestamp_us: int
    next_first_sample: int | None
    """First camera sample of frame f + 1 (None when next-frame fields are not asked)."""
    views: tuple[tuple[int, ...], ...] = ()
    """Per camera, the indices of its virtual views (empty when none are asked)."""


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs to read its share (picklable: sent to each worker)."""

    locations: tuple[str, ...]
    storage_options: dict
    config: LoaderConfig
    blocks: tuple[tuple[FrameRef, ...], ...]
    cameras: tuple[str, ...]
    excluded: dict[str, int] = field(default_factory=dict)
    """Reason -> frames left out."""
    virtual_slots: int = 0
    """K: virtual views per camera in a sample (0: none asked)."""
    commits: dict[str, dict[str, str]] = field(default_factory=dict)
    """"<store index>:<scene id>" -> stage -> content fingerprint of the commit planned
    from (a worker refuses a scene committed again since)."""
    fingerprint: str = ""
    """SHA-256 of the stores' commits and the config: a resume state names it."""

    @property
    def num_frames(self) -> int:
        return sum(len(b) for b in self.blocks)

    def scene_ids(self) -> list[str]:
        return sorted({f.scene_id for block in self.blocks for f in block})


def val_side(scene_id: str, config: LoaderConfig) -> bool:
    """Whether a scene is on the validation side of the split."""
    if config.val_scenes is not None:
        return scene_id in config.val_scenes
    digest = hashlib.sha256(scene_id.encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64 < config.val_fraction


def _frame_ok(rows: dict[str, list], picks: list[int], config: LoaderConfig,
              needs: tuple[str, ...]) -> str | None:
    """Why a frame (its cameras' manifest rows `picks`) is left out, or None."""
    for name in needs:
        if not all(rows[f"has_{name}"][i] for i in picks):
            return f"no {name} for every camera"
    if config.keyframes_only and not all(rows["is_keyframe"][i] for i in picks):
        return "not a keyframe"
    if config.exclude_teacher_heldout and any(rows["teacher_heldout"][i] for i in picks):
        return "held out by the teacher"
    checks = (("teacher_psnr", config.min_teacher_psnr, lambda v, t: v >= t,
               "teacher PSNR below"),
              ("teacher_lidar_abs_rel", config.max_teacher_abs_rel, lambda v, t: v <= t,
               "teacher AbsRel above"),
              ("lidar_depth_valid_fraction", config.min_lidar_fraction, lambda v, t: v >= t,
               "LiDAR fraction below"))
    for column, threshold, passes, what in checks:
        if threshold is None:
            continue
        values = [rows[column][i] for i in picks]
        if any(v is None or not passes(v, threshold) for v in values):
            return f"{what} {threshold:g} (or unknown)"
    return None


def _scene_frames(store: Store, store_index: int, scene_id: str, config: LoaderConfig,
                  excluded: Counter) -> tuple[list[FrameRef], SceneView, dict]:
    """A scene's eligible frames, its view, and the per-sample shapes and shard lengths
    (in samples) of the arrays the fields need."""
    view = store.scene(scene_id)
    where = f"store {store.location.location}, scene {scene_id!r}"
    arrays = config.store_arrays()
    for name in arrays:
        if name not in view:
            field_name = next(f for f in config.fields if name in FIELDS[f])
            raise LoaderError(f"{where}: field {field_name} needs array {name}: "
                              f"{view.missing_message(name)}")
    cameras = tuple(view.attrs.cameras)
    meta = {name: view[name] for name in arrays}
    # JPEG rows are padded to each scene's longest: the decoded size is what must agree
    info = {name: ((view.attrs.height, view.attrs.width) if name == "rgb_jpeg"
                   else tuple(a.shape[1:]), int((a.shards or a.chunks)[0]))
            for name, a in meta.items()}
    rows = view.manifest().to_pydict()
    by_frame: dict[int, list[int]] = {}
    for i, frame in enumerate(rows["frame_index"]):
        by_frame.setdefault(int(frame), []).append(i)
    complete = {}
    for frame, picks in by_frame.items():
        samples = [int(rows["sample_index"][i]) for i in picks]
        if (tuple(rows["camera"][i] for i in picks) == cameras
                and samples == list(range(samples[0], samples[0] + len(cameras)))):
            complete[frame] = picks
    if len(by_frame) > len(complete):
        excluded["cameras missing from the frame"] += len(by_frame) - len(complete)
    views: dict[int, list[list[int]]] = {}
    if config.virtual_fields():
        place = {int(rows["sample_index"][i]): (frame, c)
                 for frame, picks in complete.items() for c, i in enumerate(picks)}
        source = np.asarray(meta["virtual_source_sample"][...])
        for v, s in enumerate(source.tolist()):
            if int(s) in place:
                frame, c = place[int(s)]
                views.setdefault(frame, [[] for _ in cameras])[c].append(v)
    needs = tuple(a for a in arrays if a in SAMPLE_ARRAYS)
    frames = []
    for frame in sorted(complete):
        picks = complete[frame]
        why = _frame_ok(rows, picks, config, needs)
        nxt = None
        if why is None and config.next_fields():
            nxt = complete.get(frame + 1)
            if nxt is None:
                why = "no next frame with every camera"
        if why is not None:
            excluded[why] += 1
            continue
        frames.append(FrameRef(
            store=store_index, scene_id=scene_id, frame_index=frame,
            first_sample=int(rows["sample_index"][picks[0]]),
            timestamp_us=int(rows["timestamp_us"][picks[0]]),
            next_first_sample=None if nxt is None else int(rows["sample_index"][nxt[0]]),
            views=tuple(tuple(v) for v in views.get(frame, [[] for _ in cameras]))
            if config.virtual_fields() else ()))
    return frames, view, info


def _blocks(frames: list[FrameRef], block_samples: int) -> list[tuple[FrameRef, ...]]:
    out: dict[int, list[FrameRef]] = {}
    for frame in frames:
        out.setdefault(frame.first_sample // block_samples, []).append(frame)
    return [tuple(b) for _, b in sorted(out.items())]


def build_plan(stores: list[str | Store], config: LoaderConfig,
               storage_options: dict | None = None) -> Plan:
    """The frames of `stores` (paths, URLs or opened stores) that `config` selects."""
    opened = [s if isinstance(s, Store) else open_store(s, storage_options=storage_options)
              for s in stores]
    if not opened:
        raise LoaderConfigError("no store given to read")
    listed = Counter(s.location.location for s in opened)
    if any(n > 1 for n in listed.values()):
        raise LoaderConfigError(f"store(s) {sorted(k for k, n in listed.items() if n > 1)} "
                                "listed more than once: each frame would be served twice")
    excluded: Counter = Counter()
    blocks: list[tuple[FrameRef, ...]] = []
    cameras: tuple[str, ...] | None = None
    shapes: dict[str, tuple[tuple, str]] = {}
    wanted = None if config.scenes is None else set(config.scenes)
    found: set[str] = set()
    commits: dict[str, dict[str, str]] = {}
    for index, store in enumerate(opened):
        for scene_id in store.scenes():
            if wanted is not None and scene_id not in wanted:
                continue
            found.add(scene_id)
            if config.split != "all" and val_side(scene_id, config) != (config.split == "val"):
                continue
            where = f"store {store.location.location}, scene {scene_id!r}"
            frames, view, info = _scene_frames(store, index, scene_id, config, excluded)
            rig = tuple(view.attrs.cameras)
            if cameras is None:
                cameras = rig
            elif rig != cameras:
                raise LoaderError(f"{where}: cameras {list(rig)}, but the scenes before it "
                                  f"have {list(cameras)}: a batch needs one rig")
            for name, (shape, _) in info.items():
                if config.resize is not None and name in _RESIZED:
                    continue
                seen = shapes.setdefault(name, (shape, scene_id))
                if seen[0] != shape:
                    raise LoaderError(f"{where}: array {name} has per-sample shape {shape}, "
                                      f"scene {seen[1]!r} {seen[0]}: set LoaderConfig.resize "
                                      "to batch scenes of different image sizes")
            per_sample = [s for name, (_, s) in info.items() if name in SAMPLE_ARRAYS]
            block_samples = (config.block_frames * len(rig) if config.block_frames
                             else max(min(per_sample, default=len(rig)), len(rig)))
            blocks += _blocks(frames, block_samples)
            commits[f"{index}:{scene_id}"] = {
                s: r.content_sha256 for s, r in sorted(view.commits.items())}
    if wanted is not None and wanted - found:
        raise LoaderError(f"scene(s) {sorted(wanted - found)} are in none of the stores "
                          f"{[s.location.location for s in opened]}")
    if not blocks:
        raise LoaderError(_nothing_selected(opened, config, found, excluded))
    slots = 0
    if config.virtual_fields():
        most = max((len(v) for b in blocks for f in b for v in f.views), default=0)
        slots = 1 if config.virtual == "random" else max(most, 1)
    fingerprint = hashlib.sha256(json.dumps(
        [[s.location.location for s in opened], commits, asdict(config)], sort_keys=True,
        default=str).encode()).hexdigest()
    return Plan(locations=tuple(s.location.location for s in opened),
                storage_options=dict(storage_options or {}), config=config,
                blocks=tuple(blocks), cameras=cameras or (), excluded=dict(excluded),
                virtual_slots=slots, commits=commits, fingerprint=fingerprint)


def _nothing_selected(opened: list[Store], config: LoaderConfig, found: set[str],
                      excluded: Counter) -> str:
    """Why a plan holds no frame: the stores, the split and what the filters left out (an
    empty loader would let training spin and evaluation score nothing)."""
    stores = [s.location.location for s in opened]
    if not found:
        return f"no frame to serve: the stores {stores} hold no scene"
    split = f"split {config.split!r}"
    if config.split != "all":
        split += (f" (val scenes {list(config.val_scenes)})" if config.val_scenes is not None
                  else f" (val fraction {config.val_fraction:g})")
    left = "; ".join(f"{n} frame(s): {why}" for why, n in excluded.items())
    return (f"no frame to serve from the stores {stores}: of the scenes "
            f"{sorted(found)}, {split} leaves "
            + (f"frames that the filters all leave out ({left})" if left else "none")
            + "; loosen the filter or name other scenes")


# Image-like arrays the loader resamples to LoaderConfig.resize (their shapes then agree).
_RESIZED = {"rgb_jpeg", "lidar_depth", "teacher_depth", "teacher_opacity", "virtual_rgb",
            "virtual_depth", "virtual_opacity"}


def available_fields(store: Store, scene_ids: list[str]) -> list[str]:
    """Fields (config.FIELDS) that every one of the scenes can give."""
    from .config import VIRTUAL_FIELDS, VIRTUAL_TABLES

    names = None
    for scene_id in scene_ids:
        have = set(store.scene(scene_id).array_names())
        names = have if names is None else names & have
    names = names or set()
    return [f for f, arrays in FIELDS.items()
            if set(arrays) <= names and (f not in VIRTUAL_FIELDS
                                         or set(VIRTUAL_TABLES) <= names)]
