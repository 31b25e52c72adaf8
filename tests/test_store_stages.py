"""Adding a stage's outputs to a committed scene: carried-over arrays untouched, the
stage's arrays and provenance checked, and the validator's rules for stage arrays."""

import numpy as np
import pytest
from store_helpers import teacher_arrays, teacher_record

from distillprep.storage_schemas.errors import SchemaViolationError
from distillprep.storage_schemas.store import open_store
from distillprep.storage_schemas.validate import validate_store


def _first_scene(path):
    store = open_store(path, mode="a")
    return store, store.scenes()[0]


@pytest.mark.parametrize("views", [0, 5])
def test_replace_stage_adds_arrays_and_keeps_the_rest(store_copy, views):
    store, scene_id = _first_scene(store_copy)
    before = {n: store.group(scene_id)[n][...] for n in store.group(scene_id).array_keys()}
    n = store.scene_attrs(scene_id).num_samples
    arrays = teacher_arrays(n, views)
    store.replace_stage(scene_id, teacher_record(), arrays,
                        {"teacher_psnr": [float(i) for i in range(n)]})
    group = store.group(scene_id)
    for name, data in before.items():
        assert np.array_equal(group[name][...], data), name
    for name, data in arrays.items():
        assert np.array_equal(group[name][...], data), name
    attrs = store.scene_attrs(scene_id)
    assert set(attrs.stages) == {"ingest", "teacher"}
    manifest = store.manifest([scene_id])
    assert manifest.column("teacher_psnr").to_pylist() == list(range(n))
    assert all(manifest.column("has_teacher_depth").to_pylist())
    report = validate_store(store_copy, deep=True)
    assert report.ok, [str(f) for f in report.errors]
    # a second render replaces the stage: its old arrays do not linger
    store.replace_stage(scene_id, teacher_record(), teacher_arrays(n, 2, seed=1))
    assert store.group(scene_id)["virtual_rgb"].shape[0] == 2
    assert validate_store(store_copy, deep=True).ok


def test_replace_stage_refuses_inconsistent_arrays(store_copy):
    store, scene_id = _first_scene(store_copy)
    n = store.scene_attrs(scene_id).num_samples
    arrays = teacher_arrays(n, 3)
    with pytest.raises(SchemaViolationError, match="do not belong to this stage"):
        store.replace_stage(scene_id, teacher_record(), {**arrays, "lidar_depth": None})
    bad = {**arrays, "virtual_depth": arrays["virtual_depth"][:2]}
    with pytest.raises(SchemaViolationError, match="V = 2, but array virtual_rgb has V = 3"):
        store.replace_stage(scene_id, teacher_record(), bad)
    wrong_n = teacher_arrays(n + 1, 3)
    with pytest.raises(SchemaViolationError, match=f"N = {n + 1}, but array rgb_jpeg has N = {n}"):
        store.replace_stage(scene_id, teacher_record(), wrong_n)
    assert "teacher" not in store.scene_attrs(scene_id).stages


def _rewrite(store, scene_id, arrays, stages):
    """Commit the scene with exactly `arrays` and `stages` (bypassing the stage checks)."""
    from distillprep.storage_schemas.spec import infer_dims

    attrs = store.scene_attrs(scene_id).model_copy(update={"stages": stages})
    dims, _ = infer_dims({k: v.shape for k, v in arrays.items()})
    store.write_scene(attrs, arrays, store.manifest([scene_id]), dims)


def test_validator_flags_stage_arrays_without_provenance_and_missing_ones(store_copy):
    store, scene_id = _first_scene(store_copy)
    group = store.group(scene_id)
    ingest = {n: group[n][...] for n in group.array_keys()}
    n = store.scene_attrs(scene_id).num_samples
    stages = store.scene_attrs(scene_id).stages
    teacher = teacher_arrays(n, 3)
    _rewrite(store, scene_id, {**ingest, **teacher}, stages)
    rules = {f.rule for f in validate_store(store_copy).errors}
    assert rules == {"provenance"}
    partial = {k: v for k, v in teacher.items() if k != "virtual_depth"}
    _rewrite(store, scene_id, {**ingest, **partial}, {**stages, "teacher": teacher_record()})
    errors = validate_store(store_copy).errors
    assert [f.rule for f in errors] == ["missing-array"]
    assert "virtual_depth" in errors[0].message


def test_validator_checks_virtual_view_values(store_copy):
    store, scene_id = _first_scene(store_copy)
    n = store.scene_attrs(scene_id).num_samples
    arrays = teacher_arrays(n, 3)
    arrays["virtual_source_sample"][1] = n  # names a sample the scene does not have
    arrays["virtual_cam_to_world"][2, :3, :3] *= 2.0  # not a rotation
    store.replace_stage(scene_id, teacher_record(), arrays)
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
