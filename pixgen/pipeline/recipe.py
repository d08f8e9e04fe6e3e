"""The recipe every output PNG carries, and re-running it: ``pixgen run --from IMAGE.png``.

A recipe records what the pixels depend on: the resolved config (seed included), the models and
their sha256, the sha256 of every input image, the pixgen and torch versions, the device actually
used and the CPU thread count. Same recipe + same inputs + same versions, device and thread
count give a byte-identical PNG on the CPU; a different thread count may change the last bits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pixgen import __version__
from pixgen.config import RECORDED_BEFORE_KEYS, RunConfig, config_to_yaml
from pixgen.errors import InputError
from pixgen.models.downloads import sha256_file
from pixgen.prompts import parse_image_prompts, parse_negative_prompts, parse_prompts


def input_files(config: RunConfig) -> list[str]:
    """The image files a run reads: its init image and image prompts."""
    files = [config.init_image] if config.init == "image" and config.init_image else []
    return files + [prompt.source for prompt in parse_image_prompts(config.image_prompts)]


def input_hashes(config: RunConfig) -> dict[str, str]:
    """sha256 of every input image of a run, by the path the config names."""
    hashes = {}
    for path in input_files(config):
        try:
            hashes[path] = sha256_file(Path(path))
        except OSError as err:
            raise InputError(f"cannot read input image {path}: {err.strerror}") from None
    return hashes


def png_text(config: RunConfig, loaded: list, steps_done: int, device: str | None = None,
             inputs: dict[str, str] | None = None, precision: str | None = None) -> dict[str, str]:
    """The recipe stored in every output PNG's text chunks; ``precision`` is the one the run used
    (by default ``config.precision`` resolved for the device and models, as the engine does)."""
    import torch

    models = [{"name": m.name, "sha256": m.sha256} for m in loaded]
    text = {
        "Software": f"pixgen {__version__}",
        "prompt": config.prompt,
        "seed": str(config.seed),
        "steps_done": str(steps_done),
        "models": yaml.safe_dump(models, sort_keys=False),
        "config": config_to_yaml(config),
        "inputs": yaml.safe_dump(inputs if inputs is not None else input_hashes(config), sort_keys=True),
        "environment": yaml.safe_dump({"torch": str(torch.__version__), "device": device or config.device,
                                       "threads": torch.get_num_threads(),
                                       "precision": precision or precision_used(config, loaded, device)},
                                      sort_keys=False),
    }
    read_as = prompts_read_as(config, loaded)
    if read_as:
        text["read_as"] = yaml.safe_dump(read_as, sort_keys=False, allow_unicode=True)
    text["parameters"] = parameters_text(config, loaded, steps_done, device or config.device, read_as)
    return text


def prompts_read_as(config: RunConfig, loaded: list) -> dict[str, str]:
    """The run's text prompts that were restated for the bundled models, and what they became
    (:func:`pixgen.engine.loop.read_as`); ``loaded`` holds the VQGAN, then the CLIPs."""
    from pixgen.engine.loop import read_as

    if len(loaded) != 1 + len(config.clip):
        return {}
    return read_as(config, [m.module for m in loaded[1:]])


def precision_used(config: RunConfig, loaded: list, device: str | None = None) -> str:
    """The precision a run of ``config`` with the ``loaded`` models (VQGAN first) uses on ``device``."""
    from pixgen.engine.loop import run_precision
    from pixgen.pipeline.devices import pick_device

    if config.precision != "auto":
        return config.precision
    return run_precision(config.precision, pick_device(device or config.device),
                         loaded[0].module if loaded else None)


def parameters_text(config: RunConfig, loaded: list, steps_done: int, device: str,
                    read_as: dict[str, str] | None = None) -> str:
    """The recipe in the layout image viewers read (A1111 ``parameters``): prompt, negatives, ``Key: value``."""
    prompts = parse_prompts(config.prompt)
    positive = " | ".join(_weighted(p) for p in prompts if p.weight > 0)
    negatives = [p for p in prompts if p.weight < 0] + parse_negative_prompts(getattr(config, "negative_prompts", []))
    negative = " | ".join(_weighted(p, -1) for p in negatives)
    settings = {
        "Steps": steps_done, "Seed": config.seed, "Size": f"{config.size[0]}x{config.size[1]}",
        "Model": loaded[0].name if loaded else config.vqgan,
        "Model hash": loaded[0].sha256[:10] if loaded else None,
        "CLIP": " + ".join(m.name for m in loaded[1:]) or " + ".join(config.clip),
        "Optimizer": config.optimizer, "Learning rate": config.lr, "Final learning rate": config.lr_final,
        "Cutouts": config.cut_count, "Cutout power": config.cut_pow,
        "Cutout overhang": config.cut_overhang or None, "Init": config.init,
        "Init weight": config.init_weight or None,
        "Image prompts": " | ".join(config.image_prompts) or None,
        "Noise prompts": " | ".join(getattr(config, "noise_prompts", []) or []) or None,
        "Read as": " | ".join((read_as or {}).values()) or None,
        "Precision": config.precision, "Device": device, "Version": f"pixgen {__version__}",
    }
    line = ", ".join(f"{key}: {_quoted(value)}" for key, value in settings.items() if value is not None)
    return "\n".join([positive, *([f"Negative prompt: {negative}"] if negative else []), line])


def _weighted(prompt, sign: float = 1) -> str:
    weight = prompt.weight * sign
    suffix = "" if weight == 1 and prompt.stop is None else f":{weight:g}"
    return prompt.source + suffix + (f":{prompt.stop:g}" if prompt.stop is not None else "")


def _quoted(value) -> str:
    text = str(value)
    return json.dumps(text) if any(c in text for c in ',:"\n') else text


def read_recipe(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The config mapping and input hashes stored in a pixgen PNG."""
    from pixgen.pipeline.output import open_image

    with open_image(path, "", kind="PNG") as image:  # one line for a missing, foreign, damaged or oversized file
        text = dict(getattr(image, "text", {}))
    if "config" not in text:
        raise InputError(f"{path} carries no pixgen recipe (no 'config' text chunk)")
    try:
        config = yaml.safe_load(text["config"])
        inputs = yaml.safe_load(text.get("inputs", "")) or {}
    except yaml.YAMLError:
        raise InputError(f"the recipe in {path} is not valid YAML") from None
    if not isinstance(config, dict) or not isinstance(inputs, dict):
        raise InputError(f"the recipe in {path} is not a pixgen recipe")
    return {**RECORDED_BEFORE_KEYS, **config}, {str(k): str(v) for k, v in inputs.items()}


def check_inputs(config: RunConfig, recorded: dict[str, str], source: Path) -> None:
    """Refuse to re-run a recipe whose input images are missing or changed since it was made."""
    for path in input_files(config):
        if path not in recorded:
            continue  # an input added on top of the recipe: nothing to compare with
        if not Path(path).is_file():
            raise InputError(f"input image {path} named in the recipe of {source} is missing")
        if sha256_file(Path(path)) != recorded[path]:
            raise InputError(f"input image {path} changed since {source} was made "
                             f"(sha256 differs from the recipe's {recorded[path][:12]}…)")
