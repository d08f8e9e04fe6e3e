"""Where pixgen keeps downloaded files, and whether it may download at all.

Nothing here touches the disk: the directory is created by whoever writes into it.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from pixgen.errors import PixgenError

HOME_ENV = "PIXGEN_HOME"
OFFLINE_ENV = "PIXGEN_OFFLINE"
_TRUE_WORDS = frozenset({"1", "true", "yes"})


def cache_dir() -> Path:
    """Return the cache directory: ``$PIXGEN_HOME`` if set, else the platform user cache dir."""
    override = os.environ.get(HOME_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("pixgen"))


def is_offline() -> bool:
    """Return True when ``$PIXGEN_OFFLINE`` is "1", "true" or "yes" (any case)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE_WORDS


def inside_cache(path: Path) -> Path:
    """Return ``path`` resolved, or raise PixgenError if it is not strictly inside the cache dir."""
    root = cache_dir().resolve()
    resolved = Path(path).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise PixgenError(f"refusing to touch {path}: it is not inside the pixgen cache {root}")
    return resolved
