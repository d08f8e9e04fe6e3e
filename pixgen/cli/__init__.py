"""The ``pixgen`` command: parse, call the library, print. No math here; one module per command group.

Heavy modules (torch, the models) are imported inside commands so ``pixgen --help`` is instant.
"""

from __future__ import annotations

import atexit
import os
import sys

import click

from pixgen import __version__
from pixgen.cli.animate import animate
from pixgen.cli.batch import batch
from pixgen.cli.evaluate import eval_command
from pixgen.cli.models import models
from pixgen.cli.presets import presets
from pixgen.cli.run import export, resume, run
from pixgen.cli.serve import serve

ENVIRONMENT_HELP = """\b
Environment variables:
  PIXGEN_HOME      where models are downloaded and imported (default: the user cache dir)
  PIXGEN_OFFLINE   1/true/yes: never touch the network (same as --offline)
  PIXGEN_REGISTRY  extra model registry YAML files, separated by the OS path separator
  PIXGEN_PRESET    the preset used when --preset is not given (default: default)
  PIXGEN_DEVICE    the device used when --device is not given (auto, cpu, cuda, cuda:N, mps)
  PIXGEN_TOKEN     the token pixgen serve asks for off loopback (default: a new one, printed)

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


for command in (run, resume, animate, export, eval_command, batch, serve, presets, models):
    cli.add_command(command)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell) -> None:
    """Print the shell completion script for SHELL (commands, options, choices).

    Example: pixgen completion bash >> ~/.bashrc
    """
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)(cli, {}, "pixgen", "_PIXGEN_COMPLETE")
    click.echo(completer.source())


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
