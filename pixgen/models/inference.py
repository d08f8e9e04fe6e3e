"""Rewrites of a frozen model that keep its outputs (to float rounding) and make it faster to run.

Each rewrite keeps the module's weights (the same ``Parameter`` objects, so the same state-dict
keys) and changes only how they are applied:

- conv + BatchNorm pairs fold into one conv;
- ``nn.MultiheadAttention`` used as batch-first self-attention becomes one contiguous q/k/v
  projection and ``scaled_dot_product_attention``: open_clip's MHA projects a transposed input,
  which under autocast copies an expanded weight (~177 MB a layer for ViT-B/32) both ways;
- on the CPU, large ``nn.Linear`` layers run as 1x1 convolutions over a channels-last view of
  their input (no copy): oneDNN's convolution does about twice the GFLOP/s of the default matmul
  on AMD CPUs, where MKL takes only its AVX2 path. On other devices they stay matmuls;
- a ViT's patch-embedding conv (kernel == stride) becomes a reshape + that linear: its backward
  is a matmul instead of a slow strided-conv backward;
- taming's swish ``x * sigmoid(x)`` becomes ``F.silu`` (one kernel, one saved tensor).
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from taming.modules.diffusionmodules.model import Decoder, ResnetBlock
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils.fusion import fuse_conv_bn_eval

MIN_CONV_LINEAR = 256  # a Linear runs as a conv when both its sides are at least this wide
# Up to this many tokens, CPU attention runs as plain matmuls + softmax (SDPA's math backend):
# for ViT-B/32's 50 tokens its backward is about twice as fast as the fused CPU flash kernel.
MATH_ATTENTION_MAX_TOKENS = 256


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
        if query.device.type == "cpu" and length <= MATH_ATTENTION_MAX_TOKENS:
            with sdpa_kernel(SDPBackend.MATH):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, L, hd)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
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


class PatchLinear(nn.Module):
    """A patch-embedding conv (kernel == stride, no padding) as a reshape + :func:`linear`, same weights.

    The same sums as the conv; its input gradient is a matmul too, where the strided conv's
    backward took 300 ms for ViT-B/32 on 32 cutouts (fp32, 2 CPU cores) against 18 ms this way.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.patch = conv.kernel_size[0]
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        p = self.patch
        rows, cols = height // p, width // p
        x = x[:, :, :rows * p, :cols * p]  # the conv ignores a remainder too
        patches = x.reshape(batch, channels, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)
        out = linear(patches.reshape(batch, rows * cols, channels * p * p),
                     self.weight.reshape(self.weight.shape[0], -1), self.bias)
        return out.view(batch, rows, cols, -1).permute(0, 3, 1, 2)  # (B, D, rows, cols)


def patch_convs_as_linears(model: nn.Module, min_patch: int = 8) -> int:
    """Replace each square patchifying ``nn.Conv2d`` (kernel == stride >= ``min_patch``) by :class:`PatchLinear`."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (type(child) is nn.Conv2d and child.kernel_size[0] == child.kernel_size[1] >= min_patch
                    and child.stride == child.kernel_size and child.padding == (0, 0)
                    and child.dilation == (1, 1) and child.groups == 1 and child.padding_mode == "zeros"):
                setattr(parent, name, PatchLinear(child))
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
    patch_convs_as_linears(model)
    return model.to(memory_format=torch.channels_last)


def decoder_layout(device: torch.device | str, precision: str) -> torch.memory_format:
    """The memory format a VQGAN decoder runs fastest in: channels-last on CUDA and for fp32 on the
    CPU (its 3x3 convs ~15 % faster); channels-first for bf16/fp16 on the CPU, where the
    channels-last GroupNorm backward is slower than the convs gain."""
    if torch.device(device).type == "cuda" or precision == "fp32":
        return torch.channels_last
    return torch.contiguous_format


def prepare_for_device(model: nn.Module, device: torch.device | str, precision: str = "fp32") -> nn.Module:
    """Store ``model``'s conv weights in :func:`decoder_layout` (a no-op when they already are)."""
    layout = decoder_layout(device, precision)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight[0, 0].numel() > 1), None)
    if conv is not None and not conv.weight.is_contiguous(memory_format=layout):
        model.to(memory_format=layout)
    return model


class SiluResnetBlock(ResnetBlock):
    """taming's ResnetBlock with its swish ``x * sigmoid(x)`` as one fused ``F.silu``."""

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if temb is not None:
            h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class SiluDecoder(Decoder):
    """taming's Decoder with a fused ``F.silu`` before its output conv."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.last_z_shape = z.shape
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z), None)), None)
        for i_level in reversed(range(self.num_resolutions)):
            for i_block in range(self.num_res_blocks + 1):
                h = self.up[i_level].block[i_block](h, None)
                if len(self.up[i_level].attn) > 0:
                    h = self.up[i_level].attn[i_block](h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        if self.give_pre_end:
            return h
        return self.conv_out(F.silu(self.norm_out(h)))


def fused_swish(model: nn.Module) -> int:
    """Make taming's ResnetBlocks and Decoders compute swish as ``F.silu``: the same function in one
    kernel each way, saving one tensor instead of two (about 2x faster, less memory). Swaps the
    class of each instance (weights and state-dict keys unchanged); returns how many."""
    swapped = 0
    for module in model.modules():
        for stock, fast in ((ResnetBlock, SiluResnetBlock), (Decoder, SiluDecoder)):
            if type(module) is stock:
                module.__class__ = fast
                swapped += 1
    return swapped
