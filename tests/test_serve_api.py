"""`pixgen serve`'s HTTP API through an HTTP client against the real app, studio and worker processes."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from pixgen.serve.app import create_app  # noqa: E402
from pixgen.serve.studio import Studio  # noqa: E402
from pixgen.serve.workers import WorkerPool  # noqa: E402

TINY = {"vqgan": "tiny-vqgan", "clip": ["tiny-clip"], "size": [32, 32], "steps": 6, "cut_count": 4, "save_every": 2}
LOOPBACK = ("127.0.0.1", "localhost")
BASE = "http://127.0.0.1:7860"


class Running:
    """A studio with its driver thread and one worker process, and a client for its app."""

    def __init__(self, root: Path, *, max_queue: int = 1000, token: str | None = None, start: bool = True):
        self.studio = Studio(root, max_queue)
        self.pool = WorkerPool([None], 1, 0.05)
        self.thread = threading.Thread(target=self.studio.serve_forever, args=(self.pool,), daemon=True)
        if start:
            self.thread.start()
        app = create_app(self.studio, self.pool, token=token, allowed_hosts=None if token else LOOPBACK)
        self.client = TestClient(app, base_url=BASE)

    def submit(self, prompt: str = "a red circle", **settings) -> dict:
        answer = self.client.post("/api/v1/jobs", json={"prompt": prompt, "preset": "draft",
                                                        "settings": {**TINY, **settings}})
        assert answer.status_code == 201, answer.text
        return answer.json()

    def wait(self, job_id: str, until=("done", "failed", "cancelled"), timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.client.get(f"/api/v1/jobs/{job_id}").json()
            if job["status"] in until:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")

    def close(self) -> None:
        self.studio.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=60)


@pytest.fixture
def studio(tmp_path):
    made = []

    def make(**options) -> Running:
        made.append(Running(tmp_path / "studio", **options))
        return made[-1]

    yield make
    for running in made:
        running.close()


def log_records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "batch.jsonl").read_text().splitlines() if line.strip()]


def png_bytes(size=(16, 16), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_run_queues_streams_progress_and_serves_its_files(studio, tmp_path):
    s = studio()
    job = s.submit(seed=3, steps=8)
    assert job["status"] in ("queued", "running") and job["seed"] == 3 and job["steps"] == 8
    with s.client.stream("GET", f"/api/v1/jobs/{job['id']}/events") as stream:
        events = []
        for line in stream.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
            elif line.startswith("data: ") and events:
                events[-1] = (events[-1], json.loads(line[6:]))
    kinds = [kind for kind, _ in events]
    assert "progress" in kinds and kinds[-1] == "status" and events[-1][1]["status"] == "done"
    progress = [data for kind, data in events if kind == "progress"]
    assert progress[-1]["step"] == 8 and progress[-1]["total"] == 8
    assert any((p["preview"] or "").startswith("data:image/") for p in progress)  # none once done: the files show it
    done = s.client.get(f"/api/v1/jobs/{job['id']}").json()
    assert done["parameters"]["prompt"] == "a red circle" and done["parameters"]["seed"] == 3
    image = s.client.get(done["files"]["image"])
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (32, 32)
    folder = tmp_path / "studio" / job["id"]
    assert image.content == (folder / "image.png").read_bytes()
    download = s.client.get(done["files"]["gif"] + "?download=1")
    assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]
    assert [r["event"] for r in log_records(tmp_path / "studio")] == ["submit", "start", "end"]
    deadline = time.monotonic() + 15
    while not (tmp_path / "studio" / "index.html").is_file():  # the batch gallery, rewritten every few seconds
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert job["id"] in (tmp_path / "studio" / "index.html").read_text()
    listed = s.client.get("/api/v1/jobs", params={"q": "RED", "status": "done"}).json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]] and listed["total"] == 1
    assert s.client.get("/api/v1/jobs", params={"q": "square"}).json()["total"] == 0
    same = s.client.post("/api/v1/jobs", json={"prompt": "a red circle", "preset": "draft",
                                               "settings": {**TINY, "seed": 3, "steps": 8}})
    assert same.status_code == 200 and same.json()["id"] == job["id"]  # the same settings: the same job


@pytest.mark.parametrize(("settings", "message"), [
    ({"stpes": 5}, "did you mean steps"),
    ({"steps": 0}, "steps"),
    ({"device": "cpu"}, "chosen by the server"),
    ({"vqgan": "/etc/passwd"}, "not a registered vqgan"),
    ({"clip": ["tiny-clip", "../x.pt"]}, "not a registered clip"),
    ({"init": "image", "init_image": "/etc/hosts"}, "not an upload"),
    ({"image_prompts": ["/tmp/x.png:2"]}, "not an upload"),
    ({"size": [99999, 32]}, "size"),
    ({"preset": "../../etc/passwd.yaml"}, "unknown preset"),
])
def test_bad_settings_get_422_with_the_cli_message_and_nothing_is_queued(studio, tmp_path, settings, message):
    s = studio(start=False)
    answer = s.client.post("/api/v1/jobs", json={"prompt": "a red circle", "settings": {**TINY, **settings}})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert message in detail and "\n" not in detail and "Traceback" not in detail
    assert s.client.get("/api/v1/jobs").json()["total"] == 0
    assert not [p for p in (tmp_path / "studio").iterdir() if p.name != "batch.jsonl"]


def test_request_shape_errors_are_one_line_422(studio):
    s = studio(start=False)
    for body in ({"prompt": 5}, {"settings": [1, 2]}, {"prompt": "x", "animation": {"frames": 0}}, "not json"):
        answer = s.client.post("/api/v1/jobs", json=body)
        assert answer.status_code == 422, answer.text
        assert "\n" not in answer.json()["detail"]
    assert s.client.get("/api/v1/jobs/nope").status_code == 404


def test_the_queue_is_bounded_with_429(studio):
    s = studio(max_queue=2, start=False)
    s.submit(seed=1)
    s.submit(seed=2)
    full = s.client.post("/api/v1/jobs", json={"prompt": "a red circle", "settings": {**TINY, "seed": 3}})
    assert full.status_code == 429 and "queue is full" in full.json()["detail"]
    tiny = "\n".join(f"  {k}: {json.dumps(v)}" for k, v in TINY.items())
    manifest = f"defaults:\n  prompt: x\n{tiny}\nmatrix:\n  seed: [7, 8]\n"
    batch = s.client.post("/api/v1/batches", json={"manifest": manifest})
    assert batch.status_code == 429
    assert s.client.get("/api/v1/jobs").json()["total"] == 2


def test_uploads_are_checked_and_used_by_id(studio, tmp_path):
    s = studio()
    answer = s.client.post("/api/v1/uploads", files={"file": ("x.png", png_bytes(), "image/png")})
    assert answer.status_code == 201
    upload = answer.json()
    assert upload["id"].startswith("upload-") and upload["width"] == 16
    garbage = s.client.post("/api/v1/uploads", files={"file": ("x.png", b"<html>not an image", "image/png")})
    assert garbage.status_code == 415 and "\n" not in garbage.json()["detail"]
    big = s.client.post("/api/v1/uploads", files={"file": ("x.png", b"0" * (17 * 2**20), "image/png")})
    assert big.status_code == 413
    assert sorted(p.name for p in (tmp_path / "studio" / "uploads").iterdir()) == [upload["id"]]
    job = s.submit(init="image", init_image=upload["id"], image_prompts=[upload["id"] + ":0.5"], seed=1)
    done = s.wait(job["id"])
    assert done["status"] == "done"
    # the recipe names the uploads as a request does, never by their path on the server
    assert done["parameters"]["init_image"] == upload["id"]
    assert done["parameters"]["image_prompts"] == [upload["id"] + ":0.5"]
    assert str(tmp_path) not in json.dumps(done)
    again = s.client.post(f"/api/v1/jobs/{job['id']}/rerun", json={"seed": 2})
    assert again.status_code == 201 and again.json()["parameters"]["init_image"] == upload["id"]
    unknown = s.client.post("/api/v1/jobs", json={"prompt": "x", "settings": {
        **TINY, "init": "image", "init_image": "upload-0123456789abcdef.png"}})
    assert unknown.status_code == 422 and "not on this server" in unknown.json()["detail"]


def test_cancel_keeps_the_state_and_resume_finishes_it(studio, tmp_path):
    s = studio()
    job = s.submit(steps=150, save_every=50, seed=4)
    waiting = s.submit(seed=9)  # queued behind it: cancelled before it starts
    s.wait(job["id"], until=("running",))
    deadline = time.monotonic() + 60
    while (s.client.get(f"/api/v1/jobs/{job['id']}").json()["progress"] or {}).get("step", 0) < 5:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert s.client.post(f"/api/v1/jobs/{waiting['id']}/cancel").json()["status"] == "cancelled"
    assert s.client.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 200
    assert s.wait(job["id"])["status"] == "cancelled"
    folder = tmp_path / "studio" / job["id"]
    assert (folder / "state.pt").is_file()
    assert s.client.get(f"/api/v1/jobs/{job['id']}/preview").status_code == 200  # where it stopped
    assert s.client.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 409
    stopped_at = [r for r in log_records(tmp_path / "studio") if r["event"] == "interrupted"][0]["steps_done"]
    assert 5 <= stopped_at < 150
    assert s.client.post(f"/api/v1/jobs/{job['id']}/resume").json()["status"] == "queued"
    assert s.wait(job["id"])["status"] == "done"
    records = log_records(tmp_path / "studio")
    starts = [r for r in records if r["event"] == "start"]
    assert [(r["folder"], r["resume_from"]) for r in starts] == [(job["id"], None), (job["id"], stopped_at)]
    assert [r["event"] for r in records if r["folder"] == job["id"]][-1] == "end"
    assert s.client.get(f"/api/v1/jobs/{waiting['id']}").json()["status"] == "cancelled"


def test_rerun_vary_continue_and_delete(studio, tmp_path):
    s = studio()
    job = s.submit(seed=5)
    assert s.wait(job["id"])["status"] == "done"
    same = s.client.post(f"/api/v1/jobs/{job['id']}/rerun", json={"seed": 5})
    assert same.status_code == 200 and same.json()["id"] == job["id"]
    other = s.client.post(f"/api/v1/jobs/{job['id']}/rerun", json={"seed": 6}).json()
    varied = s.client.post(f"/api/v1/jobs/{job['id']}/rerun", json={"seed": None}).json()
    assert other["seed"] == 6 and other["parent"] == job["id"] and varied["seed"] not in (5, 6)
    more = s.client.post(f"/api/v1/jobs/{job['id']}/continue", json={"steps": 4})
    assert more.status_code == 201
    more = more.json()
    assert more["steps"] == 10 and more["parent"] == job["id"] and more["seed"] == 5
    for new in (other, varied, more):
        assert s.wait(new["id"])["status"] == "done"
    start = [r for r in log_records(tmp_path / "studio") if r["event"] == "start" and r["folder"] == more["id"]]
    assert start[0]["resume_from"] == 6  # it went on from the first run's last state
    assert s.client.delete(f"/api/v1/jobs/{job['id']}").status_code == 422  # no confirm
    assert s.client.delete(f"/api/v1/jobs/{job['id']}?confirm=yes").json() == {"deleted": job["id"]}
    assert not (tmp_path / "studio" / job["id"]).exists()
    assert s.client.get(f"/api/v1/jobs/{job['id']}").status_code == 404
    assert (tmp_path / "studio" / other["id"] / "image.png").is_file()


def test_a_worker_that_dies_mid_job_is_replaced_and_the_job_goes_on(studio, tmp_path):
    s = studio()
    job = s.submit(steps=60, save_every=20, seed=8)
    deadline = time.monotonic() + 120
    while (s.client.get(f"/api/v1/jobs/{job['id']}").json()["progress"] or {}).get("step", 0) < 25:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    worker = s.pool.procs[0]
    os.kill(worker.pid, signal.SIGKILL)
    done = s.wait(job["id"])
    assert done["status"] == "done" and s.pool.procs[0].pid != worker.pid
    records = [r for r in log_records(tmp_path / "studio") if r["folder"] == job["id"]]
    assert [r["event"] for r in records] == ["submit", "start", "retry", "start", "end"]
    assert "died" in records[2]["error"] and records[3]["resume_from"] in (20, 40)
    assert s.client.get("/api/v1/info").json()["workers"] == ["auto"]


def test_only_job_outputs_are_served(studio, tmp_path):
    s = studio()
    job = s.submit(seed=1)
    s.wait(job["id"])
    (tmp_path / "secret.txt").write_text("secret")
    base = f"/api/v1/jobs/{job['id']}/files/"
    for path in ("state.pt", "run.yaml", "../batch.jsonl", "..%2Fbatch.jsonl", "frames/../../batch.jsonl",
                 "%2e%2e/%2e%2e/secret.txt", "/etc/passwd", "frames/x.txt"):
        assert s.client.get(base + path).status_code == 404, path
    assert s.client.get("/static/../batch.jsonl").status_code == 404
    assert s.client.get("/api/v1/jobs/..%2F..%2Fsecret.txt/files/image.png").status_code == 404


def test_a_batch_manifest_and_an_animation(studio, tmp_path):
    s = studio()
    tiny = "\n".join(f"  {k}: {json.dumps(v)}" for k, v in TINY.items())
    manifest = f"defaults:\n  prompt: a red circle\n{tiny}\nmatrix:\n  seed: [1, 2]\n"
    answer = s.client.post("/api/v1/batches", json={"manifest": manifest})
    assert answer.status_code == 201, answer.text
    jobs = answer.json()["jobs"]
    assert [j["seed"] for j in jobs] == [1, 2]
    bad = s.client.post("/api/v1/batches", json={"manifest": "jobs:\n  - {prompt: x, init_image: /etc/hosts}\n"})
    assert bad.status_code == 422 and "/etc/hosts" in bad.json()["detail"]
    bad = s.client.post("/api/v1/batches", json={"manifest": "jobs: [\n"})
    assert bad.status_code == 422 and "the manifest" in bad.json()["detail"] and "/tmp" not in bad.json()["detail"]
    animation = s.client.post("/api/v1/jobs", json={
        "prompt": "a red circle ^ a blue square", "preset": "draft", "settings": {**TINY, "steps": 3},
        "animation": {"frames": 3, "steps_per_frame": 2, "zoom": 1.05}})
    assert animation.status_code == 201, animation.text
    animation = animation.json()
    assert animation["kind"] == "animation" and animation["animation"]["frames"] == 3
    for job in jobs + [animation]:
        assert s.wait(job["id"])["status"] == "done"
    done = s.client.get(f"/api/v1/jobs/{animation['id']}").json()
    assert done["files"]["gif"].endswith("animation.gif") and done["files"]["video"].endswith("animation.mp4")
    assert done["files"]["image"].endswith("frame-00002.png")
    assert s.client.get(done["files"]["video"]).status_code == 200


def test_token_host_and_origin_checks(studio):
    s = studio(token="s3cret-token", start=False)
    client = s.client
    assert client.get("/api/v1/jobs").status_code == 401
    assert client.get("/").status_code == 200  # the page shell asks for the token
    assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert client.post("/api/v1/login", json={"token": "wrong"}).status_code == 401
    assert client.post("/api/v1/login", json={"token": "s3cret-token"}).status_code == 200
    assert client.get("/api/v1/jobs").status_code == 200  # the cookie the login set
    fresh = TestClient(client.app, base_url=BASE)
    assert fresh.get("/?token=s3cret-token").status_code == 200 and fresh.get("/api/v1/info").status_code == 200
    local = studio(start=False).client
    assert local.get("/api/v1/jobs", headers={"Host": "evil.example:7860"}).status_code == 421
    foreign = local.post("/api/v1/jobs", json={"prompt": "x"}, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    page = local.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    big = local.post("/api/v1/jobs", content=b"{" + b" " * (6 * 2**20) + b"}",
                     headers={"Content-Type": "application/json"})
    assert big.status_code == 413


def test_docs_work_offline_and_the_schema_lists_the_api(studio):
    client = studio(start=False).client
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static-docs/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text
    assert client.get("/static-docs/swagger-ui-bundle.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/v1/jobs", "/api/v1/jobs/{job_id}/events", "/api/v1/uploads", "/api/v1/batches"} <= set(paths)


def test_a_prompt_with_html_is_data_never_markup(studio, tmp_path):
    s = studio()
    prompt = "<img src=x onerror=alert(1)>"
    job = s.submit(prompt, seed=2)
    assert s.wait(job["id"])["prompt"] == prompt
    answer = s.client.get(f"/api/v1/jobs/{job['id']}")
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "<img src=x" not in s.client.get("/").text
    s.studio.write_gallery()
    gallery = (tmp_path / "studio" / "index.html").read_text()
    assert "<img src=x" not in gallery and "&lt;img src=x onerror=alert(1)&gt;" in gallery


def test_the_studio_outlives_a_failed_log_write_and_a_bug(studio, tmp_path, monkeypatch):
    s = studio()
    real_append = s.studio.batch.log.append
    failures = iter([True])

    def append(record):
        if record.get("event") == "end" and next(failures, False):
            from pixgen.errors import OutputError

            raise OutputError(f"cannot write {tmp_path / 'studio' / 'batch.jsonl'}: No space left on device")
        return real_append(record)

    monkeypatch.setattr(s.studio.batch.log, "append", append)
    first = s.submit(seed=1)
    failed = s.wait(first["id"])
    assert failed["status"] == "failed" and "No space left" in failed["error"]
    assert str(tmp_path) not in failed["error"]
    second = s.submit(seed=2)  # the runner goes on
    assert s.wait(second["id"])["status"] == "done"
    assert s.client.post(f"/api/v1/jobs/{first['id']}/resume").status_code == 200
    assert s.wait(first["id"])["status"] == "done"


def test_a_restart_trusts_the_folder_over_the_order_of_the_log(studio, tmp_path):
    s = studio()
    job = s.submit(seed=3)
    s.wait(job["id"])
    s.close()
    log = tmp_path / "studio" / "batch.jsonl"
    lines = log.read_text().splitlines()
    submit = [line for line in lines if '"event": "submit"' in line]
    log.write_text("\n".join([line for line in lines if line not in submit] + submit) + "\n")  # end before submit
    again = Studio(tmp_path / "studio")
    assert again.get(job["id"]).status == "done" and not again.waiting


def test_a_relative_dir_records_absolute_upload_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    studio = Studio(Path("rel"))
    assert studio.root == (tmp_path / "rel").resolve() and (tmp_path / "rel" / "batch.jsonl").is_file()


def test_refusals_that_cost_nothing_to_the_server(studio, tmp_path):
    s = studio(max_queue=5, start=False)
    bomb = io.BytesIO()
    Image.new("L", (5000, 5000)).save(bomb, format="PNG")  # 25 M pixels in a few kB
    answer = s.client.post("/api/v1/uploads", files={"file": ("x.png", bomb.getvalue(), "image/png")})
    assert answer.status_code == 415 and "too large" in answer.json()["detail"]
    seeds = ", ".join(str(i) for i in range(1500))
    began = time.monotonic()
    big = s.client.post("/api/v1/batches", json={"manifest": f"defaults:\n  prompt: x\nmatrix:\n  seed: [{seeds}]\n"})
    assert big.status_code == 429 and time.monotonic() - began < 5  # refused before 1500 jobs are planned
    assert s.client.get("/api/v1/jobs/nope/events").status_code == 404
    assert s.client.get("/api/v1/jobs/nope/events").headers["content-type"] == "application/json"
    odd = s.client.post("/api/v1/jobs", json={"prompt": "x", "settings": {**TINY, "prompt": 5}})
    assert odd.status_code == 422 and "prompt must be a text" in odd.json()["detail"]
    message = s.client.post("/api/v1/jobs", json={"prompt": "x", "settings": {**TINY, "lr": "fast"}}).json()
    assert "manifest" not in message["detail"]


def test_a_continued_run_does_not_take_the_folder_of_a_fresh_run(studio):
    s = studio()
    job = s.submit(seed=5, steps=4)
    s.wait(job["id"])
    more = s.client.post(f"/api/v1/jobs/{job['id']}/continue", json={"steps": 2}).json()
    fresh = s.submit(seed=5, steps=6)
    assert more["steps"] == fresh["steps"] == 6 and more["id"] != fresh["id"]
    assert s.wait(more["id"])["status"] == "done" and s.wait(fresh["id"])["status"] == "done"


def test_a_chunked_body_past_the_limit_is_413(studio):
    client = studio(start=False).client

    def chunks():
        for _ in range(7):
            yield b" " * 2**20

    answer = client.post("/api/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and "over 5 MiB" in answer.json()["detail"]
    upload = client.post("/api/v1/uploads", content=(b"x" * 2**20 for _ in range(18)),
                         headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert upload.status_code == 413
