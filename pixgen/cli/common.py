"""What every command shares: one-line errors, option parsing, the run config options."""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path

import click

from pixgen.config import DEVICE_KINDS, INITS, OPTIMIZERS, PRECISIONS  # no torch: --help stays fast
from pixgen.errors import ConfigError, PixgenError, one_line


class ConfigProblem(click.ClickException):
    """A bad setting: one line, exit code 2 (like a usage error)."""

    exit_code = 2


class Interrupted(click.ClickException):
    """Ctrl-C before any work was done: one line, exit code 130."""

    exit_code = 130


def reports_errors(command):
    """Turn the library's PixgenError into a one-line Click error (no traceback).

    Anything else is a bug: it keeps its traceback, but a one-line summary comes first.
    """
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ConfigError as err:
            raise ConfigProblem(one_line(err)) from None
        except PixgenError as err:
            raise click.ClickException(one_line(err)) from None
        except KeyboardInterrupt:
            raise Interrupted("interrupted; what was saved before is kept") from None
        except BrokenPipeError:  # `pixgen ... | head` closed the pipe: stop quietly, as shell tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as err:
            click.echo(f"Error: internal error (a bug in pixgen, please report it): "
                       f"{type(err).__name__}: {one_line(err)}", err=True)
            raise
    return wrapper


def parse_size(_ctx, _param, value: str | None) -> list[int] | None:
    """``256``, ``256x192`` -> [width, height]."""
    if value is None:
        return None
    try:
        parts = [int(part) for part in value.lower().split("x")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT or a single number") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise click.BadParameter(f"{value!r}: expected WIDTHxHEIGHT or a single number")
    return parts


class DeviceName(click.ParamType):
    """A device: auto, cpu, cuda, cuda:N or mps; checked with the config, completed by the shell."""

    name = "device"

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(kind) for kind in DEVICE_KINDS if kind.startswith(incomplete.lower())]


def finite_float(_ctx, param, value: float | None) -> float | None:
    """Refuse nan and infinities for a float option."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number", param=param)
    return value


def config_options(command):
    """Options shared by every command that builds a run config."""
    options = [
        click.option("-p", "--preset", default="default", show_default=True, envvar="PIXGEN_PRESET",
                     help="Preset name (see `pixgen presets list`) or a preset YAML file (env PIXGEN_PRESET)."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Your own YAML config, layered over the preset."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override any config key, e.g. --set cut_pow=1.5 (repeatable)."),
        click.option("--seed", type=click.IntRange(min=0), help="Random seed: same seed, same image."),
        click.option("--steps", type=click.IntRange(min=1), help="Optimisation steps."),
        click.option("--size", callback=parse_size, help="Output size, WIDTHxHEIGHT or one number."),
        click.option("--vqgan", help="VQGAN: registry name, CHECKPOINT file or CONFIG.yaml,CHECKPOINT."),
        click.option("--clip", multiple=True,
                     help="CLIP model: registry name, ARCH:WEIGHTS or CONFIG.json (repeatable)."),
        click.option("--lr", type=float, callback=finite_float, help="Learning rate."),
        click.option("--lr-final", type=float, callback=finite_float,
                     help="Learning rate at the last step, reached by cosine decay (default: constant)."),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS, case_sensitive=False), help="Optimiser."),
        click.option("--cut-count", type=int, help="Cutouts per step."),
        click.option("--cut-pow", type=float, callback=finite_float, help="Cutout size power."),
        click.option("--init", type=click.Choice(INITS, case_sensitive=False), help="Initial image."),
        click.option("--init-image", help="Start from this image (sets --init image)."),
        click.option("--init-weight", type=float, callback=finite_float,
                     help="Keep the image near its start (MSE weight)."),
        click.option("--image-prompt", "image_prompts", multiple=True, metavar="PATH[:WEIGHT]",
                     help="Image to match as well as or instead of text (repeatable)."),
        click.option("--noise-prompt", "noise_prompts", multiple=True, metavar="SEED[:WEIGHT]",
                     help="A seeded random embedding to pull towards (or push from, weight < 0); repeatable."),
        click.option("--negative", "negative_prompts", multiple=True, metavar="TEXT[:WEIGHT]",
                     help="Text to push the image away from, as hard as WEIGHT (default 1); repeatable. "
                          "Replaces the preset's negative prompts."),
        click.option("--restate/--no-restate", default=None,
                     help="With the bundled models: restate text prompts as the caption their CLIPs read "
                          "them as (default on)."),
        click.option("--save-every", type=int, help="Save a progress frame every N steps (0: none)."),
        click.option("--gif/--no-gif", default=None, help="Write the progress GIF."),
        click.option("--device", type=DeviceName(), envvar="PIXGEN_DEVICE",
                     help="auto, cpu, cuda, cuda:N or mps (env PIXGEN_DEVICE)."),
        click.option("--precision", type=click.Choice(PRECISIONS, case_sensitive=False),
                     help="Autocast precision."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def build_config(prompt: str | None, preset: str, config_file: Path | None, overrides: tuple[str, ...],
                 recipe: Path | None = None, **flags):
    """Resolve defaults < preset (or a PNG's recipe) < config file < --set < explicit flags."""
    from pixgen.config import resolve_config

    if flags.get("init_image") and not flags.get("init"):
        flags["init"] = "image"
    flags["clip"] = list(flags["clip"]) or None
    flags["image_prompts"] = list(flags["image_prompts"]) or None
    flags["noise_prompts"] = list(flags.get("noise_prompts") or ()) or None
    flags["negative_prompts"] = list(flags.get("negative_prompts") or ()) or None
    flags["prompt"] = prompt
    if recipe is None:
        return resolve_config(preset, config_file, list(overrides), flags)
    from pixgen.pipeline.recipe import check_inputs, read_recipe

    recorded, inputs = read_recipe(recipe)
    config = resolve_config(preset, config_file, list(overrides), flags, base=recorded,
                            base_source=f"the recipe in {recipe}")
    check_inputs(config, inputs, recipe)
    return config


def output_option(help_text: str, **settings):
    """``-o/--output PATH``: where a command writes (run, animate, batch, eval)."""
    return click.option("-o", "--output", type=click.Path(path_type=Path), help=help_text, **settings)


def overwrite_option(help_text: str = "Replace outputs already in the output folder."):
    """``--overwrite``: replace what an earlier command wrote there."""
    return click.option("--overwrite", is_flag=True, help=help_text)


def quiet_option(help_text: str = "No progress bars."):
    """``-q/--quiet``: no progress output."""
    return click.option("-q", "--quiet", is_flag=True, help=help_text)
