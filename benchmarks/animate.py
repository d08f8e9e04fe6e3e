"""Seconds per frame of a default-preset animation, and the share of time not spent optimising.

Renders the issue's 24-frame story ("a red circle on a blue background ^ a yellow square on a
green background", zoom 1.02) in this process, models loaded beforehand, and times every engine
step. Optimisation = the engine's steps; everything else (moving and encoding the previous frame,
embedding the prompts, decoding, PNG/state writing, the MP4 and GIF at the end) is overhead,
which should stay under 10 % of the total.

    .venv/bin/python benchmarks/animate.py [--frames 24] [--steps-per-frame 30] [--preset default]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import pixgen.animation.animate as animate_module
from pixgen.animation.animate import animate, animation_settings
from pixgen.config import resolve_config
from pixgen.pipeline.runner import load_models

STORY = "a red circle on a blue background ^ a yellow square on a green background"


def timing_generate(real, first_steps: list[float], steps: list[float]):
    """Wrap the engine's generate so each step's time is recorded (a frame's first step separately)."""
    def generate(*args, **kwargs):
        iterator, first = real(*args, **kwargs), True
        while True:
            start = time.perf_counter()
            try:
                step = next(iterator)
            except StopIteration:
                return
            (first_steps if first else steps).append(time.perf_counter() - start)
            first = False
            yield step
    return generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--steps-per-frame", type=int, default=30)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--zoom", default="1.02")
    args = parser.parse_args()

    plan = animation_settings(STORY, frames=args.frames, steps_per_frame=args.steps_per_frame, zoom=args.zoom)
    config = resolve_config(args.preset, flags={"prompt": plan.segments[0].prompt, "seed": 0})
    start = time.perf_counter()
    load_models(config)
    load_seconds = time.perf_counter() - start

    first_steps: list[float] = []
    steps: list[float] = []
    frame_seconds: list[float] = []
    animate_module.generate = timing_generate(animate_module.generate, first_steps, steps)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        animate(config, plan, folder, on_frame=lambda done: frame_seconds.append(done.seconds))
        total = time.perf_counter() - start
    step_seconds = statistics.median(steps)
    # a frame's first step also embeds the prompts and encodes the start image: count one step of it
    optimising = sum(steps) + step_seconds * len(first_steps)
    overhead = total - optimising
    print(f"preset={args.preset} frames={args.frames} steps/frame={args.steps_per_frame} "
          f"first frame={config.steps} steps zoom={args.zoom}")
    print(f"model loading (before timing): {load_seconds:.1f} s")
    print(f"total {total:.1f} s; frame 0 {frame_seconds[0]:.1f} s; later frames median "
          f"{statistics.median(frame_seconds[1:] or frame_seconds):.2f} s/frame")
    print(f"median step {step_seconds * 1000:.0f} ms; optimising {optimising:.1f} s; "
          f"not optimising {overhead:.1f} s = {overhead / total:.1%} of the total (target < 10 %)")


if __name__ == "__main__":
    main()
