"""pixgen animate end to end on tiny models: errors, motion, outputs, resume, models loaded once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

import pixgen
from pixgen.cli import cli
from pixgen.pipeline.output import read_png_text

SHAPES_VQGAN = Path(pixgen.__file__).parent / "packs" / "shapes" / "weights" / "shapes-vqgan.safetensors"


def invoke(*args):
    return CliRunner().invoke(cli, ["animate", *(str(a) for a in args)])


def plan_and_config(tiny_preset, story, seed=3, **settings):
    from pixgen.animation.animate import animation_settings
    from pixgen.config import resolve_config

    plan = animation_settings(story, **settings)
    return plan, resolve_config(str(tiny_preset), flags={"prompt": plan.segments[0].prompt, "seed": seed})


@pytest.mark.parametrize("args, message", [
    (["a", "--frames", "10", "--zoom", "5:(1), 2:(1.1)"],
     "zoom: keyframes must be in increasing order, but 2 follows 5"),
    (["a", "--frames", "10", "--zoom", "-1:(1.1)"], "zoom: keyframe -1 is negative; frames count from 0"),
    (["a", "--frames", "10", "--pan", "0:(1,0), 10:(0,0)"],
     "pan: keyframe 10 is beyond the last frame (9) of a 10-frame animation"),
    (["a", "--frames", "10", "--zoom", "0"], "zoom: must be greater than 0, got 0 at frame 0"),
    (["a ^ ^ b", "--frames", "10"], "story segment 2 of 'a ^ ^ b' is empty: every story prompt needs text"),
    (["a", "--frames", "10", "--rotate", "nan"], "rotate: 'nan' must be finite (no nan or inf)"),
    (["a", "--frames", "10", "--smooth", "1"], "invalid value 1.0 for 'smooth': must be in [0, 1)"),
    (["a"], "give the number of frames: --frames N"),
    (["--frames", "3"], "give a prompt, a story 'a ^ b' or a schedule file"),
    (["a", "--frames", "3", "--steps", "0"], None),  # click's own range check, also exit 2
])
def test_bad_schedules_are_one_line_exit_2_and_write_nothing(tmp_path, tiny_preset, args, message):
    out = tmp_path / "out"
    result = invoke(*args, "--preset", tiny_preset, "-o", out)
    assert result.exit_code == 2, result.output
    if message is not None:
        assert result.output.strip() == f"Error: {message}"
    assert "Traceback" not in result.output
    assert not out.exists()


def test_bad_schedule_file_is_one_line(tmp_path, tiny_preset):
    schedule = tmp_path / "story.yaml"
    schedule.write_text(yaml.safe_dump({"frames": 6, "schedule": [{"prompt": "a", "frames": "0-2"},
                                                                  {"prompt": "b", "frames": "4-5"}]}))
    result = invoke(schedule, "--preset", tiny_preset, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert result.output.strip() == "Error: frame 3 has no prompt: the schedule's frame ranges must cover frames 0-5"
    assert not (tmp_path / "out").exists()


def marker_image(path: Path, x: int, y: int) -> Path:
    """A blue 64x64 picture with a red 6x6 square centred near (x, y)."""
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[..., 2] = 200
    pixels[y - 3:y + 3, x - 3:x + 3] = (230, 30, 30)
    Image.fromarray(pixels).save(path)
    return path


def marker_centres(folder: Path) -> list[tuple[float, float]]:
    centres = []
    for path in sorted((folder / "frames").glob("frame-*.png")):
        pixels = np.asarray(Image.open(path)).astype(int)
        ys, xs = np.nonzero((pixels[..., 0] > 128) & (pixels[..., 2] < 128))
        centres.append((xs.mean() + 0.5, ys.mean() + 0.5))  # pixel centres; the image centre is (32, 32)
    return centres


def motion_only(tmp_path, tiny_preset, *motion):
    """Frames with no optimisation at all (K0 = K = 0): only the move and the VQGAN round trip act."""
    out = tmp_path / "motion"
    result = invoke("a red square", "--frames", 5, "--steps-per-frame", 0, "--first-frame-steps", 0, *motion,
                    "--init-image", marker_image(tmp_path / "marker.png", 43, 32), "--preset", tiny_preset,
                    "--vqgan", SHAPES_VQGAN, "--size", 64, "--seed", 1, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    return marker_centres(out)


def test_zoom_moves_a_marker_outward_frame_by_frame(tmp_path, tiny_preset):
    centres = motion_only(tmp_path, tiny_preset, "--zoom", "1.1")
    distances = [x - 32 for x, _ in centres]
    assert all(b > a + 0.4 for a, b in zip(distances, distances[1:], strict=False)), distances
    # each frame magnifies about the centre by 1.1: the marker ends near 1.1**4 times as far out
    assert distances[-1] / distances[0] == pytest.approx(1.1 ** 4, abs=0.15)


def test_pan_moves_a_marker_by_the_requested_pixels(tmp_path, tiny_preset):
    centres = motion_only(tmp_path, tiny_preset, "--pan", "-3,2")
    steps = np.diff(np.array(centres), axis=0)
    # tolerance: 1 px per frame (bilinear resample + VQGAN round trip of a 6 px marker)
    assert np.abs(steps - [-3, 2]).max() <= 1.0, steps
    assert np.abs(steps.sum(axis=0) - [-12, 8]).max() <= 1.5, steps


def test_animation_outputs_metadata_videos_and_models_loaded_once(tmp_path, tiny_preset, monkeypatch):
    from pixgen.pipeline import runner as pipeline

    loads = {"vqgan": 0, "clip": 0}
    for kind in loads:
        real = getattr(pipeline, f"load_{kind}")

        def counting(*args, _real=real, _kind=kind, **kwargs):
            loads[_kind] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(pipeline, f"load_{kind}", counting)
    out = tmp_path / "anim"
    result = invoke("a red circle ^ a blue square", "--frames", 4, "--steps-per-frame", 2, "--first-frame-steps", 3,
                    "--crossfade", 1, "--zoom", "0:(1.0), 3:(1.2)", "--interpolate", 1, "--fps", 5, "--seed", 4,
                    "--preset", tiny_preset, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert loads == {"vqgan": 1, "clip": 1}  # once for the whole animation, not per frame
    frames = sorted((out / "frames").glob("*.png"))
    assert [f.name for f in frames] == [f"frame-{i:05d}.png" for i in range(4)]
    texts = [read_png_text(f) for f in frames]
    assert [t["frame"] for t in texts] == ["0", "1", "2", "3"] and {t["frames"] for t in texts} == {"4"}
    assert [t["prompt"] for t in texts] == ["a red circle:1.0", "a red circle:1.0",
                                            "a red circle:0.5|a blue square:0.5", "a blue square:1.0"]
    assert [t["steps_done"] for t in texts] == ["3", "2", "2", "2"]
    recipes = [yaml.safe_load(t["config"]) for t in texts]
    assert [r["seed"] for r in recipes] == [4, 5, 6, 7]  # frame t is seeded with seed + t
    assert recipes[1]["init"] == "image" and recipes[1]["init_image"] == "previous-frame"

    record = yaml.safe_load((out / "run.yaml").read_text())
    assert record["config"]["seed"] == 4 and record["animation"]["zoom"] == "0:(1.0), 3:(1.2)"
    assert record["animation"]["schedule"] == [{"prompt": "a red circle", "frames": [0, 1], "weight": "0:(1.0)"},
                                               {"prompt": "a blue square", "frames": [2, 3], "weight": "0:(1.0)"}]
    video = iio.imread(out / "animation.mp4", index=None)
    assert video.shape == (7, 32, 32, 3)  # 4 frames + 3 blended in between
    assert iio.immeta(out / "animation.mp4")["fps"] == pytest.approx(10)  # 5 fps x (1 + 1 interpolated)
    gif = iio.imread(out / "animation.gif", index=None)
    assert gif.shape == (7, 32, 32, 3)
    assert iio.immeta(out / "animation.gif", index=0)["duration"] == 100
    assert "video: " in result.output and "animation.mp4" in result.output

    again = invoke("a", "--frames", 2, "--preset", tiny_preset, "-o", out, "-q")
    assert again.exit_code == 1 and again.output.strip() == (
        f"Error: output folder {out} already holds run.yaml; "
        "pass --overwrite to replace it, or choose another --output")


def test_resume_after_ctrl_c_gives_byte_identical_frames(tmp_path, tiny_preset):
    from pixgen.animation.animate import animate, is_animation_folder, resume_animation

    plan, config = plan_and_config(tiny_preset, "a red circle ^ a blue square", frames=5, steps_per_frame=2,
                                   first_frame_steps=2, zoom=1.05, rotate=2, pan="1,0", smooth=0.3)
    whole = animate(config, plan, tmp_path / "whole")
    assert whole.completed and len(whole.frame_paths) == 5

    def interrupt(done):
        if done.frame == 2:
            raise KeyboardInterrupt

    partial = animate(config, plan, tmp_path / "partial", on_frame=interrupt)
    assert not partial.completed and partial.frames_done == 3
    assert not (tmp_path / "partial" / "animation.mp4").exists()
    state = torch.load(tmp_path / "partial" / "animation-state.pt", weights_only=True)
    assert state["frame"] == 2 and set(state) >= {"z", "optimizer", "generator"}
    assert is_animation_folder(tmp_path / "partial") and not is_animation_folder(tmp_path)

    steps = []
    resumed = resume_animation(tmp_path / "partial", on_step=steps.append)
    assert resumed.completed and len(steps) == 4  # frames 3 and 4 only, 2 steps each
    for a, b in zip(whole.frame_paths, resumed.frame_paths, strict=True):
        assert a.read_bytes() == b.read_bytes(), b.name
    assert whole.gif_path.read_bytes() == resumed.gif_path.read_bytes()

    # through the CLI: a finished animation resumes by rewriting its videos; --steps is refused
    (tmp_path / "partial" / "animation.gif").unlink()
    result = CliRunner().invoke(cli, ["resume", str(tmp_path / "partial"), "-q"])
    assert result.exit_code == 0, result.output
    assert whole.gif_path.read_bytes() == (tmp_path / "partial" / "animation.gif").read_bytes()
    result = CliRunner().invoke(cli, ["resume", str(tmp_path / "partial"), "--steps", "9"])
    assert result.exit_code == 2 and result.output.strip() == (
        "Error: --steps applies to a still run; an animation resumes with its own schedule")


def test_resume_after_kill_9_gives_byte_identical_frames(tmp_path, tiny_preset):
    from pixgen.animation.animate import animate

    story, frames = "a red circle ^ a green triangle", 24
    plan, config = plan_and_config(tiny_preset, story, frames=frames, steps_per_frame=3, first_frame_steps=3,
                                   zoom=1.05)
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "pixgen", "animate", story, "--frames", str(frames), "--steps-per-frame", "3",
               "--first-frame-steps", "3", "--zoom", "1.05", "--seed", "3", "--preset", str(tiny_preset),
               "-o", str(out), "-q"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    state_path, deadline = out / "animation-state.pt", time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if state_path.is_file() and torch.load(state_path, weights_only=True)["frame"] >= 1:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    done = torch.load(state_path, weights_only=True)["frame"]
    assert 1 <= done < frames - 1

    result = CliRunner().invoke(cli, ["resume", str(out), "-q"])
    assert result.exit_code == 0, result.output
    resumed_paths = sorted((out / "frames").glob("frame-*.png"))
    whole = animate(config, plan, tmp_path / "whole")
    for a, b in zip(whole.frame_paths, resumed_paths, strict=True):
        assert a.read_bytes() == b.read_bytes(), b.name


def test_transform_pans_by_whole_pixels_and_rotates_counter_clockwise():
    from pixgen.animation.motion import transform

    image = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    moved = transform(image, pan=(2.0, -1.0))  # content 2 px right, 1 px up
    assert torch.allclose(moved[..., 0:11, 2:16], image[..., 1:12, 0:14], atol=1e-5)
    square = image[..., :12, :12]
    assert torch.allclose(transform(square, rotate=90), torch.rot90(square, 1, dims=(-2, -1)), atol=1e-5)
    assert torch.equal(transform(image), image)
    zoomed = transform(image, zoom=2.0)
    assert zoomed.shape == image.shape and zoomed.dtype == torch.float32


def test_coherence_measures_change_and_judge_agreement():
    from pixgen.evaluation.coherence import coherence, dominant_prompt, frame_changes
    from pixgen.packs.shapes.eval_world import ShapesWorld

    still = np.zeros((8, 8, 3), np.uint8)
    frames = [still, still + 51, still + 51]
    assert frame_changes(frames) == pytest.approx([0.2, 0.0])
    assert dominant_prompt("a red circle:0.25|a blue square:0.75") == "a blue square"

    class FakeJudge:
        def predict(self, images):
            assert images.shape == (3, 3, 8, 8) and images.max() <= 1
            return [{"shape": "circle", "colour": "red", "background": "blue"}] * 3

    prompts = ["a red circle on a blue background:1.0",
               "a red circle on a blue background:0.5|a yellow square on a green background:0.5",
               "a yellow square on a green background:1.0"]
    world = ShapesWorld()
    report = coherence(frames, prompts, FakeJudge(), world)
    assert report == {"frames": 3, "mean_change": pytest.approx(0.1), "on_prompt": pytest.approx(2 / 3)}
