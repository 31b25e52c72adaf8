"""The student's parameterized space and its two-stage depth: the contraction against a
plain per-coordinate reference, the official 286 coarse bins, and a known surface landing
in the right coarse bin and the right fine interval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillprep.student.model.depth import coarse_depth, fine_candidates, fine_depth
from distillprep.student.model.space import (
    SpaceConfig,
    _contract_reference,
    coarse_bin_edges,
    contract,
    uncontract,
)

SPACE = SpaceConfig()


def test_contraction_matches_the_reference_and_inverts():
    g = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(500, 3, generator=g, dtype=torch.float64) * 40,
                        torch.randn(500, 3, generator=g, dtype=torch.float64) * 400])
    s = contract(points, SPACE)
    radii = (50.0, 50.0, 6.4)
    expected = [[_contract_reference(float(v), radii[a], 0.8) for a, v in enumerate(p)]
                for p in points]
    assert np.allclose(s.numpy(), expected, atol=1e-12)
    assert s.abs().max() < 1
    assert torch.allclose(uncontract(s, SPACE), points, rtol=1e-9, atol=1e-9)
    # continuous at the inner box's faces, where s = alpha
    face = torch.tensor([[50.0 - 1e-9, 50.0, 6.4], [50.0 + 1e-9, -50.0, -6.4]],
                        dtype=torch.float64)
    assert torch.allclose(contract(face, SPACE).abs(), torch.full((2, 3), 0.8,
                                                                  dtype=torch.float64))


def test_the_official_coarse_bins():
    edges = coarse_bin_edges(SPACE)
    assert len(edges) - 1 == 286
    assert np.allclose(edges[:250], 0.1 + 0.2 * np.arange(250))
    assert edges[250] == pytest.approx(50.0) and edges[-1] == pytest.approx(117.92, abs=0.01)
    s = 1 - 50 * 0.2 / edges[250:]  # the outer edges are equally spaced in contracted depth
    assert np.allclose(np.diff(s), 0.8 * 0.2 / 50)
    with pytest.raises(ValueError, match="near < inner_xy < far"):
        SpaceConfig(far=40.0)


@pytest.mark.parametrize("depth", [0.73, 7.31, 23.37, 48.2, 66.6, 101.0])
def test_a_known_surface_lands_in_the_right_coarse_bin_and_fine_interval(depth):
    edges = torch.tensor(coarse_bin_edges(SPACE), dtype=torch.float64)
    # empty space before the surface, solid matter from the bin that holds it on
    logits = torch.where(edges[1:] > depth, 40.0, -40.0)[None].double()
    weights, coarse = coarse_depth(logits, edges)
    k = int(weights[0].argmax())
    assert edges[k] <= depth < edges[k + 1]
    assert abs(float(coarse[0]) - depth) <= float(edges[k + 1] - edges[k]) / 2 + 1e-9
    candidates = fine_candidates(coarse)
    assert candidates.shape == (1, 15)
    spacing = min(max(0.025 * float(coarse[0]), 0.05), 0.3)
    assert torch.allclose(candidates[0], torch.relu(coarse[0] + spacing * torch.arange(
        -8, 7, dtype=torch.float64)))
    probability = (candidates >= depth).double()
    fine_weights, fine = fine_depth(probability, candidates)
    i = int(fine_weights[0].argmax())
    assert candidates[0, i] <= depth < candidates[0, i + 1]
    assert abs(float(fine[0]) - depth) <= spacing / 2 + 1e-9
    assert float(fine_weights.sum()) == pytest.approx(1.0, abs=1e-6)


def test_depth_gradients_reach_the_logits():
    edges = torch.tensor(coarse_bin_edges(SPACE))
    logits = torch.zeros(4, 286, requires_grad=True)
    _, depth = coarse_depth(logits, edges)
    depth.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
