"""`export distillnerf`: a real store with synthetic teacher arrays of known values,
exported to the layout the official DistillNeRF code reads, checked file by file."""

import io
import json
from pathlib import Path, PurePosixPath

import matplotlib.image as mpimg
import numpy as np
import pytest
from PIL import Image
from store_helpers import write_teacher_stage

from distillprep.flows.cli import main
from distillprep.storage_schemas import export_distillnerf as export_module
from distillprep.storage_schemas.errors import NotAStoreError, StoreError
from distillprep.storage_schemas.export_distillnerf import (
    export_distillnerf,
    offset_folder,
    save_npy,
    sky_mask,
)
from distillprep.storage_schemas.store import open_store
from distillprep.teachers.nerf.virtual import virtual_pose

HT, WT = 27, 48
RIGHT, LEFT, UP = (1, 0, 0, 0, 0, 0), (-1, 0, 0, 0, 0, 0), (0, -1, 0, 0, 0, 0)
# (source sample, offset, shift m, extra yaw deg): what each synthetic virtual view is.
VIEWS = [
    (0, RIGHT, 0.0, 0.0),
    (0, LEFT, 0.0, 0.0),
    (0, UP, 0.0, 0.0),
    (1, RIGHT, 0.25, 0.0),             # moved back out of a wall
    (2, (0.5, 0, 0, 0, 0, 0), 0.0, 0.0),  # a non-integer policy offset
    (3, RIGHT, 0.0, 3.0),              # jittered: off the pose its folder names
    (0, RIGHT, 0.0, 0.0),              # the same file as view 0
]


def _teacher(store, scene_id, hv=HT, wv=WT):
    """Teacher arrays with values known per pixel, exactly representable in float16."""
    group = store.scene(scene_id)
    c2w = group["cam_to_world"][...]
    n = len(c2w)
    cols = np.arange(WT)
    depth = np.stack([np.tile((i + 1) + 0.5 * cols, (HT, 1)) for i in range(n)])
    depth[:, 0] = 0  # top row: the teacher saw nothing
    opacity = np.ones((n, HT, WT))
    opacity[:, 1] = 0.25  # below the sky threshold
    opacity[:, 2] = 0.5  # exactly at it: not sky
    v = len(VIEWS)
    rows, vcols = np.mgrid[0:hv, 0:wv]
    rgb = np.stack([np.stack([np.full((hv, wv), 30 * k + 20), vcols * 4, rows * 8], axis=-1)
                    for k in range(v)]).astype(np.uint8)
    vdepth = np.stack([np.tile(100 + k + 0.25 * np.arange(wv), (hv, 1)) for k in range(v)])
    vopacity = np.ones((v, hv, wv))
    vopacity[:, :, 0] = 0.0
    poses = []
    for src, offset, shift, yaw in VIEWS:
        pose = virtual_pose(c2w[src], offset, yaw_jitter_deg=yaw)
        pose[:3, 3] -= shift * c2w[src][:3, :3] @ np.asarray(offset[:3], float) / np.linalg.norm(
            offset[:3])
        poses.append(pose)
    k = np.array([[40.0, 0, 23.5], [0, 40.0, 13.0], [0, 0, 1]])
    return {
        "teacher_depth": depth.astype(np.float16),
        "teacher_opacity": opacity.astype(np.float16),
        "virtual_rgb": rgb,
        "virtual_depth": vdepth.astype(np.float16),
        "virtual_opacity": vopacity.astype(np.float16),
        "virtual_intrinsics": np.tile(k, (v, 1, 1)),
        "virtual_cam_to_world": np.stack(poses),
        "virtual_source_sample": np.array([s for s, *_ in VIEWS], dtype=np.int32),
        "virtual_offset": np.array([o for _, o, *_ in VIEWS], dtype=np.float64),
        "virtual_shift": np.array([s for _, _, s, _ in VIEWS], dtype=np.float32),
    }


@pytest.fixture
def teacher_store(store_copy):
    """scene-0001 with teacher arrays, scene-0002 without."""
    store = open_store(store_copy, mode="a")
    teacher = _teacher(store, "scene-0001")
    write_teacher_stage(store, "scene-0001", teacher)
    return store_copy, teacher


def _sources(store_path):
    table = open_store(store_path).manifest(["scene-0001"])
    return {r["sample_index"]: PurePosixPath(r["source_file"]) for r in table.to_pylist()}


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _expected_files(sources, views):
    files = set()
    for source in sources.values():
        cam, stem = source.parts[1], source.stem
        files |= {f"samples_0_0_0_0_0_0/depths/{cam}/{stem}.npy",
                  f"samples_0_0_0_0_0_0/gt_sky_masks/{cam}/{stem}.npy"}
    for view in views:
        src, offset = VIEWS[view][:2]
        folder = offset_folder(offset)
        cam, name = sources[src].parts[1], sources[src].name
        stem = sources[src].stem
        files |= {f"{folder}/rgbs/{cam}/{name}", f"{folder}/depths/{cam}/{stem}.npy",
                  f"{folder}/gt_sky_masks/{cam}/{stem}.npy"}
    return files


def test_folder_names_follow_distillnerf():
    assert offset_folder(RIGHT) == "samples_1_0_0_0_0_0"
    assert offset_folder(LEFT) == "samples_-1_0_0_0_0_0"
    assert offset_folder(UP) == "samples_0_-1_0_0_0_0"
    assert offset_folder((0, 0, 0, 0, 0, 0)) == "samples_0_0_0_0_0_0"
    assert offset_folder((-0.0, 0.5, -1.25, 0, 15, 0)) == "samples_0_0.5_-1.25_0_15_0"
    assert offset_folder((0.1 + 0.2, 0, 0, 0, 0, 0)) == "samples_0.30000000000000004_0_0_0_0_0"
    with pytest.raises(ValueError, match="6"):
        offset_folder((1, 0, 0))


def test_sky_mask_from_depth_and_opacity():
    depth = np.array([[0.0, 5.0, 5.0, 5.0]])
    opacity = np.array([[1.0, 0.49, 0.5, 1.0]])
    np.testing.assert_array_equal(sky_mask(depth, opacity, 0.5), [[1, 1, 0, 0]])
    np.testing.assert_array_equal(sky_mask(depth, None, 0.5), [[1, 0, 0, 0]])
    assert sky_mask(depth, opacity, 0.5).dtype == np.uint8


def test_export_writes_distillnerf_layout_with_exact_values(teacher_store, tmp_path):
    store_path, teacher = teacher_store
    out = tmp_path / "nuscenes_emernerf"
    report = export_distillnerf(store_path, out, scene_ids=["scene-0001"])
    sources = _sources(store_path)
    assert all(s.parts[0] == "samples" and s.suffix == ".jpg" for s in sources.values())
    written_views = [0, 1, 2, 4]
    assert _files(out) == _expected_files(sources, written_views) == set(report.files)
    assert report.scenes == ["scene-0001"] and report.warnings == []
    assert report.real_views == len(sources) == 18 and report.virtual_views == 4
    assert [(s.index, s.reason, s.folder) for s in report.skipped] == [
        (3, "moved", "samples_1_0_0_0_0_0"), (5, "off-pose", "samples_1_0_0_0_0_0"),
        (6, "duplicate", "samples_1_0_0_0_0_0")]
    assert "0.25 m" in report.skipped[0].detail
    # Real views: depth round-trips exactly, float32 metres; the sky mask marks depth 0 and
    # opacity < 0.5.
    expected_sky = np.zeros((HT, WT), np.uint8)
    expected_sky[:2] = 1
    for index, source in sources.items():
        cam, stem = source.parts[1], source.stem
        depth = np.load(out / f"samples_0_0_0_0_0_0/depths/{cam}/{stem}.npy")
        assert depth.dtype == np.float32 and depth.shape == (HT, WT)
        np.testing.assert_array_equal(depth, teacher["teacher_depth"][index].astype(np.float32))
        assert depth[5, 3] == index + 1 + 1.5
        sky = np.load(out / f"samples_0_0_0_0_0_0/gt_sky_masks/{cam}/{stem}.npy")
        assert sky.dtype == np.uint8
        np.testing.assert_array_equal(sky, expected_sky)
    # Virtual views: RGB is a real JPEG that matplotlib reads as uint8 (what DistillNeRF
    # does), close to the teacher's colours; depth exact.
    for view in written_views:
        src, offset = VIEWS[view][:2]
        folder, source = offset_folder(offset), sources[src]
        cam = source.parts[1]
        rgb_path = out / folder / "rgbs" / cam / source.name
        assert rgb_path.read_bytes()[:2] == b"\xff\xd8"
        with Image.open(rgb_path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (WT, HT)
        rgb = mpimg.imread(rgb_path)
        assert rgb.dtype == np.uint8 and rgb.shape == (HT, WT, 3)
        error = np.abs(rgb.astype(int) - teacher["virtual_rgb"][view].astype(int))
        assert error.mean() < 1.5 and error.max() <= 12
        depth = np.load(out / folder / "depths" / cam / f"{source.stem}.npy")
        np.testing.assert_array_equal(depth, teacher["virtual_depth"][view].astype(np.float32))
        assert depth[0, 4] == 100 + view + 1.0
        sky = np.load(out / folder / "gt_sky_masks" / cam / f"{source.stem}.npy")
        assert sky[:, 0].all() and not sky[:, 1:].any()
    assert (out / "samples_0.5_0_0_0_0_0" / "depths").is_dir()


def test_include_moved_writes_moved_and_off_pose_views(teacher_store, tmp_path):
    store_path, teacher = teacher_store
    out = tmp_path / "export"
    report = export_distillnerf(open_store(store_path), out, scene_ids=["scene-0001"],
                                include_moved=True)
    sources = _sources(store_path)
    assert _files(out) == _expected_files(sources, [0, 1, 2, 3, 4, 5])
    assert [(s.index, s.reason) for s in report.skipped] == [(6, "duplicate")]
    cam, stem = sources[1].parts[1], sources[1].stem
    moved = np.load(out / f"samples_1_0_0_0_0_0/depths/{cam}/{stem}.npy")
    np.testing.assert_array_equal(moved, teacher["virtual_depth"][3].astype(np.float32))


def test_export_again_overwrites_in_place_and_leaves_no_temporary_files(teacher_store,
                                                                         tmp_path):
    store_path, _ = teacher_store
    out = tmp_path / "export"
    first = export_distillnerf(store_path, out, scene_ids=["scene-0001"])
    before = {p: (out / p).read_bytes() for p in first.files}
    second = export_distillnerf(store_path, out, scene_ids=["scene-0001"])
    assert sorted(second.files) == sorted(first.files)
    assert {p: (out / p).read_bytes() for p in second.files} == before
    assert not [p for p in out.rglob(".*")]


def test_a_killed_write_leaves_neither_half_files_nor_temporaries(tmp_path, monkeypatch):
    target = tmp_path / "d" / "x.npy"
    save_npy(target, np.arange(4, dtype=np.float32))
    good = target.read_bytes()

    def dies_halfway(handle, array, allow_pickle):
        handle.write(b"\x93NUMPY half")
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module.np, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_npy(target, np.zeros(4, dtype=np.float32))
    assert target.read_bytes() == good
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.npy"]


def test_a_scene_without_teacher_arrays_is_an_error_before_anything_is_written(
        teacher_store, tmp_path):
    store_path, _ = teacher_store
    out = tmp_path / "export"
    with pytest.raises(StoreError, match=r"scene 'scene-0002'.*distillprep teacher render"):
        export_distillnerf(store_path, out)
    assert not out.exists() or _files(out) == set()
    with pytest.raises(NotAStoreError):
        export_distillnerf(tmp_path / "nowhere", out)


def test_virtual_size_differing_from_real_depth_is_a_warning(store_copy, tmp_path):
    store = open_store(store_copy, mode="a")
    write_teacher_stage(store, "scene-0001", _teacher(store, "scene-0001", hv=54, wv=96))
    report = export_distillnerf(store, tmp_path / "export", scene_ids=["scene-0001"])
    assert len(report.warnings) == 1
    assert "96x54" in report.warnings[0] and "48x27" in report.warnings[0]


def test_cli_export_distillnerf_end_to_end(teacher_store, tmp_path, capsys):
    store_path, _ = teacher_store
    out = tmp_path / "export"
    rc = main(["export", "distillnerf", str(store_path), str(out), "--scene", "scene-0001",
               "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["real_views"] == 18 and report["virtual_views"] == 4
    assert report["skipped_by_reason"] == {"moved": 1, "off-pose": 1, "duplicate": 1}
    assert report["files"] == len(_files(out)) == 18 * 2 + 4 * 3
    rc = main(["export", "distillnerf", str(store_path), str(tmp_path / "all"),
               "--scene", "scene-0001", "--include-moved"])
    text = capsys.readouterr().out
    assert rc == 0 and "6 virtual view(s)" in text and "1 duplicate" in text
    rc = main(["export", "distillnerf", str(store_path), str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 1 and "scene-0002" in err and "teacher render" in err
    rc = main(["export", "distillnerf", str(tmp_path / "nowhere"), str(tmp_path / "x")])
    assert rc == 2 and "not a distillprep store" in capsys.readouterr().err


def test_moved_hint_in_text_output(teacher_store, tmp_path, capsys):
    store_path, _ = teacher_store
    assert main(["export", "distillnerf", str(store_path), str(tmp_path / "e"),
                 "--scene", "scene-0001"]) == 0
    text = capsys.readouterr().out
    assert "1 moved" in text and "--include-moved" in text
    assert io.StringIO(text).readline().startswith(str(tmp_path / "e"))
