"""The model registry: ``checkpoints.yaml`` read into typed entries, and where their files live.

The built-in registry ships with the package. Models imported with ``pixgen models import`` are
listed in ``registry.yaml`` in the cache dir, and ``PIXGEN_REGISTRY`` may name extra YAML files
(separated by the OS path separator); their entries are added to, or replace, the built-in ones.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pixgen.cache import cache_dir
from pixgen.downloads import FileSpec
from pixgen.errors import ConfigError, UnknownModel

BUILTIN_REGISTRY = Path(__file__).parent / "checkpoints.yaml"
KINDS = ("vqgan", "clip", "judge")


@dataclass(frozen=True)
class BundledFile:
    """A weights file shipped with the package (or listed by a local registry)."""

    path: Path
    sha256: str | None = None


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: how to build it and where its weights come from."""

    kind: str  # "vqgan", "clip" or "judge" (the shapes-world evaluator)
    name: str
    description: str = ""
    architecture: dict[str, Any] | None = None  # VQGAN: taming params + quantizer
    model: str | None = None  # CLIP: open_clip architecture name
    pretrained: str | None = None  # CLIP: open_clip pretrained tag (gives mean/std)
    config: Path | None = None  # CLIP: open_clip model config JSON (custom architectures)
    bundled: BundledFile | None = None
    files: dict[str, FileSpec] = field(default_factory=dict)  # downloadable files by role

    @property
    def cache_folder(self) -> Path:
        """Where downloaded files of this model live."""
        return cache_dir() / self.kind / self.name

    def file_path(self, role: str) -> Path:
        """The local path of one downloadable file (it may not exist yet)."""
        suffix = {"checkpoint": ".ckpt", "config": ".yaml", "weights": ".safetensors"}.get(role, "")
        return self.cache_folder / f"{role}{suffix}"

    @property
    def slim_path(self) -> Path:
        """The slim fp16 safetensors copy kept after a VQGAN download."""
        return self.cache_folder / "slim.safetensors"

    def weights_path(self) -> Path | None:
        """The best weights file on disk: bundled, slim copy, then original download."""
        if self.bundled is not None:
            return self.bundled.path if self.bundled.path.is_file() else None
        role = "checkpoint" if self.kind == "vqgan" else "weights"
        for path in (self.slim_path, self.file_path(role)):
            if path.is_file():
                return path
        return None

    @property
    def is_available(self) -> bool:
        """Whether this model can be loaded without a download."""
        return self.weights_path() is not None


@dataclass
class Registry:
    """All registered models, by kind and name."""

    entries: dict[str, dict[str, ModelEntry]]

    def names(self, kind: str) -> list[str]:
        """Registered names of one kind, in registry order."""
        return list(self.entries[kind])

    def get(self, kind: str, name: str) -> ModelEntry:
        """Look a model up by name; the error lists close matches or all names."""
        try:
            return self.entries[kind][name]
        except KeyError:
            names = self.names(kind)
            close = difflib.get_close_matches(name, names, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"available: {', '.join(names)}"
            raise UnknownModel(f"unknown {kind} model {name!r}; {hint}") from None

    def find(self, name: str) -> list[ModelEntry]:
        """Every entry called ``name``, of any kind; the error suggests close names of every kind."""
        found = [kinds[name] for kinds in self.entries.values() if name in kinds]
        if not found:
            names = [n for kind in KINDS for n in self.names(kind)]
            close = difflib.get_close_matches(name, names, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see pixgen models list"
            raise UnknownModel(f"unknown model {name!r}; {hint}")
        return found

    def has(self, kind: str, name: str) -> bool:
        """Whether ``name`` is a registered model of ``kind``."""
        return name in self.entries[kind]


def _file_spec(data: dict[str, Any]) -> FileSpec:
    return FileSpec(urls=tuple(data.get("urls") or ()), sha256=data.get("sha256"),
                    size=data.get("size"))


def _entry(kind: str, name: str, data: dict[str, Any], base: Path) -> ModelEntry:
    bundled = data.get("bundled")
    return ModelEntry(
        kind=kind,
        name=name,
        description=str(data.get("description", "")),
        architecture=data.get("architecture"),
        model=data.get("model"),
        pretrained=data.get("pretrained"),
        config=base / data["config"] if data.get("config") else None,
        bundled=BundledFile(base / bundled["path"], bundled.get("sha256")) if bundled else None,
        files={role: _file_spec(spec) for role, spec in (data.get("files") or {}).items()},
    )


def read_registry_file(path: Path) -> dict[str, dict[str, ModelEntry]]:
    """Parse one registry YAML file; relative paths in it are relative to the file."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read model registry {path}: {err}") from None
    entries: dict[str, dict[str, ModelEntry]] = {kind: {} for kind in KINDS}
    for kind in KINDS:
        for name, spec in (data.get(kind) or {}).items():
            if not isinstance(spec, dict):
                raise ConfigError(f"registry {path}: {kind} entry {name!r} must be a mapping")
            entries[kind][str(name)] = _entry(kind, str(name), spec, Path(path).parent)
    return entries


def load_registry() -> Registry:
    """The built-in registry, models imported into the cache, and files named by ``PIXGEN_REGISTRY``."""
    entries = read_registry_file(BUILTIN_REGISTRY)
    imported = cache_dir() / "registry.yaml"
    extra = [str(imported)] if imported.is_file() else []
    extra += os.environ.get("PIXGEN_REGISTRY", "").split(os.pathsep)
    for path in filter(None, extra):
        for kind, more in read_registry_file(Path(path)).items():
            entries[kind].update(more)
    return Registry(entries)
