"""`kill -9` of `pixgen serve` mid-run loses nothing: queued jobs stay queued, the running one resumes exactly."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from serving import Server  # noqa: E402

TINY = {"vqgan": "tiny-vqgan", "clip": ["tiny-clip"], "size": [32, 32], "cut_count": 4, "gif": False}


def workers_of(pid: int) -> list[int]:
    """Every child process of ``pid``, whichever of its threads started it."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return True


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (Linux) to find the worker processes")
def test_kill_9_mid_run_then_serve_again_loses_nothing(tmp_path):
    requests = [{"prompt": "a red circle", "preset": "draft", "settings": {**TINY, "steps": 100, "save_every": 20,
                                                                            "seed": 11}},
                {"prompt": "a blue square", "preset": "draft", "settings": {**TINY, "steps": 5, "seed": 12}},
                {"prompt": "a green one", "preset": "draft", "settings": {**TINY, "steps": 5, "seed": 13}}]
    root = tmp_path / "studio"
    server = Server(root)
    try:
        ids = [server.client.post("/api/v1/jobs", json=r).json()["id"] for r in requests]
        server.wait(ids[0], lambda job: (job["progress"] or {}).get("step", 0) >= 45)  # past 2 saved states
        workers = workers_of(server.proc.pid)
        assert len(workers) >= 2  # the worker process and multiprocessing's resource tracker
        server.proc.kill()
        server.proc.wait()
        deadline = time.monotonic() + 10
        while not all(gone(pid) for pid in workers):  # the workers die with the server
            assert time.monotonic() < deadline, "a worker outlived its killed server"
            time.sleep(0.05)
    finally:
        server.stop()
    assert json.loads((root / "batch.jsonl").read_text().splitlines()[-1])["event"] == "start"
    assert not (root / ids[1]).exists()  # still queued, never started

    again = Server(root)
    try:
        statuses = [again.job(job_id)["status"] for job_id in ids]
        assert statuses[1:] == ["queued", "queued"] and statuses[0] in ("queued", "running")
        for job_id in ids:
            assert again.wait(job_id, lambda job: job["status"] != "queued" and job["status"] != "running"
                              )["status"] == "done"
    finally:
        again.stop()
    records = [json.loads(line) for line in (root / "batch.jsonl").read_text().splitlines()]
    starts = [r for r in records if r["event"] == "start" and r["folder"] == ids[0]]
    assert starts[0]["resume_from"] is None and starts[1]["resume_from"] in (40, 60, 80)
    assert [r["folder"] for r in records if r["event"] == "end"] == ids  # each job finished exactly once

    straight = Server(tmp_path / "straight")  # the same first job, never interrupted
    try:
        same = straight.client.post("/api/v1/jobs", json=requests[0]).json()["id"]
        straight.wait(same, lambda job: job["status"] == "done")
    finally:
        straight.stop()
    assert same == ids[0]
    assert sha(root / ids[0] / "image.png") == sha(tmp_path / "straight" / same / "image.png")
    frames = sorted(p.name for p in (root / ids[0] / "frames").iterdir())
    assert frames == sorted(p.name for p in (tmp_path / "straight" / same / "frames").iterdir())
    for name in frames:
        assert sha(root / ids[0] / "frames" / name) == sha(tmp_path / "straight" / same / "frames" / name)
