"""The config of `distillprep prepare`: one file (YAML, TOML or JSON) holding every stage's
config. Omitted fields keep their defaults; unknown ones are refused naming the field.

    ingest:   {sweeps: true, sky_masks: false}
    teacher:  {steps: 2000, holdout: 2, fit: {...FitConfig fields}}
    render:   {samples: keyframes, render: {scale: 0.5, virtual: {...}}}
    features:
      - {model: dinov2-vitb14, weights: /weights/dinov2-vitb14.pth, channels: 64}
      - {model: clip-vitb16, weights: /weights/clip-vitb16.pth, channels: 64}
    device: cpu
    device_slots: 1
    retries: 2
    api_startup_timeout_s: 120
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillprep.scenes.errors import ConfigError
from distillprep.teachers.foundation.extract import FeatureConfig
from distillprep.teachers.foundation.models import model_spec
from distillprep.teachers.nerf.config import FitConfig
from distillprep.teachers.nerf.config_io import from_dict, read_config_data
from distillprep.teachers.nerf.job import TeacherFitJob, TeacherRenderJob

DEFAULT_MODELS = ("dinov2-vitb14", "clip-vitb16")
"""Feature models prepared when the config names none: one of each family."""


@dataclass(frozen=True)
class IngestOptions:
    """How the dataset is read into the store."""

    sweeps: bool = True
    """Ingest the camera and LiDAR sweeps between keyframes too (the teacher fits on
    them, as EmerNeRF does)."""
    version: str | None = None
    """Dataset version (None: detected when the dataroot holds only one)."""
    sky_masks: bool = False
    """Ingest every image's sky mask from `{dataroot}/sky_masks` (`scenes.sky_masks`)."""


@dataclass(frozen=True)
class FeatureModel:
    """One feature model of the preparation: its run config and where its weights are."""

    config: FeatureConfig
    """The run (model, PCA channels, input width, ...)."""
    weights: str | None = None
    """The model's checkpoint file (None: <model>.pth in $DISTILLPREP_WEIGHTS_DIR)."""
    batch_size: int | None = None
    """Images per forward pass (None: 8 on the CPU, 32 on CUDA)."""


@dataclass(frozen=True)
class PrepareConfig:
    """Everything `prepare_dataset` runs, stage by stage."""

    ingest: IngestOptions = field(default_factory=IngestOptions)
    """Ingest options."""
    teacher: TeacherFitJob = field(default_factory=lambda: TeacherFitJob(fit=FitConfig()))
    """The teacher fit of every scene."""
    render: TeacherRenderJob = field(default_factory=TeacherRenderJob)
    """What the fitted teacher renders into the store."""
    features: tuple[FeatureModel, ...] = tuple(
        FeatureModel(FeatureConfig(model=m)) for m in DEFAULT_MODELS)
    """Feature models, each a stage of its family (at most one per family)."""
    device: str = "cpu"
    """Torch device of teacher fits, renders and feature extraction."""
    threads: int | None = None
    """Torch CPU threads of each step (None: torch's default; Dask's workers get 1 from
    OMP_NUM_THREADS). Float sums depend on it: equal values give bit-equal stores."""
    device_slots: int = 1
    """Teacher fits and feature extractions running at once, store-wide (one per device:
    a Prefect global concurrency limit)."""
    slot_limit: str | None = None
    """A Prefect global concurrency limit to take device slots from instead (several flow
    runs sharing devices through one Prefect server; see `slots.py` for its caveat)."""
    retries: int = 2
    """Extra tries of a step whose error says retrying can help (transient I/O, a lost
    commit race)."""
    retry_delay_s: float = 5.0
    """First retry's delay; each later one doubles, all randomised by +-50 %."""
    work_dir: str | None = None
    """Where teacher checkpoints go (None: `<store>.work` beside a local store); on a
    cluster, a path every worker sees."""
    api_startup_timeout_s: float | None = None
    """Seconds the Prefect API `prepare` starts (its local API, or `--runner dask`'s local
    server) gets to answer (None: PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS when
    set, else 120; `--api-startup-timeout` overrides both)."""

    def __post_init__(self) -> None:
        if self.device_slots < 1:
            raise ConfigError(f"device_slots = {self.device_slots}: must be >= 1")
        if self.retries < 0 or self.retry_delay_s < 0:
            raise ConfigError("retries and retry_delay_s must be >= 0")
        if self.api_startup_timeout_s is not None and not self.api_startup_timeout_s > 0:
            raise ConfigError(f"api_startup_timeout_s = {self.api_startup_timeout_s}: must "
                              "be > 0")
        families = [model_spec(m.config.model).family for m in self.features]
        if len(set(families)) != len(families):
            raise ConfigError(f"features: models {[m.config.model for m in self.features]} "
                              "include two of one family; one model per family")


def _feature_model(raw: Any, where: str) -> FeatureModel:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table of fields, got {type(raw).__name__}")
    raw = dict(raw)
    wrapper = {k: raw.pop(k) for k in ("weights", "batch_size") if k in raw}
    if "model" not in raw:
        raise ConfigError(f"{where}: names no model")
    return from_dict(FeatureModel, {"config": raw, **wrapper}, where)


def parse_prepare_config(data: Any, where: str = "prepare config") -> PrepareConfig:
    """A PrepareConfig from parsed YAML/TOML/JSON data, or ConfigError naming the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table of stages, got {type(data).__name__}")
    data = dict(data)
    features = data.pop("features", None)
    teacher = data.get("teacher")
    if isinstance(teacher, dict) and "fit" not in teacher:  # the flow always fits explicitly
        data["teacher"] = {**teacher, "fit": {}}
    config = from_dict(PrepareConfig, data, where)
    if features is not None:
        if not isinstance(features, list):
            raise ConfigError(f"{where}.features: expected a list of models")
        models = tuple(_feature_model(f, f"{where}.features[{i}]")
                       for i, f in enumerate(features))
        config = dataclasses.replace(config, features=models)
    return config


def load_prepare_config(path: str | Path) -> PrepareConfig:
    """Read a YAML (.yaml/.yml), TOML (.toml) or JSON file into a PrepareConfig."""
    data = read_config_data(path)
    return parse_prepare_config(data if data is not None else {}, f"config file {path}")


def with_overrides(config: PrepareConfig, teacher_steps: int | None = None,
                   random_init_features: bool = False) -> PrepareConfig:
    """The config with the CLI's overrides: the fit length, random feature weights."""
    if teacher_steps is not None:
        if teacher_steps < 1:
            raise ConfigError(f"--teacher-steps {teacher_steps}: must be >= 1")
        config = dataclasses.replace(
            config, teacher=dataclasses.replace(config.teacher, steps=teacher_steps))
    if random_init_features:
        config = dataclasses.replace(config, features=tuple(
            dataclasses.replace(m, config=dataclasses.replace(m.config, random_init=True))
            for m in config.features))
    return config
