"""Running a planned batch: skip verified jobs, resume half-done ones, log, refresh the gallery.

One process by default (models stay loaded between jobs: ``pipeline.load_models`` caches them);
``workers > 1`` or ``devices`` hand jobs to spawned worker processes, one per device entry;
``executor="ray"`` runs them on Ray actors (``pixgen.batch_ray``). A job whose worker dies is run
again by a new worker (up to RETRIES times), from the state its folder holds.
Ctrl-C stops the running job(s) after saving their state; nothing done is lost.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pixgen.batch import Job, check_folder
from pixgen.batch_log import LOG_NAME, BatchLog, is_verified, output_files, remove_stale_temps
from pixgen.config import config_to_yaml
from pixgen.errors import CheckpointError, ConfigError, ModelNotAvailable, OutputError, PixgenError, UnknownModel
from pixgen.gallery import Card, write_gallery
from pixgen.pipeline import CONFIG_NAME, STATE_NAME, RunResult, read_run_config, read_state, run

# Errors that are not about one job: the batch stops instead of failing every later job the same way.
FATAL = (CheckpointError, ModelNotAvailable, UnknownModel, OutputError)
RETRIES = 2  # times a job whose worker died is run again before it counts as failed
EXECUTORS = ("local", "ray")


@dataclass
class BatchEvent:
    """Progress news: a job starts or finishes (``done`` of ``total`` jobs are done)."""

    kind: str  # "begin" (before the first job), "start" or "finish"
    job: Job | None
    done: int
    total: int


@dataclass
class BatchResult:
    """Each job's state after a batch: done, pending, interrupted or failed."""

    jobs: list[Job]
    status: dict[str, str] = field(default_factory=dict)  # folder name -> state
    errors: dict[str, str] = field(default_factory=dict)  # folder name -> one-line error
    interrupted: bool = False
    skipped: int = 0  # jobs found done and verified when the batch started
    notes: list[str] = field(default_factory=list)  # advice for the user, one line each

    def names(self, *states: str) -> list[str]:
        """Names of the jobs in any of ``states``, in manifest order."""
        return [job.name for job in self.jobs if self.status[job.folder.name] in states]


def records_config(job: Job) -> bool:
    """Whether the job folder's ``run.yaml`` records this job's whole config (the device aside).

    A job's folder hash leaves out settings at their built-in defaults, so a newer pixgen whose
    default changed finds the old folder: this tells that its outputs were made otherwise.
    """
    try:
        recorded = read_run_config(job.folder)
    except PixgenError:
        return False
    return config_to_yaml(replace(recorded, device=job.config.device)) == config_to_yaml(job.config)


def resume_point(job: Job) -> int | None:
    """The step of a half-done job's ``state.pt``, if it can continue exactly; else None.

    ``run.yaml`` may be missing (a kill can land between the two writes); when present it must
    record this job's config.
    """
    folder = job.folder
    try:
        if not (folder / STATE_NAME).is_file() or folder.is_symlink():
            return None
        if (folder / CONFIG_NAME).is_file() and not records_config(job):
            return None
        step = read_state(folder / STATE_NAME)["step"]
    except PixgenError:
        return None
    return step if step < job.config.steps else None


def execute_job(job: Job, on_step: Callable | None = None, device: str | None = None,
                on_load: Callable | None = None) -> RunResult:
    """Run one job in its folder: continue it from its ``state.pt`` if half done, else start afresh."""
    if job.folder.is_dir():
        remove_stale_temps(job.folder)
    config = job.config if device is None else replace(job.config, device=device)
    if resume_point(job) is not None:  # what resume_run does, with the config the batch already knows
        return run(config, job.folder, on_step=on_step, resume=read_state(job.folder / STATE_NAME),
                   on_load=on_load)
    return run(config, job.folder, overwrite=True, on_step=on_step, on_load=on_load)


@contextmanager
def using_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` for a while (None: unchanged); the same number gives the same images."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Batch:
    """The parent's side of a batch: the log, each job's state, and the gallery."""

    def __init__(self, jobs: list[Job], root: Path, on_event: Callable[[BatchEvent], None] | None):
        self.root, self.jobs, self.on_event = Path(root), jobs, on_event
        self.log = BatchLog(self.root / LOG_NAME)
        self.result = BatchResult(jobs)
        self.ends = self.log.last_ends()
        for job in jobs:
            check_folder(job.folder, self.root)
            verified = is_verified(job.folder, job.key, self.ends.get(job.folder.name)) and records_config(job)
            self.result.status[job.folder.name] = "done" if verified else "pending"
            self.result.skipped += verified

    def todo(self) -> list[Job]:
        """Jobs still to run, those sharing models back to back (first appearance order)."""
        pending = [job for job in self.jobs if self.result.status[job.folder.name] != "done"]
        first = {}
        for job in pending:
            first.setdefault(job.models, len(first))
        return sorted(pending, key=lambda job: first[job.models])

    def done_count(self) -> int:
        return len(self.result.names("done"))

    def emit(self, kind: str, job: Job | None) -> None:
        if self.on_event is not None:
            self.on_event(BatchEvent(kind, job, self.done_count(), len(self.jobs)))

    def started(self, job: Job, resume_from: int | None) -> None:
        check_folder(job.folder, self.root)
        self.log.append({"event": "start", **_identity(job), "resume_from": resume_from})
        self.emit("start", job)

    def finished(self, job: Job, result: RunResult, seconds: float, extra: dict | None = None) -> None:
        """Log a job's end (``extra``: more fields for its record, e.g. the worker that ran it)."""
        record = {**_identity(job), "steps_done": result.steps_done, "loss": result.loss,
                  "seconds": round(seconds, 3), **(extra or {})}
        if result.completed:
            record = {"event": "end", **record, "files": output_files(job.folder)}
            self.ends[job.folder.name] = record
            self.result.status[job.folder.name] = "done"
        else:
            record = {"event": "interrupted", **record}
            self.result.status[job.folder.name] = "interrupted"
            self.result.interrupted = True
        self.log.append(record)
        self.refresh()
        self.emit("finish", job)

    def retried(self, job: Job, error: str) -> None:
        """Log that a job's worker died mid-job; the job stays pending and runs again."""
        self.log.append({"event": "retry", **_identity(job), "error": error})

    def failed(self, job: Job, error: str) -> None:
        self.log.append({"event": "failed", **_identity(job), "error": error})
        self.result.status[job.folder.name] = "failed"
        self.result.errors[job.folder.name] = error
        self.emit("finish", job)

    def refresh(self) -> None:
        """Rewrite index.html and contact-sheet.png from the jobs done so far."""
        cards = []
        for job in self.jobs:
            end = self.ends.get(job.folder.name) if self.result.status[job.folder.name] == "done" else None
            cards.append(Card(job.name, job.folder.name, job.config.prompt, job.config.seed, job.preset,
                              job.config.steps, end.get("loss") if end else None, end is not None))
        write_gallery(self.root, cards)


def _identity(job: Job) -> dict:
    return {"job": job.name, "folder": job.folder.name, "key": job.key, "seed": job.config.seed,
            "steps": job.config.steps}


def run_batch(jobs: list[Job], output_dir: Path, *, workers: int = 1, devices: list[str] | None = None,
              on_step: Callable | None = None, on_event: Callable[[BatchEvent], None] | None = None,
              executor: str = "local", address: str | None = None, threads: int | None = None) -> BatchResult:
    """Run every job not yet verified done; returns each job's state (see BatchResult).

    ``threads``: torch CPU threads per worker (None: torch's default in one process, the CPU
    cores shared out among worker processes, this process's count on Ray). Images are
    byte-identical across executors when the thread count is the same.
    ``executor="ray"`` runs the jobs on the Ray cluster at ``address`` (None: a running one, or a
    local instance), one worker per GPU or per ``threads`` CPUs; ``on_step`` is not called there.
    """
    check_run_options(executor, workers, devices, threads)
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise OutputError(f"output {root} exists and is not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output folder {root}: {err.strerror}") from None
    remove_stale_temps(root)
    batch = Batch(jobs, root, on_event)
    try:
        batch.refresh()
        batch.emit("begin", None)
        todo = batch.todo()
        if executor == "ray":
            if todo:
                from pixgen.batch_ray import run_on_ray

                run_on_ray(batch, todo, address=address, threads=threads)
        elif workers <= 1 and not devices:
            _run_local(batch, todo, on_step, threads)
        elif todo:
            _run_pool(batch, todo, worker_devices(workers, devices), threads)
    except KeyboardInterrupt:  # between jobs (hashing, the gallery): every finished job is already logged
        batch.result.interrupted = True
    batch.refresh()
    return batch.result


def check_run_options(executor: str, workers: int, devices: list[str] | None, threads: int | None) -> None:
    """Refuse settings that do not fit together, in one line."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; expected one of {', '.join(EXECUTORS)}")
    if executor == "ray" and (workers > 1 or devices):
        raise ConfigError("--jobs and --devices are for --executor local; on Ray each worker gets one GPU, "
                          "or --threads CPUs")
    if threads is not None and threads < 1:
        raise ConfigError(f"invalid value {threads} for --threads: expected 1 or more")


def job_error(batch: Batch, job: Job, err: PixgenError) -> bool:
    """Log a job's error; True when the batch must stop (every later job would fail the same way)."""
    if isinstance(err, ConfigError):
        raise err
    batch.failed(job, " ".join(str(err).split()))
    return isinstance(err, FATAL)


def _run_local(batch: Batch, todo: list[Job], on_step: Callable | None, threads: int | None) -> None:
    with using_threads(threads):
        _run_jobs(batch, todo, on_step)


def _run_jobs(batch: Batch, todo: list[Job], on_step: Callable | None) -> None:
    for job in todo:
        start = time.perf_counter()
        try:
            batch.started(job, resume_point(job))
            result = execute_job(job, on_step)
        except KeyboardInterrupt:  # before the job's first step: nothing of it to keep
            batch.result.interrupted = True
            return
        except PixgenError as err:
            if job_error(batch, job, err):
                return
            continue
        batch.finished(job, result, time.perf_counter() - start)
        if not result.completed:
            return


def summary(result: BatchResult, root: Path, again: str) -> list[str]:
    """What a batch did, in a few lines; ``again`` is the command that continues it."""
    done, failed = result.names("done"), result.names("failed")
    pending = result.names("pending", "interrupted")
    lines = [*result.notes, f"{len(done)} of {len(result.jobs)} jobs done ({result.skipped} already done before), "
             f"{len(pending)} pending, {len(failed)} failed; gallery: {root / 'index.html'}"]
    lines += [f"failed: {job.name}: {result.errors[job.folder.name]}" for job in result.jobs
              if job.folder.name in result.errors and result.status[job.folder.name] == "failed"]
    if pending:
        partly = result.names("interrupted")
        lines.append(f"pending: {', '.join(pending)}" + (f" ({', '.join(partly)} saved part-way)" if partly else ""))
        lines.append(f"Continue with: {again}")
    return lines


def worker_devices(workers: int, devices: list[str] | None) -> list[str | None]:
    """One entry per worker process: its device (None: the job's own), round-robin over ``devices``."""
    count = max(workers, len(devices or []), 1)
    return [devices[i % len(devices)] if devices else None for i in range(count)]


def parse_devices(text: str) -> list[str]:
    """``cuda:0,cuda:1``, ``cpu,cpu`` or ``all`` (every CUDA device, else the CPU) -> device names."""
    import torch

    from pixgen.devices import pick_device

    if text.strip() == "all":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError("--devices needs a comma-separated list such as cuda:0,cuda:1 (or all)")
    for name in names:
        pick_device(name)  # one-line ConfigError for a bad or missing device
    return names


def cpu_worker_count(devices: list[str | None]) -> int:
    """How many of the workers run on the CPU (None: the job's own device, counted as the CPU)."""
    return sum(1 for d in devices if d in (None, "cpu"))


def pool_note(devices: list[str | None], cores: int) -> str | None:
    """What to tell about worker processes that share hardware badly, or None.

    On a CPU, workers up to the core count help (2 workers of 1 thread on 2 cores: 16 % faster than
    one process of 2 threads, ``benchmarks/batch.py``); more than that only take turns. Several
    workers on one GPU compete for it.
    """
    cpu_workers = cpu_worker_count(devices)
    if cpu_workers > cores:
        return (f"note: {cpu_workers} worker processes took turns on {cores} CPU cores; --jobs {cores} is as fast "
                "or faster, with less memory")
    if len(devices) > 1 and len(set(devices)) == 1 and devices[0] not in (None, "cpu"):
        return (f"note: {len(devices)} worker processes shared one device ({devices[0]}); there, one process "
                "(the default) is usually as fast, with less memory")
    return None


def _run_pool(batch: Batch, todo: list[Job], devices: list[str | None], threads: int | None) -> None:
    note = pool_note(devices, os.cpu_count() or 1)
    if note:
        batch.result.notes.append(note)
    context = multiprocessing.get_context("spawn")
    pool = _Pool(context, context.Queue(), context.Queue(), context.Event())
    for index, job in enumerate(todo):
        pool.tasks.put((index, job))
    pool.threads = threads or max(1, (os.cpu_count() or 1) // max(1, cpu_worker_count(devices)))
    for device in devices:
        pool.start(device)
    try:
        _collect(batch, todo, pool)
    except KeyboardInterrupt:
        pool.stop.set()
        batch.result.interrupted = True
        _collect(batch, todo, pool)
    finally:
        for proc in pool.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()


@dataclass
class _Pool:
    """Worker processes, their devices, and the queues between them and the parent."""

    context: Any
    tasks: Any  # (index, job) still to run
    results: Any  # (kind, index, payload, worker number) from the workers
    stop: Any  # set: workers stop at their next step
    threads: int = 1
    procs: list = field(default_factory=list)
    devices: list = field(default_factory=list)
    started: dict[int, float] = field(default_factory=dict)  # job index -> when it started
    deaths: dict[int, int] = field(default_factory=dict)  # job index -> workers that died running it

    def start(self, device: str | None) -> None:
        """Start one more worker process on ``device``."""
        proc = self.context.Process(target=_worker, daemon=True, args=(
            len(self.procs), device, self.threads, self.tasks, self.results, self.stop))
        self.procs.append(proc)
        self.devices.append(device)
        proc.start()


def _collect(batch: Batch, todo: list[Job], pool: _Pool) -> None:
    """Log the workers' news until they have all exited.

    A job whose worker died goes back on the queue for a new worker on the same device (up to
    RETRIES times; then, or once stopping, it counts as failed).
    """
    running: dict[int, int] = {}  # worker number -> index of the job it runs
    while True:
        try:
            kind, index, payload, worker = pool.results.get(timeout=0.2)
        except queue.Empty:
            for number, proc in enumerate(list(pool.procs)):
                if not proc.is_alive() and number in running:
                    _worker_died(batch, todo, pool, running.pop(number), number)
            if not any(proc.is_alive() for proc in pool.procs):
                return
            continue
        job = todo[index]
        if kind == "start":
            pool.started[index], running[worker] = time.perf_counter(), index
            batch.started(job, payload)
            continue
        running.pop(worker, None)
        if kind == "result":
            batch.finished(job, payload, time.perf_counter() - pool.started.get(index, time.perf_counter()))
        elif kind == "failed":
            batch.failed(job, payload)


def _worker_died(batch: Batch, todo: list[Job], pool: _Pool, index: int, number: int) -> None:
    job, code = todo[index], pool.procs[number].exitcode
    pool.deaths[index] = pool.deaths.get(index, 0) + 1
    error = f"its worker process died (exit code {code})"
    if pool.stop.is_set() or pool.deaths[index] > RETRIES:
        times = f" {pool.deaths[index]} times" if pool.deaths[index] > 1 else ""
        batch.failed(job, f"{error}{times}; run the batch again to continue it")
        return
    batch.retried(job, f"{error}; running it again")
    pool.tasks.put((index, job))
    pool.start(pool.devices[number])


def _worker(number: int, device: str | None, threads: int, tasks, results, stop) -> None:
    """A worker process: take jobs until the queue is empty or the parent says stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; a stop interrupts at the next step
    if device in (None, "cpu"):
        import torch

        torch.set_num_threads(threads)

    def check_stop(_step) -> None:
        if stop.is_set():
            raise KeyboardInterrupt

    while not stop.is_set():
        try:
            index, job = tasks.get_nowait()
        except queue.Empty:
            return
        results.put(("start", index, resume_point(job), number))
        try:
            result = execute_job(job, check_stop, device)
        except KeyboardInterrupt:  # stopped before the job's first step: nothing of it to keep
            results.put(("failed", index, "stopped before its first step", number))
            return
        except PixgenError as err:
            results.put(("failed", index, " ".join(str(err).split()), number))
            if isinstance(err, FATAL):
                return
            continue
        results.put(("result", index, result, number))
        if not result.completed:
            return
