"""Fingerprints of what pixgen writes for fixed recipes, to prove a refactoring changed no byte.

Runs, in fresh ``python -m pixgen`` processes from a source tree (default: this one), a default
run, a run with an image prompt, a 6-frame animation and a 2-job batch, all offline with fixed
seeds, then prints one JSON object: the sha256 of every image each wrote. Run it on two trees
(e.g. a ``git worktree`` of the commit before a change, and the change) and compare the outputs:

    .venv/bin/python benchmarks/same_images.py --tree /tmp/before > before.json
    .venv/bin/python benchmarks/same_images.py > after.json && diff before.json after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MANIFEST = """\
defaults: {steps: 30}
jobs:
  - {name: circle, prompt: a red circle on a blue background, seed: 3}
  - {name: square, prompt: a green square on a white background, seed: 4}
"""


def pixgen(tree: Path, scratch: Path, *args: str) -> None:
    """Run one pixgen command from ``tree``'s source, offline and quiet, in ``scratch``: paths are
    relative to it, so the recipes the PNGs record are the same whichever folder it is."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PIXGEN_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "pixgen", *args], cwd=scratch, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def digests(folder: Path, pattern: str) -> dict[str, str]:
    """sha256 of every file under ``folder`` matching ``pattern``, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob(pattern))}


def image_prompt(path: Path) -> Path:
    """A fixed 64x64 PNG to use as an image prompt (a yellow square on purple)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), (110, 40, 160))
    ImageDraw.Draw(image).rectangle((18, 18, 46, 46), fill=(240, 220, 30))
    image.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args()
    tree = args.tree.resolve()
    result = {}
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        pixgen(tree, out, "run", "a yellow triangle on a purple background", "--seed", "0", "-o", "default")
        result["default run"] = digests(out / "default", "image.png")
        image_prompt(out / "prompt.png")
        pixgen(tree, out, "run", "a square", "--image-prompt", "prompt.png:0.5", "--seed", "1", "--steps", "40",
               "-o", "image-prompt")
        result["image prompt"] = digests(out / "image-prompt", "image.png")
        pixgen(tree, out, "animate", "a red circle ^ a blue square", "--frames", "6", "--first-frame-steps", "20",
               "--steps-per-frame", "5", "--zoom", "1.05", "--seed", "2", "-o", "animation")
        result["6-frame animation"] = digests(out / "animation", "frames/*.png")
        (out / "two.yaml").write_text(MANIFEST, encoding="utf-8")
        pixgen(tree, out, "batch", "two.yaml", "-o", "batch")
        result["2-job batch"] = digests(out / "batch", "*/image.png")
    print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
