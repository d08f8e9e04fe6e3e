"""Batch manifests: parse, expand the matrix, validate every job, and place each job's folder.

A manifest is YAML with up to three sections::

    defaults:            # any RunConfig key, and ``preset``; applies to every job
      preset: draft
      steps: 100
    jobs:                # explicit jobs, in this order; each any config keys, an optional name
      - {name: hero, prompt: a red circle, seed: 7}
    matrix:              # each key a list; every combination becomes a job
      prompt: [a red circle, a blue square]
      seed: [0, 1, 2]

Jobs come in a stable order: the ``jobs:`` list first, then the matrix combinations as nested
loops over its keys in the order the manifest writes them (the last key varies fastest), so the
matrix above gives (red circle, 0), (red circle, 1), (red circle, 2), (blue square, 0), ...
``prompts``, ``seeds`` and ``presets`` are accepted as matrix keys for ``prompt``, ``seed``, ``preset``.

Layers, lowest first: the preset < ``defaults`` < the job's own keys (or its matrix values).
A job without a seed gets one derived from its settings, so a batch always reproduces.
Each job writes into ``DIR/<name>-<hash>``, the hash being of its resolved config: the same job
always maps to the same folder, and a changed job to a new one.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from pixgen.config import (
    DEFAULT_PRESET,
    FIELD_NAMES,
    RunConfig,
    config_to_yaml,
    key_hint,
    preset_path,
    read_yaml_mapping,
    resolve_config,
    shown,
)
from pixgen.errors import ConfigError, InputError, OutputError, PixgenError
from pixgen.pipeline.recipe import input_hashes
from pixgen.pipeline.runner import OUTPUT_NAMES, slugify

SECTIONS = ("defaults", "jobs", "matrix")
ALIASES = {"prompts": "prompt", "seeds": "seed", "presets": "preset"}
JOB_KEYS = (*FIELD_NAMES, "preset")
HASH_CHARS = 10
DEFAULT_CONFIG = RunConfig()  # settings equal to these do not count in a job's identity
# Checked before a job is expanded or a folder made: planning takes about 20 ms a job (10,000 jobs:
# some minutes) and the gallery's contact sheet grows with every job.
MAX_JOBS = 10_000  # explicit jobs plus matrix combinations
MAX_MANIFEST_BYTES = 4 * 2**20  # the manifest file, read whole before its YAML is parsed
_MISSING = object()


@dataclass(frozen=True)
class Job:
    """One image of a batch: its name, preset, resolved config and output folder."""

    name: str
    preset: str
    config: RunConfig  # validated, seed set
    key: str  # short sha256 of the resolved config
    folder: Path  # DIR/<slug>-<key>

    @property
    def models(self) -> tuple:
        """What decides which models the job loads: (vqgan, clips, device)."""
        return self.config.vqgan, tuple(self.config.clip), self.config.device


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest's sections, with their shapes and job count checked (not yet the settings)."""
    where = f"manifest {path}"
    try:
        size = Path(path).stat().st_size
    except OSError:
        size = 0  # read_yaml_mapping says why it cannot be read
    if size > MAX_MANIFEST_BYTES:
        raise ConfigError(f"{where} is {size / 2**20:.1f} MiB; the limit is {MAX_MANIFEST_BYTES // 2**20} MiB "
                          "(use a matrix: for many similar jobs)")
    data = read_yaml_mapping(Path(path), "manifest")
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(f"{where}: unknown section {key!r}; expected {', '.join(SECTIONS)}")
    defaults = data.get("defaults") or {}
    jobs = data.get("jobs") or []
    matrix = data.get("matrix")
    if not isinstance(defaults, dict):
        raise ConfigError(f"{where}: defaults must be a mapping of settings")
    _check_keys(defaults, "defaults", JOB_KEYS)
    if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs):
        raise ConfigError(f"{where}: jobs must be a list of mappings (each job's settings)")
    if matrix is not None:
        matrix = _check_matrix(matrix, where)
    count = len(jobs) + (math.prod(len(values) for values in matrix.values()) if matrix else 0)
    if count > MAX_JOBS:  # counted from the list lengths: nothing expanded yet
        raise ConfigError(f"{where} expands to {count:,} jobs; the limit is {MAX_JOBS:,} (split it into "
                          "several manifests)")
    for number, job in enumerate(jobs, 1):
        _check_keys(job, _job_label(job, number), (*JOB_KEYS, "name"))
    if not jobs and not matrix:
        raise ConfigError(f"{where} defines no jobs: add a jobs: list or a matrix:")
    return {"defaults": defaults, "jobs": jobs, "matrix": matrix or {}}


def _check_matrix(matrix: Any, where: str) -> dict[str, list]:
    if not isinstance(matrix, dict) or not matrix:
        raise ConfigError(f"{where}: matrix must be a non-empty mapping of setting -> list of values")
    checked: dict[str, list] = {}
    for key, values in matrix.items():
        name = ALIASES.get(key, key)
        _check_keys({name: values}, "matrix", JOB_KEYS)
        if name in checked:
            raise ConfigError(f"{where}: matrix sets {name!r} twice ({name!r} and its plural)")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: matrix {shown(key)} must be a non-empty list of values, not {shown(values)}")
        checked[name] = values
    return checked


def _check_keys(settings: dict, label: str, allowed: tuple[str, ...]) -> None:
    for key in settings:
        if key not in allowed:
            raise ConfigError(f"{label}: unknown setting {shown(key)}{key_hint(key, allowed)}")


def _job_label(job: dict, number: int) -> str:
    return f"job {shown(job['name'], 40)}" if isinstance(job.get("name"), str) else f"job #{number}"


def expand(manifest: dict[str, Any]) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(label, explicit name, settings) per job, in the documented order; defaults layered in."""
    defaults = manifest["defaults"]
    expanded = []
    for number, job in enumerate(manifest["jobs"], 1):
        name = job.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigError(f"job #{number}: name must be a non-empty string, not {shown(name)}")
        settings = {k: v for k, v in job.items() if k != "name"}
        expanded.append((_job_label(job, number), name, {**defaults, **settings}))
    matrix = manifest["matrix"]
    combinations = itertools.product(*matrix.values()) if matrix else ()
    for number, values in enumerate(combinations, 1):
        settings = dict(zip(matrix, values, strict=True))
        described = ", ".join(f"{k}={shown(v, 30)}" for k, v in settings.items())
        described = described if len(described) <= 90 else f"{described[:89]}…"
        expanded.append((f"matrix job #{number} ({described})", None, {**defaults, **settings}))
    return expanded


def resolve_job(label: str, settings: dict[str, Any], source: str = "the manifest") -> tuple[str, RunConfig]:
    """The preset name and validated config of one job; errors name the job, the key and ``source``."""
    settings = dict(settings)
    preset = settings.pop("preset", DEFAULT_PRESET)
    try:
        if not isinstance(preset, str):
            raise ConfigError(f"invalid value {preset!r} for 'preset': expected a preset name or .yaml file")
        layers = read_yaml_mapping(preset_path(preset), "preset")
        _check_keys(layers, f"preset {preset!r}", FIELD_NAMES)
        config = resolve_config(base={**layers, **settings}, base_source=source)
    except ConfigError as err:
        raise ConfigError(f"{label}: {err}") from None
    if config.seed is None:
        config = replace(config, seed=int(config_hash(config, 16), 16) % 2**31)
    return preset, config


def _settings(config: RunConfig) -> dict[str, Any]:
    """The config's settings as plain YAML values (what run.yaml records)."""
    return yaml.safe_load(config_to_yaml(config))


def config_hash(config: RunConfig, chars: int = HASH_CHARS) -> str:
    """A short sha256 of the resolved config's settings that differ from the built-in defaults (the job's
    identity): a key set to its default, or a new setting that defaults to off, leaves it unchanged."""
    defaults = _settings(DEFAULT_CONFIG)
    changed = {key: value for key, value in _settings(config).items() if value != defaults.get(key, _MISSING)}
    return hashlib.sha256(yaml.safe_dump(changed, sort_keys=True).encode()).hexdigest()[:chars]


def plan_batch(manifest_path: Path, output_dir: Path) -> list[Job]:
    """Every job of a manifest, validated and placed in ``output_dir``; writes nothing."""
    return plan_jobs(expand(read_manifest(manifest_path)), output_dir)


def plan_jobs(expanded: list[tuple[str, str | None, dict[str, Any]]], output_dir: Path,
              source: str = "the manifest") -> list[Job]:
    """Jobs from :func:`expand`'s (label, name, settings), validated and placed in ``output_dir``; writes nothing.
    ``source`` names where the settings came from in errors."""
    resolved = [(label, name, *resolve_job(label, settings, source)) for label, name, settings in expanded]
    _refuse_duplicate_names([(label, name) for label, name, _, _ in resolved])
    auto = [f"{slugify(config.prompt.split('|')[0].split(':')[0], 40)}-s{config.seed}"
            for _, _, _, config in resolved]
    jobs, seen = [], {}
    for (label, name, preset, config), auto_name in zip(resolved, auto, strict=True):
        key = config_hash(config)
        if name is None:
            clash = auto.count(auto_name) > 1 or any(auto_name == other for _, other, _, _ in resolved)
            name = f"{auto_name}-{key}" if clash else auto_name
        folder = Path(output_dir) / f"{slugify(name, 40)}-{key}"
        if folder.name in seen:
            raise ConfigError(f"{label}: same settings and name as {seen[folder.name]}; remove one of them")
        seen[folder.name] = label
        jobs.append(Job(name, preset, config, key, folder))
    for job in jobs:
        check_folder(job.folder, Path(output_dir))
        try:
            input_hashes(job.config)  # a missing init image or image prompt stops the batch before it starts
        except InputError as err:
            raise InputError(f"job {job.name!r}: {err}") from None
    return jobs


def _refuse_duplicate_names(named: list[tuple[str, str | None]]) -> None:
    first: dict[str, str] = {}
    for label, name in named:
        if name is None:
            continue
        if name in first:
            raise ConfigError(f"{label}: job name {name!r} is used twice; names must be unique")
        first[name] = label


def check_folder(folder: Path, root: Path) -> None:
    """Refuse a job folder that is a symlink, resolves outside ``root``, or holds symlinked outputs."""
    root = Path(root)
    if root.is_symlink() and not root.is_dir():
        raise OutputError(f"output folder {root} is a broken symbolic link")
    if folder.is_symlink() or folder.resolve().parent != root.resolve():
        raise OutputError(f"{folder} is a symbolic link or lies outside {root}; a batch writes only inside "
                          "its output folder: remove it")
    for name in OUTPUT_NAMES:
        if (folder / name).is_symlink():
            raise OutputError(f"{folder / name} is a symbolic link; remove it (a batch writes only inside {root})")


def describe(job: Job) -> str:
    """One line for --dry-run: name, folder and the settings that tell jobs apart."""
    config = job.config
    return (f"{job.name}  {job.folder}  prompt={config.prompt!r} seed={config.seed} preset={job.preset} "
            f"steps={config.steps} size={config.size[0]}x{config.size[1]}")



def check_executor(executor: str, address: str | None) -> None:
    """Refuse an executor that cannot run here, in one line."""
    if address and executor != "ray":
        raise ConfigError("--address is for --executor ray")
    if executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise PixgenError("the ray executor needs: pip install 'pixgen[ray]'")
