"""Safe checkpoint loading: Lightning-era .ckpt files load, code in a pickle never runs."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors import safe_open

from pixgen.errors import CheckpointError
from pixgen.models.safe_load import LIGHTNING_GLOBALS, load_state_dict, save_safetensors

LIGHTNING_MODULES = (
    "pytorch_lightning.callbacks.model_checkpoint",
    "lightning.pytorch.callbacks.model_checkpoint",
)


def _parents(module: str) -> list[str]:
    """Return a dotted module name and all its parents: a.b.c -> [a, a.b, a.b.c]."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _fake_lightning_modules(module: str) -> tuple[dict[str, types.ModuleType], type]:
    """Build stand-in Lightning modules with a ModelCheckpoint class to pickle."""
    modules = {name: types.ModuleType(name) for name in _parents(module)}

    class ModelCheckpoint:
        def __init__(self):
            self.monitor = "val/rec_loss"
            self.best_model_path = "logs/last.ckpt"

    ModelCheckpoint.__module__ = module
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    modules[module].ModelCheckpoint = ModelCheckpoint
    return modules, ModelCheckpoint


def _taming_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "encoder.conv_in.weight": torch.randn(8, 3, 3, 3, generator=gen),
        "decoder.conv_out.bias": torch.randn(3, generator=gen),
        "quantize.embedding.weight": torch.randn(16, 4, generator=gen),
        "loss.discriminator.main.0.weight": torch.randn(4, 3, 4, 4, generator=gen),
        "loss.perceptual_loss.net.slice1.0.weight": torch.randn(2, 3, 3, 3, generator=gen),
    }


def _save_taming_ckpt(path: Path, state: dict[str, torch.Tensor], module: str) -> None:
    """Save a checkpoint shaped like taming's Lightning 1.0.8 VQGAN .ckpt files."""
    modules, model_checkpoint = _fake_lightning_modules(module)
    with mock.patch.dict(sys.modules, modules):
        torch.save(
            {
                "state_dict": state,
                "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 4.5e-6}]}],
                "lr_schedulers": [],
                # Lightning 1.0 keyed callback state by the class; newer ones pickle instances too.
                "callbacks": {model_checkpoint: {"best_model_score": torch.tensor(0.5)}},
                "checkpoint_callback": model_checkpoint(),
                "epoch": 3,
                "global_step": 10,
                "pytorch-lightning_version": "1.0.8",
            },
            path,
        )


class _RunsShell:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _WritesFile:
    """Unpickling this calls a function (not os-level) that writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("module", LIGHTNING_MODULES)
def test_lightning_checkpoint_loads_without_lightning(tmp_path, monkeypatch, module):
    state = _taming_state()
    path = tmp_path / "vqgan_imagenet_f16_1024.ckpt"
    _save_taming_ckpt(path, state, module)
    for name in _parents(module):
        monkeypatch.setitem(sys.modules, name, None)  # any import of Lightning now fails
    with pytest.raises(Exception, match="ModelCheckpoint"):
        torch.load(path, weights_only=True)  # what pixgen's allow-list is for
    loaded = load_state_dict(path)
    assert loaded.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor)
    # nothing process-wide: the placeholders are allowed for that one load only
    allowed_after = {f"{g.__module__}.{g.__qualname__}" for g in torch.serialization.get_safe_globals()
                     if isinstance(g, type)}
    assert not allowed_after & set(LIGHTNING_GLOBALS)


def test_plain_state_dict_keeps_only_tensors(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(2), "step": 7, "name": "x"}, path)
    assert list(load_state_dict(path)) == ["w"]


@pytest.mark.parametrize(
    ("payload", "bad_global"), [("shell", f"{os.system.__module__}.system"), ("python", "getattr")]
)
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch, payload, bad_global):
    marker = tmp_path / "MARKER"
    monkeypatch.chdir(tmp_path)
    evil = _RunsShell(f"touch {marker}") if payload == "shell" else _WritesFile(marker)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": evil}, path)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert message.startswith("evil.ckpt contains code or objects") and "will not unpickle" in message
    assert f"({bad_global})" in message and "\n" not in message
    assert not marker.exists()


def test_unknown_class_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "obj": Path("x")}, path)
    with pytest.raises(CheckpointError, match=r"model\.pt contains code or objects \(pathlib\.\w*Path\)"):
        load_state_dict(path)


def test_garbage_file_gives_checkpoint_error(tmp_path):
    path = tmp_path / "broken.ckpt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.ckpt"):
        load_state_dict(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(tmp_path / "missing.ckpt")


def test_safetensors_round_trip_with_fp16_cast(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {
        "weight": base.t(),  # non-contiguous
        "tied": base,  # shares storage with "weight"
        "codes": torch.arange(5),  # integer: never cast
    }
    path = tmp_path / "model.safetensors"
    save_safetensors(state, path, dtype=torch.float16, metadata={"source": "test"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    loaded = load_state_dict(path)
    assert loaded["weight"].dtype == torch.float16 and loaded["codes"].dtype == torch.int64
    assert torch.equal(loaded["weight"], base.t().half())
    assert torch.equal(loaded["tied"], base.half())
    assert torch.equal(loaded["codes"], torch.arange(5))
    with safe_open(path, framework="pt") as fh:
        assert fh.metadata() == {"source": "test"}


def test_safetensors_without_cast_keeps_dtype(tmp_path):
    path = tmp_path / "m.safetensors"
    save_safetensors({"w": torch.ones(2, dtype=torch.float64)}, path)
    assert load_state_dict(path)["w"].dtype == torch.float64


def test_corrupt_safetensors_gives_checkpoint_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match=r"bad\.safetensors is not a readable safetensors file"):
        load_state_dict(path)


def test_same_tensors_and_metadata_give_the_same_bytes(tmp_path):
    # safetensors orders metadata by a per-process hash map; pixgen sorts the header so that a
    # retrained model reproduces the sha256 registered in checkpoints.yaml.
    state = {"b.weight": torch.randn(3, 4), "a.bias": torch.arange(5.0)}
    metadata = {f"key{i}": f"value {i}" for i in range(20)}
    first, second = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    save_safetensors(state, first, dtype=torch.float16, metadata=metadata)
    save_safetensors(dict(reversed(state.items())), second, dtype=torch.float16,
                     metadata=dict(reversed(metadata.items())))
    assert first.read_bytes() == second.read_bytes()
    with safe_open(str(first), framework="pt") as handle:
        assert handle.metadata() == metadata
        assert torch.equal(handle.get_tensor("a.bias"), torch.arange(5.0).half())
    assert int.from_bytes(first.read_bytes()[:8], "little") % 8 == 0  # data stays 8-byte aligned
