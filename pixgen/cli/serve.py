"""The web studio: ``pixgen serve``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from pixgen.cli.common import reports_errors


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; any but loopback needs a token (printed, or PIXGEN_TOKEN).")
@click.option("--port", type=int, default=7860, show_default=True, help="Port (0: any free one).")
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=Path("outputs/studio"),
              show_default=True, help="Folder of the studio's jobs (a batch folder: layout and log).")
@click.option("--jobs", "workers", type=click.IntRange(min=1), default=1, help="Worker processes [1].")
@click.option("--devices", help="One worker per device: cuda:0,cuda:1, cpu,cpu or all.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", help="Where jobs run [local].")
@click.option("--address", help="Ray cluster address (host:6379), with --executor ray [a running one, else local].")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads per worker [the cores shared out].")
@click.option("--max-queue", type=int, default=1000, show_default=True,
              help="Jobs waiting at most; more get HTTP 429.")
@click.option("--preview-every", type=float, default=0.5, show_default=True,
              help="Seconds between preview images sent to the page, at least.")
@click.option("--public-url", help="The address people open, behind a reverse proxy (https://name/); a token is "
              "then required.")
@reports_errors
def serve(host, port, root, workers, devices, executor, address, threads, max_queue, preview_every,
          public_url) -> None:
    """Start the web studio and its HTTP API; jobs queue in DIR and survive a restart.

    Example: pixgen serve --jobs 2   (then open http://127.0.0.1:7860/)
    """
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise click.ClickException("the web studio needs: pip install 'pixgen[serve]'")
    from pixgen.batch.local import parse_devices
    from pixgen.serve.server import ServeOptions
    from pixgen.serve.server import serve as run_server

    options = ServeOptions(root, host, port, workers, parse_devices(devices) if devices else None, executor, address,
                           threads, max_queue, preview_every, public_url)
    run_server(options, say=lambda line: click.echo(line, err=True))
