"""One writer per output folder: an exclusive flock on the folder itself, held while a command writes there."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pixgen.errors import OutputBusy, OutputError, OutputExists

try:
    import fcntl
except ImportError:  # Windows: no flock, so hold_folder keeps no lock there
    fcntl = None

_held: dict[tuple[int, int], list[int]] = {}  # (st_dev, st_ino) of a folder this process holds -> [fd, depth]
_held_guard = threading.Lock()
COMMAND_LIMIT = 100  # characters of the holder's command line shown in OutputBusy


@contextmanager
def hold_folder(path: Path) -> Iterator[bool]:
    """Hold the folder ``path`` (created if missing) as its one writer for the block; yields
    whether this call created it.

    The lock is an exclusive ``flock`` on the folder's own descriptor: nothing is added to the
    folder, and the OS drops it when the process ends however it ends (a ``kill -9`` leaves no
    stale lock). Another process asking for the folder meanwhile gets :class:`OutputBusy` at once,
    naming the holder (its pid and command, read from ``/proc/locks`` on Linux) and leaving the
    folder as it was. Within one process holding is re-entrant (a resume that runs, a helper of
    the holder), threads included; a forked child holds nothing. If the block fails while a folder
    this call created is still empty, the folder is removed again. A refused call does not remove
    a folder it created: the holder opened it in that same instant, to write there. Where there is
    no flock (Windows) or the file system refuses one (some network mounts), no lock is kept and
    writers are not kept apart, as before.
    """
    path = Path(path)
    created, key = _take_folder(path)
    try:
        yield created
    except BaseException:
        if created:
            try:
                path.rmdir()  # only an empty folder
            except OSError:
                pass
        raise
    finally:
        _release_folder(key)


def _make_folder(path: Path) -> bool:
    """Create ``path`` (and its parents) if missing; True if this call made it."""
    if path.is_dir():
        return False
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        if path.is_dir():  # made meanwhile by another process
            return False
        raise OutputExists(f"output {path} exists and is not a folder") from None
    except OSError as err:
        raise OutputError(f"cannot create output folder {path}: {err.strerror}") from None
    return True


def _take_folder(path: Path) -> tuple[bool, tuple[int, int] | None]:
    """(created, key of the lock to release, None when no lock is kept); raises OutputBusy if held elsewhere."""
    created = False
    for _attempt in range(5):
        created = _make_folder(path) or created
        if fcntl is None:
            return created, None
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))  # not inherited by children
        except FileNotFoundError:  # removed meanwhile: make it again
            continue
        except OSError as err:
            raise OutputError(f"cannot open output folder {path}: {err.strerror}") from None
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        with _held_guard:
            if key in _held:  # this process holds it already
                os.close(fd)
                _held[key][1] += 1
                return created, key
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputBusy(f"output folder {path} is in use: {_lock_holder(key)} is writing there; "
                                 "wait for it to finish, or choose another --output") from None
            except OSError:  # this file system keeps no locks
                os.close(fd)
                return created, None
            try:
                now = os.stat(path)
            except OSError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == key:
                _held[key] = [fd, 1]
                return created, key
            os.close(fd)  # removed or replaced while it was being taken: take the folder there now
    raise OutputBusy(f"output folder {path} keeps being removed or replaced by another process; "
                     "wait for it to finish, or choose another --output")


def _release_folder(key: tuple[int, int] | None) -> None:
    with _held_guard:
        entry = _held.get(key) if key is not None else None
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            os.close(entry[0])  # closing the last descriptor drops the flock


def _lock_holder(key: tuple[int, int]) -> str:
    """'process PID (COMMAND)' of the flock holder of the folder ``key`` (Linux), else 'another process'."""
    dev, inode = key
    wanted = (os.major(dev), os.minor(dev), inode)
    try:
        lines = Path("/proc/locks").read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return "another process"
    for line in lines:  # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:56789 0 EOF" ("->" lines are waiters)
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, number = fields[5].split(":")
            found, pid = (int(major, 16), int(minor, 16), int(number)), int(fields[4])
        except ValueError:
            continue
        if found == wanted and pid > 0:
            return f"process {pid}{_command(pid)}"
    return "another process"


def _command(pid: int) -> str:
    """' (the command line)' of process ``pid``, shortened, or '' where it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    args = [arg.decode("utf-8", "replace") for arg in raw.split(b"\0") if arg]
    if not args:
        return ""
    text = " ".join(" ".join(arg.split()) for arg in [os.path.basename(args[0]), *args[1:]])
    return f" ({text if len(text) <= COMMAND_LIMIT else text[:COMMAND_LIMIT - 1] + '…'})"


def _forget_held_in_child() -> None:
    """A forked child holds none of its parent's folders: close its copies (the parent keeps the locks)."""
    global _held_guard
    for fd, _depth in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()
    _held_guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_held_in_child)
