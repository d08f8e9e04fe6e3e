"""The optimisation loop: VQGAN latents pulled towards the prompts by CLIP, as a generator.

``generate`` yields a :class:`Step` after every optimiser step and does no I/O: callers decide
what to save or print. Each step: quantise z (straight-through) -> decode -> clamp to [0, 1]
-> cutouts + augmentations -> CLIP embeddings -> spherical-distance loss per prompt -> Adam
step (constant or cosine-decayed learning rate) -> clamp z to the codebook's per-channel range.

When every guiding CLIP comes from one model pack with a prompt reader, the prompts are first read
as that pack reads them (:func:`pixgen.models.packs.read_prompts`: the bundled shapes world
restates them as the caption its CLIPs read them as); ``restate: false`` keeps them as written.

Mixed precision (bf16/fp16 autocast) covers the decoder and the CLIP forward only; the quantiser,
the image, the cutout grid (torch 2.14.1's CPU ``grid_sample`` is wrong in bf16), the loss and the
optimiser stay fp32. ``precision: auto`` picks per device (:func:`resolve_precision`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pixgen.config import RunConfig
from pixgen.engine.cutouts import CutoutSpec, make_cutouts
from pixgen.engine.inits import INIT_METHODS
from pixgen.engine.ops import clamp_to_codebook, latent_mse, prompt_loss, to_unit_range, vector_quantize
from pixgen.models.clip import CLIPScorer
from pixgen.models.inference import prepare_for_device
from pixgen.models.packs import read_prompts
from pixgen.models.vqgan import VQGAN
from pixgen.prompts import Prompt, all_prompts

OPTIMIZERS = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
}
PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SMALL_DECODER_PARAMS = 5_000_000  # below this, auto stays fp32 on the CPU: nothing to gain


@dataclass
class Models:
    """The loaded models a run needs, already on ``device``."""

    vqgan: VQGAN
    clips: list[CLIPScorer]
    device: torch.device


@dataclass
class Target:
    """One prompt embedded by one CLIP model."""

    embedding: torch.Tensor  # (D,), unit length
    weight: float
    stop: float | None  # see pixgen.prompts


@dataclass
class Step:
    """The state after one optimiser step."""

    step: int  # steps done so far, 1-based
    total: int  # steps the run will take in all
    loss_values: torch.Tensor = field(repr=False)  # [total, *losses], read lazily (no host sync on CUDA)
    z: torch.Tensor  # the latents after the step (a copy: later steps do not change it)
    vqgan: VQGAN = field(repr=False)
    state: dict[str, Any] = field(repr=False)  # optimiser and RNG state as they were after this step
    seed: int | None = None  # the run's seed (drawn by generate when the config has none)
    precision: str = "fp32"  # the precision the step ran in (``auto`` resolved)

    @functools.cached_property
    def _values(self) -> list[float]:
        return self.loss_values.tolist()

    @property
    def loss(self) -> float:
        """Total loss of this step."""
        return self._values[0]

    @property
    def losses(self) -> list[float]:
        """Loss per (CLIP model, prompt) in order, then the init_weight term if any."""
        return self._values[1:]

    def image(self) -> torch.Tensor:
        """The current image, (1, 3, H, W) in [0, 1] on the CPU."""
        with torch.no_grad():
            return synth(self.z, self.vqgan).float().cpu()

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to continue from this step (pass it as ``generate(..., resume=)``).

        It is the state at this step's boundary even when read later, e.g. after a Ctrl-C landed in
        the middle of the next step, so resuming from it is exact.
        """
        return {"step": self.step, "z": self.z.cpu().clone(), **self.state}


def snapshot(optimizer: torch.optim.Optimizer, generator: torch.Generator) -> dict[str, Any]:
    """A copy of the optimiser and RNG state that later steps cannot change."""
    return {"optimizer": copy.deepcopy(optimizer.state_dict()), "generator": generator.get_state()}


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch, and return the generator every engine draw uses."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def latent_grid(size: list[int], vqgan: VQGAN) -> tuple[int, int]:
    """Latent (height, width) for an output of ``size`` = [width, height], rounding down to f."""
    f = vqgan.config.downsample_factor
    return max(size[1] // f, 1), max(size[0] // f, 1)


def synth(z: torch.Tensor, vqgan: VQGAN, cast=contextlib.nullcontext) -> torch.Tensor:
    """Latents -> image in [0, 1] via nearest-code quantisation (straight-through); only the
    decoder runs under ``cast`` (an autocast context factory), the rest in fp32."""
    quantized = vector_quantize(z, vqgan.codebook)
    with cast():
        decoded = vqgan.decode(quantized)
    return to_unit_range(decoded.float())


def embed_targets(clip: CLIPScorer, prompts: list[Prompt],
                  images: dict[str, torch.Tensor]) -> list[Target]:
    """Embed text and image prompts with one CLIP model."""
    targets = []
    for prompt in prompts:
        if prompt.is_noise:
            embedding = noise_embedding(int(prompt.source), clip.encode_text([""]).shape[-1]).to(clip.mean)
        elif prompt.is_image:
            with torch.no_grad():
                image = clip.prepare_image(images[prompt.source].to(clip.mean))
                embedding = clip.encode_image(image)[0]
        else:
            embedding = clip.encode_text([prompt.source])[0]
        targets.append(Target(embedding, prompt.weight, prompt.stop))
    return targets


def run_prompts(config: RunConfig, clips: list[CLIPScorer]) -> list[Prompt]:
    """Every prompt of a run in loss order; with ``config.restate``, as the CLIPs' model pack reads them."""
    prompts = all_prompts(config.prompt, config.image_prompts, config.noise_prompts, config.negative_prompts)
    return read_prompts(prompts, clips) if config.restate else prompts


def read_as(config: RunConfig, clips: list[CLIPScorer]) -> dict[str, str]:
    """Each text prompt of ``config`` that :func:`run_prompts` rewrites, mapped to what it becomes."""
    written = all_prompts(config.prompt, [], [])
    restated = read_prompts(written, clips) if config.restate else written
    return {w.source: r.source for w, r in zip(written, restated, strict=True) if w.source != r.source}


def noise_embedding(seed: int, dim: int) -> torch.Tensor:
    """A unit vector drawn from N(0, I) with its own seed (the same on every device)."""
    return F.normalize(torch.randn(dim, generator=torch.Generator().manual_seed(seed)), dim=0)


def clip_losses(image: torch.Tensor, clip: CLIPScorer, targets: list[Target],
                spec: CutoutSpec, generator: torch.Generator,
                cast=contextlib.nullcontext) -> list[torch.Tensor]:
    """One loss per target: cutouts of ``image`` (fp32) embedded by ``clip`` (under ``cast``)."""
    cuts = make_cutouts(image, spec, generator)
    embeds = clip.encode_image(cuts, cast)
    return [prompt_loss(embeds, t.embedding, t.weight, t.stop) for t in targets]


def cutout_spec(config: RunConfig, clip: CLIPScorer) -> CutoutSpec:
    """The cutout settings of a run, sized for one CLIP model."""
    return CutoutSpec(cut_count=config.cut_count, cut_size=clip.image_size, cut_pow=config.cut_pow,
                      flip=config.augment_flip, rotate=config.augment_rotate,
                      noise=config.augment_noise, min_scale=config.cut_min_scale,
                      overhang=config.cut_overhang,
                      shear=config.augment_shear, perspective=config.augment_perspective,
                      jitter=config.augment_jitter, erase=config.augment_erase, p=config.augment_p)


def learning_rate(config: RunConfig, step: int) -> float:
    """The learning rate of 0-based ``step``: constant, or cosine decay from lr to lr_final at the last step."""
    if config.lr_final is None or config.steps <= 1:
        return config.lr
    progress = step / (config.steps - 1)
    return config.lr_final + (config.lr - config.lr_final) * 0.5 * (1 + math.cos(math.pi * progress))


def resolve_precision(precision: str, device_type: str, *, cpu_bf16: bool = False,
                      cuda_bf16: bool = False, small_model: bool = False) -> str:
    """The precision a run uses: ``auto`` becomes bf16 on a CPU with native bf16 (AVX512-BF16 or
    AMX) unless the models are small, fp32 on other CPUs and on MPS, bf16 or else fp16 on CUDA."""
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16" if cuda_bf16 else "fp16"
    if device_type == "cpu" and cpu_bf16 and not small_model:
        return "bf16"
    return "fp32"


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (the avx512_bf16 or amx_bf16 flag in /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run_precision(precision: str, device: torch.device | str, vqgan: torch.nn.Module | None = None) -> str:
    """:func:`resolve_precision` with this machine's facts; ``vqgan`` decides whether models are small."""
    device = torch.device(device)
    if precision != "auto":
        return precision
    small = vqgan is not None and sum(p.numel() for p in vqgan.parameters()) < SMALL_DECODER_PARAMS
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return resolve_precision(precision, device.type, cpu_bf16=device.type == "cpu" and cpu_has_native_bf16(),
                             cuda_bf16=cuda_bf16, small_model=small)


def autocast_factory(device: torch.device, precision: str):
    """A function returning a fresh autocast context for ``precision`` (a null context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device.type, dtype=PRECISION_DTYPES[precision])


def generate(config: RunConfig, models: Models, *, init_image: torch.Tensor | None = None,
             prompt_images: dict[str, torch.Tensor] | None = None,
             resume: dict[str, Any] | None = None) -> Iterator[Step]:
    """Optimise VQGAN latents towards the prompts; yield a :class:`Step` after every step.

    A ``config.seed`` of None draws a seed, reported as ``Step.seed``. ``prompt_images`` maps each
    image prompt's path to its pixels, (1, 3, H, W) in [0, 1]; ``resume`` is a ``Step.checkpoint()``
    to continue from.
    """
    seed = config.seed if config.seed is not None else secrets.randbelow(2**31)
    generator = seed_everything(seed)
    vqgan, device = models.vqgan, models.device
    precision = run_precision(config.precision, device, vqgan)
    cast = autocast_factory(device, precision)
    prepare_for_device(vqgan, device, precision)
    prompts = run_prompts(config, models.clips)
    targets = [embed_targets(clip, prompts, prompt_images or {}) for clip in models.clips]
    specs = [cutout_spec(config, clip) for clip in models.clips]

    grid = latent_grid(config.size, vqgan)
    image = init_image.to(device) if init_image is not None else None
    z = INIT_METHODS[config.init](vqgan, grid, generator, image).to(device).float()
    z_init = z.detach().clone()
    z.requires_grad_(True)
    optimizer = OPTIMIZERS[config.optimizer]([z], config.lr)
    first = 0
    if resume is not None:
        with torch.no_grad():
            z.copy_(resume["z"])
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        first = int(resume["step"])

    for step in range(first, config.steps):
        optimizer.zero_grad(set_to_none=True)
        image = synth(z, vqgan, cast)
        losses = [loss for clip, t, spec in zip(models.clips, targets, specs, strict=True)
                  for loss in clip_losses(image, clip, t, spec, generator, cast)]
        if config.init_weight > 0:
            losses.append(latent_mse(z, z_init, config.init_weight))
        values = torch.stack([loss.float() for loss in losses])
        total = values.sum()
        total.backward()
        values = torch.cat([total.detach().view(1), values.detach()])
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        optimizer.step()
        clamp_to_codebook(z, vqgan.codebook)
        yield Step(step + 1, config.steps, values, z.detach().clone(), vqgan,
                   snapshot(optimizer, generator), seed, precision)
