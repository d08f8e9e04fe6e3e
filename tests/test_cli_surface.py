"""The CLI's surface: help on every command, fast start-up, presets and model listings."""

from __future__ import annotations

import socket
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from pixgen.cli import cli


def all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


@pytest.mark.parametrize(("path", "command"), list(all_commands(cli)), ids=lambda v: " ".join(v) if
                         isinstance(v, tuple) else "")
def test_every_command_has_help(path, command):
    assert command.help and command.help.strip()
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0
    if not isinstance(command, click.Group):
        assert "Example:" in command.help


def test_help_does_not_import_torch():
    code = ("import sys; from click.testing import CliRunner; from pixgen.cli import cli; "
            "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "r = CliRunner().invoke(cli, ['presets', 'list']); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_presets_list_and_show():
    result = CliRunner().invoke(cli, ["presets", "list"])
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines()]
    assert {"default", "draft", "quality"} <= set(names)
    result = CliRunner().invoke(cli, ["presets", "show", "draft"])
    assert "steps:" in result.output
    result = CliRunner().invoke(cli, ["presets", "show", "nope"])
    assert result.exit_code == 2 and result.output.startswith("Error: unknown preset 'nope'")


def test_models_list_shows_availability():
    result = CliRunner().invoke(cli, ["models", "list"])
    assert result.exit_code == 0
    lines = {line.split()[0] if not line.startswith(" *") else line.split()[1]: line
             for line in result.output.splitlines() if line.startswith("  ") or line.startswith(" *")}
    assert "bundled" in lines["tiny-vqgan"]
    assert "not downloaded" in lines["vqgan_imagenet_f16_16384"]
    assert "not downloaded" in lines["ViT-B-32-openai"]
    assert "default" in result.output


def test_network_guard_blocks_outside_addresses():
    with socket.socket() as sock, pytest.raises(RuntimeError, match="reach the network"):
        sock.connect(("192.0.2.1", 80))
