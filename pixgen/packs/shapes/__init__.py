"""The shapes world pack: a procedural world of coloured shapes, and the small models pixgen ships trained on it.

``world`` draws the images and captions; ``tower`` is shapes-clip's image tower; ``restate`` reads
prompts as the CLIPs' caption wording; ``vocabulary`` names what they know (the off-world notice);
``judge`` is an independent classifier that scores prompt fidelity, and ``eval_world`` tells
``pixgen eval`` about the world. ``train_vqgan``, ``train_clip`` and ``train_judge`` train the
shipped weights (``weights/``, registered in ``checkpoints.yaml`` beside this file).

Importing this module is cheap: each hook imports what it needs when it is called.
"""

from __future__ import annotations

from pathlib import Path

from pixgen.models.packs import Pack


def _register_architectures() -> None:
    from pixgen.packs.shapes import tower  # noqa: F401  registers shapes-clip's timm image tower by name


def _read_prompts(prompts, clips):
    from pixgen.packs.shapes.restate import restate_prompts

    return restate_prompts(prompts, clips)


def _prompt_notice(text: str) -> str | None:
    from pixgen.packs.shapes.vocabulary import offworld_notice

    return offworld_notice(text)


def _load_judge(path: Path):
    from pixgen.packs.shapes.judge import load_judge

    return load_judge(path)


def _eval_world():
    from pixgen.packs.shapes.eval_world import ShapesWorld

    return ShapesWorld()


PACK = Pack(name="shapes", registry=Path(__file__).parent / "checkpoints.yaml",
            register_architectures=_register_architectures, read_prompts=_read_prompts,
            prompt_notice=_prompt_notice, load_judge=_load_judge, eval_world=_eval_world)
