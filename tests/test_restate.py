"""Restating prompts for the bundled models: what the CLIPs read, what a run then draws, what it records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pixgen.cli import cli
from pixgen.config import config_from_mapping, resolve_config
from pixgen.engine.loop import read_as, run_prompts
from pixgen.models.factory import load_clip
from pixgen.models.registry import load_registry
from pixgen.packs.shapes import paraphrases
from pixgen.packs.shapes.restate import read_caption, world_captions
from pixgen.packs.shapes.world import HELD_OUT_COMBOS, describe
from pixgen.pipeline.recipe import read_recipe
from pixgen.pipeline.runner import read_run_config

PARAPHRASE = "green background; one red circle."  # "background first, one": not a training wording
CANONICAL = "a red circle on a green background"


@pytest.fixture
def bundled(monkeypatch):
    """The real registry and the three bundled CLIPs."""
    monkeypatch.delenv("PIXGEN_REGISTRY")
    registry = load_registry()
    names = [name for name in registry.names("clip") if registry.get("clip", name).pack == "shapes"]
    assert names == ["shapes-clip", "shapes-clip-2", "shapes-clip-3"]
    return [load_clip(name, registry).module for name in names]


def _run(tmp_path, name: str, prompt: str, *flags: str) -> tuple[np.ndarray, dict, str]:
    out = tmp_path / name
    result = CliRunner().invoke(cli, ["--offline", "run", prompt, "--seed", "3", "--steps", "3", "-o", str(out),
                                      "-q", *flags])
    assert result.exit_code == 0, result.output
    with Image.open(out / "image.png") as image:
        return np.asarray(image), dict(image.text), result.output


def test_bundled_clips_read_held_out_paraphrases_as_their_caption(bundled):
    # Zero-shot text reading of wordings never used in training; 191 of the 192 land right today.
    combos = HELD_OUT_COMBOS[::2]
    right = [read_caption(paraphrases.phrase(w, c), bundled) == describe(*c)
             for c in combos for w in paraphrases.WORDINGS]
    assert sum(right) >= 0.95 * len(right), f"{sum(right)} of {len(right)}"
    assert all(read_caption(describe(*c), bundled) == describe(*c) for c in combos)  # canonical stays as is


def test_a_paraphrase_draws_what_its_caption_draws_and_the_recipe_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("PIXGEN_REGISTRY")
    restated, text, output = _run(tmp_path, "paraphrase", PARAPHRASE)
    canonical, canonical_text, _ = _run(tmp_path, "canonical", CANONICAL)
    as_written, written_text, _ = _run(tmp_path, "as-written", PARAPHRASE, "--no-restate")

    assert np.array_equal(restated, canonical)
    assert not np.array_equal(restated, as_written)
    assert f"read {PARAPHRASE!r} as {CANONICAL!r}" in output
    assert text["prompt"] == PARAPHRASE  # the recipe keeps the user's words, and what they were read as
    assert yaml.safe_load(text["read_as"]) == {PARAPHRASE: CANONICAL}
    assert f"Read as: {CANONICAL}" in text["parameters"]
    assert "read_as" not in canonical_text and "read_as" not in written_text
    assert yaml.safe_load(written_text["config"])["restate"] is False


def test_only_positive_text_prompts_naming_the_world_are_restated(bundled):
    config = resolve_config("default", flags={
        "prompt": f"{PARAPHRASE}:2:0.5 | a castle in the sky", "noise_prompts": ["7:0.5"],
        "negative_prompts": ["blue background; one yellow square.:0.4"]})
    prompts = run_prompts(config, bundled)
    assert [(p.source, p.weight, p.stop) for p in prompts] == [
        (CANONICAL, 2.0, 0.5), ("a castle in the sky", 1.0, None), ("7", 0.5, None),
        ("blue background; one yellow square.", -0.4, None)]
    assert read_as(config, bundled) == {PARAPHRASE: CANONICAL}


def test_restating_never_adds_a_size_or_a_crowd_the_prompt_did_not_ask_for(bundled):
    singles = world_captions()
    assert not any(word in caption for caption in singles for word in ("several", "small", "large"))
    assert read_caption("red", bundled) in singles
    assert read_caption("several red circles", bundled) == "several red circles"
    assert read_caption("a big blue square", bundled) == "a large blue square"


def test_runs_guided_by_other_clips_keep_their_prompts(tiny_preset):
    config = resolve_config(str(tiny_preset), flags={"prompt": PARAPHRASE})
    assert config.restate is True and config.clip == ["tiny-clip"]
    assert [p.source for p in run_prompts(config, [])] == [PARAPHRASE]
    assert read_as(config, []) == {}


def test_runs_recorded_before_restating_existed_resume_and_rerun_as_written(tmp_path):
    folder = tmp_path / "old-run"
    folder.mkdir()
    recorded = {"prompt": PARAPHRASE, "seed": 1, "steps": 4}
    (folder / "run.yaml").write_text(yaml.safe_dump(recorded))
    assert read_run_config(folder).restate is False
    (folder / "run.yaml").write_text(yaml.safe_dump({**recorded, "restate": True}))
    assert read_run_config(folder).restate is True
    assert config_from_mapping(recorded, "an animation's run.yaml").restate is False  # what resume_animation reads

    old_png = tmp_path / "old.png"
    info = PngInfo()
    info.add_text("config", yaml.safe_dump(recorded))
    Image.new("RGB", (4, 4)).save(old_png, pnginfo=info)
    assert read_recipe(old_png)[0]["restate"] is False


def test_eval_generates_prompts_restated_alike_once_and_reports_what_each_was_read_as(tmp_path, monkeypatch):
    monkeypatch.delenv("PIXGEN_REGISTRY")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PARAPHRASE}\n{CANONICAL}\n")
    out = tmp_path / "eval"
    result = CliRunner().invoke(cli, ["--offline", "eval", "--prompts", str(prompts), "--seeds", "1", "--steps", "2",
                                      "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    first, second = json.loads((out / "report.json").read_text())["verdicts"]
    assert (first["read_as"], second["read_as"]) == (CANONICAL, None)
    assert first["seconds"] == second["seconds"]
    with Image.open(out / first["image"]) as a, Image.open(out / second["image"]) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_an_animation_restates_each_story_prompt_and_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("PIXGEN_REGISTRY")
    out = tmp_path / "anim"
    result = CliRunner().invoke(cli, ["--offline", "animate", f"{PARAPHRASE} ^ a blue square", "--frames", "2",
                                      "--steps-per-frame", "1", "--first-frame-steps", "1", "--seed", "1",
                                      "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert f"read {PARAPHRASE!r} as {CANONICAL!r}" in result.output
    assert "read 'a blue square'" not in result.output  # already the grammar's wording
    first, second = sorted((out / "frames").glob("*.png"))
    with Image.open(first) as image:
        assert yaml.safe_load(image.text["read_as"]) == {PARAPHRASE: CANONICAL}
    with Image.open(second) as image:
        assert "read_as" not in image.text
