import numpy as np
import pytest

from distillprep.scenes.nuscenes import read_nuscenes
from distillprep.scenes.synthetic.truth import load_ground_truth_depth
from distillprep.teachers.nerf.evaluate import depth_metrics, lidar_nearest_fill, psnr


def test_metrics_on_known_values():
    gt = np.full((4, 4), 10.0)
    pred = gt.copy()
    pred[0, 0] = 20.0  # one pixel off by 100 %
    m = depth_metrics(pred, gt, np.ones_like(gt, bool))
    assert m["abs_rel"] == pytest.approx(1 / 16) and m["delta_1_25"] == pytest.approx(15 / 16)
    assert m["sq_rel"] == pytest.approx(100 / 10 / 16) and m["rmse"] == pytest.approx(2.5)
    assert m["rmse_log"] == pytest.approx(np.log(2) / 4)
    assert m["delta_1_25_2"] == m["delta_1_25_3"] == pytest.approx(15 / 16)  # 2 > 1.25^3
    assert psnr(np.zeros((2, 2)), np.full((2, 2), 0.1)) == pytest.approx(20.0)


def test_lidar_baseline_is_exact_at_returns_and_incomplete_elsewhere(small_dataset):
    scene = read_nuscenes(small_dataset, scenes=["scene-0001"]).scenes[0]
    frame = scene.frames[1]
    sample = frame.cameras["CAM_FRONT"]
    dense, has_return = lidar_nearest_fill(sample, frame.lidar_points().points)
    gt = load_ground_truth_depth(small_dataset, sample.source_file)
    assert np.all(dense > 0) and 0.02 < has_return.mean() < 0.5
    at_returns = depth_metrics(dense, gt, has_return & (gt > 0))
    elsewhere = depth_metrics(dense, gt, ~has_return & (gt > 0))
    assert at_returns["abs_rel"] < 0.05  # a return sits on (nearly) the pixel's surface
    assert elsewhere["abs_rel"] > at_returns["abs_rel"]
