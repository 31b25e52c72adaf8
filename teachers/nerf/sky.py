"""What the LiDAR says about camera pixels it got no return near (`lidar_masks`): which
are sky, for the sky-opacity loss, when the dataset has no sky masks (nuScenes has none;
`pixel_masks` takes a dataset's own where it has them, `scenes.sky_masks`):
pixels whose rays point above the horizon, in a direction where the LiDAR fired beams and
got no return (EmerNeRF's fallback when masks are missing); and which are *silent*: below
that, still inside the LiDAR's vertical field of view, no return there either, so nothing
lies along the ray within the LiDAR's range (the fit carves those rays free up to it).

Returns are binned by their direction from the camera's own centre, so a pole a few metres
away, which the LiDAR a metre off sees at other angles, still covers its own pixels; the
returns of the scene's other times count too (`scene_returns`): a building beyond the
LiDAR's range now was often within it earlier or later.

A LiDAR only confirms "nothing there" inside its vertical field of view (HDL-32E: up to
+10.7 deg); above its top beam it says nothing. Optionally (`propagate_up`) a column's
pixels above a confirmed sky pixel count as sky too, as long as their colour stays that of
the image's confirmed sky: in street scenes what is above open sky is sky, except a tree
crown or a sign overhanging it (checked against the synthetic world's exact sky masks and
depth in tests).
"""

from __future__ import annotations

import dataclasses
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
    dilate_bins: tuple[int, int] = (3, 2)
    """Bins (elevation, azimuth) a return also marks as 'something there': covers the gaps
    between beams (HDL-32E: 1.33 deg). (The camera-LiDAR parallax needs no margin: returns
    are binned by their direction from the camera.)"""
    horizon_margin_deg: float = 1.0
    """Only rays at least this far above the LiDAR's horizontal plane can be sky."""
    top_margin_deg: float = 0.5
    """Rays must be this far below the highest elevation the LiDAR returned from."""
    propagate_up: bool = True
    """Pixels above a confirmed sky pixel in the same image column are sky too, as long as
    their colour stays within the confirmed sky's (what stops it: a tree crown or a sign
    overhanging open sky, above the LiDAR's top beam, where it cannot see them)."""
    sky_colour_margin: float = 24.0
    """How far (0-255, per channel) a colour may lie outside the range of the image's
    confirmed sky pixels (1st to 99th percentile) and still carry the sky upwards."""


def _angles(directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elevation and azimuth (degrees) of directions (M, 3) in a sensor frame (z up)."""
    x, y, z = directions[:, 0], directions[:, 1], directions[:, 2]
    return np.degrees(np.arctan2(z, np.hypot(x, y))), np.degrees(np.arctan2(y, x))


def _silence(sample: CameraSample, sweeps: list[LidarSweep], config: SkyMaskConfig,
             elsewhere: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Per pixel of `sample` (H * W,): True where every sweep of the frame fired within its
    field of view in that direction and no return lies near the pixel's ray (returns, of
    the sweeps and the world points `elsewhere` (N, 3), are binned by their direction from
    the camera's centre), and the pixel's elevation (degrees, the first sweep's frame);
    None when a sweep has no returns at all."""
    h, w = sample.height, sample.width
    origin, dirs = pixel_rays(sample.intrinsics, sample.cam_to_world, image_pixels(w, h))
    silent = np.ones(h * w, dtype=bool)
    elevation = None
    for sweep in sweeps:
        local, _ = sweep.loader()
        if len(local) == 0:
            return None
        el_beam, _ = _angles(local.astype(np.float64))
        top, bottom = float(el_beam.max()), float(el_beam.min())
        rotation = sweep.sensor_to_world[:3, :3]
        # Returns as the camera sees them (from its own centre, in the LiDAR's axes): a
        # pole 4 m away is then "something there" at the pixels it covers, not where the
        # parallel LiDAR ray, a metre off, passed it by.
        world = local @ rotation.T + sweep.sensor_to_world[:3, 3]
        if elsewhere is not None:
            world = np.concatenate([world, elsewhere])
        seen_from_camera = (world - origin) @ rotation
        el_hit, az_hit = _angles(seen_from_camera)
        el_bins = int(np.ceil((max(top, el_hit.max()) + 90.0) / config.elevation_bin_deg)) + 1
        az_bins = int(np.ceil(360.0 / config.azimuth_bin_deg))
        hit = np.zeros((el_bins, az_bins), dtype=bool)
        hit[((el_hit + 90.0) / config.elevation_bin_deg).astype(int),
            ((az_hit + 180.0) / config.azimuth_bin_deg).astype(int) % az_bins] = True
        de, da = config.dilate_bins
        wrapped = np.concatenate([hit[:, az_bins - da:], hit, hit[:, :da]], axis=1)  # +-180
        hit = binary_dilation(wrapped, np.ones((2 * de + 1, 2 * da + 1), bool))[
            :, da:da + az_bins]
        el, az = _angles(dirs @ rotation)
        rows = ((el + 90.0) / config.elevation_bin_deg).astype(int)
        cols = ((az + 180.0) / config.azimuth_bin_deg).astype(int) % az_bins
        seen = (el > bottom + config.top_margin_deg) & (el < top - config.top_margin_deg)
        free = seen.copy()
        free[seen] = ~hit[rows[seen], cols[seen]]
        silent &= free
        elevation = el if elevation is None else elevation
    return silent, elevation


def _propagate_up(sky: np.ndarray, image: np.ndarray, margin: float) -> np.ndarray:
    """sky (H, W) bool extended upwards, column by column, from each confirmed pixel
    through the pixels above it whose colour (image (H, W, 3) uint8) lies within the
    confirmed pixels' colour range grown by `margin`; a pixel of another colour ends it."""
    colours = image[sky].astype(np.float32)
    low = np.percentile(colours, 1, axis=0) - margin
    high = np.percentile(colours, 99, axis=0) + margin
    like_sky = np.all((image >= low) & (image <= high), axis=-1)
    out = sky.copy()
    for row in range(sky.shape[0] - 2, -1, -1):  # bottom to top
        out[row] |= out[row + 1] & like_sky[row]
    return out


def scene_returns(sweeps: list[LidarSweep], voxel: float = 0.5) -> np.ndarray:
    """(N, 3) world points: the returns of all `sweeps`, one per `voxel`-metre cell (what the
    LiDAR ever hit, for `lidar_masks`' `elsewhere`)."""
    points = np.concatenate([sweep.load().points for sweep in sweeps] or [np.zeros((0, 3))])
    _, first = np.unique(np.floor(points / voxel).astype(np.int64), axis=0, return_index=True)
    return points[np.sort(first)]


def lidar_masks(sample: CameraSample, sweeps: list[LidarSweep],
                config: SkyMaskConfig = SkyMaskConfig(), image: np.ndarray | None = None,
                elsewhere: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sky, silent), each (H, W) bool, of the pixels of `sample` from the LiDAR `sweeps`
    of the same frame (all sweeps must have returns; each is judged in its own frame).

    sky: confidently sky (above the horizon margin, no return there). silent: not sky,
    but the LiDAR swept that direction inside its vertical field of view without a
    return, so nothing lies along the ray within its range (in a street: the far road,
    fields and buildings beyond it); the fit carves such rays free up to that range,
    which clears the floaters a camera alone cannot tell from a distant backdrop.
    `image` is the sample's image (H, W, 3) uint8 if already loaded (propagating the sky
    upwards reads its colours). `elsewhere` (N, 3) world: returns of other times of the
    scene (`scene_returns`); a static surface beyond the LiDAR's range now is often within
    it earlier or later, and its returns then keep its pixels from passing for sky."""
    h, w = sample.height, sample.width
    found = _silence(sample, sweeps, config, elsewhere)
    if found is None:
        return np.zeros((h, w), dtype=bool), np.zeros((h, w), dtype=bool)
    silent, elevation = found
    above = elevation > config.horizon_margin_deg
    sky = (silent & above).reshape(h, w)
    if config.propagate_up and sky.any():
        sky = _propagate_up(sky, sample.load_image() if image is None else image,
                            config.sky_colour_margin)
    return sky, (silent & ~above).reshape(h, w)


def pixel_masks(sample: CameraSample, sweeps: list[LidarSweep],
                config: SkyMaskConfig = SkyMaskConfig(), image: np.ndarray | None = None,
                elsewhere: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sky, silent), each (H, W) bool, as `lidar_masks`, except that where the dataset
    gives the image's sky mask (a segmentation model's, `CameraSample.load_sky`) the sky
    is that mask, and silent leaves it out."""
    given = sample.load_sky()
    if given is None:
        return lidar_masks(sample, sweeps, config, image, elsewhere)
    _, silent = lidar_masks(sample, sweeps, dataclasses.replace(config, propagate_up=False),
                            image, elsewhere)
    return given, silent & ~given


def sky_mask(sample: CameraSample, sweeps: list[LidarSweep],
             config: SkyMaskConfig = SkyMaskConfig()) -> np.ndarray:
    """(H, W) bool: pixels of `sample` that are confidently sky (see `lidar_masks`)."""
    return lidar_masks(sample, sweeps, config)[0]
