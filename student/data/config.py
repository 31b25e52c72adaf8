"""What the streaming loader reads, from which scenes, in which order: `LoaderConfig`, the
fields a caller may ask for, and the loader's errors.

One sample is one frame with all its cameras. A field is one thing a sample carries for
every camera of the frame (leading axis C, the cameras in the scene's rig order):

- `rgb` (C, H, W, 3) uint8, decoded from `rgb_jpeg`;
- `intrinsics` (C, 3, 3), `cam_to_world` (C, 4, 4) float64, OpenCV, K of the size yielded;
- `lidar_depth` (C, H, W) float16 m, 0 = no return;
- `teacher_depth`, `teacher_opacity` (C, Ht, Wt) float16;
- `dino_features`, `clip_features` (C, C_f, h_f, w_f) float16, PCA-reduced
  (`StoreDataset.feature_basis` undoes the reduction);
- `virtual_rgb`, `virtual_depth`, `virtual_opacity`, `<family>_virtual_features`
  (C, K, ...): each camera's virtual views, always with `virtual_intrinsics`,
  `virtual_cam_to_world` (C, K, 3|4, 3|4), `virtual_offset` (C, K, 6) and
  `virtual_valid` (C, K) bool;
- `next_rgb`, `next_intrinsics`, `next_cam_to_world`: the same of frame f + 1's cameras
  (DistillNeRF's novel-view targets).

Depth, opacity and features stay float16 as stored (half the bytes through the workers'
pipes; convert on the device).

K is 1 with `virtual="random"` (one view per camera drawn from the seed, the epoch and
the frame, as DistillNeRF draws one of {left, up, right}), else the most views a camera
of the selection has, padded (`virtual_valid` false). Every sample also carries
`scene_id`, `frame_index`, `timestamp_us` and `sample_index` (C,), the cameras' rows in
the store (and its manifest). Sky masks are not part of the store's
schema, so no field gives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from distillprep.scenes.errors import ConfigError, DataError
from distillprep.storage_schemas.spec import FEATURE_FAMILIES

CAMERA_FIELDS: dict[str, tuple[str, ...]] = {
    "rgb": ("rgb_jpeg", "rgb_jpeg_nbytes"),
    "intrinsics": ("intrinsics",),
    "cam_to_world": ("cam_to_world",),
    "lidar_depth": ("lidar_depth",),
    "teacher_depth": ("teacher_depth",),
    "teacher_opacity": ("teacher_opacity",),
    **{f"{f}_features": (f"{f}_features",) for f in FEATURE_FAMILIES},
}
"""Field of the frame's own cameras -> the store arrays it is read from."""
VIRTUAL_TABLES = ("virtual_source_sample", "virtual_intrinsics", "virtual_cam_to_world",
                  "virtual_offset")
"""Small per-view tables read with any virtual field."""
VIRTUAL_FIELDS: dict[str, tuple[str, ...]] = {
    "virtual_rgb": ("virtual_rgb",),
    "virtual_depth": ("virtual_depth",),
    "virtual_opacity": ("virtual_opacity",),
    **{f"{f}_virtual_features": (f"{f}_virtual_features",) for f in FEATURE_FAMILIES},
}
"""Field of the frame's virtual views -> the store arrays it is read from."""
NEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "next_rgb": ("rgb_jpeg", "rgb_jpeg_nbytes"),
    "next_intrinsics": ("intrinsics",),
    "next_cam_to_world": ("cam_to_world",),
}
"""Field of the next frame's cameras -> the store arrays it is read from."""
FIELDS = {**CAMERA_FIELDS, **VIRTUAL_FIELDS, **NEXT_FIELDS}
"""Every field a caller may ask for -> the store arrays it needs."""


class LoaderError(DataError):
    """The loader cannot serve the stores as asked (names the store, scene and array)."""


class LoaderConfigError(ConfigError):
    """A loader setting, or a resume state, that cannot be used."""


@dataclass(frozen=True)
class LoaderConfig:
    """Which fields of which frames the loader yields, in which order, how batched."""

    fields: tuple[str, ...] = ("rgb", "intrinsics", "cam_to_world")
    """Fields each sample carries (module docstring); nothing else is read or decoded."""
    scenes: tuple[str, ...] | None = None
    """Scene ids to read (None: every committed scene of the stores)."""
    split: Literal["all", "train", "val"] = "all"
    """Which side of the scene split: whole scenes go to one side, never frames of one
    scene to both."""
    val_scenes: tuple[str, ...] | None = None
    """Scene ids of the validation side (None: drawn by `val_fraction`)."""
    val_fraction: float = 0.1
    """Share of scenes on the validation side when `val_scenes` is None, chosen by a hash
    of each scene id (adding scenes never moves one across)."""
    keyframes_only: bool = False
    """Only annotated keyframes (frames built from sweeps are left out)."""
    min_teacher_psnr: float | None = None
    """Leave out frames with a camera whose teacher PSNR (dB) is below this or unknown."""
    max_teacher_abs_rel: float | None = None
    """Leave out frames with a camera whose teacher depth AbsRel against LiDAR is above
    this or unknown."""
    min_lidar_fraction: float | None = None
    """Leave out frames with a camera whose valid LiDAR-depth pixel share is below this."""
    exclude_teacher_heldout: bool = False
    """Leave out frames the teacher held out from its fit."""
    virtual: Literal["random", "all"] = "random"
    """Virtual views per camera: one drawn per (seed, epoch, frame), or all, padded."""
    resize: tuple[int, int] | None = None
    """(width, height) every image-like field is resampled to in the workers, K scaled
    to match (DistillNeRF: 228 x 128); None: stored sizes. Features keep their grid."""
    batch_size: int = 1
    """Frames per batch; the loader batches with it, and the epoch plan aligns workers'
    shares to it so that only the rank's last batch can be short."""
    drop_last: bool = False
    """Give every rank the same number of full batches, dropping (and counting) the rest."""
    shuffle: bool = True
    """Shuffle: block order, then a buffer inside each worker (False: store order)."""
    seed: int = 0
    """Seed of the shuffle: the order is a function of (seed, epoch)."""
    shuffle_buffer: int = 64
    """Frames a worker mixes in memory (it holds at most this plus one block)."""
    block_frames: int | None = None
    """Frames per read block (None: as many as the smallest shard of the fields' arrays
    holds, so that a block is one sequential read per array)."""

    def __post_init__(self) -> None:
        unknown = [f for f in self.fields if f not in FIELDS]
        if unknown:
            raise LoaderConfigError(f"LoaderConfig.fields: unknown field(s) {unknown}; "
                                    f"choose from {sorted(FIELDS)}")
        if not self.fields:
            raise LoaderConfigError("LoaderConfig.fields is empty: ask for at least one")
        if len(set(self.fields)) != len(self.fields):
            raise LoaderConfigError(f"LoaderConfig.fields repeats a field: {self.fields}")
        for name in ("batch_size", "shuffle_buffer"):
            if not getattr(self, name) >= 1:
                raise LoaderConfigError(f"LoaderConfig.{name} = {getattr(self, name)!r} "
                                        "must be >= 1")
        if self.block_frames is not None and self.block_frames < 1:
            raise LoaderConfigError(f"LoaderConfig.block_frames = {self.block_frames!r} "
                                    "must be >= 1 or None")
        if not 0.0 <= self.val_fraction < 1.0:
            raise LoaderConfigError(f"LoaderConfig.val_fraction = {self.val_fraction!r} "
                                    "must lie in [0, 1)")
        if self.resize is not None and (len(self.resize) != 2
                                        or not all(int(v) >= 1 for v in self.resize)):
            raise LoaderConfigError(f"LoaderConfig.resize = {self.resize!r}: expected "
                                    "(width, height) in pixels")
        if self.split not in ("all", "train", "val"):
            raise LoaderConfigError(f"LoaderConfig.split = {self.split!r}: choose all, "
                                    "train or val")
        if self.virtual not in ("random", "all"):
            raise LoaderConfigError(f"LoaderConfig.virtual = {self.virtual!r}: choose "
                                    "random or all")

    def store_arrays(self) -> tuple[str, ...]:
        """Store arrays the fields need, each once, in field order."""
        names = [a for f in self.fields for a in FIELDS[f]]
        if self.virtual_fields():
            names += VIRTUAL_TABLES
        return tuple(dict.fromkeys(names))

    def camera_fields(self) -> tuple[str, ...]:
        return tuple(f for f in self.fields if f in CAMERA_FIELDS)

    def virtual_fields(self) -> tuple[str, ...]:
        return tuple(f for f in self.fields if f in VIRTUAL_FIELDS)

    def next_fields(self) -> tuple[str, ...]:
        return tuple(f for f in self.fields if f in NEXT_FIELDS)
