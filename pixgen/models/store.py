"""The local model store: download, check, slim, verify, import and remove registered models.

Files live under ``cache_dir()/KIND/NAME/``. A download is moved into place only after it was
checked to load as the model it claims to be (a VQGAN checkpoint's keys and shapes match the
registry architecture; CLIP weights load into the named open_clip architecture); a failed check
deletes it. After a VQGAN download pixgen keeps a slim copy (generation weights only, fp16
safetensors, architecture in its metadata) and deletes the ~1 GB training checkpoint unless asked
to keep it. Hashes the registry does not pin are recorded after that check (trust on first use)
in ``known_hashes.yaml`` and checked afterwards (:mod:`pixgen.models.hashes`). Models imported
from the user's own taming files are listed in ``registry.yaml`` in the cache. Every path written
or deleted is checked to lie inside the cache first.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from pixgen.errors import CheckpointError, ConfigError, DownloadError, PixgenError
from pixgen.fileio import atomic_write_text
from pixgen.models.cache import cache_dir, inside_cache, is_offline
from pixgen.models.downloads import FileSpec, download, part_path, sha256_file
from pixgen.models.hashes import REGISTRY, forget_hashes, read_cache_yaml, record_hash, reference_hash
from pixgen.models.packs import judge_pack
from pixgen.models.registry import USER_REGISTRY, ModelEntry, Registry, check_model_name

# The other verdicts of `pixgen models verify`, after hashes.REGISTRY and hashes.RECORDED.
UNVERIFIED = "unverified"  # no reference hash: the file loads as its model, but nothing vouches for it
MISMATCH = "mismatch"  # the sha256 differs from the reference: corrupt or replaced
CORRUPT = "corrupt"  # no reference hash and the file does not load as its model
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")  # not weights


@dataclass
class FileCheck:
    """The verdict on one file of a model."""

    path: Path
    ok: bool
    detail: str
    status: str = ""  # one of REGISTRY, RECORDED, UNVERIFIED, MISMATCH, CORRUPT



















# --- load checks ----------------------------------------------------------------------------

def load_check(entry: ModelEntry, fmt: str | None = None) -> Callable[[Path], None]:
    """A function that raises a PixgenError unless a file loads as ``entry``'s model."""
    from pixgen.models import factory

    def check(path: Path) -> None:
        if entry.kind == "vqgan":
            architecture = entry.architecture or _stored_architecture(path)
            factory.check_vqgan_file(path, architecture, f"{entry.name} ({path.name})", fmt)
        elif entry.kind == "clip":
            factory.check_clip_file(entry, path, fmt)
        else:
            judge_pack(entry.pack).load_judge(path)
    return check


def _stored_architecture(path: Path) -> dict:
    """The VQGAN architecture in a pixgen safetensors file's metadata."""
    from pixgen.models.factory import safetensors_vqgan_config

    config = safetensors_vqgan_config(path) if path.suffix == ".safetensors" else None
    if config is None:
        raise CheckpointError(f"{path} has no architecture: neither the registry nor the file gives one")
    return config.to_dict()


def _load_problem(entry: ModelEntry, path: Path) -> str | None:
    """Why a file does not load as its model, or None when it does."""
    try:
        load_check(entry)(path)
    except PixgenError as err:
        return str(err)
    except (RuntimeError, ValueError, OSError) as err:  # a broken file can fail deep inside torch
        return " ".join(str(err).split())[:200] or type(err).__name__
    return None


# --- download -------------------------------------------------------------------------------

def write_slim_vqgan(entry_name: str, architecture: dict, checkpoint: Path, slim: Path) -> str:
    """Keep only the generation weights of ``checkpoint`` as fp16 safetensors; return its sha256."""
    from pixgen.models.factory import VQGAN_METADATA_KEY, load_matching, vqgan_config_from, vqgan_weights
    from pixgen.models.safe_load import load_state_dict, save_safetensors
    from pixgen.models.vqgan import VQGAN

    config = vqgan_config_from(architecture, f"{entry_name} architecture")
    weights = vqgan_weights(load_state_dict(checkpoint))
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
    """Download a registered model's files, check that they load, slim a VQGAN; return notes for the user."""
    if entry.bundled is not None:
        return [f"{entry.name} is bundled with pixgen or imported; nothing to download"]
    if not entry.files:
        raise PixgenError(f"{entry.kind} model {entry.name!r} lists no files to download")
    if entry.is_available:
        return [f"{entry.name} is already downloaded ({entry.weights_path()})"]
    inside_cache(entry.cache_folder)
    notes, digests = [], {}
    for role, spec in entry.files.items():
        dest = entry.file_path(role)
        inside_cache(dest)
        digests[dest], source = _fetch_checked(entry, spec, dest, progress, offline or is_offline())
        notes.append(_download_note(dest, spec, digests[dest], source))
    if entry.kind == "vqgan":
        notes.append(_slim(entry, keep_original))
    for dest, digest in digests.items():
        if dest.is_file():  # checked to load above: only now is its hash trusted
            record_hash(dest, digest)
    return notes


def _download_note(dest: Path, spec: FileSpec, digest: str, source: str) -> str:
    """What the user should know about how a downloaded file was verified."""
    if source:
        return f"{dest.name}: {source}; it loads as its model (sha256 {digest} recorded)"
    if spec.sha256:
        return f"{dest.name}: sha256 matches the registry and it loads as its model"
    return (f"{dest.name}: loads as its model; no sha256 is published for it, so pixgen pinned the one it "
            f"computed on this first download: {digest} (trust on first use: checked from now on)")


def _slim(entry: ModelEntry, keep_original: bool) -> str:
    """Write a downloaded VQGAN's slim copy, record its hash, drop the checkpoint unless kept."""
    checkpoint = entry.file_path("checkpoint")
    slim = entry.slim_path
    inside_cache(slim)
    slim_hash = write_slim_vqgan(entry.name, entry.architecture, checkpoint, slim)
    record_hash(slim, slim_hash)
    if not keep_original:
        inside_cache(checkpoint).unlink()
    return (f"kept a slim copy of the generation weights: {slim} "
            f"({slim.stat().st_size / 1e6:.0f} MB, sha256 {slim_hash})")


def _fetch_checked(entry: ModelEntry, spec: FileSpec, dest: Path, progress: bool,
                   offline: bool) -> tuple[str, str]:
    """Get one file from the first source whose bytes pass the hash and load checks.

    Returns (sha256, "" or a note on how an alternative-format source was converted).
    """
    fmt = "safetensors" if dest.suffix == ".safetensors" else "pickle"
    check = load_check(entry, fmt)
    errors: list[PixgenError] = []
    for url in spec.urls:
        try:
            single = FileSpec((url,), spec.sha256, spec.size)
            return download(single, dest, progress=progress, offline=offline, check=check), ""
        except (DownloadError, CheckpointError) as err:
            errors.append(err)
    for alternative in spec.alternatives:
        try:
            return _fetch_alternative(entry, alternative, dest, check, progress, offline)
        except (DownloadError, CheckpointError) as err:
            errors.append(err)
    if len(errors) == 1:
        raise errors[0]
    raise DownloadError(f"could not get a good {dest.name} for {entry.name} from any of its {len(errors)} "
                        "sources: " + "; ".join(str(err).rstrip(".") for err in errors) + ".")


def _fetch_alternative(entry: ModelEntry, spec: FileSpec, dest: Path, check: Callable[[Path], None],
                       progress: bool, offline: bool) -> tuple[str, str]:
    """Download an alternative-format file (its sha256 pinned), convert it to ``dest`` and check it."""
    from pixgen.models.safe_load import save_safetensors

    raw = inside_cache(dest.with_name(dest.stem + ".download"))
    download(spec, raw, progress=progress, offline=offline)  # moved into place only if the sha256 matches
    try:
        state = _openai_state(raw)
        staged = part_path(dest)
        save_safetensors(state, staged)
        try:
            check(staged)
        except PixgenError as err:
            staged.unlink(missing_ok=True)
            raise CheckpointError(f"{spec.urls[0]} has the pinned sha256 but does not load as "
                                  f"{entry.name} ({err}); nothing was kept") from None
        os.replace(staged, dest)
    finally:
        raw.unlink(missing_ok=True)
    return sha256_file(dest), f"converted from {spec.urls[0]}, whose sha256 matched the registry"


def _openai_state(path: Path) -> dict:
    """The tensors of an OpenAI CLIP archive, read only after its pinned sha256 matched."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    except RuntimeError:
        from pixgen.models.safe_load import load_state_dict

        state = load_state_dict(path, fmt="pickle")  # a plain state dict needs no TorchScript
    return {k: v for k, v in state.items() if k not in _OPENAI_EXTRA_KEYS}


# --- what `models list` shows -------------------------------------------------------------------

def model_size(entry: ModelEntry) -> int | None:
    """Bytes of the weights on disk, else of the download when the registry knows every size."""
    weights = entry.weights_path()
    if weights is not None:
        return weights.stat().st_size
    sizes = [spec.size for spec in entry.files.values()]
    return sum(sizes) if sizes and None not in sizes else None


def pin_status(entry: ModelEntry) -> str:
    """Who pins the weights' sha256: "registry", "first download", "pinned on download" or "no hash"."""
    if entry.bundled is not None:
        return "registry" if entry.bundled.sha256 else "no hash"
    if all(spec.sha256 for spec in entry.files.values()):
        return "registry"
    weights = entry.weights_path()
    if weights is not None and reference_hash(entry, weights)[0]:
        return "first download"
    return "no hash" if weights is not None else "pinned on download"


# --- verify -----------------------------------------------------------------------------------

def model_files(entry: ModelEntry) -> list[Path]:
    """The files of a model that are on disk."""
    if entry.bundled is not None:
        return [entry.bundled.path] if entry.bundled.path.is_file() else []
    candidates = [entry.slim_path, *(entry.file_path(role) for role in entry.files)]
    return [path for path in candidates if path.is_file()]


def verify_file(entry: ModelEntry, path: Path) -> FileCheck:
    """Re-hash one file against its reference; with no reference, check that it still loads."""
    expected, source = reference_hash(entry, path)
    actual = sha256_file(path)
    if expected is None:
        problem = _load_problem(entry, path)
        if problem:
            return FileCheck(path, False, f"no reference hash, and it does not load: {problem}", CORRUPT)
        return FileCheck(path, True, f"no reference hash: loads, unverified (sha256 {actual})", UNVERIFIED)
    if expected == actual:
        what = "the registry's sha256" if source == REGISTRY else "the sha256 recorded at first download"
        return FileCheck(path, True, f"matches {what}", source)
    who = "the registry pins" if source == REGISTRY else "the first download recorded"
    return FileCheck(path, False, f"sha256 {actual}, but {who} {expected}", MISMATCH)


def verify_model(entry: ModelEntry) -> list[FileCheck]:
    """Verify every file of a model on disk (see :func:`verify_file`)."""
    return [verify_file(entry, path) for path in model_files(entry)]




# --- import and remove --------------------------------------------------------------------------

def is_imported(entry: ModelEntry) -> bool:
    """Whether a model was imported from the user's own files into the cache."""
    user_registry = (cache_dir() / USER_REGISTRY).resolve()
    if entry.source is not None:
        return entry.bundled is not None and Path(entry.source).resolve() == user_registry
    return entry.bundled is not None and entry.bundled.path.resolve().is_relative_to(cache_dir().resolve())


def _model_folder(entry: ModelEntry) -> Path:
    """The entry's own folder in the cache, resolved; refused unless it is exactly cache/KIND/NAME."""
    check_model_name(entry.name)
    folder = inside_cache(entry.cache_folder)
    if folder.parent != (cache_dir() / entry.kind).resolve() or folder.name != entry.name:
        raise PixgenError(f"refusing to delete {entry.cache_folder}: it resolves to {folder}, "
                          f"not to {entry.name}'s own folder in the pixgen cache")
    return folder


def remove_model(entry: ModelEntry) -> Path:
    """Delete a downloaded or imported model's folder; bundled models cannot be removed."""
    imported = is_imported(entry)
    if entry.bundled is not None and not imported:
        raise PixgenError(f"{entry.name} is bundled with pixgen and cannot be removed")
    folder = _model_folder(entry)
    if not folder.exists() and not imported:
        raise PixgenError(f"{entry.name} is not downloaded; nothing to remove")
    if folder.exists():
        shutil.rmtree(folder)
        forget_hashes(folder)
    if imported:
        _unregister(entry)
    return folder


def _read_user_registry() -> dict:
    """The cache's registry of imported models as plain data ({} when there is none)."""
    path = cache_dir() / USER_REGISTRY
    data = read_cache_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"model registry {path} is corrupt; fix or delete it")
    return data


def _unregister(entry: ModelEntry) -> None:
    """Drop an imported model from the cache's registry."""
    data = _read_user_registry()
    section = data.get(entry.kind)
    if isinstance(section, dict):
        section.pop(entry.name, None)
    atomic_write_text(inside_cache(cache_dir() / USER_REGISTRY), yaml.safe_dump(data, sort_keys=False))


def import_vqgan(name: str, config_path: Path, checkpoint: Path, registry: Registry) -> Path:
    """Make a slim copy of the user's taming config + checkpoint and register it as ``name``."""
    from pixgen.models.factory import read_vqgan_config

    check_model_name(name)
    if registry.has("vqgan", name):
        raise PixgenError(f"a vqgan model named {name!r} is already registered; choose another name")
    if not Path(checkpoint).is_file():
        raise PixgenError(f"checkpoint {checkpoint} does not exist")
    config = read_vqgan_config(config_path)
    folder = inside_cache(cache_dir() / "vqgan" / name)
    if folder.exists():
        raise PixgenError(f"{folder} already exists; choose another name or delete that folder")
    slim = folder / "slim.safetensors"
    digest = write_slim_vqgan(name, config.to_dict(), checkpoint, slim)
    data = _read_user_registry()
    data.setdefault("vqgan", {})[name] = {
        "description": f"imported from {checkpoint}",
        "architecture": config.to_dict(),
        "bundled": {"path": slim.relative_to(cache_dir().resolve()).as_posix(), "sha256": digest},
    }
    atomic_write_text(inside_cache(cache_dir() / USER_REGISTRY), yaml.safe_dump(data, sort_keys=False))
    return slim
