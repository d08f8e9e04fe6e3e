"""Batch renders: ``pixgen batch``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pixgen.cli.common import output_option, quiet_option, reports_errors
from pixgen.cli.progress import BatchProgress


@click.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@output_option("Batch folder [outputs/<manifest name>].")
@click.option("--jobs", "workers", type=click.IntRange(min=1), default=1, help="Worker processes [1].")
@click.option("--devices", help="One worker per device: cuda:0,cuda:1, cpu,cpu or all.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", help="Where jobs run [local].")
@click.option("--address", help="Ray cluster address (host:6379), with --executor ray [a running one, else local].")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads per worker; the same number gives the "
              "same images on every executor [torch's default; shared out among --jobs].")
@click.option("--dry-run", is_flag=True, help="Print the expanded jobs and their folders, run nothing.")
@quiet_option()
@reports_errors
def batch(manifest, output, workers, devices, executor, address, threads, dry_run, quiet) -> None:
    """Render every job of MANIFEST (YAML: defaults, jobs, matrix); a re-run continues where it stopped.

    Example: pixgen batch shapes.yaml -o outputs/shapes
    """
    from pixgen.batch.jobs import summary
    from pixgen.batch.local import parse_devices
    from pixgen.batch.manifest import check_executor, describe, plan_batch
    from pixgen.batch.runner import check_run_options, run_batch

    check_executor(executor, address)
    output = output or Path("outputs") / manifest.stem
    device_list = parse_devices(devices) if devices else None
    check_run_options(executor, workers, device_list, threads)  # before the manifest's jobs are planned
    jobs = plan_batch(manifest, output)
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
