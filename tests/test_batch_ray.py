"""Executors and dying workers: Ray on a local loopback instance (2 CPUs) and the local worker pool.

The Ray tests start one Ray instance for the module and shut it down at the end; they are skipped
when ray is not installed (``pip install -e '.[test]'`` installs it).
"""

from __future__ import annotations

import _thread
import importlib.util
import json
import logging
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pixgen.batch.jobs import using_threads
from pixgen.batch.manifest import plan_batch
from pixgen.batch.runner import run_batch
from pixgen.cli import cli
from pixgen.pipeline.output import read_png_text
from pixgen.pipeline.runner import run

OUTPUTS = ("image.png", "run.yaml", "progress.gif", "frames/step-00002.png")


def write_manifest(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "batch.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance on loopback with 2 CPUs, no dashboard; shut down after the module."""
    with pytest.MonkeyPatch.context() as env:
        # Ray's single-machine mode: the node's address is 127.0.0.1 and its servers listen there only
        env.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray = pytest.importorskip("ray")
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level=logging.WARNING, object_store_memory=200 * 2**20)
        try:
            assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture
def three_jobs(tmp_path, tiny_preset):
    return write_manifest(tmp_path / "m.yaml", {
        "defaults": {"preset": str(tiny_preset), "steps": 4},
        "jobs": [{"name": "hero", "prompt": "a green triangle", "seed": 9}],
        "matrix": {"prompt": ["a red circle", "a blue square"], "seed": [0]}})


def same_outputs(jobs, local: Path, other: Path, names=OUTPUTS) -> None:
    for job in jobs:
        for name in names:
            assert (other / job.folder.name / name).read_bytes() == (local / job.folder.name / name).read_bytes(), \
                (job.name, name)


def test_ray_gives_byte_identical_images_logs_and_skips_like_local(tmp_path, three_jobs, ray_cluster):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert run_batch(plan_batch(three_jobs, local), local, threads=1).names("done") != []
    result = CliRunner().invoke(cli, ["batch", str(three_jobs), "-o", str(on_ray), "--executor", "ray",
                                      "--threads", "1", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "3 of 3 jobs done (0 already done before)" in result.output
    jobs = plan_batch(three_jobs, on_ray)
    same_outputs(jobs, local, on_ray)
    assert read_png_text(on_ray / jobs[0].folder.name / "image.png")["environment"] == \
        read_png_text(local / jobs[0].folder.name / "image.png")["environment"]
    records = log_records(on_ray)
    assert sorted(r["event"] for r in records) == ["end"] * 3 + ["start"] * 3
    ends = [r for r in records if r["event"] == "end"]
    assert {r["files"]["image.png"] for r in ends} == {r["files"]["image.png"] for r in log_records(local)
                                                       if r["event"] == "end"}
    by_worker: dict[str, list[str]] = {}
    for end in ends:  # each actor loads the models once and keeps them for its next jobs
        by_worker.setdefault(end["worker"], []).extend(end["loaded"])
    assert 1 <= len(by_worker) <= 2
    assert all(sorted(loaded) == ["tiny-clip", "tiny-vqgan"] for loaded in by_worker.values()), by_worker
    assert not list(on_ray.glob("*/.*tmp*"))

    again = run_batch(jobs, on_ray, executor="ray", threads=1)
    assert again.skipped == 3 and len(log_records(on_ray)) == 6


def test_ray_continues_a_half_done_job_exactly(tmp_path, three_jobs, ray_cluster):
    out, whole = tmp_path / "out", tmp_path / "whole"
    jobs = plan_batch(three_jobs, out)
    steps = {"n": 0}

    def interrupt(_step):
        steps["n"] += 1
        if steps["n"] == 4 + 3:  # the second job's third step
            raise KeyboardInterrupt

    first = run_batch(jobs, out, on_step=interrupt, threads=1)
    assert first.interrupted and first.names("interrupted") == [jobs[1].name]
    result = run_batch(jobs, out, executor="ray", threads=1)
    assert result.names("done") == [job.name for job in jobs] and not result.interrupted
    assert [r["resume_from"] for r in log_records(out)[4:] if r["event"] == "start"] == [3, None]
    run_batch(plan_batch(three_jobs, whole), whole, threads=1)
    same_outputs(jobs, whole, out)  # state.pt: torch names its zip after the temporary file
    assert [p.name for p in (jobs[1].folder / "frames").iterdir()] == ["step-00002.png"]


def wait_for(condition, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.02)


def _descendants_titled(prefix: bytes) -> list[int]:
    """Processes under this one whose command line (Ray's process title) starts with ``prefix``."""
    parents, titles = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            titles[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = []
    for pid, title in titles.items():
        ancestor = parents.get(pid)
        while ancestor and ancestor != os.getpid():
            ancestor = parents.get(ancestor)
        if ancestor == os.getpid() and title.startswith(prefix):
            found.append(pid)
    return found


def kill_first_worker_mid_job(find_workers, delay: float = 0.3) -> dict:
    """In a thread: SIGKILL the first worker process seen running a job, ``delay`` s into it."""
    killed = {}

    def hunt():
        end = time.monotonic() + 60
        while time.monotonic() < end and not killed:
            pids = find_workers()
            if pids:
                time.sleep(delay)
                if pids[0] in find_workers():  # still on a job
                    os.kill(pids[0], signal.SIGKILL)
                    killed["pid"] = pids[0]
            time.sleep(0.02)

    threading.Thread(target=hunt, daemon=True).start()
    return killed


def test_a_ray_worker_killed_mid_job_is_replaced_and_the_batch_completes(tmp_path, tiny_preset, ray_cluster):
    manifest = write_manifest(tmp_path / "m.yaml", {
        "defaults": {"preset": str(tiny_preset), "steps": 16, "save_every": 4},
        "matrix": {"prompt": ["a red circle", "a blue square", "a green triangle"], "seed": [0]}})
    out, local = tmp_path / "out", tmp_path / "local"
    jobs = plan_batch(manifest, out)
    killed = kill_first_worker_mid_job(lambda: _descendants_titled(b"ray::RayWorker.run_job"))
    result = run_batch(jobs, out, executor="ray", threads=1)
    assert killed, "no Ray worker was seen running a job"
    assert result.names("done") == [job.name for job in jobs], result.errors
    records = log_records(out)
    retries = [r for r in records if r["event"] == "retry"]
    assert len(retries) == 1 and "its Ray worker died" in retries[0]["error"]
    ends = [r for r in records if r["event"] == "end"]
    assert sorted(r["folder"] for r in ends) == sorted(job.folder.name for job in jobs)  # each job ended once
    assert len([r for r in records if r["event"] == "start"]) == 4
    assert str(killed["pid"]) not in {r["worker"].rsplit(":", 1)[1] for r in ends}
    assert len(list(out.glob("*/image.png"))) == 3 and not list(out.glob("*/.*tmp*"))
    run_batch(plan_batch(manifest, local), local, threads=1)
    same_outputs(jobs, local, out, ("image.png", "run.yaml", "progress.gif", "frames/step-00012.png"))


def test_a_local_worker_process_killed_mid_job_is_replaced_and_the_batch_completes(tmp_path, tiny_preset):
    manifest = write_manifest(tmp_path / "m.yaml", {
        "defaults": {"preset": str(tiny_preset), "steps": 80, "save_every": 4},  # both mid-job long enough
        "matrix": {"prompt": ["a red circle", "a blue square", "a green triangle"], "seed": [0]}})
    out, local = tmp_path / "out", tmp_path / "local"
    jobs = plan_batch(manifest, out)

    def running_workers() -> list[int]:  # both workers part-way through a job: either may be killed
        try:
            records = log_records(out)
        except (FileNotFoundError, ValueError):
            return []
        ended = {r["folder"] for r in records if r["event"] == "end"}
        running = {r["folder"] for r in records if r["event"] == "start"} - ended
        if len(running) < 2 or not all((out / folder / "state.pt").is_file() for folder in running):
            return []
        return [child.pid for child in multiprocessing.active_children()]

    killed = kill_first_worker_mid_job(running_workers, delay=0)
    result = run_batch(jobs, out, devices=["cpu", "cpu"], threads=1)
    assert killed, "no worker was seen running a job"
    assert result.names("done") == [job.name for job in jobs], result.errors
    records = log_records(out)
    retries = [r for r in records if r["event"] == "retry"]
    assert len(retries) == 1 and "worker process died (exit code -9)" in retries[0]["error"]
    assert sorted(r["folder"] for r in records if r["event"] == "end") == sorted(job.folder.name for job in jobs)
    run_batch(plan_batch(manifest, local), local, threads=1)
    same_outputs(jobs, local, out, ("image.png", "run.yaml", "progress.gif", "frames/step-00012.png"))


def test_ctrl_c_on_ray_saves_running_jobs_and_a_rerun_completes_exactly(tmp_path, tiny_preset, ray_cluster):
    manifest = write_manifest(tmp_path / "m.yaml", {
        "defaults": {"preset": str(tiny_preset), "steps": 240, "save_every": 24},  # outlasts the stop
        "matrix": {"prompt": ["a red circle", "a blue square", "a green triangle"], "seed": [0]}})
    out, local = tmp_path / "out", tmp_path / "local"
    jobs = plan_batch(manifest, out)

    scratch = Path(tempfile.gettempdir())
    stale = set(scratch.glob("pixgen-ray-*"))  # left by actors killed earlier: not this batch's

    def checkpoint_seen() -> bool:
        try:
            return any(path.parents[1] not in stale for job in jobs
                       for path in scratch.glob(f"pixgen-ray-*/{job.folder.name}/state.pt"))
        except FileNotFoundError:  # a scratch folder removed while globbing (a new actor clears dead ones)
            return False

    def ctrl_c_at_a_checkpoint():  # once a job has one in its actor's scratch folder (on this machine)
        wait_for(checkpoint_seen, timeout=300)  # a loaded machine can take over a minute to start the actors
        _thread.interrupt_main()

    def ctrl_c_soon(news):
        if news.kind == "start" and news.job == jobs[0]:
            threading.Thread(target=ctrl_c_at_a_checkpoint, daemon=True).start()

    result = run_batch(jobs, out, executor="ray", threads=1, on_event=ctrl_c_soon)
    assert result.interrupted
    first = log_records(out)
    saved = [job for job in jobs if result.status[job.folder.name] == "interrupted"]
    assert saved and sorted(r["job"] for r in first if r["event"] == "interrupted") == sorted(j.name for j in saved)
    assert all((job.folder / "state.pt").is_file() and (job.folder / "image.png").is_file() for job in saved)

    again = run_batch(jobs, out, executor="ray", threads=1)
    assert again.names("done") == [job.name for job in jobs] and not again.interrupted
    records = log_records(out)
    resumed = {r["job"] for r in records[len(first):] if r["event"] == "start" and r["resume_from"] is not None}
    assert resumed == {job.name for job in saved}
    assert sorted(r["folder"] for r in records if r["event"] == "end") == sorted(j.folder.name for j in jobs)
    with using_threads(1):
        for job in saved:  # the interrupted jobs, run whole
            run(job.config, local / job.folder.name)
    same_outputs(saved, local, out, ("image.png", "run.yaml", "progress.gif", "frames/step-00216.png"))


def test_ray_refuses_local_only_options(tmp_path, three_jobs):
    result = CliRunner().invoke(cli, ["batch", str(three_jobs), "-o", str(tmp_path / "o"), "--executor", "ray",
                                      "--jobs", "2"])
    if importlib.util.find_spec("ray") is None:
        assert result.output.strip() == "Error: the ray executor needs: pip install 'pixgen[ray]'"
        return
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: --jobs and --devices are for --executor local; on Ray each worker "
                                     "gets one GPU, or --threads CPUs")
    assert not (tmp_path / "o").exists()


def test_ray_missing_says_what_to_install(tmp_path, three_jobs, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    result = CliRunner().invoke(cli, ["batch", str(three_jobs), "-o", str(tmp_path / "o"), "--executor", "ray"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: the ray executor needs: pip install 'pixgen[ray]'"
