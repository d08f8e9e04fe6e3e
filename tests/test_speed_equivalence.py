"""The speed rewrites keep results: optimised CLIP and decoder match the stock modules in fp32,
a mixed-precision step's gradient matches the fp32 step's, and ``precision: auto`` resolves per device."""

from __future__ import annotations

import copy
import dataclasses

import open_clip
import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner
from conftest import TINY_VQGAN
from taming.modules.diffusionmodules.model import Decoder

from pixgen.cli import cli
from pixgen.config import RunConfig
from pixgen.engine import loop as engine
from pixgen.engine.cutouts import CutoutSpec
from pixgen.engine.loop import Models, autocast_factory, clip_losses, resolve_precision, run_precision, synth
from pixgen.engine.ops import vector_quantize
from pixgen.models.clip import CLIPScorer
from pixgen.models.factory import load_clip, load_vqgan
from pixgen.models.inference import ConvLinear, FusedSelfAttention, PatchLinear, SiluDecoder, prepare_for_device
from pixgen.models.registry import load_registry
from pixgen.models.vqgan import VQGAN, VQGANConfig
from pixgen.pipeline.output import read_png_text

# A small ViT CLIP whose linear layers are wide enough (256) to be run as 1x1 convs.
VIT = {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": 2, "width": 256, "patch_size": 16,
                                       "head_width": 64},
       "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 2}}


def _vit_pair() -> tuple[torch.nn.Module, CLIPScorer]:
    torch.manual_seed(0)
    stock = open_clip.CLIP(**VIT).eval().requires_grad_(False)
    scorer = CLIPScorer(copy.deepcopy(stock), open_clip.SimpleTokenizer(context_length=16), "vit",
                        (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return stock, scorer


def test_optimised_clip_embeds_and_backpropagates_as_the_stock_model_in_fp32():
    stock, scorer = _vit_pair()
    modules = list(scorer.modules())
    assert sum(isinstance(m, FusedSelfAttention) for m in modules) == 4  # 2 image + 2 text blocks
    assert sum(isinstance(m, ConvLinear) for m in modules) >= 12
    assert isinstance(scorer.model.visual.conv1, PatchLinear)
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in modules)
    assert scorer.model.state_dict().keys() == stock.state_dict().keys()  # same weights, same names

    images = torch.rand(6, 3, 64, 64, requires_grad=True)
    expected = F.normalize(stock.encode_image((images - scorer.mean) / scorer.std), dim=-1)
    (expected_grad,) = torch.autograd.grad(expected[:, 0].sum(), images)
    got = scorer.encode_image(images)
    (got_grad,) = torch.autograd.grad(got[:, 0].sum(), images)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(got_grad, expected_grad, atol=1e-6, rtol=1e-4)

    tokens = scorer.tokenizer(["a red circle", "a blue square on a green background"])
    with torch.no_grad():  # the causal mask goes through the fused attention too
        torch.testing.assert_close(scorer.encode_text(["a red circle", "a blue square on a green background"]),
                                   F.normalize(stock.encode_text(tokens), dim=-1), atol=2e-6, rtol=1e-5)


def _tiny_vqgan() -> VQGAN:
    torch.manual_seed(0)
    return VQGAN(VQGANConfig.from_dict(TINY_VQGAN)).eval().requires_grad_(False)


def test_decoder_gives_the_stock_image_in_fp32_also_channels_last_as_on_cuda():
    vqgan = _tiny_vqgan()
    z = torch.randn(1, 8, 8, 8)
    assert isinstance(vqgan.decoder, SiluDecoder)
    stock_decoder = Decoder(**TINY_VQGAN["ddconfig"]).eval()  # taming's own, swish as x * sigmoid(x)
    stock_decoder.load_state_dict(vqgan.decoder.state_dict())
    quantized = vector_quantize(z, vqgan.codebook)
    stock = (stock_decoder(vqgan.post_quant_conv(quantized)).add(1).div(2)).clamp(0, 1)
    torch.testing.assert_close(synth(z, vqgan), stock, atol=1e-5, rtol=0)  # silu vs x*sigmoid(x): ~1e-6 rounding
    for device, precision in (("cpu", "bf16"), ("cpu", "fp32"), ("cuda", "bf16")):  # each layout it gets
        fast = prepare_for_device(copy.deepcopy(vqgan), device, precision)
        channels_last = fast.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert channels_last == (device == "cuda" or precision == "fp32")
        torch.testing.assert_close(synth(z, fast), stock, atol=1e-5, rtol=0)


def test_mixed_precision_step_gradient_matches_fp32_and_keeps_the_cutout_grid_fp32(monkeypatch):
    _, scorer = _vit_pair()
    vqgan = _tiny_vqgan()
    target = engine.Target(F.normalize(torch.randn(64), dim=0), 1.0, None)
    spec = CutoutSpec(cut_count=8, cut_size=64, rotate=10, noise=0.05, min_scale=0.5)
    z0 = torch.randn(1, 8, 8, 8)
    seen = []
    real_cutouts = engine.make_cutouts
    monkeypatch.setattr(engine, "make_cutouts", lambda image, *a: seen.append(image.dtype) or real_cutouts(image, *a))

    def gradient(precision: str) -> torch.Tensor:
        z = z0.clone().requires_grad_(True)
        cast = autocast_factory(torch.device("cpu"), precision)
        (loss,) = clip_losses(synth(z, vqgan, cast), scorer, [target], spec, torch.Generator().manual_seed(0), cast)
        loss.backward()
        return z.grad.flatten()

    fp32, bf16 = gradient("fp32"), gradient("bf16")
    assert seen == [torch.float32, torch.float32]  # image and grid_sample stay fp32 under autocast
    assert F.cosine_similarity(fp32, bf16, dim=0) >= 0.99
    assert not torch.equal(fp32, bf16)  # bf16 really ran


@pytest.mark.parametrize("device, cpu_bf16, cuda_bf16, small, expected", [
    ("cpu", True, False, False, "bf16"),
    ("cpu", True, False, True, "fp32"),  # tiny models: nothing to gain
    ("cpu", False, False, False, "fp32"),
    ("cuda", False, True, False, "bf16"),
    ("cuda", False, False, False, "fp16"),
    ("cuda", False, True, True, "bf16"),
    ("mps", False, False, False, "fp32"),
])
def test_auto_precision_per_device(device, cpu_bf16, cuda_bf16, small, expected):
    assert resolve_precision("auto", device, cpu_bf16=cpu_bf16, cuda_bf16=cuda_bf16, small_model=small) == expected
    assert resolve_precision("fp32", device, cpu_bf16=True, cuda_bf16=True) == "fp32"  # explicit stays


@pytest.mark.parametrize("device, native, cuda_bf16, expected", [
    ("cpu", True, False, "bf16"), ("cpu", False, False, "fp32"),
    ("cuda", False, True, "bf16"), ("cuda", False, False, "fp16"), ("mps", True, True, "fp32"),
])
def test_run_precision_reads_the_hardware(monkeypatch, device, native, cuda_bf16, expected):
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    assert run_precision("auto", torch.device(device)) == expected
    small = _tiny_vqgan()
    assert run_precision("auto", torch.device(device), small) == ("fp32" if device == "cpu" else expected)


def test_optimisations_apply_however_the_models_were_loaded(tiny_models):
    registry = load_registry()
    for spec in ("tiny-clip", str(tiny_models["clip2_json"])):  # registry safetensors, local .json + .pt
        module = load_clip(spec, registry).module
        assert any(isinstance(m, FusedSelfAttention) for m in module.modules()), spec
        assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in module.modules()), spec
    for spec in ("tiny-vqgan", f"{tiny_models['vqgan_yaml']},{tiny_models['vqgan_ckpt']}",
                 str(tiny_models["vqgan_safetensors"])):
        assert isinstance(load_vqgan(spec, registry).module, VQGAN), spec


def test_recipe_records_the_precision_used(tmp_path, tiny_preset, monkeypatch):
    monkeypatch.setattr(engine, "SMALL_DECODER_PARAMS", 0)  # treat the tiny models as big
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    for precision, expected in (("auto", "bf16"), ("fp32", "fp32")):
        out = tmp_path / precision
        result = CliRunner().invoke(cli, ["run", "a red circle", "--preset", str(tiny_preset), "--seed", "0",
                                          "--steps", "2", "--precision", precision, "-o", str(out), "-q"])
        assert result.exit_code == 0, result.output
        text = read_png_text(out / "image.png")
        assert yaml.safe_load(text["environment"])["precision"] == expected
        assert yaml.safe_load(text["config"])["precision"] == precision  # the recipe keeps what was asked


def test_auto_is_the_default_and_steps_report_it():
    assert RunConfig().precision == "auto"
    vqgan = _tiny_vqgan()
    _, scorer = _vit_pair()
    config = dataclasses.replace(RunConfig(prompt="a red circle", size=[32, 32], steps=1, seed=0, cut_count=2),
                                 precision="fp32")
    (step,) = engine.generate(config, Models(vqgan, [scorer], torch.device("cpu")))
    assert step.precision == "fp32" and step.loss == pytest.approx(sum(step.losses))
