"""The prompt grammar: ``text:weight:stop``, several prompts joined by ``|``, image prompts.

- ``weight`` defaults to 1; a negative weight pushes the image away from the prompt.
- ``stop`` (optional) ends a prompt's pull or push, as in the VQGAN-CLIP tools users come from:
  a positive prompt stops pulling once the image is closer than ``stop`` to it; a negative prompt
  stops pushing once the image is at least ``stop`` away from it. Distances are the spherical
  distance of the loss, between 0 and about 4.93 (pi**2 / 2).
- The text itself may contain colons; only up to two trailing numeric fields are read.
- Negative prompts (``negative_prompts``, ``--negative``) are texts kept apart from the prompt so a
  preset can carry them: each pushes the image away with its weight's magnitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from pixgen.errors import ConfigError

STORY_SEPARATOR = "^"


@dataclass(frozen=True)
class Prompt:
    """One prompt: what to match (text or an image path), how much, and when to stop."""

    source: str  # the text, or the path of an image prompt
    weight: float = 1.0  # negative weights push the image away
    stop: float | None = None  # see the module docstring; None: never stops
    is_image: bool = False
    is_noise: bool = False  # a seeded random embedding; ``source`` is the seed


def _trailing_numbers(spec: str) -> tuple[str, list[float]]:
    """Split ``spec`` into its head and every trailing ``:number`` field."""
    numbers: list[float] = []
    head = spec
    while ":" in head:
        rest, _, tail = head.rpartition(":")
        try:
            value = float(tail)
        except ValueError:
            break
        numbers.insert(0, value)
        head = rest
    return head.strip(), numbers


def parse_prompt(spec: str, is_image: bool = False) -> Prompt:
    """Parse ``text[:weight[:stop]]``; the text itself may contain colons."""
    source, numbers = _trailing_numbers(spec.strip())
    if not source:
        raise ConfigError(f"empty prompt in {spec!r}: expected text[:weight[:stop]]")
    if len(numbers) > 2:
        raise ConfigError(f"too many ':' fields in prompt {spec!r}: expected text[:weight[:stop]]")
    weight = numbers[0] if numbers else 1.0
    stop = numbers[1] if len(numbers) > 1 else None
    if not math.isfinite(weight) or weight == 0:
        raise ConfigError(f"prompt weight must be a finite non-zero number, got {weight} in {spec!r}")
    if stop is not None and not (math.isfinite(stop) and stop >= 0):
        raise ConfigError(f"prompt stop must be a finite number >= 0, got {stop} in {spec!r}")
    return Prompt(source, weight, stop, is_image)


def parse_prompts(text: str) -> list[Prompt]:
    """Parse several text prompts joined by ``|`` (empty pieces are skipped, but not all of them)."""
    if STORY_SEPARATOR in text:
        raise ConfigError(f"'{STORY_SEPARATOR}' separates story prompts over the frames of an animation "
                          f"(pixgen animate); in one image, combine prompts with '|': {text!r}")
    pieces = [part for part in text.split("|") if part.strip()]
    if text.strip() and not pieces:
        raise ConfigError(f"prompt {text!r} holds no text between its '|' separators")
    return [parse_prompt(part) for part in pieces]


def parse_image_prompts(specs: list[str]) -> list[Prompt]:
    """Parse ``path[:weight[:stop]]`` image prompts."""
    return [parse_prompt(spec, is_image=True) for spec in specs]


def parse_noise_prompts(specs: list[str]) -> list[Prompt]:
    """Parse ``SEED[:WEIGHT]`` noise prompts: a seeded random unit embedding pulled (or pushed) with WEIGHT."""
    prompts = []
    for spec in specs:
        seed, sep, weight_text = str(spec).strip().partition(":")
        try:
            weight = float(weight_text) if sep else 1.0
            number = int(seed)
        except ValueError:
            raise ConfigError(f"noise prompt {str(spec)[:40]!r} must look like SEED[:WEIGHT], e.g. 42:0.5") from None
        if not 0 <= number < 2**63 or not math.isfinite(weight) or weight == 0:
            raise ConfigError(f"noise prompt {str(spec)[:40]!r}: the seed must be between 0 and 2**63 - 1 and the "
                              "weight a finite non-zero number")
        prompts.append(Prompt(str(number), weight, None, is_noise=True))
    return prompts


def parse_negative_prompts(specs: list[str]) -> list[Prompt]:
    """Parse ``text[:weight[:stop]]`` negative prompts: texts the image is pushed away from, as hard as
    ``|weight|`` (the sign is ignored: a negative prompt always pushes)."""
    for spec in specs:
        if STORY_SEPARATOR in spec or "|" in spec:
            raise ConfigError(f"negative prompt {spec!r}: give one text per negative prompt, without '|' or '^'")
    return [replace(prompt, weight=-abs(prompt.weight)) for prompt in map(parse_prompt, specs)]


def all_prompts(text: str, image_specs: list[str], noise_specs: list[str],
                negative_specs: list[str] = ()) -> list[Prompt]:
    """Every prompt of a run, in loss order: text, then image, then noise, then negative prompts."""
    return (parse_prompts(text) + parse_image_prompts(image_specs) + parse_noise_prompts(noise_specs)
            + parse_negative_prompts(list(negative_specs)))
