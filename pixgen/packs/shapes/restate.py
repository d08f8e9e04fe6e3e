"""Restating a prompt in the bundled models' caption wording, as their own text towers read it.

The bundled shapes-world CLIPs read ordinary phrasing well: jointly, their text towers place 191
of the 192 evaluation paraphrases (``paraphrases``) nearest the caption of the right combination.
But an optimisation pulled towards the embedding of a wording they were never trained on finds
messier images than one pulled towards their own caption wording (docs/quality.md, "Free
phrasing"). So, when every guiding CLIP is a bundled one, each positive text prompt that names a
shape or colour is replaced by the caption of the world's grammar, in its canonical wording
(``world.describe`` and ``world.describe_crowd`` without a random generator), that the guides find
nearest: the sum over the guides of the cosine between the two text embeddings. The grammar's
captions are the only texts offered; the evaluation wordings never are. Weights, stops, negative,
image and noise prompts stay as written.
"""

from __future__ import annotations

import functools
import itertools
import re
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING

from pixgen.packs.shapes.world import COLOUR_NAMES, CROWD_WORDS, SHAPES, SIZE_WORDS, SIZES, describe, describe_crowd
from pixgen.prompts import Prompt

if TYPE_CHECKING:
    import torch

    from pixgen.models.clip import CLIPScorer

WORLD_THINGS = frozenset({*SHAPES, *(s + "s" for s in SHAPES), *COLOUR_NAMES})
# Words that let a restated caption be a crowd: crowd captions were training negatives only
CROWD_VOCAB = frozenset({*(w for phrase in CROWD_WORDS for w in phrase.split() if w not in ("a", "of")),
                         *(s + "s" for s in SHAPES), "shapes", "objects"})
_caption_embeddings: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@functools.lru_cache(maxsize=4)
def world_captions(sizes: bool = False, crowds: bool = False) -> tuple[str, ...]:
    """The captions the world's grammar writes in its canonical wording: one shape with any subset of
    shape, colour and background, and (when asked) with each size, and crowds with any such subset."""
    optional_shapes, optional_colours = (*SHAPES, None), (*COLOUR_NAMES, None)
    captions = []
    for shape, colour, background in itertools.product(optional_shapes, optional_colours, optional_colours):
        if colour is not None and colour == background:
            continue
        if shape or colour or background:
            captions += [describe(shape, colour, background, size) for size in (None, *(SIZES if sizes else ()))]
        if crowds:
            captions.append(describe_crowd(shape, colour, background))
    return tuple(dict.fromkeys(captions))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def names_world_things(text: str) -> bool:
    """Whether ``text`` names a shape or a colour of the world (only such prompts are restated)."""
    return any(word in WORLD_THINGS for word in _words(text))


def _captions_embedded(clip: CLIPScorer, kinds: tuple[bool, bool]) -> torch.Tensor:
    per_kind = _caption_embeddings.setdefault(clip, {})
    if kinds not in per_kind:
        per_kind[kinds] = clip.encode_text(world_captions(*kinds))
    return per_kind[kinds]


def read_caption(text: str, clips: list[CLIPScorer]) -> str:
    """The world caption that ``clips`` jointly find nearest to ``text`` (sum of cosines). Sizes and
    crowds are offered only when ``text`` has a size word or a crowd word (several, circles, ...)."""
    words = set(_words(text))
    kinds = (bool(words & SIZE_WORDS.keys()), bool(words & CROWD_VOCAB))
    scores = sum((clip.encode_text([text]) @ _captions_embedded(clip, kinds).T)[0].cpu() for clip in clips)
    return world_captions(*kinds)[int(scores.argmax())]


def _restatable(prompt: Prompt) -> bool:
    return prompt.weight > 0 and not (prompt.is_image or prompt.is_noise) and names_world_things(prompt.source)


def restate_prompts(prompts: list[Prompt], clips: list[CLIPScorer]) -> list[Prompt]:
    """``prompts`` with each positive text prompt naming a shape or colour restated by
    :func:`read_caption` (pixgen calls this only when every guiding CLIP is one of the pack's)."""
    return [replace(p, source=read_caption(p.source, clips)) if _restatable(p) else p for p in prompts]
