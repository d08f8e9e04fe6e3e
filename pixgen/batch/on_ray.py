"""The Ray executor: a batch's jobs run on Ray actors, their files come back to ``DIR`` on the driver.

One actor per GPU of the cluster (without GPUs: one per ``threads`` CPUs) keeps its models loaded
between jobs. An actor runs a job with the local executor's ``execute_job``, in a scratch folder on
its machine that holds the job's ``state.pt``, ``run.yaml`` and frames when the job is half done,
and sends back every file the job wrote. The driver writes them into the job folder atomically and
logs them through the same ``Batch`` as the local executor, so skip, resume and verify work alike.
Nothing reaches the job folder while a job runs, so a worker that dies mid-job leaves nothing
behind: the job runs again on a new actor from the state its folder holds (up to RETRIES times).

``ray`` is imported only here, when this executor is used (``pip install 'pixgen[ray]'``).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pixgen.batch.jobs import RETRIES, Batch, execute_job, job_error, resume_point, step_report
from pixgen.batch.manifest import Job, check_folder
from pixgen.errors import PixgenError
from pixgen.fileio import atomic_path
from pixgen.pipeline.runner import CONFIG_NAME, FRAMES_DIR, GIF_NAME, IMAGE_NAME, STATE_NAME, RunResult

SCRATCH_PREFIX = "pixgen-ray-"
ENV_PREFIXES = ("PIXGEN_", "HF_HUB_OFFLINE")  # passed from the driver to every worker


class RayWorker:
    """A Ray actor's state: its models (cached by ``pipeline.load_models``), threads and device."""

    def __init__(self, env: dict[str, str], threads: int):
        os.environ.update(env)
        import torch

        torch.set_num_threads(threads)
        self.stopping = threading.Event()
        self.cancelled: int | None = None  # the run_id of a job to stop (pixgen serve's cancel)
        self.latest: dict[str, Any] | None = None  # the running job's last progress, with a preview
        _remove_dead_scratch()

    def where(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def stop(self) -> None:
        """Stop the running job at its next step (its state is saved and sent back); run no more."""
        self.stopping.set()

    def cancel(self, run_id: int) -> None:
        """Stop the job started as ``run_id`` at its next step, if it is the one running (its state is sent back)."""
        self.cancelled = run_id

    def progress(self) -> dict[str, Any] | None:
        """The running job's progress since the last call (step, total, loss, a small preview), or None."""
        latest, self.latest = self.latest, None
        return latest

    def run_job(self, job: Job, files: dict[str, bytes], device: str | None,
                preview_every: float | None = None, run_id: int | None = None) -> dict[str, Any]:
        """Run ``job`` from ``files`` (its half-done state, or nothing); its files, or why it did not finish.
        With ``preview_every`` (seconds), :meth:`progress` has the job's progress with a preview image;
        ``cancel(run_id)`` stops it (a later run of the same job has another run_id)."""
        loaded: list[str] = []
        sent = 0.0

        def on_step(step) -> None:
            nonlocal sent
            if self.stopping.is_set() or (run_id is not None and self.cancelled == run_id):
                raise KeyboardInterrupt
            if preview_every is not None and (time.monotonic() - sent >= preview_every or step.step == step.total):
                sent = time.monotonic()
                self.latest = step_report(step)

        def on_load(name: str, seconds: float | None) -> None:
            if seconds is not None:
                loaded.append(name)

        scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
        try:
            folder = scratch / job.folder.name
            write_files(folder, files)
            try:
                result = execute_job(replace(job, folder=folder), on_step, device, on_load)
            except KeyboardInterrupt:  # stopped before the job's first step: nothing of it to keep
                return {"stopped": True}
            except PixgenError as err:
                return {"error": err}
            return {"result": result, "files": read_files(folder), "worker": self.where(), "loaded": loaded}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _remove_dead_scratch() -> None:
    """Delete scratch folders that actors killed on this machine left behind."""
    for path in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = path.name.removeprefix(SCRATCH_PREFIX).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def output_names(folder: Path) -> list[str]:
    """The files a run leaves in ``folder``, frames first and the image last."""
    frames = sorted(f"{FRAMES_DIR}/{p.name}" for p in (folder / FRAMES_DIR).glob("step-*.png"))
    return frames + [name for name in (CONFIG_NAME, STATE_NAME, GIF_NAME, IMAGE_NAME) if (folder / name).is_file()]


def read_files(folder: Path) -> dict[str, bytes]:
    """Each output file's bytes, by its path relative to ``folder``."""
    return {name: (folder / name).read_bytes() for name in output_names(folder)}


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (from read_files) into ``folder``, each atomically; refuse any other name."""
    for name in files:
        parts = Path(name).parts
        if not (name in (CONFIG_NAME, STATE_NAME, GIF_NAME, IMAGE_NAME) or (
                len(parts) == 2 and parts[0] == FRAMES_DIR and parts[1].startswith("step-")
                and parts[1].endswith(".png"))):
            raise PixgenError(f"a Ray worker sent back an unexpected file {name!r}; nothing of it was written")
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if name.startswith(f"{FRAMES_DIR}/"):
            (folder / FRAMES_DIR).mkdir(exist_ok=True)
        with atomic_path(folder / name) as temp:
            temp.write_bytes(data)


def job_files(job: Job) -> dict[str, bytes]:
    """What an actor needs to continue a half-done job exactly (nothing for a fresh start)."""
    if resume_point(job) is None:
        return {}
    return {name: data for name, data in read_files(job.folder).items() if name != IMAGE_NAME}


def store(root: Path, job: Job, files: dict[str, bytes]) -> None:
    """Put a job's files from its worker into its folder (inside ``root``), then drop outputs of an earlier attempt."""
    check_folder(job.folder, root)
    write_files(job.folder, files)
    for path in (job.folder / FRAMES_DIR).glob("step-*.png"):
        if f"{FRAMES_DIR}/{path.name}" not in files:
            path.unlink()
    if GIF_NAME not in files and (job.folder / GIF_NAME).is_file():
        (job.folder / GIF_NAME).unlink()


def worker_env() -> dict[str, str]:
    """The driver's pixgen settings (models registry and cache), for the workers."""
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}


@dataclass
class Plan:
    """How many actors, what each reserves, and how jobs pick their device on them."""

    count: int
    options: dict[str, Any]
    gpu: bool


def plan_workers(resources: dict[str, float], jobs: list[Job], threads: int) -> Plan:
    """One actor per GPU if the cluster has GPUs and the jobs may use them, else one per ``threads`` CPUs."""
    gpus = int(resources.get("GPU", 0))
    if gpus and any(job.config.device != "cpu" for job in jobs):
        return Plan(min(gpus, len(jobs)), {"num_gpus": 1, "num_cpus": 1}, True)
    cpus = int(resources.get("CPU", 1))
    return Plan(max(1, min(cpus // threads, len(jobs))), {"num_cpus": min(threads, max(cpus, 1))}, False)


def job_device(job: Job, plan: Plan) -> str | None:
    """An actor sees only its own GPU, as ``cuda``: a job naming ``cuda:N`` runs on that one."""
    return "cuda" if plan.gpu and job.config.device.startswith("cuda:") else None


@dataclass
class _Running:
    actor: Any
    job: Job
    start: float = field(default_factory=time.perf_counter)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise PixgenError("the ray executor needs: pip install 'pixgen[ray]'") from None
    return ray


def _connect(ray, address: str | None) -> bool:
    """Join the cluster at ``address`` (None: a running one or a new local instance); True if started here."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, logging_level=logging.ERROR)  # no notes about Ray itself in our output
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"at {address}" if address else "(none running; starting a local one failed)"
        raise PixgenError(f"cannot connect to the Ray cluster {where}: {' '.join(str(err).split())}") from None
    return True


def run_on_ray(batch: Batch, todo: list[Job], *, address: str | None, threads: int | None) -> None:
    """Run ``todo`` on Ray actors, logging through ``batch`` exactly as the local executor does."""
    ray = _import_ray()
    import torch

    threads = threads or torch.get_num_threads()  # the local executor's count: the same images
    started_here = _connect(ray, address)
    actors: list = []
    try:
        plan = plan_workers(ray.cluster_resources(), todo, threads)
        worker_class = ray.remote(max_concurrency=2)(RayWorker)  # a second thread takes stop()

        def spawn():
            actor = worker_class.options(**plan.options).remote(worker_env(), threads)
            actors.append(actor)
            return actor

        _dispatch(ray, batch, todo, plan, [spawn() for _ in range(plan.count)], spawn)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()


def _dispatch(ray, batch: Batch, todo: list[Job], plan: Plan, idle: list, spawn) -> None:
    """Hand jobs to idle actors until all are done; replace an actor that dies and run its job again.

    Ctrl-C: the running actors stop at their next step and send back what they saved; a second
    Ctrl-C gives up on them.
    """
    waiting, running, deaths = deque(todo), {}, {}
    stopping = False
    while running or (waiting and not stopping):
        try:
            while idle and waiting and not stopping:
                actor, job = idle.pop(), waiting.popleft()
                batch.started(job, resume_point(job))
                running[actor.run_job.remote(job, job_files(job), job_device(job, plan))] = _Running(actor, job)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in ready:
                slot = running.pop(ref)
                stopping = _collect(ray, batch, slot, ref, stopping, deaths, waiting, idle, spawn) or stopping
        except KeyboardInterrupt:
            if stopping:
                raise
            stopping = batch.result.interrupted = True
            for slot in running.values():
                slot.actor.stop.remote()


def _collect(ray, batch: Batch, slot: _Running, ref, stopping: bool, deaths: dict, waiting: deque, idle: list,
             spawn) -> bool:
    """Take one actor's reply; True when the batch must stop handing out jobs."""
    from ray.exceptions import RayActorError, WorkerCrashedError

    try:
        reply = ray.get(ref)
    except (RayActorError, WorkerCrashedError) as err:
        ray.kill(slot.actor)
        job = slot.job
        deaths[job.folder] = deaths.get(job.folder, 0) + 1
        error = f"its Ray worker died ({type(err).__name__})"
        if stopping or deaths[job.folder] > RETRIES:
            times = f" {deaths[job.folder]} times" if deaths[job.folder] > 1 else ""
            batch.failed(job, f"{error}{times}; run the batch again to continue it")
        else:
            batch.retried(job, f"{error}; running it again on a new worker")
            waiting.appendleft(job)
            idle.append(spawn())
        return False
    idle.append(slot.actor)
    return _finish(batch, slot, reply)


def placed_result(result: RunResult, job: Job) -> RunResult:
    """An actor's RunResult with its paths moved from the actor's scratch folder to the job folder."""
    return replace(result, output_dir=job.folder, image_path=job.folder / IMAGE_NAME,
                   frame_paths=[job.folder / FRAMES_DIR / p.name for p in result.frame_paths],
                   gif_path=job.folder / GIF_NAME if result.gif_path else None)


def _finish(batch: Batch, slot: _Running, reply: dict[str, Any]) -> bool:
    """Store and log one actor's reply; True when the batch must stop handing out jobs."""
    job = slot.job
    if "stopped" in reply:
        return True
    if "error" in reply:
        return job_error(batch, job, reply["error"])
    store(batch.root, job, reply["files"])
    result = placed_result(reply["result"], job)
    batch.finished(job, result, time.perf_counter() - slot.start,
                   {"worker": reply["worker"], "loaded": reply["loaded"]})
    return not result.completed
