"""Who vouches for a model file's bytes: the registry's pinned sha256, or the one recorded on first use.

Hashes the registry does not pin are recorded after a download was checked to load (trust on
first use) in ``known_hashes.yaml`` in the cache, keyed by the file's path inside the cache, and
checked on every later load.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pixgen.errors import ChecksumMismatch, ConfigError
from pixgen.fileio import atomic_write_text
from pixgen.models.cache import cache_dir, inside_cache
from pixgen.models.downloads import sha256_file
from pixgen.models.registry import ModelEntry

KNOWN_HASHES = "known_hashes.yaml"
# Who vouches for a file: the best two verdicts of `pixgen models verify` (pixgen.models.store).
REGISTRY = "registry"  # the sha256 matches the one pinned in the registry
RECORDED = "recorded"  # the sha256 matches the one recorded when the file was first downloaded


def _hash_record_path() -> Path:
    return cache_dir() / KNOWN_HASHES


def _cache_key(path: Path) -> str:
    """A cached file's key in the hash record: its path relative to the cache dir."""
    return inside_cache(path).relative_to(cache_dir().resolve()).as_posix()


def read_cache_yaml(path: Path) -> object:
    """A YAML file pixgen keeps in its cache: {} when absent, None when unreadable or not YAML."""
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return None


def known_hashes() -> dict[str, str]:
    """Hashes recorded on first use, keyed by path relative to the cache dir."""
    path = _hash_record_path()
    data = read_cache_yaml(path)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"the hash record {path} is corrupt; delete it and run pixgen models verify "
                          "(files then show as unverified until downloaded again)")
    return {str(k): v for k, v in data.items()}


def record_hash(path: Path, digest: str) -> None:
    """Remember a file's sha256 (trust on first use); the file must lie inside the cache."""
    hashes = known_hashes()
    hashes[_cache_key(path)] = digest
    atomic_write_text(_hash_record_path(), yaml.safe_dump(hashes, sort_keys=True))


def forget_hashes(folder: Path) -> None:
    """Drop the recorded hashes of every file under ``folder`` (a folder inside the cache)."""
    prefix = _cache_key(folder) + "/"
    hashes = known_hashes()
    kept = {k: v for k, v in hashes.items() if not k.startswith(prefix)}
    if kept != hashes:
        atomic_write_text(_hash_record_path(), yaml.safe_dump(kept, sort_keys=True))


def reference_hash(entry: ModelEntry, path: Path) -> tuple[str | None, str]:
    """The sha256 a file on disk must have and who says so: (hash, REGISTRY | RECORDED), or (None, "")."""
    for role, spec in entry.files.items():
        if entry.file_path(role) == path and spec.sha256:
            return spec.sha256, REGISTRY
    if entry.bundled is not None and entry.bundled.path == path and entry.bundled.sha256:
        return entry.bundled.sha256, REGISTRY
    recorded = known_hashes().get(_cache_key(path))
    return (recorded, RECORDED) if recorded else (None, "")


def expected_hash(entry: ModelEntry, path: Path) -> str | None:
    """The sha256 a file on disk must have: from the registry, else as recorded on first use."""
    return reference_hash(entry, path)[0]


def check_recorded_hash(entry: ModelEntry, path: Path) -> str:
    """Hash a cached file and compare it to the registry or first-use record; return the hash."""
    expected, actual = expected_hash(entry, path), sha256_file(path)
    if expected and expected != actual:
        raise ChecksumMismatch(f"{path} has sha256 {actual}, but {expected} was recorded for it; "
                               f"the file changed. Run: pixgen models remove {entry.name} && "
                               f"pixgen models download {entry.name}")
    return actual
