"""Animations: ``pixgen animate``."""

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
from pixgen.cli.progress import animate_with_progress


@click.command()
@click.argument("prompt_or_schedule", required=False, default=None)
@click.option("--frames", type=click.IntRange(min=1), help="Number of frames.")
@click.option("--steps-per-frame", type=click.IntRange(min=0), help="Steps per frame after the first [30].")
@click.option("--first-frame-steps", type=click.IntRange(min=0), help="Steps of frame 0 [--steps].")
@click.option("--zoom", help="Zoom per frame, or keyframes '0:(1.0), 30:(1.05)' [1.0].")
@click.option("--rotate", help="Degrees counter-clockwise per frame, or keyframes [0].")
@click.option("--pan", help="Pixels per frame DX,DY (right, down), or keyframes '0:(2,0), 9:(0,1)' [0,0].")
@click.option("--fps", type=float, help="Frames per second of the MP4 and GIF [12].")
@click.option("--smooth", type=float, help="Latent smoothing weight in [0, 1) [0].")
@click.option("--crossfade", type=click.IntRange(min=0), help="Frames a prompt change fades over [4].")
@click.option("--interpolate", type=click.IntRange(min=0), help="Blended frames between frames in the video [0].")
@click.option("--schedule", "schedule_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML file with a schedule: list and any of these settings.")
@config_options
@output_option("Output folder (default: outputs/<prompt>).")
@overwrite_option()
@quiet_option()
@reports_errors
def animate(prompt_or_schedule, frames, steps_per_frame, first_frame_steps, zoom, rotate, pan, fps, smooth,
            crossfade, interpolate, schedule_file, output, overwrite, quiet, preset, config_file, overrides,
            **flags) -> None:
    """Render an animation: each frame grows out of the previous one, moved and re-optimised.

    PROMPT_OR_SCHEDULE is a prompt, a story "a ^ b ^ c" (spread over the frames) or a schedule .yaml.

    Example: pixgen animate "a red circle ^ a yellow square" --frames 24 --zoom 1.02 --seed 1
    """
    from pixgen.animation.animate import animate as run_animation
    from pixgen.animation.animate import animation_settings

    plan = animation_settings(prompt_or_schedule, schedule_file, frames=frames, steps_per_frame=steps_per_frame,
                              first_frame_steps=first_frame_steps, zoom=zoom, rotate=rotate, pan=pan, fps=fps,
                              smooth=smooth, crossfade=crossfade, interpolate=interpolate)
    config = build_config(plan.segments[0].prompt, preset, config_file, overrides, **flags)
    animate_with_progress(lambda p: run_animation(config, plan, output, overwrite=overwrite, on_frame=p.frame,
                                                  on_step=p.step), quiet)
