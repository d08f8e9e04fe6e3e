"""`pixgen models ...` end to end against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import save_file

from pixgen.cli import cli
from tests.conftest import TINY_VQGAN, sha256, tiny_clip_state, tiny_vqgan_state

LIGHTNING_CLASS = "pytorch_lightning.callbacks.model_checkpoint"


class Handler(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        Handler.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


def fp16_exact(state):
    """Weights whose values survive a round trip through fp16, so slim copies are lossless."""
    return {k: v.half().float() if v.is_floating_point() else v for k, v in state.items()}


def lightning_checkpoint(path: Path, state: dict[str, torch.Tensor]) -> None:
    """A taming-era checkpoint: loss.* weights, optimiser state, Lightning callback state."""
    import types

    module = types.ModuleType(LIGHTNING_CLASS)

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_score = torch.tensor(0.5)

    ModelCheckpoint.__module__ = LIGHTNING_CLASS
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    sys.modules[LIGHTNING_CLASS] = module
    try:
        torch.save({"state_dict": {**state, "loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4),
                                   "loss.perceptual_loss.net.slice1.0.weight": torch.randn(4, 3, 3, 3)},
                    "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": []}],
                    "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5)}},
                    "epoch": 7, "global_step": 1234, "pytorch-lightning_version": "1.0.8"}, path)
    finally:
        del sys.modules[LIGHTNING_CLASS]


@pytest.fixture
def model_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    Handler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def remote_registry(model_server, tmp_path, monkeypatch, tiny_registry):
    root, url = model_server
    lightning_checkpoint(root / "vqgan.ckpt", fp16_exact(tiny_vqgan_state(seed=3)))
    save_file({k: v.contiguous() for k, v in tiny_clip_state(seed=4).items()}, root / "clip.safetensors")
    registry = {
        "vqgan": {"remote-vqgan": {"description": "served tiny VQGAN", "architecture": TINY_VQGAN,
                                   "files": {"checkpoint": {"urls": [f"{url}/missing.ckpt", f"{url}/vqgan.ckpt"],
                                                            "sha256": None, "pinned": "first-download",
                                                            "size": None}}},
                  "bad-hash-vqgan": {"architecture": TINY_VQGAN,
                                     "files": {"checkpoint": {"urls": [f"{url}/vqgan.ckpt"], "sha256": "0" * 64}}}},
        "clip": {"remote-clip": {"config": str(tiny_registry.parent / "clip.json"),
                                 "files": {"weights": {"urls": [f"{url}/clip.safetensors"],
                                                       "sha256": sha256(root / "clip.safetensors"),
                                                       "size": (root / "clip.safetensors").stat().st_size}}}},
    }
    path = tmp_path / "remote.yaml"
    path.write_text(yaml.safe_dump(registry))
    monkeypatch.setenv("PIXGEN_REGISTRY", f"{tiny_registry}:{path}")
    return root


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_download_slims_vqgan_and_records_hash(remote_registry, tmp_path, tiny_preset):
    result = invoke("models", "download", "remote-vqgan", "remote-clip", "-q")
    assert result.exit_code == 0, result.output
    assert "trust on first use" in result.output and "slim copy" in result.output
    assert Handler.requests[:2] == ["/missing.ckpt", "/vqgan.ckpt"]  # first mirror 404, then the second
    home = tmp_path / "pixgen-home"
    slim = home / "vqgan" / "remote-vqgan" / "slim.safetensors"
    assert slim.is_file() and not (home / "vqgan" / "remote-vqgan" / "checkpoint.ckpt").exists()
    assert slim.stat().st_size < (remote_registry / "vqgan.ckpt").stat().st_size
    assert (home / "clip" / "remote-clip" / "weights.safetensors").is_file()

    listing = invoke("models", "list").output
    assert "remote-vqgan" in listing and "not downloaded" not in listing.split("remote-vqgan")[1].splitlines()[0]
    verified = invoke("models", "verify", "remote-vqgan")
    assert verified.exit_code == 0 and verified.output.startswith("remote-vqgan: recorded ")
    assert "matches the sha256 recorded at first download" in verified.output
    assert invoke("models", "path", "remote-vqgan").output.strip() == str(slim)
    out = tmp_path / "o"
    result = invoke("run", "x", "--preset", tiny_preset, "--vqgan", "remote-vqgan", "--clip", "remote-clip",
                    "-o", out, "-q")
    assert result.exit_code == 0, result.output

    slim.write_bytes(slim.read_bytes()[:-1] + b"\0")  # tamper with the kept file
    from pixgen.pipeline import runner as pipeline

    pipeline._load_vqgan_cached.cache_clear()  # a new process would load it afresh
    result = invoke("models", "verify", "remote-vqgan")
    assert result.exit_code == 1 and "remote-vqgan: mismatch " in result.output
    result = invoke("run", "x", "--preset", tiny_preset, "--vqgan", "remote-vqgan", "-o", tmp_path / "o2")
    assert result.exit_code == 1 and "the file changed" in result.output

    assert invoke("models", "remove", "remote-vqgan").exit_code == 0
    assert not slim.exists()
    assert "not downloaded" in invoke("models", "list").output.split("remote-vqgan")[1].splitlines()[0]


def test_keep_original(remote_registry, tmp_path):
    assert invoke("models", "download", "remote-vqgan", "--keep-original", "-q").exit_code == 0
    assert (tmp_path / "pixgen-home" / "vqgan" / "remote-vqgan" / "checkpoint.ckpt").is_file()


def test_wrong_hash_leaves_nothing(remote_registry, tmp_path):
    result = invoke("models", "download", "bad-hash-vqgan", "-q")
    assert result.exit_code == 1
    assert "expected" in result.output and "0" * 64 in result.output
    folder = tmp_path / "pixgen-home" / "vqgan" / "bad-hash-vqgan"
    assert not folder.exists() or not any(folder.iterdir())


def test_offline_refuses_without_any_request(remote_registry):
    result = invoke("--offline", "models", "download", "remote-vqgan")
    assert result.exit_code == 1 and "remote-vqgan" not in Handler.requests
    assert Handler.requests == []
    assert result.output.startswith("Error:") and len(result.output.strip().splitlines()) == 1


def test_unknown_model_name(remote_registry):
    result = invoke("models", "download", "remote-vqgn")
    assert result.exit_code == 1
    assert result.output == "Error: unknown model 'remote-vqgn'; did you mean remote-vqgan, remote-clip?\n"


def test_import_lightning_ckpt_without_lightning_and_slim_matches_original(
        remote_registry, tmp_path, tiny_models, tiny_preset, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)  # importing it would now fail
    monkeypatch.setitem(sys.modules, "lightning", None)
    ckpt = remote_registry / "vqgan.ckpt"
    result = invoke("models", "import", "mine", "--config", tiny_models["vqgan_yaml"], "--ckpt", ckpt)
    assert result.exit_code == 0, result.output
    assert "mine" in invoke("models", "list").output
    common = ("run", "a red circle", "--preset", tiny_preset, "--seed", "11", "-q")
    assert invoke(*common, "--vqgan", "mine", "-o", tmp_path / "slim").exit_code == 0
    assert invoke(*common, "--vqgan", f"{tiny_models['vqgan_yaml']},{ckpt}", "-o", tmp_path / "orig").exit_code == 0
    assert (tmp_path / "slim" / "image.png").read_bytes() != b""
    import numpy as np
    from PIL import Image

    slim_pixels = np.asarray(Image.open(tmp_path / "slim" / "image.png"))
    orig_pixels = np.asarray(Image.open(tmp_path / "orig" / "image.png"))
    assert np.array_equal(slim_pixels, orig_pixels)
    assert invoke("models", "remove", "mine").exit_code == 0
    assert "mine" not in invoke("models", "list").output


def test_malicious_checkpoint_is_refused_by_import(tmp_path, tiny_models):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"state_dict": {"x": torch.zeros(1)}, "evil": Evil()}, tmp_path / "evil.ckpt")
    result = invoke("models", "import", "evil", "--config", tiny_models["vqgan_yaml"], "--ckpt", tmp_path / "evil.ckpt")
    assert result.exit_code == 1
    assert "will not unpickle" in result.output
    assert not marker.exists()
