"""Shared fixtures: no network, tiny models saved in the real formats, a test registry and preset."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest
import torch
import yaml

TINY_VQGAN = {
    "embed_dim": 8,
    "n_embed": 32,
    "quantizer": "vq",
    "ddconfig": {"double_z": False, "z_channels": 8, "resolution": 32, "in_channels": 3, "out_ch": 3,
                 "ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0},
}
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
}


def _is_loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    return isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1"))


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda"),
                     help="where CLI-level tests run pixgen: cuda sets PIXGEN_DEVICE=cuda for every test "
                          "(default: cpu, the environment left as it is)")


@pytest.fixture(autouse=True)
def device_from_option(request, monkeypatch):
    """With ``pytest --device cuda``, every pixgen command a test runs defaults to the GPU (PIXGEN_DEVICE)."""
    if request.config.getoption("--device") == "cuda":
        monkeypatch.setenv("PIXGEN_DEVICE", "cuda")


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Any socket connection to a non-loopback address fails the test that makes it."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(address):
        if not _is_loopback(address) and not isinstance(address, (str, bytes)):
            raise RuntimeError(f"test tried to reach the network: {address!r}")

    def connect(self, address):
        guard(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        guard(address)
        return real_connect_ex(self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    yield
    socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch, tiny_registry):
    """Each test: its own cache dir, offline hubs, the tiny-model registry, a fresh model cache."""
    monkeypatch.setenv("PIXGEN_HOME", str(tmp_path / "pixgen-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PIXGEN_REGISTRY", str(tiny_registry))
    from pixgen.pipeline import runner as pipeline

    pipeline._load_vqgan_cached.cache_clear()
    pipeline._load_clip_cached.cache_clear()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tiny_vqgan_state(seed: int = 0) -> dict[str, torch.Tensor]:
    from pixgen.models.vqgan import VQGAN, VQGANConfig

    torch.manual_seed(seed)
    return VQGAN(VQGANConfig.from_dict(TINY_VQGAN)).state_dict()


def tiny_clip_state(seed: int = 0) -> dict[str, torch.Tensor]:
    import open_clip

    torch.manual_seed(seed)
    config = {k: v for k, v in TINY_CLIP.items() if k != "preprocess_cfg"}
    return open_clip.CLIP(**config).state_dict()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny VQGAN and CLIP weights written in the formats users' checkpoints come in."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny-models")
    vqgan_state = tiny_vqgan_state()
    taming_config = {"model": {"base_learning_rate": 4.5e-6, "target": "taming.models.vqgan.VQModel",
                               "params": {"embed_dim": 8, "n_embed": 32, "ddconfig": TINY_VQGAN["ddconfig"],
                                          "lossconfig": {"target": "taming.modules.losses.vqperceptual."
                                                         "VQLPIPSWithDiscriminator",
                                                         "params": {"disc_start": 250001}}}}}
    (folder / "vqgan.yaml").write_text(yaml.safe_dump(taming_config))
    training_extras = {"loss.discriminator.main.0.weight": torch.randn(4, 3, 3, 3),
                       "loss.logvar": torch.zeros(())}
    torch.save({"state_dict": {**vqgan_state, **training_extras}, "epoch": 3, "global_step": 100},
               folder / "vqgan.ckpt")
    save_file({k: v.contiguous() for k, v in vqgan_state.items()}, folder / "vqgan.safetensors")

    clip_state = tiny_clip_state()
    (folder / "clip.json").write_text(json.dumps(TINY_CLIP))
    save_file({k: v.contiguous() for k, v in clip_state.items()}, folder / "clip.safetensors")
    (folder / "clip2.json").write_text(json.dumps(TINY_CLIP))
    torch.save(tiny_clip_state(seed=1), folder / "clip2.pt")  # open_clip's own state-dict format
    return {"folder": folder, "vqgan_yaml": folder / "vqgan.yaml", "vqgan_ckpt": folder / "vqgan.ckpt",
            "vqgan_safetensors": folder / "vqgan.safetensors", "clip_json": folder / "clip.json",
            "clip_safetensors": folder / "clip.safetensors", "clip2_json": folder / "clip2.json"}


@pytest.fixture(scope="session")
def tiny_registry(tiny_models) -> Path:
    """A registry file listing the tiny models, as PIXGEN_REGISTRY would."""
    folder = tiny_models["folder"]
    registry = {
        "vqgan": {"tiny-vqgan": {"description": "tiny test VQGAN", "architecture": TINY_VQGAN,
                                 "bundled": {"path": "vqgan.safetensors",
                                             "sha256": sha256(tiny_models["vqgan_safetensors"])}}},
        "clip": {"tiny-clip": {"description": "tiny test CLIP", "config": "clip.json",
                               "bundled": {"path": "clip.safetensors",
                                           "sha256": sha256(tiny_models["clip_safetensors"])}}},
    }
    path = folder / "registry.yaml"
    path.write_text(yaml.safe_dump(registry))
    return path


@pytest.fixture(scope="session")
def tiny_preset(tiny_models) -> Path:
    """A fast preset on the tiny models."""
    path = tiny_models["folder"] / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "vqgan": "tiny-vqgan", "clip": ["tiny-clip"], "size": [32, 32], "steps": 6, "cut_count": 4,
        "lr": 0.2, "save_every": 2, "augment_rotate": 5, "augment_noise": 0.05, "device": "cpu",
    }))
    return path
