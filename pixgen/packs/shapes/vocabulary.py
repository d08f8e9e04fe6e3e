"""What the bundled shapes-world models understand, so off-world prompts get an honest notice.

The bundled CLIPs were trained on captions of one coloured circle, square or triangle on a plain
background. A prompt such as "a castle in the sky" still runs, but its words mean nothing to them.
"""

from __future__ import annotations

import re

from pixgen.packs.shapes.world import COLOUR_NAMES, CROWD_WORDS, SHAPES, SIZE_WORDS

# Words with no meaning of their own: articles, numbers, prepositions and conjunctions of ordinary phrasing.
FUNCTION_WORDS = frozenset(
    "a an the one single some of on in with and against front behind over under at its it is this that".split()
)
KNOWN_WORDS = frozenset({*SHAPES, *(s + "s" for s in SHAPES), *COLOUR_NAMES, *SIZE_WORDS,
                         *(w for phrase in CROWD_WORDS for w in phrase.split()),
                         "background", "backgrounds", "shape", "shapes", "object", "objects", "coloured", "colored"})


def unknown_words(prompt: str) -> list[str]:
    """Words of ``prompt`` (text prompts only, weights removed) that the shapes world has no meaning for."""
    from pixgen.prompts import parse_prompts

    words = [w for p in parse_prompts(prompt) for w in re.findall(r"[a-z]+", p.source.lower())]
    return list(dict.fromkeys(w for w in words if w not in KNOWN_WORDS and w not in FUNCTION_WORDS))


def offworld_notice(prompt: str) -> str | None:
    """One line naming the words of ``prompt`` the bundled CLIPs do not know (pixgen shows it when a run
    is guided by them only)."""
    unknown = unknown_words(prompt)
    if not unknown:
        return None
    return (f"note: the bundled shapes-world models know only coloured circles, squares and triangles on a plain "
            f"background, not: {', '.join(unknown[:8])}{'…' if len(unknown) > 8 else ''}. For real-world prompts: "
            "pixgen models download vqgan_imagenet_f16_16384 ViT-B-32-openai, then --preset imagenet")
