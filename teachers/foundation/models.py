"""The foundation models features come from, built with their own libraries' code: DINOv2
through timm, CLIP through open_clip. Nothing here loads weights (see `weights.py`) and
nothing reaches the network: every model is built with random weights first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from distillprep.teachers.errors import TeacherConfigError

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# open_clip.constants.OPENAI_DATASET_MEAN / _STD: the statistics CLIP was trained with
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ModelSpec:
    """One supported feature model."""

    name: str
    """Our name for it, e.g. dinov2-vitb14 (what `--model` takes)."""
    family: Literal["dino", "clip"]
    """Which store arrays its features fill (`dino_features` or `clip_features`)."""
    library: Literal["timm", "open_clip"]
    """Whose model code builds it."""
    architecture: str
    """The library's model name."""
    patch: int
    """Patch size in pixels: one feature per patch."""
    width: int
    """Feature channels D before PCA."""
    mean: tuple[float, float, float]
    """Per-channel mean the model's inputs are normalised with (RGB in [0, 1])."""
    std: tuple[float, float, float]
    """Per-channel standard deviation likewise."""
    default_width: int
    """Input width in pixels the image is resized to by default (a patch multiple)."""


MODELS: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("dinov2-vits14", "dino", "timm", "vit_small_patch14_dinov2", 14, 384,
              IMAGENET_MEAN, IMAGENET_STD, 644),
    ModelSpec("dinov2-vitb14", "dino", "timm", "vit_base_patch14_dinov2", 14, 768,
              IMAGENET_MEAN, IMAGENET_STD, 644),
    # OpenAI's CLIP checkpoints use QuickGELU: the -quickgelu configs match them exactly
    ModelSpec("clip-vitb16", "clip", "open_clip", "ViT-B-16-quickgelu", 16, 512,
              OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, 640),
    ModelSpec("clip-vitl14-336", "clip", "open_clip", "ViT-L-14-336-quickgelu", 14, 768,
              OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, 644),
)}


def model_spec(name: str) -> ModelSpec:
    """The spec of a model by our name; a clear error listing the names otherwise."""
    if name not in MODELS:
        raise TeacherConfigError(f"unknown feature model {name!r}: choose one of "
                                 f"{', '.join(MODELS)}")
    return MODELS[name]


def build_model(spec: ModelSpec, seed: int = 0) -> torch.nn.Module:
    """The model with random weights (seeded), in eval mode: a timm VisionTransformer for
    DINOv2 (any input size a multiple of the patch), an open_clip CLIP model otherwise."""
    import torch  # here, not at the top: the CLI's parser reads MODELS without torch

    torch.manual_seed(seed)
    if spec.library == "timm":
        import timm

        model = timm.create_model(spec.architecture, pretrained=False, dynamic_img_size=True)
    else:
        import logging

        import open_clip

        # open_clip logs "no pretrained weights loaded" on the root logger: weights come
        # from `weights.load_weights` (or the run records --random-init), so quiet it
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            model = open_clip.create_model(spec.architecture, pretrained=None)
        finally:
            root.setLevel(level)
    return model.eval()


def grid_size(spec: ModelSpec, height: int, width: int, input_width: int | None,
              ) -> tuple[int, int]:
    """(rows, columns) of the patch grid of an (height, width) image resized to
    `input_width` pixels wide (None: the model's default), keeping its aspect ratio to
    within half a patch: the model sees (rows * patch, columns * patch) pixels."""
    cols = max(1, round((input_width or spec.default_width) / spec.patch))
    return max(1, round(cols * height / width)), cols


def strided_grid(spec: ModelSpec, grid: tuple[int, int], stride: int | None,
                 ) -> tuple[int, int]:
    """The feature grid of a patch grid's input when patches are taken every `stride`
    pixels (None: the patch size, non-overlapping) instead."""
    stride = stride or spec.patch
    if not 1 <= stride <= spec.patch:
        raise TeacherConfigError(f"{spec.name}: stride {stride} must be 1..{spec.patch} "
                                 "(the patch)")
    return tuple((g - 1) * spec.patch // stride + 1 for g in grid)
