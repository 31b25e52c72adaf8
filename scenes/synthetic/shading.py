"""Procedural surface textures and lighting.

Albedo depends only on the surface point (in the object's own frame, so textures move
with cars), never on the view, and lighting is Lambertian under a fixed sun: the colour
of a surface point is the same from every camera, as a neural field assumes. Textures
carry detail at several scales (asphalt grain, lane markings, facade windows, car paint
and glass, foliage) so that photometric metrics mean something.
"""

from __future__ import annotations

import numpy as np

from .noise import fbm, hash_uniform, value_noise
from .raycast import Hits
from .world import Material, World

AMBIENT = 0.5
SKY_HORIZON = np.array([0.80, 0.86, 0.93])
SKY_ZENITH = np.array([0.30, 0.50, 0.84])


def sky_color(dirs: np.ndarray) -> np.ndarray:
    """Sky radiance (N, 3) in [0, 1] for view directions dirs (N, 3) world (any length):
    a function of direction only, with clouds on a layer 1 km up."""
    unit = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    up = np.clip(unit[:, 2], 0.0, 1.0)
    color = SKY_HORIZON + (SKY_ZENITH - SKY_HORIZON) * np.sqrt(up)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        layer = unit[:, :2] / np.maximum(unit[:, 2:3], 0.02) * (1000.0 / 400.0)
    cloud = np.clip((fbm(layer, seed=7, octaves=4) - 0.45) * 2.5, 0.0, 1.0)
    cloud *= np.clip(up * 8.0, 0.0, 1.0)
    return color * (1 - cloud[:, None]) + 0.96 * cloud[:, None]


def albedo(world: World, hits: Hits) -> np.ndarray:
    """Unlit surface colour (N, 3) in [0, 1] of every non-sky hit (sky rows are zero)."""
    out = np.zeros((len(hits.t), 3))
    for material, texture in _TEXTURES.items():
        idx = np.flatnonzero(hits.material == material)
        if len(idx):
            out[idx] = texture(world, hits, idx)
    return np.clip(out, 0.0, 1.0)


def shade(world: World, hits: Hits, dirs: np.ndarray) -> np.ndarray:
    """Final colour (N, 3) in [0, 1]: lit albedo on surfaces, sky colour elsewhere."""
    base = albedo(world, hits)
    light = AMBIENT + (1 - AMBIENT) * np.clip(hits.normal @ np.asarray(world.sun), 0.0, 1.0)
    color = base * light[:, None]
    sky = hits.sky
    if sky.any():
        color[sky] = sky_color(dirs[sky])
    return np.clip(color, 0.0, 1.0)


def _object_colors(world: World, hits: Hits, idx: np.ndarray) -> np.ndarray:
    return np.array([world.objects[i].color for i in hits.obj[idx]]).reshape(-1, 3)


def _object_seeds(world: World, hits: Hits, idx: np.ndarray) -> np.ndarray:
    return np.array([world.objects[i].seed for i in hits.obj[idx]], dtype=np.int64)


def _ground(world: World, hits: Hits, idx: np.ndarray) -> np.ndarray:
    xy = hits.local[idx, :2]
    s, d = world.road.project(xy)
    ad = np.abs(d)
    road = world.road
    grain = fbm(xy * 9.0, seed=11, octaves=3)
    patches = fbm(xy * 0.35, seed=12, octaves=3)
    asphalt = 0.20 + 0.10 * grain + 0.08 * patches
    color = np.repeat(asphalt[:, None], 3, axis=1) * np.array([1.0, 1.0, 1.04])
    lane_edge = np.abs(ad - road.lane_width) < 0.08
    centre = (ad < 0.07) & (np.mod(s, 9.0) < 3.0)
    paint = (lane_edge | centre) & (value_noise(xy * 6.0, seed=13) > 0.15)
    color[paint] = (0.86 + 0.08 * grain[paint])[:, None] * np.array([1.0, 0.98, 0.9])
    curb = (ad >= road.half_width) & (ad < road.half_width + 0.25)
    color[curb] = (0.62 + 0.1 * grain[curb])[:, None]
    walk = (ad >= road.half_width + 0.25) & (ad < road.half_width + 3.0)
    tile_line = (np.mod(s, 1.5) < 0.04) | (np.mod(ad - road.half_width, 1.5) < 0.04)
    tone = 0.55 + 0.12 * patches + 0.06 * grain
    color[walk] = np.where(tile_line[walk, None], 0.38, tone[walk, None])
    grass = ad >= road.half_width + 3.0
    g = fbm(xy[grass] * 2.0, seed=14, octaves=4)
    dirt = fbm(xy[grass] * 0.12, seed=15, octaves=2)
    color[grass] = np.stack([0.22 + 0.25 * dirt, 0.35 + 0.2 * g, 0.12 + 0.08 * dirt], axis=1)
    return color


def _building(world: World, hits: Hits, idx: np.ndarray) -> np.ndarray:
    p, n = hits.local[idx], hits.local_normal[idx]
    seeds = _object_seeds(world, hits, idx)
    objs = hits.obj[idx]
    params = [world.objects[i].params for i in objs]
    spacing = np.array([q["window_spacing"] for q in params])
    floor_h = np.array([q["floor_height"] for q in params])
    win_w = np.array([q["window_width"] for q in params])
    half_h = np.array([world.objects[i].size[2] / 2 for i in objs])
    wall = _object_colors(world, hits, idx)
    roof = np.abs(n[:, 2]) > 0.5
    u = np.where(np.abs(n[:, 0]) > 0.5, p[:, 1], p[:, 0])
    v = p[:, 2] + half_h  # height above the ground
    stain = fbm(np.stack([u * 0.4, v * 0.4, seeds % 997], axis=1), seed=21, octaves=3)
    rough = value_noise(np.stack([u * 12.0, v * 12.0], axis=1), seed=22)
    color = wall * (0.78 + 0.3 * stain + 0.08 * rough)[:, None]
    col, row = np.floor(u / spacing), np.floor(v / floor_h)
    fu, fv = u / spacing - col, v / floor_h - row
    window = (np.abs(fu - 0.5) < win_w / 2) & (fv > 0.28) & (fv < 0.82) & (v > 1.5)
    window &= (v < 2 * half_h - 0.8) & ~roof
    frame = window & ((np.abs(np.abs(fu - 0.5) - win_w / 2) < 0.04) | (np.abs(fv - 0.28) < 0.03))
    cells = np.stack([col.astype(np.int64), row.astype(np.int64), seeds], axis=1)
    lit = hash_uniform(cells, seed=23)
    glass = np.stack([0.12 + 0.25 * lit, 0.16 + 0.25 * lit, 0.22 + 0.22 * lit], axis=1)
    glass *= (0.9 + 0.2 * rough)[:, None]
    color = np.where(window[:, None], glass, color)
    color = np.where(frame[:, None], 0.85 * wall + 0.1, color)
    ledge = ~roof & (np.abs(fv) < 0.03) & (v > 1.0)
    color = np.where(ledge[:, None], 0.6 * color, color)
    roof_tone = 0.35 + 0.15 * fbm(np.stack([p[:, 0], p[:, 1]], axis=1) * 0.8, seed=24)
    return np.where(roof[:, None], roof_tone[:, None] * np.array([1.0, 0.97, 0.95]), color)


def _paint(world: World, hits: Hits, idx: np.ndarray) -> np.ndarray:
    p = hits.local[idx]
    seeds = _object_seeds(world, hits, idx)
    base = _object_colors(world, hits, idx)
    flakes = value_noise(p * 40.0 + (seeds % 991)[:, None], seed=31)
    color = base * (0.92 + 0.12 * flakes)[:, None]
    body = hits.material[idx] == Material.CAR_PAINT
    # Dark bumper band along the bottom of the body; head and tail lights on its ends.
    half_h = 0.31
    bumper = body & (p[:, 2] < -half_h + 0.14)
    color[bumper] = 0.08
    n = hits.local_normal[idx]
    end_face = body & (np.abs(n[:, 0]) > 0.5) & (np.abs(p[:, 1]) > 0.55) & (p[:, 2] > 0.0)
    color[end_face] = np.where(n[end_face, :1] > 0, [0.95, 0.93, 0.85], [0.75, 0.05, 0.04])
    return color


def _cabin(world: World, hits: Hits, idx: np.ndarray) -> np.ndarray:
    p = hits.local[idx]
    n = hits.local_normal[idx]
    color = _paint(world, hits, idx)
    # Glass band between the belt line and the roof, on every side.
    glass = (p[:, 2] > 0.08) & (n[:, 2] < 0.8)
    sheen = value_noise(p * 3.0, seed=33)
    glass_color = np.stack([0.10 + 0.1 * sheen, 0.13 + 0.1 * sheen, 0.17 + 0.12 * sheen], axis=1)
    return np.where(glass[:, None], glass_color, color)


def _tyre(world: World, hits: Hits, idx: np.ndarray) -> np.ndarray:
    p = hits.local[idx]
    rim = np.hypot(p[:, 0], p[:, 2]) < 0.18
    return np.where(rim[:, None], 0.55, 0.06) * np.ones((len(idx), 3))


def _pole(world: World, hits: Hits, idx: np.ndarray) -> np.ndarray:
    p = hits.local[idx]
    streak = value_noise(np.stack([np.arctan2(p[:, 1], p[:, 0]) * 4.0, p[:, 2] * 0.7], axis=1),
                         seed=41)
    return _object_colors(world, hits, idx) * (0.85 + 0.3 * streak)[:, None]


def _trunk(world: World, hits: Hits, idx: np.ndarray) -> np.ndarray:
    p = hits.local[idx]
    bark = fbm(np.stack([np.arctan2(p[:, 1], p[:, 0]) * 3.0, p[:, 2] * 6.0], axis=1),
               seed=51, octaves=3)
    return np.stack([0.30 + 0.15 * bark, 0.20 + 0.1 * bark, 0.12 + 0.05 * bark], axis=1)


def _foliage(world: World, hits: Hits, idx: np.ndarray) -> np.ndarray:
    p = hits.local[idx]
    seeds = _object_seeds(world, hits, idx)
    q = p + (seeds % 1013)[:, None] * 3.1
    leaves = fbm(q * 5.0, seed=61, octaves=3)
    clumps = fbm(q * 0.9, seed=62, octaves=2)
    shade_below = np.clip(0.75 + 0.25 * p[:, 2] / 2.0, 0.5, 1.1)
    tone = (0.55 + 0.35 * leaves + 0.3 * clumps) * shade_below
    return _object_colors(world, hits, idx) * tone[:, None]


_TEXTURES = {
    Material.GROUND: _ground,
    Material.BUILDING: _building,
    Material.CAR_PAINT: _paint,
    Material.CAR_CABIN: _cabin,
    Material.TYRE: _tyre,
    Material.POLE: _pole,
    Material.TRUNK: _trunk,
    Material.FOLIAGE: _foliage,
}
