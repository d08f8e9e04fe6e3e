"""A real `pixgen serve` in a subprocess, for the tests that need a whole server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``python -m pixgen serve`` in a subprocess, and a client for it."""

    def __init__(self, root: Path, *options: str):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "pixgen", "serve", "--port", str(self.port), "--dir",
                                      str(root), "--preview-every", "0.1", *options], env=os.environ.copy(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"pixgen serve exited: {self.proc.stderr.read()}")
            try:
                if self.client.get("/api/v1/info").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "pixgen serve did not answer within 90 s"
            time.sleep(0.2)

    def job(self, job_id: str) -> dict:
        return self.client.get(f"/api/v1/jobs/{job_id}").json()

    def wait(self, job_id: str, test, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while not test(job := self.job(job_id)):
            assert time.monotonic() < deadline, f"job {job_id}: {job['status']} {job['progress']}"
            time.sleep(0.05)
        return job

    def stop(self, sig=signal.SIGINT) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()
