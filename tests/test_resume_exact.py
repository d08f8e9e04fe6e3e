"""Exact resume: wherever a Ctrl-C or kill -9 lands, `pixgen resume` gives the uninterrupted run's bytes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import pixgen.engine.loop as engine
from pixgen.cli import cli
from pixgen.pipeline.output import read_png_text

STEPS = "24"


def run_args(preset: Path, out: Path) -> list[str]:
    return ["run", "a red circle", "--preset", str(preset), "--seed", "5", "--steps", STEPS, "-o", str(out), "-q"]


def whole_run(tiny_preset: Path, steps: str) -> bytes:
    """The final image of an uninterrupted run (made once per session and steps)."""
    out = tiny_preset.parent / f"whole-{steps}"
    if not out.exists():
        result = CliRunner().invoke(cli, [*run_args(tiny_preset, out), "--steps", steps])
        assert result.exit_code == 0, result.output
    return (out / "image.png").read_bytes()


@pytest.fixture
def uninterrupted(tiny_preset) -> bytes:
    return whole_run(tiny_preset, STEPS)


def interrupt_after(function, calls: int):
    """Wrap ``function`` so that its ``calls``-th call finishes, then Ctrl-C arrives."""
    count = {"n": 0}

    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        count["n"] += 1
        if count["n"] == calls:
            raise KeyboardInterrupt
        return result
    return wrapper


@pytest.mark.parametrize("where, calls", [
    ("make_cutouts", 7),  # inside a step, after it drew its random cutouts
    ("clamp_to_codebook", 9),  # after the optimiser changed z and its moments, before the step ends
    ("clamp_to_codebook", 1),  # in the very first step
])
def test_ctrl_c_inside_a_step_resumes_exactly(where, calls, tiny_preset, tmp_path, monkeypatch, uninterrupted):
    out = tmp_path / "cut"
    with monkeypatch.context() as patch:
        patch.setattr(engine, where, interrupt_after(getattr(engine, where), calls))
        result = CliRunner().invoke(cli, run_args(tiny_preset, out))
    if calls == 1 and where == "clamp_to_codebook":
        assert result.exit_code == 130 and not out.exists()  # nothing finished: nothing kept
        return
    assert result.exit_code == 130, result.output
    done = int(read_png_text(out / "image.png")["steps_done"])
    assert torch.load(out / "state.pt", weights_only=True)["step"] == done
    resumed = CliRunner().invoke(cli, ["resume", str(out), "-q"])
    assert resumed.exit_code == 0, resumed.output
    assert (out / "image.png").read_bytes() == uninterrupted


def test_ctrl_c_in_the_progress_callback_resumes_exactly(tiny_preset, tmp_path, uninterrupted):
    from pixgen.config import resolve_config
    from pixgen.pipeline.runner import resume_run, run

    def stop_at_11(step):
        if step.step == 11:
            raise KeyboardInterrupt

    config = resolve_config(str(tiny_preset), flags={"prompt": "a red circle", "seed": 5, "steps": int(STEPS)})
    partial = run(config, tmp_path / "cb", on_step=stop_at_11)
    assert not partial.completed and partial.steps_done == 11
    assert resume_run(tmp_path / "cb").completed
    assert (tmp_path / "cb" / "image.png").read_bytes() == uninterrupted


@pytest.mark.parametrize("stop_at", [10, 11])  # a frame step (save_every 2) and a step between frames
def test_ctrl_c_in_the_callback_keeps_every_frame_and_the_gif_exact(stop_at, tiny_preset, tmp_path, uninterrupted):
    from pixgen.config import resolve_config
    from pixgen.pipeline.runner import resume_run, run

    def stop(step):
        if step.step == stop_at:
            raise KeyboardInterrupt

    config = resolve_config(str(tiny_preset), flags={"prompt": "a red circle", "seed": 5, "steps": int(STEPS)})
    assert not run(config, tmp_path / "cb", on_step=stop).completed
    assert resume_run(tmp_path / "cb").completed
    whole = tiny_preset.parent / f"whole-{STEPS}"
    frames = sorted(p.name for p in (whole / "frames").iterdir())
    assert sorted(p.name for p in (tmp_path / "cb" / "frames").iterdir()) == frames
    for name in [*(f"frames/{f}" for f in frames), "progress.gif", "image.png"]:
        assert (tmp_path / "cb" / name).read_bytes() == (whole / name).read_bytes(), name


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env


def _start(tiny_preset: Path, out: Path, steps: str) -> subprocess.Popen:
    args = run_args(tiny_preset, out)
    args[args.index("--steps") + 1] = steps
    return subprocess.Popen([sys.executable, "-m", "pixgen", *args], env=_subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stdout.read().decode()
        assert time.monotonic() < deadline, "the run never wrote its first checkpoint"
        time.sleep(0.005)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGINT, signal.SIGKILL],
                         ids=["sigint-a", "sigint-b", "kill-9"])
def test_real_signal_at_a_random_moment_resumes_exactly(signal_number, tiny_preset, tmp_path, request):
    steps = "150"  # long enough that the signal lands mid-run
    out = tmp_path / "cut"
    process = _start(tiny_preset, out, steps)
    _wait_for(out / "state.pt", process)
    time.sleep(random.Random(request.node.name).uniform(0.0, 0.4))  # somewhere inside some step
    process.send_signal(signal_number)
    process.wait(timeout=60)
    output = process.stdout.read().decode()
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    expected_code = 130 if signal_number == signal.SIGINT else -signal.SIGKILL
    assert process.returncode == expected_code, output
    if signal_number == signal.SIGINT:
        assert "Continue with: pixgen resume" in output and "Traceback" not in output
    assert not [p for p in out.rglob("*") if ".tmp" in p.name] or signal_number == signal.SIGKILL
    resumed = CliRunner().invoke(cli, ["resume", str(out), "-q"])
    assert resumed.exit_code == 0, resumed.output
    assert (out / "image.png").read_bytes() == whole_run(tiny_preset, steps)


def test_a_frame_written_after_the_last_checkpoint_is_not_kept_twice(tiny_preset, tmp_path, uninterrupted):
    import shutil

    from pixgen.config import resolve_config
    from pixgen.pipeline.runner import resume_run, run

    def stop_at_11(step):
        if step.step == 11:
            raise KeyboardInterrupt

    config = resolve_config(str(tiny_preset), flags={"prompt": "a red circle", "seed": 5, "steps": int(STEPS)})
    out = tmp_path / "cut"
    run(config, out, on_step=stop_at_11)
    # as if killed after writing step 12's frame but before its state.pt
    shutil.copy(out / "frames" / "step-00010.png", out / "frames" / "step-00012.png")
    resume_run(out)
    assert (out / "progress.gif").read_bytes() == (tiny_preset.parent / f"whole-{STEPS}" / "progress.gif").read_bytes()


def test_killed_before_the_first_checkpoint_starts_again_exactly(tiny_preset, tmp_path, uninterrupted):
    from pixgen.config import config_to_yaml, resolve_config

    out = tmp_path / "early"
    out.mkdir()
    config = resolve_config(str(tiny_preset), flags={"prompt": "a red circle", "seed": 5, "steps": int(STEPS)})
    (out / "run.yaml").write_text(config_to_yaml(config))  # what a kill before state.pt leaves
    resumed = CliRunner().invoke(cli, ["resume", str(out), "-q"])
    assert resumed.exit_code == 0, resumed.output
    assert (out / "image.png").read_bytes() == uninterrupted
