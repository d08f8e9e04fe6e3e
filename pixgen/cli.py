"""The ``pixgen`` command: parse, call the library, print. No math here.

Heavy modules (torch, the models) are imported inside commands so ``pixgen --help`` is instant.
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import sys
import time
from pathlib import Path

import click

from pixgen import __version__
from pixgen.config import DEVICE_KINDS, INITS, OPTIMIZERS, PRECISIONS  # no torch: --help stays fast
from pixgen.errors import ConfigError, PixgenError


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


def one_line(err: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(err).split())


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


ENVIRONMENT_HELP = """\b
Environment variables:
  PIXGEN_HOME      where models are downloaded and imported (default: the user cache dir)
  PIXGEN_OFFLINE   1/true/yes: never touch the network (same as --offline)
  PIXGEN_REGISTRY  extra model registry YAML files, separated by the OS path separator
  PIXGEN_PRESET    the preset used when --preset is not given (default: default)
  PIXGEN_DEVICE    the device used when --device is not given (auto, cpu, cuda, cuda:N, mps)

\b
Shell completion (bash, zsh or fish): pixgen completion bash >> ~/.bashrc
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=ENVIRONMENT_HELP)
@click.version_option(__version__, prog_name="pixgen")
@click.option("--offline", is_flag=True, envvar="PIXGEN_OFFLINE",
              help="Forbid any network access (also PIXGEN_OFFLINE=1).")
def cli(offline: bool) -> None:
    """pixgen: turn a text prompt into an image with VQGAN+CLIP.

    Works offline on its bundled "shapes world" models; bigger models are one
    `pixgen models download NAME` away.
    """
    if offline:
        os.environ["PIXGEN_OFFLINE"] = "1"


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
    from pixgen.recipe import check_inputs, read_recipe

    recorded, inputs = read_recipe(recipe)
    config = resolve_config(preset, config_file, list(overrides), flags, base=recorded,
                            base_source=f"the recipe in {recipe}")
    check_inputs(config, inputs, recipe)
    return config


LOSS_EVERY_S = 0.5  # seconds between loss readings on the progress bar


class ProgressBar:
    """A tqdm bar showing step and loss on stderr, opened at the first step (after model loading)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.loading_line_open = False
        self.loss_shown = -math.inf

    def __call__(self, step) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=step.total, initial=step.step - 1, unit="step", disable=not self.enabled,
                            file=sys.stderr, dynamic_ncols=True)
        self.bar.update(step.step - self.bar.n)
        # reading the loss waits for the GPU: twice a second is enough for a person, never when quiet
        now = time.monotonic()
        if self.enabled and (now - self.loss_shown >= LOSS_EVERY_S or step.step == step.total):
            self.bar.set_postfix(loss=f"{step.loss:.4f}")
            self.loss_shown = now

    def loading(self, name: str, seconds: float | None) -> None:
        """Model loading on stderr: on a terminal "loading NAME…" then its time; in logs one line when done."""
        if not self.enabled:
            return
        interactive = sys.stderr.isatty()
        if seconds is None:
            if interactive:
                click.echo(f"loading {name}…", err=True, nl=False)
                self.loading_line_open = True
        elif interactive:
            click.echo(f" {seconds:.1f} s", err=True)
            self.loading_line_open = False
        else:
            click.echo(f"loaded {name} in {seconds:.1f} s", err=True)

    def close(self) -> None:
        if self.loading_line_open:  # loading failed: clear the status line before the error
            click.echo("\r\033[K", err=True, nl=False)
            self.loading_line_open = False
        if self.bar is not None:
            self.bar.close()


def run_with_progress(start, quiet: bool) -> None:
    """Call ``start(progress_callback)``, print where the outputs went; exit 130 if interrupted."""
    progress = ProgressBar(not quiet)
    try:
        result = start(progress)
    finally:
        progress.close()
    report(result)
    if not result.completed:
        sys.exit(130)


def print_read_as(read_as: dict[str, str]) -> None:
    """One line per prompt restated for the bundled models."""
    for written, caption in read_as.items():
        click.echo(f"read {written!r} as {caption!r} (the bundled models' caption wording; --no-restate keeps yours)",
                   err=True)


def report(result) -> None:
    """Print where a run's outputs went."""
    if not result.completed:
        click.echo(f"Interrupted at step {result.steps_done}; partial results kept in {result.output_dir}. "
                   f"Continue with: pixgen resume {result.output_dir}", err=True)
    print_read_as(result.read_as)
    click.echo(f"image: {result.image_path}")
    if result.gif_path:
        click.echo(f"gif:   {result.gif_path}")
    click.echo(f"seed:  {result.seed}")


@cli.command()
@click.argument("prompt", required=False, default=None)
@config_options
@click.option("--from", "recipe", type=click.Path(dir_okay=False, path_type=Path),
              help="Re-run the recipe stored in a pixgen PNG (other options override it).")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Output folder (default: outputs/<prompt>, numbered if taken), or an image file "
                   "(.png/.jpg/.webp) with the run's other files in FILE.pixgen/.")
@click.option("--overwrite", is_flag=True, help="Replace outputs already in the output folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@reports_errors
def run(prompt, recipe, output, overwrite, quiet, preset, config_file, overrides, **flags) -> None:
    """Generate an image for PROMPT ("text:weight:stop", several joined with "|").

    Example: pixgen run "a yellow triangle on a purple background" --seed 1
    """
    from pixgen.pipeline import run as run_pipeline

    config = build_config(prompt, preset, config_file, overrides, recipe, **flags)
    from pixgen.shapes.vocabulary import offworld_notice

    notice = offworld_notice(" | ".join([config.prompt, *config.negative_prompts]), config.clip)
    if notice:
        click.echo(notice, err=True)
    run_with_progress(lambda progress: run_pipeline(config, output, overwrite=overwrite, on_step=progress,
                                                    on_load=progress.loading), quiet)


class AnimationProgress:
    """A frame bar (frame i/N, ETA) with the current frame's step bar under it."""

    def __init__(self, enabled: bool):
        self.enabled, self.frames, self.steps = enabled, None, ProgressBar(enabled)

    def _open(self) -> None:
        if self.frames is None:  # first, so it sits above the step bar
            from tqdm import tqdm

            self.frames = tqdm(unit="frame", disable=not self.enabled, file=sys.stderr, dynamic_ncols=True)

    def frame(self, done) -> None:
        self._open()
        if self.frames.total is None:  # the first frame of this session: resumed ones don't count for the ETA
            self.frames.total, self.frames.initial, self.frames.n = done.total, done.frame, done.frame
        self.frames.update(done.frame + 1 - self.frames.n)

    def step(self, step) -> None:
        self._open()
        if self.steps.bar is not None and step.step == 1:
            self.steps.bar.reset(total=step.total)
        self.steps(step)

    def close(self) -> None:
        self.steps.close()
        if self.frames is not None:
            self.frames.close()


def animate_with_progress(start, quiet: bool) -> None:
    """Call ``start(progress)``, print where the animation went; exit 130 if interrupted."""
    progress = AnimationProgress(not quiet)
    try:
        result = start(progress)
    finally:
        progress.close()
    print_read_as(result.read_as)
    if not result.completed:
        click.echo(f"Interrupted after {result.frames_done} frame(s); kept in {result.output_dir}. "
                   f"Continue with: pixgen resume {result.output_dir}", err=True)
        sys.exit(130)
    click.echo(f"frames: {result.output_dir / 'frames'} ({result.frames_done})")
    click.echo(f"video: {result.video_path}\ngif:   {result.gif_path}\nseed:  {result.seed}")


@cli.command()
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
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output folder (default: outputs/<prompt>).")
@click.option("--overwrite", is_flag=True, help="Replace outputs already in the output folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@reports_errors
def animate(prompt_or_schedule, frames, steps_per_frame, first_frame_steps, zoom, rotate, pan, fps, smooth,
            crossfade, interpolate, schedule_file, output, overwrite, quiet, preset, config_file, overrides,
            **flags) -> None:
    """Render an animation: each frame grows out of the previous one, moved and re-optimised.

    PROMPT_OR_SCHEDULE is a prompt, a story "a ^ b ^ c" (spread over the frames) or a schedule .yaml.

    Example: pixgen animate "a red circle ^ a yellow square" --frames 24 --zoom 1.02 --seed 1
    """
    from pixgen.animate import animate as run_animation
    from pixgen.animate import animation_settings

    plan = animation_settings(prompt_or_schedule, schedule_file, frames=frames, steps_per_frame=steps_per_frame,
                              first_frame_steps=first_frame_steps, zoom=zoom, rotate=rotate, pan=pan, fps=fps,
                              smooth=smooth, crossfade=crossfade, interpolate=interpolate)
    config = build_config(plan.segments[0].prompt, preset, config_file, overrides, **flags)
    animate_with_progress(lambda p: run_animation(config, plan, output, overwrite=overwrite, on_frame=p.frame,
                                                  on_step=p.step), quiet)


@cli.command()
@click.argument("folder", type=click.Path(exists=True, path_type=Path))
@click.option("--steps", type=click.IntRange(min=1), help="New total number of steps.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@reports_errors
def resume(folder, steps, quiet) -> None:
    """Continue an interrupted (or finished) run from its saved state.

    FOLDER is what -o named: the run folder, or the image file (cat.png) whose run files are in
    cat.png.pixgen.

    Example: pixgen resume outputs/a-red-circle --steps 400
    """
    from pixgen.animate import is_animation_folder, resume_animation
    from pixgen.pipeline import resume_run

    if is_animation_folder(folder):
        if steps is not None:
            raise ConfigProblem("--steps applies to a still run; an animation resumes with its own schedule")
        animate_with_progress(lambda p: resume_animation(folder, on_frame=p.frame, on_step=p.step), quiet)
        return
    run_with_progress(lambda progress: resume_run(folder, steps=steps, on_step=progress,
                                                  on_load=progress.loading), quiet)


@cli.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["mp4", "webm", "gif"], case_sensitive=False),
              help="Video or GIF (default: from the -o suffix, else mp4).")
@click.option("--fps", type=click.FloatRange(min=0.1, max=100), callback=finite_float, default=10.0,
              show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write (default: FOLDER/progress.mp4, .webm or .gif).")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
@reports_errors
def export(folder, fmt, fps, output, overwrite) -> None:
    """Export a run's or an animation's frames as a video (MP4, WebM) or GIF.

    Example: pixgen export outputs/a-red-circle --format mp4 --fps 15
    """
    from pixgen.export import export_animation

    click.echo(export_animation(folder, fmt, fps, output, overwrite))


def print_wording_scores(by_group: dict[str, dict]) -> None:
    """Strict and forced-choice all-correct rates per wording, then the evaluation wordings against canonical."""
    from pixgen.shapes.paraphrases import CANONICAL

    for wording, scores in by_group.items():
        click.echo(f"  {wording:26s} strict {scores['judge']:6.1%}  forced choice {scores['judge_forced_choice']:6.1%}"
                   f"  ({scores['images']} images)")
    others = [scores for wording, scores in by_group.items() if wording != CANONICAL]
    if CANONICAL in by_group and others:
        images = sum(s["images"] for s in others)
        strict = sum(s["judge"] * s["images"] for s in others) / images
        canonical = by_group[CANONICAL]["judge"]
        click.echo(f"evaluation wordings, strict: {strict:.1%} against {canonical:.1%} in the canonical wording "
                   f"(a gap of {(canonical - strict) * 100:.1f} points)")


@cli.command("eval")
@config_options
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Prompts to evaluate, one per line (default: the shapes world's held-out prompts).")
@click.option("--paraphrases", is_flag=True,
              help="Evaluate the held-out combinations in 8 wordings the training captions never use.")
@click.option("--seeds", type=click.IntRange(min=1), default=2, show_default=True, help="Seeds per prompt.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("outputs/eval"), show_default=True,
              help="Folder for the images, report.json and contact-sheet.png.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier report in the output folder.")
@click.option("--judge", "judge_spec", default="shapes-judge", show_default=True,
              help="The judge: registry name or weights file.")
@click.option("-q", "--quiet", is_flag=True, help="No per-image lines.")
@reports_errors
def eval_command(prompts_file, paraphrases, seeds, output, overwrite, judge_spec, quiet, preset, config_file,
                 overrides, **flags) -> None:
    """Measure prompt fidelity: generate per prompt and seed, judge with shapes-judge.

    Example: pixgen eval --preset default --seeds 2 -o outputs/eval
    """
    from pixgen.evaluate import check_prompts, evaluate, read_prompts
    from pixgen.models.factory import load_judge_model
    from pixgen.registry import load_registry

    expected = groups = None
    if paraphrases:
        if prompts_file is not None:
            raise ConfigProblem("give --prompts or --paraphrases, not both")
        from pixgen.shapes.paraphrases import worded_prompts

        groups, prompts, expected = (list(column) for column in zip(*worded_prompts(), strict=True))
    else:
        prompts = read_prompts(prompts_file)
    config = build_config(prompts[0], preset, config_file, overrides, **flags)
    check_prompts(config, prompts, expected)
    judge = load_judge_model(judge_spec, load_registry()).module

    def show(verdict) -> None:
        if not quiet:
            mark = "ok   " if all(verdict.correct("judge").values()) else "WRONG"
            click.echo(f"{mark} {verdict.prompt} (seed {verdict.seed}): judge saw "
                       f"{' '.join(verdict.judge.values())} [{verdict.seconds:.1f} s]")

    report = evaluate(config, prompts, seeds, output, judge=judge, overwrite=overwrite, on_image=show,
                      expected=expected, groups=groups)
    for scorer, title in (("judge", "shapes-judge (independent), strict"),
                          ("judge_forced_choice", "shapes-judge, forced choice of circle/square/triangle"),
                          ("guiding_clip", "shapes-clip (guides generation)")):
        scores = ", ".join(f"{k} {v:.1%}" for k, v in report[scorer].items())
        click.echo(f"{title}: {scores}")
    if report["by_group"]:
        print_wording_scores(report["by_group"])
    click.echo(f"{report['images']} images, {report['seconds_per_image']:.2f} s per image (median); "
               f"report: {output / 'report.json'}, contact sheet: {output / 'contact-sheet.png'}")


class BatchProgress(AnimationProgress):
    """A job bar (jobs done/total, ETA) with the running job's step bar under it."""

    fresh = False

    def event(self, news) -> None:
        self._open()
        if self.frames.total is None:  # jobs done before this session don't count for the ETA
            self.frames.unit, self.frames.total, self.frames.initial = "job", news.total, news.done
            self.frames.n = news.done
        self.frames.update(news.done - self.frames.n)
        self.fresh = self.fresh or news.kind == "start"

    def step(self, step) -> None:
        self._open()
        if self.fresh and self.steps.bar is not None:  # a new job, maybe resumed part-way
            self.steps.bar.reset(total=step.total)
        self.fresh = False
        self.steps(step)


@cli.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Batch folder [outputs/<manifest name>].")
@click.option("--jobs", "workers", type=click.IntRange(min=1), default=1, help="Worker processes [1].")
@click.option("--devices", help="One worker per device: cuda:0,cuda:1, cpu,cpu or all.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", help="Where jobs run [local].")
@click.option("--address", help="Ray cluster address (host:6379), with --executor ray [a running one, else local].")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads per worker; the same number gives the "
              "same images on every executor [torch's default; shared out among --jobs].")
@click.option("--dry-run", is_flag=True, help="Print the expanded jobs and their folders, run nothing.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@reports_errors
def batch(manifest, output, workers, devices, executor, address, threads, dry_run, quiet) -> None:
    """Render every job of MANIFEST (YAML: defaults, jobs, matrix); a re-run continues where it stopped.

    Example: pixgen batch shapes.yaml -o outputs/shapes
    """
    from pixgen.batch import check_executor, describe, plan_batch
    from pixgen.batch_run import parse_devices, run_batch, summary

    check_executor(executor, address)
    output = output or Path("outputs") / manifest.stem
    jobs, device_list = plan_batch(manifest, output), parse_devices(devices) if devices else None
    if dry_run:
        click.echo("\n".join(describe(job) for job in jobs) + f"\n{len(jobs)} jobs")
        return
    progress = BatchProgress(not quiet)
    try:
        result = run_batch(jobs, output, workers=workers, devices=device_list, on_step=progress.step,
                           on_event=progress.event, executor=executor, address=address, threads=threads)
    finally:
        progress.close()
    options = {"--jobs": workers if workers > 1 else None, "--devices": devices,
               "--executor": executor if executor != "local" else None, "--address": address, "--threads": threads}
    again = " ".join(["pixgen batch", str(manifest), "-o", str(output)] +
                     [f"{flag} {value}" for flag, value in options.items() if value is not None])
    click.echo("\n".join(summary(result, output, again)), err=result.interrupted)
    if result.interrupted:
        sys.exit(130)
    if result.names("failed"):
        raise click.ClickException(f"{len(result.names('failed'))} job(s) failed (see above)")


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell) -> None:
    """Print the shell completion script for SHELL (commands, options, choices).

    Example: pixgen completion bash >> ~/.bashrc
    """
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)(cli, {}, "pixgen", "_PIXGEN_COMPLETE")
    click.echo(completer.source())


@cli.group()
def presets() -> None:
    """List and show the bundled presets."""


@presets.command("list")
@reports_errors
def presets_list() -> None:
    """List bundled presets with their descriptions.

    Example: pixgen presets list
    """
    from pixgen.config import list_presets, preset_description

    for name in list_presets():
        click.echo(f"{name:<12} {preset_description(name)}")


@presets.command("show")
@click.argument("name")
@reports_errors
def presets_show(name) -> None:
    """Print a preset's YAML.

    Example: pixgen presets show draft
    """
    from pixgen.config import preset_path

    click.echo(preset_path(name).read_text(encoding="utf-8").rstrip())


@cli.group()
def models() -> None:
    """List, download and verify models."""


def model_state(entry) -> str:
    """bundled, imported, downloaded, not downloaded, or missing (a bundled file that is gone)."""
    from pixgen.model_store import is_imported

    if entry.bundled is not None:
        kind = "imported" if is_imported(entry) else "bundled"
        return kind if entry.is_available else "missing"
    return "downloaded" if entry.is_available else "not downloaded"


@models.command("list")
@reports_errors
def models_list() -> None:
    """List registered models and whether each is on disk.

    Example: pixgen models list
    """
    from pixgen.config import RunConfig
    from pixgen.model_store import model_size, pin_status
    from pixgen.registry import KINDS, load_registry

    registry, defaults = load_registry(), RunConfig()
    for kind in KINDS:
        click.echo(f"{kind.upper()} models:")
        for name in registry.names(kind):
            entry = registry.get(kind, name)
            state = model_state(entry)
            mark = "*" if name == defaults.vqgan or name in defaults.clip else " "
            click.echo(f" {mark} {name:<26} {state:<15} {_size_text(model_size(entry)):>9}  "
                       f"{pin_status(entry):<22} {entry.description}")
    click.echo("sha256: 'registry' = pinned in the registry; 'first download' = pinned when it was downloaded "
               "and checked to load; 'pinned on download' = no hash is published, pixgen will pin it.")
    click.echo("* default: the bundled shapes-world models work offline, with no download. "
               "For real-world prompts, download a standard VQGAN and CLIP and use "
               "--preset quality (see `pixgen presets show quality`).")


def _size_text(size: int | None) -> str:
    """A byte count for humans ("?" when unknown)."""
    if size is None:
        return "?"
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def _entries(names: tuple[str, ...]):
    """Registry entries for NAMES (every registered model when none are given)."""
    from pixgen.registry import KINDS, load_registry

    registry = load_registry()
    if not names:
        return [registry.get(kind, name) for kind in KINDS for name in registry.names(kind)]
    return [entry for name in names for entry in registry.find(name)]


@models.command("download")
@click.argument("names", nargs=-1, required=True)
@click.option("--keep-original", is_flag=True, help="Keep the full training checkpoint beside the slim copy.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@reports_errors
def models_download(names, keep_original, quiet) -> None:
    """Download models, check that they load as what they claim, pin their sha256, keep a slim copy of VQGANs.

    Example: pixgen models download vqgan_imagenet_f16_16384 ViT-B-32-openai
    """
    from pixgen.model_store import download_model

    for entry in _entries(names):
        for note in download_model(entry, keep_original=keep_original, progress=not quiet):
            click.echo(f"{entry.name}: {note}")
        click.echo(f"{entry.name}: ready")


@models.command("verify")
@click.argument("names", nargs=-1)
@reports_errors
def models_verify(names) -> None:
    """Re-hash model files on disk (all models if no NAME is given).

    Each file is "registry" (matches the sha256 pinned in the registry), "recorded" (matches the
    sha256 pinned at its first download), "unverified" (no reference hash: it loads, but nothing
    vouches for it), "mismatch" or "corrupt" (no reference and it does not load).
    Exit status: 0 every file verified, 1 a mismatch or corrupt file, 3 some files unverified.

    Example: pixgen models verify vqgan_imagenet_f16_16384
    """
    from pixgen.model_store import UNVERIFIED, verify_model

    checks = []
    for entry in _entries(names):
        found = verify_model(entry)
        if not found and names:
            click.echo(f"{entry.name}: not downloaded")
        for check in found:
            click.echo(f"{entry.name}: {check.status} {check.path}: {check.detail}")
        checks += found
    failed = sum(not check.ok for check in checks)
    if failed:
        raise click.ClickException(f"{failed} file(s) failed verification; "
                                   "remove and download them again (pixgen models remove NAME)")
    unverified = sum(check.status == UNVERIFIED for check in checks)
    if unverified:
        click.echo(f"{unverified} file(s) load but have no reference hash: unverified (exit status 3)", err=True)
        click.get_current_context().exit(3)


@models.command("path")
@click.argument("name", required=False)
@reports_errors
def models_path(name) -> None:
    """Print where models are stored (or the weights file of NAME).

    Example: pixgen models path vqgan_imagenet_f16_16384
    """
    from pixgen.cache import cache_dir

    if name is None:
        click.echo(cache_dir())
        return
    for entry in _entries((name,)):
        click.echo(entry.weights_path() or entry.cache_folder)


@models.command("remove")
@click.argument("names", nargs=-1, required=True)
@reports_errors
def models_remove(names) -> None:
    """Delete downloaded or imported models from the cache.

    Example: pixgen models remove wikiart_16384
    """
    from pixgen.model_store import remove_model
    from pixgen.registry import check_model_name

    for name in names:
        check_model_name(name)
    for entry in _entries(names):
        click.echo(f"{entry.name}: removed {remove_model(entry)}")


@models.command("import")
@click.argument("name")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The taming model YAML.")
@click.option("--ckpt", "checkpoint", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The taming .ckpt (or .safetensors) checkpoint.")
@reports_errors
def models_import(name, config_path, checkpoint) -> None:
    """Import a VQGAN you already have on disk as NAME (a slim fp16 copy in the cache).

    Example: pixgen models import my_vqgan --config model.yaml --ckpt last.ckpt
    """
    from pixgen.model_store import import_vqgan
    from pixgen.registry import load_registry

    slim = import_vqgan(name, config_path, checkpoint, load_registry())
    click.echo(f"{name}: imported as {slim} ({slim.stat().st_size / 1e6:.1f} MB); use --vqgan {name}")


def main() -> None:
    """Console entry point: run the command, then leave without tearing down torch's modules.

    Once torch and open_clip are imported, the interpreter's normal shutdown spends about a second
    freeing modules. Every output is already written atomically and closed by then, so exit hooks
    run and the streams are flushed, then the process ends at once.
    """
    try:
        cli(prog_name="pixgen")
        code = 0
    except SystemExit as stop:
        code = stop.code
    if not isinstance(code, int):  # None is success; a message is printed, as Python would
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    atexit._run_exitfuncs()  # exit hooks as Python would run them (Ray's disconnect, tempfile finalizers)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader went away: nothing left to tell it
        code = code or 141
    os._exit(code)
