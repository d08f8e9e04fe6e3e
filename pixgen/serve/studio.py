"""The studio's jobs: kept on disk in a batch folder, queued, handed to the workers, and reported.

``DIR`` has the layout of ``pixgen batch``: a folder per job and the log ``batch.jsonl``, whose
start/end/failed records are written by the batch package's :class:`~pixgen.batch.jobs.Batch`.
The studio adds its own records to the same log: ``submit`` (the job's whole resolved config, so
a restart plans exactly the same job), ``cancel``, ``resume`` and ``delete``. Reading the log
back gives every job's state; a job that was running when the server died is queued again and
continues from its last saved state. One thread (:meth:`Studio.serve_forever`) drives the
workers; the HTTP handlers read and change the jobs under :attr:`Studio.lock`.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pixgen.batch.gallery import Card, write_gallery
from pixgen.batch.jobs import RETRIES, Batch
from pixgen.batch.log import is_verified, output_files
from pixgen.batch.manifest import Job, check_folder
from pixgen.config import config_from_mapping, config_to_yaml
from pixgen.errors import ConfigError, PixgenError, one_line
from pixgen.pipeline.runner import RunResult
from pixgen.serve.submit import Order, public_settings

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")
GALLERY_EVERY = 5.0  # seconds between rewrites of index.html and contact-sheet.png at most
GALLERY_JOBS = 500  # the newest jobs the batch gallery shows (the studio page shows them all)


def _remove_leftovers(root: Path) -> None:
    """What a killed server left half done: folders being deleted, uploads being received."""
    for path in root.glob(".deleting-*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
    for path in (root / "uploads").glob(".incoming-*"):
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)


class QueueFull(PixgenError):
    """The queue holds as many jobs as the server takes (HTTP 429)."""


class Busy(PixgenError):
    """The job cannot do that in its current state (HTTP 409)."""


@dataclass
class Entry:
    """One job of the studio and what is known of it now."""

    order: Order
    token: int  # submission order: workers know jobs by it
    submitted: float
    preset: str
    parameters: dict[str, Any]  # the resolved config, as run.yaml records it
    status: str = "queued"
    error: str | None = None
    cancel_requested: bool = False
    progress: dict[str, Any] | None = None
    preview: bytes | None = None
    preview_type: str = "image/webp"
    version: int = 0  # bumped at every change; event streams watch it
    deaths: int = 0  # worker processes that died running it
    started: float = 0.0

    @property
    def id(self) -> str:
        return self.order.id

    def touch(self) -> None:
        self.version += 1


class StudioBatch(Batch):
    """The batch package's log and gallery for jobs that come and go; an animation is done when its files are."""

    def __init__(self, root: Path, kinds: dict[str, str]):
        self.kinds = kinds  # folder name -> run or animation
        self.stale = False
        super().__init__([], root, None)

    def is_done(self, job: Job) -> bool:
        if self.kinds.get(job.folder.name) == "animation":
            return is_verified(job.folder, job.key, self.ends.get(job.folder.name))
        return super().is_done(job)

    def refresh(self) -> None:
        """Note that the gallery is out of date: :meth:`cards` and :func:`write_gallery` bring it up to date later,
        outside the studio's lock (it reads every job's image)."""
        self.stale = True

    def cards(self) -> list[Card]:
        """The gallery's cards as the jobs stand now (cheap: no file is read)."""
        self.stale = False
        cards = []
        for job in self.jobs[-GALLERY_JOBS:]:
            done = self.result.status.get(job.folder.name) == "done"
            end = self.ends.get(job.folder.name) if done else None
            picture = "image.png"
            if self.kinds.get(job.folder.name) == "animation":
                frames = sorted(name for name in (end or {}).get("files", {}) if name.startswith("frames/frame-"))
                picture = frames[-1] if frames else picture
            cards.append(Card(job.name, job.folder.name, job.config.prompt, job.config.seed, job.preset,
                              job.config.steps, end.get("loss") if end else None, end is not None, picture))
        return cards

    def stopped(self, job: Job) -> None:
        """Log that a job was stopped before its first step: nothing of it to keep."""
        self.log.append({"event": "interrupted", "job": job.name, "folder": job.folder.name, "key": job.key,
                         "seed": job.config.seed, "steps": job.config.steps, "steps_done": 0})
        self.running.discard(job.folder.name)


class Studio:
    """Every job of one studio folder: durable, queued, and driven through a worker pool."""

    def __init__(self, root: Path, max_queue: int = 1000):
        self.root = Path(root).resolve()  # recorded upload paths must not depend on the server's working folder
        self.root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(self.root)
        self.max_queue = max_queue
        self.lock = threading.RLock()
        self.entries: dict[str, Entry] = {}
        self.by_token: dict[int, Entry] = {}
        self.waiting: deque[int] = deque()  # tokens of queued jobs, oldest first (some may since have changed)
        self.kinds: dict[str, str] = {}
        self.batch = StudioBatch(self.root, self.kinds)
        self.batch.log.path.touch()  # DIR is a studio from its first start on, even before a job
        self.stopping = threading.Event()
        self.cancels: deque[int] = deque()  # tokens of running jobs to stop, for the driver thread
        self.broken = False  # serve_forever ended without being asked to: nothing submitted would run
        self.notes: list[str] = []  # what the restart found, for the server's log
        self._replay()

    # ---- the log -------------------------------------------------------------------------------

    def _replay(self) -> None:
        """Rebuild every job's state from the log; jobs running when the server stopped are queued again."""
        for record in self.batch.log.records():
            event, folder = record.get("event"), record["folder"]
            if event == "submit":
                self._replay_submit(record)
                continue
            entry = self.entries.get(folder)
            if entry is None:
                continue
            if event == "delete":
                self._forget(entry)
            elif event == "start":
                entry.status = "running"
            elif event == "end":
                entry.status, entry.error = "done", None
            elif event == "failed":
                entry.status, entry.error = "failed", record.get("error")
            elif event in ("interrupted", "retry"):
                entry.status = "cancelled" if entry.cancel_requested else "queued"
            elif event == "cancel":
                entry.cancel_requested = True
                if entry.status == "queued":
                    entry.status = "cancelled"
            elif event == "resume":
                entry.status, entry.error, entry.cancel_requested = "queued", None, False
        for entry in self.entries.values():
            self._settle(entry)

    def _replay_submit(self, record: dict[str, Any]) -> None:
        try:
            config = config_from_mapping(record.get("config"), f"job {record['folder']} in the log")
            kind = record.get("kind", "run")
            if kind not in ("run", "animation"):
                raise ConfigError(f"job {record['folder']}: unknown kind {kind!r}")
            job = Job(str(record["job"]), str(record.get("preset", "default")), config, str(record["key"]),
                      self.root / record["folder"])
            check_folder(job.folder, self.root)
        except (PixgenError, KeyError, TypeError) as err:
            self.notes.append(f"skipped a job the log records but this pixgen cannot plan: {err}")
            return
        order = Order(job, kind, record.get("animation"), record.get("parent"))
        self._add(order, float(record.get("time", time.time())), replayed=True)

    def _settle(self, entry: Entry) -> None:
        """After the replay: a done job must verify (else it runs again); a running one is queued again."""
        if entry.status == "running":
            entry.status = "cancelled" if entry.cancel_requested else "queued"
        if entry.status in ("done", "queued"):  # the folder decides: an end logged before the submit counts too
            entry.status = "done" if self.batch.is_done(entry.order.job) else "queued"
        self.batch.result.status[entry.id] = "done" if entry.status == "done" else "pending"
        if entry.status == "queued":
            self.waiting.append(entry.token)
        elif entry.status == "done":
            entry.cancel_requested = False

    def _add(self, order: Order, submitted: float, replayed: bool = False,
             settings: dict[str, Any] | None = None) -> Entry:
        """Keep one more job; ``settings``: its resolved config as run.yaml records it, if already at hand."""
        self.kinds[order.id] = order.kind
        settings = settings if settings is not None else yaml.safe_load(config_to_yaml(order.job.config))
        entry = Entry(order, len(self.by_token), submitted, order.job.preset, public_settings(settings))
        self.entries[order.id] = entry
        self.by_token[entry.token] = entry
        if not replayed:
            self.batch.add(order.job)
        else:
            self.batch.jobs.append(order.job)
        return entry

    def _forget(self, entry: Entry) -> None:
        del self.entries[entry.id]
        if entry.order.job in self.batch.jobs:
            self.batch.jobs.remove(entry.order.job)

    def _record(self, event: str, entry: Entry, **extra: Any) -> None:
        self.batch.log.append({"event": event, "job": entry.order.job.name, "folder": entry.id, **extra})

    # ---- what the API asks ---------------------------------------------------------------------

    def queued_count(self) -> int:
        return sum(1 for e in self.entries.values() if e.status == "queued")

    def check_room(self, count: int = 1) -> None:
        """Raise QueueFull if ``count`` more jobs would not fit: before a request is planned (planning costs
        tens of milliseconds; a full queue answers at once)."""
        if self.queued_count() + count > self.max_queue:
            raise QueueFull(f"the queue is full ({self.max_queue} jobs waiting, the server's --max-queue); "
                            "try again when some have finished")

    def submit(self, orders: list[Order]) -> list[tuple[Entry, bool]]:
        """Queue ``orders`` (all or none); each with whether it is new (an existing job with the same settings
        is returned as it is). Raises QueueFull past ``max_queue`` queued jobs."""
        with self.lock:
            new = [o for o in dict((o.id, o) for o in orders).values() if o.id not in self.entries]
            self.check_room(len(new))
            out = []
            for order in orders:
                existing = self.entries.get(order.id)
                if existing is not None:
                    out.append((existing, False))
                    continue
                job = order.job
                settings = yaml.safe_load(config_to_yaml(job.config))
                self.batch.log.append({"event": "submit", "job": job.name, "folder": order.id, "key": job.key,
                                       "kind": order.kind, "preset": job.preset, "parent": order.parent,
                                       "seed": job.config.seed, "steps": job.config.steps, "config": settings,
                                       "animation": order.animation})
                entry = self._add(order, time.time(), settings=settings)
                if self.batch.result.status[order.id] == "done":  # its folder already holds it, verified
                    entry.status = "done"
                else:
                    self.waiting.append(entry.token)
                out.append((entry, True))
            return out

    def get(self, job_id: str) -> Entry:
        entry = self.entries.get(job_id)
        if entry is None:
            raise KeyError(job_id)
        return entry

    def listing(self, statuses: set[str] | None = None, text: str = "", kind: str | None = None) -> list[Entry]:
        """Jobs newest first, filtered by status, kind, and a text in the prompt or name (any case)."""
        text = text.lower().strip()
        with self.lock:
            entries = list(self.entries.values())
        return [e for e in reversed(entries)
                if (not statuses or e.status in statuses) and (kind is None or e.order.kind == kind)
                and (not text or text in e.order.job.config.prompt.lower() or text in e.order.job.name.lower())]

    def cancel(self, job_id: str) -> Entry:
        with self.lock:
            entry = self.get(job_id)
            if entry.status not in ("queued", "running"):
                raise Busy(f"job {job_id} is {entry.status}; only a queued or running job can be cancelled")
            self._record("cancel", entry)
            entry.cancel_requested = True
            if entry.status == "queued":
                entry.status = "cancelled"
            entry.touch()
            self.cancels.append(entry.token)
            return entry

    def resume(self, job_id: str) -> Entry:
        with self.lock:
            entry = self.get(job_id)
            if entry.status not in ("cancelled", "failed"):
                raise Busy(f"job {job_id} is {entry.status}; only a cancelled or failed job can be resumed")
            self.check_room()
            self._record("resume", entry)
            entry.status, entry.error, entry.cancel_requested, entry.deaths = "queued", None, False, 0
            self.batch.result.status[entry.id] = "pending"
            self.waiting.append(entry.token)
            entry.touch()
            return entry

    def delete(self, job_id: str) -> None:
        """Remove a finished job's folder (inside DIR only) and forget the job."""
        with self.lock:
            entry = self.get(job_id)
            if entry.status in ("queued", "running"):
                raise Busy(f"job {job_id} is {entry.status}; cancel it before deleting it")
            folder = entry.order.job.folder
            check_folder(folder, self.root)
            self._record("delete", entry)
            self._forget(entry)
            entry.status = "deleted"
            entry.touch()
            doomed = None
            if folder.is_dir():  # out of the way at once: the same settings submitted again get a fresh folder
                doomed = folder.with_name(f".deleting-{folder.name}-{secrets.token_hex(4)}")
                folder.rename(doomed)
        if doomed is not None:
            shutil.rmtree(doomed)

    # ---- driving the workers -------------------------------------------------------------------

    def serve_forever(self, pool, on_note: Callable[[str], None] | None = None) -> None:
        """Hand queued jobs to idle workers and take their news, until :attr:`stopping` is set.

        A failure in one round (a full disk refusing the log, a bug) is told through ``on_note`` and the
        next round goes on: the studio keeps running. The gallery is written by a thread of its own."""
        say = on_note or (lambda _line: None)
        try:
            pool.start()
            threading.Thread(target=self._keep_gallery, args=(say,), name="pixgen-gallery", daemon=True).start()
            while not self.stopping.is_set():
                try:
                    self._drive(pool, say)
                except Exception as err:  # noqa: BLE001 - the studio must outlive one bad round
                    say(f"error: {one_line(err)}" if isinstance(err, PixgenError) else
                        f"internal error (a bug in pixgen): {type(err).__name__}: {one_line(err)}")
                    self.stopping.wait(1.0)
        finally:
            self.broken = not self.stopping.is_set()
            last = pool.close()
            with self.lock:
                for kind, token, payload in last:  # jobs stopped on the way out: logged, queued again on restart
                    self._take(kind, token, payload, say)
            self.write_gallery(say)

    def _drive(self, pool, say: Callable[[str], None]) -> None:
        """One round: pass on cancels, hand out queued jobs, take the workers' news."""
        with self.lock:
            while self.cancels:
                pool.cancel(self.cancels.popleft())
            while pool.idle() > 0 and (entry := self._next()) is not None:
                entry.status, entry.started = "running", time.monotonic()
                entry.touch()
                pool.hand(entry.token, entry.order)
        for kind, token, payload in pool.poll(0.1):
            files = None
            if kind == "result" and payload.completed and token in self.by_token:  # hashed outside the lock
                files = output_files(self.by_token[token].order.job.folder)
            with self.lock:
                self._take(kind, token, payload, say, files)

    def _take(self, kind: str, token: int, payload: Any, say: Callable[[str], None],
              files: dict[str, str] | None = None) -> None:
        """Apply one piece of news; if it cannot be logged, the job fails with why (its files stay)."""
        try:
            self._news(kind, token, payload, say, files)
        except PixgenError as err:
            entry = self.by_token.get(token)
            say(f"error: job {entry.id if entry else token}: {one_line(err)}")
            if entry is not None and kind in ("result", "failed", "stopped", "died"):
                entry.status, entry.error, entry.cancel_requested = "failed", one_line(err), False
                entry.touch()

    def _keep_gallery(self, say: Callable[[str], None]) -> None:
        """Rewrite the batch gallery when jobs changed, at most every GALLERY_EVERY seconds."""
        while not self.stopping.wait(GALLERY_EVERY):
            if self.batch.stale:
                self.write_gallery(say)

    def write_gallery(self, say: Callable[[str], None] | None = None) -> None:
        """Rewrite the batch gallery (index.html, contact-sheet.png) from the jobs as they stand."""
        with self.lock:
            cards = self.batch.cards()
        try:
            write_gallery(self.root, cards)
        except Exception as err:  # noqa: BLE001 - a full disk or a damaged image: the jobs are fine, the gallery waits
            if say is not None:
                say(f"note: the gallery was not rewritten: {one_line(err)}")

    def _next(self) -> Entry | None:
        while self.waiting:
            entry = self.by_token[self.waiting.popleft()]
            if entry.status == "queued" and entry.id in self.entries:
                return entry
        return None

    def _news(self, kind: str, token: int, payload: Any, on_note: Callable[[str], None] | None,
              files: dict[str, str] | None = None) -> None:
        if kind == "note":  # from the pool, about a worker rather than a job
            if on_note is not None:
                on_note(payload)
            return
        entry = self.by_token.get(token)
        if entry is None:
            return
        job = entry.order.job
        if kind == "start":
            self.batch.started(job, payload)
        elif kind == "progress":
            entry.preview, entry.preview_type = payload.pop("preview"), payload.pop("preview_type")
            entry.progress = payload
        elif kind == "result":
            result: RunResult = payload
            self.batch.finished(job, result, time.monotonic() - entry.started, files=files)
            self.batch.result.interrupted = False
            entry.status = "done" if result.completed else ("cancelled" if entry.cancel_requested else "queued")
            if entry.status == "queued":  # stopped without being asked (the server is closing): run it again
                self.waiting.appendleft(token)
        elif kind == "stopped":
            self.batch.stopped(job)
            entry.status = "cancelled" if entry.cancel_requested else "queued"
            if entry.status == "queued":
                self.waiting.appendleft(token)
        elif kind == "failed":
            self.batch.failed(job, payload)
            entry.status, entry.error = "failed", payload
        elif kind == "died":
            entry.deaths += 1
            error = f"its worker process died (exit code {payload})"
            if entry.deaths > RETRIES:
                self.batch.failed(job, f"{error} {entry.deaths} times")
                entry.status, entry.error = "failed", f"{error} {entry.deaths} times"
            else:
                self.batch.retried(job, f"{error}; running it again")
                entry.status = "cancelled" if entry.cancel_requested else "queued"
                if entry.status == "queued":
                    self.waiting.appendleft(token)
            if on_note is not None:
                on_note(f"job {entry.id}: {error}")
        if entry.status in FINAL:
            entry.cancel_requested = False
        if entry.status == "done":
            entry.preview = None  # its image shows it now; previews of thousands of jobs would add up
        entry.touch()
