"""The teacher stage's errors sit in the project hierarchy with the kind that steers a
retry (a bad config is not retried and exits 2; bad data and a diverged fit are not
retried and exit 1), keep the built-in classes callers catch, and rendering a teacher
never imports its training code."""

import json
import subprocess
import sys

import pytest

from distillprep.scenes.errors import (
    EXIT_BAD_DATA,
    EXIT_USAGE,
    ConfigError,
    DataError,
    DistillprepError,
    DivergedError,
)
from distillprep.teachers.errors import (
    CheckpointError,
    TeacherConfigError,
    TeacherDataError,
    TeacherDivergedError,
    TeacherError,
)
from distillprep.teachers.foundation.models import model_spec
from distillprep.teachers.foundation.weights import (
    NotACheckpointError,
    WeightsError,
    WeightsNotFoundError,
    WrongArchitectureError,
)
from distillprep.teachers.nerf import config_io
from distillprep.teachers.nerf.config import FitConfig
from distillprep.teachers.nerf.dynamic import DynamicFieldConfig, check_compatible
from distillprep.teachers.nerf.outputs import RenderConfig
from distillprep.teachers.nerf.sampler import SamplerConfig, candidate_edges
from distillprep.teachers.nerf.virtual import VirtualViewConfig


@pytest.mark.parametrize("cls, kind, exit_code, builtin", [
    (TeacherConfigError, ConfigError, EXIT_USAGE, ValueError),
    (TeacherDataError, DataError, EXIT_BAD_DATA, None),
    (CheckpointError, DataError, EXIT_BAD_DATA, None),
    (TeacherDivergedError, DivergedError, EXIT_BAD_DATA, FloatingPointError),
    (WeightsError, DataError, EXIT_BAD_DATA, None),
    (WeightsNotFoundError, DataError, EXIT_BAD_DATA, FileNotFoundError),
    (NotACheckpointError, DataError, EXIT_BAD_DATA, None),
    (WrongArchitectureError, DataError, EXIT_BAD_DATA, None),
])
def test_each_error_is_a_teacher_error_of_its_kind(cls, kind, exit_code, builtin):
    assert issubclass(cls, TeacherError) and issubclass(cls, kind)
    assert issubclass(cls, DistillprepError)
    assert cls.exit_code == exit_code and not cls.retryable
    if builtin is not None:
        assert issubclass(cls, builtin)
    assert config_io.ConfigError is TeacherConfigError


def test_data_errors_name_the_scene_and_file():
    error = TeacherDataError("scene-0001", "samples/CAM_BACK/x.jpg", "image is all black")
    assert str(error) == "scene 'scene-0001', file samples/CAM_BACK/x.jpg: image is all black"
    assert (error.scene, error.file, error.problem) == (
        "scene-0001", "samples/CAM_BACK/x.jpg", "image is all black")
    assert str(TeacherDataError(None, None, "too few vectors")) == "too few vectors"
    diverged = TeacherDivergedError(13, float("nan"))
    assert str(diverged) == "loss became nan at step 13" and diverged.step == 13


@pytest.mark.parametrize("make, message", [
    (lambda: RenderConfig(depth="mean"), "render config depth 'mean'"),
    (lambda: RenderConfig(scale=0.0), "render config scale = 0.0: must be > 0"),
    (lambda: VirtualViewConfig(clearance=-1.0), "VirtualViewConfig.clearance = -1.0"),
    (lambda: candidate_edges(SamplerConfig(spacing="linear"), 10.0, 4),
     "sampler spacing 'linear'"),
    (lambda: check_compatible(DynamicFieldConfig(geometry_features=7), 15),
     "dynamic field has 7 geometry features"),
    (lambda: model_spec("dino"), "unknown feature model 'dino'"),
])
def test_bad_config_values_are_config_errors(make, message):
    with pytest.raises(TeacherConfigError, match=message):
        make()


def test_a_bad_value_in_a_config_file_names_the_file_and_field(tmp_path):
    path = tmp_path / "render.json"
    path.write_text(json.dumps({"depth": "mean"}))
    with pytest.raises(TeacherConfigError, match=f"config file {path}: render config depth"):
        config_io.load_config_file(RenderConfig, path)
    path.write_text(json.dumps({"sampler": {"grid_resolution": "big"}}))
    with pytest.raises(TeacherConfigError, match=r"\.sampler\.grid_resolution: expected int"):
        config_io.load_config_file(FitConfig, path)


def test_rendering_and_loading_a_checkpoint_never_import_the_trainer():
    code = ("import json, sys\n"
            "import distillprep.teachers.nerf.render, distillprep.teachers.nerf.outputs\n"
            "import distillprep.teachers.nerf.checkpoint\n"
            "print(json.dumps(sorted(m for m in sys.modules\n"
            "                        if m.startswith('distillprep.'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    loaded = json.loads(proc.stdout)
    assert "distillprep.teachers.nerf.teacher" in loaded  # the model is what renders
    assert "distillprep.teachers.volume.compositing" in loaded
    assert "distillprep.teachers.nerf.fit" not in loaded
    assert not [m for m in loaded if m.startswith(("distillprep.storage_schemas",
                                                   "distillprep.student",
                                                   "distillprep.flows"))]
