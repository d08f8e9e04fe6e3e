"""Model packs: models that come with their own knowledge, plugged in through one small interface.

A pack is a module that defines ``PACK = Pack(...)``. pixgen finds the packs bundled with it in
the ``pixgen.packs`` namespace, and installed ones through the ``pixgen.packs`` entry-point group
(``my_pack = my_package.pixgen_pack``). Nothing in pixgen imports a pack by name: the engine,
pipeline, CLI, model store and factory only call the hooks below, each of which may be None.

- ``registry``: a ``checkpoints.yaml`` of the pack's models (paths relative to it). Packs'
  registries are read first, so the built-in one, imported models and ``PIXGEN_REGISTRY`` can
  replace their entries; each entry remembers its pack (``ModelEntry.pack``).
- ``register_architectures()``: make the pack's custom architectures known (e.g. a timm image
  tower its CLIP configs name) before an open_clip model config is built.
- ``read_prompts(prompts, clips)``: rewrite a run's prompts for the pack's CLIPs (restating); it
  applies only when every guiding CLIP is one of the pack's, and only with ``restate: true``.
- ``prompt_notice(text)``: one line to show the user about a prompt the pack's CLIPs cannot read
  well (or None); shown when every guiding CLIP is one of the pack's.
- ``load_judge(path)``: load a ``judge`` entry's weights (an object with ``predict`` and
  ``predict_both``, see :class:`EvalWorld`).
- ``eval_world()``: the world ``pixgen eval`` measures prompt fidelity in (:class:`EvalWorld`).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pixgen.errors import ConfigError, UnknownModel

if TYPE_CHECKING:
    from pixgen.models.clip import CLIPScorer
    from pixgen.prompts import Prompt

BUNDLED_NAMESPACE = "pixgen.packs"  # packs shipped inside pixgen live in this namespace package
ENTRY_POINT_GROUP = "pixgen.packs"


class EvalWorld(Protocol):
    """What ``pixgen eval`` needs to know about a world to judge prompt fidelity in it."""

    attributes: tuple[str, ...]  # what a prompt can name and the judge reads, e.g. shape, colour, background
    canonical: str  # the name of the wording group its training captions use

    def default_prompts(self) -> list[str]:
        """The prompts evaluated when none are given (held out from training)."""

    def expected(self, prompt: str) -> dict[str, str | None]:
        """The attribute values ``prompt`` names (None: not named)."""

    def captions(self) -> list[tuple[dict[str, str], str]]:
        """Every full combination of attributes with its caption (for zero-shot CLIP scoring)."""

    def worded_prompts(self) -> list[tuple[str, str, dict[str, str | None]]]:
        """(wording group, prompt, expected attributes) for the held-out prompts in many wordings."""


@dataclass(frozen=True)
class Pack:
    """What a model pack adds to pixgen (see the module docstring for each hook)."""

    name: str
    registry: Path | None = None
    register_architectures: Callable[[], None] | None = None
    read_prompts: Callable[[list[Prompt], list[CLIPScorer]], list[Prompt]] | None = None
    prompt_notice: Callable[[str], str | None] | None = None
    load_judge: Callable[[Path], Any] | None = None
    eval_world: Callable[[], EvalWorld] | None = None


def _pack_modules() -> list[str]:
    """Module names of the bundled packs, then of the installed ones."""
    bundled = importlib.import_module(BUNDLED_NAMESPACE)
    names = [f"{BUNDLED_NAMESPACE}.{info.name}" for info in pkgutil.iter_modules(bundled.__path__) if info.ispkg]
    names += [point.value for point in entry_points(group=ENTRY_POINT_GROUP)]
    return list(dict.fromkeys(names))


@functools.lru_cache(maxsize=1)
def installed_packs() -> dict[str, Pack]:
    """Every pack pixgen can find, by name."""
    packs: dict[str, Pack] = {}
    for module_name in _pack_modules():
        pack = getattr(importlib.import_module(module_name), "PACK", None)
        if not isinstance(pack, Pack):
            raise ConfigError(f"model pack {module_name} defines no PACK = pixgen.models.packs.Pack(...)")
        packs[pack.name] = pack
    return packs


def get_pack(name: str | None) -> Pack | None:
    """The pack called ``name`` (None for None)."""
    return installed_packs().get(name) if name else None


def common_pack(names: Iterable[str | None]) -> Pack | None:
    """The pack every one of ``names`` (pack names, None for no pack) belongs to, if they share one."""
    found = set(names)
    return get_pack(found.pop()) if len(found) == 1 else None


def register_architectures() -> None:
    """Let every pack make its custom model architectures known (before building a model config)."""
    for pack in installed_packs().values():
        if pack.register_architectures is not None:
            pack.register_architectures()


def read_prompts(prompts: list[Prompt], clips: Sequence[CLIPScorer]) -> list[Prompt]:
    """``prompts`` as the guiding CLIPs' pack reads them, or unchanged when they share no pack that rewrites."""
    pack = common_pack(getattr(clip, "pack", None) for clip in clips) if clips else None
    if pack is None or pack.read_prompts is None:
        return prompts
    return pack.read_prompts(prompts, list(clips))


def pack_of_clips(names: Sequence[str], registry) -> Pack | None:
    """The pack every one of the registered CLIPs ``names`` belongs to, if they share one."""
    if not names or not all(registry.has("clip", name) for name in names):
        return None
    return common_pack(registry.get("clip", name).pack for name in names)


def prompt_notice(text: str, clip_names: Sequence[str], registry) -> str | None:
    """The notice the guiding CLIPs' pack has for a prompt (None: nothing to say)."""
    pack = pack_of_clips(clip_names, registry)
    return pack.prompt_notice(text) if pack is not None and pack.prompt_notice is not None else None


def judge_pack(name: str | None) -> Pack:
    """The pack that loads the judges it registered (``name``); with None, the only pack that has judges."""
    judging = {pack.name: pack for pack in installed_packs().values() if pack.load_judge is not None}
    if name is not None and name in judging:
        return judging[name]
    if name is None and len(judging) == 1:
        return next(iter(judging.values()))
    raise UnknownModel(f"no model pack loads this judge (packs with a judge: {', '.join(judging) or 'none'}); "
                       "give a registered judge name")
