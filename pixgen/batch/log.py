"""The batch log ``DIR/batch.jsonl``: one JSON line per job start and end, appended with fsync.

A crash loses at most the line being written; a torn last line is skipped on reading, and the
next append starts on a fresh line. A job counts as done only when its last ``end`` record's
files are on disk with the same sha256.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from pixgen.errors import OutputError
from pixgen.fileio import write_error
from pixgen.pipeline.runner import CONFIG_NAME, FRAMES_DIR, GIF_NAME, IMAGE_NAME

LOG_NAME = "batch.jsonl"
# What an animation leaves (pixgen.animation.animate's names; batch may not import it): `pixgen serve` queues
# animations in a batch folder, and their end records list these files.
ANIMATION_GIF, ANIMATION_VIDEO, ANIMATION_FRAMES = "animation.gif", "animation.mp4", "frame-*.png"


class BatchLog:
    """Append-only JSON-lines log of a batch folder."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def records(self) -> list[dict[str, Any]]:
        """Every whole record, oldest first (torn or foreign lines are skipped)."""
        if self.path.is_symlink():
            raise OutputError(f"{self.path} is a symbolic link; remove it")
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        except OSError as err:
            raise OutputError(f"cannot read {self.path}: {err.strerror}") from None
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("folder"), str):
                records.append(record)
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as a line, flushed and fsynced before returning."""
        line = json.dumps({"time": round(time.time(), 3), **record}, sort_keys=False).encode() + b"\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as err:
            raise write_error(self.path, err) from None
        size = None
        try:
            size = os.fstat(fd).st_size
            if size and not _ends_with_newline(self.path):
                line = b"\n" + line  # the last append was torn: start on a fresh line
            written = 0
            while written < len(line):  # a short write (the disk or the size limit reached): the next one says why
                count = os.write(fd, line[written:])
                if count <= 0:
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                written += count
            os.fsync(fd)
        except OSError as err:
            if size is not None:
                _truncate(fd, size)  # no torn line left behind
            raise write_error(self.path, err) from None
        finally:
            os.close(fd)

    def last_ends(self) -> dict[str, dict[str, Any]]:
        """The latest ``end`` record per job folder name."""
        return {r["folder"]: r for r in self.records() if r.get("event") == "end"}


def _truncate(fd: int, size: int) -> None:
    """Cut the log back to ``size`` bytes after a failed append, if the disk lets us."""
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def sha256_of(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def output_files(folder: Path) -> dict[str, str]:
    """sha256 of each output a finished run leaves in ``folder``, by path relative to it."""
    names = [IMAGE_NAME, CONFIG_NAME, GIF_NAME, ANIMATION_GIF, ANIMATION_VIDEO] + sorted(
        f"{FRAMES_DIR}/{p.name}" for pattern in ("step-*.png", ANIMATION_FRAMES)
        for p in (folder / FRAMES_DIR).glob(pattern))
    return {name: sha256_of(folder / name) for name in names if (folder / name).is_file()}


def is_verified(folder: Path, key: str, record: dict[str, Any] | None) -> bool:
    """Whether ``record`` ends this job (same config hash) and every file it lists is intact on disk."""
    if record is None or record.get("key") != key or not isinstance(record.get("files"), dict):
        return False
    files = record["files"]
    if IMAGE_NAME not in files and ANIMATION_GIF not in files:  # a run's image, or an animation's GIF
        return False
    for name, digest in files.items():
        path = folder / name
        if ".." in Path(name).parts or not path.is_file() or path.is_symlink() or sha256_of(path) != digest:
            return False
    return True


def remove_stale_temps(folder: Path) -> None:
    """Delete temporary files an atomic write left behind when the process was killed."""
    for pattern in (".*.tmp*", f"{FRAMES_DIR}/.*.tmp*"):
        for path in folder.glob(pattern):
            if path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
