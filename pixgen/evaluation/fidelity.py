"""Prompt fidelity: generate an image per held-out prompt and seed, then judge it.

The judge and the world it judges in come from a model pack (:class:`pixgen.models.packs.EvalWorld`;
the bundled one is the shapes world's ``shapes-judge``, a supervised CNN that never guides
generation). It reads each image twice: strictly (in the shapes world the shape may be ``other``,
"not one clean shape": several shapes, a blob, a fragment) and by forced choice (the likeliest
proper value, however messy the picture). The first guiding CLIP also scores the same images
zero-shot, to show how much optimising against a model inflates its own opinion.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from pixgen.config import RunConfig, validate
from pixgen.engine.loop import generate, read_as, run_prompts
from pixgen.errors import ConfigError, InputError, OutputExists, UnknownModel
from pixgen.fileio import atomic_path, atomic_write_text
from pixgen.folder_lock import hold_folder
from pixgen.models.clip import CLIPScorer
from pixgen.models.packs import EvalWorld, judge_pack
from pixgen.models.registry import Registry
from pixgen.pipeline.output import open_image, save_png, to_pixels
from pixgen.pipeline.runner import load_models, png_text, slugify

REPORT_NAME = "report.json"
SHEET_NAME = "contact-sheet.png"
MAX_SEEDS = 1000  # seeds per prompt
MAX_IMAGES = 4096  # prompts x seeds: the contact sheet of 4096 images is about 1024 x 88,000 pixels


@dataclass
class Verdict:
    """One generated image and what each scorer saw in it."""

    prompt: str
    seed: int
    image: str  # path relative to the report folder
    expected: dict[str, str | None]
    judge: dict[str, str]  # the strict reading: shape may be "other"
    judge_forced: dict[str, str]  # shape forced to circle, square or triangle
    clip: dict[str, str]
    seconds: float  # to generate the image (for a repeat, what its first generation took)
    read_as: str | None = None  # what the CLIPs' pack read the prompt as (packs.read_prompts), if it differs
    group: str | None = None  # e.g. the prompt's wording (pixgen eval --paraphrases)

    def correct(self, scorer: str) -> dict[str, bool]:
        """Per attribute the prompt names: did ``scorer`` ("judge", "judge_forced" or "clip") see it?"""
        seen = getattr(self, scorer)
        return {a: seen[a] == self.expected[a] for a in seen if self.expected.get(a)}


def default_judge(registry: Registry) -> str:
    """The judge ``pixgen eval`` uses when none is named: the first registered one."""
    names = registry.names("judge")
    if not names:
        raise UnknownModel("no judge is registered; give one with --judge FILE")
    return names[0]


def eval_world(judge: str, registry: Registry) -> EvalWorld:
    """The world the judge ``judge`` (a registry name or a weights file) judges in, from its model pack."""
    pack = judge_pack(registry.get("judge", judge).pack if registry.has("judge", judge) else None)
    if pack.eval_world is None:
        raise UnknownModel(f"model pack {pack.name!r} has a judge but no evaluation world")
    return pack.eval_world()


def eval_prompts(world: EvalWorld, path: Path | None, paraphrases: bool = False
                 ) -> tuple[list[str], list[dict] | None, list[str] | None]:
    """(prompts, the attributes each names or None, each one's wording group or None): from a file,
    the world's held-out prompts, or (``paraphrases``) those in every wording."""
    if paraphrases:
        if path is not None:
            raise ConfigError("give --prompts or --paraphrases, not both")
        groups, prompts, expected = (list(column) for column in zip(*world.worded_prompts(), strict=True))
        return prompts, expected, groups
    return read_prompts(world, path), None, None


def read_prompts(world: EvalWorld, path: Path | None) -> list[str]:
    """Prompts from a file (one per line, # comments), or the world's held-out prompts."""
    if path is None:
        return world.default_prompts()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise InputError(f"cannot read prompts file {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"prompts file {path} is not a UTF-8 text file") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise InputError(f"prompts file {path} holds no prompts")
    return prompts


class ClipClassifier:
    """Zero-shot (shape, colour, background) by the best-matching full caption."""

    def __init__(self, clip: CLIPScorer, world: EvalWorld):
        self.clip = clip
        self.combos, captions = zip(*world.captions(), strict=True)
        self.text = clip.encode_text(list(captions))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict[str, str]]:
        """Images (N, 3, H, W) in [0, 1] -> one attribute dict per image."""
        embeds = self.clip.encode_image(self.clip.prepare_image(images.to(self.text.device)))
        best = (embeds @ self.text.T).argmax(dim=1).tolist()
        return [dict(self.combos[i]) for i in best]


def final_image(config: RunConfig, models) -> torch.Tensor:
    """Run the engine to the end and return the last image, (1, 3, H, W) in [0, 1]."""
    return deque(generate(config, models), maxlen=1)[0].image()


def check_prompts(base: RunConfig, prompts: list[str], world: EvalWorld, expected: list[dict] | None = None) -> None:
    """Refuse, before generating anything, a prompt the run would reject or the judge cannot score."""
    for number, prompt in enumerate(prompts, 1):
        try:
            validate(replace(base, prompt=prompt, seed=0))
        except ConfigError as err:
            raise ConfigError(f"eval prompt {number} ({prompt!r}): {err}") from None
        named = expected[number - 1] if expected else world.expected(prompt)
        if not any(named.get(a) for a in world.attributes):
            raise InputError(f"eval prompt {number} ({prompt!r}) names no {', '.join(world.attributes)} of the "
                             "judge's world, so the judge cannot score it")


def evaluate(base: RunConfig, prompts: list[str], seeds: int, output_dir: Path, *, judge, world: EvalWorld,
             overwrite: bool = False, on_image: Callable[[Verdict], None] | None = None,
             expected: list[dict] | None = None, groups: list[str] | None = None) -> dict:
    """Generate and judge ``len(prompts) * seeds`` images; write images, report.json and a contact sheet.

    ``expected`` gives the attributes each prompt names (default: read from the prompt's words);
    ``groups`` names a group for each prompt (its wording), which the report scores apart too.
    Prompts that the CLIPs' pack reads alike (:func:`pixgen.models.packs.read_prompts`) give the same image for a seed,
    so each is generated once. The folder is held (:func:`pixgen.folder_lock.hold_folder`) from the first
    image to the contact sheet: another writer of it meanwhile gets OutputBusy and touches nothing.
    """
    if not 1 <= seeds <= MAX_SEEDS:
        raise ConfigError(f"invalid value {seeds} for --seeds: must be between 1 and {MAX_SEEDS}")
    if len(prompts) * seeds > MAX_IMAGES:
        raise ConfigError(f"{len(prompts)} prompts x {seeds} seeds make {len(prompts) * seeds:,} images; "
                          f"the limit is {MAX_IMAGES:,}")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputExists(f"output {output_dir} exists and is not a folder")
    if (output_dir / REPORT_NAME).exists() and not overwrite:
        raise OutputExists(f"{output_dir / REPORT_NAME} exists; pass --overwrite or choose another --output")
    check_prompts(base, prompts, world, expected)
    models, loaded = load_models(base)
    clip_scorer = ClipClassifier(models.clips[0], world)
    with hold_folder(output_dir):  # another writer of this folder meanwhile: OutputBusy, nothing touched
        if (output_dir / REPORT_NAME).exists() and not overwrite:  # written meanwhile
            raise OutputExists(f"{output_dir / REPORT_NAME} exists; pass --overwrite or choose another --output")
        verdicts = []
        generated: dict[tuple, tuple[torch.Tensor, float]] = {}  # (run prompts, seed) -> image, seconds
        for index, prompt in enumerate(prompts):
            for seed in range(seeds):
                config = replace(base, prompt=prompt, seed=seed)
                key = (tuple(run_prompts(config, models.clips)), seed)
                if key not in generated:
                    start = time.perf_counter()
                    generated[key] = final_image(config, models), time.perf_counter() - start
                image, seconds = generated[key]
                name = f"images/{index:03d}-{slugify(prompt, 40)}-s{seed}.png"
                save_png(output_dir / name, to_pixels(image), png_text(config, loaded, config.steps))
                (strict,), (forced,) = judge.predict_both(image)
                named = expected[index] if expected else world.expected(prompt)
                restated = read_as(config, models.clips).get(prompt)
                verdict = Verdict(prompt, seed, name, named, strict, forced,
                                  clip_scorer.predict(image)[0], round(seconds, 3), restated,
                                  groups[index] if groups else None)
                verdicts.append(verdict)
                if on_image is not None:
                    on_image(verdict)
        report = summarise(base, verdicts)
        atomic_write_text(output_dir / REPORT_NAME, json.dumps(report, indent=2))
        contact_sheet(output_dir, verdicts)
        return report


def accuracy(verdicts: list[Verdict], scorer: str) -> dict[str, float]:
    """Per-attribute accuracy and the share of images with every named attribute right."""
    result = {}
    for attribute in verdicts[0].judge if verdicts else ():
        marks = [v.correct(scorer)[attribute] for v in verdicts if attribute in v.correct(scorer)]
        if marks:
            result[attribute] = sum(marks) / len(marks)
    result["all"] = sum(all(v.correct(scorer).values()) for v in verdicts) / max(1, len(verdicts))
    return result


def by_group(verdicts: list[Verdict]) -> dict[str, dict]:
    """Images and all-correct rates (strict and forced choice) of each group, in order of appearance."""
    groups: dict[str, list[Verdict]] = {}
    for verdict in verdicts:
        if verdict.group is not None:
            groups.setdefault(verdict.group, []).append(verdict)
    return {name: {"images": len(members), "judge": accuracy(members, "judge")["all"],
                   "judge_forced_choice": accuracy(members, "judge_forced")["all"]}
            for name, members in groups.items()}


def summarise(base: RunConfig, verdicts: list[Verdict]) -> dict:
    """The report: accuracy by the judge (strict and forced choice) and the guiding CLIP, timing, every verdict."""
    seconds = [v.seconds for v in verdicts]
    return {
        "images": len(verdicts),
        "prompts": len({v.prompt for v in verdicts}),
        "seeds": len({v.seed for v in verdicts}),
        "judge": accuracy(verdicts, "judge"),
        "judge_forced_choice": accuracy(verdicts, "judge_forced"),
        "guiding_clip": accuracy(verdicts, "clip"),
        "seconds_per_image": float(np.median(seconds)) if seconds else 0.0,
        "by_group": by_group(verdicts),
        "config": {k: v for k, v in asdict(base).items() if k not in ("prompt", "seed")},
        "verdicts": [asdict(v) for v in verdicts],
    }


def contact_sheet(output_dir: Path, verdicts: list[Verdict], tile: int = 128, columns: int = 8) -> Path:
    """A grid of the images, each with its prompt and the judge's verdict underneath."""
    caption_height = 44
    rows = max(1, -(-len(verdicts) // columns))
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, verdict in enumerate(verdicts):
        x, y = (i % columns) * tile, (i // columns) * (tile + caption_height)
        with open_image(output_dir / verdict.image, "image") as image:
            sheet.paste(image.convert("RGB").resize((tile, tile), Image.NEAREST), (x, y))
        marks = verdict.correct("judge")
        ok = all(marks.values())
        seen = " ".join(verdict.judge.values())
        lines = [_short(verdict.prompt), f"judge: {seen}", ("OK" if ok else "WRONG: " +
                 ",".join(a for a, good in marks.items() if not good)) + f"  s{verdict.seed}"]
        for n, line in enumerate(lines):
            draw.text((x + 2, y + tile + 2 + 13 * n), line, fill=(0, 110, 0) if ok else (170, 0, 0))
    path = output_dir / SHEET_NAME
    with atomic_path(path) as temp:
        sheet.save(temp, format="PNG")
    return path


def _short(prompt: str, limit: int = 21) -> str:
    text = prompt.removeprefix("a ").replace(" background", " bg")
    return text if len(text) <= limit else text[: limit - 2] + ".."
