"""Procedural placement: turns a seed into a `World` (road, buildings, street furniture,
cars, the ego's motion). All randomness comes from one numpy Generator seeded here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .road import Road
from .world import EgoMotion, World, WorldObject

_FACADES = ((0.80, 0.74, 0.62), (0.62, 0.33, 0.25), (0.58, 0.58, 0.56), (0.86, 0.85, 0.80),
            (0.45, 0.52, 0.60), (0.72, 0.60, 0.44))
_PAINTS = ((0.92, 0.92, 0.90), (0.08, 0.08, 0.09), (0.62, 0.64, 0.66), (0.65, 0.07, 0.06),
           (0.10, 0.22, 0.55), (0.12, 0.30, 0.18), (0.80, 0.62, 0.12))


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the procedural world; defaults give a town street as hard as real roads."""

    margin_behind: float = 120.0
    """Metres of populated street before the ego's start."""
    margin_ahead: float = 160.0
    """Metres of populated street after the ego's end."""
    ego_speed: float = 12.0
    """Mean ego speed, m/s (the speed oscillates +-1.8 m/s around it)."""
    moving_vehicles: int = 4
    """Oncoming vehicles passing the ego (one more drives ahead in the ego's lane)."""


def build_world(seed: int, duration_s: float, config: WorldConfig | None = None) -> World:
    """A new world for a scene lasting `duration_s` seconds, fully determined by `seed`."""
    config = config or WorldConfig()
    rng = np.random.default_rng(seed)
    ego = EgoMotion(s0=0.0, d=-1.75, v_mean=config.ego_speed, v_amp=1.8,
                    period=float(rng.uniform(6.0, 10.0)), phase=float(rng.uniform(0, 2 * np.pi)))
    s_lo = -config.margin_behind
    s_hi = float(ego.s(duration_s)) + config.margin_ahead
    road = _build_road(rng, s_lo, s_hi)
    objects: list[WorldObject] = []
    for side in (1.0, -1.0):
        objects += _buildings(rng, road, side, s_lo, s_hi)
        objects += _street_furniture(rng, road, side, s_lo, s_hi)
        objects += _parked_cars(rng, road, side, s_lo, s_hi)
    objects += _moving_cars(rng, road, config, s_lo, s_hi, duration_s)
    sun = np.array([0.45, 0.3, 0.84])
    sun /= np.linalg.norm(sun)
    return World(seed, road, tuple(objects), ego, tuple(float(v) for v in sun))


def _build_road(rng: np.random.Generator, s_lo: float, s_hi: float) -> Road:
    # Long straights at both ends carry the road to the horizon.
    start = s_lo - 800.0
    segments = [(800.0 + 30.0, 0.0)]
    s = s_lo + 30.0
    turn = float(rng.choice([-1.0, 1.0]))
    while s < s_hi:
        straight = float(rng.uniform(30.0, 90.0))
        arc = float(rng.uniform(60.0, 140.0))
        curvature = turn * float(rng.uniform(1 / 260.0, 1 / 120.0))
        segments += [(straight, 0.0), (arc, curvature)]
        turn = -turn
        s += straight + arc
    segments.append((800.0, 0.0))
    return Road(tuple(segments), start)


def _buildings(rng, road: Road, side: float, s_lo: float, s_hi: float) -> list[WorldObject]:
    out = []
    s = s_lo + float(rng.uniform(0, 10))
    while s < s_hi:
        length = float(rng.uniform(8.0, 26.0))
        depth = float(rng.uniform(8.0, 20.0))
        roll = rng.uniform()
        height = float(rng.uniform(4, 8) if roll < 0.65 else
                       rng.uniform(9, 18) if roll < 0.9 else rng.uniform(18, 36))
        setback = float(rng.uniform(4.0, 28.0))
        d = side * (road.half_width + 3.0 + setback + depth / 2)
        color = _jitter(rng, _FACADES[rng.integers(len(_FACADES))], 0.06)
        out.append(WorldObject(
            "building", s + length / 2, d, (length, depth, height), color,
            int(rng.integers(1 << 30)),
            params={"window_spacing": float(rng.uniform(2.2, 3.6)),
                    "floor_height": float(rng.uniform(2.9, 3.6)),
                    "window_width": float(rng.uniform(0.4, 0.7))}))
        gap = rng.uniform(1.0, 6.0) if rng.uniform() < 0.45 else rng.uniform(12.0, 32.0)
        s += length + float(gap)
    return out


def _street_furniture(rng, road: Road, side: float, s_lo: float, s_hi: float):
    out = []
    pole_s = []
    s = s_lo + float(rng.uniform(0, 30))
    while s < s_hi:
        height = float(rng.uniform(6.5, 9.0))
        out.append(WorldObject(
            "pole", s, side * (road.half_width + 0.6), (0.2, 0.2, height), (0.45, 0.46, 0.47),
            int(rng.integers(1 << 30)),
            params={"radius": float(rng.uniform(0.07, 0.12)), "arm": -side * 1.6}))
        pole_s.append(s)
        s += float(rng.uniform(22.0, 38.0))
    s = s_lo + float(rng.uniform(0, 12))
    while s < s_hi:
        if all(abs(s - p) > 2.5 for p in pole_s):
            crown = float(rng.uniform(1.2, 2.8))
            out.append(WorldObject(
                "tree", s, side * (road.half_width + 2.0), (2 * crown, 2 * crown, 0.0),
                _jitter(rng, (0.22, 0.40, 0.15), 0.05), int(rng.integers(1 << 30)),
                params={"trunk_radius": float(rng.uniform(0.12, 0.25)),
                        "trunk_height": float(rng.uniform(1.8, 3.2)),
                        "crown_radius": crown,
                        "crown_half_height": float(rng.uniform(1.4, 3.4))}))
        s += float(rng.uniform(9.0, 26.0))
    return out


def _vehicle(rng, s: float, d: float, speed: float, yaw_offset: float) -> WorldObject:
    length, width = float(rng.uniform(4.0, 4.9)), float(rng.uniform(1.75, 1.95))
    height = float(rng.uniform(1.45, 1.7))
    paint = _jitter(rng, _PAINTS[rng.integers(len(_PAINTS))], 0.03)
    return WorldObject("vehicle", s, d, (length, width, height), paint,
                       int(rng.integers(1 << 30)), speed=speed, yaw_offset=yaw_offset)


def _parked_cars(rng, road: Road, side: float, s_lo: float, s_hi: float):
    out = []
    s = s_lo + float(rng.uniform(0, 15))
    while s < s_hi:
        if rng.uniform() < 0.55:
            out.append(_vehicle(rng, s, side * (road.half_width - 0.9), 0.0,
                                0.0 if side < 0 else float(np.pi)))
        s += float(rng.uniform(7.0, 20.0))
    return out


def _moving_cars(rng, road: Road, config: WorldConfig, s_lo, s_hi, duration_s):
    lane = road.lane_width / 2
    out = []
    # Oncoming traffic shares one speed, so the cars keep their spacing and never overlap;
    # they start far enough ahead to pass the ego during the scene.
    speed = float(rng.uniform(8.0, 14.0))
    s0 = s_lo + 40.0
    for _ in range(config.moving_vehicles):
        s0 += float(rng.uniform(15.0, (s_hi - s_lo + speed * duration_s) / config.moving_vehicles))
        out.append(_vehicle(rng, s0, lane, -speed, float(np.pi)))
    # One car ahead in the ego's lane, faster than the ego ever drives: it never closes in.
    out.append(_vehicle(rng, float(rng.uniform(25.0, 45.0)), -lane,
                        config.ego_speed + 3.5 + float(rng.uniform(0, 1.5)), 0.0))
    return out


def _jitter(rng, color, amount: float) -> tuple[float, float, float]:
    c = np.clip(np.asarray(color) + rng.uniform(-amount, amount, 3), 0.0, 1.0)
    return tuple(float(v) for v in c)
