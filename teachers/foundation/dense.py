"""Dense (per-patch) features of a batch of images, and CLIP's text side.

- DINOv2: the last block's patch tokens after the final norm (`forward_features`), as
  EmerNeRF and DistillNeRF take them.
- CLIP, MaskCLIP's way (Zhou et al., ECCV 2022): the last attention block's value
  embedding of every patch token, through the attention output projection, `ln_post`
  and `proj`, skipping the block's query-key mixing, residual and MLP. What comes out
  lies in CLIP's joint image-text space: a text embedding compares with each feature
  pixel directly. The relation to the global embedding is exact: pooling those value
  embeddings with the class token's own attention (per head) and finishing the block
  (residual, MLP) gives `encode_image` (`clip_global_from_values`, tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .models import ModelSpec


def prepare(spec: ModelSpec, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """images (B, H, W, 3) uint8 -> (B, 3, rows * patch, cols * patch) float normalised
    with the model's statistics, resized (bilinear, antialiased) to the patch grid."""
    return normalise(spec, images.permute(0, 3, 1, 2).float() / 255.0, grid)


def normalise(spec: ModelSpec, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """x (B, 3, H, W) float in [0, 1] -> `prepare`'s output."""
    size = (grid[0] * spec.patch, grid[1] * spec.patch)
    if x.shape[-2:] != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def dense_features(spec: ModelSpec, model: torch.nn.Module, x: torch.Tensor,
                   stride: int | None = None) -> torch.Tensor:
    """x (B, 3, rows * patch, cols * patch) from `prepare` -> (B, D, rows', cols'): one
    feature per patch, patches taken every `stride` pixels (None: the patch size; a
    smaller stride, as EmerNeRF runs DINOv2 with 7, gives a denser grid, the positional
    embedding resampled to it)."""
    stride = stride or spec.patch
    if spec.family == "dino":
        tokens = _dino_tokens(model, x, stride)[:, model.num_prefix_tokens:]
    else:
        tokens = clip_dense_tokens(model.visual, x, stride)[0][:, 1:]
    rows, cols = ((n - spec.patch) // stride + 1 for n in x.shape[-2:])
    return tokens.transpose(1, 2).reshape(len(x), -1, rows, cols)


def _patches(conv: torch.nn.Conv2d, x: torch.Tensor, stride: int) -> torch.Tensor:
    """The patch embedding (B, width, rows, cols) with patches every `stride` pixels."""
    return F.conv2d(x, conv.weight, conv.bias, stride=stride)


def _dino_tokens(model, x: torch.Tensor, stride: int) -> torch.Tensor:
    """timm's `forward_features` (built with dynamic_img_size), spelled out so that the
    patches can be taken with a stride (equal to it at stride = patch, tested)."""
    patches = model.patch_embed.norm(_patches(model.patch_embed.proj, x, stride)
                                     .permute(0, 2, 3, 1))  # NHWC, as _pos_embed reads it
    tokens = model.norm_pre(model.patch_drop(model._pos_embed(patches)))
    return model.norm(model.blocks(tokens))


def _clip_embed(visual, x: torch.Tensor, stride: int) -> torch.Tensor:
    """Tokens (B, 1 + rows * cols, width) entering the transformer, the positional
    embedding resampled (bicubic) to this grid when it differs from the trained one."""
    from timm.layers import resample_abs_pos_embed

    patches = _patches(visual.conv1, x, stride)  # (B, width, rows, cols)
    grid = patches.shape[-2:]
    tokens = patches.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(tokens.dtype).expand(len(x), 1, -1)
    pos = visual.positional_embedding.to(tokens.dtype)[None]
    if tuple(grid) != tuple(visual.grid_size):
        pos = resample_abs_pos_embed(pos, new_size=list(grid), old_size=list(visual.grid_size),
                                     num_prefix_tokens=1)
    return visual.ln_pre(torch.cat([cls, tokens], dim=1) + pos)


def clip_block(block, x: torch.Tensor) -> torch.Tensor:
    """open_clip's `ResidualAttentionBlock.forward` on tokens x (B, L, width), no mask,
    with the attention through `F.scaled_dot_product_attention` (a tiled kernel on CPU;
    nn.MultiheadAttention's inference path materialises the (L, L) weights per head,
    ~15 % slower at ViT-B/16's 881 tokens). Equal to `block(x)` (tested)."""
    attn = block.attn
    batch, length, width = x.shape
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(batch, length, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    mixed = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, width)
    x = x + block.ls_1(attn.out_proj(mixed))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _value_path(block, x: torch.Tensor) -> torch.Tensor:
    """The last block's value embeddings (B, L, width) of its input tokens x (B, L, width)."""
    width = x.shape[-1]
    attn = block.attn
    return F.linear(block.ln_1(x), attn.in_proj_weight[2 * width:],
                    attn.in_proj_bias[2 * width:])


def clip_dense_tokens(visual, x: torch.Tensor, stride: int | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MaskCLIP dense tokens (B, L, E) in the joint space (token 0: the class token's),
    and what `clip_global_from_values` needs: the last block's input (B, L, width) and
    value embeddings (B, L, width)."""
    tokens = _clip_embed(visual, x, stride or visual.conv1.stride[0])
    blocks = visual.transformer.resblocks
    for block in blocks[:-1]:
        tokens = clip_block(block, tokens)
    last = blocks[-1]
    values = _value_path(last, tokens)
    dense = visual.ln_post(last.ls_1(last.attn.out_proj(values))) @ visual.proj
    return dense, tokens, values


def clip_global_from_values(visual, tokens: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The global image embedding (B, E) rebuilt from the last block's input tokens
    (B, L, width) and the value embeddings the dense features are made of: pool the values
    with the class token's attention, per head, then finish the block (residual, MLP),
    `ln_post` and `proj`. Equals `encode_image` at the model's trained input size."""
    last = visual.transformer.resblocks[-1]
    attn = last.attn
    batch, length, width = tokens.shape
    heads = attn.num_heads
    y = last.ln_1(tokens)
    q = F.linear(y[:, :1], attn.in_proj_weight[:width], attn.in_proj_bias[:width])
    k = F.linear(y, attn.in_proj_weight[width:2 * width], attn.in_proj_bias[width:2 * width])
    q = q.view(batch, 1, heads, -1).transpose(1, 2)  # (B, heads, 1, width / heads)
    k = k.view(batch, length, heads, -1).transpose(1, 2)
    v = values.view(batch, length, heads, -1).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    pooled = (weights @ v).transpose(1, 2).reshape(batch, width)  # class token's output
    cls = tokens[:, 0] + last.ls_1(attn.out_proj(pooled))
    cls = cls + last.ls_2(last.mlp(last.ln_2(cls)))
    return visual.ln_post(cls) @ visual.proj


def encode_text(model: torch.nn.Module, architecture: str, texts: list[str]) -> torch.Tensor:
    """CLIP text embeddings (T, E), unnormalised, in the space of the dense features."""
    import open_clip

    tokens = open_clip.get_tokenizer(architecture)(texts)
    return model.encode_text(tokens)
