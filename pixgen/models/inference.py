"""Rewrites of a frozen model that keep its outputs (to float rounding) and make it faster to run.

Each rewrite keeps the module's weights (the same ``Parameter`` objects, so the same state-dict
keys) and changes only how they are applied:

- conv + BatchNorm pairs fold into one conv;
- ``nn.MultiheadAttention`` used as batch-first self-attention becomes one contiguous q/k/v
  projection and ``scaled_dot_product_attention``: open_clip's MHA projects a transposed input,
  which under autocast copies an expanded weight (~177 MB a layer for ViT-B/32) both ways;
- on the CPU, large ``nn.Linear`` layers run as 1x1 convolutions over a channels-last view of
  their input (no copy): oneDNN's convolution does about twice the GFLOP/s of the default matmul
  on AMD CPUs, where MKL takes only its AVX2 path. On other devices they stay matmuls.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

MIN_CONV_LINEAR = 256  # a Linear runs as a conv when both its sides are at least this wide


def fuse_conv_batchnorm(model: nn.Module) -> int:
    """Fold each eval-mode BatchNorm2d that directly follows a Conv2d in a Sequential into the conv.

    The folded BatchNorm becomes an ``nn.Identity``. Returns the number of pairs folded.
    """
    folded = 0
    for block in model.modules():
        if not isinstance(block, nn.Sequential):
            continue
        names = list(block._modules)
        for conv_name, norm_name in pairwise(names):
            conv, norm = block._modules[conv_name], block._modules[norm_name]
            if (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
                    and not conv.training and not norm.training and norm.track_running_stats):
                block._modules[conv_name] = fuse_conv_bn_eval(conv, norm)
                block._modules[norm_name] = nn.Identity()
                folded += 1
    return folded


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear``; on the CPU computed as a 1x1 conv over a channels-last view of ``x``."""
    if x.device.type != "cpu":
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])  # a view when x is contiguous
    image = rows.view(1, rows.shape[0], 1, rows.shape[1]).permute(0, 3, 1, 2)  # (1, C, N, 1), NHWC memory
    out = F.conv2d(image, weight.view(*weight.shape, 1, 1), bias)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], weight.shape[0])


class ConvLinear(nn.Module):
    """An ``nn.Linear`` (same weight and bias) applied through :func:`linear`."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.weight, self.bias = layer.weight, layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class FusedSelfAttention(nn.Module):
    """Batch-first self-attention with MHA's weights: one q/k/v projection, then fused SDPA.

    Called like the ``nn.MultiheadAttention`` it replaces, with query, key and value the same
    tensor (B, L, D); returns ``(output, None)``.
    """

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        self.num_heads, self.embed_dim = attention.num_heads, attention.embed_dim
        self.in_proj_weight, self.in_proj_bias = attention.in_proj_weight, attention.in_proj_bias
        self.out_proj = attention.out_proj

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                need_weights: bool = False, attn_mask: torch.Tensor | None = None):
        if (key is not None and key is not query) or (value is not None and value is not query) or need_weights:
            raise ValueError("FusedSelfAttention computes self-attention only, without weights")
        batch, length, width = query.shape
        heads = self.num_heads
        qkv = linear(query, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3D)
        q, k, v = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:  # MHA: True masks out; SDPA: True attends
                attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(attn_mask, float("-inf"))
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, L, hd)
        out = out.transpose(1, 2).reshape(batch, length, width)
        return linear(out, self.out_proj.weight, self.out_proj.bias), None


def fuse_self_attention(model: nn.Module) -> int:
    """Replace every batch-first, self-attention-only ``nn.MultiheadAttention``; returns how many."""
    replaced = 0
    for parent in list(model.modules()):
        if hasattr(parent, "ln_1_kv"):  # an open_clip cross-attention block: keys differ from queries
            continue
        for name, child in list(parent.named_children()):
            if (isinstance(child, nn.MultiheadAttention) and child.batch_first and child._qkv_same_embed_dim
                    and child.in_proj_bias is not None and child.bias_k is None and not child.add_zero_attn
                    and child.dropout == 0):
                setattr(parent, name, FusedSelfAttention(child))
                replaced += 1
    return replaced


def linears_as_convs(model: nn.Module, min_width: int = MIN_CONV_LINEAR) -> int:
    """Replace each ``nn.Linear`` whose sides are both >= ``min_width`` by a :class:`ConvLinear`."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and min(child.in_features, child.out_features) >= min_width:
                setattr(parent, name, ConvLinear(child))
                replaced += 1
    return replaced


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """Apply every rewrite above and store weights channels-last; ``model`` must be in eval mode.

    Channels-last made a default run's optimisation step about 15 % faster on 2 CPU cores (the
    shapes-clip CNN tower); ViT-B/32 (no BatchNorm, one conv) took the same time either way.
    """
    fuse_conv_batchnorm(model)
    fuse_self_attention(model)
    linears_as_convs(model)
    return model.to(memory_format=torch.channels_last)


def prepare_for_device(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Store conv weights channels-last on CUDA (cuDNN's fast layout); elsewhere leave ``model`` as is."""
    if torch.device(device).type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model
