"""Tests for the procedural shapes world: determinism, captions, the held-out split, rendering."""

import itertools

import numpy as np
import pytest
import torch

from pixgen.packs.shapes import world
from pixgen.packs.shapes.world import (
    ALL_COMBOS,
    COLOURS,
    HELD_OUT_COMBOS,
    SHAPES,
    TRAIN_COMBOS,
    Scene,
    caption,
    describe,
    held_out_prompts,
    parse_caption,
    render,
    render_dataset,
    sample_scene,
)


def test_render_dataset_is_deterministic_per_seed():
    images, labels = render_dataset(32, seed=5)
    again, again_labels = render_dataset(32, seed=5)
    other, _ = render_dataset(32, seed=6)
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    assert not torch.equal(images, other)


def test_sample_scene_is_deterministic_per_seed():
    first = [sample_scene(np.random.default_rng(1)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    assert sample_scene(np.random.default_rng(2)) != first[0]


def test_render_sizes_and_dtypes():
    images, labels = render_dataset(10, seed=0, split="held_out")
    assert images.shape == (10, 3, 64, 64) and images.dtype == torch.uint8
    assert labels.shape == (10, 3) and labels.dtype == torch.int64
    image = render(sample_scene(np.random.default_rng(0)))
    assert image.size == (64, 64) and image.mode == "RGB"


def test_render_draws_the_shape_colour_inside_and_background_outside():
    for shape in SHAPES:
        scene = Scene(shape, "red", "blue", "large", x=32.0, y=32.0, radius=15.0)
        pixels = np.asarray(render(scene))
        assert tuple(pixels[34, 32]) == COLOURS["red"]
        assert tuple(pixels[1, 1]) == COLOURS["blue"]
        edge = pixels[:, :, 2]  # antialiased edges: some pixels are strictly between the two colours
        assert ((edge > COLOURS["red"][2]) & (edge < COLOURS["blue"][2])).any()


def test_captions_parse_back_to_the_attributes_that_drew_them():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        scene = sample_scene(rng)
        parsed = parse_caption(caption(scene, rng))
        truth = {"shape": scene.shape, "colour": scene.colour, "background": scene.background, "size": scene.size}
        mentioned = {key: value for key, value in parsed.items() if value is not None}
        assert mentioned and all(truth[key] == value for key, value in mentioned.items())


def test_describe_parses_back_exactly_for_every_subset_of_attributes():
    rng = np.random.default_rng(1)
    for _ in range(300):
        scene = sample_scene(rng)
        truth = {"shape": scene.shape, "colour": scene.colour, "background": scene.background, "size": scene.size}
        for keep in itertools.product([False, True], repeat=4):
            attrs = {key: (value if k else None) for (key, value), k in zip(truth.items(), keep, strict=True)}
            assert parse_caption(describe(**attrs, rng=rng)) == attrs


def test_parse_caption_reads_user_wording():
    assert parse_caption("A big Orange circle on purple.") == {
        "shape": "circle", "colour": "orange", "background": "purple", "size": "large"}
    assert parse_caption("a tiny square") == {"shape": "square", "colour": None, "background": None, "size": "small"}


def test_held_out_split_is_as_documented():
    held_out = set(HELD_OUT_COMBOS)
    assert len(held_out) == len(HELD_OUT_COMBOS) == 24
    assert held_out.isdisjoint(TRAIN_COMBOS) and held_out | set(TRAIN_COMBOS) == set(ALL_COMBOS)
    assert all(colour != background for _, colour, background in ALL_COMBOS) and len(ALL_COMBOS) == 168
    for shape, colour in itertools.product(SHAPES, COLOURS):  # still seen in training in other combos
        assert any(s == shape and c == colour for s, c, _ in TRAIN_COMBOS)
        assert any(s == shape and b == colour for s, _, b in TRAIN_COMBOS)
    pairs = [(c, b) for _, c, b in HELD_OUT_COMBOS]
    assert len(set(pairs)) == len(pairs)  # each (colour, background) pair is held out for at most one shape


def test_held_out_combos_never_appear_in_train_datasets():
    _, labels = render_dataset(3000, seed=0, split="train")
    combos = {(SHAPES[s], world.COLOUR_NAMES[c], world.COLOUR_NAMES[b]) for s, c, b in labels.tolist()}
    assert combos.isdisjoint(HELD_OUT_COMBOS) and len(combos) == len(TRAIN_COMBOS)
    _, labels = render_dataset(500, seed=0, split="held_out")
    combos = {(SHAPES[s], world.COLOUR_NAMES[c], world.COLOUR_NAMES[b]) for s, c, b in labels.tolist()}
    assert combos == set(HELD_OUT_COMBOS)


def test_held_out_prompts_name_the_held_out_combos():
    prompts = held_out_prompts()
    assert prompts[0] == "a red circle on a green background"
    assert [tuple(parse_caption(p)[k] for k in ("shape", "colour", "background")) for p in prompts] == HELD_OUT_COMBOS


def test_unknown_split_lists_the_choices():
    with pytest.raises(ValueError, match="train, held_out, all"):
        render_dataset(1, seed=0, split="test")


def test_varied_captions_sometimes_name_the_background_first():
    rng = np.random.default_rng(2)
    texts = [describe("circle", "red", "blue", rng=rng) for _ in range(400)]
    first = [t for t in texts if t.index("blue") < t.index("red")]
    assert 0.15 < len(first) / len(texts) < 0.35
    assert all(parse_caption(t)["colour"] == "red" and parse_caption(t)["background"] == "blue" for t in first)
    assert describe("circle", "red", "blue") == "a red circle on a blue background"  # canonical: unchanged
