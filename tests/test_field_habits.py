"""What users of the other VQGAN+CLIP tools expect: -o file paths, a `parameters` chunk, a Python API,
noise prompts, choices that complete, environment defaults, a loading status line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

import pixgen
from pixgen.cli import cli
from pixgen.errors import ConfigError
from pixgen.pipeline.output import read_png_text, read_user_comment

README = Path(__file__).resolve().parents[1] / "README.md"


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def tiny_run(tiny_preset, output, *extra):
    return invoke("run", "a red circle | blurry:-0.5", "--preset", tiny_preset, "--seed", "7", "-o", output, "-q",
                  *extra)


def test_output_with_image_suffix_writes_exactly_that_file(tmp_path, tiny_preset):
    target = tmp_path / "cat.png"
    result = tiny_run(tiny_preset, target)
    assert result.exit_code == 0, result.output
    assert Image.open(target).size == (32, 32)
    folder = tmp_path / "cat.png.pixgen"
    assert sorted(p.name for p in folder.iterdir()) == ["frames", "progress.gif", "run.yaml", "state.pt"]
    assert f"image: {target}" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png", "cat.png.pixgen"]


def test_existing_image_file_is_never_replaced_without_overwrite(tmp_path, tiny_preset):
    target = tmp_path / "cat.png"
    Image.new("RGB", (5, 5), "white").save(target)
    before = target.read_bytes()
    result = tiny_run(tiny_preset, target)
    assert result.exit_code == 1 and "cat.png exists; pass --overwrite" in result.output
    assert target.read_bytes() == before and not (tmp_path / "cat.png.pixgen").exists()
    assert tiny_run(tiny_preset, target, "--overwrite").exit_code == 0
    assert Image.open(target).size == (32, 32)


def test_resume_follows_the_file_rule_and_is_exact(tmp_path, tiny_preset):
    assert tiny_run(tiny_preset, tmp_path / "whole.png", "--steps", "8").exit_code == 0
    assert tiny_run(tiny_preset, tmp_path / "part.png", "--steps", "4").exit_code == 0
    for given in (tmp_path / "part.png", tmp_path / "part.png.pixgen"):
        resumed = invoke("resume", given, "--steps", "8" if given.suffix == ".png" else "10", "-q")
        assert resumed.exit_code == 0, resumed.output
        if given.suffix == ".png":
            assert (tmp_path / "part.png").read_bytes() == (tmp_path / "whole.png").read_bytes()
    assert read_png_text(tmp_path / "part.png")["steps_done"] == "10"
    assert not (tmp_path / "part.png.pixgen" / "image.png").exists()


def test_folder_output_keeps_todays_layout(tmp_path, tiny_preset):
    assert tiny_run(tiny_preset, tmp_path / "out").exit_code == 0
    assert (tmp_path / "out" / "image.png").is_file()


def parameters_fields(text: str) -> tuple[list[str], dict[str, str]]:
    lines = text.splitlines()
    pairs = re.findall(r'([A-Za-z][A-Za-z ]*): ("(?:[^"\\]|\\.)*"|[^,]*)(?:, |$)', lines[-1])
    return lines, {key: value.strip('"') for key, value in pairs}


def test_png_carries_a_parameters_chunk_in_the_common_layout(tmp_path, tiny_preset):
    assert tiny_run(tiny_preset, tmp_path / "out").exit_code == 0
    with Image.open(tmp_path / "out" / "image.png") as image:
        image.load()
        text = image.text["parameters"]  # a generic reader: Pillow's text chunks
    lines, fields = parameters_fields(text)
    assert lines[0] == "a red circle"
    assert lines[1] == "Negative prompt: blurry:0.5"
    assert fields["Steps"] == "6" and fields["Seed"] == "7" and fields["Size"] == "32x32"
    assert fields["Model"] == "tiny-vqgan" and fields["CLIP"] == "tiny-clip" and fields["Optimizer"] == "adam"
    assert len(fields["Model hash"]) == 10
    assert "config" in read_png_text(tmp_path / "out" / "image.png")  # the full recipe is still there


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_jpeg_and_webp_carry_parameters_in_exif_user_comment(tmp_path, tiny_preset, suffix):
    target = tmp_path / f"cat{suffix}"
    assert tiny_run(tiny_preset, target).exit_code == 0
    with Image.open(target) as image:
        assert image.format == {".jpg": "JPEG", ".webp": "WEBP"}[suffix] and image.size == (32, 32)
    lines, fields = parameters_fields(read_user_comment(target))
    assert lines[0] == "a red circle" and fields["Seed"] == "7" and fields["Steps"] == "6"


def test_render_returns_a_picture_writes_nothing_and_loads_models_once(tmp_path, tiny_preset, monkeypatch):
    import pixgen.pipeline.runner as pipeline

    loads = []
    real_vqgan, real_clip = pipeline.load_vqgan, pipeline.load_clip
    monkeypatch.setattr(pipeline, "load_vqgan", lambda *a: loads.append(a[0]) or real_vqgan(*a))
    monkeypatch.setattr(pipeline, "load_clip", lambda *a: loads.append(a[0]) or real_clip(*a))
    monkeypatch.chdir(tmp_path)
    first = pixgen.render("a red circle | blurry:-0.5", preset=str(tiny_preset), seed=7)
    second = pixgen.render("a blue square", preset=str(tiny_preset), seed=7)
    assert isinstance(first, Image.Image) and first.size == (32, 32)
    assert loads == ["tiny-vqgan", "tiny-clip"]  # once, for both calls
    assert list(tmp_path.iterdir()) == []
    assert np.asarray(first).tolist() != np.asarray(second).tolist()
    assert "Seed: 7" in first.info["parameters"]
    # the same pixels the CLI writes for the same recipe
    assert tiny_run(tiny_preset, tmp_path / "cli").exit_code == 0
    assert np.array_equal(np.asarray(first), np.asarray(Image.open(tmp_path / "cli" / "image.png")))


def test_render_steps_yields_intermediate_images(tiny_preset):
    steps = list(pixgen.render_steps("a red circle", preset=str(tiny_preset), seed=1, every=2))
    assert [n for n, _ in steps] == [2, 4, 6]
    assert all(isinstance(image, Image.Image) for _, image in steps)


def test_library_errors_are_pixgen_errors_with_the_cli_message(tiny_preset):
    with pytest.raises(ConfigError) as caught:
        pixgen.render("a:1:2:3:4", preset=str(tiny_preset))
    assert isinstance(caught.value, pixgen.PixgenError)
    cli_result = invoke("run", "a:1:2:3:4", "--preset", tiny_preset, "-q")
    assert cli_result.output.strip() == f"Error: {caught.value}"


def test_readme_library_example_runs(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Library use"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # the bundled default models, no download
    assert isinstance(namespace["image"], Image.Image)
    assert (tmp_path / "circle.png").is_file()


def test_noise_prompts_are_reproducible_recorded_and_change_the_image(tmp_path, tiny_preset):
    plain = pixgen.render("a red circle", preset=str(tiny_preset), seed=3)
    noisy = pixgen.render("a red circle", preset=str(tiny_preset), seed=3, noise_prompts=["42:2"])
    again = pixgen.render("a red circle", preset=str(tiny_preset), seed=3, noise_prompts=["42:2"])
    other = pixgen.render("a red circle", preset=str(tiny_preset), seed=3, noise_prompts=["43:2"])
    assert np.array_equal(np.asarray(noisy), np.asarray(again))
    assert not np.array_equal(np.asarray(noisy), np.asarray(plain))
    assert not np.array_equal(np.asarray(noisy), np.asarray(other))
    result = invoke("run", "a red circle", "--preset", tiny_preset, "--noise-prompt", "42:2", "--seed", "3",
                    "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(read_png_text(tmp_path / "out" / "image.png")["config"])["noise_prompts"] == ["42:2"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "image.png")), np.asarray(noisy))


@pytest.mark.parametrize("spec", ["x", "1:0", "-3", "1:nan"])
def test_bad_noise_prompts_are_one_line(spec, tiny_preset):
    result = invoke("run", "a red circle", "--preset", tiny_preset, "--noise-prompt", spec, "-q")
    assert result.exit_code == 2 and "noise prompt" in result.output


@pytest.mark.parametrize("option, expected", [("--optimizer", ["adam", "adamw", "sgd"]),
                                              ("--init", ["random", "image", "pixels", "gradient", "perlin"]),
                                              ("--precision", ["auto", "fp32", "bf16", "fp16"]),
                                              ("--device", ["auto", "cpu", "cuda", "mps"])])
def test_shell_completion_offers_choices(option, expected):
    env = {"_PIXGEN_COMPLETE": "bash_complete", "COMP_WORDS": f"pixgen run {option} ", "COMP_CWORD": "3"}
    result = CliRunner().invoke(cli, [], env=env, prog_name="pixgen")
    offered = [line.split(",", 1)[1] for line in result.output.splitlines()]
    assert offered == expected


def test_completion_script_is_printed():
    result = invoke("completion", "bash")
    assert result.exit_code == 0 and "_PIXGEN_COMPLETE" in result.output


def test_choices_are_case_insensitive_and_lr_final_is_a_flag(tmp_path, tiny_preset):
    result = invoke("run", "a red circle", "--preset", tiny_preset, "--optimizer", "AdamW", "--lr-final", "0.01",
                    "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    recipe = yaml.safe_load((tmp_path / "out" / "run.yaml").read_text())
    assert recipe["optimizer"] == "adamw" and recipe["lr_final"] == 0.01


def test_environment_defaults_for_preset_and_device(tmp_path, tiny_preset):
    result = invoke("run", "a red circle", "-o", tmp_path / "out", "-q", env={"PIXGEN_PRESET": str(tiny_preset)})
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "out" / "run.yaml").read_text())["vqgan"] == "tiny-vqgan"
    refused = invoke("run", "a red circle", "-o", tmp_path / "x", "-q",
                     env={"PIXGEN_PRESET": str(tiny_preset), "PIXGEN_DEVICE": "meta"})
    assert refused.exit_code == 2 and "'device'" in refused.output


def test_help_documents_every_environment_variable():
    help_text = invoke("--help").output
    source = "\n".join(p.read_text() for p in (Path(pixgen.__file__).parent).rglob("*.py"))
    for name in sorted(set(re.findall(r'"(PIXGEN_[A-Z_]+)"', source))):
        assert name in help_text, name
        assert name in README.read_text(encoding="utf-8"), name


def test_loading_status_line_unless_quiet(tmp_path, tiny_preset):
    loud = invoke("run", "a red circle", "--preset", tiny_preset, "-o", tmp_path / "a")
    assert re.search(r"loaded tiny-vqgan in \d+\.\d s", loud.output), loud.output
    quiet = invoke("run", "a red circle", "--preset", tiny_preset, "-o", tmp_path / "b", "-q")
    assert "loaded tiny" not in quiet.output


def test_offworld_words_get_one_honest_line_with_the_bundled_models(tmp_path):
    result = invoke("run", "a castle in the sky | a red circle", "--steps", "1", "--save-every", "0", "--no-gif",
                    "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "not: castle, sky." in notes[0] and "--preset imagenet" in notes[0]


def test_shapes_words_in_any_phrasing_get_no_notice(tmp_path, tiny_preset):
    from pixgen.models.packs import prompt_notice
    from pixgen.models.registry import load_registry

    registry = load_registry()
    assert prompt_notice("Purple background with one yellow circle.", ["shapes-clip", "shapes-clip-2"],
                         registry) is None
    assert prompt_notice("several shapes", ["shapes-clip"], registry) is None
    assert prompt_notice("a castle", ["tiny-clip"], registry) is None  # other models: no opinion
    assert prompt_notice("a castle", ["shapes-clip", "tiny-clip"], registry) is None  # not all the pack's


def test_output_closed_by_the_reader_ends_quietly():
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that has already stopped reading
    try:
        process = subprocess.run([sys.executable, "-m", "pixgen", "presets", "list"], stdout=write_end,
                                 stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert process.returncode == 141
    assert "Traceback" not in process.stderr and "internal error" not in process.stderr


def test_negative_prompts_push_the_image_and_are_recorded(tmp_path, tiny_preset):
    plain = invoke("run", "a red circle", "--preset", tiny_preset, "--seed", "7", "-o", tmp_path / "plain", "-q")
    pushed = invoke("run", "a red circle", "--preset", tiny_preset, "--seed", "7", "-o", tmp_path / "pushed", "-q",
                    "--negative", "several shapes:0.3", "--negative", "blurry")
    assert plain.exit_code == 0 and pushed.exit_code == 0, pushed.output
    with Image.open(tmp_path / "plain" / "image.png") as a, Image.open(tmp_path / "pushed" / "image.png") as b:
        assert a.tobytes() != b.tobytes()
        lines, _ = parameters_fields(b.text["parameters"])
    assert lines[:2] == ["a red circle", "Negative prompt: several shapes:0.3 | blurry"]
    recorded = yaml.safe_load((tmp_path / "pushed" / "run.yaml").read_text())
    assert recorded["negative_prompts"] == ["several shapes:0.3", "blurry"]


def test_a_bad_negative_prompt_is_one_line_and_writes_nothing(tmp_path, tiny_preset):
    result = invoke("run", "a red circle", "--preset", tiny_preset, "-o", tmp_path / "out", "--negative", "a | b")
    assert result.exit_code == 2 and "negative prompt 'a | b'" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
