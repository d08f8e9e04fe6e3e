"""Config layering and every validation error path, through the CLI."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from pixgen.cli import cli
from pixgen.config import list_presets, resolve_config
from pixgen.engine.loop import learning_rate


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_layers_defaults_preset_file_set_flags(tmp_path, tiny_preset):
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump({"steps": 11, "lr": 0.3, "cut_count": 5}))
    config = resolve_config(str(tiny_preset), user, ["lr=0.4", "cut_pow=2"], {"prompt": "x", "cut_count": 7})
    assert config.size == [32, 32]  # preset
    assert config.steps == 11  # file over preset
    assert config.lr == 0.4  # --set over file
    assert config.cut_count == 7  # flag over file
    assert config.cut_pow == 2.0  # --set over default
    assert config.optimizer == "adam"  # default


def test_bundled_presets_all_validate():
    assert {"default", "draft", "quality"} <= set(list_presets())
    for name in list_presets():
        assert resolve_config(name, flags={"prompt": "a red circle"}).steps >= 1


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "stpes=3"], "Error: unknown setting 'stpes' in --set stpes=3 (did you mean steps?)"),
    (["--set", "steps=abc"], "Error: invalid value 'abc' for 'steps' in --set steps=abc: expected int"),
    (["--set", "cut_pow=-1"], "Error: invalid value -1.0 for 'cut_pow': must be positive"),
    (["--set", "cut_overhang=0.8"], "Error: invalid value 0.8 for 'cut_overhang': must be between 0 and 0.5"),
    (["--set", "optimizer=rmsprop"], "Error: invalid value 'rmsprop' for 'optimizer': must be one of adam, adamw, sgd"),
    (["--set", "init=image"],
     "Error: invalid value 'image' for 'init': init 'image' needs init_image (--init-image PATH)"),
    (["--set", "nonsense"], "Error: override 'nonsense' must look like key=value"),
    (["--preset", "nope"], "Error: unknown preset 'nope'; available: default, draft, imagenet, quality"),
    (["--optimizer", "lbfgs"], "Error: Invalid value for '--optimizer': 'lbfgs' is not one of 'adam', 'adamw', 'sgd'."),
    (["--set", "size=[10]"],
     "Error: invalid value [10] for 'size': expected [width, height], each between 8 and 4096 pixels"),
    (["--lr", "0.1", "--set", "lr_final=0.5"],
     "Error: invalid value 0.5 for 'lr_final': must be between 0 and lr (or null for a constant learning rate)"),
])
def test_bad_settings_are_one_line_errors_with_exit_2(args, message):
    result = invoke("run", "a prompt", *args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == message  # (Click puts its usage line above its own errors)


def test_bad_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    result = invoke("run", "x", "--config", bad)
    assert result.exit_code == 2
    assert result.output.strip().startswith(f"Error: config file {bad} line ")
    bad.write_text("- just\n- a list\n")
    result = invoke("run", "x", "--config", bad)
    assert result.output.strip() == f"Error: config file {bad} must be a mapping of settings, not list"
    bad.write_text("cutn: 4\n")
    result = invoke("run", "x", "--config", bad)
    assert result.exit_code == 2
    assert result.output.strip().startswith(f"Error: unknown setting 'cutn' in config file {bad} (did you mean ")


def test_preset_with_unknown_key_names_it(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("stepz: 3\n")
    result = invoke("run", "x", "--preset", preset)
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: unknown setting 'stepz' in preset '{preset}' (did you mean steps?)"


def test_missing_prompt_is_an_error():
    result = invoke("run")
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: invalid value '' for 'prompt': "
                                     "give a text prompt or at least one image prompt")


def test_bad_size_flag():
    result = invoke("run", "x", "--size", "12xfoo")
    assert result.exit_code == 2
    assert "'12xfoo' is not WIDTHxHEIGHT" in result.output


def test_unknown_model_lists_close_matches(tiny_preset, tmp_path):
    result = invoke("run", "x", "--preset", tiny_preset, "--vqgan", "tiny-vqgn", "-o", tmp_path / "o")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: unknown vqgan model 'tiny-vqgn'; did you mean tiny-vqgan?"


def test_registered_but_not_downloaded_model_says_how_to_get_it(tiny_preset, tmp_path):
    result = invoke("run", "x", "--preset", tiny_preset, "--clip", "ViT-B-32-openai", "-o", tmp_path / "o")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == ("Error: clip model 'ViT-B-32-openai' is not downloaded; "
                                     "run: pixgen models download ViT-B-32-openai")


def test_lr_final_decays_the_learning_rate_by_cosine_to_the_last_step():
    config = resolve_config("default", None, ["lr_final=0.02"], {"prompt": "x", "lr": 0.1, "steps": 5})
    rates = [learning_rate(config, step) for step in range(config.steps)]
    assert rates[0] == pytest.approx(0.1) and rates[-1] == pytest.approx(0.02)
    assert rates == sorted(rates, reverse=True) and rates[2] == pytest.approx(0.06)
    constant = resolve_config("default", None, ["lr_final=null"], {"prompt": "x", "lr": 0.1, "steps": 5})
    assert {learning_rate(constant, step) for step in range(5)} == {0.1}
