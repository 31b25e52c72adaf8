"""Stage commits: a stage writes only its own arrays and manifest columns; a stage computed
from replaced inputs is stale and hidden; two commits of one stage from the same state:
one wins, the other is told; and the validator's rules for stage arrays."""

from datetime import timedelta

import numpy as np
import pytest
from store_helpers import (
    feature_arrays,
    feature_record,
    ingest_arrays,
    ingest_provenance,
    manifest,
    scene_attrs,
    teacher_arrays,
    teacher_record,
    write_scene,
    write_teacher_stage,
)

from distillprep.storage_schemas import store as store_module
from distillprep.storage_schemas.errors import (
    CommitConflictError,
    InputsChangedError,
    ReplacedWhileReadingError,
    SceneIncompleteError,
    SchemaViolationError,
)
from distillprep.storage_schemas.store import create_store, open_store
from distillprep.storage_schemas.validate import validate_store


def _first_scene(path):
    store = open_store(path, mode="a")
    return store, store.scenes()[0]


def _files(root, prefix):
    return {p.relative_to(root): p.stat().st_mtime_ns
            for p in (root / prefix).rglob("*") if p.is_file()}


@pytest.mark.parametrize("views", [0, 5])
def test_a_stage_commit_writes_only_its_own_arrays(store_copy, views, monkeypatch):
    store, scene_id = _first_scene(store_copy)
    view = store.scene(scene_id)
    ingest_files = _files(store_copy, f"scenes/{scene_id}/ingest")
    ingest_manifest = (store_copy / view.commits["ingest"].manifest).read_bytes()
    before = {n: view[n][...] for n in view.array_names()}
    n = view.attrs.num_samples
    arrays = teacher_arrays(n, views)
    store.commit_stage(scene_id, teacher_record(store, scene_id), arrays,
                       {"teacher_psnr": [float(i) for i in range(n)],
                        "has_teacher_depth": [True] * n, "has_teacher_opacity": [True] * n})
    # the ingest stage's files are the very same bytes, untouched
    assert _files(store_copy, f"scenes/{scene_id}/ingest") == ingest_files
    assert (store_copy / view.commits["ingest"].manifest).read_bytes() == ingest_manifest
    view = store.scene(scene_id)
    for name, data in before.items():
        assert np.array_equal(view[name][...], data), name
    for name, data in arrays.items():
        assert np.array_equal(view[name][...], data), name
    assert set(view.stages()) == {"ingest", "teacher"}
    manifest = store.manifest([scene_id])
    assert manifest.column("teacher_psnr").to_pylist() == list(range(n))
    assert all(manifest.column("has_teacher_depth").to_pylist())
    assert all(manifest.column("has_rgb_jpeg").to_pylist())
    report = validate_store(store_copy, deep=True)
    assert report.ok, [str(f) for f in report.errors]
    # a second render replaces the stage; the old version stays for the grace period (a
    # reader that opened it can finish) and a later commit removes it after that
    first = view.commits["teacher"].attempt
    write_teacher_stage(store, scene_id, teacher_arrays(n, 2, seed=1))
    view = store.scene(scene_id)
    assert view["virtual_rgb"].shape[0] == 2 and view.commits["teacher"].sequence == 2
    assert (store_copy / "scenes" / scene_id / "teacher" / first).exists()
    assert validate_store(store_copy, deep=True).ok
    monkeypatch.setattr(store_module, "SUPERSEDED_GRACE", timedelta(0))
    write_teacher_stage(store, scene_id, teacher_arrays(n, 1, seed=2))
    left = sorted(p.name for p in (store_copy / "scenes" / scene_id / "teacher").iterdir())
    assert left == sorted(["zarr.json", store.scene(scene_id).commits["teacher"].attempt])
    assert validate_store(store_copy, deep=True).ok


def test_a_stage_commit_refuses_inconsistent_arrays(store_copy):
    store, scene_id = _first_scene(store_copy)
    n = store.scene_attrs(scene_id).num_samples
    arrays = teacher_arrays(n, 3)
    record = teacher_record(store, scene_id)
    with pytest.raises(SchemaViolationError, match="do not belong to this stage"):
        store.commit_stage(scene_id, record, {**arrays, "lidar_depth": None})
    bad = {**arrays, "virtual_depth": arrays["virtual_depth"][:2]}
    with pytest.raises(SchemaViolationError, match="V = 2, but array virtual_rgb has V = 3"):
        store.commit_stage(scene_id, record, bad)
    with pytest.raises(SchemaViolationError, match=f"N = {n + 1}, the scene has N = {n}"):
        store.commit_stage(scene_id, record, teacher_arrays(n + 1, 3))
    partial = {k: v for k, v in arrays.items() if k != "virtual_depth"}
    with pytest.raises(SchemaViolationError, match=r"\['virtual_depth'\] of this stage are "
                       "missing"):
        store.commit_stage(scene_id, record, partial)
    with pytest.raises(SceneIncompleteError, match="ingest it first"):
        store.commit_stage("scene-9999", record, arrays)
    assert "teacher" not in store.scene(scene_id).stages()
    assert not (store_copy / "scenes" / scene_id / "teacher").exists() or not any(
        p.name != "zarr.json" for p in (store_copy / "scenes" / scene_id / "teacher").iterdir())


def test_a_stage_made_from_replaced_inputs_is_stale_and_hidden(tmp_path):
    store = create_store(tmp_path / "s.zarr", "synthetic", "v0")
    write_scene(store, "s", seed=0)
    write_teacher_stage(store, "s", teacher_arrays(4, 2))
    store.commit_stage("s", feature_record(store, "s", "dino"), feature_arrays("dino", 4, 2))
    assert set(store.scene("s").stages()) == {"ingest", "teacher", "dino_features"}
    write_scene(store, "s", seed=0)  # the same content again: nothing goes stale
    assert set(store.scene("s").stages()) == {"ingest", "teacher", "dino_features"}
    write_scene(store, "s", seed=1)  # other content: everything made from it goes stale
    view = store.scene("s")
    assert set(view.stages()) == {"ingest"} and set(view.stale) == {"teacher", "dino_features"}
    assert "teacher_depth" not in view and "dino_features" not in view
    with pytest.raises(SceneIncompleteError, match="stale.*run `distillprep teacher"):
        view["teacher_depth"]
    assert store.manifest(["s"]).column("teacher_psnr").null_count == 4
    report = validate_store(tmp_path / "s.zarr")  # outputs not of its data: not valid
    assert not report.ok
    stale = {f.message.split()[1] for f in report.errors if f.rule == "stale-stage"}
    assert stale == {"teacher", "dino_features"}
    assert {f.rule for f in report.errors} == {"stale-stage"}
    assert "run `distillprep teacher fit / teacher render` again" in str(report.errors[0])
    # features made before the teacher rendered are stale once it has
    write_teacher_stage(store, "s", teacher_arrays(4, 2))
    store.commit_stage("s", feature_record(store, "s", "clip"), feature_arrays("clip", 4, 2))
    assert set(store.scene("s").stages()) == {"ingest", "teacher", "clip_features"}


def test_a_stage_whose_inputs_change_while_it_runs_is_not_committed(tmp_path):
    store = create_store(tmp_path / "s.zarr", "synthetic", "v0")
    write_scene(store, "s", seed=0)
    record = teacher_record(store, "s")  # the job reads its inputs ...
    write_scene(store, "s", seed=1)  # ... the scene is re-ingested meanwhile
    with pytest.raises(InputsChangedError, match="replaced while it ran"):
        store.commit_stage("s", record, teacher_arrays(4, 2))
    assert "teacher" not in store.scene("s").heads


def test_two_commits_of_one_stage_from_the_same_state_one_wins(tmp_path):
    store = create_store(tmp_path / "s.zarr", "synthetic", "v0")
    write_scene(store, "s")
    write_teacher_stage(store, "s", teacher_arrays(4, 1), expect_sequence=0)
    with pytest.raises(CommitConflictError, match="another writer committed it first"):
        write_teacher_stage(store, "s", teacher_arrays(4, 3), expect_sequence=0)
    view = store.scene("s")
    assert view["virtual_rgb"].shape[0] == 1 and view.commits["teacher"].sequence == 1
    teacher_dir = tmp_path / "s.zarr" / "scenes" / "s" / "teacher"
    assert sorted(p.name for p in teacher_dir.iterdir()) == sorted(
        ["zarr.json", view.commits["teacher"].attempt])
    arrays = ingest_arrays(4, 6, 8, seed=3)
    with pytest.raises(CommitConflictError):  # a stale write of the ingest stage loses too
        store.write_scene(scene_attrs("s", 4, 4, 6, 8), arrays, manifest("s", 4, arrays),
                          ingest_provenance(), expect_sequence=0)
    assert store.scene("s").commits["ingest"].sequence == 1


def test_validator_checks_virtual_view_values(store_copy):
    store, scene_id = _first_scene(store_copy)
    n = store.scene_attrs(scene_id).num_samples
    arrays = teacher_arrays(n, 3)
    arrays["virtual_source_sample"][1] = n  # names a sample the scene does not have
    arrays["virtual_cam_to_world"][2, :3, :3] *= 2.0  # not a rotation
    write_teacher_stage(store, scene_id, arrays)
    found = {(f.rule, f.array) for f in validate_store(store_copy).errors}
    assert found == {("value-range", "virtual_source_sample"),
                     ("pose-orthonormal", "virtual_cam_to_world")}


def test_infer_dims_reports_conflicts_in_schema_order_whatever_the_input_order():
    from distillprep.storage_schemas.spec import infer_dims

    shapes = {"rgb_jpeg": (18, 100), "lidar_depth": (18, 9, 16), "teacher_depth": (19, 9, 16)}
    forward = infer_dims(shapes)
    backward = infer_dims(dict(reversed(shapes.items())))
    assert forward == backward
    assert forward[0] == {"N": 18, "J": 100, "H": 9, "W": 16, "Ht": 9, "Wt": 16}
    assert forward[1] == [("teacher_depth", "array teacher_depth: N = 19, but array "
                                            "rgb_jpeg has N = 18")]


def test_a_reader_of_a_version_removed_under_it_is_told(tmp_path, monkeypatch):
    """Missing chunks read as zeros in zarr: a reader whose version was replaced and
    removed while it read gets a retryable error, never those zeros."""
    monkeypatch.setattr(store_module, "SUPERSEDED_GRACE", timedelta(0))
    store = create_store(tmp_path / "s.zarr", "synthetic", "v0")
    write_scene(store, "s")
    arrays = teacher_arrays(4, 2)
    arrays["teacher_opacity"][:] = 0  # a genuine all-zero array reads as it is
    write_teacher_stage(store, "s", arrays)
    old = store.scene("s")
    np.testing.assert_array_equal(old["teacher_opacity"][...], arrays["teacher_opacity"])
    depth = old["teacher_depth"]
    write_teacher_stage(store, "s", teacher_arrays(4, 2, seed=1))
    write_teacher_stage(store, "s", teacher_arrays(4, 2, seed=2))  # removes the first
    with pytest.raises(ReplacedWhileReadingError, match="replaced by commit 3") as info:
        depth[...]
    assert info.value.retryable
    with pytest.raises(ReplacedWhileReadingError):
        old["virtual_rgb"]
