"""Feature extraction speed: each model at its working resolution (a 1600 x 900 nuScenes
image resized to the model's default input width), random weights of the real
architecture. Printed per model: images/s; the achieved FLOP rate (torch's own FLOP count
of one forward pass times images/s) as a ratio to a large fp32 matmul's rate measured in
this process, i.e. how close extraction gets to the machine's floor; and the batched
path against a one-image-at-a-time loop. torch's counter has no formula for the fused
attention ops CPU inference runs (`_scaled_dot_product_flash_attention_for_cpu`,
`_native_multi_head_attention`) and counted them as free; `FUSED_ATTENTION_FLOPS` adds
them, so the ratio is the achieved rate of all the work, not of the MLPs alone.
`bench_position_denoising` measures the positional pattern on real (synthetic-world)
images, `bench_feature_codecs` the store's codecs on PCA-reduced features.

`python tests/bench_features.py [MODEL ...]` runs it alone (default: every model).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from bench_store import bench_codecs
from bench_timing import best_of
from torch.utils.flop_counter import FlopCounterMode

from distillprep.teachers.foundation.extract import FeatureConfig, load_extractor
from distillprep.teachers.foundation.models import MODELS
from distillprep.teachers.foundation.pca import CovarianceSum, fit_pca, project
from distillprep.teachers.foundation.positional import denoise, position_pattern, position_share

NUSCENES_SIZE = (900, 1600)
BATCH = 4


def _attention_flops(batch_heads: int, queries: int, keys: int, dim: int, dim_v: int) -> int:
    """softmax(q k^T) v: two matrix products, 2 FLOPs per multiply-add."""
    return 2 * batch_heads * queries * keys * (dim + dim_v)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """q, k, v (B, heads, L, d)."""
    batch, heads, queries, dim = query_shape
    return _attention_flops(batch * heads, queries, key_shape[-2], dim, value_shape[-1])


def _native_mha_flops(query_shape, key_shape, value_shape, embed_dim, num_heads,
                      *args, **kwargs) -> int:
    """query, key, value (B, L, E), batch first: in-projection, attention, out-projection."""
    batch, length, width = query_shape
    projections = 2 * batch * length * width * (3 * embed_dim + embed_dim)
    return projections + _attention_flops(batch, length, key_shape[1], embed_dim, embed_dim)


FUSED_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    torch.ops.aten._native_multi_head_attention: _native_mha_flops,
}


def matmul_flops_per_s(size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 rate of a (size x size) @ (size x size) product, FLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def bench_model(name: str, floor: float) -> None:
    extractor = load_extractor(FeatureConfig(model=name, random_init=True),
                               batch_size=BATCH)
    grid = extractor.grid(*NUSCENES_SIZE, None)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (BATCH, *NUSCENES_SIZE, 3), dtype=np.uint8)
    extractor(images[:1], grid)  # warm
    counter = FlopCounterMode(display=False, custom_mapping=FUSED_ATTENTION_FLOPS)
    with counter, torch.inference_mode():
        extractor(images[:1], grid)
    flops = counter.get_total_flops()
    batched = best_of(lambda: extractor(images, grid), 2) / BATCH

    def one_at_a_time():
        for image in images:
            extractor(image[None], grid)

    single = best_of(one_at_a_time, 2) / BATCH
    size = f"{grid[1] * extractor.spec.patch}x{grid[0] * extractor.spec.patch}"
    print(f"features.{name}.input_px: {size}")
    print(f"features.{name}.gflop_per_image: {flops / 1e9:.1f}")
    print(f"features.{name}.images_per_s: {1 / batched:.3f}")
    print(f"features.{name}.ratio_to_matmul_floor: {flops / batched / floor:.2f}")
    print(f"features.{name}.batched_speedup_vs_one_image_loop: {single / batched:.2f}")


def bench_feature_codecs(images: np.ndarray, channels: int = 64) -> None:
    """The store's codec candidates on PCA-reduced float16 features of images (B, H, W, 3)
    at their own width, as the features stage writes them (random weights: pretrained
    features are smoother in space and likely compress better)."""
    for model in ("dinov2-vits14", "clip-vitb16"):
        extractor = load_extractor(FeatureConfig(model=model, random_init=True))
        features = extractor(images, extractor.grid(*images.shape[1:3], images.shape[2]))
        sums = CovarianceSum(features.shape[1])
        sums.add(features.transpose(0, 2, 3, 1).reshape(-1, features.shape[1]))
        reduced = project(fit_pca(sums, channels), features).astype(np.float16)
        bench_codecs(f"{model}_pca{channels}_features", reduced)


def bench_position_denoising(images: np.ndarray, model: str = "dinov2-vits14") -> None:
    """Share of feature variance explained by position alone on images (B, H, W, 3) the
    pattern was not estimated on, before and after denoising (random weights: the
    architecture's own pattern, not pretrained DINOv2's)."""
    extractor = load_extractor(FeatureConfig(model=model, random_init=True))
    features = extractor(images, extractor.grid(*images.shape[1:3], None))
    held = np.arange(len(features)) % 3 == 2  # every third image, across the cameras
    fit, held = features[~held], features[held]
    pattern = position_pattern(fit)
    print(f"features.{model}.position_share_heldout_raw: {position_share(held):.3f}")
    print(f"features.{model}.position_share_heldout_denoised: "
          f"{position_share(denoise(held, pattern)):.3f}")


def bench_features(models: list[str] | None = None) -> None:
    floor = matmul_flops_per_s()
    print(f"features.torch_threads: {torch.get_num_threads()}")
    print(f"features.matmul_gflop_per_s: {floor / 1e9:.1f}")
    for name in models or list(MODELS):
        bench_model(name, floor)


if __name__ == "__main__":
    bench_features(sys.argv[1:] or None)
