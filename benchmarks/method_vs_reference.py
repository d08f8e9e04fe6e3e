"""pixgen's default method against the classic loop of the VQGAN-CLIP generate.py family, judged alike.

For each held-out shapes-world prompt and seed, renders one image with pixgen's default preset and
one with the reference loop (``benchmarks/reference_loop.py``: 32 pooled whole-image views with
kornia-style augmentations, Adam at generate.py's default lr 0.1, the same steps and seed, the
preset's VQGAN),
then asks the independent shapes-judge what each shows. Prints the strict and forced-choice
all-correct rates and the median seconds per image of both.

The generate.py family guides with one CLIP model, so the reference uses the preset's first one
(``shapes-clip``); pixgen's default guides with all of its CLIPs. Both run fp32 on the CPU.

    .venv/bin/python benchmarks/method_vs_reference.py [--seeds 1] [--limit 24] [--preset default] [--steps N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch
from reference_loop import ReferenceLoop, stock_vqgan

from pixgen.config import resolve_config
from pixgen.engine.ops import clamp_with_grad, vector_quantize
from pixgen.evaluation.fidelity import Verdict, accuracy, final_image
from pixgen.models.factory import load_judge_model
from pixgen.models.registry import load_registry
from pixgen.packs.shapes.world import held_out_prompts, parse_caption
from pixgen.pipeline.runner import load_models

REFERENCE_CUTS = 32  # generate.py's default cutn
REFERENCE_LR = 0.1  # generate.py's default step size


def reference_image(config, models, cuts: int = REFERENCE_CUTS, lr: float = REFERENCE_LR) -> torch.Tensor:
    """The final image of the reference loop for ``config`` (prompt, seed, size, steps), in [0, 1]."""
    clip = models.clips[0]
    target = clip.encode_text([config.prompt])[0]
    vqgan = stock_vqgan(models.vqgan)
    loop = ReferenceLoop(vqgan, clip.model, clip.mean.flatten().tolist(), clip.std.flatten().tolist(), [target],
                         tuple(config.size), cuts, seed=config.seed, lr=lr)
    for _ in range(config.steps):
        loop.step()
    with torch.no_grad():
        return clamp_with_grad(vqgan.decode(vector_quantize(loop.z, vqgan.codebook)).add(1).div(2), 0, 1).cpu()


def judged(prompt: str, seed: int, image: torch.Tensor, seconds: float, judge) -> Verdict:
    """What the judge reads in ``image``, as eval records it (no guiding-CLIP reading here)."""
    (strict,), (forced,) = judge.predict_both(image)
    return Verdict(prompt, seed, "", parse_caption(prompt), strict, forced, dict(strict), seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="only the first N held-out prompts")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    parser.add_argument("--reference-lr", type=float, default=REFERENCE_LR, help="the reference loop's Adam lr")
    args = parser.parse_args()

    prompts = held_out_prompts()[:args.limit]
    base = resolve_config(args.preset, flags={"prompt": prompts[0], **({"steps": args.steps} if args.steps else {})})
    models, _ = load_models(base)
    judge = load_judge_model("shapes-judge", load_registry()).module
    results: dict[str, list[Verdict]] = {"pixgen default": [], "reference loop": []}
    for prompt in prompts:
        for seed in range(args.seeds):
            config = replace(base, prompt=prompt, seed=seed)
            for method, render in (("pixgen default", lambda c: final_image(c, models)),
                                   ("reference loop", lambda c: reference_image(c, models, lr=args.reference_lr))):
                start = time.perf_counter()
                image = render(config)
                verdict = judged(prompt, seed, image, time.perf_counter() - start, judge)
                results[method].append(verdict)
                mark = "ok   " if all(verdict.correct("judge").values()) else "WRONG"
                print(f"{method:15s} {mark} {prompt} (seed {seed}): {' '.join(verdict.judge.values())} "
                      f"[{verdict.seconds:.1f} s]", flush=True)
    print(f"\npreset={args.preset} steps={base.steps} lr={base.lr} reference-lr={args.reference_lr} "
          f"prompts={len(prompts)} seeds={args.seeds} threads={torch.get_num_threads()}")
    print(f"{'method':15s} {'strict':>7s} {'forced':>7s} {'s/image':>8s}")
    for method, verdicts in results.items():
        strict, forced = accuracy(verdicts, "judge")["all"], accuracy(verdicts, "judge_forced")["all"]
        print(f"{method:15s} {strict:7.1%} {forced:7.1%} {statistics.median(v.seconds for v in verdicts):8.2f}")


if __name__ == "__main__":
    main()
