"""A perfect teacher for the student's ablation test: a teacher stage whose outputs are the
synthetic world's exact truth (dense depth of every camera sample, the DistillNeRF virtual
views rendered by the generator's own ray caster), committed to a store ingested from that
synthetic dataset. It stands where a fitted EmerNeRF would, so that a test can ask how the
student responds to distillation targets without spending minutes on teacher fits (the
bench uses real fitted teachers)."""

from __future__ import annotations

import numpy as np
from store_helpers import teacher_record

from distillprep.scenes.synthetic.generate import load_worlds
from distillprep.scenes.synthetic.render import render_view
from distillprep.storage_schemas.stored_scene import load_scene
from distillprep.teachers.nerf.render import sample_time, scaled_camera
from distillprep.teachers.nerf.virtual import VirtualViewConfig, plan_arrays, plan_virtual_views


def _free(points: np.ndarray) -> np.ndarray:
    return np.zeros(len(points))  # the rig's cameras are a metre or more from any object


def write_oracle_teacher(store, dataroot, scene_id: str, scale: float = 0.5) -> None:
    """Commit scene_id's teacher stage from the exact truth of `dataroot`: teacher depth
    (0 on the sky, where the opacity is 0 as well: what a teacher's sky head leaves) at
    `scale` of the images, and one virtual view per camera sample and
    DistillNeRF offset (left, up, right 1 m) at the same scale."""
    world = load_worlds(dataroot)[scene_id]
    scene = load_scene(store, scene_id)
    samples = scene.camera_samples
    real = []
    for s in samples:
        k, h, w = scaled_camera(s.intrinsics, s.height, s.width, scale)
        real.append(render_view(world, k, s.cam_to_world, sample_time(scene, s), w, h))
    plan = plan_virtual_views(np.stack([s.cam_to_world for s in samples]),
                              np.stack([s.intrinsics for s in samples]),
                              [(s.height, s.width) for s in samples], _free,
                              VirtualViewConfig(resolution_scale=scale))
    arrays = plan_arrays(plan.views)
    virtual = [render_view(world, v.intrinsics, v.cam_to_world,
                           sample_time(scene, samples[v.source_sample]), v.size[1], v.size[0])
               for v in plan.views]
    arrays.update(teacher_depth=np.stack([v.depth for v in real]).astype(np.float16),
                  teacher_opacity=np.stack([~v.sky for v in real]).astype(np.float16),
                  virtual_rgb=np.stack([v.rgb for v in virtual]),
                  virtual_depth=np.stack([v.depth for v in virtual]).astype(np.float16),
                  virtual_opacity=np.stack([~v.sky for v in virtual]).astype(np.float16))
    store.commit_stage(scene_id, teacher_record(store, scene_id, {"oracle": True},
                                                samples=len(samples)), arrays)

