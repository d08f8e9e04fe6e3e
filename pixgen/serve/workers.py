"""The studio's worker processes: each keeps its models loaded and takes one job at a time.

They are ``pixgen batch``'s local workers (spawned, one per ``--devices`` entry, a run done by
:func:`pixgen.batch.jobs.execute_job`, continued from its folder's state), with what a server
adds: a single job can be cancelled (the worker stops it at its next step, its state is saved,
and the worker takes the next job); progress with a small preview image goes to the server at
most every ``preview_every`` seconds; and a worker dies with the server, ``kill -9`` included, so
a new server finds no orphan holding a job folder.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import time
import traceback
from dataclasses import replace
from typing import Any

from pixgen.batch.jobs import execute_job, resume_point, step_report
from pixgen.batch.local import die_with_parent
from pixgen.errors import PixgenError, one_line
from pixgen.pipeline.runner import RunResult
from pixgen.serve.submit import Order, animation_plan

EARLY_DEATH = 10.0  # seconds: a worker that ends sooner after its start is started again only after a pause
MAX_PAUSE = 60.0


class WorkerPool:
    """Spawned worker processes, one per device entry, each handed one job at a time through its own inbox,
    so the server always knows which job a worker holds (to stop it, or to run it again if the worker dies)."""

    def __init__(self, devices: list[str | None], threads: int, preview_every: float):
        self.context = multiprocessing.get_context("spawn")
        self.results = self.context.Queue()
        self.devices, self.threads, self.preview_every = devices, threads, preview_every
        self.procs: list[Any] = [None] * len(devices)
        self.inboxes: list[Any] = [None] * len(devices)
        self.stops = [self.context.Value("q", -1, lock=False) for _ in devices]  # run number of the job to stop
        self.holding: dict[int, tuple[int, int]] = {}  # worker number -> (token, run number) of its job
        self.runs = 0  # run numbers: a job resumed later is another run, which an old stop does not touch
        self.spawned = [0.0] * len(devices)  # when each worker was last started
        self.pause = [0.0] * len(devices)  # seconds before a worker that died early is started again

    def start(self) -> None:
        for number in range(len(self.devices)):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        self.spawned[number] = time.monotonic()
        self.inboxes[number] = self.context.Queue()
        proc = self.context.Process(target=_worker, daemon=True, name=f"pixgen-worker-{number}", args=(
            number, self.devices[number], self.threads, self.preview_every, os.getpid(), self.inboxes[number],
            self.results, self.stops[number]))
        proc.start()
        self.procs[number] = proc

    def idle(self) -> int:
        """How many more jobs the workers can take now."""
        return len(self._free())

    def _free(self) -> list[int]:
        return [n for n, proc in enumerate(self.procs) if proc is not None and n not in self.holding]

    def hand(self, token: int, order: Order) -> None:
        number = self._free()[0]
        self.runs += 1
        self.holding[number] = (token, self.runs)
        self.inboxes[number].put((token, self.runs, order))

    def cancel(self, token: int) -> None:
        """Stop the job ``token`` at its next step (before its first, if its worker has not started it yet)."""
        for number, (held, run) in self.holding.items():
            if held == token:
                self.stops[number].value = run

    def poll(self, timeout: float) -> list[tuple[str, int, Any]]:
        """The workers' news as (kind, token, payload): start, progress, result, failed, stopped, died, and
        note (about a worker that keeps dying: it is started again after a growing pause)."""
        news = self._drain(timeout)
        now = time.monotonic()
        for number, proc in enumerate(self.procs):
            if proc is not None and not proc.is_alive():
                news += self._drain(0)  # what it said before it died comes first
                held = self.holding.pop(number, None)
                if held is not None:  # its job runs again (RETRIES times at most): no pause
                    news.append(("died", held[0], proc.exitcode))
                self.procs[number] = None
                early = held is None and now - self.spawned[number] < EARLY_DEATH
                self.pause[number] = min(MAX_PAUSE, max(1.0, self.pause[number] * 2)) if early else 0.0
                if early:
                    lived, device = now - self.spawned[number], self.devices[number] or "auto"
                    news.append(("note", -1, f"worker {number} ({device}) ended {lived:.0f} s after it started "
                                             f"(exit code {proc.exitcode}); starting it again in "
                                             f"{self.pause[number]:.0f} s"))
            if self.procs[number] is None and now - self.spawned[number] >= self.pause[number]:
                self._spawn(number)
        return news

    def _drain(self, timeout: float) -> list[tuple[str, int, Any]]:
        """News waiting in the results queue (waiting up to ``timeout`` for the first); a job's end frees its worker."""
        news = []
        try:
            news.append(self.results.get(timeout=timeout) if timeout else self.results.get_nowait())
            while True:
                news.append(self.results.get_nowait())
        except queue.Empty:
            pass
        for kind, token, _payload, number in news:
            if kind in ("result", "failed", "stopped") and self.holding.get(number, (None,))[0] == token:
                del self.holding[number]
        return [(kind, token, payload) for kind, token, payload, _number in news]

    def close(self) -> list[tuple[str, int, Any]]:
        """Stop every worker (running jobs save their state), then the processes; their last news."""
        for number, (_token, run) in self.holding.items():
            self.stops[number].value = run
        for inbox in self.inboxes:
            if inbox is not None:
                inbox.put(None)
        news, deadline = [], time.monotonic() + 30
        while any(p is not None and p.is_alive() for p in self.procs) and time.monotonic() < deadline:
            news += self._drain(0.1)
        for proc in self.procs:
            if proc is not None and proc.is_alive():
                proc.terminate()
        return news + self._drain(0)


def _worker(number: int, device: str | None, threads: int, preview_every: float, parent: int, inbox, results,
            stop) -> None:
    """A worker process: run jobs from ``inbox`` until it gets None or the server is gone."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when a job stops
    if device in (None, "cpu"):
        import torch

        torch.set_num_threads(threads)
    while os.getppid() == parent:
        try:
            task = inbox.get(timeout=1.0)
        except queue.Empty:
            continue
        if task is None:
            return
        token, run, order = task
        results.put(("start", token, _resume_from(order), number))
        report = _Reporter(token, number, results, preview_every, _stopping(stop, run, parent))
        try:
            result = execute_order(order, report.step, report.frame, device)
        except KeyboardInterrupt:  # stopped before its first step: nothing of it to keep
            results.put(("stopped", token, None, number))
            continue
        except PixgenError as err:
            results.put(("failed", token, one_line(err), number))
            continue
        except Exception as err:  # a bug: the job fails, the worker goes on, the operator sees the traceback
            traceback.print_exc(file=sys.stderr)
            results.put(("failed", token, f"internal error ({type(err).__name__}: {err}); see the server's log",
                         number))
            continue
        results.put(("result", token, result, number))


def _stopping(stop, run: int, parent: int):
    """True once the server asks this run of a job to stop, or is gone."""
    return lambda: stop.value == run or os.getppid() != parent


def _resume_from(order: Order) -> int | None:
    return resume_point(order.job) if order.kind == "run" else None


class _Reporter:
    """Sends a job's progress to the server: step, loss and a small preview, at most every ``every`` seconds."""

    def __init__(self, token: int, number: int, results, every: float, stopping):
        self.token, self.number, self.results, self.every, self.stopping = token, number, results, every, stopping
        self.sent, self.frames, self.frames_done = 0.0, None, None

    def step(self, step) -> None:
        if self.stopping():
            raise KeyboardInterrupt
        now = time.monotonic()
        if now - self.sent >= self.every or step.step == step.total:
            self.sent = now
            self.results.put(("progress", self.token, self._payload(step), self.number))

    def frame(self, done) -> None:
        self.frames, self.frames_done = done.total, done.frame + 1

    def _payload(self, step) -> dict[str, Any]:
        return step_report(step, self.frames_done, self.frames)


def execute_order(order: Order, on_step, on_frame, device: str | None) -> RunResult:
    """Run one studio job in its folder, continuing it from its saved state when it has one."""
    if order.kind == "run":
        return execute_job(order.job, on_step, device)
    return _execute_animation(order, on_step, on_frame, device)


def _execute_animation(order: Order, on_step, on_frame, device: str | None) -> RunResult:
    from pixgen.animation.animate import (
        STATE_NAME,
        animate,
        animation_identity,
        check_frames,
        read_animation_state,
    )
    from pixgen.batch.log import remove_stale_temps

    job, plan = order.job, animation_plan(order)
    config = job.config if device is None else replace(job.config, device=device)
    if job.folder.is_dir():
        remove_stale_temps(job.folder)
    state = None
    if (job.folder / STATE_NAME).is_file():
        try:
            state = read_animation_state(job.folder / STATE_NAME)
            check_frames(job.folder, state["frame"] + 1)
        except PixgenError:
            state = None
        if state is not None and state.get("run", "") != animation_identity(config, plan):
            state = None
    done = animate(config, plan, job.folder, overwrite=state is None, on_frame=on_frame, on_step=on_step,
                   resume=state)
    image = done.frame_paths[-1] if done.frame_paths else job.folder / "frames"
    return RunResult(job.folder, image, done.seed, done.frames_done, done.completed, done.frame_paths,
                     done.gif_path, None, done.read_as)
