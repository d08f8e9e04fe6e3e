"""The prompt grammar."""

import pytest

from pixgen.errors import ConfigError
from pixgen.prompts import Prompt, parse_image_prompts, parse_prompt, parse_prompts


def test_text_weight_stop():
    assert parse_prompt("a red circle:2:0.5") == Prompt("a red circle", 2.0, 0.5)
    assert parse_prompt("a red circle:-1") == Prompt("a red circle", -1.0, None)
    assert parse_prompt("plain") == Prompt("plain", 1.0, None)


def test_colons_inside_text_are_kept():
    assert parse_prompt("time: 12:30 pm:3") == Prompt("time: 12:30 pm", 3.0, None)
    assert parse_prompt("ratio 16:9") == Prompt("ratio 16", 9.0, None)  # trailing number is a weight
    assert parse_prompt("a: b") == Prompt("a: b", 1.0, None)


def test_pipes_split_prompts():
    prompts = parse_prompts("a red circle | blurry:-0.5 |  | sky:1:0.2")
    assert [p.source for p in prompts] == ["a red circle", "blurry", "sky"]
    assert [p.weight for p in prompts] == [1.0, -0.5, 1.0]
    assert prompts[2].stop == 0.2


def test_image_prompts():
    (prompt,) = parse_image_prompts(["/tmp/cat.png:0.5"])
    assert prompt == Prompt("/tmp/cat.png", 0.5, None, is_image=True)


@pytest.mark.parametrize("bad", [":2", "text:0", "  ", "a:1:2:3:4", "a:1:nan", "a:nan", "a:1:-1", "a:inf"])
def test_bad_prompts_raise(bad):
    with pytest.raises(ConfigError):
        parse_prompt(bad)


@pytest.mark.parametrize("bad", ["|", " | | ", "a red circle ^ a blue square", "^"])
def test_bad_prompt_lists_raise(bad):
    with pytest.raises(ConfigError):
        parse_prompts(bad)


def test_negative_prompts_always_push_with_their_weight_magnitude():
    from pixgen.prompts import all_prompts, parse_negative_prompts

    assert parse_negative_prompts(["several shapes:0.3", "blurry:-2:1.5", "text"]) == [
        Prompt("several shapes", -0.3, None), Prompt("blurry", -2.0, 1.5), Prompt("text", -1.0, None)]
    order = all_prompts("a red circle", [], ["3"], ["several shapes"])
    assert [p.source for p in order] == ["a red circle", "3", "several shapes"]  # negatives come last


@pytest.mark.parametrize("bad", ["a | b", "a ^ b", ":0.3", "blurry:0"])
def test_bad_negative_prompts_raise(bad):
    from pixgen.prompts import parse_negative_prompts

    with pytest.raises(ConfigError):
        parse_negative_prompts([bad])
