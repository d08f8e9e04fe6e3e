"""The prompt grammar: ``text:weight:stop``, several prompts joined by ``|``, image prompts."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pixgen.errors import ConfigError


@dataclass(frozen=True)
class Prompt:
    """One prompt: what to match (text or an image path), how much, and when to stop pulling."""

    source: str  # the text, or the path of an image prompt
    weight: float = 1.0  # negative weights push the image away
    stop: float = -math.inf  # distance below which this prompt stops contributing gradient
    is_image: bool = False


def _split_weight_stop(spec: str) -> tuple[str, float, float]:
    """Peel up to two trailing ``:number`` fields off ``spec``."""
    numbers: list[float] = []
    head = spec
    while len(numbers) < 2 and ":" in head:
        rest, _, tail = head.rpartition(":")
        try:
            value = float(tail)
        except ValueError:
            break
        numbers.insert(0, value)
        head = rest
    weight = numbers[0] if numbers else 1.0
    stop = numbers[1] if len(numbers) > 1 else -math.inf
    return head.strip(), weight, stop


def parse_prompt(spec: str, is_image: bool = False) -> Prompt:
    """Parse ``text[:weight[:stop]]``; the text itself may contain colons."""
    source, weight, stop = _split_weight_stop(spec.strip())
    if not source:
        raise ConfigError(f"empty prompt in {spec!r}")
    if not math.isfinite(weight) or weight == 0:
        raise ConfigError(f"prompt weight must be a non-zero number, got {weight} in {spec!r}")
    return Prompt(source, weight, stop, is_image)


def parse_prompts(text: str) -> list[Prompt]:
    """Parse several text prompts joined by ``|``."""
    return [parse_prompt(part) for part in text.split("|") if part.strip()]


def parse_image_prompts(specs: list[str]) -> list[Prompt]:
    """Parse ``path[:weight[:stop]]`` image prompts."""
    return [parse_prompt(spec, is_image=True) for spec in specs]
