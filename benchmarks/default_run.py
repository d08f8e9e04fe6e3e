"""Wall time and peak memory of the README's main job: a whole default `pixgen run`, offline.

Runs ``pixgen --offline run PROMPT --seed 0`` in fresh processes (imports, model loading and
output writing included, as a user sees it) and prints each time, the median and the peak RSS.
The target for the default preset is at most 30 s on 2 CPU cores.

    .venv/bin/python benchmarks/default_run.py [--runs 3] [--prompt "..."] [--preset default]

With ``--trees A B``, each run starts pixgen from the source trees A and B in turn (interleaved,
so both see the same machine load) and the medians are printed per tree.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_run(prompt: str, preset: str, output_dir: str, tree: Path | None = None) -> float:
    """Seconds one `pixgen run` takes from process start to exit (from source ``tree`` if given)."""
    command = [sys.executable, "-m", "pixgen", "--offline", "run", prompt, "--preset", preset, "--seed", "0",
               "-o", output_dir, "--overwrite", "-q"]
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree else None
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env, cwd=tree)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompt", default="a yellow triangle on a purple background")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--trees", type=Path, nargs="+", help="source trees to compare, run in turn")
    args = parser.parse_args()

    if args.trees:
        compare_trees(args)
        return
    with tempfile.TemporaryDirectory() as folder:
        times = [timed_run(args.prompt, args.preset, folder) for _ in range(args.runs)]
    peak_rss_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"preset={args.preset} runs={args.runs} prompt={args.prompt!r}")
    print("wall s: " + ", ".join(f"{t:.1f}" for t in times))
    print(f"median wall s: {statistics.median(times):.1f}  (min {min(times):.1f}, max {max(times):.1f})")
    print(f"peak RSS: {peak_rss_gib:.2f} GiB")


def compare_trees(args: argparse.Namespace) -> None:
    """Interleaved whole runs from each source tree; the median per tree."""
    trees = [tree.resolve() for tree in args.trees]
    times: dict[Path, list[float]] = {tree: [] for tree in trees}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.runs):
            for tree in trees:
                times[tree].append(timed_run(args.prompt, args.preset, folder, tree))
    print(f"preset={args.preset} runs={args.runs} prompt={args.prompt!r}, interleaved")
    for tree, seconds in times.items():
        print(f"{tree}: median {statistics.median(seconds):.2f} s ({', '.join(f'{s:.2f}' for s in seconds)})")


if __name__ == "__main__":
    main()
