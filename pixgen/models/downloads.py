"""Robust, verified file downloads.

A download streams into ``<dest>.part``, resumes an existing part with an HTTP
``Range: bytes=N-`` request, checks the size and sha256, and only then moves the file
into place with ``os.replace``: a failed or corrupt download never appears at ``dest``.
Mirrors are tried in order; transient errors (5xx, resets, timeouts) are retried with
exponential backoff. We use ``requests`` rather than pooch because pooch cannot resume
a partial download with ``Range``, which a ~1 GB checkpoint on a flaky link needs;
requests also honours ``HTTP(S)_PROXY``/``NO_PROXY`` and follows redirects.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from pixgen.errors import CheckpointError, ChecksumMismatch, DownloadError, ModelNotAvailable, PixgenError
from pixgen.models.cache import is_offline

CHUNK_SIZE = 1 << 16
_MAX_SLEEP = 60.0
_RETRY_STATUS = frozenset({408, 425, 429})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class FileSpec:
    """Where a file can be downloaded from and what it must look like."""

    urls: tuple[str, ...]  # primary first, then mirrors, tried in order
    sha256: str | None = None  # None = not known yet (trust on first use)
    size: int | None = None  # bytes, None = unknown
    # The same weights in another file format, each with its own registry-pinned sha256
    # (e.g. OpenAI's TorchScript CLIP archives): tried when every URL above fails.
    alternatives: tuple[FileSpec, ...] = ()
    format: str | None = None  # None: the role's own format; "openai-torchscript" for OpenAI archives

    @property
    def pinned(self) -> str:
        """Who fixes this file's sha256: "registry", or "first-download" (trust on first use)."""
        return "registry" if self.sha256 else "first-download"


@dataclass(frozen=True)
class _Options:
    """Per-call settings passed down to the helpers."""

    name: str
    progress: bool
    retries: int
    backoff: float
    timeout: float


class _UrlFailed(Exception):
    """This URL cannot deliver the file: move on to the next mirror."""


class _Transient(_UrlFailed):
    """A failure that may go away: retry the same URL (resuming the part file)."""


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def part_path(dest: Path) -> Path:
    """Return the path a download of ``dest`` streams into before it is verified."""
    return dest.with_name(dest.name + ".part")


def download(
    spec: FileSpec,
    dest: Path,
    *,
    progress: bool = True,
    offline: bool = False,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 30.0,
    check: Callable[[Path], None] | None = None,
) -> str:
    """Download to dest atomically; return the file's sha256.

    ``check(part_file)`` runs after the size and hash checks and before the file is moved into
    place; a PixgenError from it deletes the download and becomes a one-line CheckpointError.
    """
    dest = Path(dest)
    if offline or is_offline():
        raise ModelNotAvailable(
            f"{dest.name} is not downloaded and pixgen is in offline mode; "
            f"put the file at {dest} or turn offline mode off."
        )
    if not spec.urls:
        raise DownloadError(f"No URL is known for {dest.name}.")
    _ensure_writable_dir(dest.parent)
    part = part_path(dest)
    opts = _Options(dest.name, progress, max(retries, 0), backoff, timeout)
    had_part = part.exists()
    with requests.Session() as session:
        # Ranges and sizes must refer to the file's bytes, not a compressed encoding.
        session.headers["Accept-Encoding"] = "identity"
        url = _fetch_any(session, spec, part, opts)
        digest = sha256_file(part)
        if had_part and not _hash_ok(spec, digest):
            # The old part file may belong to another version of the file: start over once.
            part.unlink()
            url = _fetch_any(session, spec, part, opts)
            digest = sha256_file(part)
    if not _hash_ok(spec, digest):
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"{dest.name} has sha256 {digest} but {spec.sha256} was expected; "
            "the download was deleted because it is corrupt or not the expected file."
        )
    if check is not None:
        _check_or_delete(check, part, dest, url)
    try:
        os.replace(part, dest)
    except OSError as exc:
        raise DownloadError(f"Cannot move the download to {dest}: {exc.strerror or exc}.") from exc
    return digest


def _check_or_delete(check: Callable[[Path], None], part: Path, dest: Path, url: str) -> None:
    """Run the caller's load check on a finished download; delete it and say so if it fails."""
    try:
        check(part)
    except PixgenError as err:
        part.unlink(missing_ok=True)
        raise CheckpointError(f"{dest.name} downloaded from {url} failed the load check ({err}); "
                              "the download was deleted and nothing was recorded.") from None


def _hash_ok(spec: FileSpec, digest: str) -> bool:
    """Return True when the spec has no hash or the hash matches."""
    return spec.sha256 is None or spec.sha256.strip().lower() == digest


def _ensure_writable_dir(directory: Path) -> None:
    """Create the destination directory, or raise DownloadError naming it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"Cannot create the download directory {directory}: {exc.strerror or exc}.") from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DownloadError(f"The download directory {directory} is not writable.")


def _fetch_any(session: requests.Session, spec: FileSpec, part: Path, opts: _Options) -> str:
    """Complete the part file from the first URL that works and return that URL, or raise DownloadError."""
    failures = []
    for url in spec.urls:
        try:
            _fetch_with_retries(session, url, spec, part, opts)
            return url
        except _UrlFailed as exc:
            failures.append(f"{url} ({exc})")
    raise DownloadError(f"Could not download {opts.name}; tried {len(failures)} URL(s): " + "; ".join(failures) + ".")


def _fetch_with_retries(session: requests.Session, url: str, spec: FileSpec, part: Path, opts: _Options) -> None:
    """Fetch one URL, retrying transient failures with exponential backoff."""
    for attempt in range(opts.retries + 1):
        if attempt:
            time.sleep(min(opts.backoff * 2 ** (attempt - 1), _MAX_SLEEP))
        try:
            _fetch_once(session, url, spec, part, opts)
            return
        except _Transient as exc:
            if attempt == opts.retries:
                raise _UrlFailed(f"{exc}; gave up after {attempt + 1} attempt(s)") from exc


def _fetch_once(session: requests.Session, url: str, spec: FileSpec, part: Path, opts: _Options) -> None:
    """Make one request for the rest of the file and append it to the part file."""
    offset = _resume_offset(part, spec.size)
    if spec.size is not None and offset == spec.size and part.exists():
        return  # a previous run got every byte; the hash check decides
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with session.get(url, headers=headers, stream=True, timeout=opts.timeout) as response:
            start, total = _check_response(response, offset, spec.size, part)
            _write_body(response, part, start, total, opts)
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
        raise _Transient(_describe(exc)) from exc
    except requests.RequestException as exc:
        raise _UrlFailed(_describe(exc)) from exc
    _check_final_size(part, total, spec.size)


def _resume_offset(part: Path, size: int | None) -> int:
    """Return how many bytes of the file the part already holds (0 if none or bogus)."""
    if not part.exists():
        return 0
    have = part.stat().st_size
    if size is not None and have > size:
        part.unlink()
        return 0
    return have


def _check_response(response: requests.Response, offset: int, size: int | None, part: Path) -> tuple[int, int | None]:
    """Validate status and headers; return (offset the body starts at, full file size)."""
    status = response.status_code
    if status == 416 and offset:
        part.unlink(missing_ok=True)
        raise _Transient("the server refused to resume the partial file (HTTP 416)")
    if status not in (200, 206):
        reason = f"HTTP {status} {response.reason or ''}".strip()
        if status >= 500 or status in _RETRY_STATUS:
            raise _Transient(reason)
        raise _UrlFailed(reason)
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type == "text/html":
        part.unlink(missing_ok=True)
        raise _UrlFailed("the server sent an HTML page (text/html), not the file")
    start, total = _body_range(response)
    if start not in (0, offset):
        part.unlink(missing_ok=True)
        raise _Transient("the server answered the Range request with other bytes; starting over")
    if size is not None and total is not None and total != size:
        part.unlink(missing_ok=True)
        raise _UrlFailed(f"the server's file is {total} bytes but {size} were expected")
    return start, total


def _body_range(response: requests.Response) -> tuple[int, int | None]:
    """Return (offset the body starts at or -1, full file size or None) from the headers."""
    length = response.headers.get("Content-Length")
    length_int = int(length) if length and length.isdigit() else None
    if response.status_code == 200:  # a full body, also when the server ignored Range
        return 0, length_int
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if match is None:
        return -1, None
    total = match.group(3)
    return int(match.group(1)), int(total) if total.isdigit() else None


def _write_body(response: requests.Response, part: Path, start: int, total: int | None, opts: _Options) -> None:
    """Stream the response body into the part file (appending when resuming)."""
    # Keep the bytes that arrived before a dropped connection (urllib3 would discard the
    # last buffered chunk); _check_final_size detects the short file and we resume.
    response.raw.enforce_content_length = False
    bar = tqdm(
        total=total,
        initial=start,
        desc=opts.name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=not opts.progress,
    )
    try:
        with bar, open(part, "ab" if start else "wb") as fh:
            for chunk in response.iter_content(CHUNK_SIZE):
                fh.write(chunk)
                bar.update(len(chunk))
    except requests.RequestException:
        raise  # a network problem (requests' errors are OSErrors too): the caller retries
    except OSError as exc:
        raise DownloadError(f"Cannot write {part}: {exc.strerror or exc}.") from exc


def _check_final_size(part: Path, total: int | None, size: int | None) -> None:
    """Raise if the part file is shorter (retry) or longer (reject) than announced."""
    if not part.exists():
        raise _Transient("the partial file disappeared during the download")
    have = part.stat().st_size
    expected = size if size is not None else total
    if expected is None or have == expected:
        return
    if have < expected:
        raise _Transient(f"the connection ended after {have} of {expected} bytes")
    part.unlink()
    raise _UrlFailed(f"received {have} bytes but {expected} were expected")


def _describe(exc: BaseException) -> str:
    """Return a short, one-line reason for a requests exception."""
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {text[:200]}" if text else name
