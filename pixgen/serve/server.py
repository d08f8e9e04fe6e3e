"""Starting the studio: options checked, DIR held, workers started, the app served by uvicorn until Ctrl-C."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pixgen.errors import ConfigError, OutputError
from pixgen.folder_lock import hold_folder

TOKEN_ENV = "PIXGEN_TOKEN"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")
MAX_CONNECTIONS = 256  # connections and tasks at once (uvicorn answers 503 past them): file descriptors are finite


@dataclass
class ServeOptions:
    """How ``pixgen serve`` runs: where, on what, how much it takes."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 7860
    workers: int = 1
    devices: list[str] | None = None
    executor: str = "local"
    address: str | None = None
    threads: int | None = None
    max_queue: int = 1000
    preview_every: float = 0.5
    public_url: str | None = None  # the address people open, behind a reverse proxy (a token is then required)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_options(options: ServeOptions) -> None:
    """Refuse what cannot run, in one line, before DIR is touched (the batch package's checks)."""
    from pixgen.batch.local import check_devices
    from pixgen.batch.log import LOG_NAME
    from pixgen.batch.manifest import check_executor
    from pixgen.batch.runner import check_run_options

    if not 0 <= options.port <= 65535:
        raise ConfigError(f"invalid port {options.port}: expected 0-65535")
    if not 1 <= options.max_queue <= 100_000:
        raise ConfigError(f"invalid --max-queue {options.max_queue}: expected 1-100000")
    if not 0.05 <= options.preview_every <= 60:
        raise ConfigError(f"invalid --preview-every {options.preview_every}: expected 0.05-60 seconds")
    check_run_options(options.executor, options.workers, options.devices, options.threads)
    check_executor(options.executor, options.address)
    if options.executor == "local":
        check_devices([], options.devices)
    if options.public_url is not None:
        parts = urlsplit(options.public_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"invalid --public-url {options.public_url!r}: expected http(s)://name[:port]/")
    root = options.root
    if root.exists() and not root.is_dir():
        raise OutputError(f"--dir {root} exists and is not a folder")
    if root.is_dir() and not (root / LOG_NAME).is_file() and any(root.iterdir()):
        raise OutputError(f"--dir {root} holds files but no {LOG_NAME}: it is not a pixgen studio or batch folder, "
                          "and the studio writes index.html there; choose a new or empty folder")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; a one-line error when it is taken or not this machine's."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY only then
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def make_pool(options: ServeOptions):
    """The worker pool of ``options.executor``: local worker processes, or Ray actors."""
    if options.executor == "ray":
        from pixgen.serve.on_ray import RayPool

        return RayPool(options.root, options.address, options.threads, options.preview_every)
    from pixgen.batch.local import cpu_worker_count, worker_devices
    from pixgen.serve.workers import WorkerPool

    devices = worker_devices(options.workers, options.devices)
    spare = max(1, (os.cpu_count() or 1) - 1)  # one core answers requests while the workers render
    threads = options.threads or max(1, spare // max(1, cpu_worker_count(devices)))
    return WorkerPool(devices, threads, options.preview_every)


def serve(options: ServeOptions, say: Callable[[str], None] = print) -> None:
    """Run the studio until Ctrl-C (or SIGTERM); every job is on disk, running ones save their state on the way out."""
    import uvicorn

    from pixgen.serve.app import create_app
    from pixgen.serve.studio import Studio

    check_options(options)
    public = urlsplit(options.public_url) if options.public_url else None
    open_to_network = public is not None or not is_loopback(options.host)
    token = (os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)) if open_to_network else None
    sock = bind(options.host, options.port)
    with hold_folder(options.root):
        studio = Studio(options.root, options.max_queue)
        for note in studio.notes:
            say(f"note: {note}")
        pool = make_pool(options)
        driver = threading.Thread(target=studio.serve_forever, args=(pool, say), name="pixgen-studio", daemon=True)
        allowed = None if token is not None else (*LOOPBACK_NAMES, options.host, f"[{options.host}]")
        app = create_app(studio, pool, token=token, allowed_hosts=allowed, executor=options.executor,
                         secure_cookie=public is not None and public.scheme == "https")
        port = sock.getsockname()[1]
        where = f"[{options.host}]" if ":" in options.host else options.host
        url = f"http://{where}:{port}/" if public is None else options.public_url.rstrip("/") + "/"
        url += f"?token={token}" if token else ""
        queued = studio.queued_count()
        say(f"pixgen studio: {url}  (jobs in {options.root}; {queued} queued; Ctrl-C stops)")
        driver.start()
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                               timeout_graceful_shutdown=2, limit_concurrency=MAX_CONNECTIONS))
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn raises the Ctrl-C it handled once it has stopped: a normal stop
            pass
        finally:
            studio.stopping.set()
            driver.join(timeout=60)
            sock.close()
        say(f"pixgen studio stopped; {studio.queued_count()} job(s) queued in {options.root} continue when it "
            "starts again")
