"""Inference rewrites of frozen models: folded BatchNorm and channels-last weights keep the outputs."""

from __future__ import annotations

import json

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from pixgen.models.factory import load_clip
from pixgen.models.inference import fuse_conv_batchnorm
from pixgen.models.registry import load_registry
from pixgen.packs.shapes import (
    PACK,
    tower,  # noqa: F401  registers the shapes-clip image tower with timm
)
from pixgen.packs.shapes.world import render_dataset


def _conv_bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)),
        nn.MaxPool2d(2), nn.BatchNorm2d(8),  # not after a conv: must stay
    )
    for module in net.modules():  # running statistics far from the identity, so folding matters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return net


def test_folding_keeps_outputs_and_removes_folded_batchnorms():
    net = _conv_bn_net().eval()
    x = torch.randn(4, 3, 16, 16)
    expected = net(x)
    assert fuse_conv_batchnorm(net) == 2
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 1
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)


def test_training_mode_batchnorms_are_left_alone():
    net = _conv_bn_net().train()
    assert fuse_conv_batchnorm(net) == 0
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 3


def test_shipped_clip_scores_exactly_as_the_unmodified_open_clip_model(monkeypatch):
    monkeypatch.delenv("PIXGEN_REGISTRY")
    scorer = load_clip("shapes-clip", load_registry()).module
    assert not any(isinstance(m, nn.BatchNorm2d) for m in scorer.modules())
    convs = [m for m in scorer.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)

    weights = PACK.registry.parent / "weights"
    config = json.loads((weights / "shapes-clip.json").read_text())
    reference = open_clip.CLIP(**config).eval()
    reference.load_state_dict({k: v.float() for k, v in load_file(weights / "shapes-clip.safetensors").items()})
    images = render_dataset(8, seed=3, split="held_out")[0].float() / 255
    with torch.no_grad():
        expected = F.normalize(reference.encode_image((images - scorer.mean) / scorer.std), dim=-1)
        torch.testing.assert_close(scorer.encode_image(images), expected, atol=1e-5, rtol=1e-5)
