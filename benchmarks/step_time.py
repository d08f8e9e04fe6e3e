"""Seconds per optimisation step: pixgen (default precision and fp32) against the reference loop.

The classic config with random weights (no download): the ImageNet f16 16384 VQGAN decoding
256x256, open_clip ViT-B/32, 32 cutouts, Adam 0.1. The three variants run in one process,
interleaved step by step (pixgen-default, pixgen-fp32, reference, repeat), so background load
hits all alike; the ratios are what to compare across machines. Prints per-variant medians with
min/max, the ratios to the reference, the FLOPs of a step and the achieved GFLOP/s against a
measured matmul peak, and each variant's peak RSS measured alone in a fresh process (VmHWM).

    .venv/bin/python benchmarks/step_time.py [--rounds 5] [--size 256] [--cut-count 32] [--no-rss]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_loop import ReferenceLoop, stock_vqgan  # noqa: E402

from pixgen.config import RunConfig, validate  # noqa: E402
from pixgen.engine.loop import Models, generate, run_precision  # noqa: E402
from pixgen.models.clip import CLIPScorer  # noqa: E402
from pixgen.models.factory import OPENAI_MEAN, OPENAI_STD  # noqa: E402
from pixgen.models.inference import linear  # noqa: E402
from pixgen.models.registry import load_registry  # noqa: E402
from pixgen.models.vqgan import VQGAN, VQGANConfig  # noqa: E402
from pixgen.pipeline.devices import pick_device  # noqa: E402

VARIANTS = ("pixgen-default", "pixgen-fp32", "reference")
PROMPT = "a watercolour painting of a lighthouse"


def build(device: torch.device, variants: tuple[str, ...], size: int, cut_count: int) -> dict:
    """A step function per variant, all on the same random-weight VQGAN and CLIP weights."""
    import open_clip

    torch.manual_seed(0)
    entry = load_registry().get("vqgan", "vqgan_imagenet_f16_16384")
    vqgan = VQGAN(VQGANConfig.from_dict(entry.architecture)).eval().requires_grad_(False).to(device)
    logging.disable(logging.WARNING)
    stock = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval().requires_grad_(False).to(device)
    tokenizer = open_clip.get_tokenizer("ViT-B-32-quickgelu")
    steppers = {}
    pixgen_variants = [v for v in variants if v.startswith("pixgen")]
    if pixgen_variants:  # pixgen rewrites its copy in place; the reference keeps the stock module
        model = copy.deepcopy(stock) if "reference" in variants else stock
        clip = CLIPScorer(model, tokenizer, "ViT-B-32 (random)", OPENAI_MEAN, OPENAI_STD).to(device)
        models = Models(vqgan, [clip], device)
        for name in pixgen_variants:
            config = RunConfig(prompt=PROMPT, size=[size, size], steps=100_000, seed=0, cut_count=cut_count,
                               precision="auto" if name == "pixgen-default" else "fp32",
                               vqgan="vqgan_imagenet_f16_16384", clip=["ViT-B-32-openai"], device=str(device))
            validate(config)
            steps = generate(config, models)
            steppers[name] = lambda steps=steps: next(steps)
    if "reference" in variants:
        with torch.no_grad():
            target = torch.nn.functional.normalize(stock.encode_text(tokenizer([PROMPT]).to(device)).float(), dim=-1)
        reference_vqgan = stock_vqgan(vqgan, copy_first=bool(pixgen_variants))
        loop = ReferenceLoop(reference_vqgan, stock, OPENAI_MEAN, OPENAI_STD, [target[0]], (size, size), cut_count)
        steppers["reference"] = loop.step
    return {"steppers": steppers, "vqgan": vqgan}


def timed(step, device: torch.device) -> float:
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def step_flops(step) -> float:
    """FLOPs of one step (matmuls, convolutions, attention; forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> tuple[float, float]:
    """Best GFLOP/s of an n x n matmul in ``dtype``: as ``a @ b``, and as pixgen's 1x1-conv linear."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    plain = min(timed(lambda: a @ b, device) for _ in range(repeats))
    conv = min(timed(lambda: linear(a, b, None), device) for _ in range(repeats))
    return 2 * n**3 / plain / 1e9, 2 * n**3 / conv / 1e9


def child_rss(variant: str, args: argparse.Namespace) -> dict:
    """Peak RSS (VmHWM) of ``variant`` run alone for two steps in a fresh process."""
    command = [sys.executable, __file__, "--rss-child", variant, "--size", str(args.size),
               "--cut-count", str(args.cut_count), "--device", args.device]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def rss_child(variant: str, args: argparse.Namespace) -> None:
    device = pick_device(args.device)
    step = build(device, (variant,), args.size, args.cut_count)["steppers"][variant]
    for _ in range(2):
        step()
    status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    hwm = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM")), 0)
    cuda = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    print(json.dumps({"vmhwm": hwm, "cuda": cuda}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--cut-count", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-rss", action="store_true", help="skip the fresh-process peak RSS runs")
    parser.add_argument("--rss-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args)
        return

    device = pick_device(args.device)
    built = build(device, VARIANTS, args.size, args.cut_count)
    steppers = built["steppers"]
    default_precision = run_precision("auto", device, built["vqgan"])
    flops = {name: step_flops(step) for name, step in steppers.items()}  # also the warm-up step
    times = {name: [] for name in steppers}
    for _ in range(args.rounds):
        for name, step in steppers.items():
            times[name].append(timed(step, device))
    peaks = {dtype: matmul_peak(device, dtype) for dtype in (torch.float32, torch.bfloat16)}

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device={device} threads={torch.get_num_threads()} size={args.size} cutouts={args.cut_count} "
          f"rounds={args.rounds} default precision={default_precision} load(1 min)={load:.2f}")
    print("matmul peak 2048^3 (a @ b / as a 1x1 conv): " + ", ".join(
        f"{name} {peaks[dtype][0]:.0f} / {peaks[dtype][1]:.0f} GFLOP/s"
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))))
    reference = statistics.median(times["reference"])
    for name, values in times.items():
        median = statistics.median(values)
        precision = {"pixgen-default": default_precision, "pixgen-fp32": "fp32", "reference": "fp32"}[name]
        peak = max(peaks[torch.bfloat16 if precision == "bf16" else torch.float32])
        achieved = flops[name] / median / 1e9
        print(f"{name:15s} median {median:6.3f} s/step (min {min(values):.3f}, max {max(values):.3f})  "
              f"{1 / median:5.2f} it/s  ratio to reference {median / reference:.2f}x  "
              f"{flops[name] / 1e9:6.0f} GFLOP/step  {achieved:5.0f} GFLOP/s = {achieved / peak:.0%} of the best "
              f"{precision} matmul")
    if not args.no_rss:
        for name in VARIANTS:
            rss = child_rss(name, args)
            extra = f", CUDA peak {rss['cuda'] / 2**30:.2f} GiB" if device.type == "cuda" else ""
            print(f"{name:15s} peak RSS alone {rss['vmhwm'] / 2**30:.2f} GiB{extra}")


if __name__ == "__main__":
    main()
