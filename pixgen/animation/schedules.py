"""Frame schedules for animations: keyframed values and prompt (story) schedules.

- A **keyframe schedule** is a constant (``1.05``, for pan ``2,0``) or ``"0:(1.0), 30:(1.05), 60:(1.0)"``:
  ``frame:(value)`` pairs, frames 0-based, strictly increasing and below the frame count. Between
  two keyframes the value is interpolated linearly; before the first and after the last it is held.
  Pan keyframes hold two values: ``"0:(2,0), 24:(0,-1)"``.
- A **story** ``"a red circle ^ a blue square ^ ..."`` spreads its prompts evenly over the frames.
  A YAML ``schedule:`` list sets frame ranges explicitly (``frames: 0-11``; inclusive) and may give
  each entry a keyframed ``weight``. Each entry is a prompt as in ``pixgen run`` (``text:weight|...``).
- At a change from one entry to the next, the prompt weights **cross-fade** over ``crossfade`` frames:
  at the k-th frame (k = 1..C) of the new entry, new = k/(C+1), old = 1 - k/(C+1).

Every problem is one :class:`~pixgen.errors.ConfigError` line naming the bad value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from pixgen.config import shown
from pixgen.errors import ConfigError
from pixgen.prompts import STORY_SEPARATOR, parse_prompts

# Checking a plan visits every frame's prompt, which costs about segments**2 per frame: these keep it bounded.
MAX_SEGMENTS = 100  # prompts of a story, or entries of a schedule: list
MAX_KEYFRAMES = 1000  # keyframes of one keyframed value
FRAME_DIGITS = 9  # a frame number written with more digits is beyond any animation (MAX_FRAMES)

Keyframes = tuple[tuple[int, tuple[float, ...]], ...]  # ((frame, values), ...), frames increasing
_KEYFRAME = re.compile(r"\s*([^:,()]+?)\s*:\s*\(([^()]*)\)\s*(?:,|$)")


@dataclass(frozen=True)
class Segment:
    """One prompt entry of a schedule: what to ask for over which frames, how strongly."""

    prompt: str  # prompts as in `pixgen run`: "text:weight:stop", several joined with "|"
    start: int  # first frame (0-based)
    end: int  # last frame, inclusive
    weight: Keyframes = ((0, (1.0,)),)  # a multiplier on the prompts' weights, keyframed


def _numbers(text: str, name: str, width: int) -> tuple[float, ...]:
    parts = [part.strip() for part in text.split(",")]
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        raise ConfigError(f"{name}: {shown(text.strip())} is not a number") from None
    if len(values) != width:
        raise ConfigError(f"{name}: expected {width} comma-separated numbers, got {shown(text.strip())}")
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{name}: {shown(text.strip())} must be finite (no nan or inf)")
    return values


def parse_keyframes(spec: Any, name: str, width: int = 1) -> Keyframes:
    """A constant or ``"0:(v), 30:(v)"`` schedule -> keyframes; ``width`` values per keyframe."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = str(spec)
    elif isinstance(spec, (list, tuple)):
        spec = ",".join(str(v) for v in spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{name}: expected a number or keyframes like '0:(1.0), 30:(1.05)', got {shown(spec)}")
    if "(" not in spec and ")" not in spec:
        return ((0, _numbers(spec, name, width)),)
    keyframes, position = [], 0
    text = spec.strip()
    while position < len(text):
        match = _KEYFRAME.match(text, position)
        if match is None:
            rest = shown(text[position:].strip(), 40)
            raise ConfigError(f"{name}: cannot read keyframes {shown(spec, 40)} at {rest}; "
                              "expected 'frame:(value), frame:(value)'")
        frame_text = match.group(1)
        if not re.fullmatch(r"-?\d+", frame_text):
            raise ConfigError(f"{name}: keyframe frame {shown(frame_text, 20)} in {shown(spec, 40)} "
                              "is not a whole number")
        if len(frame_text.lstrip("-")) > FRAME_DIGITS:
            raise ConfigError(f"{name}: keyframe frame {shown(frame_text, 20)} is beyond the last frame")
        if len(keyframes) == MAX_KEYFRAMES:
            raise ConfigError(f"{name}: more than {MAX_KEYFRAMES} keyframes")
        keyframes.append((int(frame_text), _numbers(match.group(2), name, width)))
        position = match.end()
    check_order(keyframes, name)
    return tuple(keyframes)


def check_order(keyframes: list[tuple[int, tuple[float, ...]]] | Keyframes, name: str) -> None:
    """Keyframe frames must be non-negative and strictly increasing."""
    previous = -1
    for frame, _ in keyframes:
        if frame < 0:
            raise ConfigError(f"{name}: keyframe {frame} is negative; frames count from 0")
        if frame <= previous:
            raise ConfigError(f"{name}: keyframes must be in increasing order, but {frame} follows {previous}")
        previous = frame


def check_within(keyframes: Keyframes, frames: int, name: str) -> None:
    """Every keyframe must fall on a frame of the animation (0 .. frames-1)."""
    for frame, _ in keyframes:
        if frame >= frames:
            raise ConfigError(f"{name}: keyframe {frame} is beyond the last frame ({frames - 1}) "
                              f"of a {frames}-frame animation")


def check_positive(keyframes: Keyframes, name: str) -> None:
    """Every keyframed value must be > 0 (a zoom of 0 or less has no meaning)."""
    for frame, values in keyframes:
        if min(values) <= 0:
            raise ConfigError(f"{name}: must be greater than 0, got {min(values):g} at frame {frame}")


def value_at(keyframes: Keyframes, frame: int) -> tuple[float, ...]:
    """The keyframed value at ``frame``: linear between keyframes, held before the first and after the last."""
    if frame <= keyframes[0][0]:
        return keyframes[0][1]
    for (f0, v0), (f1, v1) in zip(keyframes, keyframes[1:], strict=False):
        if frame <= f1:
            t = (frame - f0) / (f1 - f0)
            return tuple(a + (b - a) * t for a, b in zip(v0, v1, strict=True))
    return keyframes[-1][1]


def keyframes_to_text(keyframes: Keyframes) -> str:
    """Keyframes back in the ``"0:(1.0), 30:(1.05)"`` form (exact: floats written with repr)."""
    return ", ".join(f"{frame}:({','.join(repr(v) for v in values)})" for frame, values in keyframes)


def _check_prompt(prompt: Any, where: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(f"{where} is empty: every story prompt needs text")
    try:
        parse_prompts(prompt.strip())
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return prompt.strip()


def spread(count: int, frames: int) -> list[tuple[int, int]]:
    """Split ``frames`` frames into ``count`` contiguous, as-even-as-possible ranges."""
    bounds = [i * frames // count for i in range(count + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(count)]


def parse_story(text: str, frames: int) -> list[Segment]:
    """``"a ^ b ^ c"`` -> segments spread evenly over ``frames`` frames."""
    pieces = text.split(STORY_SEPARATOR)
    if len(pieces) > MAX_SEGMENTS:
        raise ConfigError(f"the story has {len(pieces)} prompts; the limit is {MAX_SEGMENTS}")
    prompts = [_check_prompt(piece, f"story segment {i + 1} of {shown(text, 40)}") for i, piece in enumerate(pieces)]
    if len(prompts) > frames:
        raise ConfigError(f"the story has {len(prompts)} prompts but the animation only {frames} frames")
    return [Segment(p, a, b) for p, (a, b) in zip(prompts, spread(len(prompts), frames), strict=True)]


def _frame_range(value: Any, where: str, frames: int) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        start = end = value
    elif isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*-\s*-?\d+\s*", value):
        digits = re.fullmatch(r"\s*(-?\d+)\s*-\s*(-?\d+)\s*", value).groups()
        if any(len(v.lstrip("-")) > FRAME_DIGITS for v in digits):
            raise ConfigError(f"{where}: frame range {shown(value, 40)} is beyond the last frame ({frames - 1})")
        start, end = (int(v) for v in digits)
    elif isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        start, end = value
    else:
        raise ConfigError(f"{where}: frames must look like 0-11, [0, 11] or 5, got {shown(value, 40)}")
    if start < 0 or end < start:
        raise ConfigError(f"{where}: frame range {shown(start, 20)}-{shown(end, 20)} must start at 0 or later and "
                          "not end before it starts")
    if end >= frames:
        raise ConfigError(f"{where}: frame {shown(end, 20)} is beyond the last frame ({frames - 1}) "
                          f"of a {frames}-frame animation")
    return start, end


def parse_schedule(entries: Any, frames: int) -> list[Segment]:
    """A YAML ``schedule:`` list of {prompt, frames, weight} -> segments (ranges spread evenly if none given)."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError("schedule must be a non-empty list of entries like {prompt: ..., frames: 0-11}")
    if len(entries) > MAX_SEGMENTS:
        raise ConfigError(f"the schedule has {len(entries)} entries; the limit is {MAX_SEGMENTS}")
    if any(not isinstance(e, dict) for e in entries):
        raise ConfigError("every schedule entry must be a mapping like {prompt: ..., frames: 0-11}")
    for i, entry in enumerate(entries):
        unknown = sorted(set(entry) - {"prompt", "frames", "weight"})
        if unknown:
            raise ConfigError(f"schedule entry {i + 1}: unknown key {unknown[0]!r}; "
                              "expected prompt, frames and weight")
    given = ["frames" in e for e in entries]
    if any(given) and not all(given):
        raise ConfigError(f"schedule entry {given.index(False) + 1} has no frames; give every entry "
                          "frames (A-B) or none (then they are spread evenly)")
    if not any(given) and len(entries) > frames:
        raise ConfigError(f"the schedule has {len(entries)} entries but the animation only {frames} frames")
    ranges = ([_frame_range(e["frames"], f"schedule entry {i + 1}", frames) for i, e in enumerate(entries)]
              if all(given) else spread(len(entries), frames))
    segments = []
    for i, (entry, (start, end)) in enumerate(zip(entries, ranges, strict=True)):
        where = f"schedule entry {i + 1}"
        weight = parse_keyframes(entry.get("weight", 1.0), f"{where} weight")
        check_within(weight, frames, f"{where} weight")
        segments.append(Segment(_check_prompt(entry.get("prompt"), f"{where} prompt"), start, end, weight))
    check_coverage(segments, frames)
    return segments


def check_coverage(segments: list[Segment], frames: int) -> None:
    """Every frame needs at least one prompt."""
    covered = set()
    for segment in segments:
        covered.update(range(segment.start, segment.end + 1))
    missing = [f for f in range(frames) if f not in covered]
    if missing:
        raise ConfigError(f"frame {missing[0]} has no prompt: the schedule's frame ranges must cover "
                          f"frames 0-{frames - 1}")


def mix_weights(segments: list[Segment], frame: int, crossfade: int) -> list[float]:
    """How much each segment counts at ``frame`` (0..1), cross-fading into a segment that follows on directly."""
    mixes = []
    for segment in segments:
        mix = 1.0 if segment.start <= frame <= segment.end else 0.0
        for other in segments:
            fade = min(crossfade, other.end - other.start)  # the follower's last frame is its own
            if other.start == segment.end + 1 and segment.end < frame <= segment.end + fade:
                mix = max(mix, 1 - (frame - segment.end) / (fade + 1))  # fading out
            if segment.start == other.end + 1 and segment.start <= frame < segment.start + fade:
                mix = min(mix, (frame - segment.start + 1) / (fade + 1))  # fading in
        mixes.append(mix)
    return mixes


def frame_prompt(segments: list[Segment], frame: int, crossfade: int) -> str:
    """The prompts of ``frame`` with cross-faded, keyframed weights: ``"a:0.7|b:0.3"``."""
    parts = []
    for segment, mix in zip(segments, mix_weights(segments, frame, crossfade), strict=True):
        scale = mix * value_at(segment.weight, frame)[0]
        for prompt in parse_prompts(segment.prompt) if scale else []:
            weight = prompt.weight * scale
            if weight:
                stop = "" if prompt.stop is None else f":{prompt.stop!r}"
                parts.append(f"{prompt.source}:{weight!r}{stop}")
    if not parts:
        raise ConfigError(f"frame {frame} has no prompt with a non-zero weight; check the schedule's weights")
    return "|".join(parts)
