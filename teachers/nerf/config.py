"""The teacher's fit configuration: one typed, frozen config holding every size, weight and
schedule of a fit (overridable by a JSON or TOML file through `config_io`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .dynamic import DynamicFieldConfig
from .field import FieldConfig
from .sampler import SamplerConfig
from .sky import SkyMaskConfig


@dataclass(frozen=True)
class FitConfig:
    """Optimisation of one scene's teacher."""

    model: FieldConfig = field(default_factory=FieldConfig)
    """The static field's sizes."""
    dynamic: DynamicFieldConfig | None = field(default_factory=DynamicFieldConfig)
    """The time-conditioned dynamic field (None: a static scene, no dynamic field; steps
    are then about 1.3x faster)."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Ray sampling."""
    steps: int = 2000
    """Optimisation steps."""
    camera_rays: int = 4096
    """Camera rays per step."""
    lidar_rays: int = 1024
    """LiDAR rays per step."""
    learning_rate: float = 1e-2
    """Adam learning rate (EmerNeRF: 0.01, eps 1e-15)."""
    final_lr_ratio: float = 0.1
    """The learning rate decays exponentially from `learning_rate` to this fraction of it
    at `steps` (1: constant); resuming with more `--steps` continues on the new schedule."""
    depth_weight: float = 1.0
    """Weight of the LiDAR expected-depth loss (on depth / 80 m)."""
    sky_weight: float = 0.01
    """Weight of the sky-opacity loss (BCE of opacity against 0 on LiDAR-confirmed sky
    rays; 0: off)."""
    sky: SkyMaskConfig = field(default_factory=SkyMaskConfig)
    """Which camera rays count as sky, or as swept by the LiDAR without a return."""
    silent_carve_quantile: float = 0.99
    """Camera rays the LiDAR swept without a return (`CameraRays.silent`) are carved free
    up to this quantile of the scene's LiDAR ranges, a conservative stand-in for the
    sensor's range (0: not carved)."""
    line_of_sight_weight: float = 0.1
    """Weight of the LiDAR line-of-sight loss: rendering weight of a LiDAR ray farther
    than `line_of_sight_margin` from its return (EmerNeRF: 0.1; 0: off)."""
    line_of_sight_margin: float = 1.0
    """Metres around a LiDAR return where its ray's weight belongs."""
    distortion_weight: float = 0.0
    """Weight of mip-NeRF 360's distortion loss on camera rays (nerfacto: 0.002; 0: off)."""
    distortion_scale_m: float = 20.0
    """Metres at which the distortion loss's normalized distance t / (t + scale) is 1/2."""
    pixel_stride: int = 1
    """Train on every n-th pixel in both axes (1: all)."""
    seed: int = 0
    """Seed of initialisation and ray sampling."""
    log_every: int = 50
    """Steps between history records (and callback calls)."""
