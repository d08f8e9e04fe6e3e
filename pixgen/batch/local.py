"""The local executor: jobs in this process, or in spawned worker processes, one per device entry."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pixgen.batch.jobs import FATAL, RETRIES, Batch, execute_job, job_error, resume_point, using_threads
from pixgen.batch.manifest import Job
from pixgen.errors import ConfigError, PixgenError, one_line

# What one machine can hold, checked before the batch folder is made (docs/batch.md):
WORKERS_PER_CORE = 2  # worker processes per usable CPU core at most (more only take turns: pool_note)
# A worker's own memory before any model (Python, torch and open_clip imported; about 430 MiB of
# private memory measured on Linux); its models and one step come on top (pipeline.memory.run_bytes).
WORKER_PROCESS_BYTES = 400 * 2**20


def run_in_process(batch: Batch, todo: list[Job], on_step: Callable | None, threads: int | None) -> None:
    """Run ``todo`` one after another in this process, with ``threads`` torch CPU threads."""
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


def worker_devices(workers: int, devices: list[str] | None) -> list[str | None]:
    """One entry per worker process: its device (None: the job's own), round-robin over ``devices``."""
    count = max(workers, len(devices or []), 1)
    return [devices[i % len(devices)] if devices else None for i in range(count)]


def parse_devices(text: str) -> list[str]:
    """``cuda:0,cuda:1``, ``cpu,cpu`` or ``all`` (every CUDA device, else the CPU) -> device names."""
    import torch

    from pixgen.pipeline.devices import pick_device

    if text.strip() == "all":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError("--devices needs a comma-separated list such as cuda:0,cuda:1 (or all)")
    for name in names:
        pick_device(name)  # one-line ConfigError for a bad or missing device
    return names


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_pool_size(workers: int, devices: list[str] | None, threads: int | None) -> None:
    """Refuse more worker processes, or threads per worker, than this machine's CPU cores can run."""
    cores = usable_cores()
    count = len(worker_devices(workers, devices))
    if count > cores * WORKERS_PER_CORE:
        asked = f"--devices lists {count} workers" if devices and len(devices) >= workers else f"--jobs {workers}"
        raise ConfigError(f"{asked}, but this machine has {cores} CPU core(s): at most {cores * WORKERS_PER_CORE} "
                          f"worker processes ({WORKERS_PER_CORE} per core)")
    if threads is not None and threads > cores:
        raise ConfigError(f"--threads {threads} is more than the {cores} CPU core(s) this machine has")


def check_devices(jobs: list[Job], devices: list[str] | None) -> None:
    """Refuse a device this machine does not have: a ``devices`` entry or, without any, a job's own device."""
    from pixgen.pipeline.devices import pick_device

    for name in devices or []:
        pick_device(name)
    if devices:
        return  # every worker has its device: the jobs' own do not count
    seen = set()
    for job in jobs:
        if job.config.device not in seen:
            seen.add(job.config.device)
            try:
                pick_device(job.config.device)
            except ConfigError as err:
                raise ConfigError(f"job {job.name!r}: {err}") from None


def check_pool_memory(jobs: list[Job], devices: list[str | None]) -> None:
    """Refuse more worker processes than memory holds: each needs WORKER_PROCESS_BYTES of RAM, plus its
    largest job's models and step (:func:`pixgen.pipeline.memory.run_bytes`) on the device it runs on."""
    import torch

    cpu = torch.device("cpu")
    _refuse_overfull(devices, {cpu: WORKER_PROCESS_BYTES * len(devices)})  # before loading any model
    sizes, placed = job_bytes(jobs), _placed(jobs, devices)
    need: dict = {cpu: WORKER_PROCESS_BYTES * len(devices)}
    for entry in devices:
        largest: dict = {}  # the worst this worker can hold on each device
        for job in jobs:
            device = placed[entry or job.config.device]
            largest[device] = max(largest.get(device, 0), sizes.get(job.folder.name, 0))
        for device, size in largest.items():
            need[device] = need.get(device, 0) + size
    _refuse_overfull(devices, need)


def _placed(jobs: list[Job], devices: list[str | None]) -> dict:
    """Device name -> torch device, for the workers' devices and (for workers without one) the jobs'."""
    from pixgen.pipeline.devices import pick_device

    names = {entry for entry in devices if entry}
    if not all(devices):
        names |= {job.config.device for job in jobs}
    return {name: pick_device(name) for name in names}


def _refuse_overfull(devices: list[str | None], need: dict) -> None:
    from pixgen.pipeline import memory

    for device, total in need.items():
        free = memory.available_bytes(device)
        if free is None or total <= free:
            continue
        fit = int(free // (total / len(devices)))
        if not fit:
            advice = "run it in one process (no --jobs or --devices)"
        else:
            advice = f"give --devices at most {fit} entries" if all(devices) else f"use --jobs {fit} or fewer"
        raise ConfigError(f"{len(devices)} worker processes need about {total / 2**30:.1f} GiB on {device} "
                          f"(the process, its models and one step), but it has {free / 2**30:.1f} GiB free; {advice}")


def job_bytes(jobs: list[Job]) -> dict[str, int]:
    """Each job's run_bytes by folder name, its models loaded once per model set on the CPU to measure them
    (then let go); a job whose models cannot be loaded here is left out (running it says why)."""
    import torch

    from pixgen.engine.loop import Models
    from pixgen.models.factory import load_clip, load_vqgan
    from pixgen.models.registry import load_registry
    from pixgen.pipeline.memory import run_bytes

    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.config.vqgan, tuple(job.config.clip)), []).append(job)
    sizes, registry = {}, load_registry()
    for (vqgan, clips), members in groups.items():
        try:
            models = Models(load_vqgan(vqgan, registry).module, [load_clip(c, registry).module for c in clips],
                            torch.device("cpu"))
        except PixgenError:
            continue
        for job in members:
            sizes[job.folder.name] = run_bytes(job.config, models)
    return sizes


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


def run_in_workers(batch: Batch, todo: list[Job], devices: list[str | None], threads: int | None) -> None:
    """Run ``todo`` in spawned worker processes, one per entry of ``devices``; replace any that dies."""
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
            len(self.procs), device, self.threads, self.tasks, self.results, self.stop, os.getpid()))
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


def die_with_parent(parent: int) -> None:
    """End this worker process when its parent ends, ``kill -9`` included (Linux; elsewhere a no-op): an orphan
    would go on holding its job folder, so a new batch or server could not continue that job."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before the prctl took hold
        os._exit(1)


def _worker(number: int, device: str | None, threads: int, tasks, results, stop, parent: int) -> None:
    """A worker process: take jobs until the queue is empty or the parent says stop."""
    die_with_parent(parent)
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
            results.put(("failed", index, one_line(err), number))
            if isinstance(err, FATAL):
                return
            continue
        results.put(("result", index, result, number))
        if not result.completed:
            return
