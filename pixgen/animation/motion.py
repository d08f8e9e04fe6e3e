"""Camera motion between animation frames: zoom, rotation and pan as one affine resample.

One bilinear ``grid_sample`` per frame (fp32, reflection padding), so the three never blur twice.
Conventions, in pixels of the image: ``zoom`` > 1 magnifies about the centre (content moves outward),
``rotate`` turns the content counter-clockwise by that many degrees, and ``pan = (dx, dy)`` moves
the content dx pixels right and dy pixels down.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def affine_theta(zoom: float, rotate: float, pan: tuple[float, float], height: int, width: int) -> torch.Tensor:
    """The (1, 2, 3) ``affine_grid`` matrix mapping output to input normalised coordinates."""
    angle = math.radians(rotate)
    cos, sin = math.cos(angle), math.sin(angle)
    # content point p (pixels from the centre, y down) lands at zoom * R p + pan, where R turns
    # counter-clockwise on screen; so an output pixel q samples the input at R^-1 (q - pan) / zoom.
    inverse = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64) / zoom
    half = torch.tensor([width / 2, height / 2], dtype=torch.float64)
    linear = inverse * half.view(1, 2) / half.view(2, 1)  # D^-1 R^-1 D / zoom, D = diag(half)
    offset = -(inverse @ torch.tensor(pan, dtype=torch.float64)) / half
    return torch.cat([linear, offset.view(2, 1)], dim=1).unsqueeze(0).float()


def transform(image: torch.Tensor, zoom: float = 1.0, rotate: float = 0.0,
              pan: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Zoom, rotate and pan a (B, 3, H, W) image in one resample with reflection padding, in fp32."""
    if zoom == 1 and rotate == 0 and pan[0] == 0 and pan[1] == 0:
        return image.float().clone()
    height, width = image.shape[-2:]
    theta = affine_theta(zoom, rotate, pan, height, width).to(image.device).expand(image.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    moved = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return moved.clamp(0, 1)


def blend(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Linear blend ``(1 - t) a + t b`` (pixel interpolation between frames, or latent smoothing)."""
    return a + (b - a) * t
