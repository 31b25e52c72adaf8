"""The store's arrays, specified as types: one `ArraySpec` per array of a scene group.

Dimension letters in shape patterns:
- N camera samples of the scene (frame-major, camera order of the scene's rig);
- F frames; V virtual views; H, W image size; J longest JPEG of the scene in bytes;
- S LiDAR sweeps of the scene, P LiDAR points of all its sweeps together;
- Ht, Wt teacher render size; Hv, Wv virtual view size;
- per feature family f (`dino`, `clip`): C_f feature channels after PCA, h_f, w_f the
  feature grid of a real image, hv_f, wv_f that of a virtual view, D_f the model's full
  feature width before PCA.
Each chunk holds one sample (one camera image, one virtual view), a fixed number of rows
of a long table (LiDAR points), or, for small tables such as poses, the whole array; the
sharding codec packs chunks into shards.

Every array belongs to one stage, and each stage's arrays live in their own group and are
committed on their own (`store.py`): a stage never rewrites another's arrays.
`STAGE_INPUTS` says which stages' outputs a stage is computed from, so that a stage
whose inputs changed since (the scene re-ingested, the teacher rendered again) is
recognised as stale.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Stage = Literal["ingest", "teacher", "dino_features", "clip_features"]
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "ingest": (),
    "teacher": ("ingest",),
    "dino_features": ("ingest", "teacher"),
    "clip_features": ("ingest", "teacher"),
}
"""Stage -> the stages whose committed outputs it is computed from (features read the
teacher's virtual views when there are any)."""
STAGES: tuple[str, ...] = tuple(STAGE_INPUTS)
"""Every stage, in pipeline order."""
STAGE_COMMANDS: dict[str, str] = {
    "ingest": "distillprep ingest",
    "teacher": "distillprep teacher fit / teacher render",
    "dino_features": "distillprep features --model dinov2-...",
    "clip_features": "distillprep features --model clip-...",
}
"""Stage -> the command that fills it (for messages that say what to run)."""
Codec = Literal["zstd-1", "zstd-3", "blosc-lz4-shuffle", "none"]


class ArraySpec(BaseModel):
    """What one array of a scene group holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="array name inside the scene group")
    dtype: Literal["uint8", "int16", "int32", "int64", "float16", "float32", "float64"] = Field(
        description="numpy dtype")
    shape: tuple[str | int, ...] = Field(description="shape pattern: dimension letters or sizes")
    units: str = Field(description="physical units, or '' for none")
    value_range: tuple[float, float] | None = Field(
        default=None, description="inclusive [min, max] of valid values, or null")
    stage: Stage = Field(description="the pipeline stage that fills it")
    per_sample: bool = Field(description="chunked one sample per chunk along axis 0 (else "
                             "one chunk for the whole array, or chunk_rows rows)")
    chunk_rows: int | None = Field(default=None, gt=0, description="rows per chunk along "
                                   "axis 0 for a long table that is not per sample (LiDAR "
                                   "points); null: per_sample decides")
    codec: Codec = Field(description="compression, chosen by measurement (README)")
    description: str = Field(description="one line for people")


def _a(name, dtype, shape, units, value_range, stage, per_sample, codec, description,
       chunk_rows=None):
    return ArraySpec(name=name, dtype=dtype, shape=shape, units=units, value_range=value_range,
                     stage=stage, per_sample=per_sample, codec=codec, description=description,
                     chunk_rows=chunk_rows)


LIDAR_CHUNK_ROWS = 65536
"""LiDAR points per chunk: 768 KiB of float32 xyz, about two nuScenes sweeps."""


ARRAYS: dict[str, ArraySpec] = {a.name: a for a in (
    _a("rgb_jpeg", "uint8", ("N", "J"), "", None, "ingest", True, "zstd-1",
       "the camera's own JPEG bytes, zero-padded to J; decode the first rgb_jpeg_nbytes"),
    _a("rgb_jpeg_nbytes", "int64", ("N",), "bytes", (4, 2**31), "ingest", False, "zstd-1",
       "length of each sample's JPEG in rgb_jpeg"),
    _a("lidar_depth", "float16", ("N", "H", "W"), "m", (0.0, 65504.0), "ingest", True,
       "zstd-1", "LiDAR projected to the image: nearest return's camera z per pixel, 0 = none"),
    _a("sky_mask", "uint8", ("N", "H", "W"), "", (0, 1), "ingest", True, "zstd-1",
       "1 on sky: the dataset's segmentation masks (`ingest --sky-masks`); absent without"),
    _a("intrinsics", "float64", ("N", 3, 3), "px", None, "ingest", False, "zstd-1",
       "K, OpenCV pixel convention"),
    _a("cam_to_world", "float64", ("N", 4, 4), "m", None, "ingest", False, "zstd-1",
       "OpenCV camera -> world at the image's own timestamp"),
    _a("timestamp_us", "int64", ("N",), "us", (0, 2**62), "ingest", False, "zstd-1",
       "exposure time of each image"),
    _a("camera_index", "int16", ("N",), "", (0, 63), "ingest", False, "zstd-1",
       "index into the scene's `cameras` attribute"),
    _a("frame_index", "int32", ("N",), "", (0, 2**31 - 1), "ingest", False, "zstd-1",
       "index of the sample's frame"),
    _a("ego_to_world", "float64", ("F", 4, 4), "m", None, "ingest", False, "zstd-1",
       "ego pose at each frame's timestamp"),
    _a("frame_timestamp_us", "int64", ("F",), "us", (0, 2**62), "ingest", False, "zstd-1",
       "reference time of each frame, strictly increasing"),
    _a("frame_is_keyframe", "uint8", ("F",), "", (0, 1), "ingest", False, "zstd-1",
       "1 for annotated keyframes, 0 for frames built from sweeps"),
    _a("lidar_points", "float32", ("P", 3), "m", None, "ingest", False, "zstd-3",
       "every LiDAR return of the scene as the dataset stores it: x, y, z in its sweep's "
       "sensor frame, sweep after sweep", LIDAR_CHUNK_ROWS),
    _a("lidar_intensity", "float32", ("P",), "", None, "ingest", False, "blosc-lz4-shuffle",
       "return intensity, as the dataset stores it", LIDAR_CHUNK_ROWS),
    _a("lidar_sweep_points", "int64", ("S",), "", (0, 2**40), "ingest", False, "zstd-1",
       "points of each sweep: sweep s holds rows sum(counts[:s]) .. + counts[s]"),
    _a("lidar_sensor_to_world", "float64", ("S", 4, 4), "m", None, "ingest", False, "zstd-1",
       "LiDAR frame -> world at each sweep's own time (its origin is the rays' origin)"),
    _a("lidar_timestamp_us", "int64", ("S",), "us", (0, 2**62), "ingest", False, "zstd-1",
       "time of each sweep"),
    _a("lidar_frame_index", "int32", ("S",), "", (0, 2**31 - 1), "ingest", False, "zstd-1",
       "the frame each sweep is assigned to"),
    _a("lidar_is_keyframe", "uint8", ("S",), "", (0, 1), "ingest", False, "zstd-1",
       "1 for a frame's keyframe sweep, 0 for sweeps between keyframes"),
    _a("lidar_sensor_index", "int16", ("S",), "", (0, 63), "ingest", False, "zstd-1",
       "index into the scene's `lidars` attribute"),
    _a("teacher_depth", "float16", ("N", "Ht", "Wt"), "m", (0.0, 65504.0), "teacher", True,
       "zstd-1", "neural-field expected depth for each real image"),
    _a("teacher_opacity", "float16", ("N", "Ht", "Wt"), "", (0.0, 1.0), "teacher", True,
       "zstd-1", "accumulated opacity (confidence) of teacher_depth"),
    _a("virtual_rgb", "uint8", ("V", "Hv", "Wv", 3), "", (0, 255), "teacher", True, "zstd-1",
       "virtual-camera colour"),
    _a("virtual_depth", "float16", ("V", "Hv", "Wv"), "m", (0.0, 65504.0), "teacher", True,
       "zstd-1", "virtual-camera expected depth"),
    _a("virtual_opacity", "float16", ("V", "Hv", "Wv"), "", (0.0, 1.0), "teacher", True,
       "zstd-1", "virtual-camera accumulated opacity"),
    _a("virtual_intrinsics", "float64", ("V", 3, 3), "px", None, "teacher", False, "zstd-1",
       "K of each virtual view"),
    _a("virtual_cam_to_world", "float64", ("V", 4, 4), "m", None, "teacher", False, "zstd-1",
       "OpenCV camera -> world of each virtual view"),
    _a("virtual_source_sample", "int32", ("V",), "", (0, 2**31 - 1), "teacher", False, "zstd-1",
       "the real camera sample each virtual view was derived from"),
    _a("virtual_offset", "float64", ("V", 6), "m, deg", None, "teacher", False, "zstd-1",
       "the policy's requested offset from the source camera: x, y, z metres in its OpenCV "
       "frame (x right, y down, z forward), then pitch, yaw, roll degrees"),
    _a("virtual_shift", "float32", ("V",), "m", (0.0, 1e6), "teacher", False, "zstd-1",
       "how far the view was moved back towards its source camera out of solid geometry "
       "(0: placed as requested)"),
)}

FEATURE_FAMILIES = ("dino", "clip")
"""Foundation-model feature families a scene can hold, each its own stage and arrays
(`<family>_features`, ...): DINOv2 and CLIP features live side by side."""


def _feature_arrays(family: str) -> list[ArraySpec]:
    what = {"dino": "DINOv2", "clip": "CLIP (text-aligned dense)"}[family]
    c, d = f"C_{family}", f"D_{family}"
    return [
        _a(f"{family}_features", "float16", ("N", c, f"h_{family}", f"w_{family}"), "", None,
           f"{family}_features", True, "zstd-1",
           f"PCA-reduced {what} features per real image"),
        _a(f"{family}_virtual_features", "float16", ("V", c, f"hv_{family}", f"wv_{family}"),
           "", None, f"{family}_features", True, "zstd-1",
           f"PCA-reduced {what} features per virtual view"),
        _a(f"{family}_pca_basis", "float32", (c, d), "", None, f"{family}_features", False,
           "zstd-1", "rows are the principal directions (orthonormal), fitted across the "
           "dataset: every scene of a run holds the same basis"),
        _a(f"{family}_pca_mean", "float32", (d,), "", None, f"{family}_features", False,
           "zstd-1", "mean of the full-width features"),
        _a(f"{family}_pca_explained_variance", "float32", (c,), "", (0.0, 1e30),
           f"{family}_features", False, "zstd-1", "variance along each principal direction"),
    ]


ARRAYS.update({a.name: a for family in FEATURE_FAMILIES for a in _feature_arrays(family)})

INGEST_ARRAYS = tuple(name for name, spec in ARRAYS.items() if spec.stage == "ingest")


def resolve_shape(spec: ArraySpec, dims: dict[str, int]) -> tuple[int, ...]:
    """Concrete shape of `spec` given the dimension sizes, e.g. {"N": 6, "H": 90}."""
    missing = [d for d in spec.shape if isinstance(d, str) and d not in dims]
    if missing:
        raise KeyError(f"array {spec.name}: no size given for dimension(s) {missing}")
    return tuple(dims[d] if isinstance(d, str) else d for d in spec.shape)


def infer_dims(shapes: dict[str, tuple[int, ...]],
               ) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Dimension sizes implied by the shapes of named arrays (name -> shape), and the
    conflicts found (an array whose rank differs from its spec, or a letter two arrays
    give different sizes) as (array name, message) pairs. Arrays are taken in schema
    order, whatever the order of `shapes`, so the messages do not depend on how a
    directory listing happened to come back."""
    dims: dict[str, int] = {}
    source: dict[str, str] = {}
    problems = []
    for name, spec in ARRAYS.items():
        if name not in shapes:
            continue
        shape = shapes[name]
        if len(shape) != len(spec.shape):
            problems.append((name, f"array {name}: rank {len(shape)}, the schema says "
                                   f"{len(spec.shape)} ({'x'.join(map(str, spec.shape))})"))
            continue
        for letter, size in zip(spec.shape, shape, strict=True):
            if not isinstance(letter, str):
                continue
            if letter in dims and dims[letter] != size:
                problems.append((name, f"array {name}: {letter} = {size}, but array "
                                       f"{source[letter]} has {letter} = {dims[letter]}"))
            dims.setdefault(letter, size)
            source.setdefault(letter, name)
    return dims, problems


def stage_arrays(stage: str) -> tuple[str, ...]:
    """Names of the arrays a stage fills, in schema order."""
    return tuple(name for name, spec in ARRAYS.items() if spec.stage == stage)


def optional_arrays(stage: str, has_views: bool) -> tuple[str, ...]:
    """Arrays of a stage that a scene may lack: the sky masks (a dataset may have none), a
    feature family's virtual-view features when the scene has no virtual views (no
    current teacher outputs)."""
    if stage == "ingest":
        return ("sky_mask",)
    if stage.endswith("_features") and not has_views:
        return (stage.replace("_features", "_virtual_features"),)
    return ()


def required_arrays(stage: str, has_views: bool) -> tuple[str, ...]:
    """Arrays a commit of `stage` must hold (has_views: the scene has virtual views)."""
    optional = optional_arrays(stage, has_views)
    return tuple(n for n in stage_arrays(stage) if n not in optional)
