"""Per-cutout augmentations of the VQGAN-CLIP ``generate.py`` reference loop, in torch only.

The kornia augmentations that loop applies to its views (affine with shear, perspective, colour
jitter, random erasing), re-stated as small functions over a batch of cuts (N, C, H, W). Each
changes every cut with probability ``p``, drawing all its randomness from the given CPU generator
(per cut: first whether to apply, then its parameters, for every cut alike) and is differentiable
with respect to the cuts. With ``p`` or every amount 0 a function draws nothing and returns
``cuts`` itself, so an augmentation that is off leaves the random stream and the outputs as before.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ERASE_AREA = (0.1, 0.4)  # erased box, as a fraction of the cut's area
ERASE_ASPECT = (0.3, 1 / 0.3)  # erased box height / width, drawn log-uniformly
YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def to_like(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``tensor.to(like)``; to CUDA through pinned memory without blocking (no host sync per step)."""
    if like.is_cuda:
        return tensor.pin_memory().to(like.device, like.dtype, non_blocking=True)
    return tensor.to(like)


def choose(apply: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per cut, ``new`` where the CPU bool vector ``apply`` holds, else ``old``."""
    return torch.where(to_like(apply.float(), old).view(-1, 1, 1, 1) > 0, new, old)


def random_affine(cuts: torch.Tensor, generator: torch.Generator | None, *, p: float,
                  degrees: float = 0.0, translate: float = 0.0, shear: float = 0.0) -> torch.Tensor:
    """kornia RandomAffine: rotate up to ``degrees``, shift up to ``translate`` of the side, shear x
    and y each up to ``shear`` degrees; bilinear, zero padding."""
    if p == 0 or degrees == translate == shear == 0:
        return cuts
    n = cuts.shape[0]
    apply = torch.rand(n, generator=generator) < p
    r = torch.rand(n, 5, generator=generator)
    angle = (r[:, 0] * 2 - 1) * math.radians(degrees)
    tx, ty = (r[:, 1] * 2 - 1) * translate * 2, (r[:, 2] * 2 - 1) * translate * 2  # normalised side is 2
    sx, sy = (r[:, 3] * 2 - 1) * math.radians(shear), (r[:, 4] * 2 - 1) * math.radians(shear)
    cos, sin, one = angle.cos(), angle.sin(), torch.ones(n)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    skew = torch.stack([torch.stack([one, sx.tan()], -1), torch.stack([sy.tan(), one], -1)], -2)
    theta = to_like(torch.cat([rot @ skew, torch.stack([tx, ty], -1).unsqueeze(-1)], -1), cuts)
    grid = F.affine_grid(theta, list(cuts.shape), align_corners=False)
    moved = F.grid_sample(cuts, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return choose(apply, moved, cuts)


def corner_homographies(moved: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) homographies taking the corners of [-1, 1]² to ``moved`` (N, 4, 2): the 8x8 DLT solve."""
    n = moved.shape[0]
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]).expand(n, 4, 2)
    one, zero, rows = torch.ones(n), torch.zeros(n), []
    for i in range(4):
        x0, y0, u, v = corners[:, i, 0], corners[:, i, 1], moved[:, i, 0], moved[:, i, 1]
        rows.append(torch.stack([x0, y0, one, zero, zero, zero, -u * x0, -u * y0], -1))
        rows.append(torch.stack([zero, zero, zero, x0, y0, one, -v * x0, -v * y0], -1))
    solution = torch.linalg.solve(torch.stack(rows, 1), moved.reshape(n, 8))
    return torch.cat([solution, torch.ones(n, 1)], -1).view(n, 3, 3)


def random_perspective(cuts: torch.Tensor, generator: torch.Generator | None, *, p: float,
                       distortion: float) -> torch.Tensor:
    """kornia RandomPerspective(distortion): each corner moves inward by up to distortion/2 of the side."""
    if p == 0 or distortion == 0:
        return cuts
    n, _, h, w = cuts.shape
    apply = torch.rand(n, generator=generator) < p
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    moved = corners - corners.sign() * torch.rand(n, 4, 2, generator=generator) * distortion
    hom = to_like(corner_homographies(moved), cuts)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=cuts.device, dtype=cuts.dtype)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=cuts.device, dtype=cuts.dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([xx, yy, torch.ones_like(xx)], -1).view(1, -1, 3)
    mapped = points @ hom.transpose(1, 2)  # (N, H*W, 3)
    grid = (mapped[..., :2] / mapped[..., 2:]).view(n, h, w, 2)
    warped = F.grid_sample(cuts, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return choose(apply, warped, cuts)


def colour_jitter(cuts: torch.Tensor, generator: torch.Generator | None, *, p: float,
                  saturation: float = 0.0, hue: float = 0.0) -> torch.Tensor:
    """kornia ColorJitter(saturation, hue): blend with grey by 1 +- saturation, then rotate hue (in YIQ)
    by up to hue turns; RGB cuts in [0, 1]."""
    if p == 0 or saturation == hue == 0:
        return cuts
    n = cuts.shape[0]
    apply = torch.rand(n, generator=generator) < p
    r = torch.rand(n, 2, generator=generator)
    sat = to_like((1 + (r[:, 0] * 2 - 1) * saturation).view(n, 1, 1, 1), cuts)
    grey = 0.299 * cuts[:, 0:1] + 0.587 * cuts[:, 1:2] + 0.114 * cuts[:, 2:3]
    out = (grey + sat * (cuts - grey)).clamp(0, 1)
    angle = (r[:, 1] * 2 - 1) * hue * 2 * math.pi
    cos, sin = angle.cos(), angle.sin()
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rot = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cos, -sin], -1),
                       torch.stack([zero, sin, cos], -1)], -2)
    matrix = to_like(torch.linalg.inv(YIQ) @ rot @ YIQ, cuts)  # (N, 3, 3), built on the CPU: no sync
    out = torch.einsum("nij,njhw->nihw", matrix, out).clamp(0, 1)
    return choose(apply, out, cuts)


def erase_box(uniforms: torch.Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, box height, box width) of an erased box drawn from four uniforms in [0, 1)."""
    (low, high), (lo_aspect, hi_aspect) = ERASE_AREA, ERASE_ASPECT
    area = (low + uniforms[0] * (high - low)) * height * width
    ratio = math.exp(math.log(lo_aspect) + float(uniforms[1]) * (math.log(hi_aspect) - math.log(lo_aspect)))
    box_h, box_w = min(height, round(math.sqrt(area * ratio))), min(width, round(math.sqrt(area / ratio)))
    return int(uniforms[2] * (height - box_h + 1)), int(uniforms[3] * (width - box_w + 1)), box_h, box_w


def erase_mask(uniforms: torch.Tensor, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(M, 1, H, W) masks on ``like``'s device and dtype: 0 in each row of ``uniforms``' box, 1 elsewhere."""
    ys = torch.arange(height, dtype=torch.float32, device=like.device).view(1, height, 1)
    xs = torch.arange(width, dtype=torch.float32, device=like.device).view(1, 1, width)
    boxes = torch.tensor([[top, top + box_h, left, left + box_w] for top, left, box_h, box_w in
                          (erase_box(row, height, width) for row in uniforms)], dtype=torch.float32)
    boxes = to_like(boxes, ys).view(-1, 4, 1, 1)  # (M, top/bottom/left/right, 1, 1)
    inside = (ys >= boxes[:, 0]) & (ys < boxes[:, 1]) & (xs >= boxes[:, 2]) & (xs < boxes[:, 3])
    return (~inside).unsqueeze(1).to(like.dtype)


def random_erasing(cuts: torch.Tensor, generator: torch.Generator | None, *, p: float) -> torch.Tensor:
    """kornia RandomErasing(ERASE_AREA, ERASE_ASPECT, value=0), a box of its own per cut."""
    if p == 0:
        return cuts
    n, _, h, w = cuts.shape
    apply = torch.rand(n, generator=generator) < p
    mask = erase_mask(torch.rand(n, 4, generator=generator), h, w, cuts)
    return choose(apply, cuts * mask, cuts)
