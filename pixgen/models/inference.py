"""Rewrites of a frozen model that keep its outputs (to float rounding) and make it faster to run."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


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


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """Fold conv+BatchNorm pairs and store weights channels-last; ``model`` must be in eval mode.

    Channels-last made a default run's optimisation step about 15 % faster on 2 CPU cores (the
    shapes-clip CNN tower); ViT-B/32 (no BatchNorm, one conv) took the same time either way.
    """
    fuse_conv_batchnorm(model)
    return model.to(memory_format=torch.channels_last)
