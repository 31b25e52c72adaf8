"""A committed scene read back from the store as the one `Scene` model every stage reads:
what lets the teacher fit and render from the store alone, with no dataroot.

Poses, calibration and timestamps come from the ingest arrays exactly as written; images
decode from the stored JPEG bytes when a stage asks for them, sky masks likewise where the
scene was ingested with them; LiDAR sweeps give their
points (in the sweep's sensor frame, as the dataset stored them) moved to world with the
sweep's own pose, as a dataset reader does.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from distillprep.scenes.errors import SceneDataError
from distillprep.scenes.model import CameraSample, Frame, LidarSweep, Scene

from .errors import SchemaViolationError
from .reader import decode_jpeg
from .scene_view import SceneView
from .store import Store

_TABLES = ("intrinsics", "cam_to_world", "timestamp_us", "camera_index", "frame_index",
           "rgb_jpeg_nbytes", "ego_to_world", "frame_timestamp_us", "frame_is_keyframe",
           "lidar_sweep_points", "lidar_sensor_to_world", "lidar_timestamp_us",
           "lidar_frame_index", "lidar_is_keyframe", "lidar_sensor_index")


class _Points:
    """The scene's LiDAR points, read from the store once, on first use."""

    def __init__(self, view: SceneView, counts: np.ndarray):
        self.view = view
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._points: np.ndarray | None = None
        self._intensity: np.ndarray | None = None

    def sweep(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Points (n, 3) float32 in the sweep's sensor frame and intensity (n,)."""
        if self._points is None:
            self._points = np.asarray(self.view["lidar_points"][...])
            self._intensity = np.asarray(self.view["lidar_intensity"][...])
        start, stop = self.starts[index], self.starts[index + 1]
        return self._points[start:stop], self._intensity[start:stop]


def _image(view: SceneView, index: int, nbytes: int, where: str) -> np.ndarray:
    row = np.asarray(view["rgb_jpeg"][index])
    try:
        return decode_jpeg(row, nbytes, where)
    except SchemaViolationError as exc:
        raise SceneDataError(view.scene_id, where, str(exc)) from None


def _sky(view: SceneView, index: int) -> np.ndarray:
    return np.asarray(view["sky_mask"][index]) != 0


def load_scene(store: Store, scene_id: str, view: SceneView | None = None) -> Scene:
    """The committed scene as a `Scene`: every frame the store holds (keyframes, and the
    sweep frames when they were ingested), cameras and LiDAR sweeps. `Scene.dataroot` is
    the store's location; images and points are read lazily."""
    view = view or store.scene(scene_id)
    attrs = view.attrs
    missing = [name for name in _TABLES if name not in view]
    if missing:
        raise SceneDataError(scene_id, f"{store.location.location}/{view.group_path('ingest')}",
                             f"the store's scene lacks arrays {missing} (ingested by an "
                             "older distillprep?): re-ingest it with `distillprep ingest "
                             "--force`")
    t = {name: np.asarray(view[name][...]) for name in _TABLES}
    manifest = view.manifest().select(["is_keyframe", "source_file"]).to_pydict()
    points = _Points(view, t["lidar_sweep_points"])
    has_sky = "sky_mask" in view
    cameras: list[dict[str, CameraSample]] = [{} for _ in range(attrs.num_frames)]
    for i in range(attrs.num_samples):
        camera = attrs.cameras[int(t["camera_index"][i])]
        source = manifest["source_file"][i]
        where = f"{store.location.location} sample {i} ({source})"
        cameras[int(t["frame_index"][i])][camera] = CameraSample(
            scene_id=scene_id, camera=camera, timestamp_us=int(t["timestamp_us"][i]),
            intrinsics=t["intrinsics"][i], cam_to_world=t["cam_to_world"][i],
            width=attrs.width, height=attrs.height, source_file=source,
            is_keyframe=bool(manifest["is_keyframe"][i]), token=f"{scene_id}#{i}",
            loader=partial(_image, view, i, int(t["rgb_jpeg_nbytes"][i]), where),
            sky=partial(_sky, view, i) if has_sky else None)
    sweeps: list[list[LidarSweep]] = [[] for _ in range(attrs.num_frames)]
    for s in range(len(t["lidar_sweep_points"])):
        sensor = attrs.lidars[int(t["lidar_sensor_index"][s])]
        sweeps[int(t["lidar_frame_index"][s])].append(LidarSweep(
            scene_id=scene_id, sensor=sensor, timestamp_us=int(t["lidar_timestamp_us"][s]),
            sensor_to_world=t["lidar_sensor_to_world"][s],
            source_file=f"{store.location.location} sweep {s}",
            is_keyframe=bool(t["lidar_is_keyframe"][s]), token=f"{scene_id}#lidar{s}",
            loader=partial(points.sweep, s)))
    frames = tuple(Frame(f, int(t["frame_timestamp_us"][f]), t["ego_to_world"][f],
                         bool(t["frame_is_keyframe"][f]), cameras[f], tuple(sweeps[f]))
                   for f in range(attrs.num_frames))
    cameras_in_order = tuple(attrs.cameras)
    return Scene(scene_id, attrs.dataset, store.location.location, cameras_in_order, frames,
                 {"version": attrs.dataset_version, "store": store.location.location,
                  "fingerprint": view.fingerprint})
