"""The reference loop pixgen's speed is measured against: the VQGAN-CLIP ``generate.py`` family.

A faithful re-statement, in torch only, of the loop most VQGAN+CLIP users run (nerdyrodent's
``generate.py`` with its default cut method, after Katherine Crowson's notebook), on the same
model objects pixgen uses but with the CLIP left stock (open_clip as loaded, no rewrites):

- 32 views of the *whole* image, each ``(adaptive_avg_pool + adaptive_max_pool) / 2`` to 224;
- kornia-style augmentations on the batch, each with p = 0.7 per view: affine (+-15 deg rotation,
  10 % translation, +-5 deg shear, zero padding), perspective (distortion 0.7), colour jitter
  (saturation 0.1, hue 0.1), random erasing (10-40 % of the area, aspect 0.3-3.3, the same box
  for the whole batch); then Gaussian noise with a per-view std drawn from U(0, 0.1);
- nearest-code quantisation with a straight-through gradient, decode, clamp with gradient;
- spherical-distance loss to each prompt embedding; Adam (lr 0.1); clamp z to the codebook range.

Everything runs in fp32, as that loop does on a CPU.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from pixgen.ops import clamp_with_grad, spherical_distance, vector_quantize

P = 0.7  # probability of each augmentation per view (kornia's p in generate.py)


def _apply(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), new, old)


def random_affine(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """kornia RandomAffine(degrees=15, translate=0.1, shear=5, padding_mode='zeros'), bilinear."""
    n = x.shape[0]
    r = torch.rand(n, 5, generator=gen)
    angle = (r[:, 0] * 2 - 1) * math.radians(15)
    tx, ty = (r[:, 1] * 2 - 1) * 0.1 * 2, (r[:, 2] * 2 - 1) * 0.1 * 2  # normalised coords span 2
    sx, sy = (r[:, 3] * 2 - 1) * math.radians(5), (r[:, 4] * 2 - 1) * math.radians(5)
    cos, sin = angle.cos(), angle.sin()
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shear = torch.stack([torch.stack([torch.ones(n), sx.tan()], -1), torch.stack([sy.tan(), torch.ones(n)], -1)], -2)
    theta = torch.cat([rot @ shear, torch.stack([tx, ty], -1).unsqueeze(-1)], -1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_perspective(x: torch.Tensor, gen: torch.Generator, distortion: float = 0.7) -> torch.Tensor:
    """kornia RandomPerspective(distortion_scale): each corner moves inward by up to distortion/2."""
    n, _, h, w = x.shape
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    inward = -corners.sign()
    moved = corners + inward * torch.rand(n, 4, 2, generator=gen) * distortion  # half-span 1 -> distortion/2 of side
    # Homography mapping output corners (the full square) to the moved corners: solve the 8x8 DLT system.
    src, dst = corners.expand(n, 4, 2), moved
    rows = []
    for i in range(4):
        x0, y0 = src[:, i, 0], src[:, i, 1]
        u, v = dst[:, i, 0], dst[:, i, 1]
        one, zero = torch.ones(n), torch.zeros(n)
        rows.append(torch.stack([x0, y0, one, zero, zero, zero, -u * x0, -u * y0], -1))
        rows.append(torch.stack([zero, zero, zero, x0, y0, one, -v * x0, -v * y0], -1))
    a = torch.stack(rows, 1)
    b = dst.reshape(n, 8)
    hom = torch.cat([torch.linalg.solve(a, b), torch.ones(n, 1)], -1).view(n, 3, 3).to(x)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=x.device)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=x.device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([xx, yy, torch.ones_like(xx)], -1).view(1, -1, 3)
    mapped = points @ hom.transpose(1, 2)
    grid = (mapped[..., :2] / mapped[..., 2:]).view(n, h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def colour_jitter(x: torch.Tensor, gen: torch.Generator, saturation: float = 0.1, hue: float = 0.1) -> torch.Tensor:
    """kornia ColorJitter(saturation=0.1, hue=0.1): blend with grey, then rotate hue (in YIQ)."""
    n = x.shape[0]
    r = torch.rand(n, 2, generator=gen).to(x)
    sat = (1 + (r[:, 0] * 2 - 1) * saturation).view(n, 1, 1, 1)
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (grey + sat * (x - grey)).clamp(0, 1)
    angle = (r[:, 1] * 2 - 1) * hue * 2 * math.pi
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]]).to(x)
    cos, sin = angle.cos(), angle.sin()
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rot = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cos, -sin], -1),
                       torch.stack([zero, sin, cos], -1)], -2)
    matrix = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # (n, 3, 3)
    return torch.einsum("nij,njhw->nihw", matrix, x).clamp(0, 1)


def random_erasing(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """kornia RandomErasing((.1, .4), (.3, 1/.3), same_on_batch=True): one box set to 0."""
    _, _, h, w = x.shape
    r = torch.rand(4, generator=gen)
    area = (0.1 + r[0] * 0.3) * h * w
    ratio = math.exp(math.log(0.3) + float(r[1]) * (math.log(1 / 0.3) - math.log(0.3)))
    eh, ew = min(h, round(math.sqrt(area * ratio))), min(w, round(math.sqrt(area / ratio)))
    top, left = int(r[2] * (h - eh + 1)), int(r[3] * (w - ew + 1))
    mask = torch.ones(1, 1, h, w, device=x.device, dtype=x.dtype)
    mask[..., top:top + eh, left:left + ew] = 0
    return x * mask


class ReferenceCutouts(nn.Module):
    """generate.py's default MakeCutouts: pooled whole-image views, then the augmentations."""

    def __init__(self, cut_size: int = 224, cutn: int = 32, noise: float = 0.1):
        super().__init__()
        self.cut_size, self.cutn, self.noise = cut_size, cutn, noise

    def forward(self, image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        size = (self.cut_size, self.cut_size)
        pooled = (F.adaptive_avg_pool2d(image, size) + F.adaptive_max_pool2d(image, size)) / 2
        batch = torch.cat([pooled] * self.cutn)  # the loop pools the same image cutn times
        for augment in (random_affine, random_perspective, colour_jitter):
            apply = torch.rand(self.cutn, generator=gen) < P
            batch = _apply(apply.to(batch.device), augment(batch, gen), batch)
        if float(torch.rand(1, generator=gen)) < P:
            batch = random_erasing(batch, gen)
        facs = (torch.rand(self.cutn, 1, 1, 1, generator=gen) * self.noise).to(batch)
        return batch + facs * torch.randn(batch.shape, generator=gen).to(batch)


def stock_vqgan(vqgan, copy_first: bool = True):
    """``vqgan`` (a copy unless ``copy_first`` is False) with taming's own decoder classes back
    (pixgen swaps in a fused swish)."""
    from taming.modules.diffusionmodules.model import Decoder, ResnetBlock

    from pixgen.models.inference import SiluDecoder, SiluResnetBlock

    stock = copy.deepcopy(vqgan) if copy_first else vqgan
    for module in stock.modules():
        if type(module) is SiluResnetBlock:
            module.__class__ = ResnetBlock
        elif type(module) is SiluDecoder:
            module.__class__ = Decoder
    return stock


class ReferenceLoop:
    """One optimiser step per :meth:`step` of the generate.py loop on ``vqgan`` and ``clip_model``
    as they come (pass :func:`stock_vqgan` and an open_clip model pixgen has not rewritten)."""

    def __init__(self, vqgan, clip_model: nn.Module, mean, std, targets: list[torch.Tensor],
                 size: tuple[int, int] = (256, 256), cutn: int = 32, seed: int = 0, lr: float = 0.1):
        self.vqgan, self.clip = vqgan, clip_model
        self.gen = torch.Generator().manual_seed(seed)
        device = vqgan.codebook.device
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.targets = targets
        f = vqgan.config.downsample_factor
        codebook = vqgan.codebook
        tokens = torch.randint(codebook.shape[0], (size[1] // f * size[0] // f,), generator=self.gen)
        z = codebook[tokens.to(device)].view(1, size[1] // f, size[0] // f, -1).permute(0, 3, 1, 2)
        self.z = z.detach().clone().requires_grad_(True)
        self.z_min = codebook.min(0).values.view(1, -1, 1, 1)
        self.z_max = codebook.max(0).values.view(1, -1, 1, 1)
        self.optimizer = torch.optim.Adam([self.z], lr=lr)
        self.cutouts = ReferenceCutouts(clip_model.visual.image_size[0]
                                        if isinstance(clip_model.visual.image_size, (tuple, list))
                                        else clip_model.visual.image_size, cutn)

    def step(self) -> float:
        """One step; returns the loss."""
        self.optimizer.zero_grad(set_to_none=True)
        z_q = vector_quantize(self.z, self.vqgan.codebook)
        out = clamp_with_grad(self.vqgan.decode(z_q).add(1).div(2), 0, 1)
        cuts = (self.cutouts(out, self.gen) - self.mean) / self.std
        embeds = F.normalize(self.clip.encode_image(cuts).float(), dim=-1)
        loss = sum(spherical_distance(embeds, t.unsqueeze(0)).mean() for t in self.targets)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.z.copy_(self.z.maximum(self.z_min).minimum(self.z_max))
        return loss.item()
