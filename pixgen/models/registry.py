"""The model registry: ``checkpoints.yaml`` read into typed entries, and where their files live.

The built-in registry ships with the package, and each model pack (:mod:`pixgen.models.packs`)
adds its own file. Models imported with ``pixgen models import`` are listed in ``registry.yaml``
in the cache dir, and ``PIXGEN_REGISTRY`` may name extra YAML files (separated by the OS path
separator); their entries are added to, or replace, the built-in and the packs' ones.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pixgen.errors import ConfigError, UnknownModel
from pixgen.models.cache import cache_dir
from pixgen.models.downloads import FileSpec
from pixgen.models.packs import installed_packs

BUILTIN_REGISTRY = Path(__file__).parent.parent / "checkpoints.yaml"
USER_REGISTRY = "registry.yaml"  # models imported with `pixgen models import`, in the cache dir
KINDS = ("vqgan", "clip", "judge")
# A model name is one plain path component: letters, digits, "_", "-", "." and "+", starting with
# a letter, digit or "_" (so never "", ".", "..", "-x", or anything holding "/", "\\", ":" or ",").
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ENTRY_KEYS = frozenset({"description", "architecture", "model", "pretrained", "config", "bundled", "files"})
_FILE_KEYS = frozenset({"urls", "sha256", "size", "pinned", "alternatives", "format"})
_ROLES = {"vqgan": ("checkpoint",), "clip": ("weights",), "judge": ("weights",)}
_FORMATS = ("openai-torchscript",)
_DDCONFIG_INTS = ("ch", "out_ch", "in_channels", "resolution", "z_channels")  # num_res_blocks may be 0


def check_model_name(name: object) -> str:
    """Return ``name`` if it is one plain path component, else raise a one-line ConfigError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{name!r} is not a valid model name: use letters, digits, '_', '-', '.' and '+' "
                          "(at most 100, starting with a letter, digit or '_'); no paths")
    return name


def architecture_problem(arch: object) -> str | None:
    """What is wrong with a VQGAN ``architecture`` (taming model.params), or None if it is usable."""
    if not isinstance(arch, dict):
        return f"must be a mapping, not {type(arch).__name__}"
    for key in ("embed_dim", "n_embed"):
        if not _positive_int(arch.get(key)):
            return f"{key} must be a positive integer (got {arch.get(key)!r})"
    if arch.get("quantizer", "vq") not in ("vq", "gumbel"):
        return f"quantizer must be vq or gumbel (got {arch.get('quantizer')!r})"
    dd = arch.get("ddconfig")
    if not isinstance(dd, dict):
        return "ddconfig is missing or not a mapping"
    return _ddconfig_problem(dd)


def _ddconfig_problem(dd: dict) -> str | None:
    """What is wrong with a taming Encoder/Decoder ``ddconfig``, or None."""
    for key in _DDCONFIG_INTS:
        if not _positive_int(dd.get(key)):
            return f"ddconfig.{key} must be a positive integer (got {dd.get(key)!r})"
    blocks = dd.get("num_res_blocks")
    if not (_positive_int(blocks) or blocks == 0) or isinstance(blocks, bool):
        return f"ddconfig.num_res_blocks must be an integer >= 0 (got {blocks!r})"
    ch_mult = dd.get("ch_mult")
    if not isinstance(ch_mult, list) or not ch_mult or not all(_positive_int(m) for m in ch_mult):
        return f"ddconfig.ch_mult must be a non-empty list of positive integers (got {ch_mult!r})"
    attn = dd.get("attn_resolutions", [])
    if not isinstance(attn, list) or not all(_positive_int(r) for r in attn):
        return f"ddconfig.attn_resolutions must be a list of positive integers (got {attn!r})"
    if not isinstance(dd.get("double_z", False), bool):
        return f"ddconfig.double_z must be true or false (got {dd.get('double_z')!r})"
    return None


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class BundledFile:
    """A weights file shipped with the package (or listed by a local registry)."""

    path: Path
    sha256: str | None = None


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: how to build it and where its weights come from."""

    kind: str  # "vqgan", "clip" or "judge" (an evaluator for pixgen eval)
    name: str
    description: str = ""
    architecture: dict[str, Any] | None = None  # VQGAN: taming params + quantizer
    model: str | None = None  # CLIP: open_clip architecture name
    pretrained: str | None = None  # CLIP: open_clip pretrained tag (gives mean/std)
    config: Path | None = None  # CLIP: open_clip model config JSON (custom architectures)
    bundled: BundledFile | None = None
    files: dict[str, FileSpec] = field(default_factory=dict)  # downloadable files by role
    source: Path | None = None  # the registry file this entry came from
    pack: str | None = None  # the model pack whose registry lists it (pixgen.models.packs)

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
        """Look a model up by name; the error names close matches, or where the list is."""
        try:
            return self.entries[kind][name]
        except KeyError:
            names = self.names(kind)
            close = difflib.get_close_matches(name, names, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see pixgen models list"
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


class _Where:
    """Names the registry file and entry in error messages."""

    def __init__(self, path: Path, kind: str = "", name: str = ""):
        self.path, self.kind, self.name = path, kind, name

    def error(self, problem: str) -> ConfigError:
        entry = f" {self.kind} entry {self.name!r}" if self.name else ""
        return ConfigError(f"model registry {self.path}:{entry} {problem}")


def _file_spec(data: object, role: str, where: _Where, alternative: bool = False) -> FileSpec:
    """A validated FileSpec from one ``files`` (or ``alternatives``) item."""
    label = f"file {role!r}"
    if not isinstance(data, dict):
        raise where.error(f"{label} must be a mapping with urls and sha256")
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise where.error(f"{label} has unknown key {unknown[0]!r} (known: {', '.join(sorted(_FILE_KEYS))})")
    urls = data.get("urls")
    if not isinstance(urls, list) or not urls or not all(
            isinstance(u, str) and u.startswith(("https://", "http://")) for u in urls):
        raise where.error(f"{label}: urls must be a non-empty list of http(s) URLs")
    sha = _sha256(data, label, where, required=alternative)
    size = data.get("size")
    if size is not None and not _positive_int(size):
        raise where.error(f"{label}: size must be a positive number of bytes or null (got {size!r})")
    fmt = data.get("format")
    if fmt is not None and (not alternative or fmt not in _FORMATS):
        raise where.error(f"{label}: format {fmt!r} is only allowed on alternatives ({', '.join(_FORMATS)})")
    alternatives = data.get("alternatives") or []
    if alternative and alternatives or not isinstance(alternatives, list):
        raise where.error(f"{label}: alternatives must be a list of files (and cannot nest)")
    return FileSpec(urls=tuple(urls), sha256=sha, size=size, format=fmt,
                    alternatives=tuple(_file_spec(a, f"{role} alternative", where, True) for a in alternatives))


def _sha256(data: dict, label: str, where: _Where, required: bool) -> str | None:
    """The pinned sha256 of a file spec, or None with an explicit ``pinned: first-download``."""
    sha, pinned = data.get("sha256"), data.get("pinned")
    if sha is None:
        if required or pinned != "first-download":
            raise where.error(f"{label}: sha256 is null, so it needs `pinned: first-download`"
                              + (" (alternatives must pin their sha256)" if required else ""))
        return None
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha.strip().lower()):
        raise where.error(f"{label}: sha256 must be 64 hex digits or null (got {sha!r})")
    if pinned not in (None, "registry"):
        raise where.error(f"{label}: a file with a sha256 is pinned by the registry, not {pinned!r}")
    return sha.strip().lower()


def _bundled(data: object, base: Path, where: _Where) -> BundledFile:
    """A validated ``bundled: {path, sha256}`` block."""
    if not isinstance(data, dict) or not isinstance(data.get("path"), str) or not data["path"]:
        raise where.error("bundled must be a mapping with a path (and sha256)")
    sha = data.get("sha256")
    if sha is not None and (not isinstance(sha, str) or not _SHA256.fullmatch(sha.lower())):
        raise where.error(f"bundled sha256 must be 64 hex digits or null (got {sha!r})")
    return BundledFile(base / data["path"], sha.lower() if sha else None)


def _check_shape(kind: str, data: dict, where: _Where) -> None:
    """Refuse entries of the wrong shape before anything is built from them."""
    unknown = sorted(set(data) - _ENTRY_KEYS)
    if unknown:
        raise where.error(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_ENTRY_KEYS))})")
    if ("bundled" in data) == ("files" in data):
        raise where.error("needs exactly one of bundled (a local file) or files (downloads)")
    files = data.get("files")
    if files is not None:
        if not isinstance(files, dict) or not files:
            raise where.error("files must be a mapping of role to file")
        wrong = sorted(set(files) - set(_ROLES[kind]))
        if wrong:
            raise where.error(f"file role {wrong[0]!r} is not one of {', '.join(_ROLES[kind])}")
    if kind == "vqgan" and ("architecture" in data or files is not None):
        problem = architecture_problem(data.get("architecture"))
        if problem:
            raise where.error(f"architecture: {problem}")
    if kind == "clip" and not any(isinstance(data.get(k), str) and data[k] for k in ("model", "config")):
        raise where.error("a CLIP needs model (an open_clip architecture name) or config (a model JSON)")
    for key in ("description", "model", "pretrained", "config"):
        if key in data and not isinstance(data[key], str):
            raise where.error(f"{key} must be a string")


def _entry(kind: str, name: str, data: object, source: Path, pack: str | None) -> ModelEntry:
    where = _Where(source, kind, str(name))
    try:
        check_model_name(name)
    except ConfigError as err:
        raise where.error(str(err)) from None
    if not isinstance(data, dict):
        raise where.error(f"must be a mapping, not {type(data).__name__}")
    _check_shape(kind, data, where)
    base = source.parent
    return ModelEntry(
        kind=kind,
        name=name,
        description=str(data.get("description", "")),
        architecture=data.get("architecture"),
        model=data.get("model"),
        pretrained=data.get("pretrained"),
        config=base / data["config"] if data.get("config") else None,
        bundled=_bundled(data["bundled"], base, where) if "bundled" in data else None,
        files={role: _file_spec(spec, role, where) for role, spec in (data.get("files") or {}).items()},
        source=source,
        pack=pack,
    )


def _read_yaml(path: Path) -> dict:
    """The registry file's top-level mapping; every problem is one ConfigError naming the file."""
    advice = "fix or delete it" if _is_user_registry(path) else "fix it"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"model registry {path} is not UTF-8 text; {advice}") from None
    except OSError as err:
        raise ConfigError(f"cannot read model registry {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"model registry {path} is not valid YAML ({problem}{at}); {advice}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"model registry {path} must be a mapping of kinds ({', '.join(KINDS)}); {advice}")
    unknown = sorted(str(k) for k in set(data) - set(KINDS))
    if unknown:
        raise ConfigError(f"model registry {path}: unknown section {unknown[0]!r} (known: {', '.join(KINDS)})")
    return data


def _is_user_registry(path: Path) -> bool:
    """Whether ``path`` is the cache's own registry of imported models."""
    return Path(path).resolve() == (cache_dir() / USER_REGISTRY).resolve()


def _check_imported_paths(entries: dict[str, dict[str, ModelEntry]], path: Path) -> None:
    """Imported models' files must lie inside the cache: nothing else is pixgen's to touch."""
    root = cache_dir().resolve()
    for kind, named in entries.items():
        for name, entry in named.items():
            target = entry.bundled.path.resolve() if entry.bundled else root
            if target == root or not target.is_relative_to(root):
                raise _Where(path, kind, name).error(
                    f"points outside the pixgen cache ({entry.bundled.path if entry.bundled else 'no path'}); "
                    "fix or delete this registry")


def read_registry_file(path: Path, pack: str | None = None) -> dict[str, dict[str, ModelEntry]]:
    """Parse and validate one registry YAML file (``pack``'s, if given); relative paths in it are
    relative to the file."""
    path = Path(path)
    data = _read_yaml(path)
    entries: dict[str, dict[str, ModelEntry]] = {kind: {} for kind in KINDS}
    for kind in KINDS:
        section = data.get(kind) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"model registry {path}: section {kind!r} must be a mapping of names to entries")
        for name, spec in section.items():
            entries[kind][name] = _entry(kind, name, spec, path, pack)
    if _is_user_registry(path):
        _check_imported_paths(entries, path)
    return entries


def load_registry() -> Registry:
    """The model packs' registries, the built-in one, models imported into the cache, and files named
    by ``PIXGEN_REGISTRY``, each adding to or replacing the entries before it."""
    sources = [(pack.registry, pack.name) for pack in installed_packs().values() if pack.registry is not None]
    sources.append((BUILTIN_REGISTRY, None))
    imported = cache_dir() / USER_REGISTRY
    if imported.is_file():
        sources.append((imported, None))
    sources += [(Path(path), None) for path in os.environ.get("PIXGEN_REGISTRY", "").split(os.pathsep) if path]
    entries: dict[str, dict[str, ModelEntry]] = {kind: {} for kind in KINDS}
    for path, pack in sources:
        for kind, more in read_registry_file(path, pack).items():
            entries[kind].update(more)
    return Registry(entries)
