"""Still images: ``pixgen run``, ``pixgen resume`` and ``pixgen export``."""

from __future__ import annotations

from pathlib import Path

import click

from pixgen.cli.common import (
    ConfigProblem,
    build_config,
    config_options,
    finite_float,
    output_option,
    overwrite_option,
    quiet_option,
    reports_errors,
)
from pixgen.cli.progress import animate_with_progress, run_with_progress


@click.command()
@click.argument("prompt", required=False, default=None)
@config_options
@click.option("--from", "recipe", type=click.Path(dir_okay=False, path_type=Path),
              help="Re-run the recipe stored in a pixgen PNG (other options override it).")
@output_option("Output folder (default: outputs/<prompt>, numbered if taken), or an image file "
               "(.png/.jpg/.webp) with the run's other files in FILE.pixgen/.")
@overwrite_option()
@quiet_option("No progress bar.")
@reports_errors
def run(prompt, recipe, output, overwrite, quiet, preset, config_file, overrides, **flags) -> None:
    """Generate an image for PROMPT ("text:weight:stop", several joined with "|").

    Example: pixgen run "a yellow triangle on a purple background" --seed 1
    """
    from pixgen.pipeline.runner import run as run_pipeline

    config = build_config(prompt, preset, config_file, overrides, recipe, **flags)
    from pixgen.models.packs import prompt_notice
    from pixgen.models.registry import load_registry

    notice = prompt_notice(" | ".join([config.prompt, *config.negative_prompts]), config.clip, load_registry())
    if notice:
        click.echo(notice, err=True)
    run_with_progress(lambda progress: run_pipeline(config, output, overwrite=overwrite, on_step=progress,
                                                    on_load=progress.loading), quiet)


@click.command()
@click.argument("folder", type=click.Path(exists=True, path_type=Path))
@click.option("--steps", type=click.IntRange(min=1), help="New total number of steps.")
@quiet_option("No progress bar.")
@reports_errors
def resume(folder, steps, quiet) -> None:
    """Continue an interrupted (or finished) run from its saved state.

    FOLDER is what -o named: the run folder, or the image file (cat.png) whose run files are in
    cat.png.pixgen.

    Example: pixgen resume outputs/a-red-circle --steps 400
    """
    from pixgen.animation.animate import is_animation_folder, resume_animation
    from pixgen.pipeline.runner import resume_run

    if is_animation_folder(folder):
        if steps is not None:
            raise ConfigProblem("--steps applies to a still run; an animation resumes with its own schedule")
        animate_with_progress(lambda p: resume_animation(folder, on_frame=p.frame, on_step=p.step), quiet)
        return
    run_with_progress(lambda progress: resume_run(folder, steps=steps, on_step=progress,
                                                  on_load=progress.loading), quiet)


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["mp4", "webm", "gif"], case_sensitive=False),
              help="Video or GIF (default: from the -o suffix, else mp4).")
@click.option("--fps", type=click.FloatRange(min=0.1, max=100), callback=finite_float, default=10.0,
              show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write (default: FOLDER/progress.mp4, .webm or .gif).")
@overwrite_option("Replace an existing file.")
@reports_errors
def export(folder, fmt, fps, output, overwrite) -> None:
    """Export a run's or an animation's frames as a video (MP4, WebM) or GIF.

    Example: pixgen export outputs/a-red-circle --format mp4 --fps 15
    """
    from pixgen.animation.export import export_animation

    click.echo(export_animation(folder, fmt, fps, output, overwrite))
