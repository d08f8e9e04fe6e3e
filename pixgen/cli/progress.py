"""Progress bars and result lines on the terminal: tqdm on stderr, where outputs went on stdout."""

from __future__ import annotations

import math
import sys
import time

import click

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
