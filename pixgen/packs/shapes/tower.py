"""The shapes-clip image tower: a small CNN, registered with timm so open_clip can build it from a config.

open_clip builds timm image towers by name (``vision_cfg.timm_model_name``), so a shapes-clip
config names ``pixgen_shapes_cnn``. Import this module before ``open_clip.create_model`` so timm
knows the name. Why a CNN and not a ViT: in 100-300 supervised steps a small open_clip ViT (patch
4, 8 or 16), open_clip's ModifiedResNet and timm's ``test_resnet`` all stayed at chance on shape,
while this design (full-resolution 3×3 convolutions, max-pool downsampling, global average+max
pooling: local corner detectors whose presence anywhere counts) reached 98 % within 50 steps.
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

NAME = "pixgen_shapes_cnn"


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    """3×3 convolution, batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ShapesCNN(nn.Module):
    """Conv stages at 64, 32, 16 and 8 px, then global average and max pooling concatenated (timm-style API)."""

    def __init__(self, widths: tuple[int, int, int] = (32, 48, 96), num_classes: int = 0, in_chans: int = 3):
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            _conv(in_chans, a), nn.MaxPool2d(2),
            _conv(a, b), _conv(b, b), nn.MaxPool2d(2),
            _conv(b, c), _conv(c, c), nn.MaxPool2d(2),
            _conv(c, c),
        )  # fmt: skip
        self.num_features = 2 * c
        self.default_cfg = self.pretrained_cfg = {"architecture": NAME, "pool_size": None}
        self.head: nn.Module = nn.Identity()
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (0: none, the pooled features are the output); pooling is fixed."""
        if global_pool not in (None, "", "avgmax"):
            raise ValueError(f"{NAME} pools with 'avgmax' only, not {global_pool!r}")
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map [N, C, H/8, W/8]."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (or class logits) for normalised images [N, 3, H, W]."""
        h = self.forward_features(x)
        return self.head(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))


@register_model
def pixgen_shapes_cnn(pretrained: bool = False, **kwargs) -> ShapesCNN:
    """timm entry point for the shapes-clip image tower (no pretrained weights exist: those ship with pixgen)."""
    if pretrained:
        raise ValueError(f"{NAME} has no timm pretrained weights; load pixgen's shapes-clip checkpoint instead.")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return ShapesCNN(**kwargs)
