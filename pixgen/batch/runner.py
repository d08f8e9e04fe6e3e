"""Running a planned batch: skip verified jobs, resume half-done ones, log, refresh the gallery.

One process by default (models stay loaded between jobs: ``pipeline.load_models`` caches them);
``workers > 1`` or ``devices`` hand jobs to spawned worker processes, one per device entry
(:mod:`pixgen.batch.local`); ``executor="ray"`` runs them on Ray actors (:mod:`pixgen.batch.on_ray`).
A job whose worker dies is run again by a new worker (up to RETRIES times), from the state its
folder holds. Ctrl-C stops the running job(s) after saving their state; nothing done is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pixgen.batch.jobs import Batch, BatchEvent, BatchResult
from pixgen.batch.local import (
    check_devices,
    check_pool_memory,
    check_pool_size,
    run_in_process,
    run_in_workers,
    worker_devices,
)
from pixgen.batch.log import remove_stale_temps
from pixgen.batch.manifest import Job, check_executor
from pixgen.errors import ConfigError, OutputError
from pixgen.folder_lock import hold_folder

EXECUTORS = ("local", "ray")
MAX_RAY_THREADS = 1024  # --threads on Ray: CPUs of the cluster's machines, not this one's


def run_batch(jobs: list[Job], output_dir: Path, *, workers: int = 1, devices: list[str] | None = None,
              on_step: Callable | None = None, on_event: Callable[[BatchEvent], None] | None = None,
              executor: str = "local", address: str | None = None, threads: int | None = None) -> BatchResult:
    """Run every job not yet verified done; returns each job's state (see BatchResult).

    ``threads``: torch CPU threads per worker (None: torch's default in one process, the CPU
    cores shared out among worker processes, this process's count on Ray). Images are
    byte-identical across executors when the thread count is the same.
    ``executor="ray"`` runs the jobs on the Ray cluster at ``address`` (None: a running one, or a
    local instance), one worker per GPU or per ``threads`` CPUs; ``on_step`` is not called there.
    The batch holds ``output_dir`` (:func:`pixgen.folder_lock.hold_folder`) until it ends: a second batch
    on it meanwhile gets OutputBusy and touches nothing (each job holds its own folder as it runs).
    """
    check_batch(jobs, executor, workers, devices, threads, address)  # all before the folder is touched
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise OutputError(f"output {root} exists and is not a folder")
    with hold_folder(root):
        return _run_held(jobs, root, workers, devices, on_step, on_event, executor, address, threads)


def _run_held(jobs: list[Job], root: Path, workers: int, devices: list[str] | None, on_step: Callable | None,
              on_event: Callable[[BatchEvent], None] | None, executor: str, address: str | None,
              threads: int | None) -> BatchResult:
    """:func:`run_batch` in a folder this process holds."""
    remove_stale_temps(root)
    batch = Batch(jobs, root, on_event)
    try:
        batch.refresh()
        batch.emit("begin", None)
        todo = batch.todo()
        if executor == "ray":
            if todo:
                from pixgen.batch.on_ray import run_on_ray  # Ray is an extra: imported only when asked for

                run_on_ray(batch, todo, address=address, threads=threads)
        elif workers <= 1 and not devices:
            run_in_process(batch, todo, on_step, threads)
        elif todo:
            run_in_workers(batch, todo, worker_devices(workers, devices), threads)
    except KeyboardInterrupt:  # between jobs (hashing, the gallery): every finished job is already logged
        batch.result.interrupted = True
    finally:
        batch.close_running()  # every start gets its end or a failure, also when an error stops the batch
    batch.refresh()
    return batch.result


def check_batch(jobs: list[Job], executor: str, workers: int, devices: list[str] | None, threads: int | None,
                address: str | None) -> None:
    """Everything that can refuse a batch before it starts: options, executor, devices, what the machine holds."""
    check_run_options(executor, workers, devices, threads)
    check_executor(executor, address)
    if executor == "local":  # on Ray the cluster's machines run the jobs
        check_devices(jobs, devices)
        if workers > 1 or devices:
            check_pool_memory(jobs, worker_devices(workers, devices))


def check_run_options(executor: str, workers: int, devices: list[str] | None, threads: int | None) -> None:
    """Refuse settings that do not fit together, or more workers or threads than this machine runs, in one line."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; expected one of {', '.join(EXECUTORS)}")
    if executor == "ray" and (workers > 1 or devices):
        raise ConfigError("--jobs and --devices are for --executor local; on Ray each worker gets one GPU, "
                          "or --threads CPUs")
    if workers < 1:
        raise ConfigError(f"invalid value {workers} for --jobs: expected 1 or more")
    if threads is not None and threads < 1:
        raise ConfigError(f"invalid value {threads} for --threads: expected 1 or more")
    if executor == "local":
        check_pool_size(workers, devices, threads)
    elif threads is not None and threads > MAX_RAY_THREADS:
        raise ConfigError(f"--threads {threads} is more than {MAX_RAY_THREADS} CPUs per Ray worker")
