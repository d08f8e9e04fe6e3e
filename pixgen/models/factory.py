"""Build models from registry names or local files: the one path every checkpoint takes."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from pixgen.errors import CheckpointError, ChecksumMismatch, ModelNotAvailable, UnknownModel
from pixgen.models.clip import CLIPScorer
from pixgen.models.downloads import sha256_file
from pixgen.models.hashes import check_recorded_hash
from pixgen.models.packs import judge_pack, register_architectures
from pixgen.models.registry import ModelEntry, Registry, architecture_problem
from pixgen.models.safe_load import load_state_dict
from pixgen.models.vqgan import VQGAN, VQGANConfig, generation_weights

VQGAN_METADATA_KEY = "pixgen_vqgan"  # safetensors metadata: the VQGANConfig as JSON
FIRST_STAGE_PREFIX = "first_stage_model."  # a whole taming transformer's VQGAN
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Loaded:
    """A loaded model with the facts recorded in every output's metadata."""

    module: nn.Module
    name: str  # registry name or the local file given
    sha256: str  # of the weights file loaded


def load_matching(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly; the error names the first missing, extra or mis-shaped key."""
    expected = module.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise CheckpointError(f"{source} does not match its architecture: missing weight {key!r}")
        if state[key].shape != tensor.shape:
            raise CheckpointError(
                f"{source} does not match its architecture: {key!r} has shape "
                f"{tuple(state[key].shape)}, expected {tuple(tensor.shape)}")
    extra = [key for key in state if key not in expected]
    if extra:
        raise CheckpointError(f"{source} does not match its architecture: unexpected weight {extra[0]!r}")
    module.load_state_dict({k: state[k].to(expected[k].dtype) for k in expected})


def verified_sha256(path: Path, expected: str | None) -> str:
    """Hash a weights file and check it against the registry's value."""
    actual = sha256_file(path)
    if expected and actual != expected:
        raise ChecksumMismatch(f"{path} has sha256 {actual}, but the registry expects {expected}; "
                               "the file is corrupt or was replaced")
    return actual


# --- VQGAN -------------------------------------------------------------------------------------

def vqgan_config_from(architecture: Any, source: str) -> VQGANConfig:
    """A VQGANConfig from an architecture mapping, refusing one that misses or mistypes a key."""
    problem = architecture_problem(architecture)
    if problem:
        raise CheckpointError(f"{source} is not a usable VQGAN architecture: {problem}")
    return VQGANConfig.from_dict(architecture)


def read_vqgan_config(path: Path) -> VQGANConfig:
    """Read a taming model YAML (``model.params.ddconfig`` ...)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as err:
        reason = getattr(err, "strerror", None) or getattr(err, "problem", None) or type(err).__name__
        raise CheckpointError(f"{path} is not a readable taming VQGAN config ({reason})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a taming VQGAN config (expected model.params, got "
                              f"{type(data).__name__})")
    model = data.get("model", data)
    params = model.get("params", model) if isinstance(model, dict) else None
    if not isinstance(params, dict):
        raise CheckpointError(f"{path} is not a taming VQGAN config (model.params is not a mapping)")
    quantizer = "gumbel" if "Gumbel" in str(model.get("target", "")) else "vq"
    arch = {k: params[k] for k in ("embed_dim", "n_embed", "ddconfig") if k in params}
    return vqgan_config_from({**arch, "quantizer": quantizer}, str(path))


def safetensors_vqgan_config(path: Path) -> VQGANConfig | None:
    """The VQGANConfig stored in a pixgen safetensors file's metadata, if any."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            text = (handle.metadata() or {}).get(VQGAN_METADATA_KEY)
    except (SafetensorError, OSError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file ({reason})") from None
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        raise CheckpointError(f"{path}: its {VQGAN_METADATA_KEY} metadata is not JSON") from None
    return vqgan_config_from(data, f"{path} ({VQGAN_METADATA_KEY} metadata)")


def vqgan_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VQGAN's generation weights, also from a whole taming transformer (its first stage)."""
    if not any(key.startswith("encoder.") for key in state):
        inner = {k[len(FIRST_STAGE_PREFIX):]: v for k, v in state.items() if k.startswith(FIRST_STAGE_PREFIX)}
        state = inner or state
    return generation_weights(state)


def _config_beside(weights: Path) -> VQGANConfig:
    if weights.suffix == ".safetensors":
        config = safetensors_vqgan_config(weights)
        if config is not None:
            return config
    for candidate in (weights.with_suffix(".yaml"), weights.parent.parent / "configs" / "model.yaml"):
        if candidate.is_file():
            return read_vqgan_config(candidate)
    raise UnknownModel(f"no VQGAN config found for {weights}: put its taming YAML beside it "
                       f"as {weights.with_suffix('.yaml').name}, or pass --vqgan CONFIG.yaml,{weights}")


def build_vqgan(config: VQGANConfig, weights: Path, source: str) -> VQGAN:
    """Build a VQGAN and load its generation weights from ``weights``."""
    model = VQGAN(config)
    load_matching(model, vqgan_weights(load_state_dict(weights)), source)
    return model.eval().requires_grad_(False)


def _local_vqgan(spec: str) -> tuple[VQGANConfig, Path]:
    if "," in spec:
        config_text, weights_text = (part.strip() for part in spec.split(",", 1))
        config_path, weights = Path(config_text), Path(weights_text)
        if not config_path.is_file():
            raise UnknownModel(f"VQGAN config {config_path} does not exist")
        if not weights.is_file():
            raise UnknownModel(f"VQGAN checkpoint {weights} does not exist")
        return read_vqgan_config(config_path), weights
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        return read_vqgan_config(path), path.with_suffix(".ckpt")
    return _config_beside(path), path


def load_vqgan(spec: str, registry: Registry) -> Loaded:
    """A VQGAN from a registry name, ``CONFIG.yaml,CHECKPOINT``, or a checkpoint/safetensors file."""
    if registry.has("vqgan", spec):
        entry = registry.get("vqgan", spec)
        weights = _available_weights(entry)
        sha = _checked_hash(entry, weights)
        config = (vqgan_config_from(entry.architecture, f"{entry.name} (registry)") if entry.architecture
                  else _config_beside(weights))
        return Loaded(build_vqgan(config, weights, f"{entry.name} ({weights.name})"), spec, sha)
    if not Path(spec.split(",")[-1].strip()).exists() and not Path(spec).exists():
        registry.get("vqgan", spec)  # raises UnknownModel listing the registered names
    config, weights = _local_vqgan(spec)
    if not weights.is_file():
        raise UnknownModel(f"VQGAN checkpoint {weights} does not exist")
    return Loaded(build_vqgan(config, weights, str(weights)), spec, sha256_file(weights))


def _checked_hash(entry: ModelEntry, weights: Path) -> str:
    if entry.bundled is not None:
        return verified_sha256(weights, entry.bundled.sha256)
    return check_recorded_hash(entry, weights)


def _available_weights(entry: ModelEntry) -> Path:
    weights = entry.weights_path()
    if weights is None:
        if entry.bundled is not None:
            raise ModelNotAvailable(f"bundled {entry.kind} model {entry.name!r} is missing from the "
                                    f"package ({entry.bundled.path}); reinstall pixgen")
        raise ModelNotAvailable(f"{entry.kind} model {entry.name!r} is not downloaded; "
                                f"run: pixgen models download {entry.name}")
    return weights


# --- CLIP --------------------------------------------------------------------------------------

def _open_clip_model(arch: str) -> tuple[nn.Module, Any]:
    import open_clip

    if arch not in open_clip.list_models():
        raise UnknownModel(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    logging.disable(logging.WARNING)  # "No pretrained weights loaded": pixgen loads them right after
    try:
        model = open_clip.create_model(arch, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
    return model, open_clip.get_tokenizer(arch)


def _custom_clip_model(config_path: Path) -> tuple[nn.Module, Any, tuple, tuple]:
    import open_clip

    register_architectures()  # e.g. a pack's timm image tower that the config names
    config = read_clip_config(config_path)
    preprocess = config.pop("preprocess_cfg", {})
    try:
        model = open_clip.CLIP(**{k: v for k, v in config.items() if k != "custom_text"})
    except (TypeError, ValueError, KeyError, AttributeError, AssertionError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise CheckpointError(f"{config_path} is not a usable open_clip model config ({reason})") from None
    context = config["text_cfg"].get("context_length", 77)
    tokenizer = open_clip.SimpleTokenizer(context_length=context)
    mean = tuple(preprocess.get("mean", OPENAI_MEAN))
    std = tuple(preprocess.get("std", OPENAI_STD))
    return model, tokenizer, mean, std


def read_clip_config(path: Path) -> dict[str, Any]:
    """Read an open_clip model config JSON, refusing an empty or incomplete one in one line."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise CheckpointError(f"cannot read open_clip config {path} ({err.strerror or err})") from None
    except ValueError as err:
        reason = " ".join(str(err).split())[:120]
        raise CheckpointError(f"open_clip config {path} is not JSON ({reason})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"open_clip config {path} must be a JSON object, not {type(config).__name__}")
    for key in ("vision_cfg", "text_cfg"):
        if not isinstance(config.get(key), dict):
            raise CheckpointError(f"open_clip config {path} has no {key} object")
    if not isinstance(config.get("embed_dim"), int) or isinstance(config.get("embed_dim"), bool):
        raise CheckpointError(f"open_clip config {path}: embed_dim must be an integer")
    preprocess = config.get("preprocess_cfg", {})
    if not isinstance(preprocess, dict):
        raise CheckpointError(f"open_clip config {path}: preprocess_cfg must be an object")
    return config


def _pretrained_mean_std(arch: str, tag: str | None) -> tuple[tuple, tuple]:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    return tuple(cfg.get("mean", OPENAI_MEAN)), tuple(cfg.get("std", OPENAI_STD))


def _clip_state(weights: Path, fmt: str | None = None) -> dict[str, torch.Tensor]:
    state = load_state_dict(weights, fmt=fmt)
    # open_clip training checkpoints prefix every key with "module." (DistributedDataParallel).
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def build_clip(model: nn.Module, tokenizer, weights: Path, name: str,
               mean: tuple, std: tuple, pack: str | None = None) -> CLIPScorer:
    """Load open_clip weights into ``model`` and wrap it as a scorer (registered by ``pack``, if any)."""
    state = _clip_state(weights)
    load_matching(model, state, f"{name} ({weights.name})")
    return CLIPScorer(model, tokenizer, name, mean, std, pack)


def _entry_clip_model(entry: ModelEntry) -> tuple[nn.Module, Any, tuple, tuple]:
    """The untrained open_clip module of a registered CLIP, its tokenizer, mean and std."""
    if entry.config is not None:
        return _custom_clip_model(entry.config)
    model, tokenizer = _open_clip_model(entry.model)
    mean, std = _pretrained_mean_std(entry.model, entry.pretrained)
    return model, tokenizer, mean, std


# --- load checks for downloaded files -----------------------------------------------------------

def check_vqgan_file(path: Path, architecture: Any, source: str, fmt: str | None = None) -> None:
    """Raise CheckpointError unless ``path`` holds a VQGAN of ``architecture`` (keys and shapes)."""
    config = vqgan_config_from(architecture, source)
    load_matching(VQGAN(config), vqgan_weights(load_state_dict(path, fmt=fmt)), source)


def check_clip_file(entry: ModelEntry, path: Path, fmt: str | None = None) -> None:
    """Raise CheckpointError unless ``path`` loads into the entry's open_clip architecture."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = _entry_clip_model(entry)[0]
    load_matching(model, _clip_state(path, fmt), f"{entry.name} ({path.name})")


def load_clip(spec: str, registry: Registry) -> Loaded:
    """A CLIP scorer from a registry name, ``ARCH:WEIGHTS`` (open_clip name + file) or ``CONFIG.json``."""
    # pixgen fetches weights itself; open_clip must never try a model hub (it retries ~46 s offline).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if registry.has("clip", spec):
        entry = registry.get("clip", spec)
        weights = _available_weights(entry)
        sha = _checked_hash(entry, weights)
        model, tokenizer, mean, std = _entry_clip_model(entry)
        return Loaded(build_clip(model, tokenizer, weights, spec, mean, std, entry.pack), spec, sha)
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        candidates = [path.with_suffix(suffix) for suffix in (".safetensors", ".pt", ".bin")]
        weights = next((c for c in candidates if c.is_file()), None)
        if weights is None:
            raise UnknownModel(f"no CLIP weights beside {path} ({path.stem}.safetensors, .pt or .bin)")
        model, tokenizer, mean, std = _custom_clip_model(path)
        return Loaded(build_clip(model, tokenizer, weights, spec, mean, std), spec, sha256_file(weights))
    arch, sep, file_text = spec.partition(":")
    if sep and Path(file_text).is_file():
        model, tokenizer = _open_clip_model(arch)
        mean, std = _pretrained_mean_std(arch, None)
        weights = Path(file_text)
        return Loaded(build_clip(model, tokenizer, weights, spec, mean, std), spec, sha256_file(weights))
    if sep:
        raise UnknownModel(f"CLIP weights file {file_text} does not exist")
    registry.get("clip", spec)  # raises UnknownModel listing the registered names
    raise AssertionError("unreachable")


# --- judge -------------------------------------------------------------------------------------

def load_judge_model(spec: str, registry: Registry) -> Loaded:
    """A judge from a registry name or a weights file, loaded by the model pack it belongs to."""
    if registry.has("judge", spec):
        entry = registry.get("judge", spec)
        weights = _available_weights(entry)
        return Loaded(judge_pack(entry.pack).load_judge(weights), spec, _checked_hash(entry, weights))
    if not Path(spec).is_file():
        registry.get("judge", spec)  # raises UnknownModel listing the registered names
    return Loaded(judge_pack(None).load_judge(Path(spec)), spec, sha256_file(Path(spec)))
