"""`pixgen batch` versus a loop of `pixgen run` processes: 12 default jobs (4 prompts x 3 seeds).

Both render the same 12 images with the default preset, offline, in fresh folders. The batch's
per-job overhead is its wall time minus the time its jobs ran (the sum of their seconds in
``batch.jsonl``, divided by the worker count with ``--jobs``), divided by the number of jobs.
Targets: under 1 s per job, and the batch at least 30 % faster than the loop.

    .venv/bin/python benchmarks/batch.py [--preset default] [--steps N] [--jobs N] [--no-loop]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROMPTS = ["a red circle on a blue background", "a green square on a white background",
           "a yellow triangle on a purple background", "a blue circle on an orange background"]
SEEDS = [0, 1, 2]


def run_batch(folder: Path, preset: str, steps: int | None, jobs: int = 1) -> tuple[float, float]:
    """Wall seconds of one `pixgen batch`, and the sum of its jobs' logged seconds."""
    defaults = {"preset": preset, **({"steps": steps} if steps else {})}
    manifest = folder / "bench.yaml"
    manifest.write_text(yaml.safe_dump({"defaults": defaults, "matrix": {"prompt": PROMPTS, "seed": SEEDS}}))
    command = [sys.executable, "-m", "pixgen", "--offline", "batch", str(manifest), "-o", str(folder / "batch"), "-q",
               "--jobs", str(jobs)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (folder / "batch" / "batch.jsonl").read_text().splitlines()]
    return wall, sum(r["seconds"] for r in records if r["event"] == "end")


def run_loop(folder: Path, preset: str, steps: int | None) -> float:
    """Wall seconds of 12 separate `pixgen run` processes, one after another."""
    start = time.perf_counter()
    for i, prompt in enumerate(PROMPTS):
        for seed in SEEDS:
            command = [sys.executable, "-m", "pixgen", "--offline", "run", prompt, "--preset", preset,
                       "--seed", str(seed), "-o", str(folder / f"run-{i}-{seed}"), "-q"]
            subprocess.run(command + (["--steps", str(steps)] if steps else []), check=True,
                           stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    parser.add_argument("--jobs", type=int, default=1, help="pixgen batch --jobs (worker processes)")
    parser.add_argument("--no-loop", action="store_true", help="time only the batch")
    args = parser.parse_args()

    jobs = len(PROMPTS) * len(SEEDS)
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        batch_wall, optimising = run_batch(folder, args.preset, args.steps, args.jobs)
        loop_wall = None if args.no_loop else run_loop(folder, args.preset, args.steps)
    overhead = (batch_wall - optimising / args.jobs) / jobs  # with N workers, N jobs run at once
    print(f"preset={args.preset} jobs={jobs} ({len(PROMPTS)} prompts x {len(SEEDS)} seeds)")
    print(f"pixgen batch --jobs {args.jobs}: {batch_wall:.1f} s wall, {optimising:.1f} s in the jobs, "
          f"per-job overhead {overhead:.2f} s (target < 1 s)")
    if loop_wall is None:
        return
    print(f"{jobs} x pixgen run: {loop_wall:.1f} s wall")
    print(f"batch is {1 - batch_wall / loop_wall:.1%} faster than the loop (target >= 30 %)")


if __name__ == "__main__":
    main()
