"""The reference loop pixgen's speed is measured against: the VQGAN-CLIP ``generate.py`` family.

A faithful re-statement, in torch only, of the loop most VQGAN+CLIP users run (nerdyrodent's
``generate.py`` with its default cut method, after Katherine Crowson's notebook), on the same
model objects pixgen uses but with the CLIP left stock (open_clip as loaded, no rewrites):

- 32 views of the *whole* image, each ``(adaptive_avg_pool + adaptive_max_pool) / 2`` to 224;
- kornia-style augmentations on the batch (``pixgen.engine.augment``, where pixgen's own ``augment_*``
  settings come from), each with p = 0.7 per view: affine (+-15 deg rotation,
  10 % translation, +-5 deg shear, zero padding), perspective (distortion 0.7), colour jitter
  (saturation 0.1, hue 0.1), random erasing (10-40 % of the area, aspect 0.3-3.3, the same box
  for the whole batch); then Gaussian noise with a per-view std drawn from U(0, 0.1);
- nearest-code quantisation with a straight-through gradient, decode, clamp with gradient;
- spherical-distance loss to each prompt embedding; Adam (lr 0.1); clamp z to the codebook range.

Everything runs in fp32, as that loop does on a CPU.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from pixgen.engine.augment import colour_jitter, erase_mask, random_affine, random_perspective
from pixgen.engine.ops import clamp_with_grad, spherical_distance, vector_quantize

P = 0.7  # probability of each augmentation per view (kornia's p in generate.py)


def random_erasing(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """kornia RandomErasing((.1, .4), (.3, 1/.3), same_on_batch=True): one box set to 0 on every view."""
    _, _, h, w = x.shape
    return x * erase_mask(torch.rand(1, 4, generator=gen), h, w, x)


class ReferenceCutouts(nn.Module):
    """generate.py's default MakeCutouts: pooled whole-image views, then the augmentations."""

    def __init__(self, cut_size: int = 224, cutn: int = 32, noise: float = 0.1):
        super().__init__()
        self.cut_size, self.cutn, self.noise = cut_size, cutn, noise

    def forward(self, image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        size = (self.cut_size, self.cut_size)
        pooled = (F.adaptive_avg_pool2d(image, size) + F.adaptive_max_pool2d(image, size)) / 2
        batch = torch.cat([pooled] * self.cutn)  # the loop pools the same image cutn times
        batch = random_affine(batch, gen, p=P, degrees=15, translate=0.1, shear=5)
        batch = random_perspective(batch, gen, p=P, distortion=0.7)
        batch = colour_jitter(batch, gen, p=P, saturation=0.1, hue=0.1)
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
