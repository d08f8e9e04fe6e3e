"""Train shapes-clip: a small open_clip CLIP for the shapes world, contrastively, on training combinations only.

Usage:
    python -m pixgen.packs.shapes.train_clip   # the defaults (--steps 1000 --seed 0) give the shipped weights

Writes ``OUT.json`` (an open_clip model config, the format of open_clip's ``model_configs/*.json``)
and ``OUT.safetensors`` (the fp16 state dict; its metadata holds ``preprocess_cfg`` with mean/std).
Images are normalised with open_clip's default (OpenAI) mean/std, so ``create_model`` attaches the
right preprocessing without overrides. Load it with::

    open_clip.add_model_config("pixgen/packs/shapes/weights/shapes-clip.json")
    model = open_clip.create_model("shapes-clip", pretrained="pixgen/packs/shapes/weights/shapes-clip.safetensors")
    tokenizer = open_clip.get_tokenizer("shapes-clip")  # the stock tokenizer, context length 32

Recipe. The image tower is a small CNN registered with timm (``pixgen.packs.shapes.tower``: why not
a ViT is explained there); the text tower is open_clip's transformer with the stock tokenizer.
The training images are rendered once. Batches are lightly augmented (shift, zoom, rotation,
flips, blur, colour gain, noise): none in the first 10 % of the steps, then ramping up to 75 % of
each batch, because shape is learnt much faster on clean images. Captions come from the world's
grammar and often mention only some attributes ("a circle", "a red shape", "a square on a blue
background"), so the towers must represent shape, colour and background separately instead of
memorising the 144 training combinations. The loss is CLIP's symmetric cross-entropy with several
positives: an image and a caption match when every attribute the caption mentions is true of the
image, so duplicates and partial captions in a batch are not pushed apart. A fraction of the
images are recoloured with random colours far from the 8 named colours and captioned with their
shape (and maybe size) only: shape must be read regardless of colour. Another fraction are
crowds (more copies of the scene's shape, "several red circles on a blue background"): a CLIP that
never saw one circle contrasted with many is maximised just as well by a texture of red blobs,
which is what VQGAN+CLIP then paints; with crowds as negatives the held-out judge's all-correct
rate at the default preset went from 38 % to 75 % (8 prompts, 60 steps). Another fraction is drawn
as "not one clean shape" (``training.not_one_clean_shape``: a merged blob, a bitten shape, a shape
cut off by the edge) and captioned by its colours only: no caption naming a shape matches it. Some
images are followed in the batch by their colour-swapped twin ("blue circle on red" after "red circle
on blue"), and a quarter of the varied captions name the background first ("a blue background behind
a red circle"), so colours bind to the shape or the background by the word "background", not by word
order; "against blue" names a background without the word. ``--filler-prob`` (off by default, not
in the shipped weights) pads a share of the captions with one or two random words of the tokenizer's
vocabulary that neither the world's grammar nor the evaluation wordings (``pixgen.packs.shapes.paraphrases``)
use ("a red pelican circle on a blue background"). Three CLIPs trained with 0.3 put the evaluation
wordings' text closer to clean renders of their combination, but guided worse images: 35 of 64
paraphrased prompts strictly right against 39 with the shipped CLIPs ("a red circle on green": 0 of
8 against 5). Training runs under bf16 autocast (``--precision``), about 12x slower than fp32 on a
CPU without native bf16 (AVX512-BF16 or AMX). Zero-shot accuracy on
held-out combinations is printed as training goes, for prompt families ("a circle" / "a red
shape" / "a shape on a red background"), full-caption argmax over all 168 combinations, and count
(one shape vs a crowd of it).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pixgen.packs.shapes import tower, world
from pixgen.packs.shapes.training import (
    augment_schedule,
    base_parser,
    cosine_lr,
    crowd_extras,
    draw_crowds,
    log,
    not_one_clean_shape,
    random_affine,
    random_blur,
    random_colour,
    random_flips,
    recolour,
    save_fp16_safetensors,
    seed_everything,
    to_unit,
)

# An open_clip model config (the format of open_clip's model_configs/*.json).
SHAPES_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "timm_model_name": tower.NAME, "timm_model_pretrained": False,
                   "timm_pool": "", "timm_proj": "linear"},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
}
# Images are normalised with open_clip's defaults (OPENAI_DATASET_MEAN/STD), what create_model attaches.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
FORMAT = "pixgen-shapes-clip"
_KEYS = ("shape", "colour", "background", "size", "count")  # attribute-index columns; -1: unknown/unmentioned
ONE, MANY = 0, 1  # the count column: the world's captions promise one shape; crowd captions say "several"


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] to the model's input normalisation."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images - mean) / std


def attribute_indices(attrs: dict[str, str | None], count: int = ONE) -> list[int]:
    """(shape, colour, background, size, count) indices of an attribute dict; -1 for None."""
    names = {"shape": world.SHAPES, "colour": world.COLOUR_NAMES, "background": world.COLOUR_NAMES,
             "size": world.SIZES}
    return [names[key].index(attrs[key]) if attrs.get(key) else -1 for key in _KEYS[:-1]] + [count]


def crowd_caption(scene: world.Scene, extras: list[world.Scene],
                  rng: np.random.Generator | None = None) -> tuple[str, list[int]]:
    """A caption of scene crowded by extras ("several red circles on a blue background") and its attributes.

    Shape and colour are named only when every shape shares them. Without rng: canonical wording,
    every attribute that applies. With one: random wording, each attribute left out with probability 0.3.
    """
    shape = scene.shape if all(e.shape == scene.shape for e in extras) else None
    colour = scene.colour if all(e.colour == scene.colour for e in extras) else None
    background = scene.background
    if rng is not None:
        shape, colour, background = (v if rng.random() >= 0.3 else None for v in (shape, colour, background))
    text = world.describe_crowd(shape, colour, background, rng)
    return text, attribute_indices({"shape": shape, "colour": colour, "background": background}, MANY)


def match_matrix(image_attrs: torch.Tensor, caption_attrs: torch.Tensor) -> torch.Tensor:
    """[N_img, N_txt] bool: every attribute a caption mentions (>= 0) equals the image's."""
    mentioned = caption_attrs[None, :, :] >= 0
    equal = image_attrs[:, None, :] == caption_attrs[None, :, :]
    return (equal | ~mentioned).all(dim=2)


def multi_positive_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                             match: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss whose targets spread evenly over every matching pair (normalised embeddings)."""
    logits = logit_scale.exp().clamp(max=100) * image_emb @ text_emb.T
    match = match.float()
    to_text = F.cross_entropy(logits, match / match.sum(1, keepdim=True))
    to_image = F.cross_entropy(logits.T, match.T / match.T.sum(1, keepdim=True))
    return (to_text + to_image) / 2


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light geometry, blur, colour gain and noise for float images in [0, 1]."""
    images = random_flips(images, gen)
    images = random_affine(images, gen, max_deg=20.0, scale=(0.85, 1.1), shift=0.06)
    images = random_blur(images, gen, p=0.3, max_sigma=1.2)
    return random_colour(images, gen, gain=0.08, noise=0.05)


class Tokens:
    """The stock open_clip tokenizer with a cache (the grammar has a few thousand distinct captions)."""

    def __init__(self, context_length: int):
        import open_clip

        self.tokenizer = open_clip.get_tokenizer("", context_length=context_length)
        self.cache: dict[str, torch.Tensor] = {}

    def filler_ids(self) -> torch.Tensor:
        """Ids of the vocabulary's whole alphabetic words that can pad a caption without changing what it
        says: none of the shapes world's words, and none of the evaluation wordings' words (those stay
        unseen, so ``pixgen eval --paraphrases`` still measures generalisation)."""
        from pixgen.packs.shapes.vocabulary import FUNCTION_WORDS, KNOWN_WORDS

        reserved = KNOWN_WORDS | FUNCTION_WORDS | evaluation_words()  # the first two cover the training grammar
        reserved_ids = set(self.tokenizer.encode(" ".join(sorted(reserved))))  # "triangles" is "tri" + "angles"
        ids = [i for token, i in self.tokenizer.encoder.items()
               if token.endswith("</w>") and token[:-4].isalpha() and i not in reserved_ids]
        return torch.tensor(sorted(ids))

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """Token ids [len(texts), context_length]."""
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.tokenizer(missing), strict=True))
        return torch.stack([self.cache[t] for t in texts])


def evaluation_words() -> set[str]:
    """Every word of the evaluation wordings (``pixgen.packs.shapes.paraphrases``): never used as filler."""
    from pixgen.packs.shapes.paraphrases import WORDINGS

    return {word for template in WORDINGS.values() for word in re.findall(r"[a-z]+", template.lower())}


def insert_fillers(tokens: torch.Tensor, filler_ids: torch.Tensor, prob: float, gen: torch.Generator,
                   most: int = 2) -> torch.Tensor:
    """With probability ``prob`` per caption, 1 to ``most`` random filler words at random places between
    the start and end tokens: the text tower learns to read the attribute words whatever surrounds
    them, instead of taking any unfamiliar word as a change of meaning."""
    out = tokens.clone()
    chosen = (torch.rand(len(tokens), generator=gen) < prob).nonzero().flatten().tolist()
    for row in chosen:
        length = int((tokens[row] != 0).sum())  # start, words, end; zeros pad
        count = min(int(torch.randint(1, most + 1, (1,), generator=gen)), tokens.shape[1] - length)
        ids = tokens[row, :length].tolist()
        for _ in range(count):
            place = int(torch.randint(1, len(ids), (1,), generator=gen))  # after the start token, before the end
            ids.insert(place, int(filler_ids[torch.randint(len(filler_ids), (1,), generator=gen)]))
        out[row, :len(ids)] = torch.tensor(ids)
    return out


@dataclass
class Batch:
    """Model inputs for one step and which image-caption pairs match."""

    images: torch.Tensor  # normalised float [B, 3, 64, 64]
    tokens: torch.Tensor  # [B, context_length]
    match: torch.Tensor  # bool [B, B]
    labels: torch.Tensor  # (shape, colour, background) indices [B, 3]; -100 where unknown (recoloured)


class CaptionedPool:
    """Training images rendered once, with their scenes; draws augmented, captioned batches."""

    def __init__(self, n: int, seed: int, tokens: Tokens, split: str = "train", recolour_prob: float = 0.25,
                 crowd_prob: float = 0.2, mixed_prob: float = 0.5, messy_prob: float = 0.0, swap_prob: float = 0.0,
                 filler_prob: float = 0.0):
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.scenes = world.sample_scenes(n, self.rng, world.combos_for_split(split))
        self.images, _ = world.scenes_to_tensors(self.scenes)
        self.tokens = tokens
        self.recolour_prob = recolour_prob
        self.crowd_prob = crowd_prob
        self.mixed_prob = mixed_prob  # share of crowds whose extra shapes take any shape and colour
        self.messy_prob = messy_prob  # share drawn as a merged blob, a bitten or a cut-off shape (shape unnamed)
        self.swap_prob = swap_prob  # share replaced by the colour-swapped twin of another image in the batch
        self.filler_prob = filler_prob  # share of captions padded with random unrelated words
        self.filler_ids = tokens.filler_ids() if filler_prob > 0 else None
        self.by_combo: dict[world.Combo, list[int]] = {}
        for i, scene in enumerate(self.scenes):
            self.by_combo.setdefault(scene.combo, []).append(i)

    def swap_twins(self, idx: torch.Tensor) -> torch.Tensor:
        """Replace a share of idx by images whose shape colour and background are swapped relative to the
        image before them ("blue circle on red" after "red circle on blue"), where that combination is
        in the pool: a hard negative for binding colours to the shape or the background."""
        chosen = (torch.rand(len(idx), generator=self.gen) < self.swap_prob).nonzero().flatten().tolist()
        idx = idx.clone()
        for j in chosen:
            shape, colour, background = self.scenes[int(idx[j - 1])].combo
            twins = self.by_combo.get((shape, background, colour))
            if twins:
                idx[j] = twins[int(self.rng.integers(len(twins)))]
        return idx

    def batch(self, size: int, augment_prob: float = 0.75) -> Batch:
        """A random batch: captions from the grammar; some images recoloured (shape-only captions), some
        crowded with more shapes (crowd captions), some augmented."""
        idx = self.swap_twins(torch.randint(len(self.images), (size,), generator=self.gen))
        scenes = [self.scenes[i] for i in idx.tolist()]
        images = to_unit(self.images[idx])
        draw = torch.rand(size, generator=self.gen)
        crowd_end = self.recolour_prob + self.crowd_prob
        recoloured = (draw < self.recolour_prob).tolist()
        crowded = ((draw >= self.recolour_prob) & (draw < crowd_end)).tolist()
        messy = ((draw >= crowd_end) & (draw < crowd_end + self.messy_prob)).tolist()
        texts, image_attrs, caption_attrs, extras = [], [], [], {}
        for i, scene in enumerate(scenes):
            truth = attribute_indices({"shape": scene.shape, "colour": scene.colour,
                                       "background": scene.background, "size": scene.size})
            attrs = None
            if messy[i]:
                scenes[i], extras[i] = not_one_clean_shape(scene, self.rng)
                truth[0] = -2  # matches no caption that names a shape
                text = world.describe(colour=scene.colour, background=scene.background, rng=self.rng)
            elif recoloured[i]:
                truth[1] = truth[2] = -2  # matches no caption that names a colour
                size_word = scene.size if self.rng.random() < 0.3 else None
                text = world.describe(shape=scene.shape, size=size_word, rng=self.rng)
            elif crowded[i]:
                truth[_KEYS.index("count")] = MANY
                extras[i] = crowd_extras(scene, self.rng, mixed=bool(self.rng.random() < self.mixed_prob))
                text, attrs = crowd_caption(scene, extras[i], self.rng)
                shared = crowd_caption(scene, extras[i])[1]  # what every shape in the crowd has in common
                truth[:2] = [value if value >= 0 else -2 for value in shared[:2]]
            else:
                text = world.caption(scene, self.rng)
            texts.append(text)
            image_attrs.append(truth)
            caption_attrs.append(attrs or attribute_indices(world.parse_caption(text)))
        chosen = [i for i, flag in enumerate(recoloured) if flag]
        if chosen:
            images[chosen] = recolour([scenes[i] for i in chosen], self.gen)
        if extras:
            images[list(extras)] = draw_crowds([scenes[i] for i in extras], list(extras.values()))
        chosen = (torch.rand(size, generator=self.gen) < augment_prob).nonzero().flatten()
        if len(chosen):
            images[chosen] = augment(images[chosen], self.gen)
        image_attrs = torch.tensor(image_attrs)
        labels = image_attrs[:, :3].masked_fill(image_attrs[:, :3] < 0, -100)
        tokens = self.tokens(texts)
        if self.filler_ids is not None:
            tokens = insert_fillers(tokens, self.filler_ids, self.filler_prob, self.gen)
        return Batch(normalise(images), tokens, match_matrix(image_attrs, torch.tensor(caption_attrs)),
                     labels)


class AttributeHeads(nn.Module):
    """Linear shape/colour/background classifiers on the image embedding: a training-only auxiliary loss."""

    def __init__(self, embed_dim: int):
        super().__init__()
        sizes = {"shape": len(world.SHAPES), "colour": len(world.COLOUR_NAMES), "background": len(world.COLOUR_NAMES)}
        self.heads = nn.ModuleDict({name: nn.Linear(embed_dim, n) for name, n in sizes.items()})

    def loss(self, image_emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of the heads; labels [B, 3], -100 ignored."""
        counts = (labels >= 0).sum(dim=0).clamp(min=1)  # a mean over known labels, 0 when there are none
        return sum(F.cross_entropy(head(image_emb), labels[:, i], reduction="sum") / counts[i]
                   for i, head in enumerate(self.heads.values()))


def trainable_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on matrices only (not gains, biases, logit scale)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        small = param.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if small else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_step(model: nn.Module, opt: torch.optim.Optimizer, batch: Batch, heads: AttributeHeads | None = None,
               aux_weight: float = 1.0, precision: str = "bf16") -> float:
    """One optimiser step of the multi-positive contrastive loss (+ auxiliary attribute loss); returns the loss."""
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        image_emb = model.encode_image(batch.images)
        text_emb = model.encode_text(batch.tokens)
    image_emb, text_emb = image_emb.float(), text_emb.float()
    loss = multi_positive_clip_loss(F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1),
                                    model.logit_scale, batch.match)
    if heads is not None:
        loss = loss + aux_weight * heads.loss(image_emb, batch.labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.detach().item()


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, pool: CaptionedPool, steps: int, batch_size: int,
                augment_prob: float = 0.75, heads: AttributeHeads | None = None,
                precision: str = "bf16") -> list[float]:
    """Run steps optimiser steps on random batches from pool; returns the losses."""
    return [train_step(model, opt, pool.batch(batch_size, augment_prob), heads, precision=precision)
            for _ in range(steps)]


def prompt_families() -> dict[str, list[str]]:
    """Zero-shot prompts per attribute, in class order: "a circle", "a red shape", "a shape on a red background"."""
    return {
        "shape": [world.describe(shape=s) for s in world.SHAPES],
        "colour": [world.describe(colour=c, shape=None) for c in world.COLOUR_NAMES],
        "background": [world.describe(background=b) for b in world.COLOUR_NAMES],
    }


@torch.no_grad()
def embed_texts(model: torch.nn.Module, tokens: Tokens, texts: list[str]) -> torch.Tensor:
    """Unit text embeddings [len(texts), embed_dim]."""
    return F.normalize(model.encode_text(tokens(texts)).float(), dim=-1)


@torch.no_grad()
def embed_images(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Unit image embeddings of uint8 images [N, 3, 64, 64]."""
    chunks = [model.encode_image(normalise(to_unit(x))).float() for x in images.split(500)]
    return F.normalize(torch.cat(chunks), dim=-1)


@torch.no_grad()
def zero_shot_accuracy(model: torch.nn.Module, tokens: Tokens, images: torch.Tensor,
                       labels: torch.Tensor) -> dict[str, float]:
    """Zero-shot accuracy per attribute: prompt families ("shape" ...) and full-caption argmax ("full_shape" ...)."""
    model.eval()
    image_emb = embed_images(model, images)
    result = {}
    for column, (name, prompts) in enumerate(prompt_families().items()):
        predicted = (image_emb @ embed_texts(model, tokens, prompts).T).argmax(dim=1)
        result[name] = (predicted == labels[:, column]).float().mean().item()
    combos = world.ALL_COMBOS
    prompts = [world.describe(shape=s, colour=c, background=b) for s, c, b in combos]
    best = (image_emb @ embed_texts(model, tokens, prompts).T).argmax(dim=1)
    combo_labels = torch.tensor([[world.SHAPES.index(s), world.COLOUR_NAMES.index(c), world.COLOUR_NAMES.index(b)]
                                 for s, c, b in combos])[best]
    for column, name in enumerate(("shape", "colour", "background")):
        result[f"full_{name}"] = (combo_labels[:, column] == labels[:, column]).float().mean().item()
    result["full_all"] = (combo_labels == labels).all(dim=1).float().mean().item()
    return result


@torch.no_grad()
def count_accuracy(model: torch.nn.Module, tokens: Tokens, scenes: list[world.Scene],
                   rng: np.random.Generator) -> float:
    """How often the canonical caption of the right count wins ("a red circle ..." vs "several red circles ..."),
    over the scenes rendered alone and crowded (half of the crowds mixed)."""
    model.eval()
    extras = [crowd_extras(s, rng, mixed=i % 2 == 1) for i, s in enumerate(scenes)]
    singles = to_unit(world.scenes_to_tensors(scenes)[0])
    crowds = draw_crowds(scenes, extras)
    one = embed_texts(model, tokens, [world.describe(*s.combo) for s in scenes])
    many = embed_texts(model, tokens, [crowd_caption(s, e)[0] for s, e in zip(scenes, extras, strict=True)])
    right = 0
    for images, truth_is_one in ((singles, True), (crowds, False)):
        emb = F.normalize(model.encode_image(normalise(images)).float(), dim=-1)
        says_one = (emb * one).sum(1) > (emb * many).sum(1)
        right += int((says_one == truth_is_one).sum())
    return right / (2 * len(scenes))


@torch.no_grad()
def wording_accuracy(model: torch.nn.Module, tokens: Tokens, scenes: list[world.Scene]) -> dict[str, float]:
    """Full-caption zero-shot accuracy in each evaluation wording (``pixgen.packs.shapes.paraphrases``): how often
    the scene's own combination, phrased that way, beats every other combination phrased the same way."""
    from pixgen.packs.shapes.paraphrases import WORDINGS, phrase

    model.eval()
    image_emb = embed_images(model, world.scenes_to_tensors(scenes)[0])
    truth = torch.tensor([world.ALL_COMBOS.index(scene.combo) for scene in scenes])
    result = {}
    for wording in WORDINGS:
        text_emb = embed_texts(model, tokens, [phrase(wording, combo) for combo in world.ALL_COMBOS])
        result[wording] = ((image_emb @ text_emb.T).argmax(dim=1) == truth).float().mean().item()
    return result


def format_accuracy(acc: dict[str, float]) -> str:
    """"shape 0.95 colour 1.00 ... | full: shape 0.93 ..."."""
    family = " ".join(f"{k} {v:.3f}" for k, v in acc.items() if not k.startswith("full_"))
    full = " ".join(f"{k[5:]} {v:.3f}" for k, v in acc.items() if k.startswith("full_"))
    return f"{family} | full-caption: {full}"


def create_model(config_path: str | Path) -> torch.nn.Module:
    """A randomly initialised open_clip CLIP from a model config JSON, through open_clip's own registry."""
    import open_clip

    open_clip.add_model_config(config_path)
    return open_clip.create_model(Path(config_path).stem)


def load_shapes_clip(out: str | Path) -> torch.nn.Module:
    """Load OUT.json + OUT.safetensors back through open_clip (what pixgen's loader does)."""
    import open_clip

    out = Path(out)
    open_clip.add_model_config(out.with_suffix(".json"))
    return open_clip.create_model(out.stem, pretrained=str(out.with_suffix(".safetensors"))).eval()


def train(out: str, steps: int, seed: int, n_images: int, batch_size: int, lr: float, recolour_prob: float,
          crowd_prob: float, aux: bool = True, eval_every: int = 100, threads: int = 2,
          messy_prob: float = 0.0, swap_prob: float = 0.0, filler_prob: float = 0.0,
          precision: str = "bf16") -> dict[str, float]:
    """Train shapes-clip for a number of steps, print progress, write OUT.json and OUT.safetensors."""
    seed_everything(seed, threads)
    config_path = Path(out).with_suffix(".json")
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(SHAPES_CLIP_CONFIG, indent=4) + "\n")
    model = create_model(config_path)
    tokens = Tokens(SHAPES_CLIP_CONFIG["text_cfg"]["context_length"])
    t0 = time.monotonic()
    pool = CaptionedPool(n_images, seed, tokens, "train", recolour_prob, crowd_prob, messy_prob=messy_prob,
                         swap_prob=swap_prob, filler_prob=filler_prob)
    probe_x, probe_y = world.render_dataset(1000, seed + 1, "held_out")
    probe_scenes = world.sample_scenes(300, np.random.default_rng(seed + 1), world.HELD_OUT_COMBOS)
    log(f"rendered {n_images} training images in {time.monotonic() - t0:.1f}s")
    heads = AttributeHeads(SHAPES_CLIP_CONFIG["embed_dim"]) if aux else None
    groups = trainable_groups(model, 0.1) + ([{"params": heads.parameters(), "weight_decay": 0.0}] if heads else [])
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)
    start, losses = time.monotonic(), []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step / steps, lr)
        losses += train_steps(model, opt, pool, 1, batch_size, augment_schedule(step / steps), heads, precision)
        if (step + 1) % eval_every == 0:
            speed = (step + 1) * batch_size / (time.monotonic() - start)
            acc = zero_shot_accuracy(model, tokens, probe_x, probe_y)
            count = count_accuracy(model, tokens, probe_scenes, np.random.default_rng(seed + 3))
            log(f"step {step + 1:5d}  loss {sum(losses) / len(losses):.4f}  {speed:.0f} img/s  "
                f"scale {model.logit_scale.exp().item():.1f}  held-out {format_accuracy(acc)}  count {count:.3f}")
            losses = []
    log(f"trained {steps} steps in {time.monotonic() - start:.0f}s")
    metadata = {"format": FORMAT, "seed": str(seed), "steps": str(steps),
                "preprocess_cfg": {"mean": list(MEAN), "std": list(STD), "size": 64},
                "model_cfg": SHAPES_CLIP_CONFIG, **({"filler_prob": str(filler_prob)} if filler_prob else {})}
    save_fp16_safetensors(model.state_dict(), config_path.with_suffix(".safetensors"), metadata)
    loaded = load_shapes_clip(config_path)
    test_x, test_y = world.render_dataset(5000, seed + 2, "held_out")
    acc = zero_shot_accuracy(loaded, tokens, test_x, test_y)
    test_scenes = world.sample_scenes(1000, np.random.default_rng(seed + 2), world.HELD_OUT_COMBOS)
    acc["count"] = count_accuracy(loaded, tokens, test_scenes, np.random.default_rng(seed + 4))
    log(f"held-out zero-shot accuracy (5000 fresh renders, fp16 weights reloaded via open_clip): "
        f"{format_accuracy(acc)}  (count: 1000 scenes alone and crowded)")
    wordings = wording_accuracy(loaded, tokens, test_scenes)
    log("full captions in the evaluation wordings: " + ", ".join(f"{k} {v:.3f}" for k, v in wordings.items()))
    log(f"saved {config_path} and {config_path.with_suffix('.safetensors')}")
    return acc


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and train."""
    parser = base_parser("pixgen.packs.shapes.train_clip", __doc__.split("\n")[0],
                         out="pixgen/packs/shapes/weights/shapes-clip",
                         steps=1000, images=100000, lr=1e-3, recolour_prob=0.25)
    parser.add_argument("--crowd-prob", type=float, default=0.2, help="fraction crowded, 'several ...' captions")
    parser.add_argument("--messy-prob", type=float, default=0.15,
                        help="fraction drawn as a merged blob, a bitten or a cut-off shape (shape unnamed)")
    parser.add_argument("--swap-prob", type=float, default=0.15,
                        help="fraction replaced by the colour-swapped twin of the image before it")
    parser.add_argument("--filler-prob", type=float, default=0.0,
                        help="fraction of captions padded with 1-2 random unrelated words (never evaluation words)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="bf16 autocast (fast where the CPU has native bf16, ~12x slower without) or fp32")
    parser.add_argument("--no-aux", dest="aux", action="store_false", help="no auxiliary attribute heads")
    args = parser.parse_args(argv)
    log(f"shapes-clip {json.dumps(SHAPES_CLIP_CONFIG)}  seed {args.seed}  steps {args.steps}")
    train(args.out, args.steps, args.seed, args.images, args.batch_size, args.lr, args.recolour_prob,
          args.crowd_prob, args.aux, threads=args.threads, messy_prob=args.messy_prob, swap_prob=args.swap_prob,
          filler_prob=args.filler_prob, precision=args.precision)


if __name__ == "__main__":
    main()
