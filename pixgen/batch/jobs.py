"""What every executor shares: a batch's state and log (:class:`Batch`), running one job, the summary."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pixgen.batch.gallery import Card, write_gallery
from pixgen.batch.log import LOG_NAME, BatchLog, is_verified, output_files, remove_stale_temps
from pixgen.batch.manifest import Job, check_folder
from pixgen.config import config_to_yaml
from pixgen.errors import (
    CheckpointError,
    ConfigError,
    ModelNotAvailable,
    OutputError,
    PixgenError,
    UnknownModel,
    one_line,
)
from pixgen.pipeline.runner import (
    CONFIG_NAME,
    STATE_NAME,
    RunResult,
    read_run_config,
    read_state,
    run,
    run_identity,
)

# Errors that are not about one job: the batch stops instead of failing every later job the same way.
FATAL = (CheckpointError, ModelNotAvailable, UnknownModel, OutputError)
RETRIES = 2  # times a job whose worker died is run again before it counts as failed


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
    record this job's config, and the state must be this job's run (not a copy from another).
    """
    folder = job.folder
    try:
        if not (folder / STATE_NAME).is_file() or folder.is_symlink():
            return None
        if (folder / CONFIG_NAME).is_file() and not records_config(job):
            return None
        state = read_state(folder / STATE_NAME)
    except PixgenError:
        return None
    identity = run_identity(job.config)
    if state.get("run", identity) != identity:  # another run's state
        return None
    return state["step"] if state["step"] < job.config.steps else None


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


def step_report(step, frame: int | None = None, frames: int | None = None) -> dict[str, Any]:
    """One step's progress for a watcher (``pixgen serve``'s page): step, total, loss, the animation frame if
    any, and a small preview image (``preview`` bytes of ``preview_type``). Decodes the latents: not every step."""
    from pixgen.pipeline.output import preview_bytes

    data, media_type = preview_bytes(step.image())
    return {"step": step.step, "total": step.total, "loss": round(float(step.loss), 6), "frame": frame,
            "frames": frames, "preview": data, "preview_type": media_type}


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
        self.root, self.on_event = Path(root), on_event
        self.log = BatchLog(self.root / LOG_NAME)
        self.jobs: list[Job] = []
        self.result = BatchResult(self.jobs)
        self.ends = self.log.last_ends()
        self.running: set[str] = set()  # folders of jobs logged as started, not yet ended or failed
        for job in jobs:
            self.add(job)

    def add(self, job: Job) -> bool:
        """Take one more job (``pixgen serve`` adds them as they are submitted); True if it is already done."""
        check_folder(job.folder, self.root)
        verified = self.is_done(job)
        self.jobs.append(job)
        self.result.status[job.folder.name] = "done" if verified else "pending"
        self.result.skipped += verified
        return verified

    def is_done(self, job: Job) -> bool:
        """Whether the job's last end record is its own and its files are intact, made with its whole config."""
        return is_verified(job.folder, job.key, self.ends.get(job.folder.name)) and records_config(job)

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
        self.running.add(job.folder.name)
        self.emit("start", job)

    def finished(self, job: Job, result: RunResult, seconds: float, extra: dict | None = None,
                 files: dict[str, str] | None = None) -> None:
        """Log a job's end (``extra``: more fields for its record, e.g. the worker that ran it; ``files``: its
        outputs' sha256 if already computed, see :func:`~pixgen.batch.log.output_files`)."""
        record = {**_identity(job), "steps_done": result.steps_done, "loss": result.loss,
                  "seconds": round(seconds, 3), **(extra or {})}
        if result.completed:
            record = {"event": "end", **record, "files": files if files is not None else output_files(job.folder)}
            self.ends[job.folder.name] = record
            self.result.status[job.folder.name] = "done"
        else:
            record = {"event": "interrupted", **record}
            self.result.status[job.folder.name] = "interrupted"
            self.result.interrupted = True
        self.log.append(record)
        self.running.discard(job.folder.name)
        self.refresh()
        self.emit("finish", job)

    def retried(self, job: Job, error: str) -> None:
        """Log that a job's worker died mid-job; the job stays pending and runs again."""
        self.log.append({"event": "retry", **_identity(job), "error": error})
        self.running.discard(job.folder.name)  # its next start is logged when a worker takes it again

    def failed(self, job: Job, error: str) -> None:
        self.log.append({"event": "failed", **_identity(job), "error": error})
        self.running.discard(job.folder.name)
        self.result.status[job.folder.name] = "failed"
        self.result.errors[job.folder.name] = error
        self.emit("finish", job)

    def close_running(self) -> None:
        """Log a failure for every job still logged as started (the batch stopped before it ended: an error,
        or Ctrl-C before its first step), so every start has its end; a re-run redoes the job."""
        error = "stopped before its first step" if self.result.interrupted else "the batch stopped before it ended"
        for job in self.jobs:
            if job.folder.name in self.running:
                try:
                    self.log.append({"event": "failed", **_identity(job), "error": error})
                except PixgenError:  # the log cannot be written: the error that stopped the batch says more
                    return
        self.running.clear()

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


def job_error(batch: Batch, job: Job, err: PixgenError) -> bool:
    """Log a job's error; True when the batch must stop (every later job would fail the same way).

    A ConfigError, found only once the job ran, stops the batch with it, after its failure is logged."""
    batch.failed(job, one_line(err))
    if isinstance(err, ConfigError):
        raise err
    return isinstance(err, FATAL)


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
