"""CLIP scorer on open_clip: embeds prompts and images with the model's own preprocessing."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pixgen.models.inference import prepare_for_inference


class CLIPScorer(nn.Module):
    """An open_clip model plus the image size and mean/std its weights were trained with."""

    def __init__(self, model: nn.Module, tokenizer, name: str,
                 mean: Sequence[float], std: Sequence[float], pack: str | None = None):
        super().__init__()
        self.model = prepare_for_inference(model.eval().requires_grad_(False))
        self.tokenizer = tokenizer
        self.name = name
        self.pack = pack  # the model pack it was registered by (pixgen.models.packs), if any
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-length text embeddings, (len(texts), D)."""
        tokens = self.tokenizer(list(texts)).to(self.mean.device)
        with torch.no_grad():
            return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def encode_image(self, images: torch.Tensor, cast=contextlib.nullcontext) -> torch.Tensor:
        """Images in [0, 1] at ``image_size`` (B, 3, S, S) -> unit-length embeddings (B, D).

        Only the model's forward runs under ``cast`` (an autocast context factory); the
        normalisations before and after it stay fp32.
        """
        normalized = (images - self.mean) / self.std
        if normalized.is_cuda:
            normalized = normalized.contiguous(memory_format=torch.channels_last)
        with cast():
            features = self.model.encode_image(normalized)
        return F.normalize(features.float(), dim=-1)

    def prepare_image(self, images: torch.Tensor) -> torch.Tensor:
        """Resize any image batch in [0, 1] to the model's input size (for image prompts)."""
        return F.interpolate(images, size=(self.image_size, self.image_size),
                             mode="bicubic", align_corners=False).clamp(0, 1)
