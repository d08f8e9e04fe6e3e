"""Train the shapes judge on training combinations only and report held-out accuracy.

Usage:
    python -m pixgen.packs.shapes.train_judge   # the defaults (--steps 1500 --seed 1) give the shipped weights

The training set is rendered once into a uint8 tensor. Batches are augmented (rotation, zoom,
shift, flips, blur, brightness/channel gain, pixel noise) so the judge also reads the less clean
images generation produces; augmentation starts after 10 % of the steps and ramps up to 75 % of
each batch, because shape is learnt much faster on clean images first. A fraction of each batch
is recoloured with random colours far from the 8 named ones and trains the shape head only, so
that shape is read independently of colour (each (colour, background) pair appears in training
with only two of the three shapes; a judge that leans on colour misses the held-out third).
Another fraction is drawn messy (``training.messy_extras``: several shapes, merged blobs, bitten
shapes) and labelled with the shape class ``other``, so the judge can say "not one clean shape"
instead of naming the nearest shape for whatever generation painted.
Progress lines report the loss, speed and accuracy on a fixed held-out set; the end reports
per-attribute accuracy on fresh held-out renders, clean and augmented, and saves fp16 weights
with the architecture in the safetensors metadata.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pixgen.packs.shapes.judge import CLASSES, OTHER, JudgeConfig, JudgeNet, judge_metadata
from pixgen.packs.shapes.training import (
    augment_schedule,
    base_parser,
    cosine_lr,
    draw_crowds,
    log,
    messy_extras,
    random_affine,
    random_blur,
    random_colour,
    random_flips,
    recolour,
    save_fp16_safetensors,
    seed_everything,
    to_unit,
)
from pixgen.packs.shapes.world import (
    Scene,
    combos_for_split,
    coverage,
    render_dataset,
    sample_scenes,
    scenes_to_tensors,
)

OTHER_INDEX = CLASSES["shape"].index(OTHER)


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random geometry, blur, colour gain and noise for float images in [0, 1]."""
    images = random_flips(images, gen)
    images = random_affine(images, gen, max_deg=45.0, scale=(0.8, 1.15), shift=0.1)
    images = random_blur(images, gen, p=0.5, max_sigma=1.5)
    return random_colour(images, gen, gain=0.12, noise=0.08)


@dataclass
class LabelledPool:
    """Training scenes rendered once: uint8 images [N, 3, 64, 64], labels [N, 3] and the scenes themselves."""

    scenes: list[Scene]
    images: torch.Tensor
    labels: torch.Tensor


def render_pool(n: int, seed: int, split: str = "train") -> LabelledPool:
    """Render n seeded scenes of a split into a pool."""
    scenes = sample_scenes(n, np.random.default_rng(seed), combos_for_split(split))
    return LabelledPool(scenes, *scenes_to_tensors(scenes))


def draw_messy(pool: LabelledPool, idx: list[int], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Messy versions of the pool's scenes idx: float images in [0, 1] and their labels.

    The shape label becomes ``other`` where the mess changed at least 40 pixels and 8 % of the
    shape's area (a tiny bite still leaves the shape); the colour label is -1 (ignored) where
    shapes of other colours were added.
    """
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=gen)))
    scenes = [pool.scenes[i] for i in idx]
    drawn = [messy_extras(scene, rng) for scene in scenes]
    images = draw_crowds(scenes, [extras for extras, _ in drawn])
    changed = ((images - to_unit(pool.images[idx])).abs().amax(dim=1) > 0.25).sum(dim=(1, 2))
    area = (torch.from_numpy(coverage(scenes)) > 0.5).sum(dim=(1, 2))
    messy = changed >= torch.clamp(0.08 * area, min=40)
    colour_known = torch.tensor([known for _, known in drawn])
    labels = pool.labels[idx].clone()
    labels[messy, 0] = OTHER_INDEX
    labels[messy & ~colour_known, 1] = -1
    return images, labels


def sample_batch(pool: LabelledPool, gen: torch.Generator, batch_size: int, recolour_prob: float,
                 augment_prob: float, messy_prob: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of float images in [0, 1] and labels.

    Recoloured images get colour labels -1 (ignored); messy ones (see draw_messy) shape ``other``.
    """
    idx = torch.randint(len(pool.images), (batch_size,), generator=gen)
    images, labels = to_unit(pool.images[idx]), pool.labels[idx].clone()
    recoloured = torch.rand(batch_size, generator=gen) < recolour_prob
    chosen = recoloured.nonzero().flatten()
    if len(chosen):
        images[chosen] = recolour([pool.scenes[i] for i in idx[chosen].tolist()], gen)
        labels[chosen, 1:] = -1
    chosen = ((torch.rand(batch_size, generator=gen) < messy_prob) & ~recoloured).nonzero().flatten()
    if len(chosen):
        images[chosen], labels[chosen] = draw_messy(pool, idx[chosen].tolist(), gen)
    chosen = (torch.rand(batch_size, generator=gen) < augment_prob).nonzero().flatten()
    if len(chosen):
        images[chosen] = augment(images[chosen], gen)
    return images, labels


def judge_loss(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the three heads; labels [N, 3] are (shape, colour, background) indices, -1 ignored."""
    return sum(F.cross_entropy(logits[name].float(), labels[:, i], ignore_index=-1, label_smoothing=0.05)
               for i, name in enumerate(CLASSES))


def train_step(net: JudgeNet, opt: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor) -> float:
    """One optimiser step on float images [N, 3, 64, 64] in [0, 1]; returns the loss."""
    net.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(images.contiguous(memory_format=torch.channels_last))
    loss = judge_loss(logits, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach().item()


def train_steps(net: JudgeNet, opt: torch.optim.Optimizer, pool: LabelledPool, gen: torch.Generator, steps: int,
                batch_size: int, recolour_prob: float = 0.3, augment_prob: float = 0.75,
                messy_prob: float = 0.25) -> list[float]:
    """Run steps optimiser steps on random batches from pool; returns the losses."""
    return [train_step(net, opt, *sample_batch(pool, gen, batch_size, recolour_prob, augment_prob, messy_prob))
            for _ in range(steps)]


@torch.no_grad()
def evaluate(net: JudgeNet, images: torch.Tensor, labels: torch.Tensor,
             gen: torch.Generator | None = None) -> dict[str, float]:
    """Per-attribute accuracy (labels -1 not scored) on uint8 or [0, 1] float images; augmented first if gen."""
    net.eval()
    correct = torch.zeros(len(CLASSES))
    for x, y in zip(images.split(500), labels.split(500), strict=True):
        x = to_unit(x) if x.dtype == torch.uint8 else x
        x = x if gen is None else augment(x, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net(x.contiguous(memory_format=torch.channels_last))
        correct += torch.stack([(logits[name].argmax(1) == y[:, i]).sum() for i, name in enumerate(CLASSES)])
    scored = (labels >= 0).sum(dim=0).clamp(min=1)
    return {name: float(c / n) for name, c, n in zip(CLASSES, correct, scored, strict=True)}


def messy_set(n: int, seed: int, split: str = "held_out") -> tuple[torch.Tensor, torch.Tensor]:
    """Messy renders of a split whose shape label is ``other``: float images [m <= n, 3, 64, 64] and labels."""
    pool = render_pool(n, seed, split)
    images, labels = draw_messy(pool, list(range(n)), torch.Generator().manual_seed(seed))
    keep = labels[:, 0] == OTHER_INDEX
    return images[keep], labels[keep]


def format_accuracy(acc: dict[str, float]) -> str:
    """"shape 0.991 colour 1.000 background 1.000"."""
    return " ".join(f"{name} {value:.3f}" for name, value in acc.items())


def train(out: str, steps: int, seed: int, n_images: int, batch_size: int, lr: float, cfg: JudgeConfig,
          recolour_prob: float = 0.3, messy_prob: float = 0.25, eval_every: int = 100,
          threads: int = 2) -> dict[str, float]:
    """Train a judge for a number of steps, print progress, save fp16 weights to out; returns held-out accuracy."""
    gen = seed_everything(seed, threads)
    t0 = time.monotonic()
    pool = render_pool(n_images, seed, "train")
    probe_x, probe_y = render_dataset(2000, seed + 1, "held_out")
    probe_messy = messy_set(1000, seed + 1)
    log(f"rendered {n_images} training images in {time.monotonic() - t0:.1f}s")
    net = JudgeNet(cfg).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    start, losses = time.monotonic(), []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step / steps, lr)
        losses += train_steps(net, opt, pool, gen, 1, batch_size, recolour_prob, augment_schedule(step / steps),
                              messy_prob)
        if (step + 1) % eval_every == 0:
            speed = (step + 1) * batch_size / (time.monotonic() - start)
            acc = evaluate(net, probe_x, probe_y)
            messy = evaluate(net, *probe_messy)["shape"]
            log(f"step {step + 1:5d}  loss {sum(losses) / len(losses):.4f}  {speed:.0f} img/s  "
                f"held-out {format_accuracy(acc)}  messy read as other {messy:.3f}")
            losses = []
    log(f"trained {steps} steps in {time.monotonic() - start:.0f}s")
    test_x, test_y = render_dataset(5000, seed + 2, "held_out")
    clean = evaluate(net, test_x, test_y)
    augmented = evaluate(net, test_x, test_y, torch.Generator().manual_seed(seed + 3))
    log(f"held-out accuracy (5000 fresh renders, clean):     {format_accuracy(clean)}")
    log(f"held-out accuracy (5000 fresh renders, augmented): {format_accuracy(augmented)}")
    messy_x, messy_y = messy_set(5000, seed + 4)
    messy = {"clean": evaluate(net, messy_x, messy_y)["shape"],
             "augmented": evaluate(net, messy_x, messy_y, torch.Generator().manual_seed(seed + 5))["shape"]}
    log(f"messy held-out renders read as {OTHER!r} ({len(messy_x)}): clean {messy['clean']:.3f}  "
        f"augmented {messy['augmented']:.3f}")
    metadata = judge_metadata(cfg) | {"seed": str(seed), "steps": str(steps), "held_out_accuracy": clean,
                                      "messy_read_as_other": messy}
    save_fp16_safetensors(net.state_dict(), out, metadata)
    log(f"saved {out}")
    return clean


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and train."""
    parser = base_parser("pixgen.packs.shapes.train_judge", __doc__.split("\n")[0],
                         out="pixgen/packs/shapes/weights/shapes-judge.safetensors", steps=1500, images=60000, lr=2e-3,
                         recolour_prob=0.3, seed=1)
    parser.add_argument("--width", type=int, default=JudgeConfig.width, help="channels of the first conv")
    parser.add_argument("--messy-prob", type=float, default=0.25,
                        help="fraction of images drawn messy and labelled shape 'other'")
    args = parser.parse_args(argv)
    cfg = JudgeConfig(width=args.width)
    log(f"judge {asdict(cfg)}  seed {args.seed}  steps {args.steps}")
    train(args.out, args.steps, args.seed, args.images, args.batch_size, args.lr, cfg, args.recolour_prob,
          args.messy_prob, threads=args.threads)


if __name__ == "__main__":
    main()
