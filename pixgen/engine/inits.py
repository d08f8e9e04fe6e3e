"""Initial latents: random codebook tokens, or an image (given or generated noise) encoded.

Every init method has the same signature, ``(vqgan, grid, generator, image) -> z``, and is
picked by name from ``INIT_METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from pixgen.models.vqgan import VQGAN

Grid = tuple[int, int]  # latent height, width


def encode_image(vqgan: VQGAN, image: torch.Tensor) -> torch.Tensor:
    """An image (1, 3, H, W) in [0, 1] -> its quantised latents."""
    with torch.no_grad():
        return vqgan.encode(image.to(vqgan.codebook) * 2 - 1)


def random_tokens(vqgan: VQGAN, grid: Grid, generator: torch.Generator, image=None) -> torch.Tensor:
    """A grid of uniformly random codebook entries."""
    indices = torch.randint(vqgan.config.n_embed, (1, *grid), generator=generator)
    return vqgan.codebook[indices.to(vqgan.codebook.device)].permute(0, 3, 1, 2).clone()


def _pixel_size(vqgan: VQGAN, grid: Grid) -> tuple[int, int]:
    f = vqgan.config.downsample_factor
    return grid[0] * f, grid[1] * f


def from_image(vqgan: VQGAN, grid: Grid, generator: torch.Generator, image=None) -> torch.Tensor:
    """The given image, resized to the output size, encoded."""
    if image is None:
        raise ValueError("init 'image' needs an image tensor")
    resized = F.interpolate(image, size=_pixel_size(vqgan, grid), mode="bicubic",
                            align_corners=False).clamp(0, 1)
    return encode_image(vqgan, resized)


def pixel_noise(vqgan: VQGAN, grid: Grid, generator: torch.Generator, image=None) -> torch.Tensor:
    """Uniform random pixels, encoded."""
    height, width = _pixel_size(vqgan, grid)
    return encode_image(vqgan, torch.rand(1, 3, height, width, generator=generator))


def random_gradient(vqgan: VQGAN, grid: Grid, generator: torch.Generator, image=None) -> torch.Tensor:
    """A linear blend between two random colours in a random direction, encoded."""
    height, width = _pixel_size(vqgan, grid)
    start, end = torch.rand(2, 3, 1, 1, generator=generator)
    angle = torch.rand(1, generator=generator) * 2 * torch.pi
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    t = ((xs * angle.cos() + ys * angle.sin()) / 2 ** 0.5 + 1) / 2
    return encode_image(vqgan, (start + (end - start) * t).unsqueeze(0))


def _perlin_octave(cells: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """One octave of gradient noise on a ``cells`` x ``cells`` lattice, (3, height, width)."""
    angles = torch.rand(3, cells + 1, cells + 1, generator=generator) * 2 * torch.pi
    gx, gy = angles.cos(), angles.sin()
    px = torch.linspace(0, 1, width).view(1, -1) * cells
    py = torch.linspace(0, 1, height).view(-1, 1) * cells
    x0, y0 = px.floor().long().clamp(max=cells - 1), py.floor().long().clamp(max=cells - 1)
    fx, fy = px - x0, py - y0
    dots = [[gx[:, y0 + dy, x0 + dx] * (fx - dx) + gy[:, y0 + dy, x0 + dx] * (fy - dy)
             for dx in (0, 1)] for dy in (0, 1)]
    sx, sy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    top = dots[0][0] + sx * (dots[0][1] - dots[0][0])
    bottom = dots[1][0] + sx * (dots[1][1] - dots[1][0])
    return top + sy * (bottom - top)


def perlin_noise(height: int, width: int, generator: torch.Generator, octaves: int = 4) -> torch.Tensor:
    """Fractal gradient (Perlin) noise, (3, height, width) in [0, 1]: one field per channel."""
    total = sum(_perlin_octave(2 ** (o + 1), height, width, generator) / 2 ** o for o in range(octaves))
    low, high = total.amin((1, 2), keepdim=True), total.amax((1, 2), keepdim=True)
    return (total - low) / (high - low + 1e-8)


def perlin(vqgan: VQGAN, grid: Grid, generator: torch.Generator, image=None) -> torch.Tensor:
    """Coloured Perlin noise, encoded."""
    height, width = _pixel_size(vqgan, grid)
    return encode_image(vqgan, perlin_noise(height, width, generator).unsqueeze(0))


InitMethod = Callable[[VQGAN, Grid, torch.Generator, "torch.Tensor | None"], torch.Tensor]
INIT_METHODS: dict[str, InitMethod] = {
    "random": random_tokens,
    "image": from_image,
    "pixels": pixel_noise,
    "gradient": random_gradient,
    "perlin": perlin,
}
