"""Run configuration: a typed schema, presets layered on it, and one-line validation errors.

Layers, lowest first: the dataclass defaults < a preset < a user config file < ``--set key=value``
overrides < explicit CLI flags. Presets are YAML data, never code.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pixgen.errors import ConfigError
from pixgen.prompts import all_prompts

PRESET_DIR = Path(__file__).parent / "presets"
DEFAULT_PRESET = "default"
OPTIMIZERS = ("adam", "adamw", "sgd")
INITS = ("random", "image", "pixels", "gradient", "perlin")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")  # cuda may carry an index: cuda:N
# Upper limits, far above what a run needs, that stop a typo from asking for gigabytes
# before pixgen's memory estimate (pixgen.pipeline.memory) gets a say.
MAX_SIDE = 4096  # pixels per side
MAX_CUT_COUNT = 256  # cutouts per step and CLIP model
MAX_STEPS = 100_000
MAX_CLIPS = 16  # CLIP models in one ensemble (each is loaded and run every step)
MAX_PROMPTS = 256  # text, image, noise and negative prompts of one run together
SHOWN_CHARS = 60  # a value quoted in an error message is cut to this many characters
KEYS_HELP = "see Configuration in the README for every config key"


@dataclass
class RunConfig:
    """Everything that decides what a run produces. Same names as the CLI flags and preset keys."""

    prompt: str = ""  # text prompts "text:weight:stop", several joined with "|"
    image_prompts: list[str] = field(default_factory=list)  # image files "path[:weight[:stop]]"
    noise_prompts: list[str] = field(default_factory=list)  # seeded random embeddings "seed[:weight]"
    negative_prompts: list[str] = field(default_factory=list)  # texts to push away from "text[:weight[:stop]]"
    # With the bundled shapes-world CLIPs only: text prompts become the caption the CLIPs read them as
    restate: bool = True
    size: list[int] = field(default_factory=lambda: [256, 256])  # output width, height in pixels
    steps: int = 300  # optimisation steps
    seed: int | None = None  # None draws a seed, which is then recorded with the output
    optimizer: str = "adam"  # one of OPTIMIZERS
    lr: float = 0.1  # learning rate
    lr_final: float | None = None  # learning rate at the last step, reached by cosine decay; None: constant lr
    cut_count: int = 32  # cutouts per step and CLIP model
    cut_pow: float = 1.0  # cutout size distribution: rand ** cut_pow
    cut_min_scale: float = 1.0  # smallest cutout as a fraction of min(side, CLIP input size)
    cut_overhang: float = 0.0  # how far past an image edge a cutout may reach, as a fraction of its side
    augment_flip: bool = True  # random horizontal flips of cutouts
    augment_rotate: float = 0.0  # maximum cutout rotation, degrees
    augment_noise: float = 0.0  # maximum std of Gaussian noise added to cutouts
    # The reference loop's (generate.py's kornia) augmentations, per cutout; 0 = off (best on the shapes world: README)
    augment_shear: float = 0.0  # maximum x and y shear, degrees (generate.py: 5)
    augment_perspective: float = 0.0  # perspective distortion, 0-1 (generate.py: 0.7)
    augment_jitter: float = 0.0  # saturation and hue jitter, 0-0.5 (generate.py: 0.1)
    augment_erase: float = 0.0  # probability of zeroing a 10-40 % box of a cutout (generate.py: 0.7)
    augment_p: float = 0.7  # per-cutout probability of each of shear, perspective and jitter
    init: str = "random"  # one of INITS
    init_image: str | None = None  # image file for init "image"
    init_weight: float = 0.0  # weight of MSE(z, z_init): keeps the image near its start
    vqgan: str = "shapes-vqgan"  # registry name or local checkpoint file(s)
    # CLIP models (registry names or files); several make an ensemble
    clip: list[str] = field(default_factory=lambda: ["shapes-clip", "shapes-clip-2", "shapes-clip-3"])
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps
    precision: str = "auto"  # autocast precision of decoder and CLIP: auto (per device), fp32, bf16, fp16
    save_every: int = 50  # save a progress frame every N steps (0: no frames)
    gif: bool = True  # write a progress GIF of the frames
    gif_fps: float = 10.0  # frames per second of the progress GIF


FIELD_NAMES = tuple(f.name for f in fields(RunConfig))
# What a config recorded before a key existed meant (run.yaml, PNG recipes), so old runs resume and re-run exactly
RECORDED_BEFORE_KEYS: dict[str, Any] = {"restate": False}


def list_presets() -> list[str]:
    """Names of the bundled presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """A bundled preset by name, or ``name`` itself when it is a ``.yaml``/``.yml`` file path.

    Names are looked up in the preset folder only: a name is one plain word, never a path.
    """
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"preset file {name} does not exist")
        return candidate
    if not name or name != candidate.name or name in (".", "..") or name.startswith("."):
        raise ConfigError(f"unknown preset {name!r}: a preset is a name from `pixgen presets list` "
                          "or a path to a .yaml file")
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    return path


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping (a preset or config file)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not a UTF-8 text file (is it an image or other binary?)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{what} {path}{where} is not valid YAML") from None
    except (ValueError, RecursionError):  # a number of over 4300 digits, lists nested thousands deep
        raise ConfigError(f"{what} {path} holds a number too long or lists nested too deep to read") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of settings, not {type(data).__name__}")
    if not all(isinstance(key, str) for key in data):
        raise ConfigError(f"{what} {path} must have setting names as keys")
    return {k: v for k, v in data.items() if k != "description"}


def preset_description(name: str) -> str:
    """The ``description`` line of a preset, or an empty string."""
    data = yaml.safe_load(preset_path(name).read_text(encoding="utf-8")) or {}
    return str(data.get("description", ""))


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` override; the value is read as YAML (``steps=10``, ``clip=[a,b]``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError):
        value = raw
    return key.strip(), value


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 1]}…"


def key_hint(key: str, allowed: tuple[str, ...] | list[str], where: str = KEYS_HELP) -> str:
    """`` (did you mean steps?)`` for the nearest valid keys, else where to find them (never the whole list)."""
    close = difflib.get_close_matches(str(key), allowed, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else f" ({where})"


def _unknown_key_error(key: str, source: str) -> ConfigError:
    return ConfigError(f"unknown setting {shown(key)} in {source}{key_hint(key, FIELD_NAMES)}")


def _merge_layer(base, layer: dict[str, Any], source: str):
    for key in layer:
        if key not in FIELD_NAMES:
            raise _unknown_key_error(str(key), source)
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        value = layer.get(str(key).split(".")[0].split("[")[0], "?")
        raise ConfigError(f"invalid value {shown(value)} for {shown(key)} in {source}: "
                          f"{_type_hint(str(key))}") from None


def _type_hint(key: str) -> str:
    kinds = {f.name: f.type for f in fields(RunConfig)}
    kind = str(kinds.get(key.split(".")[0].split("[")[0], "a valid value"))
    return f"expected {kind.replace(' | None', ' or null')}"


def resolve_config(preset: str = DEFAULT_PRESET, config_file: Path | None = None,
                   overrides: list[str] = (), flags: dict[str, Any] | None = None,
                   base: dict[str, Any] | None = None, base_source: str = "the recipe") -> RunConfig:
    """Layer defaults < preset (or ``base``, a whole recorded config) < config file < ``--set`` < flags."""
    merged = OmegaConf.structured(RunConfig)
    if base is not None:
        merged = _merge_layer(merged, base, base_source)
    else:
        merged = _merge_layer(merged, read_yaml_mapping(preset_path(preset), "preset"), f"preset {preset!r}")
    if config_file is not None:
        merged = _merge_layer(merged, read_yaml_mapping(Path(config_file), "config file"),
                              f"config file {config_file}")
    for text in overrides:
        key, value = parse_override(text)
        merged = _merge_layer(merged, {key: value}, f"--set {key}=…" if len(text) > SHOWN_CHARS else f"--set {text}")
    explicit = {k: v for k, v in (flags or {}).items() if v is not None}
    merged = _merge_layer(merged, explicit, "the command line")
    config = RunConfig(**OmegaConf.to_container(merged))
    validate(config)
    return config


def config_from_mapping(data: Any, source: str) -> RunConfig:
    """A complete config from a mapping read back from disk (``run.yaml``, a PNG recipe), validated;
    keys it lacks mean what they meant before they existed (``RECORDED_BEFORE_KEYS``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} is not a pixgen run config (expected a mapping of settings)")
    data = {**RECORDED_BEFORE_KEYS, **data}
    config = RunConfig(**OmegaConf.to_container(_merge_layer(OmegaConf.structured(RunConfig), data, source)))
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Range and choice checks that types alone cannot express; raises ConfigError."""
    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            raise ConfigError(f"invalid value {shown(getattr(config, key))} for {key!r}: {rule}")

    for f in fields(RunConfig):
        value = getattr(config, f.name)
        if isinstance(value, float):
            need(math.isfinite(value), f.name, "must be a finite number")
    need(len(config.size) == 2 and all(8 <= s <= MAX_SIDE for s in config.size), "size",
         f"expected [width, height], each between 8 and {MAX_SIDE} pixels")
    need(1 <= config.steps <= MAX_STEPS, "steps", f"must be between 1 and {MAX_STEPS}")
    need(config.seed is None or 0 <= config.seed < 2**63, "seed", "must be between 0 and 2**63 - 1")
    need(config.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
    need(config.lr > 0, "lr", "must be positive")
    need(config.lr_final is None or 0 <= config.lr_final <= config.lr, "lr_final",
         "must be between 0 and lr (or null for a constant learning rate)")
    need(1 <= config.cut_count <= MAX_CUT_COUNT, "cut_count", f"must be between 1 and {MAX_CUT_COUNT}")
    need(config.cut_pow > 0, "cut_pow", "must be positive")
    need(0 < config.cut_min_scale <= 1, "cut_min_scale", "must be in (0, 1]")
    need(0 <= config.cut_overhang <= 0.5, "cut_overhang", "must be between 0 and 0.5")
    need(0 <= config.augment_rotate <= 180, "augment_rotate", "must be between 0 and 180 degrees")
    need(0 <= config.augment_noise <= 10, "augment_noise", "must be between 0 and 10")
    need(0 <= config.augment_shear <= 45, "augment_shear", "must be between 0 and 45 degrees")
    for key, high in (("augment_perspective", 1), ("augment_jitter", 0.5), ("augment_erase", 1), ("augment_p", 1)):
        need(0 <= getattr(config, key) <= high, key, f"must be between 0 and {high}")
    need(config.init in INITS, "init", f"must be one of {', '.join(INITS)}")
    need(config.init != "image" or bool(config.init_image), "init",
         "init 'image' needs init_image (--init-image PATH)")
    need(config.init_image is None or config.init == "image", "init_image",
         f"is set but init is {config.init!r}; set init to 'image' or remove init_image")
    need(config.init_weight >= 0, "init_weight", "must not be negative")
    need(bool(config.vqgan), "vqgan", "needs a VQGAN model")
    need(bool(config.clip) and all(config.clip), "clip", "needs at least one CLIP model")
    need(len(config.clip) <= MAX_CLIPS, "clip", f"at most {MAX_CLIPS} CLIP models, not {len(config.clip)}")
    need(_is_device_name(config.device), "device", "expected auto, cpu, cuda, cuda:N or mps")
    need(config.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")
    need(0 <= config.save_every <= MAX_STEPS, "save_every", f"must be between 0 (no frames) and {MAX_STEPS}")
    need(0 < config.gif_fps <= 100, "gif_fps", "must be between 0 and 100")
    need(bool(config.prompt.strip()) or bool(config.image_prompts), "prompt",
         "give a text prompt or at least one image prompt")
    # a ConfigError names a bad one
    count = len(all_prompts(config.prompt, config.image_prompts, config.noise_prompts, config.negative_prompts))
    if count > MAX_PROMPTS:
        raise ConfigError(f"{count} prompts (text, image, noise and negative together); the limit is {MAX_PROMPTS}")


def _is_device_name(name: str) -> bool:
    kind, _, index = name.partition(":")
    return kind in DEVICE_KINDS and (not index or (kind == "cuda" and index.isdigit()))


def config_to_yaml(config: RunConfig) -> str:
    """The resolved config as YAML, in field order (written beside and into every output)."""
    return yaml.safe_dump(OmegaConf.to_container(OmegaConf.structured(config)), sort_keys=False)
