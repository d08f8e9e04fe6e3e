"""Tests for shapes-vqgan: its training step learns, and the shipped weights reconstruct held-out scenes."""

from pathlib import Path

import pytest
import torch

from pixgen.models.factory import load_vqgan
from pixgen.models.registry import load_registry
from pixgen.models.vqgan import VQGAN
from pixgen.packs.shapes.train_vqgan import (
    METADATA_KEY,
    Codebook,
    evaluate,
    init_codebook,
    make_optimizer,
    shapes_vqgan_config,
    train_steps,
)
from pixgen.packs.shapes.world import render_dataset

SHIPPED = Path(__file__).resolve().parents[1] / "pixgen" / "packs" / "shapes" / "weights" / "shapes-vqgan.safetensors"


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    images, _ = render_dataset(8, seed=3)
    images = images[:, :, 16:48, 16:48].contiguous()  # 32×32 crops keep the test fast
    model = VQGAN(shapes_vqgan_config(ch=32, ch_mult=(1, 1), num_res_blocks=0, z_channels=8, embed_dim=8,
                                      n_embed=32))
    book = Codebook.of(model)
    init_codebook(model, book, images, gen)
    opt = make_optimizer(model, lr=3e-3)
    history = train_steps(model, opt, book, images, gen, steps=30, batch_size=8)
    first = sum(h["loss"] for h in history[:3]) / 3
    last = sum(h["loss"] for h in history[-3:]) / 3
    assert last < 0.7 * first
    assert book.weight is model.quantize.embedding.weight  # the EMA writes into the model's codebook


@pytest.mark.skipif(not SHIPPED.is_file(), reason="shapes-vqgan weights not built")
def test_shipped_weights_reconstruct_held_out_scenes():
    from safetensors import safe_open

    with safe_open(str(SHIPPED), framework="pt") as handle:
        assert METADATA_KEY in handle.metadata()
        assert all(handle.get_tensor(key).dtype == torch.float16 for key in handle.keys())
    model = load_vqgan(str(SHIPPED), load_registry()).module
    assert model.config.downsample_factor == 4
    images, _ = render_dataset(64, seed=2024, split="held_out")
    psnr, used = evaluate(model, images)
    assert psnr >= 30.0  # the issue-3 floor; the shipped file measures 30.9 dB on 512 renders, 31.3 dB on these
    assert used >= 256
