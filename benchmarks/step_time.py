"""Seconds per optimisation step and peak memory at the standard size.

Builds the standard ImageNet f16 16384 VQGAN architecture and open_clip ViT-B/32 with random
weights (no download), then times pixgen's engine at 256x256 with 32 cutouts and Adam.

    .venv/bin/python benchmarks/step_time.py [--steps 5] [--precision fp32|bf16] [--size 256]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import open_clip
import torch

from pixgen.config import RunConfig, validate
from pixgen.devices import pick_device
from pixgen.engine import Models, generate
from pixgen.models.clip import CLIPScorer
from pixgen.models.factory import OPENAI_MEAN, OPENAI_STD
from pixgen.models.vqgan import VQGAN, VQGANConfig
from pixgen.registry import load_registry


def standard_models(device: torch.device) -> Models:
    """Random-weight standard VQGAN (f16, 16384 codes) and ViT-B/32."""
    torch.manual_seed(0)
    entry = load_registry().get("vqgan", "vqgan_imagenet_f16_16384")
    vqgan = VQGAN(VQGANConfig.from_dict(entry.architecture)).eval().requires_grad_(False).to(device)
    clip_model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    clip = CLIPScorer(clip_model, open_clip.get_tokenizer("ViT-B-32-quickgelu"), "ViT-B-32 (random)",
                      OPENAI_MEAN, OPENAI_STD).to(device)
    return Models(vqgan, [clip], device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps (one more runs as warm-up)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--cut-count", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = pick_device(args.device)
    models = standard_models(device)
    config = RunConfig(prompt="a watercolour painting of a lighthouse", size=[args.size, args.size],
                       steps=args.steps + 1, seed=0, cut_count=args.cut_count, precision=args.precision,
                       vqgan="vqgan_imagenet_f16_16384", clip=["ViT-B-32-openai"], device=str(device))
    validate(config)
    times, start = [], time.perf_counter()
    for _ in generate(config, models):
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - start)
        start = now
    timed = times[1:]  # the first step includes one-off allocation and kernel selection
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"device={device} threads={torch.get_num_threads()} size={args.size} cutouts={args.cut_count} "
          f"precision={args.precision} steps={len(timed)}")
    print(f"median s/step: {statistics.median(timed):.3f}  (min {min(timed):.3f}, max {max(timed):.3f})")
    print(f"peak RSS: {peak_rss_gib:.2f} GiB")
    if device.type == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
