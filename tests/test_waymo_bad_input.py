"""Damaged Waymo segments: each fault a clear error naming the segment and the file;
`--skip-bad` reports the bad segment and reads the rest."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from distillprep.flows.cli import main as cli
from distillprep.scenes.datasets import read_dataset
from distillprep.scenes.errors import SceneDataError
from distillprep.scenes.synthetic.generate import SynthConfig, generate
from distillprep.scenes.waymo.records import FrameData, RangeImages, SegmentData
from distillprep.scenes.waymo.v1 import V1Segment, segment_files, write_v1_segment

NAME = "scene-0001"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("waymo_good")
    generate(root / "v1", "waymo-v1", SynthConfig(scenes=2, frames=2, width=96, height=64,
                                                   supersample=1, workers=1))
    generate(root / "v2", "waymo-v2", SynthConfig(scenes=1, frames=2, width=96, height=64,
                                                   supersample=1, workers=1))
    return root


def _copy(good, tmp_path, version="v1"):
    shutil.copytree(good / version, tmp_path / version)
    return tmp_path / version


def _data(path) -> SegmentData:
    """A written segment read back whole, to damage and write again."""
    seg = V1Segment(path)
    frames = tuple(FrameData(meta, {c.name: seg.jpeg(i, c.name) for c in meta.cameras},
                             {n: seg.range_images(i, n) for n in meta.lasers})
                   for i, meta in enumerate(seg.frames))
    return SegmentData(seg.name, tuple(seg.cameras.values()), tuple(seg.lasers.values()),
                       frames)


def _rewrite(root, change) -> None:
    path = segment_files(root)[0]
    data = change(_data(path))
    path.unlink()
    write_v1_segment(path.parent, data)


def _error(root, **options) -> str:
    with pytest.raises(SceneDataError) as info:
        for scene in read_dataset("waymo", str(root), scenes=[NAME], **options).scenes:
            for frame in scene.frames:
                frame.lidar_points()
    message = str(info.value)
    assert NAME in message, message
    return message


def test_a_truncated_tfrecord(good, tmp_path):
    root = _copy(good, tmp_path)
    path = segment_files(root)[0]
    path.write_bytes(path.read_bytes()[:-100])
    message = _error(root)
    assert path.name in message and "truncated" in message


def test_a_crc_mismatch(good, tmp_path):
    root = _copy(good, tmp_path)
    path = segment_files(root)[0]
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF
    path.write_bytes(bytes(data))
    message = _error(root)
    assert path.name in message and "data CRC mismatch" in message


def test_a_frame_without_a_camera(good, tmp_path):
    root = _copy(good, tmp_path)

    def drop_front(data):
        frame = data.frames[1]
        meta = replace(frame.meta, cameras=tuple(c for c in frame.meta.cameras if c.name != 1))
        return replace(data, frames=(data.frames[0], replace(frame, meta=meta)))

    _rewrite(root, drop_front)
    message = _error(root)
    assert "frame 1" in message and "no FRONT image" in message and ".tfrecord" in message


def test_an_unknown_camera_enum(good, tmp_path):
    root = _copy(good, tmp_path)

    def rename(data):  # the proto's enum is closed: an unknown value reads as UNKNOWN (0)
        frame = data.frames[0]
        cameras = (replace(frame.meta.cameras[0], name=0),) + frame.meta.cameras[1:]
        images = dict(frame.images)
        images[0] = images[1]
        return replace(data, frames=(replace(frame, meta=replace(frame.meta, cameras=cameras),
                                             images=images),) + data.frames[1:])

    _rewrite(root, rename)
    message = _error(root)
    assert "unknown camera name enum 0" in message and ".tfrecord" in message


def test_a_range_image_whose_rows_disagree_with_the_calibration(good, tmp_path):
    root = _copy(good, tmp_path)

    def crop_top(data):
        frame = data.frames[0]
        top = frame.ranges[1]
        ranges = dict(frame.ranges)
        ranges[1] = RangeImages(top.return1[1:], top.return2[1:], top.pose[1:])
        return replace(data, frames=(replace(frame, ranges=ranges),) + data.frames[1:])

    _rewrite(root, crop_top)
    message = _error(root)
    assert "63 rows" in message and "64 beam inclinations" in message and ".tfrecord" in message


def test_a_missing_v2_component(good, tmp_path):
    root = _copy(good, tmp_path, "v2")
    (root / "training" / "lidar_calibration" / f"{NAME}.parquet").unlink()
    message = _error(root)
    assert "lidar_calibration" in message


def test_skip_bad_reports_the_bad_segment_and_reads_the_rest(good, tmp_path, capsys):
    root = _copy(good, tmp_path)
    path = segment_files(root)[0]
    path.write_bytes(path.read_bytes()[:-100])
    read = read_dataset("waymo", str(root), skip_bad=True)
    assert [s.scene_id for s in read.scenes] == ["scene-0002"]
    assert [f.scene for f in read.failures] == [NAME]
    assert "truncated" in str(read.failures[0].error)
    # reported and gone on; the exit status says a segment was skipped
    assert cli(["scenes", str(root), "--dataset", "waymo", "--skip-bad", "--json"]) == 1
    out = capsys.readouterr().out
    assert '"scene-0002"' in out and f'"scene": "{NAME}"' in out


def test_a_good_copy_reads(good, tmp_path):
    root = _copy(good, tmp_path)
    scene = read_dataset("waymo", str(root), scenes=[NAME]).scenes[0]
    assert len(scene.frames) == 2 and len(scene.frames[0].lidar_points().points) > 1000
    assert np.isfinite(scene.frames[1].lidar_points().points).all()
