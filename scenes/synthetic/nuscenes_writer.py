"""Writes captured scenes in nuScenes' own layout and tables, plus exact ground truth.

Layout under OUT: `<version>/*.json` (the 13 tables), `samples/<CHANNEL>/...` for
keyframes, `sweeps/<CHANNEL>/...` for the rest; images are JPEG, LiDAR is `.pcd.bin`
(float32 x, y, z, intensity, ring in the sensor frame). Beside it, never inside it:
`ground_truth/depth/<image path>.npy` (float32 metres along the camera z axis, 0 on sky)
and `ground_truth/sky/<image path>.png` (255 where the pixel sees the sky).

Like the real data, every sample_data has its own timestamp and its own ego_pose (same
token), non-keyframe sample_data point to the sample that follows them in time, and
vehicles get instances and sample_annotations at every keyframe where they are seen.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..geometry import matrix_to_quaternion, yaw_pitch_roll_matrix
from .capture import CaptureEvent
from .render import LidarScan, RenderedView
from .rig import Rig
from .truth import ground_truth_path
from .world import World

TABLES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map",
          "sample", "sample_annotation", "sample_data", "scene", "sensor", "visibility")
JPEG_QUALITY = 95
ANNOTATION_RANGE_M = 60.0
# nuScenes visibility tokens: share of the object visible over all six images.
_VISIBILITY = (("1", "v0-40", 0.4), ("2", "v40-60", 0.6), ("3", "v60-80", 0.8),
               ("4", "v80-100", 1.01))


@dataclass
class _Keyframe:
    sample_token: str
    t: float
    lidar_hits: np.ndarray | None = None
    visible: np.ndarray | None = None
    unoccluded: np.ndarray | None = None


@dataclass
class _SceneState:
    index: int
    name: str
    world: World
    base_us: int
    log_name: str
    calib: dict[str, str]
    keyframes: list[_Keyframe] = field(default_factory=list)
    last_sd: dict[str, dict] = field(default_factory=dict)
    pending_sweeps: list[tuple[int, dict]] = field(default_factory=list)


class NuScenesWriter:
    """Accumulates tables scene by scene and writes files as captures arrive."""

    def __init__(self, out: Path, version: str, rig: Rig, width: int, height: int,
                 namespace: str):
        self.out, self.version, self.rig = Path(out), version, rig
        self.width, self.height, self.namespace = width, height, namespace
        self.tables: dict[str, list[dict]] = {name: [] for name in TABLES}
        self.sensor_tokens = {}
        if len(rig.lidars) != 1:
            raise ValueError("a nuScenes rig has exactly one LiDAR (LIDAR_TOP)")
        for name, modality in [(c.name, "camera") for c in rig.cameras] + [
                (rig.lidars[0].name, "lidar")]:
            token = self.token("sensor", name)
            self.sensor_tokens[name] = token
            self.tables["sensor"].append({"token": token, "channel": name, "modality": modality})
        self.category_car = self.token("category", "vehicle.car")
        self.tables["category"].append({"token": self.category_car, "name": "vehicle.car",
                                        "description": "Vehicle designed primarily for personal "
                                        "use.", "index": 17})
        self.attributes = {}
        for name in ("vehicle.moving", "vehicle.parked", "vehicle.stopped"):
            self.attributes[name] = self.token("attribute", name)
            self.tables["attribute"].append({"token": self.attributes[name], "name": name,
                                             "description": name.split(".")[1]})
        for token, level, _ in _VISIBILITY:
            self.tables["visibility"].append({"token": token, "level": level,
                                              "description": f"visibility of whole object is "
                                              f"between {level[1:].replace('-', ' and ')} %"})
        self.map_token = self.token("map", "synthetic")
        self.tables["map"].append({"token": self.map_token, "log_tokens": [],
                                   "category": "semantic_prior", "filename": ""})
        self.scene: _SceneState | None = None

    def token(self, *parts) -> str:
        """Deterministic 32-hex token, like nuScenes' own."""
        key = "/".join(str(p) for p in (self.namespace,) + parts)
        return hashlib.md5(key.encode()).hexdigest()

    def begin_scene(self, index: int, name: str, world: World, base_us: int) -> None:
        log_name = f"syn-2018-08-01-12-00-00+0000-{name}"
        log_token = self.token("log", index)
        self.tables["log"].append({"token": log_token, "logfile": log_name, "vehicle": "syn-car",
                                   "date_captured": "2018-08-01", "location": "synthetic-town"})
        self.tables["map"][0]["log_tokens"].append(log_token)
        calib = {}
        for cam in self.rig.cameras:
            calib[cam.name] = self._calibrated_sensor(index, cam.name, cam.cam_to_ego(),
                                                      cam.intrinsics(self.width, self.height))
        lidar = self.rig.lidars[0]
        calib[lidar.name] = self._calibrated_sensor(index, lidar.name, lidar.sensor_to_ego(), None)
        self.scene = _SceneState(index, name, world, base_us, log_name, calib)
        self.tables["scene"].append({"token": self.token("scene", index), "log_token": log_token,
                                     "nbr_samples": 0, "first_sample_token": "",
                                     "last_sample_token": "", "name": name,
                                     "description": f"synthetic town street, seed {world.seed}"})

    def _calibrated_sensor(self, scene: int, sensor: str, pose: np.ndarray, k) -> str:
        token = self.token("calibrated_sensor", scene, sensor)
        self.tables["calibrated_sensor"].append({
            "token": token, "sensor_token": self.sensor_tokens[sensor],
            "translation": [float(v) for v in pose[:3, 3]],
            "rotation": [float(v) for v in matrix_to_quaternion(pose[:3, :3])],
            "camera_intrinsic": [] if k is None else [[float(v) for v in row] for row in k],
        })
        return token

    def add_capture(self, event: CaptureEvent, ego_to_world: np.ndarray,
                    result: RenderedView | LidarScan) -> None:
        """Record one capture: its file(s), sample_data, ego_pose, and its keyframe sample."""
        sc = self.scene
        timestamp = sc.base_us + event.offset_us
        if event.is_keyframe and event.modality == "lidar":
            self._add_sample(event.keyframe, timestamp, event.t)
        folder = "samples" if event.is_keyframe else "sweeps"
        ext = "jpg" if event.modality == "camera" else "pcd.bin"
        relpath = f"{folder}/{event.sensor}/{sc.log_name}__{event.sensor}__{timestamp}.{ext}"
        path = self.out / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        keyframe = sc.keyframes[event.keyframe]
        if event.modality == "camera":
            Image.fromarray(result.rgb).save(path, quality=JPEG_QUALITY)
            depth_path = ground_truth_path(self.out, relpath, "depth")
            depth_path.parent.mkdir(parents=True, exist_ok=True)
            np.save(depth_path, result.depth)
            sky_path = ground_truth_path(self.out, relpath, "sky")
            sky_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(result.sky.astype(np.uint8) * 255).save(sky_path)
            if event.is_keyframe and result.visible_pixels is not None:
                keyframe.visible = _add(keyframe.visible, result.visible_pixels)
                keyframe.unoccluded = _add(keyframe.unoccluded, result.unoccluded_pixels)
        else:
            data = np.column_stack([result.points, result.intensity, result.ring])
            data.astype(np.float32).tofile(path)
            if event.is_keyframe:
                keyframe.lidar_hits = np.bincount(result.object_index[result.object_index >= 0],
                                                  minlength=len(sc.world.objects))
        token = self.token("sample_data", sc.index, event.sensor, event.keyframe, event.sweep)
        self.tables["ego_pose"].append({
            "token": token, "timestamp": timestamp,
            "rotation": [float(v) for v in matrix_to_quaternion(ego_to_world[:3, :3])],
            "translation": [float(v) for v in ego_to_world[:3, 3]],
        })
        record = {
            "token": token, "sample_token": keyframe.sample_token, "ego_pose_token": token,
            "calibrated_sensor_token": sc.calib[event.sensor], "timestamp": timestamp,
            "fileformat": "jpg" if event.modality == "camera" else "pcd",
            "is_key_frame": event.is_keyframe,
            "height": self.height if event.modality == "camera" else 0,
            "width": self.width if event.modality == "camera" else 0,
            "filename": relpath, "prev": "", "next": "",
        }
        if not event.is_keyframe:
            # A sweep belongs to the sample that follows it in time.
            sc.pending_sweeps.append((event.keyframe + 1, record))
        previous = sc.last_sd.get(event.sensor)
        if previous is not None:
            previous["next"], record["prev"] = token, previous["token"]
        sc.last_sd[event.sensor] = record
        self.tables["sample_data"].append(record)

    def _add_sample(self, k: int, timestamp: int, t: float) -> None:
        sc = self.scene
        token = self.token("sample", sc.index, k)
        samples = self.tables["sample"]
        scene = self.tables["scene"][-1]
        record = {"token": token, "timestamp": timestamp, "scene_token": scene["token"],
                  "prev": "", "next": ""}
        if k > 0:
            samples[-1]["next"], record["prev"] = token, samples[-1]["token"]
        else:
            scene["first_sample_token"] = token
        scene["last_sample_token"] = token
        scene["nbr_samples"] += 1
        samples.append(record)
        sc.keyframes.append(_Keyframe(token, t))

    def end_scene(self) -> None:
        """Resolve sweeps' sample tokens and write the scene's vehicle annotations."""
        sc = self.scene
        for k, record in sc.pending_sweeps:
            record["sample_token"] = sc.keyframes[k].sample_token
        self._annotate(sc)
        self.scene = None

    def _annotate(self, sc: _SceneState) -> None:
        world = sc.world
        chains: dict[int, list[dict]] = {}
        for kf in sc.keyframes:
            ego_xy = np.array(world.road.pose(world.ego.s(np.array([kf.t])),
                                              np.array([world.ego.d]))[:2]).ravel()
            for i, obj in enumerate(world.objects):
                if obj.kind != "vehicle":
                    continue
                x, y, yaw = obj.pose(world.road, kf.t)
                lidar_pts = int(kf.lidar_hits[i]) if kf.lidar_hits is not None else 0
                seen = kf.visible[i] if kf.visible is not None else 0
                if np.hypot(x - ego_xy[0], y - ego_xy[1]) > ANNOTATION_RANGE_M or (
                        lidar_pts == 0 and seen == 0):
                    continue
                share = seen / kf.unoccluded[i] if kf.unoccluded is not None and kf.unoccluded[
                    i] else 0.0
                visibility = next(tok for tok, _, upper in _VISIBILITY if share < upper)
                length, width, height = obj.size
                moving = "vehicle.moving" if obj.speed != 0 else "vehicle.parked"
                ann = {
                    "token": self.token("sample_annotation", sc.index, i, kf.sample_token),
                    "sample_token": kf.sample_token,
                    "instance_token": self.token("instance", sc.index, i),
                    "visibility_token": visibility,
                    "attribute_tokens": [self.attributes[moving]],
                    "translation": [x, y, height / 2],
                    "size": [width, length, height],
                    "rotation": [float(v) for v in
                                 matrix_to_quaternion(yaw_pitch_roll_matrix(yaw))],
                    "prev": "", "next": "", "num_lidar_pts": lidar_pts, "num_radar_pts": 0,
                }
                chain = chains.setdefault(i, [])
                if chain:
                    chain[-1]["next"], ann["prev"] = ann["token"], chain[-1]["token"]
                chain.append(ann)
                self.tables["sample_annotation"].append(ann)
        for i, chain in chains.items():
            self.tables["instance"].append({
                "token": self.token("instance", sc.index, i), "category_token": self.category_car,
                "nbr_annotations": len(chain), "first_annotation_token": chain[0]["token"],
                "last_annotation_token": chain[-1]["token"],
            })

    def finish(self) -> None:
        table_dir = self.out / self.version
        table_dir.mkdir(parents=True, exist_ok=True)
        for name, records in self.tables.items():
            with open(table_dir / f"{name}.json", "w") as f:
                json.dump(records, f, indent=1)


def _add(total: np.ndarray | None, part: np.ndarray) -> np.ndarray:
    return part.copy() if total is None else total + part
