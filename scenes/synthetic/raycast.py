"""Exact, vectorised ray casting against the world's analytic primitives.

Rays are `origins + t * dirs` with `dirs` not necessarily unit length: cameras pass
directions whose camera-frame z is 1, so the returned `t` is the depth along the camera
axis; LiDAR passes unit directions, so `t` is the range. Every intersection is solved
in closed form (slabs for boxes, quadratics for ellipsoids and cylinders, a plane for
the ground), in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import Material, PrimitiveKind, Primitives

MIN_T = 1e-4
RAY_CHUNK = 8192
BUNDLE_DEG = 5.0
MIN_BUNDLE_RAYS = 512
SKY = -1


@dataclass
class Hits:
    """The first surface along each ray (N rays)."""

    t: np.ndarray
    """(N,) ray parameter of the hit; inf where the ray reaches the sky."""
    primitive: np.ndarray
    """(N,) index into the Primitives; -1 for the ground plane and for sky."""
    material: np.ndarray
    """(N,) Material; SKY (-1) for sky."""
    obj: np.ndarray
    """(N,) world object index; -1 for ground and sky."""
    normal: np.ndarray
    """(N, 3) unit surface normal, world; zero for sky."""
    local: np.ndarray
    """(N, 3) hit point in the primitive's local frame (ground: world)."""
    local_normal: np.ndarray
    """(N, 3) unit normal in the primitive's local frame (ground: +z)."""
    any_hit_counts: np.ndarray | None = None
    """(objects,) rays that meet each object at any depth, occluded or not (on request)."""

    @property
    def sky(self) -> np.ndarray:
        return ~np.isfinite(self.t)


def _rotate_z(v: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate vectors v (..., 3) about z by the angle with the given cos/sin (broadcast)."""
    x, y = v[..., 0], v[..., 1]
    rx, ry = cos * x - sin * y, sin * x + cos * y
    return np.stack([rx, ry, np.broadcast_to(v[..., 2], rx.shape)], axis=-1)


def _to_local(prims: Primitives, origins: np.ndarray, dirs: np.ndarray):
    """Rays in every primitive's frame: origins (1, 3) or (N, 3), dirs (N, 3) -> (N, P, 3)."""
    cos, sin = np.cos(-prims.yaw), np.sin(-prims.yaw)
    o = _rotate_z(origins[:, None, :] - prims.center[None], cos, sin)
    d = _rotate_z(dirs[:, None, :], cos, sin)
    return np.broadcast_to(o, d.shape), d


def _first_positive(t_near: np.ndarray, t_far: np.ndarray, hit: np.ndarray) -> np.ndarray:
    t = np.where(t_near > MIN_T, t_near, t_far)
    return np.where(hit & (t > MIN_T), t, np.inf)


def intersect_boxes(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Slab test in local frames: o, d (N, P, 3), half sizes (P, 3); returns t (N, P)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1 = (-half - o) * inv
        t2 = (half - o) * inv
    # A ray parallel to a slab is inside it for all t or for none.
    parallel = d == 0
    inside = np.abs(o) <= half
    lo = np.where(parallel, np.where(inside, -np.inf, np.inf), np.minimum(t1, t2))
    hi = np.where(parallel, np.where(inside, np.inf, -np.inf), np.maximum(t1, t2))
    t_near, t_far = lo.max(axis=-1), hi.min(axis=-1)
    return _first_positive(t_near, t_far, t_near <= t_far)


def intersect_ellipsoids(o: np.ndarray, d: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Ellipsoids in local frames: o, d (N, P, 3), radii (P, 3); returns t (N, P)."""
    os, ds = o / radii, d / radii
    a = (ds * ds).sum(-1)
    b = 2.0 * (os * ds).sum(-1)
    c = (os * os).sum(-1) - 1.0
    disc = b * b - 4 * a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    return _first_positive((-b - root) / (2 * a), (-b + root) / (2 * a), disc >= 0)


def intersect_cylinders(o: np.ndarray, d: np.ndarray, extent: np.ndarray) -> np.ndarray:
    """Capped vertical cylinders: o, d (N, P, 3) relative to the centre, extent (P, 3) =
    (radius, radius, half height); returns t (N, P)."""
    radius, half_h = extent[:, 0], extent[:, 2]
    a = d[..., 0] ** 2 + d[..., 1] ** 2
    b = 2.0 * (o[..., 0] * d[..., 0] + o[..., 1] * d[..., 1])
    c = o[..., 0] ** 2 + o[..., 1] ** 2 - radius**2
    disc = b * b - 4 * a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    best = np.full(o.shape[:2], np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in ((-b - root) / (2 * a), (-b + root) / (2 * a)):
            z = o[..., 2] + t * d[..., 2]
            ok = (disc >= 0) & (a > 0) & (t > MIN_T) & (np.abs(z) <= half_h)
            best = np.where(ok & (t < best), t, best)
        for cap in (half_h, -half_h):
            t = (cap - o[..., 2]) / d[..., 2]
            x, y = o[..., 0] + t * d[..., 0], o[..., 1] + t * d[..., 1]
            ok = (d[..., 2] != 0) & (t > MIN_T) & (x * x + y * y <= radius**2)
            best = np.where(ok & (t < best), t, best)
    return best


_INTERSECTORS = {
    PrimitiveKind.BOX: intersect_boxes,
    PrimitiveKind.ELLIPSOID: intersect_ellipsoids,
    PrimitiveKind.CYLINDER: intersect_cylinders,
}


def ray_bundles(dirs: np.ndarray, cell_deg: float = BUNDLE_DEG) -> list[np.ndarray]:
    """Split ray indices into bundles of nearby directions (cells of `cell_deg` degrees in
    azimuth and elevation, coarser when that would leave fewer than MIN_BUNDLE_RAYS rays a
    bundle: tiny bundles cost more in overhead than culling saves), each at most RAY_CHUNK
    rays."""
    unit = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    azimuth = np.arctan2(unit[:, 1], unit[:, 0])
    elevation = np.arcsin(np.clip(unit[:, 2], -1, 1))
    while True:
        cell = np.deg2rad(cell_deg)
        key = np.floor(azimuth / cell).astype(np.int64) * 1000 + np.floor(
            elevation / cell).astype(np.int64)
        order = np.argsort(key, kind="stable")
        cuts = np.flatnonzero(np.diff(key[order])) + 1
        if len(dirs) >= MIN_BUNDLE_RAYS * (len(cuts) + 1) or cell_deg >= 90:
            break
        cell_deg *= 2
    bundles = []
    for group in np.split(order, cuts):
        bundles.extend(np.array_split(group, -(-len(group) // RAY_CHUNK)))
    return bundles


def cull_to_cone(prims: Primitives, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Indices of the primitives whose bounding sphere meets the smallest cone around the
    axis of dirs (M, 3) from origin (3,): the only ones these rays can hit."""
    unit = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    axis = unit.mean(axis=0)
    axis /= np.linalg.norm(axis)
    half = np.arccos(np.clip((unit @ axis).min(), -1.0, 1.0))
    v = prims.center - origin
    dist = np.linalg.norm(v, axis=1)
    radius = prims.bounding_radius()
    with np.errstate(invalid="ignore", divide="ignore"):
        angle = np.arccos(np.clip((v @ axis) / dist, -1.0, 1.0))
        spread = np.arcsin(np.clip(radius / dist, 0.0, 1.0))
    return np.flatnonzero((dist <= radius) | (angle <= half + spread + 1e-9))


def cast_rays(prims: Primitives, origin: np.ndarray, dirs: np.ndarray,
              num_objects: int | None = None) -> Hits:
    """First hits of rays from one origin (3,) world along dirs (N, 3) world.

    Rays are processed in bundles of similar direction, each against only the primitives
    its cone can reach (exact: culling never drops a primitive a ray could hit). With
    `num_objects`, also counts per object the rays that meet it at any depth
    (`Hits.any_hit_counts`), which measures how much of it occluders hide.
    """
    origin = np.asarray(origin, dtype=np.float64).reshape(3)
    dirs = np.asarray(dirs, dtype=np.float64)
    n = len(dirs)
    t_all = np.full(n, np.inf)
    prim_all = np.full(n, -1)
    # Ground plane z = 0, seen from above only.
    if origin[2] > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            t_ground = -origin[2] / dirs[:, 2]
        t_all = np.where((dirs[:, 2] < 0) & (t_ground > MIN_T), t_ground, t_all)
    counts = None if num_objects is None else np.zeros(num_objects, dtype=np.int64)
    for rays in ray_bundles(dirs) if n else []:
        near = cull_to_cone(prims, origin, dirs[rays])
        met = None if counts is None else np.zeros((len(rays), num_objects), dtype=bool)
        for kind, intersect in _INTERSECTORS.items():
            cols = near[prims.kind[near] == kind]
            if len(cols) == 0:
                continue
            sub = prims.subset(cols)
            o, d = _to_local(sub, origin[None], dirs[rays])
            t = intersect(o, d, sub.extent)
            j = t.argmin(axis=1)
            t_min = t[np.arange(len(j)), j]
            better = t_min < t_all[rays]
            t_all[rays] = np.where(better, t_min, t_all[rays])
            prim_all[rays] = np.where(better, cols[j], prim_all[rays])
            if met is not None:
                np.logical_or.at(met, (slice(None), sub.obj), np.isfinite(t))
        if met is not None:
            counts += met.sum(axis=0)
    hits = _describe_hits(prims, origin[None], dirs, t_all, prim_all)
    hits.any_hit_counts = counts
    return hits


def _cast_rays_reference(prims: Primitives, origin: np.ndarray, dirs: np.ndarray,
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Plain reference of `cast_rays`' first-hit search: every ray against every
    primitive, one primitive at a time, no bundles and no culling. Returns t (N,) and
    primitive index (N,) (-1: ground or sky)."""
    origin = np.asarray(origin, dtype=np.float64).reshape(1, 3)
    t_best = np.full(len(dirs), np.inf)
    if origin[0, 2] > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            t_ground = -origin[0, 2] / dirs[:, 2]
        t_best = np.where((dirs[:, 2] < 0) & (t_ground > MIN_T), t_ground, t_best)
    prim_best = np.full(len(dirs), -1)
    for p in range(len(prims)):
        one = prims.subset(np.array([p]))
        o, d = _to_local(one, origin, dirs)
        t = _INTERSECTORS[PrimitiveKind(one.kind[0])](o, d, one.extent)[:, 0]
        closer = t < t_best
        t_best[closer], prim_best[closer] = t[closer], p
    return t_best, prim_best


def _describe_hits(prims, origins, dirs, t, prim) -> Hits:
    n = len(t)
    finite = np.isfinite(t)
    on_prim = finite & (prim >= 0)
    on_ground = finite & (prim < 0)
    points = origins + np.where(finite, t, 0.0)[:, None] * dirs
    material = np.full(n, SKY)
    material[on_ground] = Material.GROUND
    obj = np.full(n, -1)
    normal = np.zeros((n, 3))
    local_normal = np.zeros((n, 3))
    normal[on_ground] = local_normal[on_ground] = (0.0, 0.0, 1.0)
    local = points.copy()
    idx = np.flatnonzero(on_prim)
    if len(idx):
        p = prim[idx]
        material[idx] = prims.material[p]
        obj[idx] = prims.obj[p]
        cos, sin = np.cos(prims.yaw[p]), np.sin(prims.yaw[p])
        rel = _rotate_z(points[idx] - prims.center[p], cos, -sin)
        ext = prims.extent[p]
        kind = prims.kind[p]
        ln = np.zeros((len(idx), 3))
        box = kind == PrimitiveKind.BOX
        if box.any():
            # The face hit is the axis where the point sits closest to the surface.
            gap = np.abs(np.abs(rel[box]) - ext[box])
            axis = gap.argmin(axis=1)
            sign = np.sign(rel[box][np.arange(box.sum()), axis])
            face = np.zeros((box.sum(), 3))
            face[np.arange(box.sum()), axis] = sign
            ln[box] = face
        ell = kind == PrimitiveKind.ELLIPSOID
        if ell.any():
            g = rel[ell] / ext[ell] ** 2
            ln[ell] = g / np.linalg.norm(g, axis=1, keepdims=True)
        cyl = kind == PrimitiveKind.CYLINDER
        if cyl.any():
            r = rel[cyl]
            on_cap = np.abs(np.abs(r[:, 2]) - ext[cyl][:, 2]) < 1e-6
            side = np.stack([r[:, 0], r[:, 1], np.zeros(len(r))], axis=1)
            side /= np.maximum(np.linalg.norm(side, axis=1, keepdims=True), 1e-12)
            cap = np.stack([np.zeros(len(r)), np.zeros(len(r)), np.sign(r[:, 2])], axis=1)
            ln[cyl] = np.where(on_cap[:, None], cap, side)
        local[idx] = rel
        local_normal[idx] = ln
        normal[idx] = _rotate_z(ln, cos, sin)
    return Hits(t, prim, material, obj, normal, local, local_normal)
