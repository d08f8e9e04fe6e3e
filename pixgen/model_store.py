"""The local model store: download, slim, verify, import and remove registered models.

Files live under ``cache_dir()/KIND/NAME/``. After a VQGAN download pixgen keeps a slim copy
(generation weights only, fp16 safetensors, architecture in its metadata) and deletes the
~1 GB training checkpoint unless asked to keep it. Hashes the registry does not know yet are
recorded on first download (trust on first use) in ``known_hashes.yaml`` and checked afterwards.
Models imported from the user's own taming files are listed in ``registry.yaml`` in the cache.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from pixgen.cache import cache_dir, is_offline
from pixgen.downloads import download, sha256_file
from pixgen.errors import ChecksumMismatch, PixgenError
from pixgen.fileio import atomic_write_text
from pixgen.registry import ModelEntry, Registry

KNOWN_HASHES = "known_hashes.yaml"
USER_REGISTRY = "registry.yaml"


@dataclass
class FileCheck:
    """The verdict on one file of a model."""

    path: Path
    ok: bool
    detail: str


def _hash_record_path() -> Path:
    return cache_dir() / KNOWN_HASHES


def known_hashes() -> dict[str, str]:
    """Hashes recorded on first use, keyed by path relative to the cache dir."""
    path = _hash_record_path()
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def record_hash(path: Path, digest: str) -> None:
    """Remember a file's sha256 (trust on first use)."""
    hashes = known_hashes()
    hashes[str(path.relative_to(cache_dir()))] = digest
    atomic_write_text(_hash_record_path(), yaml.safe_dump(hashes, sort_keys=True))


def forget_hashes(folder: Path) -> None:
    """Drop the recorded hashes of every file under ``folder``."""
    prefix = str(folder.relative_to(cache_dir())) + "/"
    hashes = {k: v for k, v in known_hashes().items() if not k.startswith(prefix)}
    atomic_write_text(_hash_record_path(), yaml.safe_dump(hashes, sort_keys=True))


def write_slim_vqgan(entry_name: str, architecture: dict, checkpoint: Path, slim: Path) -> str:
    """Keep only the generation weights of ``checkpoint`` as fp16 safetensors; return its sha256."""
    from pixgen.models.factory import VQGAN_METADATA_KEY, load_matching
    from pixgen.models.vqgan import VQGAN, VQGANConfig, generation_weights
    from pixgen.safe_load import load_state_dict, save_safetensors

    config = VQGANConfig.from_dict(architecture)
    weights = generation_weights(load_state_dict(checkpoint))
    load_matching(VQGAN(config), weights, f"{entry_name} ({checkpoint.name})")  # refuse a mismatch now
    metadata = {VQGAN_METADATA_KEY: json.dumps(config.to_dict()), "source_sha256": sha256_file(checkpoint)}
    slim.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(weights, slim, dtype=_fp16(), metadata=metadata)
    return sha256_file(slim)


def _fp16():
    import torch

    return torch.float16


def download_model(entry: ModelEntry, *, keep_original: bool = False, progress: bool = True,
                   offline: bool = False) -> list[str]:
    """Download a registered model's files (and slim a VQGAN); return notes for the user."""
    if entry.bundled is not None:
        return [f"{entry.name} is bundled with pixgen or imported; nothing to download"]
    if not entry.files:
        raise PixgenError(f"{entry.kind} model {entry.name!r} lists no files to download")
    if entry.is_available:
        return [f"{entry.name} is already downloaded ({entry.weights_path()})"]
    notes = []
    for role, spec in entry.files.items():
        dest = entry.file_path(role)
        digest = download(spec, dest, progress=progress, offline=offline or is_offline())
        if spec.sha256 is None:
            notes.append(f"{dest.name}: the registry has no sha256 for it yet; its sha256 is {digest} "
                         "(trust on first use: pixgen checks kept files against it from now on)")
    if entry.kind == "vqgan":
        checkpoint = entry.file_path("checkpoint")
        slim_hash = write_slim_vqgan(entry.name, entry.architecture, checkpoint, entry.slim_path)
        record_hash(entry.slim_path, slim_hash)
        notes.append(f"kept a slim copy of the generation weights: {entry.slim_path} "
                     f"({entry.slim_path.stat().st_size / 1e6:.0f} MB, sha256 {slim_hash})")
        if not keep_original:
            checkpoint.unlink()
    for role in entry.files:
        if entry.file_path(role).is_file():
            record_hash(entry.file_path(role), sha256_file(entry.file_path(role)))
    return notes


def expected_hash(entry: ModelEntry, path: Path) -> str | None:
    """The sha256 a file on disk must have: from the registry, else as recorded on first use."""
    for role, spec in entry.files.items():
        if entry.file_path(role) == path and spec.sha256:
            return spec.sha256
    if entry.bundled is not None and entry.bundled.path == path:
        return entry.bundled.sha256
    try:
        return known_hashes().get(str(path.relative_to(cache_dir())))
    except ValueError:
        return None


def model_files(entry: ModelEntry) -> list[Path]:
    """The files of a model that are on disk."""
    if entry.bundled is not None:
        return [entry.bundled.path] if entry.bundled.path.is_file() else []
    candidates = [entry.slim_path, *(entry.file_path(role) for role in entry.files)]
    return [path for path in candidates if path.is_file()]


def verify_model(entry: ModelEntry) -> list[FileCheck]:
    """Re-hash every file of a model on disk against its expected sha256."""
    checks = []
    for path in model_files(entry):
        expected, actual = expected_hash(entry, path), sha256_file(path)
        if expected is None:
            checks.append(FileCheck(path, True, f"sha256 {actual} (no reference hash known)"))
        elif expected == actual:
            checks.append(FileCheck(path, True, "sha256 matches"))
        else:
            checks.append(FileCheck(path, False, f"sha256 {actual}, expected {expected}"))
    return checks


def check_recorded_hash(entry: ModelEntry, path: Path) -> str:
    """Hash a cached file and compare it to the registry or first-use record; return the hash."""
    expected, actual = expected_hash(entry, path), sha256_file(path)
    if expected and expected != actual:
        raise ChecksumMismatch(f"{path} has sha256 {actual}, but {expected} was recorded for it; "
                               f"the file changed. Run: pixgen models remove {entry.name} && "
                               f"pixgen models download {entry.name}")
    return actual


def is_imported(entry: ModelEntry) -> bool:
    """Whether a model was imported from the user's own files into the cache."""
    return entry.bundled is not None and entry.bundled.path.is_relative_to(cache_dir())


def remove_model(entry: ModelEntry) -> Path:
    """Delete a downloaded or imported model's folder; bundled models cannot be removed."""
    if entry.bundled is not None and not is_imported(entry):
        raise PixgenError(f"{entry.name} is bundled with pixgen and cannot be removed")
    folder = entry.cache_folder
    if not folder.exists():
        raise PixgenError(f"{entry.name} is not downloaded; nothing to remove")
    shutil.rmtree(folder)
    forget_hashes(folder)
    if is_imported(entry):
        user_registry = cache_dir() / USER_REGISTRY
        data = yaml.safe_load(user_registry.read_text(encoding="utf-8")) or {}
        data.get(entry.kind, {}).pop(entry.name, None)
        atomic_write_text(user_registry, yaml.safe_dump(data, sort_keys=False))
    return folder


def import_vqgan(name: str, config_path: Path, checkpoint: Path, registry: Registry) -> Path:
    """Make a slim copy of the user's taming config + checkpoint and register it as ``name``."""
    from pixgen.models.factory import read_vqgan_config

    if registry.has("vqgan", name):
        raise PixgenError(f"a vqgan model named {name!r} is already registered; choose another name")
    if not checkpoint.is_file():
        raise PixgenError(f"checkpoint {checkpoint} does not exist")
    config = read_vqgan_config(config_path)
    folder = cache_dir() / "vqgan" / name
    slim = folder / "slim.safetensors"
    digest = write_slim_vqgan(name, config.to_dict(), checkpoint, slim)
    user_registry = cache_dir() / USER_REGISTRY
    data = (yaml.safe_load(user_registry.read_text(encoding="utf-8")) or {}) if user_registry.is_file() else {}
    data.setdefault("vqgan", {})[name] = {
        "description": f"imported from {checkpoint}",
        "architecture": config.to_dict(),
        "bundled": {"path": str(slim.relative_to(cache_dir())), "sha256": digest},
    }
    atomic_write_text(user_registry, yaml.safe_dump(data, sort_keys=False))
    return slim
