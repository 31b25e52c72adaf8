"""Exactness of the ray caster on analytic ground truth, and of its culling against a
plain reference."""

import numpy as np
import pytest

from distillprep.scenes.geometry import make_pose, yaw_pitch_roll_matrix
from distillprep.scenes.synthetic.builder import build_world
from distillprep.scenes.synthetic.capture import ego_to_world
from distillprep.scenes.synthetic.raycast import _cast_rays_reference, cast_rays
from distillprep.scenes.synthetic.render import camera_rays, render_view
from distillprep.scenes.synthetic.rig import NUSCENES_RIG
from distillprep.scenes.synthetic.world import Material, PrimitiveKind, Primitives


def _prims(*rows):
    kind, center, extent, yaw = zip(*rows, strict=True)
    n = len(rows)
    return Primitives(np.array(kind), np.array(center, float), np.array(extent, float),
                      np.array(yaw, float), np.full(n, Material.BUILDING), np.arange(n))


# A camera 1.5 m above the ground looking along +x (OpenCV axes: z forward = world +x).
_CAM = make_pose(yaw_pitch_roll_matrix(0.0) @ np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0.0]]),
                 [0.0, 0.0, 1.5])
_K = np.array([[100.0, 0, 31.5], [0, 100.0, 23.5], [0, 0, 1]])


def test_wall_at_known_depth_renders_that_depth_everywhere():
    # A wall facing the camera, 3.5 m ahead (nearer than any ground the view sees), much
    # larger than the view, turned by pi so that its front face stays square to the camera.
    wall = _prims((PrimitiveKind.BOX, (4.0, 0.0, 0.0), (0.5, 50.0, 50.0), np.pi))
    origin, dirs = camera_rays(_K, _CAM, 64, 48)
    hits = cast_rays(wall, origin[0], dirs)
    np.testing.assert_allclose(hits.t, 3.5, rtol=0, atol=1e-9)
    np.testing.assert_allclose(hits.normal, np.tile([-1.0, 0.0, 0.0], (64 * 48, 1)), atol=1e-9)


def test_ground_plane_depth_is_height_over_ray_slope():
    origin, dirs = camera_rays(_K, _CAM, 64, 48)
    hits = cast_rays(_prims((PrimitiveKind.BOX, (0.0, 0.0, -10.0), (0.1, 0.1, 0.1), 0.0)),
                     origin[0], dirs)
    below = dirs[:, 2] < 0
    # Camera z is world x, and the ray has camera z = 1: depth = 1.5 / -dz.
    np.testing.assert_allclose(hits.t[below], 1.5 / -dirs[below, 2], rtol=1e-12)
    assert np.all(np.isinf(hits.t[~below]))
    assert np.all(hits.material[below] == Material.GROUND)


def test_sphere_cylinder_and_box_distances_along_axis():
    origin = np.zeros(3) + [0, 0, 5.0]
    dirs = np.array([[1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0]])
    prims = _prims(
        (PrimitiveKind.ELLIPSOID, (10.0, 0.0, 5.0), (2.0, 2.0, 2.0), 0.3),
        (PrimitiveKind.CYLINDER, (0.0, 7.0, 5.0), (0.25, 0.25, 3.0), 0.0),
        (PrimitiveKind.BOX, (-6.0, 0.0, 5.0), (1.0, 1.0, 1.0), np.pi / 4),
    )
    hits = cast_rays(prims, origin, dirs)
    np.testing.assert_allclose(hits.t, [8.0, 6.75, 6.0 - np.sqrt(2.0)], atol=1e-9)
    np.testing.assert_allclose(hits.normal[0], [-1, 0, 0], atol=1e-9)
    np.testing.assert_allclose(hits.normal[1], [0, -1, 0], atol=1e-9)


def test_ellipsoid_hit_points_lie_on_the_surface():
    prims = _prims((PrimitiveKind.ELLIPSOID, (20.0, 1.0, 2.0), (3.0, 1.5, 1.0), 0.7))
    origin, dirs = camera_rays(_K, _CAM, 64, 48)
    hits = cast_rays(prims, origin[0], dirs)
    on = hits.material == Material.BUILDING
    assert on.sum() > 50
    local = hits.local[on]
    np.testing.assert_allclose(((local / [3.0, 1.5, 1.0]) ** 2).sum(axis=1), 1.0, atol=1e-9)


def test_bundled_culled_casting_equals_the_plain_reference():
    world = build_world(5, 4.0)
    prims = world.primitives_at(1.0)
    for cam in NUSCENES_RIG.cameras[:3]:
        pose = ego_to_world(world, 1.0) @ cam.cam_to_ego()
        origin, dirs = camera_rays(cam.intrinsics(96, 54), pose, 96, 54)
        hits = cast_rays(prims, origin[0], dirs)
        t_ref, prim_ref = _cast_rays_reference(prims, origin[0], dirs)
        np.testing.assert_array_equal(hits.primitive, prim_ref)
        np.testing.assert_allclose(hits.t, t_ref, rtol=1e-12)


@pytest.mark.parametrize("supersample", [1, 2])
def test_render_is_deterministic(supersample):
    world = build_world(3, 2.0)
    cam = NUSCENES_RIG.cameras[0]
    pose = ego_to_world(world, 0.5) @ cam.cam_to_ego()
    a = render_view(world, cam.intrinsics(64, 36), pose, 0.5, 64, 36, supersample=supersample)
    b = render_view(world, cam.intrinsics(64, 36), pose, 0.5, 64, 36, supersample=supersample)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.depth, b.depth)
