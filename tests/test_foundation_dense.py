"""Dense features through the real timm / open_clip model code, random weights of the real
architectures: the CLIP dense path against the model's own global embedding, the text
side in the same space, DINOv2 patch tokens on the patch grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distillprep.teachers.foundation.dense import (
    _patches,
    clip_block,
    clip_dense_tokens,
    clip_global_from_values,
    dense_features,
    encode_text,
    prepare,
)
from distillprep.teachers.foundation.models import (
    MODELS,
    build_model,
    grid_size,
    model_spec,
    strided_grid,
)


@pytest.fixture(scope="module")
def clip():
    spec = model_spec("clip-vitb16")
    return spec, build_model(spec, seed=3)


@pytest.fixture(scope="module")
def dino():
    spec = model_spec("dinov2-vits14")
    return spec, build_model(spec, seed=3)


def _images(n, height, width, seed=0):
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8))


@torch.inference_mode()
def test_clip_dense_values_pooled_by_the_class_attention_give_encode_image(clip):
    """MaskCLIP's relation: the value embeddings the dense features are made of, pooled
    with the class token's attention and run through the rest of the block, are exactly
    the global image embedding (at CLIP's own 224 x 224 input)."""
    spec, model = clip
    x = prepare(spec, _images(3, 224, 224), (14, 14))
    dense, tokens, values = clip_dense_tokens(model.visual, x)
    rebuilt = clip_global_from_values(model.visual, tokens, values)
    reference = model.encode_image(x)
    assert F.cosine_similarity(rebuilt, reference).min() > 0.9999
    torch.testing.assert_close(rebuilt, reference, rtol=1e-4, atol=1e-4)
    # the dense features are the same value embeddings, per token, in the joint space
    assert dense.shape == (3, 1 + 14 * 14, reference.shape[1])
    # pooling them plainly is not the relation: random weights show the difference
    assert F.cosine_similarity(dense[:, 1:].mean(dim=1), reference).max() < 0.9


@torch.inference_mode()
def test_clip_block_through_sdpa_equals_open_clips_block(clip):
    """Our block forward (fused attention) against open_clip's own, block by block, on
    tokens that have been through the blocks before (realistic scales), and grads too."""
    _, model = clip
    blocks = model.visual.transformer.resblocks
    tokens = torch.randn(2, 1 + 5 * 9, blocks[0].attn.embed_dim)
    for block in blocks:
        ours, theirs = clip_block(block, tokens), block(tokens)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        tokens = theirs


def test_clip_block_gradients_equal_open_clips(clip):
    _, model = clip
    block = model.visual.transformer.resblocks[0]
    tokens = torch.randn(1, 17, block.attn.embed_dim, requires_grad=True)
    weight = torch.randn(1, 17, block.attn.embed_dim)
    (ours,) = torch.autograd.grad((clip_block(block, tokens) * weight).sum(), tokens)
    (theirs,) = torch.autograd.grad((block(tokens) * weight).sum(), tokens)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@torch.inference_mode()
def test_clip_text_compares_with_every_feature_pixel_in_one_space(clip):
    spec, model = clip
    x = prepare(spec, _images(1, 224, 224, seed=1), (14, 14))
    features = dense_features(spec, model, x)  # (1, E, 14, 14)
    text = encode_text(model, spec.architecture, ["a car", "a tree"])
    assert features.shape[1] == text.shape[1] == spec.width
    per_pixel = torch.einsum("ted,d->te", F.normalize(features[0].flatten(1).T, dim=-1)[None],
                             F.normalize(text[0], dim=0))[0]
    manual = F.cosine_similarity(features[0, :, 5, 7], text[0], dim=0)
    assert per_pixel[5 * 14 + 7].item() == pytest.approx(manual.item(), abs=1e-5)
    # texts differ, so do their maps
    other = F.normalize(features[0].flatten(1).T, dim=-1) @ F.normalize(text[1], dim=0)
    assert not torch.allclose(per_pixel, other)


@torch.inference_mode()
def test_clip_dense_on_a_non_square_grid_resamples_the_position_embedding(clip):
    spec, model = clip
    features = dense_features(spec, model, prepare(spec, _images(2, 90, 160), (5, 9)))
    assert features.shape == (2, spec.width, 5, 9)
    assert torch.isfinite(features).all()


@torch.inference_mode()
def test_dino_dense_features_are_the_last_blocks_normed_patch_tokens(dino):
    spec, model = dino
    x = prepare(spec, _images(2, 108, 192), (4, 7))
    assert x.shape == (2, 3, 4 * 14, 7 * 14)
    features = dense_features(spec, model, x)
    tokens = model.forward_features(x)
    assert features.shape == (2, spec.width, 4, 7)
    # patch (row 2, col 3) is token 1 + 2 * 7 + 3 (after the class token)
    torch.testing.assert_close(features[:, :, 2, 3], tokens[:, 1 + 2 * 7 + 3])
    # the final norm: every patch vector is layer-normalised before its affine map
    assert torch.isfinite(features).all()


def test_prepare_normalises_with_the_models_own_statistics():
    for spec in MODELS.values():
        grey = torch.full((1, 28, 28, 3), 128, dtype=torch.uint8)
        x = prepare(spec, grey, (28 // spec.patch or 1, 28 // spec.patch or 1))
        expected = (128 / 255 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
        torch.testing.assert_close(x[0, :, 0, 0], expected.float())


def test_grid_keeps_the_aspect_ratio_to_half_a_patch():
    spec = model_spec("dinov2-vitb14")
    assert grid_size(spec, 900, 1600, None) == (26, 46)  # 644 px wide by default
    assert grid_size(spec, 180, 320, 112) == (4, 8)
    assert grid_size(model_spec("clip-vitb16"), 900, 1600, 640) == (22, 40)
    with pytest.raises(ValueError, match="unknown feature model 'dino'.*dinov2-vitb14"):
        model_spec("dino")


@torch.inference_mode()
def test_a_smaller_stride_takes_the_same_patches_in_between(dino, clip):
    for spec, model, conv in ((*dino, dino[1].patch_embed.proj), (*clip, clip[1].visual.conv1)):
        x = prepare(spec, _images(1, 108, 192, seed=4), (3, 5))
        half = spec.patch // 2
        dense = _patches(conv, x, half)
        # every other strided patch is exactly a non-overlapping patch
        torch.testing.assert_close(dense[..., ::2, ::2], _patches(conv, x, spec.patch))
        features = dense_features(spec, model, x, stride=half)
        assert features.shape == (1, spec.width, *strided_grid(spec, (3, 5), half)) == (
            1, spec.width, 5, 9)
        assert torch.isfinite(features).all()
    with pytest.raises(ValueError, match="stride 15 must be 1..14"):
        strided_grid(dino[0], (3, 5), 15)


@pytest.mark.slow
@torch.inference_mode()
def test_clip_vitl14_336_relation_holds_too():
    spec = model_spec("clip-vitl14-336")
    model = build_model(spec)
    x = prepare(spec, _images(1, 336, 336), (24, 24))
    _, tokens, values = clip_dense_tokens(model.visual, x)
    rebuilt = clip_global_from_values(model.visual, tokens, values)
    assert F.cosine_similarity(rebuilt, model.encode_image(x)).min() > 0.9999


def test_a_batch_without_memory_is_retried_at_half_the_size(monkeypatch):
    """The device's out-of-memory error (a GPU's, raised here by a wrapper that refuses
    batches over 2) halves the batch; the features equal one-image-at-a-time ones."""
    from distillprep.teachers.foundation import extract
    from distillprep.teachers.foundation.extract import FeatureConfig, load_extractor

    extractor = load_extractor(FeatureConfig(model="dinov2-vits14", random_init=True),
                               batch_size=8)
    images = _images(5, 56, 84).numpy()
    alone = np.concatenate([extractor(image[None], (4, 6)) for image in images])
    sizes = []
    real = extract.dense_features

    def small_device(spec, model, x, stride=None):
        sizes.append(len(x))
        if len(x) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return real(spec, model, x, stride)

    monkeypatch.setattr(extract, "dense_features", small_device)
    batched = extractor(images, (4, 6))
    assert sizes == [5, 4, 2, 2, 1] and extractor.batch_size == 2
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-4)
    # one image that does not fit is the device's error, not a loop
    monkeypatch.setattr(extract, "dense_features", lambda spec, model, x, stride=None:
                        small_device(spec, model, x.repeat(3, 1, 1, 1), stride))
    extractor.batch_size = 1
    with pytest.raises(torch.OutOfMemoryError):
        extractor(images[:1], (4, 6))


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device here: run it on a GPU machine (the device tool)")
@pytest.mark.parametrize("name", ["dinov2-vits14", "clip-vitb16"])
def test_cuda_bf16_features_match_the_cpu_fp32_ones(name):
    """The GPU path (bf16 autocast, batches of 32) against the CPU one, same weights:
    per-pixel cosine close to 1 (bf16 keeps ~3 significant digits)."""
    from distillprep.teachers.foundation.extract import FeatureConfig, load_extractor

    config = FeatureConfig(model=name, random_init=True)
    images = _images(3, 90, 160).numpy()
    cpu = load_extractor(config, device="cpu")
    gpu = load_extractor(config, device="cuda")
    assert gpu.provenance["precision"] == "bf16"
    grid = cpu.grid(90, 160, 224)
    a, b = (torch.as_tensor(e(images, grid)) for e in (cpu, gpu))
    assert F.cosine_similarity(a, b, dim=1).min() > 0.98
