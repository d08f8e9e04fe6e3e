"""Presets: ``pixgen presets list|show``."""

from __future__ import annotations

import click

from pixgen.cli.common import reports_errors


@click.group()
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
