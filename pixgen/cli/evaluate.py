"""Prompt fidelity: ``pixgen eval``."""

from __future__ import annotations

from pathlib import Path

import click

from pixgen.cli.common import (
    build_config,
    config_options,
    output_option,
    overwrite_option,
    quiet_option,
    reports_errors,
)


def print_wording_scores(by_group: dict[str, dict], canonical: str) -> None:
    """Strict and forced-choice all-correct rates per wording, then the other wordings against ``canonical``."""
    for wording, scores in by_group.items():
        click.echo(f"  {wording:26s} strict {scores['judge']:6.1%}  forced choice {scores['judge_forced_choice']:6.1%}"
                   f"  ({scores['images']} images)")
    others = [scores for wording, scores in by_group.items() if wording != canonical]
    if canonical in by_group and others:
        images = sum(s["images"] for s in others)
        strict = sum(s["judge"] * s["images"] for s in others) / images
        reference = by_group[canonical]["judge"]
        click.echo(f"evaluation wordings, strict: {strict:.1%} against {reference:.1%} in the canonical wording "
                   f"(a gap of {(reference - strict) * 100:.1f} points)")


def print_scores(report: dict, judge: str, clip: str) -> None:
    """The all-correct and per-attribute rates of each scorer, then per wording."""
    for scorer, title in (("judge", f"{judge} (independent), strict"),
                          ("judge_forced_choice", f"{judge}, forced choice"),
                          ("guiding_clip", f"{clip} (guides generation)")):
        scores = ", ".join(f"{k} {v:.1%}" for k, v in report[scorer].items())
        click.echo(f"{title}: {scores}")


@click.command("eval")
@config_options
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Prompts to evaluate, one per line (default: the judge's world's held-out prompts).")
@click.option("--paraphrases", is_flag=True,
              help="Evaluate the held-out prompts in wordings the training captions never use.")
@click.option("--seeds", type=click.IntRange(min=1), default=2, show_default=True, help="Seeds per prompt.")
@output_option("Folder for the images, report.json and contact-sheet.png.", default=Path("outputs/eval"),
               show_default=True)
@overwrite_option("Replace an earlier report in the output folder.")
@click.option("--judge", "judge_spec", help="The judge: registry name or weights file [the first registered judge].")
@quiet_option("No per-image lines.")
@reports_errors
def eval_command(prompts_file, paraphrases, seeds, output, overwrite, judge_spec, quiet, preset, config_file,
                 overrides, **flags) -> None:
    """Measure prompt fidelity: generate per prompt and seed, judge with an independent judge.

    Example: pixgen eval --preset default --seeds 2 -o outputs/eval
    """
    from pixgen.evaluation.fidelity import check_prompts, default_judge, eval_prompts, eval_world, evaluate
    from pixgen.models.factory import load_judge_model
    from pixgen.models.registry import load_registry

    registry = load_registry()
    judge_spec = judge_spec or default_judge(registry)
    world = eval_world(judge_spec, registry)
    prompts, expected, groups = eval_prompts(world, prompts_file, paraphrases)
    config = build_config(prompts[0], preset, config_file, overrides, **flags)
    check_prompts(config, prompts, world, expected)
    judge = load_judge_model(judge_spec, registry).module

    def show(verdict) -> None:
        if not quiet:
            mark = "ok   " if all(verdict.correct("judge").values()) else "WRONG"
            click.echo(f"{mark} {verdict.prompt} (seed {verdict.seed}): judge saw "
                       f"{' '.join(verdict.judge.values())} [{verdict.seconds:.1f} s]")

    report = evaluate(config, prompts, seeds, output, judge=judge, world=world, overwrite=overwrite,
                      on_image=show, expected=expected, groups=groups)
    print_scores(report, judge_spec, config.clip[0])
    if report["by_group"]:
        print_wording_scores(report["by_group"], world.canonical)
    click.echo(f"{report['images']} images, {report['seconds_per_image']:.2f} s per image (median); "
               f"report: {output / 'report.json'}, contact sheet: {output / 'contact-sheet.png'}")
