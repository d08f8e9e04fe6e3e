"""Random cutouts with augmentation, all drawn as one batched affine resample.

Every cutout is an affine map (scale, offset, rotation, flip) from the CLIP input square to
the image, so one ``affine_grid`` + ``grid_sample`` call produces every cut: no loop per cut.
A cut that shrinks its region by 2x or more samples a box-filtered (mipmap) level of the image
instead, so fine detail averages out rather than aliasing into a false pattern; cuts at up to
2x shrink (every cut of the shapes world) sample the image itself, exactly as before.
Cuts may reach past the image edges (``overhang``), reflection filling the outside, so the
outermost pixels are seen more often (with 0.2 and cuts of 70-100 % of the side, the outermost
column is in about 39 % of the cuts instead of 20 %).
The reference loop's augmentations (``pixgen.engine.augment``: shear, perspective, colour jitter, erasing)
follow on the sampled cuts when their amounts are above 0, then the noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pixgen.engine.augment import colour_jitter, random_affine, random_erasing, random_perspective, to_like


@dataclass(frozen=True)
class CutoutSpec:
    """How to cut and augment: sizes follow ``rand ** cut_pow``; augmentations are per cut."""

    cut_count: int = 32  # cutouts per step
    cut_size: int = 224  # side of each cutout, the CLIP model's input size
    cut_pow: float = 1.0  # >1 favours small cuts (detail), <1 favours large cuts (composition)
    flip: bool = True  # random horizontal flips
    rotate: float = 0.0  # maximum rotation in degrees, either way
    noise: float = 0.0  # maximum std of per-cut Gaussian pixel noise
    min_scale: float = 1.0  # smallest cut, as a fraction of min(image side, cut_size)
    overhang: float = 0.0  # how far past an image edge a cut may reach, as a fraction of its side
    shear: float = 0.0  # maximum x and y shear in degrees, either way (zero padding)
    perspective: float = 0.0  # perspective distortion: corners move inward by up to distortion/2 of the side
    jitter: float = 0.0  # saturation and hue jitter (hue in turns), either way
    erase: float = 0.0  # per-cut probability of zeroing a box of 10-40 % of the cut
    p: float = 0.7  # per-cut probability of each of shear, perspective and jitter


def cutout_thetas(height: int, width: int, spec: CutoutSpec,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Affine matrices (N, 2, 3) mapping each cutout's [-1, 1]² to image coordinates."""
    n, side = spec.cut_count, min(height, width)
    min_size = min(side, spec.cut_size) * spec.min_scale
    rand = torch.rand(n, 5, generator=generator)
    size = rand[:, 0].pow(spec.cut_pow) * (side - min_size) + min_size
    reach = spec.overhang * size  # 0 keeps every cut inside the image, bit for bit as before
    center_x = size / 2 - reach + rand[:, 1] * (width - size + 2 * reach)
    center_y = size / 2 - reach + rand[:, 2] * (height - size + 2 * reach)
    angle = (rand[:, 3] * 2 - 1) * math.radians(spec.rotate)
    flip = torch.where(rand[:, 4] < 0.5, -1.0, 1.0) if spec.flip else torch.ones(n)
    cos, sin = angle.cos() * size / 2, angle.sin() * size / 2
    theta = torch.empty(n, 2, 3)
    theta[:, 0, 0] = cos * flip * 2 / width
    theta[:, 0, 1] = -sin * 2 / width
    theta[:, 1, 0] = sin * flip * 2 / height
    theta[:, 1, 1] = cos * 2 / height
    theta[:, 0, 2] = center_x * 2 / width - 1
    theta[:, 1, 2] = center_y * 2 / height - 1
    return theta


def mip_levels(theta: torch.Tensor, height: int, width: int, cut_size: int) -> torch.Tensor:
    """Per cut, the mipmap level to sample: floor(log2(shrink)), 0 below a 2x shrink."""
    pixels = theta[:, :2, :2] * torch.tensor([width, height], dtype=theta.dtype).view(1, 2, 1)
    side_px = pixels.norm(dim=1).amax(dim=1)  # the cut's longer side in image pixels
    return torch.log2((side_px / cut_size).clamp(min=1.0)).floor().long()


def image_pyramid(image: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``image`` and ``levels`` successive 2x box-filtered halvings of it (differentiable)."""
    pyramid = [image]
    for _ in range(levels):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2, ceil_mode=True))
    return pyramid


def sample_cuts(image: torch.Tensor, grid: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """grid_sample each cut from its mipmap level of ``image`` (one call when every cut is level 0)."""
    count = grid.shape[0]
    top = int(levels.max()) if count else 0
    if top == 0:
        return F.grid_sample(image.expand(count, -1, -1, -1), grid, mode="bilinear",
                             padding_mode="reflection", align_corners=False)
    pyramid = image_pyramid(image, top)
    parts, order = [], []
    for level in levels.unique().tolist():
        index = (levels == level).nonzero().flatten()
        parts.append(F.grid_sample(pyramid[level].expand(len(index), -1, -1, -1), grid[index],
                                   mode="bilinear", padding_mode="reflection", align_corners=False))
        order.append(index)
    return torch.cat(parts)[torch.cat(order).argsort()]


def make_cutouts(image: torch.Tensor, spec: CutoutSpec,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """One image (1, 3, H, W) in [0, 1] -> augmented cutouts (N, 3, cut_size, cut_size)."""
    _, channels, height, width = image.shape
    theta = cutout_thetas(height, width, spec, generator)
    levels = mip_levels(theta, height, width, spec.cut_size)
    theta = to_like(theta, image)
    grid = F.affine_grid(theta, [spec.cut_count, channels, spec.cut_size, spec.cut_size],
                         align_corners=False)
    cuts = augment_cuts(sample_cuts(image, grid, levels), spec, generator)
    if spec.noise > 0:
        scale = torch.rand(spec.cut_count, 1, 1, 1, generator=generator) * spec.noise
        noise = torch.randn(cuts.shape, generator=generator) * scale
        cuts = cuts + to_like(noise, cuts)
    return cuts


def augment_cuts(cuts: torch.Tensor, spec: CutoutSpec,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The reference loop's augmentations that ``spec`` turns on, in its order; ``cuts`` itself if none."""
    cuts = random_affine(cuts, generator, p=spec.p, shear=spec.shear)
    cuts = random_perspective(cuts, generator, p=spec.p, distortion=spec.perspective)
    cuts = colour_jitter(cuts, generator, p=spec.p, saturation=spec.jitter, hue=spec.jitter)
    return random_erasing(cuts, generator, p=spec.erase)
