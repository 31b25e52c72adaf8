"""The value rules of a scene's arrays: ONE set, applied by ingest to a scene's payload
before its commit (a break refuses the scene) and by validate to what a store holds (a
break is a finding), so that the two cannot drift. Each finding is a `ValueFinding`
naming the rule, the array and the first rows that break it.

Rules: `finite` (no NaN or infinity in a float array), `value-range` (the schema's value
range, indices inside their tables, LiDAR sweep counts that add up), `intrinsics`
(pinhole matrices, last row 0 0 1), `focal-length`, `principal-point`,
`pose-orthonormal`, `pose-translation`, `timestamps-increasing` (strictly, per sensor:
the frames, each camera channel, each LiDAR) and `lidar-range`.

Plausibility bounds, chosen so that every real dataset passes and absurd values do not:
- focal lengths: a field of view between 5 and 179 degrees along each image axis, i.e.
  fx in [W / (2 tan 89.5 deg), W / (2 tan 2.5 deg)] = [0.0044 W, 11.4 W] (fy likewise
  with H). nuScenes' fx is ~1266 px at 1600 px wide (0.79 W), Waymo's ~2060 px at 1920
  (1.07 W). Pinhole cameras only: fisheye lenses (>= 180 degrees) are out of scope, as no
  reader produces them.
- principal point within [-0.5, 1.5] times the image's width and height (a crop may move
  it out of the image, never far).
- pose translations: |t| <= 2e7 m, generous but finite: every Earth-fixed frame fits
  (ECEF |t| ~ 6.4e6 m, UTM northings < 1e7 m); nuScenes' map frames span a few km,
  Waymo's global frame ~1e4-1e5 m.
- LiDAR points within 1 km of their sensor (automotive LiDARs reach 100-300 m).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from distillprep.scenes.geometry import is_rotation

from .spec import ARRAYS

POSES = ("cam_to_world", "ego_to_world", "virtual_cam_to_world", "lidar_sensor_to_world")
INTRINSICS = {"intrinsics": ("W", "H"), "virtual_intrinsics": ("Wv", "Hv")}
"""Intrinsics tables -> the dimensions of the images they project into."""
MIN_FOV_DEG, MAX_FOV_DEG = 5.0, 179.0
"""The plausible field of view of a pinhole camera along each image axis."""
PRINCIPAL_POINT_MARGIN = 0.5
"""How far outside the image (in image sizes) a principal point may lie."""
MAX_TRANSLATION_M = 2e7
"""The largest plausible pose translation, metres."""
MAX_LIDAR_RANGE_M = 1000.0
"""The largest plausible distance of a LiDAR point from its sensor, metres."""
ROTATION_TOLERANCE = 1e-5
"""How far from orthonormal (and det +1) a pose's rotation may be."""
SHOWN = 5
"""How many offending rows a finding keeps (and its message names)."""
DERIVED = ("lidar_depth",)
"""Ingest arrays computed from others (the LiDAR projected into the images)."""


@dataclass(frozen=True)
class ValueFinding:
    """One broken value rule of one array."""

    rule: str
    """Short name of the rule, e.g. `timestamps-increasing`."""
    array: str
    """The array that breaks it."""
    message: str
    """What is wrong, in words."""
    rows: tuple[int, ...] = ()
    """The first offending rows along the array's first axis (empty: the array as a
    whole), which ingest maps to the source files they came from."""


def _rows(bad: np.ndarray, start: int = 0) -> tuple[int, ...]:
    """The first SHOWN rows (plus `start`) where the mask `bad` (rows, ...) holds."""
    if not bad.size:
        return ()
    per_row = bad.reshape(len(bad), -1).any(axis=1) if bad.ndim > 1 else bad
    return tuple(int(i) + start for i in np.flatnonzero(per_row)[:SHOWN])


def focal_range(size: float) -> tuple[float, float]:
    """The plausible focal lengths (px) along an image axis of `size` pixels."""
    return (size / (2 * math.tan(math.radians(MAX_FOV_DEG / 2))),
            size / (2 * math.tan(math.radians(MIN_FOV_DEG / 2))))


def _intrinsics(name: str, k: np.ndarray, width: int | None, height: int | None,
                ) -> list[ValueFinding]:
    """Pinhole form, focal lengths and principal points of intrinsics k (n, 3, 3)."""
    found = []
    rows = _rows(np.any(k[:, 2] != [0, 0, 1], axis=1))
    if rows:
        found.append(ValueFinding("intrinsics", name, f"entries {list(rows)} are not "
                                  "pinhole matrices (last row not 0 0 1)", rows))
    focal = np.stack([k[:, 0, 0], k[:, 1, 1]], axis=1)
    centre = np.stack([k[:, 0, 2], k[:, 1, 2]], axis=1)
    if width is None or height is None:
        rows = _rows(~(focal > 0))
        if rows:
            found.append(ValueFinding("focal-length", name, f"entries {list(rows)}: focal "
                                      "lengths not positive", rows))
        return found
    size = np.array([width, height], dtype=np.float64)
    low, high = (np.array(b) for b in zip(focal_range(width), focal_range(height),
                                          strict=True))
    rows = _rows(~((focal >= low) & (focal <= high)))  # NaN fails too
    if rows:
        i = rows[0]
        found.append(ValueFinding(
            "focal-length", name, f"entries {list(rows)}: focal lengths fx {focal[i, 0]:.6g}, "
            f"fy {focal[i, 1]:.6g} px (entry {i}) outside the plausible fx in "
            f"[{low[0]:.4g}, {high[0]:.4g}], fy in [{low[1]:.4g}, {high[1]:.4g}] of a "
            f"{width}x{height} image (a field of view of {MIN_FOV_DEG:g} to "
            f"{MAX_FOV_DEG:g} degrees)", rows))
    margin = PRINCIPAL_POINT_MARGIN * size
    rows = _rows(~((centre >= -margin) & (centre <= size + margin)))
    if rows:
        i = rows[0]
        found.append(ValueFinding(
            "principal-point", name, f"entries {list(rows)}: principal point "
            f"({centre[i, 0]:.6g}, {centre[i, 1]:.6g}) px (entry {i}) lies outside "
            f"[{-margin[0]:g}, {size[0] + margin[0]:g}] x [{-margin[1]:g}, "
            f"{size[1] + margin[1]:g}], far out of the {width}x{height} image", rows))
    return found


def _poses(name: str, poses: np.ndarray) -> list[ValueFinding]:
    """Rigidity and translation bound of poses (n, 4, 4)."""
    found = []
    rows: tuple[int, ...] = ()
    rotation = poses[:, :3, :3]
    with np.errstate(all="ignore"):  # a screen stricter than is_rotation, for all at once
        off = np.abs(rotation @ rotation.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
        det = np.linalg.det(rotation)
    if not (np.all(off <= ROTATION_TOLERANCE) and np.all(np.abs(det - 1) < ROTATION_TOLERANCE)
            and np.all(poses[:, 3] == [0, 0, 0, 1])):
        rows = tuple(i for i, pose in enumerate(poses)
                     if not is_rotation(pose[:3, :3], ROTATION_TOLERANCE)
                     or np.any(pose[3] != [0, 0, 0, 1]))[:SHOWN]
    if rows:
        found.append(ValueFinding("pose-orthonormal", name, f"entries {list(rows)} are not "
                                  "rigid poses (rotation not orthonormal with det +1, or last "
                                  "row not 0 0 0 1)", rows))
    t = poses[:, :3, 3]
    with np.errstate(invalid="ignore"):
        reach = np.hypot(np.hypot(t[:, 0], t[:, 1]), t[:, 2])  # 1e300 m stays 1e300 m
    rows = _rows(~(reach <= MAX_TRANSLATION_M))
    if rows:
        found.append(ValueFinding(
            "pose-translation", name, f"entries {list(rows)}: translation of "
            f"{reach[rows[0]]:.6g} m (entry {rows[0]}), beyond the {MAX_TRANSLATION_M:g} m "
            "any road scene's frame can reach", rows))
    return found


def _increasing(name: str, times: np.ndarray, groups: np.ndarray | None,
                order_by: np.ndarray | None, what: str) -> list[ValueFinding]:
    """Timestamps that do not strictly increase within each group (a sensor), rows taken
    in the order of `order_by` (their frame) and then of the table."""
    found = []
    for group in (np.unique(groups) if groups is not None else [None]):
        mine = np.flatnonzero(groups == group) if groups is not None else np.arange(
            len(times))
        if order_by is not None:
            mine = mine[np.argsort(order_by[mine], kind="stable")]
        rows = tuple(int(r) for r in mine[1:][np.diff(times[mine]) <= 0][:SHOWN])
        if rows:
            label = what if group is None else f"{what} {int(group)}'s"
            found.append(ValueFinding(
                "timestamps-increasing", name, f"{label} timestamps do not strictly increase "
                f"from frame to frame (entries {list(rows)}: {int(times[rows[0]])} us is not "
                "after the one before)", rows))
    return found


def check_tables(t: dict[str, np.ndarray], dims: dict[str, int], cameras: int, lidars: int,
                 ) -> list[ValueFinding]:
    """Findings about a scene's small tables `t` (name -> array, any subset of a scene's
    arrays): `dims` the scene's dimension sizes (N, F, W, H, ...), `cameras` and
    `lidars` how many sensors of each kind it has."""
    found: list[ValueFinding] = []
    for name in (*INTRINSICS, *POSES):
        if name in t and len(t[name]):
            rows = _rows(~np.isfinite(t[name]))
            if rows:
                found.append(ValueFinding("finite", name, f"NaN or infinite values in entries "
                                          f"{list(rows)}", rows))
    for name, (w, h) in INTRINSICS.items():
        if name in t and len(t[name]):
            found += _intrinsics(name, t[name], dims.get(w), dims.get(h))
    for name in POSES:
        if name in t and len(t[name]):
            found += _poses(name, t[name])
    if "frame_timestamp_us" in t:
        found += _increasing("frame_timestamp_us", t["frame_timestamp_us"], None, None,
                             "the frames'")
    if {"timestamp_us", "camera_index", "frame_index"} <= set(t):
        found += _increasing("timestamp_us", t["timestamp_us"], t["camera_index"],
                             t["frame_index"], "camera")
    if {"lidar_timestamp_us", "lidar_sensor_index", "lidar_frame_index"} <= set(t):
        found += _increasing("lidar_timestamp_us", t["lidar_timestamp_us"],
                             t["lidar_sensor_index"], t["lidar_frame_index"], "LiDAR")
    source = t.get("virtual_source_sample")
    if source is not None and len(source) and (source.min() < 0 or source.max() >= dims["N"]):
        found.append(ValueFinding("value-range", "virtual_source_sample", "virtual views name "
                                  f"source samples outside the scene's {dims['N']}",
                                  _rows((source < 0) | (source >= dims["N"]))))
    ranges = (("camera_index", cameras, "the scene's cameras"),
              ("frame_index", dims["F"], "the scene's frames"),
              ("lidar_frame_index", dims["F"], "the scene's frames"),
              ("lidar_sensor_index", lidars, "the scene's LiDARs"))
    for name, size, what in ranges:
        if name in t and len(t[name]) and (t[name].min() < 0 or t[name].max() >= size):
            found.append(ValueFinding("value-range", name, f"{name} outside {what}",
                                      _rows((t[name] < 0) | (t[name] >= size))))
    if "rgb_jpeg_nbytes" in t and "J" in dims:
        n = t["rgb_jpeg_nbytes"]
        if n.min() < 4 or n.max() > dims["J"]:
            found.append(ValueFinding("value-range", "rgb_jpeg_nbytes", "JPEG lengths must lie "
                                      f"in [4, {dims['J']}]", _rows((n < 4) | (n > dims["J"]))))
    counts = t.get("lidar_sweep_points")
    if counts is not None and "P" in dims and (counts.min(initial=0) < 0
                                               or int(counts.sum()) != dims["P"]):
        found.append(ValueFinding("value-range", "lidar_sweep_points", "sweep point counts "
                                  f"add up to {int(counts.sum())}, but lidar_points has "
                                  f"{dims['P']} rows"))
    return found


def _half(bits: int) -> float:
    return float(np.uint16(bits).view(np.float16))


def _clean(name: str, block: np.ndarray, value_range) -> bool:
    """A fast screen of a block: True when no rule of `check_block` can find anything
    (nearly always), False sends it to the exact checks, which name the rows."""
    if not block.size or (block.dtype.kind != "f" and value_range is None):
        return True
    if block.dtype == np.float16:  # from the bits: numpy's float16 min/max are ~40x slower
        bits = block.view(np.uint16)
        top = int(bits.max())
        if top < 0x7C00:  # no sign bit, infinity or NaN: uint16 order is value order
            return value_range is None or (value_range[0] <= _half(int(bits.min()))
                                           and _half(top) <= value_range[1])
        return value_range is None and int((bits & 0x7FFF).max()) < 0x7C00
    low, high = block.min(), block.max()  # NaN and infinity show in a float's min or max
    if block.dtype.kind == "f" and not (np.isfinite(low) and np.isfinite(high)):
        return False
    if value_range is not None and not (value_range[0] <= low and high <= value_range[1]):
        return False
    # every coordinate within MAX / sqrt(3) puts every point within MAX
    return name != "lidar_points" or max(-low, high) <= MAX_LIDAR_RANGE_M / math.sqrt(3)


def check_block(name: str, block: np.ndarray, start: int = 0) -> list[ValueFinding]:
    """Findings about rows start.. of an array of any size (validate --deep reads a large
    one block by block): finite floats, the schema's value range, LiDAR points within
    reach of their sensor."""
    spec = ARRAYS.get(name)
    if _clean(name, block, spec.value_range if spec is not None else None):
        return []
    found = []
    where = f"rows {start}..{start + len(block) - 1}"
    if block.dtype.kind == "f":
        rows = _rows(~np.isfinite(block), start)
        if rows:
            found.append(ValueFinding("finite", name, f"NaN or infinite values in {where} "
                                      f"(entries {list(rows)})", rows))
    if spec is not None and spec.value_range and block.size:
        lo, hi = spec.value_range
        rows = _rows((block < lo) | (block > hi), start)  # not min/max: a NaN hides them
        if rows:
            found.append(ValueFinding("value-range", name, f"values outside [{lo}, {hi}] in "
                                      f"{where} (entries {list(rows)})", rows))
    if name == "lidar_points" and block.size:
        reach = np.einsum("ij,ij->i", block, block, dtype=np.float64)
        rows = _rows(reach > MAX_LIDAR_RANGE_M ** 2, start)
        if rows:
            found.append(ValueFinding(
                "lidar-range", name, f"points farther than {MAX_LIDAR_RANGE_M:g} m from their "
                f"sensor in {where} (entries {list(rows)}; "
                f"{math.sqrt(float(reach[rows[0] - start])):.6g} m)", rows))
    return found


def check_payload(arrays: dict[str, np.ndarray], dims: dict[str, int], cameras: int,
                  lidars: int) -> list[ValueFinding]:
    """Every value rule on a whole stage payload (name -> array): what validate --deep
    applies to a committed scene, once per (rule, array)."""
    found = check_tables(arrays, dims, cameras, lidars)
    # a derived array last: its break (infinite depth) is explained by its input's (far points)
    for name in sorted(arrays, key=lambda n: n in DERIVED):
        found += check_block(name, arrays[name])
    seen, unique = set(), []
    for finding in found:
        if (finding.rule, finding.array) not in seen:
            seen.add((finding.rule, finding.array))
            unique.append(finding)
    return unique
