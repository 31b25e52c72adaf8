"""Which camera pixels are sky, for the sky-opacity loss, when the dataset has no sky masks
(nuScenes has none): pixels whose rays point above the horizon, in a direction where the
LiDAR fired beams and got no return (EmerNeRF's fallback when masks are missing).

A LiDAR only confirms "nothing there" inside its vertical field of view (HDL-32E: up to
+10.7 deg); above its top beam it says nothing. Optionally (`propagate_up`) a column's
pixels above its highest confirmed sky pixel count as sky too: in street scenes what is
above open sky is sky (checked against the synthetic world's exact sky masks in tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_dilation

from distillprep.scenes.model import CameraSample, LidarSweep
from distillprep.scenes.projection import image_pixels, pixel_rays


@dataclass(frozen=True)
class SkyMaskConfig:
    """The LiDAR-derived sky mask."""

    azimuth_bin_deg: float = 1.0
    """Azimuth bin of the LiDAR return map."""
    elevation_bin_deg: float = 0.5
    """Elevation bin of the LiDAR return map."""
    dilate_bins: tuple[int, int] = (4, 2)
    """Bins (elevation, azimuth) a return also marks as 'something there': covers the gaps
    between beams (HDL-32E: 1.33 deg) and the camera-LiDAR parallax."""
    horizon_margin_deg: float = 1.0
    """Only rays at least this far above the LiDAR's horizontal plane can be sky."""
    top_margin_deg: float = 0.5
    """Rays must be this far below the highest elevation the LiDAR returned from."""
    propagate_up: bool = True
    """Pixels above a confirmed sky pixel in the same image column are sky too."""


def _angles(directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elevation and azimuth (degrees) of directions (M, 3) in a sensor frame (z up)."""
    x, y, z = directions[:, 0], directions[:, 1], directions[:, 2]
    return np.degrees(np.arctan2(z, np.hypot(x, y))), np.degrees(np.arctan2(y, x))


def sky_mask(sample: CameraSample, sweeps: list[LidarSweep],
             config: SkyMaskConfig = SkyMaskConfig()) -> np.ndarray:
    """(H, W) bool: pixels of `sample` that are confidently sky, from the LiDAR `sweeps`
    of the same frame (all sweeps must have returns; each is judged in its own frame)."""
    h, w = sample.height, sample.width
    _, dirs = pixel_rays(sample.intrinsics, sample.cam_to_world, image_pixels(w, h))
    mask = np.zeros(h * w, dtype=bool)
    for i, sweep in enumerate(sweeps):
        local, _ = sweep.loader()
        if len(local) == 0:
            return np.zeros((h, w), dtype=bool)
        el_hit, az_hit = _angles(local.astype(np.float64))
        top = float(el_hit.max())
        el_bins = int(np.ceil((top + 90.0) / config.elevation_bin_deg)) + 1
        az_bins = int(np.ceil(360.0 / config.azimuth_bin_deg))
        hit = np.zeros((el_bins, az_bins), dtype=bool)
        hit[((el_hit + 90.0) / config.elevation_bin_deg).astype(int),
            ((az_hit + 180.0) / config.azimuth_bin_deg).astype(int) % az_bins] = True
        de, da = config.dilate_bins
        wrapped = np.concatenate([hit[:, az_bins - da:], hit, hit[:, :da]], axis=1)  # +-180
        hit = binary_dilation(wrapped, np.ones((2 * de + 1, 2 * da + 1), bool))[
            :, da:da + az_bins]
        rotation = sweep.sensor_to_world[:3, :3]
        el, az = _angles(dirs @ rotation)
        rows = ((el + 90.0) / config.elevation_bin_deg).astype(int)
        cols = ((az + 180.0) / config.azimuth_bin_deg).astype(int) % az_bins
        band = (el > config.horizon_margin_deg) & (el < top - config.top_margin_deg)
        free = band.copy()
        free[band] = ~hit[rows[band], cols[band]]
        mask = free if i == 0 else mask & free
    mask = mask.reshape(h, w)
    if config.propagate_up and mask.any():
        # rows above the lowest sky pixel of each column: cumulative OR from the bottom
        mask = np.flip(np.logical_or.accumulate(np.flip(mask, axis=0), axis=0), axis=0)
    return mask
