"""From a request to a planned job: the CLI's validation, plus nothing that names a file on the server.

A request's settings are ``pixgen run`` config keys. Three kinds of key could name a server-side
path, so a request may give them only in a safe form: ``init_image`` and ``image_prompts`` name
uploads (``upload-<hash>.png``, stored in ``DIR/uploads``), ``vqgan``/``clip`` registered models,
``preset`` a bundled preset; ``device`` is the server's to choose (``--devices``).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from pixgen.batch.manifest import Job, config_hash, expand, plan_jobs, read_manifest
from pixgen.config import FIELD_NAMES, RunConfig, key_hint, list_presets, shown
from pixgen.errors import ConfigError, PixgenError

UPLOADS_DIR = "uploads"
UPLOAD_ID = re.compile(r"upload-[0-9a-f]{16}\.(?:png|jpg|webp)")
SERVER_KEYS = ("device",)  # the server decides these
MAX_NAME = 80  # characters of a job name


@dataclass(frozen=True)
class Order:
    """A job as the studio keeps it: the batch job, its kind, an animation's settings, where it came from."""

    job: Job
    kind: str = "run"  # or "animation"
    animation: dict[str, Any] | None = None  # AnimationSettings as run.yaml records them (schedule explicit)
    parent: str | None = None  # the job a re-run or continue came from

    @property
    def id(self) -> str:
        return self.job.folder.name


def _check_settings(settings: Any, where: str) -> dict[str, Any]:
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise ConfigError(f"{where} must be a mapping of config keys")
    for key in settings:
        if not isinstance(key, str) or key not in (*FIELD_NAMES, "preset"):
            raise ConfigError(f"{where}: unknown setting {shown(key)}{key_hint(str(key), FIELD_NAMES)}")
        if key in SERVER_KEYS:
            raise ConfigError(f"{where}: {key!r} is chosen by the server (pixgen serve --devices), not by a request")
    return dict(settings)


def check_preset(preset: Any) -> str:
    """A bundled preset's name; never a file path."""
    presets = list_presets()
    if not isinstance(preset, str) or preset not in presets:
        raise ConfigError(f"unknown preset {shown(preset)}; available: {', '.join(presets)}")
    return preset


def upload_path(root: Path, upload: str) -> Path:
    """The stored file of an upload id; a ConfigError for anything else (a path, an unknown id)."""
    if not isinstance(upload, str) or not UPLOAD_ID.fullmatch(upload):
        raise ConfigError(f"{shown(upload)} is not an upload: upload the image first (POST /api/v1/uploads) "
                          "and give its id")
    path = Path(root) / UPLOADS_DIR / upload
    if not path.is_file():
        raise ConfigError(f"upload {upload} is not on this server (upload it again)")
    return path


def public_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A resolved config's settings as a request names them: uploads by id, not by their path on the server."""
    settings = dict(settings)
    if settings.get("init_image"):
        settings["init_image"] = Path(settings["init_image"]).name
    settings["image_prompts"] = [Path(p.split(":")[0]).name + p[len(p.split(":")[0]):]
                                 for p in settings.get("image_prompts") or []]
    return settings


def _map_uploads(root: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """``init_image`` and ``image_prompts`` from upload ids to the uploads' paths."""
    settings = dict(settings)
    if settings.get("init_image") is not None:
        settings["init_image"] = str(upload_path(root, settings["init_image"]))
    prompts = settings.get("image_prompts")
    if prompts is not None:
        if not isinstance(prompts, list):
            raise ConfigError("image_prompts must be a list of uploads, each 'upload-….png[:weight[:stop]]'")
        mapped = []
        for entry in prompts:
            upload, sep, rest = str(entry).partition(":")
            mapped.append(str(upload_path(root, upload)) + sep + rest)
        settings["image_prompts"] = mapped
    return settings


_read_registry: tuple[Any, float, Any] = (None, -1e9, None)  # (where, when, the registry): its YAML is half a
# request's time
REGISTRY_FRESH = 2.0  # seconds a read registry serves requests (a model imported meanwhile shows up after that)


def _registry():
    """The model registry, read again when the last read is older than REGISTRY_FRESH."""
    global _read_registry
    from pixgen.models.registry import load_registry

    where = (os.environ.get("PIXGEN_REGISTRY"), os.environ.get("PIXGEN_HOME"))
    read_from, read_at, registry = _read_registry
    if read_from != where or time.monotonic() - read_at > REGISTRY_FRESH:
        registry = load_registry()
        _read_registry = (where, time.monotonic(), registry)
    return registry


def _check_models(config: RunConfig) -> None:
    registry = _registry()
    for kind, names in (("vqgan", [config.vqgan]), ("clip", config.clip)):
        for name in names:
            if not registry.has(kind, name):
                raise ConfigError(f"{shown(name)} is not a registered {kind} model on this server "
                                  f"(see GET /api/v1/info)")


def _check_inputs(root: Path, config: RunConfig) -> None:
    """Every file the config reads lies in DIR/uploads (a manifest's settings are checked here too)."""
    uploads = (Path(root) / UPLOADS_DIR).resolve()
    paths = ([config.init_image] if config.init_image else []) + [p.split(":")[0] for p in config.image_prompts]
    for path in paths:
        if Path(path).resolve().parent != uploads:
            raise ConfigError(f"{shown(path)} is not an upload: upload the image first and give its id")


def job_name(prompt: str, seed: int) -> str:
    """The default name of a job: its prompt's first words and its seed."""
    from pixgen.pipeline.runner import slugify

    return f"{slugify(prompt.split('|')[0].split(':')[0], 40)}-s{seed}"


def plan_order(root: Path, prompt: Any, preset: Any = "default", settings: Any = None, *,
               animation: Any = None, name: Any = None, parent: str | None = None) -> Order:
    """Validate a request and place its job in ``root``; writes nothing. A missing seed is drawn at random."""
    from pixgen.pipeline.runner import slugify

    settings = _check_settings(settings, "settings")
    preset = check_preset(settings.pop("preset", preset))
    prompt = settings.pop("prompt", prompt)
    if not isinstance(prompt, str):
        raise ConfigError("prompt must be a text")
    if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME):
        raise ConfigError(f"name must be a non-empty text of at most {MAX_NAME} characters")
    if settings.get("seed") is None:
        settings["seed"] = secrets.randbelow(2**31)  # the web page's "random": a new image each time
    plan = None
    if animation is not None:
        plan = _plan_animation(animation, prompt)
        prompt = plan.segments[0].prompt
    job = plan_jobs([("the request", None, {**_map_uploads(root, settings), "preset": preset, "prompt": prompt})],
                    root, source="the request")[0]
    config = job.config
    _check_models(config)
    _check_inputs(root, config)
    kind, recorded = "run", None
    key = job.key
    if plan is not None:
        kind, recorded = "animation", _recorded(plan.settings)
        digest = hashlib.sha256(yaml.safe_dump(recorded, sort_keys=True).encode()).hexdigest()
        key = config_hash(config, 6) + digest[:4]  # an animation's folder depends on its schedule too
    title = name or job_name(prompt, config.seed)
    folder = Path(root) / f"{slugify(title, 40)}-{key}"
    return Order(replace(job, name=title, key=key, folder=folder), kind, recorded, parent)


def _plan_animation(animation: Any, prompt: str):
    from pixgen.animation.animate import plan_animation, settings_from_mapping

    if not isinstance(animation, dict):
        raise ConfigError("animation must be a mapping of animation settings (frames, zoom, ...)")
    animation = dict(animation)
    if not animation.get("schedule"):
        animation["schedule"] = prompt
    return plan_animation(settings_from_mapping(animation, "animation"))


def _recorded(settings) -> dict[str, Any]:
    from dataclasses import asdict

    return yaml.safe_load(yaml.safe_dump(asdict(settings)))


def animation_plan(order: Order):
    """The animation plan of an animation order (its recorded settings parsed again)."""
    from pixgen.animation.animate import plan_animation, settings_from_mapping

    return plan_animation(settings_from_mapping(order.animation, "animation"))


def plan_manifest(root: Path, text: Any, room: Callable[[int], None] = lambda _count: None) -> list[Order]:
    """Every job of a batch manifest given as YAML text, checked as the request's settings are. ``room`` is
    called with the number of jobs before they are planned (planning costs ~20 ms a job): it may refuse."""
    if not isinstance(text, str):
        raise ConfigError("manifest must be the text of a batch manifest (YAML)")
    with tempfile.TemporaryDirectory(prefix="pixgen-manifest-") as folder:
        path = Path(folder) / "manifest.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            expanded = expand(read_manifest(path))
        except PixgenError as err:
            text = str(err).replace(f"manifest {path}", "the manifest").replace(str(path), "the manifest")
            raise type(err)(text) from None
    room(len(expanded))
    checked = []
    for label, name, settings in expanded:
        settings = _check_settings(settings, label)
        check_preset(settings.get("preset", "default"))
        checked.append((label, name, _map_uploads(root, settings)))
    orders = [Order(job) for job in plan_jobs(checked, root)]
    for order in orders:
        _check_models(order.job.config)
        _check_inputs(root, order.job.config)
    return orders
