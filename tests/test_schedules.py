"""Keyframe and prompt schedules: parsing, interpolation, stories, cross-fades, every error."""

from __future__ import annotations

import math

import pytest

from pixgen.animation.animate import AnimationSettings, plan_animation
from pixgen.animation.schedules import (
    Segment,
    frame_prompt,
    keyframes_to_text,
    mix_weights,
    parse_keyframes,
    parse_schedule,
    parse_story,
    value_at,
)
from pixgen.errors import ConfigError


def test_constant_and_keyframes_parse():
    assert parse_keyframes("1.05", "zoom") == ((0, (1.05,)),)
    assert parse_keyframes(2, "zoom") == ((0, (2.0,)),)
    assert parse_keyframes("0:(1.0), 30:(1.05), 60:(1.0)", "zoom") == ((0, (1.0,)), (30, (1.05,)), (60, (1.0,)))
    assert parse_keyframes(" 0 : ( 1 ) ,10:(-2.5e-1) ", "rotate") == ((0, (1.0,)), (10, (-0.25,)))
    assert parse_keyframes("2,-1", "pan", 2) == ((0, (2.0, -1.0)),)
    assert parse_keyframes([2, -1], "pan", 2) == ((0, (2.0, -1.0)),)
    assert parse_keyframes("0:(2,0), 24:(0, -1)", "pan", 2) == ((0, (2.0, 0.0)), (24, (0.0, -1.0)))


def test_linear_interpolation_holds_outside_the_keyframes():
    keys = parse_keyframes("10:(1.0), 30:(1.2), 40:(0.2)", "zoom")
    assert value_at(keys, 0) == (1.0,) and value_at(keys, 10) == (1.0,)
    assert value_at(keys, 20)[0] == pytest.approx(1.1)
    assert value_at(keys, 25)[0] == pytest.approx(1.15)
    assert value_at(keys, 35)[0] == pytest.approx(0.7)
    assert value_at(keys, 99) == (0.2,)
    pan = parse_keyframes("0:(4,0), 4:(0,2)", "pan", 2)
    assert value_at(pan, 1) == pytest.approx((3.0, 0.5))


def test_keyframes_round_trip_through_text():
    keys = parse_keyframes("0:(1.0), 7:(0.1), 9:(1e-3)", "zoom")
    assert parse_keyframes(keyframes_to_text(keys), "zoom") == keys
    pan = parse_keyframes("0:(0.1,2)", "pan", 2)
    assert parse_keyframes(keyframes_to_text(pan), "pan", 2) == pan


@pytest.mark.parametrize("spec, width, message", [
    ("30:(1), 10:(1.1)", 1, "zoom: keyframes must be in increasing order, but 10 follows 30"),
    ("0:(1), 0:(1.1)", 1, "zoom: keyframes must be in increasing order, but 0 follows 0"),
    ("-1:(1)", 1, "zoom: keyframe -1 is negative; frames count from 0"),
    ("nan", 1, "zoom: 'nan' must be finite (no nan or inf)"),
    ("0:(inf)", 1, "zoom: 'inf' must be finite (no nan or inf)"),
    ("0:(abc)", 1, "zoom: 'abc' is not a number"),
    ("0:(1), x", 1, "zoom: cannot read keyframes '0:(1), x' at 'x'; expected 'frame:(value), frame:(value)'"),
    ("1.5:(1)", 1, "zoom: keyframe frame '1.5' in '1.5:(1)' is not a whole number"),
    ("", 1, "zoom: expected a number or keyframes like '0:(1.0), 30:(1.05)', got ''"),
    ("3", 2, "zoom: expected 2 comma-separated numbers, got '3'"),
])
def test_keyframe_errors(spec, width, message):
    with pytest.raises(ConfigError) as err:
        parse_keyframes(spec, "zoom", width)
    assert str(err.value) == message


def test_story_spreads_prompts_evenly():
    segments = parse_story("a red circle ^ a blue square:2 ^ a green triangle", 10)
    assert [(s.prompt, s.start, s.end) for s in segments] == [
        ("a red circle", 0, 2), ("a blue square:2", 3, 5), ("a green triangle", 6, 9)]
    assert [(s.start, s.end) for s in parse_story("a", 1)] == [(0, 0)]


@pytest.mark.parametrize("story, frames, message", [
    ("a ^ ^ b", 10, "story segment 2 of 'a ^ ^ b' is empty: every story prompt needs text"),
    ("a ^ b ^ c", 2, "the story has 3 prompts but the animation only 2 frames"),
    ("a:0 ^ b", 4, "story segment 1 of 'a:0 ^ b': prompt weight must be a finite non-zero number, got 0.0 in 'a:0'"),
])
def test_story_errors(story, frames, message):
    with pytest.raises(ConfigError) as err:
        parse_story(story, frames)
    assert str(err.value) == message


def test_crossfade_blends_weights_over_the_first_frames_of_the_new_prompt():
    segments = parse_story("a ^ b", 10)  # a: 0-4, b: 5-9
    assert mix_weights(segments, 4, 3) == [1.0, 0.0]
    assert mix_weights(segments, 5, 3) == [0.75, 0.25]
    assert mix_weights(segments, 6, 3) == [0.5, 0.5]
    assert mix_weights(segments, 7, 3) == [0.25, 0.75]
    assert mix_weights(segments, 8, 3) == [0.0, 1.0]
    assert mix_weights(segments, 5, 0) == [0.0, 1.0]  # no cross-fade: a jump
    assert frame_prompt(segments, 6, 3) == "a:0.5|b:0.5"
    assert frame_prompt(segments, 9, 3) == "b:1.0"
    # a fade never outlasts the new prompt: its last frame is its own
    short = parse_story("a ^ b", 4)
    assert mix_weights(short, 2, 10) == [0.5, 0.5] and mix_weights(short, 3, 10) == [0.0, 1.0]


def test_frame_prompt_scales_each_prompt_and_keeps_stops():
    segments = [Segment("a:2|b:-0.5:0.3", 0, 3), Segment("c", 4, 7)]
    assert frame_prompt(segments, 4, 1) == "a:1.0|b:-0.25:0.3|c:0.5"


def test_yaml_schedule_with_ranges_and_keyframed_weights():
    entries = [{"prompt": "a red circle", "frames": "0-5", "weight": "0:(1.0), 5:(0.5)"},
               {"prompt": "a blue square", "frames": [6, 9]}]
    segments = parse_schedule(entries, 10)
    assert [(s.start, s.end) for s in segments] == [(0, 5), (6, 9)]
    assert frame_prompt(segments, 0, 0) == "a red circle:1.0"
    assert frame_prompt(segments, 4, 0) == "a red circle:0.6"
    assert frame_prompt(segments, 7, 0) == "a blue square:1.0"
    evenly = parse_schedule([{"prompt": "a"}, {"prompt": "b"}], 4)
    assert [(s.start, s.end) for s in evenly] == [(0, 1), (2, 3)]
    overlapping = parse_schedule([{"prompt": "a", "frames": "0-3"}, {"prompt": "b", "frames": 2}], 4)
    assert frame_prompt(overlapping, 2, 2) == "a:1.0|b:1.0"


@pytest.mark.parametrize("entries, message", [
    ([], "schedule must be a non-empty list of entries like {prompt: ..., frames: 0-11}"),
    (["a"], "every schedule entry must be a mapping like {prompt: ..., frames: 0-11}"),
    ([{"prompt": "a", "frame": "0-3"}], "schedule entry 1: unknown key 'frame'; expected prompt, frames and weight"),
    ([{"prompt": "a", "frames": "0-3"}, {"prompt": "b"}],
     "schedule entry 2 has no frames; give every entry frames (A-B) or none (then they are spread evenly)"),
    ([{"prompt": "a", "frames": "0-12"}],
     "schedule entry 1: frame 12 is beyond the last frame (9) of a 10-frame animation"),
    ([{"prompt": "a", "frames": "5-2"}],
     "schedule entry 1: frame range 5-2 must start at 0 or later and not end before it starts"),
    ([{"prompt": "a", "frames": "0-x"}], "schedule entry 1: frames must look like 0-11, [0, 11] or 5, got '0-x'"),
    ([{"prompt": "a", "frames": "0-4"}, {"prompt": "b", "frames": "6-9"}],
     "frame 5 has no prompt: the schedule's frame ranges must cover frames 0-9"),
    ([{"prompt": " ", "frames": "0-9"}], "schedule entry 1 prompt is empty: every story prompt needs text"),
    ([{"prompt": "a", "frames": "0-9", "weight": "0:(1), 20:(0)"}],
     "schedule entry 1 weight: keyframe 20 is beyond the last frame (9) of a 10-frame animation"),
])
def test_yaml_schedule_errors(entries, message):
    with pytest.raises(ConfigError) as err:
        parse_schedule(entries, 10)
    assert str(err.value) == message


def plan(**kwargs):
    return plan_animation(AnimationSettings(**{"frames": 10, "schedule": "a ^ b", **kwargs}))


def test_plan_makes_the_schedule_explicit_and_samples_motion():
    p = plan(zoom="0:(1.0), 9:(1.09)", pan="1,2", rotate=3)
    assert p.settings.schedule == [{"prompt": "a", "frames": [0, 4], "weight": "0:(1.0)"},
                                   {"prompt": "b", "frames": [5, 9], "weight": "0:(1.0)"}]
    zoom, rotate, pan = p.motion(3)
    assert zoom == pytest.approx(1.03) and rotate == 3.0 and pan == (1.0, 2.0)
    assert plan_animation(p.settings).segments == p.segments  # what run.yaml records plans the same


@pytest.mark.parametrize("kwargs, message", [
    ({"frames": None}, "give the number of frames: --frames N"),
    ({"frames": 0}, "invalid value 0 for 'frames': expected a whole number between 1 and 100000"),
    ({"zoom": 0}, "zoom: must be greater than 0, got 0 at frame 0"),
    ({"zoom": "0:(1), 5:(-0.5)"}, "zoom: must be greater than 0, got -0.5 at frame 5"),
    ({"zoom": "0:(1), 10:(1.1)"}, "zoom: keyframe 10 is beyond the last frame (9) of a 10-frame animation"),
    ({"rotate": "nan"}, "rotate: 'nan' must be finite (no nan or inf)"),
    ({"pan": "3"}, "pan: expected 2 comma-separated numbers, got '3'"),
    ({"smooth": 1.0}, "invalid value 1.0 for 'smooth': must be in [0, 1)"),
    ({"smooth": math.nan}, "invalid value nan for 'smooth': must be in [0, 1)"),
    ({"fps": 0}, "invalid value 0 for 'fps': must be in (0, 100]"),
    ({"steps_per_frame": -1}, "invalid value -1 for 'steps_per_frame': expected a whole number between 0 and 100000"),
    ({"schedule": []}, "give a prompt, a story 'a ^ b' or a schedule file"),
    ({"schedule": [{"prompt": "a", "frames": "0-9", "weight": "0:(1), 9:(0)"}]},
     "frame 9 has no prompt with a non-zero weight; check the schedule's weights"),
])
def test_plan_errors(kwargs, message):
    with pytest.raises(ConfigError) as err:
        plan(**kwargs)
    assert str(err.value) == message
