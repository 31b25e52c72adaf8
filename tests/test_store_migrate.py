"""Stores of schema version 2 are refused with the command that upgrades them, and
`distillprep migrate` upgrades them in place: every stage's arrays and provenance kept,
resumable when killed, and the scenes' missing LiDAR re-read by the next ingest."""

import shutil

import numpy as np
import pytest
from legacy_store import V3_ONLY, write_v2_store
from store_helpers import feature_arrays, feature_record, teacher_arrays, write_teacher_stage

from distillprep.flows.cli import main
from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.storage_schemas.errors import SchemaVersionError
from distillprep.storage_schemas.ingest import IngestConfig, ingest
from distillprep.storage_schemas.migrate import _migrate_scene, migrate_store
from distillprep.storage_schemas.store import Store, open_store
from distillprep.storage_schemas.stored_scene import load_scene
from distillprep.storage_schemas.validate import format_report, validate_store


@pytest.fixture
def v2_store(store_copy, tmp_path):
    """A version-2 store of the small dataset, scene-0001 with teacher and DINOv2 stages."""
    store = open_store(store_copy, mode="a")
    n = store.scene_attrs("scene-0001").num_samples
    write_teacher_stage(store, "scene-0001", teacher_arrays(n, 3))
    store.commit_stage("scene-0001", feature_record(store, "scene-0001", "dino"),
                       feature_arrays("dino", n, 3))
    write_v2_store(store_copy, tmp_path / "v2.zarr")
    return store_copy, tmp_path / "v2.zarr"


def _arrays(store, scene):
    view = store.scene(scene)
    return {n: view[n][...] for n in view.array_names() if n not in V3_ONLY}


def test_a_version_2_store_is_refused_naming_migrate(v2_store, capsys):
    _, old = v2_store
    with pytest.raises(SchemaVersionError, match=f"distillprep migrate {old}"):
        open_store(old)
    assert main(["inspect", str(old)]) == 1
    assert f"`distillprep migrate {old}`" in capsys.readouterr().err


def test_migrate_keeps_every_stage_and_the_next_ingest_restores_lidar(v2_store,
                                                                      small_dataset, capsys):
    current, old = v2_store
    assert main(["migrate", str(old), "--json"]) == 0
    capsys.readouterr()
    migrated, reference = open_store(old), open_store(current)
    assert migrated.scenes() == reference.scenes()
    for scene in reference.scenes():
        want, got = _arrays(reference, scene), _arrays(migrated, scene)
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert migrated.manifest([scene]).equals(reference.manifest([scene]))
    view = migrated.scene("scene-0001")
    assert set(view.stages()) == {"ingest", "teacher", "dino_features"}
    ingest_record = view.provenance("ingest")
    assert ingest_record.migrated_from == 2 and ingest_record.code_version == 0
    assert view["lidar_points"].shape == (0, 3)
    assert view.provenance("teacher").backend == "torch"
    report = validate_store(old, deep=True)
    assert report.ok and [f.rule for f in report.findings] == ["random-weights"], (
        format_report(report))
    assert sorted(p.name for p in (old / "commits").iterdir()) == ["scene-0001", "scene-0002"]
    assert main(["migrate", str(old)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    # a teacher would refuse the scene (no LiDAR); ingest (not forced) rewrites it, and the
    # stages made from the old version are reported stale
    assert load_scene(migrated, "scene-0001").frames[0].lidar == ()
    read = read_nuscenes(small_dataset)
    store = open_store(old, mode="a")
    config = IngestConfig("nuscenes", read.version)
    result = ingest(store, read.scenes, config)
    assert result.written == ["scene-0002"]  # its later stages' outputs would go stale:
    assert "--replace-outputs" in result.failed["scene-0001"]  # only when asked for
    result = ingest(store, read.scenes, config, replace_outputs=True)
    assert result.written == ["scene-0001"] and result.skipped == ["scene-0002"]
    assert result.stale == {"scene-0001": ["dino_features", "teacher"]}
    assert store.scene("scene-0001")["lidar_points"].shape[0] > 1000


def test_a_killed_migration_resumes(v2_store):
    current, old = v2_store
    half = Store(open_store(current).location.__class__(old, read_only=False),
                 open_store(current).attrs)
    _migrate_scene(half, "scene-0001", 2)  # as if killed after the first scene
    report = migrate_store(old)
    assert report.scenes == ["scene-0001", "scene-0002"]
    assert validate_store(old, deep=True).ok
    shutil.rmtree(current)  # nothing of the migrated store points back
    assert set(open_store(old).scene("scene-0001").stages()) == {"ingest", "teacher",
                                                                 "dino_features"}
