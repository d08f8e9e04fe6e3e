"""Evaluation wordings: the held-out combinations phrased in ways the training captions never use.

The training grammar (``world.describe``/``world.caption``) writes "[a] [size] colour shape" or
"a shape in colour", then " on/against/with a X background" or ", X background". The wordings
below are for ``pixgen eval --paraphrases`` only and must never be added to training: they measure
whether the models generalise to ordinary phrasing rather than remember their caption grammar.
A test checks that no wording here can come out of the training grammar.
"""

from __future__ import annotations

from pixgen.packs.shapes.world import HELD_OUT_COMBOS, Combo, describe

# One template per kind of change the grammar never makes; {c} colour, {s} shape, {b} background.
WORDINGS: dict[str, str] = {
    "background first": "{b} background with a {c} {s}",
    "no background word": "a {c} {s} on {b}",
    "in front of": "a {c} {s} in front of a {b} background",
    "and, with the": "the {c} {s} and the {b} background",
    "number one": "one {c} {s} sitting on a {b} background",
    "adjective after noun": "a {s} that is {c}, on a {b} background",
    "capitals and punctuation": "A {C} {S}, On A {B} Background!",
    "background first, one": "{b} background; one {c} {s}.",
}


def phrase(wording: str, combo: Combo) -> str:
    """``combo`` (shape, colour, background) in one of the evaluation wordings."""
    shape, colour, background = combo
    return WORDINGS[wording].format(s=shape, c=colour, b=background, S=shape.title(), C=colour.title(),
                                    B=background.title())


CANONICAL = "canonical"  # the training grammar's own wording (world.describe), the reference for the others


def worded_prompts(combos: list[Combo] | None = None) -> list[tuple[str, str, dict[str, str | None]]]:
    """Every held-out combination in the canonical wording, then in every evaluation wording:
    (wording, prompt, the attributes it names)."""
    result = []
    for combo in combos or HELD_OUT_COMBOS:
        expected = {"shape": combo[0], "colour": combo[1], "background": combo[2], "size": None}
        result.append((CANONICAL, describe(*combo), expected))
        result += [(wording, phrase(wording, combo), expected) for wording in WORDINGS]
    return result


def paraphrased_prompts(combos: list[Combo] | None = None) -> list[tuple[str, dict[str, str | None]]]:
    """Every held-out combination in every evaluation wording, with the attributes it names."""
    return [(prompt, expected) for wording, prompt, expected in worded_prompts(combos) if wording != CANONICAL]
