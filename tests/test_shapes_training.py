"""Tests for the shapes-world training scripts and the shipped judge and shapes-clip weights."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from pixgen.errors import CheckpointError
from pixgen.packs.shapes import paraphrases, tower, train_clip, train_judge, world
from pixgen.packs.shapes.judge import CLASSES, OTHER, JudgeConfig, JudgeNet, judge_metadata, load_judge
from pixgen.packs.shapes.training import (
    crowd_extras,
    draw_crowds,
    not_one_clean_shape,
    random_far_colour_pairs,
    save_fp16_safetensors,
)
from pixgen.packs.shapes.vocabulary import FUNCTION_WORDS, KNOWN_WORDS

WEIGHTS = Path(__file__).resolve().parent.parent / "pixgen" / "packs" / "shapes" / "weights"
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def test_judge_training_steps_reduce_the_loss():
    pool = train_judge.render_pool(64, seed=0)
    gen = torch.Generator().manual_seed(0)
    net = JudgeNet(JudgeConfig(width=4, dropout=0.0))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    images, labels = train_judge.sample_batch(pool, gen, 32, recolour_prob=0.25, augment_prob=0.5, messy_prob=0.4)
    assert (labels[:, 1:] == -1).any() and (labels >= -1).all()
    assert (labels[:, 0] == train_judge.OTHER_INDEX).any() and (labels[:, 0] < train_judge.OTHER_INDEX).any()
    losses = [train_judge.train_step(net, opt, images, labels) for _ in range(15)]
    assert losses[-1] < 0.7 * losses[0]
    assert len(train_judge.train_steps(net, opt, pool, gen, steps=2, batch_size=8)) == 2


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_clip_training_steps_reduce_the_loss(tmp_path, precision):
    config = tmp_path / "tiny-shapes-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    model = train_clip.create_model(config)
    tokens = train_clip.Tokens(32)
    pool = train_clip.CaptionedPool(64, seed=0, tokens=tokens, crowd_prob=0.3)
    batch = pool.batch(32)
    assert batch.match.diagonal().all() and batch.tokens.shape == (32, 32)
    assert not batch.match.all(), "crowd captions must not match single-shape images, nor the reverse"
    opt = torch.optim.AdamW(train_clip.trainable_groups(model, 0.0), lr=3e-3)
    losses = [train_clip.train_step(model, opt, batch, precision=precision) for _ in range(15)]
    assert losses[-1] < 0.7 * losses[0]
    assert len(train_clip.train_steps(model, opt, pool, steps=2, batch_size=8, precision=precision)) == 2


def test_match_matrix_counts_partial_captions_as_positives():
    images = torch.tensor([[0, 0, 2, 1], [1, 0, 2, 0], [0, -2, -2, 1]])  # red circle, red square, recoloured circle
    captions = torch.tensor([[0, 0, 2, -1], [-1, 0, -1, -1], [0, -1, -1, -1]])  # full, "a red shape", "a circle"
    expected = torch.tensor([[True, True, True], [False, True, False], [False, False, True]])
    assert torch.equal(train_clip.match_matrix(images, captions), expected)


def test_count_separates_one_shape_from_a_crowd_of_it():
    one = train_clip.attribute_indices({"shape": "circle", "colour": "red", "background": "blue"})
    scene = world.Scene("circle", "red", "blue", "large", 32.0, 32.0, 15.0)
    text, many = train_clip.crowd_caption(scene, crowd_extras(scene, np.random.default_rng(0), mixed=False))
    assert text == "several red circles on a blue background"
    captions = torch.tensor([one, many])
    images = torch.tensor([one, many])  # the same attributes, one shape vs several
    assert torch.equal(train_clip.match_matrix(images, captions), torch.eye(2, dtype=torch.bool))


def test_mixed_crowds_name_only_what_every_shape_shares():
    scene = world.Scene("circle", "red", "blue", "large", 32.0, 32.0, 15.0)
    extras = [world.Scene("square", "red", "blue", "small", 10.0, 10.0, 6.0)]
    assert train_clip.crowd_caption(scene, extras)[0] == "several red shapes on a blue background"
    extras.append(world.Scene("square", "green", "blue", "small", 50.0, 50.0, 6.0))
    assert train_clip.crowd_caption(scene, extras)[0] == "several shapes on a blue background"
    assert all(e.background == "blue" for e in crowd_extras(scene, np.random.default_rng(0), mixed=True))


def test_crowds_add_shapes_of_the_same_kind_and_colours():
    rng = np.random.default_rng(0)
    scenes = world.sample_scenes(40, rng, world.TRAIN_COMBOS)
    crowds = draw_crowds(scenes, [crowd_extras(scene, rng, mixed=False) for scene in scenes])
    singles = world.scenes_to_tensors(scenes)[0].float() / 255
    fg = torch.tensor([s.fg for s in scenes], dtype=torch.float32)[:, :, None, None] / 255
    bg = torch.tensor([s.bg for s in scenes], dtype=torch.float32)[:, :, None, None] / 255

    def alpha(images):  # how far each pixel is from the background towards the shape colour
        return ((images - bg) * (fg - bg)).sum(1, keepdim=True) / (fg - bg).pow(2).sum(1, keepdim=True)

    assert torch.allclose(bg + alpha(crowds) * (fg - bg), crowds, atol=1e-4)  # only the two colours, blended
    crowd_area, single_area = ((alpha(x) > 0.5).float().mean(dim=(1, 2, 3)) for x in (crowds, singles))
    assert (crowd_area >= single_area - 0.01).all()  # the scene's own shape is still there
    assert (crowd_area > single_area + 0.01).float().mean() > 0.8  # and most crowds have more of it


def test_recoloured_images_stay_far_from_the_named_colours():
    fg, bg = random_far_colour_pairs(500, torch.Generator().manual_seed(0))
    palette = torch.tensor(list(world.COLOURS.values()), dtype=torch.float32)
    assert torch.cdist(torch.cat([fg, bg]), palette).min() >= 70
    assert (fg - bg).norm(dim=1).min() >= 80


def test_messy_scenes_change_the_picture_and_are_labelled_other():
    pool = train_judge.render_pool(200, seed=4)
    idx = list(range(200))
    images, labels = train_judge.draw_messy(pool, idx, torch.Generator().manual_seed(0))
    again, _ = train_judge.draw_messy(pool, idx, torch.Generator().manual_seed(0))
    assert torch.equal(images, again)  # deterministic per generator
    messy = labels[:, 0] == train_judge.OTHER_INDEX
    assert 0.7 * len(idx) < messy.sum() < len(idx)  # a bite that misses the shape keeps the clean label
    changed = ((images - pool.images.float() / 255).abs().amax(dim=1) > 0.25).sum(dim=(1, 2))
    assert changed[messy].min() >= 40
    assert torch.equal(labels[~messy], pool.labels[~messy])
    assert (labels[messy, 1] == -1).any() and (labels[messy, 1] >= 0).any()  # only mixed crowds lose the colour
    assert torch.equal(labels[:, 2], pool.labels[:, 2])  # the background never changes


def test_shipped_judge_calls_messy_renders_other_unless_forced_to_choose():
    judge = load_judge()
    images, _ = train_judge.messy_set(100, seed=12345)
    strict = [p["shape"] for p in judge.predict(images)]
    assert strict.count(OTHER) >= 0.8 * len(strict)  # 90 % on 4540 such renders (train_judge log)
    assert {p["shape"] for p in judge.predict(images, forced_choice=True)} <= set(world.SHAPES)


def test_judge_with_other_classes_is_refused(tmp_path):
    net = JudgeNet(JudgeConfig(width=4))
    metadata = judge_metadata(net.cfg) | {"classes": json.dumps({**CLASSES, "shape": world.SHAPES})}
    path = save_fp16_safetensors(net.state_dict(), tmp_path / "old-judge.safetensors", metadata)
    with pytest.raises(CheckpointError, match="other classes"):
        load_judge(path)


def test_weights_are_saved_as_fp16_with_metadata(tmp_path):
    net = JudgeNet(JudgeConfig(width=4))
    path = save_fp16_safetensors(net.state_dict(), tmp_path / "judge.safetensors", judge_metadata(net.cfg))
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["config"])["width"] == 4
        assert f.get_tensor("heads.shape.weight").dtype == torch.float16
    assert load_judge(path).net.cfg.width == 4


def test_shipped_judge_reads_fresh_held_out_renders():
    judge = load_judge()  # the weights shipped in the package
    images, labels = world.render_dataset(100, seed=12345, split="held_out")
    expected = [{"shape": world.SHAPES[s], "colour": world.COLOUR_NAMES[c], "background": world.COLOUR_NAMES[b]}
                for s, c, b in labels.tolist()]
    accuracy = judge.accuracy(images.float() / 255, expected)
    assert min(accuracy[name] for name in world.ATTRIBUTES) >= 0.98, accuracy
    larger = torch.nn.functional.interpolate(images[:8].float() / 255, size=128, mode="bilinear")
    assert len(judge.predict(larger)) == 8  # other sizes are resized to 64 px


def test_shipped_shapes_clip_loads_through_open_clip_and_reads_held_out_renders():
    model = train_clip.load_shapes_clip(WEIGHTS / "shapes-clip")
    assert model.visual.preprocess_cfg["size"] in (64, (64, 64))
    assert tuple(model.visual.preprocess_cfg["mean"]) == pytest.approx(train_clip.MEAN)
    images, labels = world.render_dataset(100, seed=12345, split="held_out")
    accuracy = train_clip.zero_shot_accuracy(model, train_clip.Tokens(32), images, labels)
    assert min(accuracy[name] for name in world.ATTRIBUTES) >= 0.95, accuracy


def test_shipped_shapes_clip_reads_held_out_combinations_in_every_evaluation_wording(tmp_path):
    scenes = world.sample_scenes(120, np.random.default_rng(54321), world.HELD_OUT_COMBOS)
    model = train_clip.load_shapes_clip(WEIGHTS / "shapes-clip")
    accuracy = train_clip.wording_accuracy(model, train_clip.Tokens(32), scenes)
    assert set(accuracy) == set(paraphrases.WORDINGS)
    assert min(accuracy.values()) >= 0.85, accuracy
    config = tmp_path / "untrained-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    untrained = train_clip.wording_accuracy(train_clip.create_model(config), train_clip.Tokens(32), scenes)
    assert max(untrained.values()) < 0.2, untrained  # chance is 1 in 168 combinations


def test_shapes_cnn_tower_builds_from_an_open_clip_config(tmp_path):
    config = dict(train_clip.SHAPES_CLIP_CONFIG, text_cfg=TINY_CLIP["text_cfg"])
    path = tmp_path / "cnn-shapes-clip.json"
    path.write_text(json.dumps(config))
    model = train_clip.create_model(path).eval()
    assert type(model.visual.trunk).__name__ == "ShapesCNN"
    with torch.no_grad():
        assert model.encode_image(torch.rand(2, 3, 64, 64)).shape == (2, config["embed_dim"])
    with pytest.raises(ValueError, match="no timm pretrained weights"):
        import timm

        timm.create_model(tower.NAME, pretrained=True)


def test_not_one_clean_shape_keeps_the_colours_but_spoils_the_shape():
    rng = np.random.default_rng(3)
    scenes = world.sample_scenes(60, rng, world.TRAIN_COMBOS)
    drawn = [not_one_clean_shape(scene, rng) for scene in scenes]
    images = draw_crowds([scene for scene, _ in drawn], [extras for _, extras in drawn])
    clean = world.scenes_to_tensors(scenes)[0].float() / 255
    changed = ((images - clean).abs().amax(dim=1) > 0.25).sum(dim=(1, 2))
    assert (changed > 0).float().mean() > 0.9  # almost every picture differs from the clean render
    fg = torch.tensor([s.fg for s in scenes], dtype=torch.float32)[:, :, None, None] / 255
    bg = torch.tensor([s.bg for s in scenes], dtype=torch.float32)[:, :, None, None] / 255
    near_fg, near_bg = ((images - c).abs().amax(dim=1) < 0.05 for c in (fg, bg))
    assert ((near_fg | near_bg).float().mean(dim=(1, 2)) > 0.85).all()  # still only the scene's two colours
    cut = [scene for scene, extras in drawn if not extras]
    assert cut and all(min(s.x, s.y, world.IMAGE_SIZE - s.x, world.IMAGE_SIZE - s.y) < 0.4 * s.radius for s in cut)


def test_clip_batches_pair_colour_swapped_twins_and_unname_messy_shapes():
    tokens = train_clip.Tokens(32)
    pool = train_clip.CaptionedPool(3000, seed=0, tokens=tokens, recolour_prob=0.0, crowd_prob=0.0,
                                    messy_prob=0.0, swap_prob=1.0)
    idx = pool.swap_twins(torch.arange(0, 400, 2))
    combos = [pool.scenes[i].combo for i in idx.tolist()]
    swapped = sum(b == (a[0], a[2], a[1]) for a, b in zip(combos, combos[1:], strict=False))
    assert swapped > 0.5 * len(combos)  # most have a twin in the pool (held-out combinations never do)
    messy = train_clip.CaptionedPool(500, seed=1, tokens=tokens, recolour_prob=0.0, crowd_prob=0.0, messy_prob=1.0)
    batch = messy.batch(32, augment_prob=0.0)
    assert (batch.labels[:, 0] == -100).all() and (batch.labels[:, 1:] >= 0).all()  # colours still known
    assert batch.match.diagonal().all()


def test_every_word_of_the_training_grammar_is_known_to_the_vocabulary():
    """Filler words exclude vocabulary.KNOWN_WORDS | FUNCTION_WORDS, and the off-world notice must not flag
    the world's own words: both rely on these sets covering everything the caption grammar writes."""
    rng = np.random.default_rng(0)
    captions = [world.describe(*combo, size=size, rng=rng)
                for combo in world.ALL_COMBOS for size in (None, *world.SIZE_WORDS) for _ in range(3)]
    captions += [world.describe_crowd(*combo, rng=rng) for combo in world.ALL_COMBOS for _ in range(4)]
    words = {word for text in captions for word in re.findall(r"[a-z]+", text.lower())}
    assert {"circle", "background", "several"} <= words
    assert not words - KNOWN_WORDS - FUNCTION_WORDS


def test_filler_words_pad_captions_without_world_or_evaluation_words():
    tokens = train_clip.Tokens(32)
    fillers = set(tokens.filler_ids().tolist())
    word_id = {word: tokens.tokenizer.encoder[word + "</w>"] for word in
               ("red", "circle", "background", "several", "the", "one", "sitting", "front", "that", "castle")}
    assert word_id["castle"] in fillers
    assert not {i for word, i in word_id.items() if word != "castle"} & fillers
    plain = train_clip.CaptionedPool(200, seed=3, tokens=tokens, crowd_prob=0.3, messy_prob=0.1).batch(48)
    padded = train_clip.CaptionedPool(200, seed=3, tokens=tokens, crowd_prob=0.3, messy_prob=0.1,
                                      filler_prob=1.0).batch(48)
    assert torch.equal(plain.images, padded.images) and torch.equal(plain.match, padded.match)
    start, end = tokens.tokenizer.sot_token_id, tokens.tokenizer.eot_token_id
    for before, after in zip(plain.tokens.tolist(), padded.tokens.tolist(), strict=True):
        before, after = [t for t in before if t], [t for t in after if t]  # without the padding
        assert 1 <= len([t for t in after if t in fillers]) <= 2
        assert [t for t in after if t not in fillers] == before  # the caption's own tokens, in order
        assert after[0] == start and after[-1] == end
