"""End to end through the CLI on tiny models: outputs, metadata, determinism, overwrite, resume."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from pixgen.cli import cli
from pixgen.pipeline.output import read_png_text


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def run_tiny(tiny_preset, out, *extra):
    return invoke("run", "a red circle", "--preset", tiny_preset, "-o", out, "-q", *extra)


def test_run_writes_image_frames_gif_and_recipe(tmp_path, tiny_preset):
    out = tmp_path / "out"
    result = run_tiny(tiny_preset, out, "--seed", "7")
    assert result.exit_code == 0, result.output
    image = Image.open(out / "image.png")
    assert image.size == (32, 32) and image.mode == "RGB"
    frames = sorted((out / "frames").glob("step-*.png"))
    assert [f.name for f in frames] == ["step-00002.png", "step-00004.png"]
    gif = iio.imread(out / "progress.gif", index=None)
    assert gif.shape[0] == 3 and gif.shape[1:3] == (32, 32)  # two frames + the final image
    text = read_png_text(out / "image.png")
    assert text["prompt"] == "a red circle"
    assert text["seed"] == "7" and text["steps_done"] == "6"
    assert text["Software"].startswith("pixgen ")
    recipe = yaml.safe_load(text["config"])
    assert recipe["seed"] == 7 and recipe["vqgan"] == "tiny-vqgan" and recipe["steps"] == 6
    models = yaml.safe_load(text["models"])
    assert [m["name"] for m in models] == ["tiny-vqgan", "tiny-clip"]
    assert all(len(m["sha256"]) == 64 for m in models)
    assert yaml.safe_load((out / "run.yaml").read_text()) == recipe
    assert "seed:  7" in result.output


def test_same_seed_gives_identical_png_and_other_seed_differs(tmp_path, tiny_preset):
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert run_tiny(tiny_preset, tmp_path / name, "--seed", seed).exit_code == 0
    first, again, other = ((tmp_path / n / "image.png").read_bytes() for n in "abc")
    assert first == again
    assert np.asarray(Image.open(tmp_path / "a" / "image.png")).tolist() != \
        np.asarray(Image.open(tmp_path / "c" / "image.png")).tolist()
    assert first != other


def test_seed_is_drawn_and_recorded_when_not_given(tmp_path, tiny_preset):
    assert run_tiny(tiny_preset, tmp_path / "a").exit_code == 0
    seed = int(read_png_text(tmp_path / "a" / "image.png")["seed"])
    assert run_tiny(tiny_preset, tmp_path / "b", "--seed", str(seed)).exit_code == 0
    assert (tmp_path / "a" / "image.png").read_bytes() == (tmp_path / "b" / "image.png").read_bytes()


def test_existing_output_is_not_overwritten_without_flag(tmp_path, tiny_preset):
    out = tmp_path / "out"
    assert run_tiny(tiny_preset, out, "--seed", "1").exit_code == 0
    before = (out / "image.png").read_bytes()
    result = run_tiny(tiny_preset, out, "--seed", "2")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"Error: output folder {out} already holds image.png; "
        "pass --overwrite to replace it, or choose another --output")
    assert (out / "image.png").read_bytes() == before
    assert run_tiny(tiny_preset, out, "--seed", "2", "--overwrite").exit_code == 0
    assert (out / "image.png").read_bytes() != before


def test_default_output_folder_is_numbered(tmp_path, tiny_preset, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert invoke("run", "a red circle", "--preset", tiny_preset, "-q", "--seed", "1").exit_code == 0
    assert (tmp_path / "outputs" / "a-red-circle" / "image.png").is_file()
    assert (tmp_path / "outputs" / "a-red-circle-2" / "image.png").is_file()


def test_no_gif_and_no_frames(tmp_path, tiny_preset):
    out = tmp_path / "out"
    assert run_tiny(tiny_preset, out, "--no-gif", "--save-every", "0").exit_code == 0
    assert (out / "image.png").is_file()
    assert not (out / "progress.gif").exists()
    assert not list((out / "frames").glob("*.png")) if (out / "frames").exists() else True


def test_interrupted_run_keeps_work_and_resumes_to_the_same_image(tmp_path, tiny_preset):
    from pixgen.config import resolve_config
    from pixgen.pipeline import runner as pipeline

    config = resolve_config(str(tiny_preset), flags={"prompt": "a blue square", "seed": 5})
    whole = pipeline.run(config, tmp_path / "whole")
    assert whole.completed and whole.steps_done == 6

    def interrupt(step):
        if step.step == 3:
            raise KeyboardInterrupt

    partial = pipeline.run(config, tmp_path / "partial", on_step=interrupt)
    assert not partial.completed and partial.steps_done == 3
    assert read_png_text(partial.image_path)["steps_done"] == "3"
    assert (tmp_path / "partial" / "state.pt").is_file()

    result = invoke("resume", tmp_path / "partial", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "partial" / "image.png").read_bytes() == whole.image_path.read_bytes()


def test_ctrl_c_in_cli_exits_130_with_hint(tmp_path, tiny_preset, monkeypatch):
    from pixgen.cli import progress as cli_module

    def interrupting_bar(self, step):
        if step.step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_module.ProgressBar, "__call__", interrupting_bar)
    result = CliRunner().invoke(cli, ["run", "x", "--preset", str(tiny_preset), "-o", str(tmp_path / "o")])
    assert result.exit_code == 130
    assert "Interrupted at step 2" in result.output and "pixgen resume" in result.output
    assert (tmp_path / "o" / "image.png").is_file()


def test_resume_of_finished_run_needs_more_steps(tmp_path, tiny_preset):
    out = tmp_path / "out"
    assert run_tiny(tiny_preset, out, "--seed", "1").exit_code == 0
    result = invoke("resume", out, "-q")
    assert result.exit_code == 1
    assert "already ran 6 of 6 steps" in result.output
    result = invoke("resume", out, "-q", "--steps", "8")
    assert result.exit_code == 0
    assert read_png_text(out / "image.png")["steps_done"] == "8"


def test_init_image_and_image_prompt(tmp_path, tiny_preset):
    picture = tmp_path / "in.png"
    Image.fromarray(np.full((40, 48, 3), 200, np.uint8)).save(picture)
    out = tmp_path / "out"
    result = run_tiny(tiny_preset, out, "--init-image", picture, "--image-prompt", f"{picture}:0.5")
    assert result.exit_code == 0, result.output
    recipe = yaml.safe_load(read_png_text(out / "image.png")["config"])
    assert recipe["init"] == "image" and recipe["image_prompts"] == [f"{picture}:0.5"]


@pytest.mark.parametrize("init", ["random", "pixels", "gradient", "perlin"])
def test_every_init_method_runs(tmp_path, tiny_preset, init):
    result = run_tiny(tiny_preset, tmp_path / init, "--init", init, "--steps", "2")
    assert result.exit_code == 0, result.output


def test_missing_init_image_is_one_line_error(tmp_path, tiny_preset):
    result = run_tiny(tiny_preset, tmp_path / "o", "--init-image", tmp_path / "nope.png")
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: init image {tmp_path / 'nope.png'} does not exist"
    assert not (tmp_path / "o").exists()


def test_export_mp4_and_gif(tmp_path, tiny_preset):
    out = tmp_path / "out"
    assert run_tiny(tiny_preset, out, "--size", "34x30").exit_code == 0
    result = invoke("export", out, "--fps", "5")
    assert result.exit_code == 0, result.output
    video = iio.imread(out / "progress.mp4", index=None)
    assert video.shape[0] == 3 and video.shape[1:3] == (30, 34)  # 2 frames + final image
    result = CliRunner().invoke(cli, ["export", str(out), "--format", "mp4"])
    assert result.exit_code == 1 and "exists; pass --overwrite" in result.output
    other = tmp_path / "other.gif"
    assert invoke("export", out, "--format", "gif", "-o", other).exit_code == 0
    assert iio.imread(other, index=None).shape[0] == 3


def test_outputs_get_normal_permissions_not_private_temp_ones(tmp_path, tiny_preset):
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert run_tiny(tiny_preset, tmp_path / "out").exit_code == 0
    finally:
        os.umask(old)
    for name in ("image.png", "progress.gif", "run.yaml", "state.pt"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == 0o644, name


def test_from_png_reruns_its_recipe_byte_for_byte(tmp_path, tiny_preset):
    from PIL import Image as PILImage

    PILImage.new("RGB", (32, 32), "blue").save(tmp_path / "init.png")
    first = run_tiny(tiny_preset, tmp_path / "a", "--seed", "9", "--init-image", tmp_path / "init.png")
    assert first.exit_code == 0, first.output
    again = invoke("run", "--from", tmp_path / "a" / "image.png", "-o", tmp_path / "b", "-q")
    assert again.exit_code == 0, again.output
    assert (tmp_path / "a" / "image.png").read_bytes() == (tmp_path / "b" / "image.png").read_bytes()
    longer = invoke("run", "--from", tmp_path / "a" / "image.png", "--steps", "8", "-o", tmp_path / "c", "-q")
    assert longer.exit_code == 0 and read_png_text(tmp_path / "c" / "image.png")["steps_done"] == "8"
    environment = yaml.safe_load(read_png_text(tmp_path / "a" / "image.png")["environment"])
    assert environment["device"] == "cpu" and environment["threads"] >= 1 and environment["torch"]
    inputs = yaml.safe_load(read_png_text(tmp_path / "a" / "image.png")["inputs"])
    assert list(inputs) == [str(tmp_path / "init.png")] and len(inputs[str(tmp_path / "init.png")]) == 64


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_reads_the_loss_rarely_and_never_when_quiet(tmp_path, tiny_preset, monkeypatch, quiet):
    import pixgen.engine.loop as engine

    reads = {"n": 0}
    real = engine.Step.loss

    def counted(step):
        reads["n"] += 1
        return real.fget(step)

    monkeypatch.setattr(engine.Step, "loss", property(counted))
    args = ["run", "a red circle", "--preset", str(tiny_preset), "--steps", "12", "--seed", "1",
            "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, args + (["-q"] if quiet else []))
    assert result.exit_code == 0, result.output
    if quiet:
        assert reads["n"] == 1  # the result's final loss only
    else:
        assert "loss=" in result.output  # the last step always shows it
        assert 2 <= reads["n"] < 12  # the first and last steps, not every one (12 tiny steps take < 0.5 s)
