"""A rough estimate of what one optimisation step allocates, checked before the first step.

The estimate counts the activations kept for the backward pass: the decoder's resolution levels
(about ten tensors of each level's size per ResNet block) and each CLIP's per-cutout activations.
On the standard f16 VQGAN at 256x256 with ViT-B/32 and 32 cutouts it says about 3.2 GB, where
the measured peak is about 4.2 GB including the weights. It is meant to refuse the absurd (a
100-megapixel request), not to fit a run to the last megabyte.
"""

from __future__ import annotations

import os

import torch

from pixgen.config import RunConfig
from pixgen.errors import OutOfMemory

FLOAT_BYTES = 4
TENSORS_PER_BLOCK = 10  # activations a decoder ResNet block keeps for backward
TENSORS_PER_LAYER = 30  # activations a transformer layer keeps per token and channel
CNN_BYTES_PER_PIXEL = 800  # a CNN image tower, per input pixel of one cutout


def decoder_bytes(config: RunConfig, ddconfig: dict, downsample: int) -> int:
    """Activation bytes of one decode at ``config.size`` (kept for backward)."""
    width, height = config.size
    ch, mult, blocks = ddconfig["ch"], ddconfig["ch_mult"], ddconfig["num_res_blocks"] + 1
    cells = max(width // downsample, 1) * max(height // downsample, 1)
    total = 0
    for level in range(len(mult)):
        scale = 4 ** (len(mult) - 1 - level)
        total += cells * scale * ch * mult[level] * blocks * TENSORS_PER_BLOCK
    return total * FLOAT_BYTES


def clip_bytes_per_cutout(clip) -> int:
    """Activation bytes of one cutout through a CLIP image tower (kept for backward)."""
    visual, size = clip.model.visual, clip.image_size
    transformer = getattr(visual, "transformer", None)
    if transformer is not None and hasattr(transformer, "width"):
        patch = getattr(visual, "patch_size", (32, 32))
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        tokens = (size // patch) ** 2 + 1
        return tokens * transformer.width * transformer.layers * TENSORS_PER_LAYER * FLOAT_BYTES
    return size * size * CNN_BYTES_PER_PIXEL


def estimate_step_bytes(config: RunConfig, models) -> int:
    """Bytes one step allocates beyond the loaded weights (a rough upper estimate)."""
    vq = models.vqgan.config
    total = decoder_bytes(config, vq.ddconfig, vq.downsample_factor)
    total += sum(config.cut_count * clip_bytes_per_cutout(clip) for clip in models.clips)
    return total


def weight_bytes(models) -> int:
    """Bytes of the loaded models' weights (parameters and buffers)."""
    modules = (models.vqgan, *models.clips)
    return sum(t.numel() * t.element_size() for module in modules for t in (*module.parameters(), *module.buffers()))


def run_bytes(config: RunConfig, models) -> int:
    """Bytes one run holds at its peak, roughly: its models' weights and one step (estimate_step_bytes)."""
    return weight_bytes(models) + estimate_step_bytes(config, models)


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``: VRAM for CUDA, MemAvailable for the CPU; None when unknown."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def check_memory(config: RunConfig, models) -> None:
    """Refuse a run whose estimated step memory exceeds what the device has free."""
    need, free = estimate_step_bytes(config, models), available_bytes(models.device)
    if free is not None and need > free:
        raise OutOfMemory(f"a {config.size[0]}x{config.size[1]} run with {config.cut_count} cutouts needs about "
                          f"{need / 2**30:.1f} GiB, but {models.device.type} has {free / 2**30:.1f} GiB free; "
                          "use a smaller --size or fewer --cut-count")


def out_of_memory_message(config: RunConfig, device: torch.device) -> str:
    """The one line shown when a step ran out of memory after all."""
    return (f"out of {'GPU ' if device.type == 'cuda' else ''}memory in a {config.size[0]}x{config.size[1]} "
            f"step with {config.cut_count} cutouts; use a smaller --size or fewer --cut-count")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether an exception is an allocation failure (CPU or CUDA)."""
    if isinstance(err, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)
