"""Models load from every supported format through the user's path, and mismatches are one line."""

from __future__ import annotations

import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from pixgen.cli import cli
from pixgen.engine.loop import Models, generate, seed_everything
from pixgen.models.factory import load_clip, load_vqgan
from pixgen.models.registry import load_registry
from tests.conftest import TINY_VQGAN, tiny_vqgan_state


def test_taming_yaml_and_ckpt_pair_ignores_loss_keys(tiny_models):
    registry = load_registry()
    pair = load_vqgan(f"{tiny_models['vqgan_yaml']},{tiny_models['vqgan_ckpt']}", registry)
    single = load_vqgan(str(tiny_models["vqgan_safetensors"]), registry)  # config: vqgan.yaml beside it
    for key, value in single.module.state_dict().items():
        assert torch.equal(value, pair.module.state_dict()[key]), key
    assert "loss.logvar" not in pair.module.state_dict()


def test_ckpt_finds_yaml_beside_it(tiny_models):
    loaded = load_vqgan(str(tiny_models["vqgan_ckpt"]), load_registry())
    assert loaded.module.config.n_embed == 32 and len(loaded.sha256) == 64


def test_vqgan_decodes_the_expected_size(tiny_models):
    vqgan = load_vqgan("tiny-vqgan", load_registry()).module
    assert vqgan.config.downsample_factor == 2
    image = vqgan.decode_indices(torch.zeros(1, 5, 7, dtype=torch.long))
    assert image.shape == (1, 3, 10, 14)
    z = vqgan.encode(torch.rand(1, 3, 16, 12) * 2 - 1)
    assert z.shape == (1, 8, 8, 6)
    codes = vqgan.codebook
    assert torch.isclose(torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, 8), codes).min(1).values,
                         torch.zeros(48), atol=1e-4).all()  # encode returns codebook vectors


def test_clip_from_json_with_pt_weights_and_registry(tiny_models):
    registry = load_registry()
    from_pt = load_clip(str(tiny_models["clip2_json"]), registry).module
    from_registry = load_clip("tiny-clip", registry).module
    assert from_pt.image_size == 32
    assert torch.allclose(from_registry.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    text = from_registry.encode_text(["a red circle", "a blue square"])
    assert text.shape == (2, 16) and torch.allclose(text.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(from_pt.encode_text(["a red circle"]), text[:1])  # other weights


def test_checkpoint_for_another_architecture_names_the_first_bad_key(tiny_models, tmp_path):
    bigger = dict(TINY_VQGAN, n_embed=64)
    from pixgen.models.vqgan import VQGAN, VQGANConfig

    save_file({k: v.contiguous() for k, v in VQGAN(VQGANConfig.from_dict(bigger)).state_dict().items()},
              tmp_path / "other.safetensors")
    (tmp_path / "other.yaml").write_text(tiny_models["vqgan_yaml"].read_text())
    result = CliRunner().invoke(cli, ["run", "x", "--vqgan", str(tmp_path / "other.safetensors"),
                                      "--clip", "tiny-clip", "--device", "cpu", "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: {tmp_path / 'other.safetensors'} does not match its architecture: "
        "'quantize.embedding.weight' has shape (64, 8), expected (32, 8)")


def test_missing_weight_is_named(tiny_models, tmp_path):
    state = tiny_vqgan_state()
    del state["decoder.conv_out.bias"]
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "cut.safetensors")
    (tmp_path / "cut.yaml").write_text(tiny_models["vqgan_yaml"].read_text())
    result = CliRunner().invoke(cli, ["run", "x", "--vqgan", str(tmp_path / "cut.safetensors"),
                                      "--clip", "tiny-clip", "-o", str(tmp_path / "o")])
    assert result.output.strip().endswith("missing weight 'decoder.conv_out.bias'")


def test_tampered_bundled_weights_are_refused(tiny_models, tmp_path, monkeypatch):
    import yaml

    data = yaml.safe_load((tiny_models["folder"] / "registry.yaml").read_text())
    data["vqgan"]["tiny-vqgan"]["bundled"]["sha256"] = "0" * 64
    data["vqgan"]["tiny-vqgan"]["bundled"]["path"] = str(tiny_models["vqgan_safetensors"])
    registry = tmp_path / "r.yaml"
    registry.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("PIXGEN_REGISTRY", str(registry))
    result = CliRunner().invoke(cli, ["run", "x", "--vqgan", "tiny-vqgan", "--clip", "tiny-clip",
                                      "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "but the registry expects " + "0" * 64 in result.output


def tiny_models_loaded(clips=("tiny-clip",)):
    registry = load_registry()
    return Models(load_vqgan("tiny-vqgan", registry).module,
                  [load_clip(c, registry).module for c in clips], torch.device("cpu"))


def test_loss_decreases_over_steps(tiny_models):
    from pixgen.config import resolve_config

    config = resolve_config("default", flags={"prompt": "a red circle", "seed": 0, "steps": 40, "size": [32, 32],
                                              "vqgan": "tiny-vqgan", "clip": ["tiny-clip"], "lr": 0.2,
                                              "cut_count": 8, "augment_noise": 0.0})
    losses = [step.loss for step in generate(config, tiny_models_loaded())]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1e-3


def test_ensemble_sums_one_loss_per_model_and_prompt(tiny_models):
    from pixgen.config import resolve_config

    config = resolve_config("default", flags={"prompt": "a | b:-0.5", "seed": 0, "steps": 1, "size": [32, 32],
                                              "vqgan": "tiny-vqgan", "clip": ["tiny-clip", "tiny-clip"],
                                              "init_weight": 0.1, "negative_prompts": ["c:0.2"]})
    (step,) = list(generate(config, tiny_models_loaded(("tiny-clip", str(tiny_models["clip2_json"])))))
    assert len(step.losses) == 2 * 3 + 1  # two models x (two prompts + one negative prompt) + init_weight term
    assert step.losses[2] < 0 and step.losses[5] < 0  # each model's negative prompt pushes
    assert abs(sum(step.losses) - step.loss) < 1e-5
    assert step.image().shape == (1, 3, 32, 32)


def test_seeding_happens_before_any_draw():
    first = seed_everything(9)
    a = torch.randint(100, (5,), generator=first)
    b = torch.randint(100, (5,), generator=seed_everything(9))
    assert torch.equal(a, b)
