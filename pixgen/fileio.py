"""Atomic file writes: a temporary file beside the target, then one rename."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pixgen.errors import OutputError, PixgenError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


KEPT = "what was saved before is kept"
# errno of a write that failed for want of room: its message says so, and that earlier files are kept
NO_ROOM = {
    errno.ENOSPC: "No space left on device; free some space and try again",
    errno.EFBIG: "File too large: it reached the file-size limit (ulimit -f); raise the limit and try again",
    errno.EDQUOT: "Disk quota exceeded; free some space or ask for a larger quota and try again",
}
WRITE_ERRNOS = {*NO_ROOM, errno.EIO, errno.EROFS}  # an OSError with one of these, anywhere in a chain, is the write's
# What torch.save's C++ writer says when the file cannot grow; its RuntimeError carries no errno.
WRITE_FAILURES = ("failed writing file", "file write failed", "unexpected pos", "iostream error")
PROBE_BYTES = 1 << 20  # how far write_failure tries to grow a failed file to learn why it failed


def write_error(path: Path, err: OSError) -> OutputError:
    """The one-line error for a failed write; no room (disk, quota, size limit) says so and that saves are kept."""
    if err.errno in NO_ROOM:
        return OutputError(f"cannot write {path}: {NO_ROOM[err.errno]}; {KEPT}")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = err.strerror or (lines[0][:200] if lines else type(err).__name__)
    return OutputError(f"cannot write {path}: {reason}")


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err``, then its causes and contexts, each once."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _probe(temp: Path) -> OSError | None:
    """Try to grow ``temp`` (a temporary file about to be deleted) by PROBE_BYTES; the OSError if it cannot."""
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as err:
        return err
    try:
        block = bytes(1 << 16)
        for _ in range(PROBE_BYTES // len(block)):
            if os.write(fd, block) < len(block):  # a short write: the next one says why
                os.write(fd, block)
        os.fsync(fd)
    except OSError as err:
        return err
    finally:
        os.close(fd)
    return None


def write_failure(path: Path, err: BaseException, temp: Path) -> OutputError | None:
    """The one-line error when ``err``, raised while writing ``temp`` for ``path``, is a failed write; else None.

    Writers wrap a failed write in other types (torch.save's RuntimeError, imageio's pipe errors,
    an encoder's OSError without errno), so this looks for an OSError of a failed write in the
    exception chain, then checks the disk itself by trying to grow ``temp`` (full disk, quota,
    file-size limit), then for the messages of torch's writer. An unrelated bug gives None.
    ``temp`` may be grown or created: delete it afterwards.
    """
    for link in _chain(err):
        if isinstance(link, OSError) and link.errno in WRITE_ERRNOS:
            return write_error(path, link)
    if isinstance(err, OSError) and err.errno not in (None, errno.EPIPE):
        return write_error(path, err)  # its errno says why (a broken pipe: a writer process died, learn why)
    probed = _probe(temp)
    if probed is not None:
        return write_error(path, probed)
    for link in _chain(err):
        text = " ".join(str(link).split())
        if any(marker in text for marker in WRITE_FAILURES):
            return OutputError(f"cannot write {path}: the write failed ({text[:120]})")
    return None


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    The file gets the usual permissions (0666 less the umask), not mkstemp's private 0600.
    An OSError while writing (read-only folder, full disk) becomes a one-line OutputError, and so
    does a failed write that a writer reports as another type (see write_failure); ``path`` keeps
    its earlier content. A PixgenError from the block passes through; a bug keeps its traceback.
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
    except PixgenError:
        Path(temp).unlink(missing_ok=True)
        raise
    except Exception as err:
        fault = write_failure(path, err, Path(temp))
        Path(temp).unlink(missing_ok=True)
        if fault is not None:
            raise fault from None
        if isinstance(err, OSError):
            raise write_error(path, err) from None
        raise
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")
