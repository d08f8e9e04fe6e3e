"""Small pure tensor functions the optimisation loop is made of."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def vector_quantize(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Snap each latent vector (B, C, h, w) to its nearest code; straight-through gradient."""
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    distances = (flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)
                 - 2 * flat @ codebook.T)
    quantized = codebook[distances.argmin(1)].view(z.shape[0], z.shape[2], z.shape[3], -1)
    quantized = quantized.permute(0, 3, 1, 2)
    return z + (quantized - z).detach()


class _ClampWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, low, high):
        ctx.save_for_backward(x)
        ctx.low, ctx.high = low, high
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        # Pass gradients inside the range, and outside it only those that push back in.
        keep = grad * (x - x.clamp(ctx.low, ctx.high)) >= 0
        return grad * keep, None, None


def clamp_with_grad(x: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Clamp to [low, high]; backward passes only gradients that keep or bring x in range."""
    return _ClampWithGrad.apply(x, low, high)


def spherical_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance (times 2) between unit vectors: 2 * asin(|u - v| / 2) ** 2."""
    return (u - v).norm(dim=-1).div(2).clamp(max=1).arcsin().pow(2).mul(2)


def prompt_loss(image_embeds: torch.Tensor, target: torch.Tensor,
                weight: float, stop: float | None = None) -> torch.Tensor:
    """Mean weighted spherical distance of (N, D) embeddings to one target.

    With a ``stop``, a cutout gives no gradient once its prompt is satisfied: for a positive weight
    when it is closer than ``stop`` to the target, for a negative weight when it is at least
    ``stop`` away from it.
    """
    distance = spherical_distance(image_embeds, target.unsqueeze(0))
    if stop is not None:
        satisfied = distance < stop if weight >= 0 else distance >= stop
        distance = torch.where(satisfied, distance.detach(), distance)
    return abs(weight) * (distance * (1.0 if weight >= 0 else -1.0)).mean()


def clamp_to_codebook(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Clamp latents per channel to the codebook's min/max, in place; returns z."""
    low = codebook.min(0).values.view(1, -1, 1, 1)
    high = codebook.max(0).values.view(1, -1, 1, 1)
    with torch.no_grad():
        return z.copy_(torch.maximum(torch.minimum(z, high), low))


def to_unit_range(decoded: torch.Tensor) -> torch.Tensor:
    """Decoder output in [-1, 1] -> image in [0, 1], clamped with gradient."""
    return clamp_with_grad(decoded.add(1).div(2), 0.0, 1.0)


def latent_mse(z: torch.Tensor, z_init: torch.Tensor, weight: float) -> torch.Tensor:
    """``weight * MSE(z, z_init)``: keeps the image near its initial state."""
    return weight * F.mse_loss(z, z_init)
