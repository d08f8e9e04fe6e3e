"""Atomic file writes: a temporary file beside the target, then one rename."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pixgen.errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_error(path: Path, err: OSError) -> OutputError:
    """The one-line error for a failed write; a full disk says so and that earlier files are kept."""
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        return OutputError(f"cannot write {path}: No space left on device; what was saved before is kept")
    return OutputError(f"cannot write {path}: {reason}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    The file gets the usual permissions (0666 less the umask), not mkstemp's private 0600.
    An OSError while writing (read-only folder, full disk) becomes a one-line OutputError, and
    ``path`` keeps its earlier content.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # keep the real suffix last: some writers (ffmpeg) pick the container from it
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
        os.close(handle)
    except OSError as err:
        raise write_error(path, err) from None
    try:
        yield Path(temp)
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, path)
    except OSError as err:
        Path(temp).unlink(missing_ok=True)
        raise write_error(path, err) from None
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")
