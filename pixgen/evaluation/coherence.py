"""Temporal coherence of an animation: how much it flickers, how often a pack's judge finds it on prompt.

Two numbers per animation folder: the mean absolute pixel change between consecutive frames (0-1
scale; lower is steadier) and the share of frames the judge reads as that frame's prompt (the
heaviest prompt of the frame, so cross-fades count towards whichever prompt dominates).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pixgen.errors import InputError
from pixgen.models.packs import EvalWorld
from pixgen.pipeline.output import read_pixels, read_png_text
from pixgen.prompts import parse_prompts


def frame_changes(frames: list[np.ndarray]) -> list[float]:
    """Mean absolute change between consecutive (H, W, 3) uint8 frames, on a 0-1 scale."""
    return [float(np.abs(b.astype(np.float32) - a.astype(np.float32)).mean() / 255)
            for a, b in zip(frames, frames[1:], strict=False)]


def dominant_prompt(prompt: str) -> str:
    """The text of the heaviest positive prompt of ``"a:0.7|b:0.3"``."""
    return max(parse_prompts(prompt), key=lambda p: p.weight).source


def read_animation_frames(folder: Path) -> tuple[list[np.ndarray], list[str]]:
    """An animation folder's frames and each frame's prompt (from its PNG recipe)."""
    paths = sorted((Path(folder) / "frames").glob("frame-*.png"))
    if not paths:
        raise InputError(f"{folder} holds no animation frames (frames/frame-NNNNN.png)")
    frames = [read_pixels(p, "animation frame") for p in paths]
    return frames, [read_png_text(p).get("prompt", "") for p in paths]


def coherence(frames: list[np.ndarray], prompts: list[str], judge, world: EvalWorld) -> dict[str, float]:
    """Mean frame-to-frame change and the share of frames the judge reads as their dominant prompt."""
    images = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    seen = judge.predict(images)
    right = []
    for verdict, prompt in zip(seen, prompts, strict=True):
        expected = world.expected(dominant_prompt(prompt))
        right.append(all(verdict[a] == expected[a] for a in world.attributes if expected.get(a)))
    changes = frame_changes(frames)
    return {"frames": len(frames), "mean_change": float(np.mean(changes)) if changes else 0.0,
            "on_prompt": sum(right) / len(right)}
