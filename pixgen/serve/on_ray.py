"""The studio's Ray executor: ``pixgen batch``'s Ray actors, fed one job each as the queue gives them.

One actor per GPU of the cluster (without GPUs: one per ``threads`` CPUs) keeps its models loaded.
A job runs in the actor's scratch folder from the state its job folder holds, and its files come
back into ``DIR`` (:func:`pixgen.batch.on_ray.store`), so resume and verification work as on the
local executor. Progress is fetched from the running actors every ``preview_every`` seconds; a
cancel stops the actor's job at its next step. Animations run on the local executor only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pixgen.batch.jobs import resume_point
from pixgen.batch.on_ray import Plan as RayPlan
from pixgen.batch.on_ray import (
    RayWorker,
    _connect,
    _import_ray,
    job_device,
    job_files,
    placed_result,
    store,
    worker_env,
)
from pixgen.errors import PixgenError, one_line
from pixgen.serve.submit import Order


class RayPool:
    """Ray actors behind the same interface as :class:`pixgen.serve.workers.WorkerPool`."""

    def __init__(self, root: Path, address: str | None, threads: int | None, preview_every: float):
        self.root, self.address, self.threads, self.preview_every = Path(root), address, threads, preview_every
        self.devices: list[str] = []
        self.idle_actors: list[Any] = []
        self.running: dict[Any, tuple[Any, int, Order]] = {}  # result ref -> (actor, token, order)
        self.run_ids: dict[Any, int] = {}  # result ref -> the run's id, for cancel
        self.runs = 0
        self.news: list[tuple[str, int, Any]] = []
        self.polled = 0.0
        self.ray = None
        self.started_here = False

    def start(self) -> None:
        import torch

        self.ray = ray = _import_ray()
        self.threads = self.threads or torch.get_num_threads()
        self.started_here = _connect(ray, self.address)
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        if gpus:
            self.plan = RayPlan(gpus, {"num_gpus": 1, "num_cpus": 1}, True)
        else:
            self.plan = RayPlan(max(1, cpus // self.threads), {"num_cpus": min(self.threads, max(cpus, 1))}, False)
        self.worker_class = ray.remote(max_concurrency=2)(RayWorker)  # a second thread answers progress and cancel
        self.devices = ["ray:gpu" if self.plan.gpu else "ray:cpu"] * self.plan.count
        self.idle_actors = [self._spawn() for _ in range(self.plan.count)]

    def _spawn(self):
        return self.worker_class.options(**self.plan.options).remote(worker_env(), self.threads)

    def idle(self) -> int:
        return len(self.idle_actors)

    def hand(self, token: int, order: Order) -> None:
        if order.kind != "run":
            self.news.append(("failed", token, "animations run on the local executor (pixgen serve without "
                                               "--executor ray)"))
            return
        job = order.job
        actor = self.idle_actors.pop()
        self.runs += 1
        ref = actor.run_job.remote(job, job_files(job), job_device(job, self.plan), self.preview_every, self.runs)
        self.running[ref], self.run_ids[ref] = (actor, token, order), self.runs
        self.news.append(("start", token, resume_point(job)))

    def cancel(self, token: int) -> None:
        for ref, (actor, running, _order) in self.running.items():
            if running == token:
                actor.cancel.remote(self.run_ids[ref])

    def poll(self, timeout: float) -> list[tuple[str, int, Any]]:
        ray = self.ray
        if self.running:
            ready, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=timeout)
        else:
            ready = []
            time.sleep(timeout)
        for ref in ready:
            self._collect(ref)
        if self.running and time.monotonic() - self.polled >= self.preview_every:
            self.polled = time.monotonic()
            for actor, token, _order in list(self.running.values()):
                try:
                    latest = ray.get(actor.progress.remote(), timeout=5)
                except Exception:  # a busy or dying actor: its news comes with its result
                    continue
                if latest is not None:
                    self.news.append(("progress", token, latest))
        news, self.news = self.news, []
        return news

    def _collect(self, ref) -> None:
        from ray.exceptions import RayActorError, WorkerCrashedError

        actor, token, order = self.running.pop(ref)
        self.run_ids.pop(ref, None)
        try:
            reply = self.ray.get(ref)
        except (RayActorError, WorkerCrashedError) as err:
            self.ray.kill(actor)
            self.idle_actors.append(self._spawn())
            self.news.append(("died", token, f"Ray: {type(err).__name__}"))
            return
        self.idle_actors.append(actor)
        if "stopped" in reply:
            self.news.append(("stopped", token, None))
        elif "error" in reply:
            self.news.append(("failed", token, one_line(reply["error"])))
        else:
            try:
                store(self.root, order.job, reply["files"])
            except PixgenError as err:
                self.news.append(("failed", token, one_line(err)))
                return
            self.news.append(("result", token, placed_result(reply["result"], order.job)))

    def close(self) -> list[tuple[str, int, Any]]:
        """Stop the running jobs (their state comes back and is stored), then the actors; the last news."""
        if self.ray is None:
            return []
        for actor, _token, _order in self.running.values():
            actor.stop.remote()
        deadline = time.monotonic() + 30
        while self.running and time.monotonic() < deadline:
            ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=1)
            for ref in ready:
                self._collect(ref)
        for actor in self.idle_actors + [a for a, _, _ in self.running.values()]:
            self.ray.kill(actor)
        if self.started_here:
            self.ray.shutdown()
        news, self.news = self.news, []
        return [item for item in news if item[0] != "died"]

