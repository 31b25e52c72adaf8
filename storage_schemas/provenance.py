"""Per-stage provenance as typed records: how a stage made the outputs of one commit.

Every record says which config made the outputs (and its hash), which version of the
stage's code (`code_version`: bumped when a stage's outputs change meaning, so that the
store sees old outputs as not done), when and how long, and `inputs`: the content
fingerprint of each earlier stage's commit it was computed from (`spec.STAGE_INPUTS`). A
stage whose inputs are no longer the scene's current ones is stale: readers do not show
it, and the stage's job runs again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Provenance(_Model):
    config: dict[str, Any] = Field(description="the stage's full configuration")
    config_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the config")
    code_version: int = Field(ge=0, description="version of the stage's outputs' meaning")
    package_version: str = Field(description="distillprep version that ran it")
    finished_at: datetime = Field(description="when the stage finished (UTC)")
    wall_time_s: float = Field(ge=0, description="seconds the stage took for this scene")
    inputs: dict[str, str] = Field(default_factory=dict, description="stage -> content "
                                   "fingerprint of the commit these outputs were made from")


class IngestProvenance(_Provenance):
    """Where an ingested scene came from."""

    stage: Literal["ingest"] = Field(description="which stage")
    reader: str = Field(description="the dataset reader that read it, e.g. nuscenes")
    dataroot: str = Field(description="where the dataset was read from (for people: no "
                          "later stage reads it again)")
    sweeps: bool = Field(description="whether the frames between keyframes were ingested")
    source_id: str = Field(default="", description="the dataset's own id of the scene "
                           "(nuScenes: its scene token): two scenes of one id from other "
                           "sources are refused, not silently replaced")
    migrated_from: int | None = Field(default=None, description="the schema version the "
                                      "scene was migrated from, if it was")


class VirtualViewCounts(_Model):
    """What became of the virtual views the policy asked for."""

    kept: int = Field(ge=0, description="placed where the policy asked")
    moved: int = Field(ge=0, description="moved back out of solid geometry")
    dropped: int = Field(ge=0, description="not placed at all")
    dropped_views: list[dict[str, Any]] = Field(default_factory=list,
                                                description="source sample and offset of each")


class TeacherProvenance(_Provenance):
    """How a scene's neural-field teacher was fitted and rendered, and how good it is."""

    stage: Literal["teacher"] = Field(description="which stage")
    backend: str = Field(description="hash-encoding backend that fitted it")
    device: str = Field(description="device it rendered on")
    steps: int = Field(ge=0, description="optimisation steps of the fit")
    fit_wall_time_s: float = Field(ge=0, description="seconds of fitting")
    render_time_s: float = Field(ge=0, description="seconds of rendering into the store")
    checkpoint_sha256: str | None = Field(description="SHA-256 of the checkpoint rendered")
    fitted_frames: list[int] = Field(description="frames of the scene the fit trained on")
    heldout_frames: list[int] = Field(description="keyframes held out of the fit")
    rendered_samples: list[int] = Field(description="camera samples rendered (the others' "
                                        "teacher arrays are empty, has_teacher_depth false)")
    final_losses: dict[str, float | None] = Field(description="last logged losses")
    heldout_psnr_db: float | None = Field(description="PSNR on held-out keyframes' images")
    train_psnr_db: float | None = Field(description="PSNR on fitted keyframes' images")
    lidar_abs_rel: float | None = Field(description="depth AbsRel against LiDAR, all images")
    lidar_abs_rel_heldout: float | None = Field(description="the same on held-out images")
    virtual_views: VirtualViewCounts = Field(description="virtual views kept, moved, dropped")


class FeatureProvenance(_Provenance):
    """Which model and PCA made a scene's foundation-model features."""

    stage: Literal["dino_features", "clip_features"] = Field(description="which stage")
    run_id: str = Field(pattern=r"^[0-9a-f]{64}$", description="the feature run (hash of "
                        "its config and weights): every scene of a run shares one PCA")
    model: str = Field(description="feature model, e.g. dinov2-vitb14")
    library: str = Field(description="the library that built it (timm, open_clip)")
    architecture: str = Field(description="the library's architecture name")
    weights: str | None = Field(description="weights file name (None: random weights)")
    weights_sha256: str | None = Field(description="its SHA-256")
    random_init: bool = Field(description="RANDOM weights: never pretrained features")
    device: str = Field(description="device it ran on")
    batch_size: int = Field(gt=0, description="images per batch")
    precision: str = Field(description="fp32, or bf16 autocast")
    stride: int = Field(gt=0, description="pixels between patches")
    pca_channels: int = Field(gt=0, description="channels kept")
    pca_explained_ratio: float = Field(ge=0, le=1, description="share of variance kept")
    pca_samples: int = Field(ge=0, description="feature vectors the PCA was fitted on")
    pca_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the basis")
    position_pattern_sha256: str | None = Field(description="of the positional pattern "
                                                "taken out first (None: not denoised)")
    grid: list[int] = Field(description="feature grid (rows, cols) of a real image")
    images: int = Field(ge=0, description="images extracted (real and virtual)")


StageRecord = Annotated[IngestProvenance | TeacherProvenance | FeatureProvenance,
                        Field(discriminator="stage")]
"""The provenance of any stage, told apart by its `stage` field."""
