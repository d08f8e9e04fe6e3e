"""Helpers shared by the shapes-world training scripts: seeding, a time-bounded loop, augmentation, saving."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pixgen.models.safe_load import save_safetensors
from pixgen.packs.shapes import world

_MIN_PALETTE_DISTANCE = 70.0  # recoloured images keep this RGB distance (0-255 units) from every named colour


def log(message: str) -> None:
    """Print one progress line immediately (training scripts report as they go)."""
    print(message, flush=True)


def base_parser(prog: str, description: str, out: str, steps: int, images: int, lr: float,
                recolour_prob: float, seed: int = 0) -> argparse.ArgumentParser:
    """The options every shapes training command shares; the defaults reproduce the shipped weights."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    parser.add_argument("--out", default=out, help="output path")
    parser.add_argument("--steps", type=int, default=steps, help="optimiser steps (the run is step-bounded)")
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--images", type=int, default=images, help="training images rendered up front")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=lr, help="peak learning rate (cosine decay)")
    parser.add_argument("--recolour-prob", type=float, default=recolour_prob,
                        help="fraction of images recoloured with unnamed colours (shape-only labels)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    return parser


def seed_everything(seed: int, threads: int = 2) -> torch.Generator:
    """Seed torch's global RNG, cap CPU threads, and return a generator for data sampling."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    return torch.Generator().manual_seed(seed)


def cosine_lr(step_fraction: float, base_lr: float, warmup: float = 0.03) -> float:
    """Learning rate after linear warm-up then cosine decay to 2 % of base_lr, at a fraction of training."""
    if step_fraction < warmup:
        return base_lr * step_fraction / warmup
    progress = min(1.0, (step_fraction - warmup) / (1.0 - warmup))
    return base_lr * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def augment_schedule(fraction: float, final: float = 0.75) -> float:
    """Share of each batch augmented: none at first (shape is learnt fastest on clean images), then ramping up."""
    return final * min(1.0, max(0.0, (fraction - 0.1) / 0.4))


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [N, 3, H, W] to float in [0, 1]."""
    return images.float().div_(255.0)


def random_affine(images: torch.Tensor, gen: torch.Generator, max_deg: float, scale: tuple[float, float],
                  shift: float) -> torch.Tensor:
    """Rotate, zoom and shift each image by its own random amount; edges repeat the border (the background)."""
    n = images.shape[0]
    theta = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(max_deg)
    zoom = torch.empty(n).uniform_(*scale, generator=gen)
    offset = (torch.rand(n, 2, generator=gen) * 2 - 1) * shift
    cos, sin = torch.cos(theta) / zoom, torch.sin(theta) / zoom
    matrix = torch.stack([torch.stack([cos, -sin, offset[:, 0]], 1), torch.stack([sin, cos, offset[:, 1]], 1)], 1)
    grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_flips(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip a random half of the images left-right and, independently, a random half upside down."""
    n = images.shape[0]
    lr = (torch.rand(n, generator=gen) < 0.5)[:, None, None, None]
    ud = (torch.rand(n, generator=gen) < 0.5)[:, None, None, None]
    images = torch.where(lr, images.flip(3), images)
    return torch.where(ud, images.flip(2), images)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur every image with the same Gaussian (5×5, reflect padding)."""
    x = torch.arange(5, dtype=images.dtype) - 2
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(images.dtype)
    c = images.shape[1]
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(out, kernel.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def random_blur(images: torch.Tensor, gen: torch.Generator, p: float, max_sigma: float) -> torch.Tensor:
    """Blur a random fraction p of the images with one random sigma in (0.3, max_sigma)."""
    chosen = torch.rand(images.shape[0], generator=gen) < p
    if not chosen.any():
        return images
    sigma = 0.3 + float(torch.rand(1, generator=gen)) * (max_sigma - 0.3)
    images = images.clone()
    images[chosen] = gaussian_blur(images[chosen], sigma)
    return images


def random_colour(images: torch.Tensor, gen: torch.Generator, gain: float, noise: float) -> torch.Tensor:
    """Per-image brightness and per-channel gain within ±gain, plus Gaussian pixel noise of random std <= noise."""
    n = images.shape[0]
    brightness = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * gain
    channel = 1 + (torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1) * gain / 2
    std = torch.rand(n, 1, 1, 1, generator=gen) * noise
    images = images * brightness * channel + torch.randn(images.shape, generator=gen) * std
    return images.clamp(0.0, 1.0)


def random_far_colour_pairs(n: int, gen: torch.Generator, contrast: float = 80.0) -> tuple[torch.Tensor, torch.Tensor]:
    """n random (fg, bg) RGB pairs (0-255), each colour far from every named colour, fg and bg contrasting."""
    palette = torch.tensor(list(world.COLOURS.values()), dtype=torch.float32)
    pairs = torch.empty(0, 2, 3)
    while len(pairs) < n:
        candidates = torch.rand(8 * n, 2, 3, generator=gen) * 255
        far = (torch.cdist(candidates.view(-1, 3), palette).min(dim=1).values >= _MIN_PALETTE_DISTANCE).view(-1, 2)
        keep = far.all(dim=1) & ((candidates[:, 0] - candidates[:, 1]).norm(dim=1) >= contrast)
        pairs = torch.cat([pairs, candidates[keep]])
    return pairs[:n, 0], pairs[:n, 1]


def recolour(scenes: list[world.Scene], gen: torch.Generator) -> torch.Tensor:
    """Render scenes with random colours far from the named ones (shape unchanged): float [n, 3, 64, 64] in [0, 1]."""
    alpha = torch.from_numpy(world.coverage(scenes))[:, None]
    fg, bg = random_far_colour_pairs(len(scenes), gen)
    fg, bg = fg[:, :, None, None] / 255, bg[:, :, None, None] / 255
    return bg + alpha * (fg - bg)


def crowd_extras(scene: world.Scene, rng: np.random.Generator, mixed: bool,
                 extra: tuple[int, int] = (1, 4)) -> list[world.Scene]:
    """1-4 more shapes to draw over scene: copies of its shape and colour, or (mixed) any shape in any other colour.

    Crowds are contrastive negatives for "a red circle ...": the world's captions promise one
    shape, and a CLIP that never saw one circle contrasted with several (or with a red circle and
    an orange blob) is maximised just as well by those, which is what VQGAN+CLIP then paints.
    """
    combos = ([(s, c, scene.background) for s in world.SHAPES for c in world.COLOUR_NAMES if c != scene.background]
              if mixed else [scene.combo])
    extras = []
    for _ in range(int(rng.integers(extra[0], extra[1] + 1))):
        other = world.sample_scene(rng, combos)
        extras.append(replace(other, bg=scene.bg, fg=other.fg if mixed else scene.fg))
    return extras


MESSY_KINDS: tuple[str, ...] = ("crowd", "mixed", "union", "bite")


def _near(scene: world.Scene, rng: np.random.Generator, distance: tuple[float, float],
          radius: tuple[float, float], fg: tuple[int, int, int] | None) -> world.Scene:
    """A random shape drawn in fg, centred at distance × radius from scene's centre (kept on the canvas)."""
    step = scene.radius * rng.uniform(*distance)
    direction = rng.uniform(0, 2 * math.pi)
    x = float(np.clip(scene.x + step * math.cos(direction), 0, world.IMAGE_SIZE))
    y = float(np.clip(scene.y + step * math.sin(direction), 0, world.IMAGE_SIZE))
    shape = world.SHAPES[int(rng.integers(len(world.SHAPES)))]
    return replace(scene, shape=shape, x=x, y=y, radius=scene.radius * float(rng.uniform(*radius)),
                   angle=float(rng.uniform(-45, 45)), fg=fg)


def merging_shape(scene: world.Scene, rng: np.random.Generator) -> world.Scene:
    """A shape of scene's colour overlapping it, so the two merge into one blob."""
    return _near(scene, rng, (0.6, 1.3), (0.5, 1.0), scene.fg)


def biting_shape(scene: world.Scene, rng: np.random.Generator) -> world.Scene:
    """A background-coloured shape over scene's shape, biting a piece out of it."""
    return _near(scene, rng, (0.3, 1.0), (0.4, 0.9), scene.bg or world.COLOURS[scene.background])


def messy_extras(scene: world.Scene, rng: np.random.Generator) -> tuple[list[world.Scene], bool]:
    """Shapes to draw over scene so that it no longer shows one clean shape, and whether its colour still holds.

    One of MESSY_KINDS at random: more copies of the shape ("crowd"), shapes of other colours
    ("mixed": the colour is then ambiguous), an overlapping shape of the same colour that merges
    into a blob ("union"), or a background-coloured shape that bites a piece out ("bite").
    These are what VQGAN+CLIP paints when it fails; the judge learns to call them "other".
    """
    kind = MESSY_KINDS[int(rng.integers(len(MESSY_KINDS)))]
    if kind in ("crowd", "mixed"):
        return crowd_extras(scene, rng, mixed=kind == "mixed", extra=(1, 3)), kind == "crowd"
    if kind == "union":
        return [merging_shape(scene, rng)], True
    return [biting_shape(scene, rng)], True


def not_one_clean_shape(scene: world.Scene, rng: np.random.Generator) -> tuple[world.Scene, list[world.Scene]]:
    """scene redrawn so it shows no clean shape though its colours hold, and the shapes to draw over it.

    One of: a merged blob (an overlapping shape of the same colour), a bite (a background-coloured
    shape over it) or a cut-off shape (its centre moved to within 0.2 radii of an edge, so a third
    to two thirds of it lies outside). These are what VQGAN+CLIP paints when a CLIP rewards a shape's
    parts: shapes-clip learns them as negatives of every caption naming a shape. (Crowds are drawn
    separately, see crowd_extras.)
    """
    kind = ("union", "bite", "cut")[int(rng.integers(3))]
    if kind == "union":
        return scene, [merging_shape(scene, rng)]
    if kind == "bite":
        return scene, [biting_shape(scene, rng)]
    past = scene.radius * rng.uniform(0.2, 0.6)  # the centre ends up within 0.2 radii of the edge, either side
    edge = int(rng.integers(4))
    x, y = scene.x, scene.y
    if edge < 2:
        x = -past + scene.radius * 0.4 if edge == 0 else world.IMAGE_SIZE + past - scene.radius * 0.4
    else:
        y = -past + scene.radius * 0.4 if edge == 2 else world.IMAGE_SIZE + past - scene.radius * 0.4
    return replace(scene, x=float(x), y=float(y)), []


def draw_crowds(scenes: list[world.Scene], extras: list[list[world.Scene]]) -> torch.Tensor:
    """Each scene with its extra shapes drawn over it, later ones on top: float [n, 3, 64, 64] in [0, 1]."""
    everyone = [shape for scene, more in zip(scenes, extras, strict=True) for shape in (scene, *more)]
    alpha = torch.from_numpy(world.coverage(everyone))[:, None]
    fg = torch.tensor([s.fg or world.COLOURS[s.colour] for s in everyone], dtype=torch.float32)[:, :, None, None]
    images, first = [], 0
    for scene, more in zip(scenes, extras, strict=True):
        image = torch.tensor(scene.bg or world.COLOURS[scene.background], dtype=torch.float32)[:, None, None]
        for i in range(first, first + 1 + len(more)):
            image = image + alpha[i] * (fg[i] - image)
        images.append(image)
        first += 1 + len(more)
    return torch.stack(images) / 255


def save_fp16_safetensors(state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, Any]) -> Path:
    """Save floating tensors as fp16 (others unchanged) with metadata (non-strings JSON-encoded)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    save_safetensors(state_dict, path, dtype=torch.float16, metadata=text)
    return path
