"""Load test of `pixgen serve` on loopback: C clients submit J small jobs and poll them until done.

The real server runs as a subprocess on a free port with a fresh ``--dir``. C client threads (one
``httpx.Client`` each) together submit J jobs with ``POST /api/v1/jobs`` (a 429, queue full, is by
design: the client polls its own jobs, waits briefly and submits again) and poll
``GET /api/v1/jobs/{id}`` until each is done. Every request's latency and status code is recorded.

Checks (exit status 1 when any fails):
- every submitted job has its own id and ends ``done``, exactly once: ``GET /api/v1/jobs`` lists each
  id once (and nothing else), and ``DIR/batch.jsonl`` has exactly one ``end`` record per job folder;
- no request failed except 429s (no other non-2xx code, no connection error or client timeout);
- at most ``--workers`` jobs ran at once (from the start/end records of ``batch.jsonl``);
- the p95 latency of status requests made while a job was running is under ``--p95-limit-ms`` (200);
- everything finished within ``--timeout`` seconds (a hard bound: the server is stopped then);
- the server stopped on SIGINT within 20 s and left no child process running.

Reported: those latencies (p50/p95/max), submit latency, wall time, jobs/s, 429 count, the peak
RSS (VmHWM) and CPU seconds of the server process and of each of its child processes (the workers),
and the machine's load average (other work on the machine skews every figure).

A client polls its unfinished jobs every ``--poll-interval`` seconds; after a 429 it submits again
after the answer's Retry-After, else after ``--retry-wait`` seconds doubled at each 429 in a row up
to ``--retry-max``.

    .venv/bin/python benchmarks/serve_load.py [--clients 10] [--jobs-total 100] [--workers 1]
        [--max-queue 20] [--timeout 600] [--json FILE]
    PIXGEN_REGISTRY=registry.yaml .venv/bin/python benchmarks/serve_load.py --tiny --vqgan NAME --clip NAME

The test ``tests/test_serve_load.py`` imports this module and runs the same load on tiny models.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

API = "/api/v1"
FINAL = ("done", "failed", "cancelled")
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow circle on a purple background"]


# ----------------------------------------------------------------------------------------------- the server


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, folder: Path, workers: int, max_queue: int | None = None,
                 env: dict[str, str] | None = None, log_path: Path | None = None,
                 extra_args: list[str] | None = None) -> subprocess.Popen:
    """Start ``pixgen serve`` as a subprocess in its own session; its output goes to ``log_path``."""
    command = [sys.executable, "-m", "pixgen", "serve", "--port", str(port), "--dir", str(folder),
               "--jobs", str(workers)]
    if max_queue is not None:
        command += ["--max-queue", str(max_queue)]
    command += extra_args or []
    env = dict(os.environ if env is None else env)
    env.setdefault("PIXGEN_OFFLINE", "1")
    log = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    finally:
        if log_path is not None:
            log.close()  # the child holds its own copy


def wait_ready(base_url: str, proc: subprocess.Popen, timeout: float = 120.0) -> dict[str, Any]:
    """Poll ``GET /api/v1/info`` until it answers 200; its JSON. Raises if the server exits or times out."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(base_url=base_url, timeout=5.0) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {proc.returncode} before answering")
            try:
                answer = http.get(f"{API}/info")
                if answer.status_code == 200:
                    return answer.json()
                last = f"HTTP {answer.status_code}: {answer.text[:200]}"
            except httpx.HTTPError as err:
                last = f"{type(err).__name__}: {err}"
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer {API}/info within {timeout:.0f} s ({last})")


def _proc_start_time(pid: int) -> int | None:
    """A process's start time in clock ticks (field 22 of /proc/PID/stat), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def _cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds a process has used (fields 14 and 15 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from the parent ids in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _parent_pid(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _status_fields(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _kib(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


class RssMonitor:
    """Samples the peak RSS (VmHWM) of a process and its descendants every ``interval`` seconds.

    VmHWM only grows during a process's life, so the last value read per process is its peak; a
    process that exits between samples keeps the last value read. The children seen are remembered
    (with their start time) so that any the server leaves behind can be stopped by their id.
    """

    def __init__(self, pid: int, interval: float = 0.5):
        self.pid, self.interval = pid, interval
        self.peak_kib: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.started: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-monitor", daemon=True)

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def sample(self) -> None:
        for pid in [self.pid, *descendants(self.pid)]:
            fields = _status_fields(pid)
            if not fields:
                continue
            if pid not in self.started:
                start = _proc_start_time(pid)
                if start is None:
                    continue
                self.started[pid] = start
            self.names[pid] = fields.get("Name", "?").strip()
            self.peak_kib[pid] = max(self.peak_kib.get(pid, 0), _kib(fields.get("VmHWM")))
            self.cpu[pid] = max(self.cpu.get(pid, 0.0), _cpu_seconds(pid) or 0.0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def report(self) -> dict[str, Any]:
        children = {str(pid): {"name": self.names.get(pid, "?"), "peak_rss_mib": round(kib / 1024, 1),
                               "cpu_seconds": round(self.cpu.get(pid, 0.0), 1)}
                    for pid, kib in self.peak_kib.items() if pid != self.pid}
        server = self.peak_kib.get(self.pid, 0) / 1024
        return {"server_peak_rss_mib": round(server, 1), "children": children,
                "children_peak_rss_mib_max": round(max((c["peak_rss_mib"] for c in children.values()), default=0), 1),
                "total_peak_rss_mib": round(server + sum(c["peak_rss_mib"] for c in children.values()), 1),
                "server_cpu_seconds": round(self.cpu.get(self.pid, 0.0), 1),
                "children_cpu_seconds": round(sum(c["cpu_seconds"] for c in children.values()), 1)}


def stop_server(proc: subprocess.Popen, monitor: RssMonitor | None = None, grace: float = 20.0) -> dict[str, Any]:
    """SIGINT the server, wait ``grace`` seconds, then SIGKILL; then stop any child it left (by pid).

    Returns how it went: the exit code, seconds to exit, whether it had to be killed, and the
    children left behind (pids that were still alive, with the same start time, after the server exited).
    """
    start = time.monotonic()
    children: dict[int, int] = dict(monitor.started) if monitor is not None else {}
    if proc.poll() is None:
        for pid in descendants(proc.pid):  # the latest children too
            children.setdefault(pid, _proc_start_time(pid) or -1)
    killed = False
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            killed = True
            proc.kill()
            proc.wait(timeout=10)
    seconds = time.monotonic() - start
    children.pop(proc.pid, None)
    left = []
    deadline = time.monotonic() + 5.0  # children may need a moment after their parent exits
    for pid, started in children.items():
        while _proc_start_time(pid) == started and time.monotonic() < deadline:
            time.sleep(0.1)
        if _proc_start_time(pid) == started:
            left.append(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return {"exit_code": proc.returncode, "stop_seconds": round(seconds, 2), "killed": killed, "children_left": left}


# ----------------------------------------------------------------------------------------------- the clients


@dataclass
class Request:
    """One HTTP request: what, when (unix time at send), how long, and its answer code (0: no answer)."""

    kind: str  # submit | status | list
    sent: float
    seconds: float
    code: int
    job: str | None = None
    job_status: str | None = None  # the job's status in the answer, for status requests
    error: str | None = None
    retry_after: str | None = None  # the Retry-After header of a 429


def _retry_after(value: str | None) -> float | None:
    """Seconds of a Retry-After header in seconds (capped at 5), or None."""
    try:
        return min(5.0, max(0.0, float(value))) if value else None
    except ValueError:
        return None


@dataclass
class LoadResult:
    requests: list[Request] = field(default_factory=list)
    submitted: dict[int, str] = field(default_factory=dict)  # job index -> id
    final_status: dict[str, str] = field(default_factory=dict)  # id -> last status seen
    regressions: list[str] = field(default_factory=list)  # a done job seen in another status afterwards
    first_request: float = 0.0
    all_done: float | None = None  # unix time the last client finished (every job seen final, or the deadline)
    timed_out: bool = False


def bundled_job(i: int, steps: int = 4) -> dict[str, Any]:
    """A small job on the bundled models: the draft preset at 32 px and ``steps`` steps, seed ``i``."""
    return {"prompt": PROMPTS[i % len(PROMPTS)], "preset": "draft", "name": f"load-{i}",
            "settings": {"size": [32, 32], "steps": steps, "save_every": 0, "gif": False, "seed": i}}


def tiny_job(i: int, vqgan: str = "tiny-vqgan", clip: tuple[str, ...] = ("tiny-clip",), steps: int = 3,
             cut_count: int = 4) -> dict[str, Any]:
    """A small job on models of the PIXGEN_REGISTRY (the tests' tiny models by default), seed ``i``."""
    return {"prompt": PROMPTS[i % len(PROMPTS)], "preset": "draft", "name": f"load-{i}",
            "settings": {"vqgan": vqgan, "clip": list(clip), "size": [32, 32], "steps": steps,
                         "cut_count": cut_count, "save_every": 0, "gif": False, "seed": i}}


class _Work:
    """The job indexes still to submit, shared by the clients."""

    def __init__(self, total: int):
        self._next, self.total = 0, total
        self._lock = threading.Lock()

    def take(self) -> int | None:
        with self._lock:
            if self._next >= self.total:
                return None
            self._next += 1
            return self._next - 1


def run_clients(base_url: str, jobs_total: int, clients: int, make_job: Callable[[int], dict[str, Any]],
                timeout: float, poll_interval: float = 0.2, retry_wait: float = 0.1, retry_max: float = 1.0,
                request_timeout: float = 30.0) -> LoadResult:
    """Submit ``jobs_total`` jobs from ``clients`` threads and poll them until each is final.

    Each client polls its unfinished jobs every ``poll_interval`` seconds. After a 429 it submits
    again after the answer's Retry-After, else after ``retry_wait`` seconds doubled at each 429 in a
    row up to ``retry_max`` (with jitter), as a well-behaved client would.

    Stops at ``timeout`` seconds (``timed_out`` set). Never raises for an HTTP error: every request
    is recorded with its code (0 and ``error`` when there was no answer).
    """
    result = LoadResult(first_request=time.time())
    deadline = time.monotonic() + timeout
    work = _Work(jobs_total)
    lock = threading.Lock()
    late: list[int] = []  # clients stopped by the deadline

    def record(kind: str, http: httpx.Client, method: str, path: str, job: str | None = None,
               body: dict | None = None) -> tuple[Request, Any]:
        sent, start = time.time(), time.perf_counter()
        try:
            answer = http.request(method, path, json=body)
            seconds = time.perf_counter() - start
            try:
                data = answer.json()
            except ValueError:
                data = None
            req = Request(kind, sent, seconds, answer.status_code, job)
            req.retry_after = answer.headers.get("retry-after")
            if answer.status_code >= 400 and answer.status_code != 429:
                req.error = (data.get("detail") if isinstance(data, dict) else None) or answer.text[:200]
        except httpx.HTTPError as err:
            req = Request(kind, sent, time.perf_counter() - start, 0, job, error=f"{type(err).__name__}: {err}")
            data = None
        with lock:
            result.requests.append(req)
        return req, data

    def client(number: int) -> None:
        rng = random.Random(number)
        pending: dict[str, int] = {}  # id -> index, jobs this client submitted and saw not final yet
        index = work.take()
        next_submit, backoff = 0.0, retry_wait  # after a 429: when to submit again, and the next wait
        with httpx.Client(base_url=base_url, timeout=request_timeout) as http:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    with lock:
                        late.append(number)
                    return
                if index is not None and now >= next_submit:
                    req, data = record("submit", http, "POST", f"{API}/jobs", body=make_job(index))
                    if req.code == 201 and isinstance(data, dict) and isinstance(data.get("id"), str):
                        job_id = data["id"]
                        with lock:
                            result.submitted[index] = job_id
                            result.final_status.setdefault(job_id, data.get("status", "?"))
                        pending[job_id] = index
                        index, backoff = work.take(), retry_wait
                        if index is not None:
                            continue  # keep submitting until the queue says it is full
                    elif req.code == 429:  # queue full: by design; wait (doubling up to retry_max), submit again
                        wait = _retry_after(req.retry_after) or backoff * rng.uniform(0.5, 1.5)
                        next_submit, backoff = time.monotonic() + wait, min(backoff * 2, retry_max)
                    else:  # recorded as a failure; the job is not retried
                        index = work.take()
                if index is None and not pending:
                    return
                for job_id in list(pending):
                    req, data = record("status", http, "GET", f"{API}/jobs/{job_id}", job=job_id)
                    status = data.get("status") if req.code == 200 and isinstance(data, dict) else None
                    req.job_status = status
                    if status is None:
                        continue
                    with lock:
                        if result.final_status.get(job_id) == "done" and status != "done":
                            result.regressions.append(f"{job_id}: done, then {status}")
                        result.final_status[job_id] = status
                    if status in FINAL:
                        del pending[job_id]
                wait = poll_interval * rng.uniform(0.75, 1.25)
                if index is not None:
                    wait = max(0.0, next_submit - time.monotonic()) if not pending else \
                        min(wait, max(0.0, next_submit - time.monotonic()))
                time.sleep(wait)

    threads = [threading.Thread(target=client, args=(n,), name=f"client-{n}", daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + request_timeout + 5)
    result.timed_out = bool(late) or any(t.is_alive() for t in threads)
    result.all_done = time.time()
    return result


def resubmit(base_url: str, body: dict[str, Any], request_timeout: float = 10.0) -> tuple[Request, Any]:
    """POST a job the load already submitted (and saw done); the request and the answer's JSON."""
    with httpx.Client(base_url=base_url, timeout=request_timeout) as http:
        sent, start = time.time(), time.perf_counter()
        try:
            answer = http.post(f"{API}/jobs", json=body)
        except httpx.HTTPError as err:
            return Request("resubmit", sent, time.perf_counter() - start, 0, error=f"{type(err).__name__}: {err}"), None
        req = Request("resubmit", sent, time.perf_counter() - start, answer.status_code)
        try:
            return req, answer.json()
        except ValueError:
            return req, None


def list_all(base_url: str, page: int = 100, request_timeout: float = 30.0) -> tuple[list[dict], int | None, list]:
    """Every job of ``GET /api/v1/jobs`` (pages of ``page``), its ``total``, and the list requests made."""
    jobs: list[dict] = []
    total, requests = None, []
    with httpx.Client(base_url=base_url, timeout=request_timeout) as http:
        offset = 0
        while True:
            sent, start = time.time(), time.perf_counter()
            answer = http.get(f"{API}/jobs", params={"limit": page, "offset": offset})
            requests.append(Request("list", sent, time.perf_counter() - start, answer.status_code))
            if answer.status_code == 422 and page > 10 and not jobs:  # a smaller page limit: try again
                page //= 2
                continue
            if answer.status_code != 200:
                requests[-1].error = answer.text[:200]
                break
            data = answer.json()
            total = data.get("total")
            chunk = data.get("jobs") or []
            jobs.extend(chunk)
            offset += len(chunk)
            if not chunk or (isinstance(total, int) and offset >= total) or offset > 100_000:
                break
    return jobs, total, requests


def read_log(folder: Path) -> list[dict[str, Any]]:
    """The JSON records of ``DIR/batch.jsonl`` (lines that are not JSON objects are skipped)."""
    path = folder / "batch.jsonl"
    records = []
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def busy_intervals(records: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(start, end) unix times of each job's runs: from a ``start`` record to the next record of its folder."""
    open_: dict[str, float] = {}
    intervals = []
    for record in records:
        folder, event, when = record.get("folder"), record.get("event"), record.get("time")
        if not isinstance(folder, str) or not isinstance(when, (int, float)):
            continue
        if event == "start":
            open_[folder] = when
        elif folder in open_:
            intervals.append((open_.pop(folder), when))
    intervals += [(start, math.inf) for start in open_.values()]
    return intervals


def max_concurrency(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at once (an end at the same time as a start closes first)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_stats(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in seconds]
    return {"count": len(ms), **{k: None if v is None else round(v, 1) for k, v in
                                 (("p50_ms", percentile(ms, 50)), ("p95_ms", percentile(ms, 95)),
                                  ("max_ms", max(ms) if ms else None))}}


def analyse(result: LoadResult, listed: list[dict], total: int | None, list_requests: list[Request], folder: Path,
            jobs_total: int, workers: int, p95_limit_ms: float) -> dict[str, Any]:
    """The figures and the checks (name -> (passed, detail)) of one load run."""
    requests = result.requests + list_requests
    records = read_log(folder)
    intervals = busy_intervals(records)

    def busy(request: Request) -> bool:
        return request.job_status == "running" or any(s <= request.sent < e for s, e in intervals)

    status = [r for r in result.requests if r.kind == "status" and r.code == 200]
    status_busy = [r for r in status if busy(r)]
    submits = [r for r in result.requests if r.kind == "submit"]
    codes = Counter(r.code for r in requests)
    failures = [r for r in requests if r.code != 429 and not 200 <= r.code < 300]

    ids = list(result.submitted.values())
    duplicates_submitted = sorted(i for i, n in Counter(ids).items() if n > 1)
    not_done = sorted(i for i in ids if result.final_status.get(i) != "done")
    listed_ids = Counter(j.get("id") for j in listed)
    listed_twice = sorted(i for i, n in listed_ids.items() if n > 1)
    listed_missing = sorted(set(ids) - set(listed_ids))
    listed_extra = sorted(set(listed_ids) - set(ids))
    listed_not_done = sorted(j.get("id") for j in listed if j.get("status") != "done")
    ends = Counter(r["folder"] for r in records if r.get("event") == "end" and isinstance(r.get("folder"), str))
    starts = Counter(r["folder"] for r in records if r.get("event") == "start" and isinstance(r.get("folder"), str))
    events = Counter(str(r.get("event")) for r in records)
    end_wrong = sorted(f"{i}: {ends.get(i, 0)} end records" for i in set(ids) | set(ends) if ends.get(i, 0) != 1)
    concurrency = max_concurrency(intervals)

    wall = (result.all_done or time.time()) - result.first_request
    busy_stats = latency_stats([r.seconds for r in status_busy])
    p95 = busy_stats["p95_ms"]

    def check(ok: bool, detail: str) -> dict[str, Any]:
        return {"ok": bool(ok), "detail": detail}

    def few(items: list, n: int = 5) -> str:
        return ", ".join(map(str, items[:n])) + (f" (+{len(items) - n} more)" if len(items) > n else "")

    checks = {
        "finished in time": check(not result.timed_out, "all jobs final" if not result.timed_out else
                                  f"timed out: {len(ids)} submitted, {len(ids) - len(not_done)} done"),
        "every job submitted": check(len(result.submitted) == jobs_total and not duplicates_submitted,
                                     f"{len(result.submitted)}/{jobs_total} accepted, {len(set(ids))} distinct ids"
                                     + (f"; same id for different jobs: {few(duplicates_submitted)}"
                                        if duplicates_submitted else "")),
        "every job done": check(not not_done and len(ids) == jobs_total,
                                "all done" if not not_done else
                                f"{len(not_done)} not done: " + few([f"{i}={result.final_status.get(i)}"
                                                                     for i in not_done])),
        "no status regression": check(not result.regressions, few(result.regressions) or "none"),
        "listed exactly once": check(
            not listed_twice and not listed_missing and not listed_extra and total == len(ids) and not listed_not_done,
            f"{len(listed)} listed, total={total}; twice: {few(listed_twice) or 'none'}; missing: "
            f"{few(listed_missing) or 'none'}; extra: {few(listed_extra) or 'none'}; not done: "
            f"{few(listed_not_done) or 'none'}"),
        "one end record per job": check(not end_wrong and sum(ends.values()) == jobs_total,
                                        f"{sum(ends.values())} end records for {len(ends)} folders"
                                        + (f"; {few(end_wrong)}" if end_wrong else "")),
        "no failed request but 429": check(not failures, "none" if not failures else
                                           f"{len(failures)}: " + few([f"{r.kind} {r.job or ''} -> {r.code} "
                                                                       f"{r.error or ''}".strip() for r in failures])),
        "workers respected": check(concurrency <= workers, f"at most {concurrency} jobs running at once"),
        f"p95 busy status < {p95_limit_ms:g} ms": check(p95 is not None and p95 < p95_limit_ms,
                                                         f"p95 {p95} ms over {busy_stats['count']} requests"),
    }
    figures = {
        "jobs": jobs_total, "workers": workers, "wall_seconds": round(wall, 2),
        "jobs_per_second": round(jobs_total / wall, 3) if wall > 0 else None,
        "requests": len(requests), "codes": {str(k): v for k, v in sorted(codes.items())},
        "submits": len(submits), "submit_429": sum(r.code == 429 for r in submits),
        "submit_latency": latency_stats([r.seconds for r in submits if r.code in (201, 429)]),
        "submit_201_latency": latency_stats([r.seconds for r in submits if r.code == 201]),
        "status_latency_all": latency_stats([r.seconds for r in status]),
        "status_latency_busy": busy_stats,
        "list_latency": latency_stats([r.seconds for r in list_requests if r.code == 200]),
        "log_events": dict(events), "starts_per_job_max": max(starts.values(), default=0),
        "max_jobs_running": concurrency,
    }
    return {"figures": figures, "checks": checks, "passed": all(c["ok"] for c in checks.values())}


def run_load(base_url: str, folder: Path, jobs_total: int, clients: int, workers: int,
             make_job: Callable[[int], dict[str, Any]], timeout: float, p95_limit_ms: float = 200.0,
             poll_interval: float = 0.2, retry_wait: float = 0.1, retry_max: float = 1.0,
             settle: float = 1.0) -> dict[str, Any]:
    """Run the clients against a started server, then list the jobs, read the log and check (see ``analyse``)."""
    result = run_clients(base_url, jobs_total, clients, make_job, timeout, poll_interval, retry_wait, retry_max,
                         request_timeout=10.0)
    again = None
    if not result.timed_out and 0 in result.submitted:
        again = resubmit(base_url, make_job(0))
        time.sleep(settle)  # a job run twice would show in the list and the log by now
    try:
        listed, total, list_requests = list_all(base_url, request_timeout=10.0)
    except httpx.HTTPError as err:
        listed, total = [], None
        list_requests = [Request("list", time.time(), 0.0, 0, error=f"{type(err).__name__}: {err}")]
    report = analyse(result, listed, total, list_requests, folder, jobs_total, workers, p95_limit_ms)
    if again is not None:  # the same settings again: the same job, done, not run a second time
        req, data = again
        same = isinstance(data, dict) and data.get("id") == result.submitted[0]
        report["checks"]["same job submitted again"] = {
            "ok": req.code in (200, 201) and same and data.get("status") == "done",
            "detail": f"HTTP {req.code}, " + (f"the same id, {data.get('status')}" if same else
                                              f"another id or none: {str(data)[:120]}")}
        report["figures"]["resubmit_code"] = req.code
        report["passed"] = all(c["ok"] for c in report["checks"].values())
        list_requests.append(req)
    report["figures"]["clients"] = clients
    report["requests_log"] = [asdict(r) for r in result.requests + list_requests]
    return report


# ----------------------------------------------------------------------------------------------- reporting


def markdown(report: dict[str, Any]) -> str:
    """A short Markdown table of the figures and one of the checks."""
    f = report["figures"]

    def lat(name: str) -> str:
        s = f.get(name) or {}
        return f"{s.get('p50_ms')} / {s.get('p95_ms')} / {s.get('max_ms')} ms ({s.get('count')} requests)"

    rss = report.get("rss") or {}
    rows = [
        ("jobs, clients, workers", f"{f['jobs']}, {f.get('clients')}, {f['workers']}"),
        ("wall time (first submit to last done)", f"{f['wall_seconds']} s"),
        ("jobs/s", f"{f['jobs_per_second']}"),
        ("status p50 / p95 / max, while a job ran", lat("status_latency_busy")),
        ("status p50 / p95 / max, all", lat("status_latency_all")),
        ("submit p50 / p95 / max (201 and 429)", lat("submit_latency")),
        ("list p50 / p95 / max", lat("list_latency")),
        ("submits answered 429", f"{f['submit_429']} of {f['submits']}"),
        ("HTTP codes", ", ".join(f"{k}: {v}" for k, v in f["codes"].items())),
        ("most jobs running at once", f"{f['max_jobs_running']}"),
    ]
    if rss:
        rows.append(("peak RSS: server / largest child / total",
                     f"{rss.get('server_peak_rss_mib')} / {rss.get('children_peak_rss_mib_max')} / "
                     f"{rss.get('total_peak_rss_mib')} MiB ({len(rss.get('children', {}))} children)"))
    if rss:
        rows.append(("CPU seconds: server / children", f"{rss.get('server_cpu_seconds')} / "
                                                       f"{rss.get('children_cpu_seconds')}"))
    if "load_average" in report:
        rows.append(("machine load average (1 min) before / after", " / ".join(map(str, report["load_average"]))))
    if "startup_seconds" in report:
        rows.append(("server startup (to /info)", f"{report['startup_seconds']} s"))
    if "stop" in report:
        s = report["stop"]
        rows.append(("server stop (SIGINT)", f"exit {s['exit_code']} in {s['stop_seconds']} s"
                     + (", killed" if s["killed"] else "") + (f", children left: {s['children_left']}"
                                                              if s["children_left"] else "")))
    lines = ["| figure | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows), "",
             "| check | result | detail |", "|---|---|---|",
             *(f"| {name} | {'ok' if c['ok'] else 'FAIL'} | {c['detail']} |" for name, c in report["checks"].items())]
    return "\n".join(lines)


def load_test(jobs_total: int, clients: int, workers: int, max_queue: int | None,
              make_job: Callable[[int], dict[str, Any]], timeout: float, folder: Path,
              env: dict[str, str] | None = None, p95_limit_ms: float = 200.0, poll_interval: float = 0.2,
              retry_wait: float = 0.1, retry_max: float = 1.0, startup_timeout: float = 120.0,
              server_args: list[str] | None = None) -> dict[str, Any]:
    """Start a server on ``folder / "studio"``, run the load, always stop the server; the report.

    ``timeout`` bounds the whole thing: startup, then the clients until ``timeout`` less a reserve
    (a tenth, at most 40 s) for listing the jobs and stopping the server (SIGINT, 20 s, SIGKILL).
    """
    studio, log_path = folder / "studio", folder / "server.log"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    proc = start_server(port, studio, workers, max_queue, env=env, log_path=log_path, extra_args=server_args)
    monitor = RssMonitor(proc.pid)
    report: dict[str, Any] = {"load_average": [round(os.getloadavg()[0], 2)], "cpus": os.cpu_count()}
    try:
        monitor.__enter__()
        wait_ready(base_url, proc, timeout=min(startup_timeout, timeout))
        report["startup_seconds"] = round(time.monotonic() - started, 2)
        left = max(1.0, timeout - min(40.0, timeout / 10) - (time.monotonic() - started))
        report.update(run_load(base_url, studio, jobs_total, clients, workers, make_job, left, p95_limit_ms,
                               poll_interval, retry_wait, retry_max))
        if proc.poll() is not None:
            report["checks"]["server alive"] = {"ok": False, "detail": f"exited with code {proc.returncode}"}
            report["passed"] = False
        monitor.sample()
        report["load_average"].append(round(os.getloadavg()[0], 2))
    finally:
        monitor.stop()
        report["stop"] = stop = stop_server(proc, monitor)
        report["rss"] = monitor.report()
        if "checks" in report:
            report["checks"]["server stopped cleanly"] = {
                "ok": not stop["killed"] and not stop["children_left"],
                "detail": f"exit {stop['exit_code']} {stop['stop_seconds']} s after SIGINT"
                          + ("; had to be killed" if stop["killed"] else "")
                          + (f"; children left running (killed): {stop['children_left']}" if stop["children_left"]
                             else "")}
            report["passed"] = all(c["ok"] for c in report["checks"].values())
        report["server_log"] = str(log_path)
        try:
            report["server_log_tail"] = log_path.read_text(errors="replace")[-4000:]
        except OSError:
            report["server_log_tail"] = ""
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10, help="client threads (default 10)")
    parser.add_argument("--jobs-total", type=int, default=100, help="jobs submitted in all (default 100)")
    parser.add_argument("--workers", type=int, default=1, help="pixgen serve --jobs (default 1)")
    parser.add_argument("--max-queue", type=int, default=20, help="pixgen serve --max-queue (20; 0: not passed)")
    parser.add_argument("--threads", type=int, help="pixgen serve --threads (not passed by default)")
    parser.add_argument("--timeout", type=float, default=600.0, help="hard bound in seconds (default 600)")
    parser.add_argument("--steps", type=int, default=4, help="steps per job (default 4)")
    parser.add_argument("--tiny", action="store_true", help="use models of PIXGEN_REGISTRY named by --vqgan/--clip")
    parser.add_argument("--vqgan", default="tiny-vqgan", help="with --tiny: the VQGAN name (default tiny-vqgan)")
    parser.add_argument("--clip", action="append", help="with --tiny: a CLIP name, repeatable (default tiny-clip)")
    parser.add_argument("--poll-interval", type=float, default=0.2, help="seconds between a client's polls (0.2)")
    parser.add_argument("--retry-wait", type=float, default=0.1,
                        help="seconds a client waits after a 429, doubled at each 429 in a row (0.1)")
    parser.add_argument("--retry-max", type=float, default=1.0, help="the longest wait after a 429 (1.0)")
    parser.add_argument("--p95-limit-ms", type=float, default=200.0, help="fail at or above this p95 (200)")
    parser.add_argument("--json", type=Path, help="write the report (figures, checks, every request) here")
    parser.add_argument("--keep", type=Path, help="use this folder (kept) instead of a temporary one")
    args = parser.parse_args(argv)

    if args.tiny:
        clip = tuple(args.clip or ["tiny-clip"])

        def make_job(i: int) -> dict[str, Any]:
            return tiny_job(i, args.vqgan, clip, steps=args.steps)
    else:
        def make_job(i: int) -> dict[str, Any]:
            return bundled_job(i, steps=args.steps)

    with tempfile.TemporaryDirectory(prefix="pixgen-serve-load-") as temp:
        folder = args.keep or Path(temp)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            report = load_test(args.jobs_total, args.clients, args.workers, args.max_queue or None, make_job,
                               args.timeout, folder, poll_interval=args.poll_interval,
                               retry_wait=args.retry_wait, retry_max=args.retry_max,
                               p95_limit_ms=args.p95_limit_ms,
                               server_args=["--threads", str(args.threads)] if args.threads else None)
        except RuntimeError as err:  # the server did not start
            print(f"error: {err}", file=sys.stderr)
            log = folder / "server.log"
            if log.is_file():
                print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
            return 2
    print(markdown(report))
    if not report["passed"] and report.get("server_log_tail"):
        print("\nserver log (tail):\n" + report["server_log_tail"][-2000:], file=sys.stderr)
    summary = {k: v for k, v in report.items() if k not in ("requests_log", "server_log_tail")}
    print("\n" + json.dumps(summary, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
