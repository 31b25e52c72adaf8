"""Sparse 3D convolution: spconv's rulebook with a torch gather-matmul-scatter, equal to a
dense `F.conv3d` on values and gradients with several threads (where spconv's own CPU
scatter-add races), submanifold and strided."""

from __future__ import annotations

import pytest
import torch

from distillprep.student.model.sparse_conv import (
    SparseConv3d,
    SparseVoxels,
    _sparse_conv3d_reference,
    rulebook,
)


def voxels(dtype, seed=0, shape=(10, 9, 11), count=160, channels=8) -> SparseVoxels:
    g = torch.Generator().manual_seed(seed)
    coords = torch.stack([torch.randint(0, s, (count,), generator=g) for s in shape], 1)
    batch = torch.randint(0, 2, (count, 1), generator=g)
    indices = torch.unique(torch.cat([batch, coords], 1), dim=0).int()
    features = torch.randn(len(indices), channels, generator=g, dtype=dtype)
    return SparseVoxels(features.requires_grad_(), indices, shape, 2)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(max(2, before))
    yield torch.get_num_threads()
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("subm,stride,padding", [(True, 1, 1), (False, 2, 1), (False, 1, 0)])
def test_equals_dense_conv3d_on_values_and_gradients(threads, dtype, tol, subm, stride,
                                                     padding):
    assert threads >= 2
    x = voxels(dtype)
    conv = SparseConv3d(8, 16, 3, stride=stride, padding=padding, subm=subm,
                        bias=False).to(dtype)
    out = conv(x)
    if subm:
        assert torch.equal(out.indices, x.indices)
    reference = _sparse_conv3d_reference(x, conv.weight, out.indices, stride, padding)
    assert out.features.shape == reference.shape and len(reference) > 50
    scale = float(reference.detach().abs().max())
    assert torch.allclose(out.features, reference, atol=tol * scale, rtol=0)
    upstream = torch.randn_like(reference)
    grads = torch.autograd.grad((out.features * upstream).sum(), [x.features, conv.weight])
    expected = torch.autograd.grad((reference * upstream).sum(), [x.features, conv.weight])
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, atol=tol * float(want.abs().max()), rtol=0)


def test_strided_outputs_are_every_cell_any_input_reaches():
    x = voxels(torch.float64, seed=3)
    book = rulebook(x, 3, 2, 1, subm=False)
    dense = torch.nn.functional.max_pool3d(
        (x.dense().abs().sum(1, keepdim=True) > 0).double(), 3, stride=2, padding=1)
    b, _, z, y, xx = torch.nonzero(dense, as_tuple=True)
    expected = {tuple(v) for v in torch.stack([b, z, y, xx], 1).tolist()}
    assert {tuple(v) for v in book.out_indices.tolist()} == expected
    assert book.out_shape == (5, 5, 6)


def test_bias_and_shapes_are_checked():
    x = voxels(torch.float32)
    conv = SparseConv3d(8, 4, 3, subm=True)
    with torch.no_grad():
        conv.bias.fill_(2.0)
        conv.weight.zero_()
    assert torch.all(conv(x).features == 2.0)
    with pytest.raises(ValueError, match="stride 1"):
        SparseConv3d(8, 4, 3, stride=2, subm=True)
