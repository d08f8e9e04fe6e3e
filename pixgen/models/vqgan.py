"""VQGAN built from taming-transformers' modules, with taming's state-dict key names.

We never import ``taming.models.vqgan``: it pulls in pytorch-lightning and builds an LPIPS
loss that downloads VGG weights. Only the encoder, decoder and quantiser modules are used.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pixgen.models.inference import fused_swish

QUANTIZERS = ("vq", "gumbel")


@dataclass
class VQGANConfig:
    """Architecture of a VQGAN: taming's ``model.params`` without the training parts."""

    embed_dim: int  # width of a codebook vector
    n_embed: int  # number of codebook vectors
    ddconfig: dict[str, Any] = field(default_factory=dict)  # taming Encoder/Decoder kwargs
    quantizer: str = "vq"  # "vq" (VectorQuantizer2) or "gumbel" (GumbelQuantize)

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent cell along one side: 2 ** (len(ch_mult) - 1)."""
        return 2 ** (len(self.ddconfig["ch_mult"]) - 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, for YAML/JSON metadata."""
        return {
            "embed_dim": self.embed_dim,
            "n_embed": self.n_embed,
            "ddconfig": dict(self.ddconfig),
            "quantizer": self.quantizer,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VQGANConfig:
        """Build from :meth:`to_dict` output or a registry ``architecture`` block."""
        ddconfig = dict(data["ddconfig"])
        ddconfig["ch_mult"] = list(ddconfig["ch_mult"])
        ddconfig["attn_resolutions"] = list(ddconfig.get("attn_resolutions", []))
        quantizer = data.get("quantizer", "vq")
        if quantizer not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {quantizer!r}; must be one of {', '.join(QUANTIZERS)}")
        return cls(int(data["embed_dim"]), int(data["n_embed"]), ddconfig, quantizer)

    @classmethod
    def from_taming(cls, data: dict[str, Any]) -> VQGANConfig:
        """Read a taming config as published (``model.target`` / ``model.params``)."""
        model = data.get("model", data)
        params = model.get("params", model)
        target = str(model.get("target", ""))
        quantizer = "gumbel" if "Gumbel" in target else "vq"
        return cls.from_dict({**params, "quantizer": quantizer})


class VQGAN(nn.Module):
    """The generation-time half of taming's VQModel: encoder, decoder and codebook."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        from taming.modules.diffusionmodules.model import Decoder, Encoder
        from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2

        self.config = config
        dd = config.ddconfig
        # taming prints "Working with z of shape ..." while building; keep our output clean.
        with contextlib.redirect_stdout(io.StringIO()):
            self.encoder = Encoder(**dd)
            self.decoder = Decoder(**dd)
        fused_swish(self)  # same outputs to float rounding, faster (pixgen.models.inference)
        if config.quantizer == "gumbel":
            self.quantize = GumbelQuantize(dd["z_channels"], config.embed_dim, n_embed=config.n_embed)
        else:
            self.quantize = VectorQuantizer2(config.n_embed, config.embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(dd["z_channels"], config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, dd["z_channels"], 1)

    @property
    def codebook(self) -> torch.Tensor:
        """The codebook, shape (n_embed, embed_dim)."""
        if self.config.quantizer == "gumbel":
            return self.quantize.embed.weight
        return self.quantize.embedding.weight

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B, 3, H, W) -> quantised latents (B, embed_dim, H/f, W/f)."""
        h = self.quant_conv(self.encoder(images))
        if self.config.quantizer == "gumbel":
            indices = self.quantize.proj(h).argmax(dim=1)
            return self.codebook[indices].permute(0, 3, 1, 2)
        quantized, _, _ = self.quantize(h)
        return quantized

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, embed_dim, h, w) -> images roughly in [-1, 1], in the weights' memory format."""
        if self.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last):
            latents = latents.contiguous(memory_format=torch.channels_last)
        return self.decoder(self.post_quant_conv(latents))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook indices (B, h, w) -> images; taming's ``decode_code`` is broken in rom1504's build."""
        return self.decode(self.codebook[indices].permute(0, 3, 1, 2))


GENERATION_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")


def generation_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep only the weights generation needs (drops ``loss.*``, discriminator, LPIPS...)."""
    return {k: v for k, v in state_dict.items() if k.startswith(GENERATION_PREFIXES)}
