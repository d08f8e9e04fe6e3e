"""One writer per output (issue #24): a second command on a folder being written is refused at once.

The first writer is a real ``python -m pixgen`` process, frozen with SIGSTOP once it has started
writing, so that the second one meets it mid-run whatever the machine's speed, and so that any
change to the folder meanwhile can only be the second one's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import pixgen
from pixgen.cli import cli
from pixgen.config import resolve_config
from pixgen.errors import OutputBusy, PixgenError
from pixgen.folder_lock import hold_folder
from pixgen.pipeline.output import read_png_text

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no flock on Windows: writers are not kept apart")

ROOT = Path(__file__).resolve().parents[1]
ADVICE = "wait for it to finish, or choose another --output"
# holds a folder until its stdin closes: a second process that holds one, without loading torch
HOLDER = "import sys\nfrom pixgen.folder_lock import hold_folder\nwith hold_folder(sys.argv[1]):\n" \
         "    print('held', flush=True)\n    sys.stdin.read()\n"


def child_env() -> dict[str, str]:
    """This test's environment (its PIXGEN_HOME and PIXGEN_REGISTRY), with this source tree importable."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def pixgen_command(*args) -> list[str]:
    return [sys.executable, "-m", "pixgen", *(str(a) for a in args)]


def wait_for(condition, what: str, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Writer:
    """A ``pixgen`` process started in the background, frozen once ``ready()`` and thawed by ``finish()``."""

    def __init__(self, tmp_path: Path, *args):
        self.log = tmp_path / f"writer-{time.monotonic_ns()}.err"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(pixgen_command(*args), cwd=tmp_path, env=child_env(),
                                         stdout=subprocess.DEVNULL, stderr=err)
        self.pid = self.proc.pid

    def pause_once(self, ready) -> None:
        """Wait until ``ready()`` (it has started writing), then SIGSTOP it, still running."""
        wait_for(lambda: ready() or self.proc.poll() is not None, "the first writer to start writing")
        self.proc.send_signal(signal.SIGSTOP)
        assert self.proc.poll() is None, f"the first writer ended too soon: {self.log.read_text()}"

    def finish(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        assert self.proc.wait(timeout=120) == 0, self.log.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def writers():
    started: list[Writer] = []
    yield started
    for writer in started:  # a failed test leaves no frozen process behind
        writer.kill()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and mtime: any write, removal or new entry changes it."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in [root, *root.rglob("*")]}


def refusal_line(output: str, pid: int) -> str:
    """The one line a refused command prints: it names the holder and says what to do."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: ") and f"process {pid} (" in lines[0] and ADVICE in lines[0], lines[0]
    return lines[0]


def test_second_run_on_the_same_output_is_refused_and_the_first_completes(tmp_path, tiny_preset, writers):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    first = Writer(work, "run", "a red circle", "--preset", tiny_preset, "--seed", 1, "--steps", 16, "-o", out, "-q")
    writers.append(first)
    first.pause_once(lambda: (out / "state.pt").is_file())
    before = snapshot(work)

    # --overwrite would remove the first run's outputs: refused before anything is touched
    second = subprocess.run(pixgen_command("run", "a blue square", "--preset", tiny_preset, "--seed", 2, "-o", out,
                                           "--overwrite", "-q"),
                            cwd=work, env=child_env(), capture_output=True, text=True, timeout=120)
    assert second.returncode == 1, second.stderr
    line = refusal_line(second.stderr, first.pid)
    assert str(out) in line and "pixgen run a red circle" in line  # the holder's command, from /proc

    # the library API: the same refusal, as a PixgenError; resuming the still run too
    config = resolve_config(str(tiny_preset), flags={"prompt": "a blue square", "seed": 2})
    with pytest.raises(OutputBusy, match=f"process {first.pid} ") as refused:
        pixgen.run(config, out, overwrite=True)
    assert isinstance(refused.value, PixgenError) and ADVICE in str(refused.value)
    with pytest.raises(OutputBusy, match=f"process {first.pid} "):
        pixgen.resume_run(out, steps=30)
    assert snapshot(work) == before  # nothing written, removed or added while the first was frozen

    first.finish()
    text = read_png_text(out / "image.png")
    assert (text["prompt"], text["seed"], text["steps_done"]) == ("a red circle", "1", "16")
    assert yaml.safe_load((out / "run.yaml").read_text())["prompt"] == "a red circle"
    assert sorted(p.name for p in out.iterdir()) == ["frames", "image.png", "progress.gif", "run.yaml", "state.pt"]
    assert len(list((out / "frames").glob("step-*.png"))) == 7  # the first run's frames, every 2 steps to 14


def test_a_refused_writer_leaves_no_new_file_or_folder(tmp_path, tiny_preset):
    work = tmp_path / "work"
    work.mkdir()
    target = work / "cat.png"  # the run folder is cat.png.pixgen; the image would be cat.png beside it
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(work / "cat.png.pixgen")], env=child_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(work)
        config = resolve_config(str(tiny_preset), flags={"prompt": "a red circle", "seed": 1})
        with pytest.raises(OutputBusy, match=f"process {holder.pid} "):
            pixgen.run(config, target)
        result = CliRunner().invoke(cli, ["run", "a red circle", "--preset", str(tiny_preset), "-o", str(target),
                                          "--overwrite", "-q"])
        assert result.exit_code == 1
        refusal_line(result.output, holder.pid)
        assert snapshot(work) == before and not target.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert sorted(p.name for p in work.iterdir()) == ["cat.png.pixgen"]  # the holder's folder, still empty


def test_second_batch_on_the_same_folder_is_refused(tmp_path, tiny_preset, writers):
    work = tmp_path / "work"
    work.mkdir()
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump({"defaults": {"preset": str(tiny_preset), "steps": 10},
                                        "matrix": {"prompt": ["a red circle", "a blue square"], "seed": [0]}}))
    out = work / "out"
    first = Writer(work, "batch", manifest, "-o", out, "-q")
    writers.append(first)
    first.pause_once(lambda: any(out.glob("*/state.pt")))
    before = snapshot(work)

    second = subprocess.run(pixgen_command("batch", manifest, "-o", out, "-q"), cwd=work, env=child_env(),
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 1, second.stderr
    assert "pixgen batch" in refusal_line(second.stderr, first.pid)
    assert snapshot(work) == before

    first.finish()
    records = [json.loads(line) for line in (out / "batch.jsonl").read_text().splitlines()]
    starts = [r["folder"] for r in records if r["event"] == "start"]
    ends = [r["folder"] for r in records if r["event"] == "end"]
    assert len(starts) == 2 and sorted(starts) == sorted(set(starts)) == sorted(ends)  # one start per job


def test_second_animation_and_its_resume_are_refused_while_it_renders(tmp_path, tiny_preset, writers):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "anim"
    first = Writer(work, "animate", "a red circle", "--frames", 5, "--steps-per-frame", 3, "--preset", tiny_preset,
                   "--seed", 1, "-o", out, "-q")
    writers.append(first)
    first.pause_once(lambda: (out / "frames" / "frame-00000.png").is_file())
    before = snapshot(work)

    again = CliRunner().invoke(cli, ["animate", "a blue square", "--frames", "2", "--preset", str(tiny_preset),
                                     "-o", str(out), "--overwrite", "-q"])
    assert again.exit_code == 1
    refusal_line(again.output, first.pid)
    resumed = CliRunner().invoke(cli, ["resume", str(out), "-q"])  # resume_animation of the still animation
    assert resumed.exit_code == 1
    refusal_line(resumed.output, first.pid)
    assert snapshot(work) == before

    first.finish()
    assert sorted(p.name for p in (out / "frames").iterdir()) == [f"frame-{n:05d}.png" for n in range(5)]
    assert (out / "animation.gif").is_file() and "a red circle" in (out / "run.yaml").read_text()


def test_kill_9_leaves_no_stale_lock(tmp_path, tiny_preset, writers):
    out = tmp_path / "out"
    first = Writer(tmp_path, "run", "a red circle", "--preset", tiny_preset, "--seed", 1, "--steps", 12,
                   "--save-every", 0, "-o", out, "-q")
    writers.append(first)
    wait_for(lambda: (out / "state.pt").is_file() or first.proc.poll() is not None, "the run's first checkpoint")
    first.kill()

    result = CliRunner().invoke(cli, ["resume", str(out), "-q"])  # resume holds the folder, then runs in it
    assert result.exit_code == 0, result.output
    assert read_png_text(out / "image.png")["steps_done"] == "12"


def test_hold_folder_is_reentrant_within_a_process_and_exclusive_across_processes(tmp_path):
    folder = tmp_path / "new" / "folder"
    alias = tmp_path / "alias"
    alias.symlink_to(folder, target_is_directory=True)
    with hold_folder(folder) as created:
        assert created and folder.is_dir()
        with hold_folder(folder) as again, hold_folder(alias) as aliased:  # the same folder: no self-refusal
            assert not again and not aliased
        probe = subprocess.run([sys.executable, "-c", HOLDER, str(folder)], env=child_env(), input="",
                               capture_output=True, text=True, timeout=30)
        assert probe.returncode != 0 and "OutputBusy" in probe.stderr and f"process {os.getpid()} (" in probe.stderr
    assert folder.is_dir()  # kept: it was created, but the block did not fail

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], env=child_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputBusy) as refused, hold_folder(folder):
        pass
    message = str(refused.value)
    assert "\n" not in message and f"process {holder.pid} (python" in message and ADVICE in message
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with hold_folder(folder):  # the OS dropped the killed holder's lock
        pass

    with pytest.raises(RuntimeError), hold_folder(tmp_path / "gone"):
        raise RuntimeError("the writer failed before writing anything")
    assert not (tmp_path / "gone").exists()  # a folder made for a failed writer is removed again
