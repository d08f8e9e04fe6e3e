"""Train shapes-vqgan, the small f4 VQGAN of the shapes world, and report held-out PSNR.

Usage:
    python -m pixgen.packs.shapes.train_vqgan --steps 1600 --seed 0 \
        --out pixgen/packs/shapes/weights/shapes-vqgan.safetensors

The model is pixgen's own ``VQGAN`` (taming's Encoder/Decoder and key names), trained without
LPIPS or a discriminator: encoder -> quant_conv -> nearest code (straight-through) ->
post_quant_conv -> decoder, with an L2 reconstruction loss (what PSNR measures) and a commitment
loss. The codebook is not trained by gradients: it starts as k-means of encoder outputs, follows
them by exponential moving averages, and codes nobody uses are restarted on random encoder outputs.

Architecture: ch 96 at every level (f = 4), no res blocks in the encoder (num_res_blocks 0: the
encoder is a 3x3 conv, two 2x2 average pools and the 16x16 middle blocks), one per decoder level,
nearest/average resampling without convolutions. taming's GroupNorm has 32 groups, so at ch 32
every group is one channel and normalises it over the whole image: a flat background's absolute
colour is erased at each norm, and the decoder's last norm leaves almost nothing to say which
colour to paint. Three channels per group (ch 96) keep it, at ~1.8x the cost per image of ch 32
[1, 1, 2]; ch 32 learned far slower per image. Every residual branch starts at zero.

The convolutions run under bf16 autocast; the quantiser stays fp32. Training images (training
combinations only) are rendered once up front. The run is step-bounded and seeded, so the same
command gives the same weights; the end reports PSNR on fresh held-out renders through the saved
fp16 file, loaded back in fp32, and writes only the generation weights.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pixgen.models.safe_load import save_safetensors
from pixgen.models.vqgan import VQGAN, VQGANConfig, generation_weights
from pixgen.packs.shapes.training import cosine_lr, log, seed_everything, to_unit
from pixgen.packs.shapes.world import render_dataset

METADATA_KEY = "pixgen_vqgan"  # the key pixgen.models.factory reads the architecture from
EVAL_SEED = 12345  # held-out renders used for the reported PSNR
COMMITMENT = 0.25  # weight of ||z - sg(code)||^2
L1_WEIGHT = 0.0  # reconstruction loss: L2 + L1_WEIGHT * L1 (plain L2 is what PSNR measures)
DEAD_THRESHOLD = 0.03  # a code whose EMA count per step falls below this is restarted
INITIAL_COUNT = 0.1  # EMA count a fresh code starts with: unused, it is restarted after ~120 steps


def shapes_vqgan_config(ch: int = 96, ch_mult: tuple[int, ...] = (1, 1, 1), num_res_blocks: int = 0,
                        resamp_with_conv: bool = True, z_channels: int = 32, embed_dim: int = 32,
                        n_embed: int = 512) -> VQGANConfig:
    """The shapes-world VQGAN architecture: f = 2**(len(ch_mult)-1), no attention at any level."""
    ddconfig = {"double_z": False, "z_channels": z_channels, "resolution": 64, "in_channels": 3, "out_ch": 3,
                "ch": ch, "ch_mult": list(ch_mult), "num_res_blocks": num_res_blocks, "attn_resolutions": [],
                "dropout": 0.0, "resamp_with_conv": resamp_with_conv}
    return VQGANConfig(embed_dim=embed_dim, n_embed=n_embed, ddconfig=ddconfig, quantizer="vq")


def zero_init_residuals(model: VQGAN) -> VQGAN:
    """Zero the last layer of every residual branch, so each block starts as the identity (faster start)."""
    from taming.modules.diffusionmodules.model import AttnBlock, ResnetBlock

    with torch.no_grad():
        for module in model.modules():
            last = module.conv2 if isinstance(module, ResnetBlock) else getattr(module, "proj_out", None)
            if isinstance(module, (ResnetBlock, AttnBlock)):
                last.weight.zero_()
                last.bias.zero_()
    return model


@dataclass
class Codebook:
    """EMA statistics of the codebook held in ``model.quantize.embedding.weight``."""

    weight: torch.Tensor  # the model's codebook parameter, [K, D], updated in place
    cluster_size: torch.Tensor  # EMA count of vectors assigned to each code, [K]
    embed_sum: torch.Tensor  # EMA sum of vectors assigned to each code, [K, D]
    decay: float = 0.99

    @classmethod
    def of(cls, model: VQGAN, decay: float = 0.99) -> Codebook:
        """Statistics for model's codebook, seeded as if every code had INITIAL_COUNT vectors on it."""
        weight = model.quantize.embedding.weight
        weight.requires_grad_(False)
        count = torch.full((weight.shape[0],), INITIAL_COUNT)
        return cls(weight, count, weight.detach() * INITIAL_COUNT, decay)


def flatten(h: torch.Tensor) -> torch.Tensor:
    """Latents [B, D, h, w] to one row per cell, [B*h*w, D]."""
    return h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])


def nearest_codes(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row (Euclidean) for every row of vectors."""
    distance = (vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ codebook.t()
                + codebook.pow(2).sum(1)[None, :])
    return distance.argmin(1)


def quantise(h: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-code latents with a straight-through gradient, and the code indices [B*h*w]."""
    indices = nearest_codes(flatten(h), codebook)
    b, d, hh, ww = h.shape
    codes = codebook[indices].reshape(b, hh, ww, d).permute(0, 3, 1, 2)
    return h + (codes - h).detach(), indices


def kmeans(vectors: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """k centroids of vectors by Lloyd's algorithm from a random start; empty clusters keep their centroid."""
    centroids = vectors[torch.randperm(len(vectors), generator=gen)[:k]].clone()
    for _ in range(iters):
        indices = nearest_codes(vectors, centroids)
        counts = torch.bincount(indices, minlength=k).float()
        sums = torch.zeros_like(centroids).index_add_(0, indices, vectors)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


@torch.no_grad()
def encode_continuous(model: VQGAN, x: torch.Tensor) -> torch.Tensor:
    """Pre-quantisation latents (fp32) of images in [-1, 1]."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.quant_conv(model.encoder(x))
    return h.float()


@torch.no_grad()
def init_codebook(model: VQGAN, book: Codebook, images: torch.Tensor, gen: torch.Generator) -> None:
    """Start the codebook at k-means centroids of the (untrained) encoder's outputs on images."""
    vectors = flatten(encode_continuous(model, to_signed(images)))
    book.weight.copy_(kmeans(vectors, book.weight.shape[0], iters=10, gen=gen))
    book.cluster_size.fill_(INITIAL_COUNT)
    book.embed_sum.copy_(book.weight * INITIAL_COUNT)


@torch.no_grad()
def ema_update(book: Codebook, vectors: torch.Tensor, indices: torch.Tensor) -> None:
    """Move every code towards the mean of the vectors assigned to it (Laplace-smoothed EMA)."""
    k = book.weight.shape[0]
    counts = torch.bincount(indices, minlength=k).float()
    sums = torch.zeros_like(book.embed_sum).index_add_(0, indices, vectors)
    book.cluster_size.mul_(book.decay).add_(counts, alpha=1 - book.decay)
    book.embed_sum.mul_(book.decay).add_(sums, alpha=1 - book.decay)
    n = book.cluster_size.sum()
    smoothed = (book.cluster_size + 1e-5) / (n + k * 1e-5) * n
    book.weight.copy_(book.embed_sum / smoothed[:, None])


@torch.no_grad()
def restart_dead_codes(book: Codebook, vectors: torch.Tensor, gen: torch.Generator, threshold: float) -> int:
    """Move codes whose EMA usage fell below threshold onto random current vectors; returns how many."""
    dead = (book.cluster_size < threshold).nonzero().flatten()
    if len(dead) == 0:
        return 0
    picks = vectors[torch.randint(len(vectors), (len(dead),), generator=gen)]
    book.weight[dead] = picks
    book.embed_sum[dead] = picks * INITIAL_COUNT
    book.cluster_size[dead] = INITIAL_COUNT
    return len(dead)


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [N, 3, H, W] to float in [-1, 1]."""
    return to_unit(images).mul_(2).sub_(1)


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor, l1_weight: float = L1_WEIGHT) -> torch.Tensor:
    """L2 (+ l1_weight * L1) between decoder output and target, both in [-1, 1]."""
    diff = output.float() - target
    loss = diff.pow(2).mean()
    return loss + l1_weight * diff.abs().mean() if l1_weight else loss


def train_step(model: VQGAN, opt: torch.optim.Optimizer, book: Codebook, x: torch.Tensor,
               gen: torch.Generator, dead_threshold: float) -> dict[str, float]:
    """One optimiser step on images x in [-1, 1]: reconstruction + commitment, EMA codebook, restarts."""
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.quant_conv(model.encoder(x))
    h = h.float()
    z, indices = quantise(h, book.weight)
    commitment = (h - z.detach()).pow(2).mean()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model.decoder(model.post_quant_conv(z))
    rec = reconstruction_loss(output, x)
    loss = rec + COMMITMENT * commitment
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    vectors = flatten(h.detach())
    ema_update(book, vectors, indices)
    restarted = restart_dead_codes(book, vectors, gen, dead_threshold)
    return {"loss": loss.item(), "rec": rec.item(), "commit": commitment.item(), "restarted": restarted}


def make_optimizer(model: VQGAN, lr: float) -> torch.optim.Optimizer:
    """Adam over everything except the EMA-updated codebook."""
    params = [p for name, p in model.named_parameters() if name != "quantize.embedding.weight"]
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99))


def train_steps(model: VQGAN, opt: torch.optim.Optimizer, book: Codebook, images: torch.Tensor,
                gen: torch.Generator, steps: int, batch_size: int, base_lr: float | None = None,
                total_steps: int | None = None, start: int = 0, dead_threshold: float = DEAD_THRESHOLD) -> list[dict]:
    """Run steps optimiser steps on random batches of uint8 images; returns each step's losses.

    With base_lr, the learning rate follows training.cosine_lr over total_steps, starting at step start.
    """
    history = []
    for step in range(start, start + steps):
        if base_lr is not None:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step / (total_steps or steps), base_lr)
        batch = to_signed(images[torch.randint(len(images), (batch_size,), generator=gen)])
        history.append(train_step(model, opt, book, batch, gen, dead_threshold))
    return history


@torch.no_grad()
def reconstruct(model: VQGAN, images: torch.Tensor, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode -> quantise (taming's VectorQuantizer2) -> decode uint8 images: outputs in [0, 1], code indices."""
    model.eval()
    outputs, indices = [], []
    for chunk in images.split(batch_size):
        z, _, (_, _, idx) = model.quantize(model.quant_conv(model.encoder(to_signed(chunk))))
        outputs.append(model.decode(z).clamp(-1, 1).add(1).div(2))
        indices.append(idx)
    return torch.cat(outputs), torch.cat(indices)


def psnr(output: torch.Tensor, images: torch.Tensor) -> float:
    """PSNR in dB of outputs in [0, 1] against uint8 images, from the MSE over all pixels."""
    mse = F.mse_loss(output, to_unit(images)).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def evaluate(model: VQGAN, images: torch.Tensor) -> tuple[float, int]:
    """Held-out PSNR (dB) and the number of distinct codes used on images."""
    output, indices = reconstruct(model, images)
    return psnr(output, images), int(indices.unique().numel())


def save_vqgan(model: VQGAN, path: str | Path, extra: dict[str, str]) -> Path:
    """Write the generation weights as fp16 safetensors with the architecture in the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {METADATA_KEY: json.dumps(model.config.to_dict()), **extra}
    save_safetensors(generation_weights(model.state_dict()), path, dtype=torch.float16, metadata=metadata)
    return path


def load_saved(path: str | Path) -> VQGAN:
    """Load a saved shapes VQGAN through pixgen's normal path (config from the safetensors metadata)."""
    from pixgen.models.factory import load_vqgan
    from pixgen.models.registry import load_registry

    return load_vqgan(str(path), load_registry()).module


def train(args: argparse.Namespace) -> float:
    """Render data, train for args.steps steps, save, and return held-out PSNR of the saved file."""
    gen = seed_everything(args.seed, args.threads)
    t0 = time.monotonic()
    images, _ = render_dataset(args.images, args.seed, "train")
    probe, _ = render_dataset(64, args.seed + 1, "held_out")
    log(f"rendered {len(images)} training images in {time.monotonic() - t0:.1f}s")
    config = shapes_vqgan_config(args.ch, tuple(args.ch_mult), args.num_res_blocks, bool(args.resamp_conv),
                                 args.z_channels, args.embed_dim, args.n_embed)
    model = VQGAN(config)
    if args.zero_init:
        zero_init_residuals(model)
    book = Codebook.of(model)
    init_codebook(model, book, images[:64], gen)
    opt = make_optimizer(model, args.lr)
    start = time.monotonic()
    for done in range(0, args.steps, args.log_every):
        n = min(args.log_every, args.steps - done)
        history = train_steps(model, opt, book, images, gen, n, args.batch_size, args.lr, args.steps, done)
        value, used = evaluate(model, probe)
        elapsed = time.monotonic() - start
        mean = {key: sum(h[key] for h in history) / n for key in ("loss", "rec", "commit")}
        log(f"step {done + n:5d}  loss {mean['loss']:.4f}  rec {mean['rec']:.4f}  commit {mean['commit']:.4f}  "
            f"restarts {sum(h['restarted'] for h in history):3d}  probe PSNR {value:.2f} dB  "
            f"codes {used}/{config.n_embed}  {(done + n) / elapsed:.2f} steps/s")
    train_time = time.monotonic() - start
    log(f"trained {args.steps} steps in {train_time:.0f}s ({args.steps / train_time:.2f} steps/s)")
    save_vqgan(model, args.out, {"seed": str(args.seed), "steps": str(args.steps)})
    test, _ = render_dataset(512, EVAL_SEED, "held_out")
    value, used = evaluate(load_saved(args.out), test)
    save_vqgan(model, args.out, {"seed": str(args.seed), "steps": str(args.steps),
                                 "held_out_psnr": f"{value:.2f}", "codes_used": str(used)})
    log(f"saved {args.out}: held-out PSNR {value:.2f} dB on 512 fresh renders (fp16 file, fp32 model), "
        f"codes used {used}/{config.n_embed}; total {time.monotonic() - t0:.0f}s")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; the defaults reproduce the shipped weights."""
    parser = argparse.ArgumentParser(prog="python -m pixgen.packs.shapes.train_vqgan",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="pixgen/packs/shapes/weights/shapes-vqgan.safetensors",
                        help="output .safetensors")
    parser.add_argument("--steps", type=int, default=1600, help="optimiser steps (the run is step-bounded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay)")
    parser.add_argument("--images", type=int, default=25600, help="training images rendered up front")
    parser.add_argument("--ch", type=int, default=96)
    parser.add_argument("--ch-mult", type=int, nargs="+", default=[1, 1, 1])
    parser.add_argument("--num-res-blocks", type=int, default=0)
    parser.add_argument("--resamp-conv", type=int, default=0, help="1: strided/learned resampling, 0: pool/nearest")
    parser.add_argument("--z-channels", type=int, default=32)
    parser.add_argument("--embed-dim", type=int, default=32)
    parser.add_argument("--n-embed", type=int, default=1024)
    parser.add_argument("--zero-init", type=int, default=1, help="1: residual branches start at zero")
    parser.add_argument("--log-every", type=int, default=200, help="steps between progress lines")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and train."""
    args = parse_args(argv)
    log(f"shapes-vqgan  steps {args.steps}  batch {args.batch_size}  lr {args.lr}  seed {args.seed}")
    train(args)


if __name__ == "__main__":
    main()
