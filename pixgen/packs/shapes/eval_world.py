"""The shapes world as ``pixgen eval`` sees it: what prompts name, and which prompts to evaluate."""

from __future__ import annotations

from pixgen.packs.shapes import paraphrases, world


class ShapesWorld:
    """Prompt fidelity in the shapes world (see :class:`pixgen.models.packs.EvalWorld`)."""

    attributes = ("shape", "colour", "background")
    canonical = paraphrases.CANONICAL
    judge = "shapes-judge"

    def default_prompts(self) -> list[str]:
        """The held-out combinations in the training grammar's wording."""
        return world.held_out_prompts()

    def expected(self, prompt: str) -> dict[str, str | None]:
        """The shape, colour and background ``prompt`` names."""
        return world.parse_caption(prompt)

    def captions(self) -> list[tuple[dict[str, str], str]]:
        """Every (shape, colour, background) with a background unlike the colour, and its caption."""
        combos = [(s, c, b) for s in world.SHAPES for c in world.COLOURS for b in world.COLOURS if b != c]
        return [(dict(zip(self.attributes, combo, strict=True)), world.describe(*combo)) for combo in combos]

    def worded_prompts(self) -> list[tuple[str, str, dict[str, str | None]]]:
        """The held-out combinations in the canonical wording and every evaluation wording."""
        return paraphrases.worded_prompts()
