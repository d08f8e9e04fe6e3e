"""`pixgen serve`'s refusals: one line, non-zero, nothing started and nothing written."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

pytest.importorskip("fastapi")
from pixgen.cli import cli  # noqa: E402


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "70000"], "invalid port 70000"),
    (["--max-queue", "0"], "invalid --max-queue 0"),
    (["--preview-every", "0"], "invalid --preview-every"),
    (["--public-url", "ftp://x"], "invalid --public-url"),
    (["--devices", "cuda:7"], "cuda"),
    (["--jobs", "999"], "--jobs 999"),
    (["--executor", "ray", "--jobs", "2"], "--jobs and --devices are for --executor local"),
    (["--address", "head:6379"], "--address is for --executor ray"),
])
def test_bad_options_are_one_line_and_touch_nothing(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["serve", "--dir", str(tmp_path / "studio"), *args])
    assert result.exit_code != 0 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "studio").exists()


def test_a_taken_port_and_a_file_as_dir_are_refused(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--port", str(port), "--dir", str(tmp_path / "studio")])
    assert result.exit_code != 0 and f"cannot listen on 127.0.0.1:{port}" in result.output
    assert not (tmp_path / "studio").exists()
    (tmp_path / "file").write_text("mine")
    result = CliRunner().invoke(cli, ["serve", "--port", "0", "--dir", str(tmp_path / "file")])
    assert result.exit_code != 0 and "is a file" in result.output
    assert (tmp_path / "file").read_text() == "mine"


def test_a_folder_of_other_files_is_not_taken_as_the_studio(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("my page")
    result = CliRunner().invoke(cli, ["serve", "--port", "0", "--dir", str(site)])
    assert result.exit_code != 0 and "not a pixgen studio or batch folder" in result.output
    assert sorted(p.name for p in site.iterdir()) == ["index.html"] and (site / "index.html").read_text() == "my page"
