"""Resume trusts only what belongs to the run: a foreign state file or a missing or damaged frame is refused."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from pixgen.cli import cli


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256, to show a refused command changed nothing."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def invoke(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def still_run(folder: Path, preset: Path, prompt: str, seed: int, steps: int = 6) -> Path:
    result = invoke("run", prompt, "--preset", preset, "--seed", seed, "--steps", steps, "-o", folder, "-q")
    assert result.exit_code == 0, result.output
    return folder


def animation(folder: Path, preset: Path, prompt: str, seed: int, frames: int = 3) -> Path:
    result = invoke("animate", prompt, "--preset", preset, "--seed", seed, "--frames", frames,
                    "--first-frame-steps", 2, "--steps-per-frame", 1, "-o", folder, "-q")
    assert result.exit_code == 0, result.output
    return folder


@pytest.mark.parametrize("other", [("a blue square", 1), ("a red circle", 2)], ids=["other prompt", "other seed"])
def test_a_state_copied_from_another_run_is_refused(tmp_path, tiny_preset, other):
    mine = still_run(tmp_path / "mine", tiny_preset, "a red circle", 1)
    theirs = still_run(tmp_path / "theirs", tiny_preset, *other)
    shutil.copy(theirs / "state.pt", mine / "state.pt")
    before = tree(mine)
    result = invoke("resume", mine, "--steps", 8, "-q")
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {mine / 'state.pt'} belongs to another run (it records another "
                                     f"config than this run's run.yaml); it cannot be resumed here")
    assert tree(mine) == before


def test_the_run_own_state_resumes_also_from_before_states_recorded_their_run(tmp_path, tiny_preset):
    mine = still_run(tmp_path / "mine", tiny_preset, "a red circle", 1)
    assert isinstance(torch.load(mine / "state.pt", weights_only=True)["run"], str)
    assert invoke("resume", mine, "--steps", 8, "-q").exit_code == 0
    old = still_run(tmp_path / "old", tiny_preset, "a red circle", 1)
    state = torch.load(old / "state.pt", weights_only=True)
    del state["run"]  # as written by pixgen before it recorded the run
    torch.save(state, old / "state.pt")
    result = invoke("resume", old, "--steps", 8, "-q")
    assert result.exit_code == 0, result.output
    assert (old / "image.png").read_bytes() == (mine / "image.png").read_bytes()


def test_a_batch_starts_afresh_over_another_runs_state(tmp_path, tiny_preset):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump({"defaults": {"preset": str(tiny_preset), "steps": 8, "save_every": 2},
                                        "jobs": [{"name": "a", "prompt": "a red circle", "seed": 1}]}))
    reference = invoke("batch", manifest, "-o", tmp_path / "ref", "-q")
    assert reference.exit_code == 0, reference.output
    job = next(p for p in (tmp_path / "ref").iterdir() if p.is_dir())
    expected = (job / "image.png").read_bytes()
    # a half-done job whose state.pt came from another run (same shapes, another prompt)
    other = still_run(tmp_path / "other", tiny_preset, "a blue square", 5, steps=4)
    out = tmp_path / "out"
    (out / job.name).mkdir(parents=True)
    shutil.copy(other / "state.pt", out / job.name / "state.pt")
    result = invoke("batch", manifest, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert (out / job.name / "image.png").read_bytes() == expected


def test_an_animation_state_from_another_animation_is_refused(tmp_path, tiny_preset):
    mine = animation(tmp_path / "mine", tiny_preset, "a red circle ^ a blue square", 1, frames=3)
    theirs = animation(tmp_path / "theirs", tiny_preset, "a green triangle", 2, frames=3)
    state = torch.load(mine / "animation-state.pt", weights_only=True)
    state["frame"] = 0  # interrupted after its first frame
    torch.save(state, mine / "animation-state.pt")
    assert invoke("resume", mine, "-q").exit_code == 0  # its own state resumes

    foreign = torch.load(theirs / "animation-state.pt", weights_only=True)
    foreign["frame"] = 0
    torch.save(foreign, mine / "animation-state.pt")
    before = tree(mine)
    result = invoke("resume", mine, "-q")
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {mine / 'animation-state.pt'} belongs to another animation (it "
                                     f"records other settings than {mine / 'run.yaml'}); it cannot be resumed here")
    assert tree(mine) == before


@pytest.mark.parametrize("damage", ["missing", "truncated", "not an image"])
def test_a_missing_or_damaged_frame_stops_an_animation_resume_in_one_line(tmp_path, tiny_preset, damage):
    folder = animation(tmp_path / "anim", tiny_preset, "a red circle", 1, frames=3)
    frame = folder / "frames" / "frame-00001.png"
    if damage == "missing":
        frame.unlink()
    elif damage == "truncated":
        frame.write_bytes(frame.read_bytes()[:60])
    else:
        frame.write_text("hello")
    before = tree(folder)
    result = invoke("resume", folder, "-q")
    assert result.exit_code == 1
    line = result.output.strip()
    assert line.startswith(f"Error: animation frame {frame} ") and "\n" not in line
    assert ("is missing" in line) if damage == "missing" else ("not a readable image" in line)
    assert tree(folder) == before
