"""Scenes from a nuScenes dataroot, read through the real nuscenes-devkit.

Every pose is composed per sample_data, at that sample_data's own timestamp:
`cam_to_world = ego_to_world(ego_pose of this image) @ cam_to_ego(calibrated_sensor)`,
and LiDAR points go sensor -> ego (at the sweep's time) -> world. nuScenes camera frames
are already OpenCV (x right, y down, z forward) and images come undistorted.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from .errors import DatasetNotFoundError, InvalidSceneIdError, SceneDataError, SceneError
from .geometry import UNIT_QUATERNION_TOLERANCE, make_pose, quaternion_to_matrix
from .ids import validate_scene_id
from .io import check_jpeg_file, check_pcd_bin_file, read_jpeg, read_pcd_bin
from .model import CameraSample, DatasetRead, Frame, LidarSweep, Scene, SceneFailure
from .nuscenes_tables import TABLES as TABLES  # the table names, re-exported
from .nuscenes_tables import (
    SampleDataRecord,
    SampleRecord,
    check_unique_tokens,
    diagnose_tables,
    parse_sample,
    parse_sample_data,
    parse_scene,
)
from .paths import inside_root

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
           "CAM_BACK_RIGHT")
LIDAR = "LIDAR_TOP"
RADARS = ("RADAR_FRONT", "RADAR_FRONT_LEFT", "RADAR_FRONT_RIGHT", "RADAR_BACK_LEFT",
          "RADAR_BACK_RIGHT")
KNOWN_CHANNELS = CAMERAS + (LIDAR,) + RADARS
MAX_SWEEPS_BETWEEN_KEYFRAMES = 1000
"""More sweeps than this between two keyframes (real: ~6 camera, ~10 LiDAR) means a
damaged `next` chain."""


NuScenesRead = DatasetRead
"""What `read_nuscenes` returns (the readers' common result)."""


def detect_version(dataroot: str | Path) -> str:
    """The one `v1.0-*` table folder under dataroot; errors when there is none or several."""
    root = Path(dataroot)
    if not root.is_dir():
        raise DatasetNotFoundError(f"dataroot {root} is not a directory")
    found = sorted(p.name for p in root.glob("v1.0-*") if (p / "scene.json").is_file())
    if not found:
        raise DatasetNotFoundError(f"no nuScenes table folder (v1.0-*/scene.json) under {root}")
    if len(found) > 1:
        raise DatasetNotFoundError(f"several nuScenes versions under {root}: "
                                   f"{', '.join(found)}; choose one with --version")
    return found[0]


_DEVKIT_LOCK = threading.Lock()


def open_devkit(dataroot: str | Path, version: str):
    """nuscenes.NuScenes for dataroot/version, quietly; table problems become errors that
    name the table file."""
    try:
        from nuscenes.nuscenes import NuScenes
    except ImportError as exc:  # pragma: no cover - the Makefile installs it
        raise DatasetNotFoundError(
            "nuscenes-devkit is not installed: pip install --no-deps nuscenes-devkit==1.2.0 "
            f"(or run `make test`): {exc}") from None
    root = Path(dataroot)
    if not (root / version / "scene.json").is_file():
        raise DatasetNotFoundError(f"no nuScenes tables at {root / version}")
    try:
        # sys.stdout is process-wide: two threads redirecting it at once would leave it
        # pointing at one's buffer, so loads (a flow ingests scenes in threads) take turns
        with _DEVKIT_LOCK, contextlib.redirect_stdout(io.StringIO()):
            nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    except Exception as exc:  # the devkit raises bare KeyErrors, assertions, RecursionErrors
        diagnose_tables(root / version)
        raise SceneDataError(None, root / version, f"nuscenes-devkit cannot load the tables: "
                             f"{type(exc).__name__}: {str(exc)[:200]}") from None
    check_unique_tokens(nusc, root / version)
    return nusc


def list_nuscenes(dataroot: str | Path, version: str | None = None) -> tuple[str, list[str]]:
    """The version and the scene names of a nuScenes dataroot, in table order, from its
    scene table alone (cheap: no devkit, no other table); a name listed twice is listed
    once (reading it refuses it, naming both scenes)."""
    root = Path(dataroot).resolve()
    version = version or detect_version(root)
    path = root / version / "scene.json"
    try:
        records = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetNotFoundError(f"no nuScenes tables at {root / version}") from None
    except (OSError, ValueError) as exc:
        raise SceneDataError(None, path, f"cannot read the scene table: {exc}") from None
    except RecursionError:
        raise SceneDataError(None, path, "cannot read the scene table: nested too deep to "
                             "parse") from None
    if not isinstance(records, list) or not all(
            isinstance(r, dict) and isinstance(r.get("name"), str) for r in records):
        raise SceneDataError(None, path, "expected a list of scene records that each have a "
                             "name")
    return version, list(dict.fromkeys(r["name"] for r in records))


def read_nuscenes(dataroot: str | Path, version: str | None = None,
                  scenes: list[str] | None = None, sweeps: bool = False,
                  skip_bad: bool = False) -> NuScenesRead:
    """Read scenes (all, or those named) from a nuScenes dataroot.

    sweeps: also build frames from non-keyframe images and LiDAR sweeps.
    skip_bad: record a scene that fails in `failures` and go on, instead of raising.
    A table broken for every scene (unparsable, a scene record without a name) raises
    SceneDataError even with skip_bad; one scene's malformed records fail that scene.
    """
    root = Path(dataroot).resolve()
    version = version or detect_version(root)
    nusc = open_devkit(root, version)
    scene_table = root / version / "scene.json"
    by_name: dict[str, list[dict]] = {}
    for record in nusc.scene:
        if not isinstance(record.get("name"), str):
            raise SceneDataError(None, scene_table, f"scene {str(record['token'])[:80]!r}: "
                                 f"field 'name' is {str(record.get('name'))[:80]!r}, expected "
                                 "a string")
        by_name.setdefault(record["name"], []).append(record)
    wanted = list(by_name) if scenes is None else list(scenes)
    result = NuScenesRead(version)
    for name in wanted:
        try:
            if name not in by_name:
                validate_scene_id(name)
                raise SceneDataError(name, scene_table, "no scene of that name in the scene "
                                     "table")
            if len(by_name[name]) > 1:  # the id names a store group: it must be unique
                tokens = ", ".join(str(r["token"]) for r in by_name[name])
                raise SceneDataError(name, scene_table,
                                     f"{len(by_name[name])} scenes have this name (tokens "
                                     f"{tokens}): a scene id must name one scene")
            result.scenes.append(_read_scene(nusc, root, version, by_name[name][0], sweeps))
        except SceneError as exc:
            if not skip_bad:
                raise
            result.failures.append(SceneFailure(str(name), exc))
    return result


def _read_scene(nusc, root: Path, version: str, scene_record: dict, sweeps: bool) -> Scene:
    name = scene_record["name"]
    try:
        scene_id = validate_scene_id(name)
    except InvalidSceneIdError as exc:
        raise SceneDataError(name, root / version / "scene.json", str(exc)) from None
    record = parse_scene(scene_record, root / version / "scene.json")
    reader = _SceneReader(nusc, root, version, scene_id)
    frames = []
    token, seen = record.first_sample_token, set()
    referrer = f"scene {record.token}'s first_sample_token"
    while token:
        if token in seen:  # a damaged table: following it would never end
            raise SceneDataError(scene_id, root / version / "sample.json",
                                 f"the scene's chain of samples (`next`) loops back to sample "
                                 f"{token} after {len(seen)} samples")
        seen.add(token)
        sample = reader.sample(token, referrer)
        frames.extend(reader.frames_of_sample(sample, sweeps))
        token, referrer = sample.next, f"sample {sample.token}'s next"
    frames = [Frame(i, f.timestamp_us, f.ego_to_world, f.is_keyframe, f.cameras, f.lidar)
              for i, f in enumerate(frames)]
    return Scene(scene_id, "nuscenes", str(root), CAMERAS, tuple(frames),
                 {"version": version, "scene_token": record.token,
                  "description": record.description})


class _SceneReader:
    """Turns sample_data records into validated camera samples and LiDAR sweeps."""

    def __init__(self, nusc, root: Path, version: str, scene_id: str):
        self.nusc, self.root, self.scene_id = nusc, root, scene_id
        self.tables = root / version
        self._calib: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}

    def record(self, table: str, token: str, referrer: str) -> dict:
        """The record of `table` with this token; SceneDataError naming the table and the
        referring record when there is none."""
        try:
            return self.nusc.get(table, token)
        except (KeyError, TypeError):  # TypeError: a token that is a list or an object
            raise self._error(f"{table}.json", f"{referrer} names {table} "
                              f"{str(token)[:80]!r}, which the table does not hold") from None

    def sample(self, token: str, referrer: str) -> SampleRecord:
        return parse_sample(self.record("sample", token, referrer), self.tables / "sample.json",
                            self.scene_id)

    def sample_data(self, token: str, referrer: str) -> SampleDataRecord:
        return parse_sample_data(self.record("sample_data", token, referrer),
                                 self.tables / "sample_data.json", self.scene_id)

    def frames_of_sample(self, sample: SampleRecord, sweeps: bool) -> list[Frame]:
        cams, lidars, ref = {}, [], None
        for channel, sd_token in sample.data.items():
            sd = self.sample_data(sd_token, f"sample {sample.token}")
            if channel not in KNOWN_CHANNELS:
                raise SceneDataError(self.scene_id, self.tables / "sensor.json",
                                     f"unknown sensor channel {str(channel)[:80]!r} "
                                     f"(sample_data {sd_token}); known: "
                                     f"{', '.join(KNOWN_CHANNELS)}")
            if channel in CAMERAS:
                cams[channel] = self.camera(channel, sd)
            elif channel == LIDAR:
                lidars.append(self.lidar(sd))
                ref = sd
        if ref is None:
            first_camera = next((c for c in CAMERAS if c in cams), None)
            if first_camera is None:
                raise self._error("sample_data.json", f"sample {sample.token} has neither a "
                                  "LiDAR nor a camera keyframe sample_data")
            ref = self.sample_data(sample.data[first_camera], f"sample {sample.token}")
        key = Frame(0, ref.timestamp_us, self.ego_to_world(ref), True, cams, tuple(lidars))
        if not sweeps:
            return [key]
        return [key] + self._sweep_frames(sample)

    def _sweep_frames(self, sample: SampleRecord) -> list[Frame]:
        per_camera: dict[str, list[SampleDataRecord]] = {}
        lidar_sds: list[SampleDataRecord] = []
        for channel, sd_token in sample.data.items():
            if channel not in CAMERAS and channel != LIDAR:
                continue
            chain = []
            sd = self.sample_data(sd_token, f"sample {sample.token}")
            while sd.next:
                if len(chain) > MAX_SWEEPS_BETWEEN_KEYFRAMES:
                    raise self._error("sample_data.json", f"channel {channel}: more than "
                                      f"{MAX_SWEEPS_BETWEEN_KEYFRAMES} sample_data records "
                                      f"follow sample_data {sd_token} without reaching a "
                                      "keyframe (a `next` chain that loops?)")
                sd = self.sample_data(sd.next, f"sample_data {sd.token}'s `next`")
                if sd.is_key_frame:
                    break
                chain.append(sd)
            if channel == LIDAR:
                lidar_sds = chain
            else:
                per_camera[channel] = chain
        count = max((len(c) for c in per_camera.values()), default=0)
        frames = []
        for j in range(count):
            cams = {ch: self.camera(ch, chain[j]) for ch, chain in per_camera.items()
                    if j < len(chain)}
            ref_channel = next(c for c in CAMERAS if c in cams)
            ref = per_camera[ref_channel][j]
            frames.append(Frame(0, ref.timestamp_us, self.ego_to_world(ref), False, cams, ()))
        if frames:
            times = np.array([np.mean([c.timestamp_us for c in f.cameras.values()])
                              for f in frames])
            assigned: list[list[LidarSweep]] = [[] for _ in frames]
            for sd in lidar_sds:
                assigned[int(np.abs(times - sd.timestamp_us).argmin())].append(self.lidar(sd))
            frames = [Frame(0, f.timestamp_us, f.ego_to_world, False, f.cameras, tuple(a))
                      for f, a in zip(frames, assigned, strict=True)]
        return frames

    def sensor_file(self, sd: SampleDataRecord, check: Callable[[str, str], None]) -> str:
        """The sample_data's file, inside the dataroot and checked by `check`."""
        path = inside_root(self.root, sd.filename, table=self.tables / "sample_data.json",
                           record=f"sample_data {sd.token}", scene=self.scene_id)
        try:
            if path.exists() and not path.is_file():  # a folder, a FIFO, a device
                raise SceneDataError(self.scene_id, path, f"sample_data {sd.token}: not a "
                                     "regular file")
            check(str(path), self.scene_id)
        except OSError as exc:  # unreadable: permissions, a name too long
            raise SceneDataError(self.scene_id, path, f"sample_data {sd.token}: cannot read "
                                 f"the file: {exc}") from None
        return str(path)

    def camera(self, channel: str, sd: SampleDataRecord) -> CameraSample:
        cam_to_ego, intrinsics = self.calibration(sd, camera=True)
        if sd.width < 1 or sd.height < 1:
            raise self._error("sample_data.json", f"sample_data {sd.token}: image size "
                              f"{sd.width}x{sd.height} is not positive")
        path = self.sensor_file(sd, check_jpeg_file)
        size = (sd.width, sd.height)
        return CameraSample(
            scene_id=self.scene_id, camera=channel, timestamp_us=sd.timestamp_us,
            intrinsics=intrinsics, cam_to_world=self.ego_to_world(sd) @ cam_to_ego,
            width=size[0], height=size[1], source_file=path,
            is_keyframe=sd.is_key_frame, token=sd.token,
            loader=partial(read_jpeg, path, self.scene_id, size),
        )

    def lidar(self, sd: SampleDataRecord) -> LidarSweep:
        sensor_to_ego, _ = self.calibration(sd, camera=False)
        path = self.sensor_file(sd, check_pcd_bin_file)
        return LidarSweep(
            scene_id=self.scene_id, sensor=LIDAR, timestamp_us=sd.timestamp_us,
            sensor_to_world=self.ego_to_world(sd) @ sensor_to_ego, source_file=path,
            is_keyframe=sd.is_key_frame, token=sd.token,
            loader=partial(read_pcd_bin, path, self.scene_id),
        )

    def calibration(self, sd: SampleDataRecord, camera: bool,
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        token = sd.calibrated_sensor_token
        if token not in self._calib:
            record = self.record("calibrated_sensor", token, f"sample_data {sd.token}")
            where = f"calibrated_sensor {token}"
            pose = self._pose(record, self.tables / "calibrated_sensor.json", where)
            k = None
            if camera:
                k = _array(record.get("camera_intrinsic"))
                if k is None or k.shape != (3, 3):
                    shape = None if k is None else k.shape
                    raise self._error("calibrated_sensor.json", f"{where}: camera_intrinsic has "
                                      f"shape {shape}, expected (3, 3)")
                if not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0 or np.any(
                        k[2] != (0, 0, 1)):
                    raise self._error("calibrated_sensor.json", f"{where}: camera_intrinsic "
                                      f"{k.tolist()} is not a pinhole matrix with positive focal "
                                      "lengths and last row (0, 0, 1)")
            self._calib[token] = (pose, k)
        return self._calib[token]

    def ego_to_world(self, sd: SampleDataRecord) -> np.ndarray:
        token = sd.ego_pose_token
        record = self.record("ego_pose", token, f"sample_data {sd.token}")
        return self._pose(record, self.tables / "ego_pose.json", f"ego_pose {token}")

    def _pose(self, record: dict, file: Path, where: str) -> np.ndarray:
        t, q = _array(record.get("translation")), _array(record.get("rotation"))
        if t is None or t.shape != (3,):
            raise self._error(file.name, f"{where}: translation has shape "
                              f"{None if t is None else t.shape}, expected (3,)")
        if q is None or q.shape != (4,):
            raise self._error(file.name, f"{where}: rotation has shape "
                              f"{None if q is None else q.shape}, expected (4,) (w, x, y, z)")
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(q))):
            raise self._error(file.name, f"{where}: NaN or infinite value in translation "
                              f"{t.tolist()} or rotation {q.tolist()}")
        norm = float(np.linalg.norm(q))
        if abs(norm - 1.0) > UNIT_QUATERNION_TOLERANCE:
            raise self._error(file.name, f"{where}: rotation quaternion {q.tolist()} has norm "
                              f"{norm:.6f}, expected a unit quaternion")
        return make_pose(quaternion_to_matrix(q / norm), t)

    def _error(self, table: str, problem: str) -> SceneDataError:
        return SceneDataError(self.scene_id, self.tables / table, problem)


def _array(value) -> np.ndarray | None:
    """The numbers of a table's list as float64, or None when it holds anything else
    (strings, nulls, ragged or too deeply nested lists, integers beyond float64)."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, RecursionError):
        return None
    if array.dtype.kind not in "iuf":
        return None
    return array.astype(np.float64)
