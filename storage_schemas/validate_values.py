"""The validator's checks of values in a scene's small tables: finite numbers, pinhole
intrinsics, rigid poses, increasing timestamps, indices inside their ranges, and LiDAR
sweep tables that add up. Each finding is (rule, array, message)."""

from __future__ import annotations

import numpy as np

from distillprep.scenes.geometry import is_rotation

from .attrs import SceneAttrs

POSES = ("cam_to_world", "ego_to_world", "virtual_cam_to_world", "lidar_sensor_to_world")


def _rigid(poses: np.ndarray) -> list[int]:
    """Indices of the (4, 4) poses that are not rigid transforms."""
    return [i for i, pose in enumerate(poses) if not is_rotation(pose[:3, :3], 1e-5)
            or np.any(pose[3] != [0, 0, 0, 1])]


def _increasing(values: np.ndarray) -> bool:
    return not np.any(np.diff(values) <= 0)


def check_values(attrs: SceneAttrs, t: dict[str, np.ndarray], dims: dict[str, int],
                 ) -> list[tuple[str, str, str]]:
    """Findings about the values of the tables `t` (name -> array) of one scene."""
    found: list[tuple[str, str, str]] = []
    for name in ("intrinsics", "virtual_intrinsics", *POSES):
        if name in t and not np.all(np.isfinite(t[name])):
            found.append(("finite", name, "NaN or infinite values"))
    for name in ("intrinsics", "virtual_intrinsics"):
        k = t.get(name)
        if k is None or not len(k):
            continue
        bad = np.flatnonzero((k[:, 0, 0] <= 0) | (k[:, 1, 1] <= 0) | np.any(
            k[:, 2] != [0, 0, 1], axis=1))
        if len(bad):
            found.append(("intrinsics", name,
                          f"entries {bad[:5].tolist()} are not pinhole matrices"))
    source = t.get("virtual_source_sample")
    if source is not None and len(source) and (source.min() < 0 or
                                               source.max() >= attrs.num_samples):
        found.append(("value-range", "virtual_source_sample", "virtual views name source "
                      f"samples outside the scene's {attrs.num_samples}"))
    for name in POSES:
        if name in t and len(t[name]):
            bad = _rigid(t[name])
            if bad:
                found.append(("pose-orthonormal", name, f"entries {bad[:5]} are not rigid "
                              "poses (rotation not orthonormal with det +1, or last row not "
                              "0 0 0 1)"))
    if "frame_timestamp_us" in t and not _increasing(t["frame_timestamp_us"]):
        found.append(("timestamps-increasing", "frame_timestamp_us",
                      "frame timestamps are not strictly increasing"))
    if {"timestamp_us", "camera_index", "frame_index"} <= set(t):
        for cam in np.unique(t["camera_index"]):
            mine = t["camera_index"] == cam
            order = np.argsort(t["frame_index"][mine], kind="stable")
            if not _increasing(t["timestamp_us"][mine][order]):
                found.append(("timestamps-increasing", "timestamp_us", f"camera {int(cam)}'s "
                              "timestamps do not increase from frame to frame"))
    ranges = (("camera_index", len(attrs.cameras), "the scene's cameras"),
              ("frame_index", dims["F"], "the scene's frames"),
              ("lidar_frame_index", dims["F"], "the scene's frames"),
              ("lidar_sensor_index", len(attrs.lidars), "the scene's LiDARs"))
    for name, size, what in ranges:
        if name in t and len(t[name]) and (t[name].min() < 0 or t[name].max() >= size):
            found.append(("value-range", name, f"{name} outside {what}"))
    if "rgb_jpeg_nbytes" in t and "J" in dims:
        n = t["rgb_jpeg_nbytes"]
        if n.min() < 4 or n.max() > dims["J"]:
            found.append(("value-range", "rgb_jpeg_nbytes",
                          f"JPEG lengths must lie in [4, {dims['J']}]"))
    counts = t.get("lidar_sweep_points")
    if counts is not None and "P" in dims and (counts.min(initial=0) < 0
                                               or int(counts.sum()) != dims["P"]):
        found.append(("value-range", "lidar_sweep_points", f"sweep point counts add up to "
                      f"{int(counts.sum())}, but lidar_points has {dims['P']} rows"))
    return found
