"""Scenes from a Waymo Open Dataset folder, v1 (TFRecord) or v2 (Parquet), one scene per
segment, without TensorFlow: both containers open as `records.Segment`s and become scenes
here, so v1 and v2 of one segment read into the same scene.

- Cameras: `cam_to_world = pose of the image (at its pose_timestamp) @ extrinsic @ axes`,
  Waymo's x-forward camera axes turned into OpenCV's; K from f_u, f_v, c_u - 0.5,
  c_v - 0.5. Lens distortion (k1..k3, p1, p2) is not applied, as EmerNeRF and DriveStudio
  leave it (Waymo's is small); a scene's metadata gives the largest coefficient.
- Cameras read: by default the three front ones (FRONT, FRONT_LEFT, FRONT_RIGHT, all
  1920x1280, what EmerNeRF and NOTR use); the side cameras are 1920x886 and a store holds
  one image size per scene.
- LiDAR: every laser's two returns, as Waymo's `convert_range_image_to_point_cloud` gives
  them (`range_image.py`), in the vehicle frame at the frame time, stored per laser in the
  laser frame with `sensor_to_world = frame pose @ extrinsic`; a return's origin is the
  laser at the frame time (as EmerNeRF takes it; the TOP's turn moves it up to ~1 m).
- Every frame is a keyframe (Waymo labels every 10 Hz frame).
"""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError, DatasetNotFoundError, SceneDataError, SceneError
from ..geometry import invert_pose
from ..ids import validate_scene_id
from ..model import CameraSample, DatasetRead, Frame, LidarSweep, Scene, SceneFailure
from ..paths import inside_root
from ..tables import IMAGE_SIDE_RANGE, TIMESTAMP_US_RANGE, table_integer, table_timestamp_us
from .range_image import range_image_points, row_inclinations
from .records import CAMERA_NAMES, LASER_NAMES, Segment

DEFAULT_CAMERAS = ("FRONT", "FRONT_LEFT", "FRONT_RIGHT")
CAMERA_ENUMS = {name: enum for enum, name in CAMERA_NAMES.items()}
V1_PREFIX, V1_SUFFIX = "segment-", "_with_camera_labels.tfrecord"


def detect_container(dataroot: str | Path) -> tuple[str, list[Path]]:
    """("v1", the TFRecord files) or ("v2", the component roots) found under dataroot."""
    from .v1 import segment_files

    root = Path(dataroot)
    if not root.is_dir():
        raise DatasetNotFoundError(f"no Waymo dataset at {root}: not a folder")
    files = segment_files(root)
    v2_roots = sorted({p.parent.parent for p in root.rglob("camera_image/*.parquet")
                       if root / "ground_truth" not in p.parents})
    if files and v2_roots:
        raise ConfigError(f"{root} holds both Waymo v1 TFRecords and v2 Parquet components: "
                          "point --dataroot at one of them")
    if files:
        return "v1", files
    if v2_roots:
        return "v2", v2_roots
    raise DatasetNotFoundError(f"no Waymo segment under {root}: neither *.tfrecord files (v1) "
                               "nor camera_image/*.parquet components (v2)")


def _v1_name(path: Path) -> str:
    name = path.name
    if name.startswith(V1_PREFIX) and name.endswith(V1_SUFFIX):
        return name[len(V1_PREFIX):-len(V1_SUFFIX)]
    return path.stem


def _catalogue(dataroot: str | Path, version: str | None) -> tuple[str, dict[str, tuple]]:
    """The container and, per segment name, how to open it (kind, path)."""
    found, places = detect_container(dataroot)
    if version is not None and version != found:
        raise ConfigError(f"{dataroot} holds Waymo {found}, not {version}")
    if found == "v1":
        return found, {_v1_name(p): ("v1", p) for p in places}
    from .v2 import segment_names

    return found, {name: ("v2", root) for root in places for name in segment_names(root)}


def list_waymo(dataroot: str | Path, version: str | None = None) -> tuple[str, list[str]]:
    """The container (v1 or v2) and the segment names, from file names alone (v1: Waymo's
    `segment-<name>_with_camera_labels.tfrecord`)."""
    version, segments = _catalogue(dataroot, version)
    return version, list(segments)


def open_segment(kind: str, place: Path, name: str, dataroot: Path | None = None) -> Segment:
    """A v1 TFRecord or a v2 segment of a component root, opened; its files must lie
    inside `dataroot` (default: the folder holding them), symlinks followed."""
    if kind == "v1":
        from .v1 import V1Segment

        root = place.parent if dataroot is None else dataroot
        return V1Segment(inside_root(root, place.relative_to(root), table=place,
                                     record=f"segment {name}", scene=name), name)
    from .v2 import V2Segment

    return V2Segment(place, name, dataroot=dataroot)


def read_waymo(dataroot: str | Path, version: str | None = None,
               scenes: list[str] | None = None, sweeps: bool = False,
               skip_bad: bool = False, cameras: tuple[str, ...] = DEFAULT_CAMERAS,
               ) -> DatasetRead:
    """Read segments (all, or those named) of a Waymo v1 or v2 folder as scenes.

    version: "v1" or "v2" to insist on one (default: what the folder holds).
    sweeps: accepted for the CLI's sake; every Waymo frame is a keyframe.
    skip_bad: record a segment that fails in `failures` and go on, instead of raising.
    cameras: the cameras read, by Waymo name.
    """
    unknown = [c for c in cameras if c not in CAMERA_ENUMS]
    if unknown or not cameras:
        raise ConfigError(f"unknown Waymo camera(s) {unknown}; known: {list(CAMERA_ENUMS)}")
    root = Path(dataroot).resolve()
    version, segments = _catalogue(root, version)
    wanted = list(segments) if scenes is None else list(scenes)
    result = DatasetRead(version)
    for name in wanted:
        try:
            validate_scene_id(name)
            if name not in segments:
                raise SceneDataError(name, root, f"no Waymo {version} segment of that name")
            kind, place = segments[name]
            result.scenes.append(segment_scene(open_segment(kind, place, name, root), root,
                                               version, cameras))
        except SceneError as exc:
            if not skip_bad:
                raise
            result.failures.append(SceneFailure(str(name), exc))
    return result


def segment_scene(segment: Segment, root: Path, version: str,
                  cameras: tuple[str, ...] = DEFAULT_CAMERAS) -> Scene:
    """The scene of an opened segment (pixels and points load lazily)."""
    name = validate_scene_id(segment.name)

    def fail(problem: str) -> SceneDataError:
        return SceneDataError(name, segment.file, problem)

    enums = [CAMERA_ENUMS[c] for c in cameras]
    for enum in enums:
        if enum not in segment.cameras:
            raise fail(f"no calibration for camera {CAMERA_NAMES[enum]} (calibrated: "
                       f"{[CAMERA_NAMES[c] for c in segment.cameras]})")
        for side in ("width", "height"):
            table_integer(getattr(segment.cameras[enum], side), *IMAGE_SIDE_RANGE,
                          file=segment.file, where=f"camera {CAMERA_NAMES[enum]} calibration",
                          field=side, scene=name)
    frames = []
    for i, meta in enumerate(segment.frames):
        where = f"frame {i} (timestamp {meta.timestamp_us})"
        table_timestamp_us(meta.timestamp_us, file=segment.file, where=f"frame {i}",
                           field="timestamp", scene=name)
        by_name = {c.name: c for c in meta.cameras}
        samples = {}
        for enum in enums:
            if enum not in by_name:
                raise fail(f"{where} has no {CAMERA_NAMES[enum]} image")
            samples[CAMERA_NAMES[enum]] = _camera_sample(segment, root, i, by_name[enum])
        sweeps = []
        for laser in meta.lasers:
            if laser not in segment.lasers:
                raise fail(f"{where}: laser {LASER_NAMES[laser]} has no calibration")
            sweeps.append(LidarSweep(
                scene_id=name, sensor=LASER_NAMES[laser], timestamp_us=meta.timestamp_us,
                sensor_to_world=meta.pose @ segment.lasers[laser].extrinsic,
                source_file=str(_absolute(root, segment.laser_source(i, laser))),
                is_keyframe=True, token=f"{name}/{meta.timestamp_us}/{LASER_NAMES[laser]}",
                loader=partial(_laser_points, segment, i, laser, fail), contained=True))
        frames.append(Frame(i, meta.timestamp_us, meta.pose, True, samples, tuple(sweeps)))
    distortion = max((float(np.abs(c.intrinsic[4:]).max()) for c in segment.cameras.values()),
                     default=0.0)
    return Scene(name, "waymo", str(root), tuple(cameras), tuple(frames),
                 {"version": version, "segment_file": str(segment.file),
                  "max_distortion_coefficient": distortion})


def _absolute(root: Path, path: Path) -> Path:
    return path if path.is_absolute() else root / path


def _camera_sample(segment: Segment, root: Path, frame: int, meta) -> CameraSample:
    cal = segment.cameras[meta.name]
    source = _absolute(root, segment.image_source(frame, meta.name))
    jpeg = partial(segment.jpeg, frame, meta.name)
    seconds = float(meta.pose_timestamp)
    if not TIMESTAMP_US_RANGE[0] <= seconds * 1e6 <= TIMESTAMP_US_RANGE[1]:  # NaN too
        raise SceneDataError(segment.name, source, f"frame {frame} camera "
                             f"{CAMERA_NAMES[meta.name]}: pose_timestamp {seconds} s is not a "
                             "plausible time (1970 to 2500)")
    return CameraSample(
        scene_id=segment.name, camera=CAMERA_NAMES[meta.name],
        timestamp_us=int(round(seconds * 1e6)),
        intrinsics=cal.opencv_intrinsics(), cam_to_world=meta.pose @ cal.cam_to_vehicle(),
        width=cal.width, height=cal.height, source_file=str(source), is_keyframe=True,
        token=f"{segment.name}/{segment.frames[frame].timestamp_us}/{CAMERA_NAMES[meta.name]}",
        loader=partial(_decode, jpeg, cal.width, cal.height, segment.name, source), jpeg=jpeg)


def _decode(jpeg, width: int, height: int, segment: str, source: Path) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(jpeg())) as image:
            rgb = np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise SceneDataError(segment, source, f"not a readable JPEG: {exc}") from exc
    if rgb.shape[:2] != (height, width):
        raise SceneDataError(segment, source, f"image is {rgb.shape[1]}x{rgb.shape[0]}; its "
                             f"calibration says {width}x{height}")
    return rgb


def _laser_points(segment: Segment, frame: int, laser: int, fail,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Both returns of a laser's range images as points (N, 3) in the laser frame and
    their intensity (N,)."""
    cal = segment.lasers[laser]
    images = segment.range_images(frame, laser)
    where = f"frame {frame} laser {LASER_NAMES[laser]}"
    height, width = images.return1.shape[:2]
    if cal.inclinations is not None and len(cal.inclinations) != height:
        raise fail(f"{where}: range image has {height} rows, its calibration "
                   f"{len(cal.inclinations)} beam inclinations")
    if images.pose is not None and images.pose.shape != (height, width, 6):
        raise fail(f"{where}: pose range image is {list(images.pose.shape)}, the range image "
                   f"{[height, width]}")
    inclinations = row_inclinations(cal.inclination_min, cal.inclination_max,
                                    cal.inclinations, height)
    frame_pose = segment.frames[frame].pose
    points, intensity = [], []
    for returns in (images.return1, images.return2):
        if returns is None:
            continue
        if returns.shape != (height, width, 4):
            raise fail(f"{where}: range image is {list(returns.shape)}, expected "
                       f"{[height, width, 4]}")
        valid = returns[..., 0] > 0
        vehicle = range_image_points(returns[..., 0].astype(np.float64), inclinations,
                                     cal.extrinsic, images.pose,
                                     frame_pose if images.pose is not None else None)
        points.append(vehicle[valid])
        intensity.append(returns[..., 1][valid])
    to_laser = invert_pose(cal.extrinsic)
    local = np.concatenate(points) @ to_laser[:3, :3].T + to_laser[:3, 3]
    return local, np.concatenate(intensity).astype(np.float32)
