"""`moving_object_mask` against the generator's stored truth: the pixels it marks are
exactly those whose exact depth is the depth of a moving car at the image's time."""

import numpy as np
import pytest

from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.scenes.synthetic.generate import SynthConfig, generate, load_worlds
from distillprep.scenes.synthetic.raycast import cast_rays
from distillprep.scenes.synthetic.render import camera_rays
from distillprep.scenes.synthetic.truth import load_ground_truth_depth, moving_object_mask

# seed 0: a car overtakes on the left (CAM_FRONT_LEFT of frame 1 sees it close up), others
# ahead and behind; most side cameras see no moving car at all
CONFIG = SynthConfig(scenes=1, frames=3, width=192, height=108, seed=0, supersample=1,
                     workers=1)


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    """(frame, camera, mask, exact depth, camera-z depth of moving cars alone, t) per view."""
    root = generate(tmp_path_factory.mktemp("moving") / "nuscenes", "nuscenes", CONFIG)
    scene = read_nuscenes(root).scenes[0]
    world = load_worlds(root)[scene.scene_id]
    moving = np.array([o.speed != 0 for o in world.objects])
    assert moving.any() and not moving.all()
    base = scene.frames[0].timestamp_us
    out = []
    for frame in scene.frames:
        for name, s in frame.cameras.items():
            t = (s.timestamp_us - base) / 1e6
            mask = moving_object_mask(world, s.intrinsics, s.cam_to_world, t, s.width, s.height)
            prims = world.primitives_at(t)
            cars = prims.subset(moving[prims.obj])
            origin, dirs = camera_rays(s.intrinsics, s.cam_to_world, s.width, s.height)
            hits = cast_rays(cars, origin[0], dirs)  # the ground plane is always there
            t_cars = np.where(hits.obj >= 0, hits.t, np.inf).reshape(s.height, s.width)
            depth = load_ground_truth_depth(root, s.source_file)
            out.append((frame.index, name, mask, depth, t_cars, t, world, s))
    return out


def test_mask_is_non_empty_where_a_moving_car_is_seen_and_empty_elsewhere(views):
    counts = {(f, name): int(mask.sum()) for f, name, mask, *_ in views}
    assert counts[(1, "CAM_FRONT_LEFT")] > 2000, counts  # the overtaking car, close up
    assert counts[(0, "CAM_FRONT")] > 100, counts
    assert counts[(0, "CAM_FRONT_LEFT")] == 0, counts
    assert sum(c == 0 for c in counts.values()) >= 6, counts
    for _, _, mask, depth, *_ in views:
        assert mask.shape == depth.shape == (CONFIG.height, CONFIG.width)
        assert mask.dtype == bool


def test_masked_depth_is_the_moving_cars_depth_and_nothing_is_missed(views):
    for f, name, mask, depth, t_cars, *_ in views:
        # every masked pixel: the exact depth is where its ray meets a moving car
        np.testing.assert_allclose(depth[mask], t_cars[mask], rtol=1e-6,
                                   err_msg=f"frame {f} {name}")
        # every other pixel: no moving car in front of what the truth shows (sky has depth 0)
        rest = ~mask & np.isfinite(t_cars)
        in_front = (depth[rest] == 0) | (t_cars[rest] < depth[rest] * (1 - 1e-6))
        assert not in_front.any(), (f, name, int(in_front.sum()))
        # and the car-depth agreement singles out exactly the masked pixels
        agree = np.isfinite(t_cars) & np.isclose(depth, t_cars, rtol=1e-6, atol=0)
        assert np.array_equal(agree, mask), (f, name, int((agree != mask).sum()))


def test_mask_follows_the_cars_in_time(views):
    f, name, mask, depth, t_cars, t, world, s = next(
        v for v in views if (v[0], v[1]) == (1, "CAM_FRONT_LEFT"))
    later = moving_object_mask(world, s.intrinsics, s.cam_to_world, t + 0.5, s.width, s.height)
    # half a second later the car has moved on: the mask no longer fits this image's truth
    assert (later != mask).sum() > 500
    wrong = later & ~mask
    assert wrong.any() and not np.allclose(depth[wrong], t_cars[wrong], rtol=1e-6)
