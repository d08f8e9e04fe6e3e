"""`pixgen eval`: report, contact sheet, and the scoring arithmetic."""

from __future__ import annotations

import json

from click.testing import CliRunner
from PIL import Image

from pixgen.cli import cli
from pixgen.evaluation.fidelity import Verdict, accuracy
from pixgen.pipeline.output import read_png_text


def test_eval_writes_report_images_and_contact_sheet(tmp_path, tiny_preset):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two held-out prompts\na red circle on a green background\n\na blue square\n")
    out = tmp_path / "eval"
    args = ["eval", "--preset", str(tiny_preset), "--prompts", str(prompts), "--seeds", "2",
            "--steps", "2", "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "shapes-judge (independent), strict:" in result.output
    assert "shapes-judge, forced choice" in result.output and "tiny-clip (guides generation):" in result.output
    report = json.loads((out / "report.json").read_text())
    assert (report["images"], report["prompts"], report["seeds"]) == (4, 2, 2)
    assert set(report["judge"]) == set(report["judge_forced_choice"]) == {"shape", "colour", "background", "all"}
    assert set(report["guiding_clip"]) >= {"shape", "colour", "all"}
    first = report["verdicts"][0]
    assert first["expected"] == {"shape": "circle", "colour": "red", "background": "green", "size": None}
    assert set(first["judge"]) == set(first["judge_forced"]) == {"shape", "colour", "background"}
    assert first["judge_forced"]["shape"] in ("circle", "square", "triangle")
    assert read_png_text(out / first["image"])["seed"] == "0"
    assert report["verdicts"][3]["expected"]["background"] is None  # "a blue square" names no background
    with Image.open(out / "contact-sheet.png") as sheet:
        assert sheet.size == (8 * 128, 128 + 44)
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "report.json exists" in again.output


def test_empty_prompts_file_is_an_error(tmp_path, tiny_preset):
    prompts = tmp_path / "p.txt"
    prompts.write_text("# nothing\n")
    result = CliRunner().invoke(cli, ["eval", "--preset", str(tiny_preset), "--prompts", str(prompts)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: prompts file {prompts} holds no prompts"


def verdict(expected, judge):
    keys = ("shape", "colour", "background")
    seen = dict(zip(keys, judge, strict=True))
    return Verdict("p", 0, "x.png", dict(zip(keys, expected, strict=True)), seen, seen, seen, 0.1)


def test_accuracy_counts_only_named_attributes():
    verdicts = [verdict(("circle", "red", "blue"), ("circle", "red", "blue")),
                verdict(("square", "red", None), ("square", "green", "white")),
                verdict(("triangle", None, None), ("circle", "red", "blue"))]
    scores = accuracy(verdicts, "judge")
    assert scores["shape"] == 2 / 3
    assert scores["colour"] == 1 / 2
    assert scores["background"] == 1.0
    assert scores["all"] == 1 / 3


def test_paraphrase_wordings_never_come_out_of_the_training_grammar():
    import numpy as np

    from pixgen.packs.shapes import world
    from pixgen.packs.shapes.paraphrases import WORDINGS, paraphrased_prompts

    prompts = paraphrased_prompts()
    assert len(WORDINGS) >= 8 and len(prompts) == 8 * len(world.HELD_OUT_COMBOS)
    rng = np.random.default_rng(0)
    training = {world.describe(s, c, b, rng=rng).lower() for s, c, b in world.HELD_OUT_COMBOS for _ in range(400)}
    training |= {world.describe(s, c, b).lower() for s, c, b in world.HELD_OUT_COMBOS}
    assert len(training) > 24 * 4  # the sample covers the grammar's variants
    assert not {prompt.lower() for prompt, _ in prompts} & training


def test_eval_paraphrases_scores_against_the_combination_not_the_words(tmp_path, tiny_preset, monkeypatch):
    from pixgen.packs.shapes import paraphrases, world

    one_combo = paraphrases.worded_prompts(world.HELD_OUT_COMBOS[:1])
    monkeypatch.setattr(paraphrases, "worded_prompts", lambda: one_combo)
    out = tmp_path / "eval"
    result = CliRunner().invoke(cli, ["eval", "--paraphrases", "--preset", str(tiny_preset), "--seeds", "1",
                                      "--steps", "1", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    shape, colour, background = world.HELD_OUT_COMBOS[0]
    assert report["images"] == 9  # the canonical wording, then the 8 evaluation wordings
    assert [v["prompt"] for v in report["verdicts"]] == [p for _, p, _ in one_combo]
    assert list(report["by_group"]) == ["canonical", *paraphrases.WORDINGS]
    assert all(group["images"] == 1 and group["judge"] in (0, 1) for group in report["by_group"].values())
    assert "evaluation wordings, strict:" in result.output and "points)" in result.output
    assert all(v["expected"] == {"shape": shape, "colour": colour, "background": background, "size": None}
               for v in report["verdicts"])
    both = CliRunner().invoke(cli, ["eval", "--paraphrases", "--prompts", str(tmp_path / "x.txt")])
    assert both.exit_code == 2 and "not both" in both.output
