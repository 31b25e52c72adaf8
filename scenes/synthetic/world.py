"""The procedural driving world: a road, buildings, poles, trees, parked and moving cars.

Everything is described by plain numbers (`World.to_json`), so a world written to
`ground_truth/world.json` rebuilds exactly. Objects are placed in road coordinates
(s, d) (see `road.py`); at a time t (seconds from the scene start) each object turns into
analytic primitives (yawed boxes, yawed ellipsoids, vertical cylinders) in world
coordinates, which `raycast.py` intersects exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import IntEnum

import numpy as np

from .road import Road

WORLD_FORMAT_VERSION = 1


class Material(IntEnum):
    """What a surface is made of; selects the procedural texture in `shading.py`."""

    GROUND = 0
    BUILDING = 1
    CAR_PAINT = 2
    CAR_CABIN = 3
    TYRE = 4
    POLE = 5
    TRUNK = 6
    FOLIAGE = 7


class PrimitiveKind(IntEnum):
    BOX = 0
    ELLIPSOID = 1
    CYLINDER = 2


@dataclass(frozen=True)
class WorldObject:
    """One object of the world, placed in road coordinates."""

    kind: str
    """`building`, `pole`, `tree` or `vehicle`."""
    s: float
    """Arc length of the object's centre along the road at t = 0, metres."""
    d: float
    """Lateral offset of the centre, metres, positive to the left."""
    size: tuple[float, float, float]
    """Length (along its heading), width, height in metres."""
    color: tuple[float, float, float]
    """Base albedo, RGB in [0, 1]."""
    seed: int
    """Seed of the object's texture detail."""
    speed: float = 0.0
    """Speed along s, m/s (vehicles only; negative drives towards decreasing s)."""
    yaw_offset: float = 0.0
    """Heading relative to the road's heading, radians."""
    params: dict[str, float] = field(default_factory=dict)
    """Kind-specific shape and texture numbers (window spacing, crown radius, ...)."""

    def pose(self, road: Road, t: float) -> tuple[float, float, float]:
        """World (x, y, yaw) of the object's footprint centre at time t seconds."""
        x, y, heading = road.pose(np.array([self.s + self.speed * t]), np.array([self.d]))
        return float(x[0]), float(y[0]), float(heading[0] + self.yaw_offset)


@dataclass(frozen=True)
class EgoMotion:
    """The ego drives along its lane with a smoothly varying speed."""

    s0: float
    """Arc length at t = 0."""
    d: float
    """Lane offset, metres."""
    v_mean: float
    """Mean speed, m/s."""
    v_amp: float
    """Speed oscillation amplitude, m/s."""
    period: float
    """Speed oscillation period, s."""
    phase: float
    """Speed oscillation phase, radians."""

    def s(self, t: np.ndarray) -> np.ndarray:
        """Arc length at times t (seconds), closed-form integral of the speed."""
        w = 2 * np.pi / self.period
        t = np.asarray(t, dtype=np.float64)
        return self.s0 + self.v_mean * t - self.v_amp / w * (
            np.cos(w * t + self.phase) - np.cos(self.phase)
        )

    def speed(self, t: np.ndarray) -> np.ndarray:
        """Speed in m/s at times t."""
        return self.v_mean + self.v_amp * np.sin(2 * np.pi / self.period * np.asarray(t)
                                                 + self.phase)


@dataclass
class Primitives:
    """Analytic primitives at one instant, one row each, in world coordinates."""

    kind: np.ndarray
    """(P,) int PrimitiveKind."""
    center: np.ndarray
    """(P, 3) world centre."""
    extent: np.ndarray
    """(P, 3) box half sizes / ellipsoid radii along local x, y, z; cylinders: (r, r, half h)."""
    yaw: np.ndarray
    """(P,) rotation about world z, radians (cylinders: 0)."""
    material: np.ndarray
    """(P,) int Material."""
    obj: np.ndarray
    """(P,) index into World.objects."""
    def __len__(self) -> int:
        return len(self.kind)

    def bounding_radius(self) -> np.ndarray:
        """(P,) radius of a sphere around `center` holding the primitive."""
        return np.linalg.norm(self.extent, axis=1)

    def subset(self, mask: np.ndarray) -> Primitives:
        return Primitives(*(getattr(self, f)[mask] for f in
                            ("kind", "center", "extent", "yaw", "material", "obj")))


@dataclass(frozen=True)
class World:
    """A complete synthetic scene world: rebuildable from `to_json()` alone."""

    seed: int
    road: Road
    objects: tuple[WorldObject, ...]
    ego: EgoMotion
    sun: tuple[float, float, float]
    """Unit direction towards the sun, world."""

    def primitives_at(self, t: float) -> Primitives:
        """All primitives at time t seconds from the scene start."""
        rows: list[tuple] = []
        for index, obj in enumerate(self.objects):
            x, y, yaw = obj.pose(self.road, t)
            rows.extend(row + (index,) for row in _object_primitives(obj, x, y, yaw))
        kind, center, extent, yaw, material, obj_index = zip(*rows, strict=True)
        return Primitives(np.array(kind), np.array(center, dtype=np.float64),
                          np.array(extent, dtype=np.float64), np.array(yaw, dtype=np.float64),
                          np.array(material), np.array(obj_index))

    def to_json(self) -> dict:
        return {
            "format_version": WORLD_FORMAT_VERSION,
            "seed": self.seed,
            "road": self.road.to_json(),
            "ego": asdict(self.ego),
            "sun": list(self.sun),
            "objects": [
                {**asdict(o), "size": list(o.size), "color": list(o.color)} for o in self.objects
            ],
        }

    @staticmethod
    def from_json(data: dict) -> World:
        if data.get("format_version") != WORLD_FORMAT_VERSION:
            raise ValueError(f"world.json format_version {data.get('format_version')!r} "
                             f"is not {WORLD_FORMAT_VERSION}")
        objects = tuple(
            WorldObject(**{**o, "size": tuple(o["size"]), "color": tuple(o["color"])})
            for o in data["objects"]
        )
        return World(int(data["seed"]), Road.from_json(data["road"]), objects,
                     EgoMotion(**data["ego"]), tuple(data["sun"]))


def _object_primitives(obj: WorldObject, x: float, y: float, yaw: float) -> list[tuple]:
    """(kind, centre, extent, yaw, material) rows of one object placed at (x, y, yaw)."""
    length, width, height = obj.size
    cos, sin = np.cos(yaw), np.sin(yaw)

    def at(forward: float, left: float, z: float) -> tuple[float, float, float]:
        return (x + forward * cos - left * sin, y + forward * sin + left * cos, z)

    if obj.kind == "building":
        return [(PrimitiveKind.BOX, at(0, 0, height / 2), (length / 2, width / 2, height / 2),
                 yaw, Material.BUILDING)]
    if obj.kind == "pole":
        radius = obj.params["radius"]
        arm = obj.params["arm"]  # signed: the arm reaches over the road
        return [
            (PrimitiveKind.CYLINDER, at(0, 0, height / 2), (radius, radius, height / 2), 0.0,
             Material.POLE),
            (PrimitiveKind.BOX, at(0, arm / 2, height - 0.1), (0.06, abs(arm) / 2, 0.06), yaw,
             Material.POLE),
            (PrimitiveKind.BOX, at(0, arm, height - 0.2), (0.25, 0.35, 0.1), yaw, Material.POLE),
        ]
    if obj.kind == "tree":
        trunk_r, trunk_h = obj.params["trunk_radius"], obj.params["trunk_height"]
        crown_r, crown_h = obj.params["crown_radius"], obj.params["crown_half_height"]
        return [
            (PrimitiveKind.CYLINDER, at(0, 0, trunk_h / 2), (trunk_r, trunk_r, trunk_h / 2), 0.0,
             Material.TRUNK),
            (PrimitiveKind.ELLIPSOID, at(0, 0, trunk_h + 0.8 * crown_h),
             (crown_r, crown_r * 0.9, crown_h), yaw, Material.FOLIAGE),
        ]
    if obj.kind == "vehicle":
        clearance, body_h = 0.28, 0.62
        wheel_r = 0.33
        rows = [
            (PrimitiveKind.BOX, at(0, 0, clearance + body_h / 2),
             (length / 2, width / 2, body_h / 2), yaw, Material.CAR_PAINT),
            # Rounded cabin: an ellipsoid whose lower half hides inside the body box.
            (PrimitiveKind.ELLIPSOID, at(-0.08 * length, 0, clearance + body_h),
             (0.36 * length, 0.47 * width, height - clearance - body_h), yaw,
             Material.CAR_CABIN),
        ]
        for forward in (0.32 * length, -0.32 * length):
            for side in (width / 2 - 0.12, -(width / 2 - 0.12)):
                rows.append((PrimitiveKind.ELLIPSOID, at(forward, side, wheel_r),
                             (wheel_r, 0.13, wheel_r), yaw, Material.TYRE))
        return rows
    raise ValueError(f"unknown object kind {obj.kind!r}")
