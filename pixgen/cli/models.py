"""Models: ``pixgen models list|download|verify|path|remove|import``."""

from __future__ import annotations

from pathlib import Path

import click

from pixgen.cli.common import quiet_option, reports_errors


@click.group()
def models() -> None:
    """List, download and verify models."""


def model_state(entry) -> str:
    """bundled, imported, downloaded, not downloaded, or missing (a bundled file that is gone)."""
    from pixgen.models.store import is_imported

    if entry.bundled is not None:
        kind = "imported" if is_imported(entry) else "bundled"
        return kind if entry.is_available else "missing"
    return "downloaded" if entry.is_available else "not downloaded"


@models.command("list")
@reports_errors
def models_list() -> None:
    """List registered models and whether each is on disk.

    Example: pixgen models list
    """
    from pixgen.config import RunConfig
    from pixgen.models.registry import KINDS, load_registry
    from pixgen.models.store import model_size, pin_status

    registry, defaults = load_registry(), RunConfig()
    for kind in KINDS:
        click.echo(f"{kind.upper()} models:")
        for name in registry.names(kind):
            entry = registry.get(kind, name)
            state = model_state(entry)
            mark = "*" if name == defaults.vqgan or name in defaults.clip else " "
            click.echo(f" {mark} {name:<26} {state:<15} {_size_text(model_size(entry)):>9}  "
                       f"{pin_status(entry):<22} {entry.description}")
    click.echo("sha256: 'registry' = pinned in the registry; 'first download' = pinned when it was downloaded "
               "and checked to load; 'pinned on download' = no hash is published, pixgen will pin it.")
    click.echo("* default: the bundled shapes-world models work offline, with no download. "
               "For real-world prompts, download a standard VQGAN and CLIP and use "
               "--preset quality (see `pixgen presets show quality`).")


def _size_text(size: int | None) -> str:
    """A byte count for humans ("?" when unknown)."""
    if size is None:
        return "?"
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def _entries(names: tuple[str, ...]):
    """Registry entries for NAMES (every registered model when none are given)."""
    from pixgen.models.registry import KINDS, load_registry

    registry = load_registry()
    if not names:
        return [registry.get(kind, name) for kind in KINDS for name in registry.names(kind)]
    return [entry for name in names for entry in registry.find(name)]


@models.command("download")
@click.argument("names", nargs=-1, required=True)
@click.option("--keep-original", is_flag=True, help="Keep the full training checkpoint beside the slim copy.")
@quiet_option("No progress bar.")
@reports_errors
def models_download(names, keep_original, quiet) -> None:
    """Download models, check that they load as what they claim, pin their sha256, keep a slim copy of VQGANs.

    Example: pixgen models download vqgan_imagenet_f16_16384 ViT-B-32-openai
    """
    from pixgen.models.store import download_model

    for entry in _entries(names):
        for note in download_model(entry, keep_original=keep_original, progress=not quiet):
            click.echo(f"{entry.name}: {note}")
        click.echo(f"{entry.name}: ready")


@models.command("verify")
@click.argument("names", nargs=-1)
@reports_errors
def models_verify(names) -> None:
    """Re-hash model files on disk (all models if no NAME is given).

    Each file is "registry" (matches the sha256 pinned in the registry), "recorded" (matches the
    sha256 pinned at its first download), "unverified" (no reference hash: it loads, but nothing
    vouches for it), "mismatch" or "corrupt" (no reference and it does not load).
    Exit status: 0 every file verified, 1 a mismatch or corrupt file, 3 some files unverified.

    Example: pixgen models verify vqgan_imagenet_f16_16384
    """
    from pixgen.models.store import UNVERIFIED, verify_model

    checks = []
    for entry in _entries(names):
        found = verify_model(entry)
        if not found and names:
            click.echo(f"{entry.name}: not downloaded")
        for check in found:
            click.echo(f"{entry.name}: {check.status} {check.path}: {check.detail}")
        checks += found
    failed = sum(not check.ok for check in checks)
    if failed:
        raise click.ClickException(f"{failed} file(s) failed verification; "
                                   "remove and download them again (pixgen models remove NAME)")
    unverified = sum(check.status == UNVERIFIED for check in checks)
    if unverified:
        click.echo(f"{unverified} file(s) load but have no reference hash: unverified (exit status 3)", err=True)
        click.get_current_context().exit(3)


@models.command("path")
@click.argument("name", required=False)
@reports_errors
def models_path(name) -> None:
    """Print where models are stored (or the weights file of NAME).

    Example: pixgen models path vqgan_imagenet_f16_16384
    """
    from pixgen.models.cache import cache_dir

    if name is None:
        click.echo(cache_dir())
        return
    for entry in _entries((name,)):
        click.echo(entry.weights_path() or entry.cache_folder)


@models.command("remove")
@click.argument("names", nargs=-1, required=True)
@reports_errors
def models_remove(names) -> None:
    """Delete downloaded or imported models from the cache.

    Example: pixgen models remove wikiart_16384
    """
    from pixgen.models.registry import check_model_name
    from pixgen.models.store import remove_model

    for name in names:
        check_model_name(name)
    for entry in _entries(names):
        click.echo(f"{entry.name}: removed {remove_model(entry)}")


@models.command("import")
@click.argument("name")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The taming model YAML.")
@click.option("--ckpt", "checkpoint", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The taming .ckpt (or .safetensors) checkpoint.")
@reports_errors
def models_import(name, config_path, checkpoint) -> None:
    """Import a VQGAN you already have on disk as NAME (a slim fp16 copy in the cache).

    Example: pixgen models import my_vqgan --config model.yaml --ckpt last.ckpt
    """
    from pixgen.models.registry import load_registry
    from pixgen.models.store import import_vqgan

    slim = import_vqgan(name, config_path, checkpoint, load_registry())
    click.echo(f"{name}: imported as {slim} ({slim.stat().st_size / 1e6:.1f} MB); use --vqgan {name}")
