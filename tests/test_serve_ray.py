"""`pixgen serve --executor ray`: jobs on Ray actors, progress, cancel and resume, files back in DIR."""

from __future__ import annotations

import importlib.util
import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from serving import Server  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
TINY = {"vqgan": "tiny-vqgan", "clip": ["tiny-clip"], "size": [32, 32], "cut_count": 4}


def test_jobs_run_on_ray_actors_and_cancel_resumes_there(tmp_path):
    root = tmp_path / "studio"
    server = Server(root, "--executor", "ray", "--threads", "1")
    try:
        post = server.client.post
        long = post("/api/v1/jobs", json={"prompt": "a red circle", "preset": "draft",
                                          "settings": {**TINY, "steps": 120, "save_every": 40, "seed": 1}}).json()
        seen = server.wait(long["id"], lambda job: (job["progress"] or {}).get("step", 0) >= 3, timeout=180)
        assert seen["status"] == "running"
        preview = server.client.get(f"/api/v1/jobs/{long['id']}/preview")
        assert preview.status_code == 200 and preview.headers["content-type"].startswith("image/")
        post(f"/api/v1/jobs/{long['id']}/cancel")
        assert server.wait(long["id"], lambda job: job["status"] in ("cancelled", "done", "failed"))["status"] \
            == "cancelled"
        assert (root / long["id"] / "state.pt").is_file()  # the actor's state came back into DIR
        animation = post("/api/v1/jobs", json={"prompt": "a red circle", "preset": "draft",
                                               "settings": {**TINY, "steps": 2}, "animation": {"frames": 2}}).json()
        failed = server.wait(animation["id"], lambda job: job["status"] in ("done", "failed"))
        assert failed["status"] == "failed" and "local executor" in failed["error"]
        post(f"/api/v1/jobs/{long['id']}/resume")
        done = server.wait(long["id"], lambda job: job["status"] in ("done", "failed"), timeout=300)
        assert done["status"] == "done", done["error"]
        assert server.client.get(done["files"]["image"]).status_code == 200
    finally:
        server.stop()
    records = [json.loads(line) for line in (root / "batch.jsonl").read_text().splitlines()]
    starts = [r["resume_from"] for r in records if r["event"] == "start" and r["folder"] == long["id"]]
    assert starts[0] is None and starts[1] is not None and starts[1] > 0
