"""The HTTP API (``/api/v1``) and the studio page, as a FastAPI app over a :class:`~pixgen.serve.studio.Studio`.

Handlers are thin: validation is :mod:`pixgen.serve.submit`'s (the CLI's), state the studio's.
Every error is ``{"detail": "<one line>"}``: 422 for bad settings, 404 unknown job, 409 not in a
state to do that, 413 too big, 415 not an image, 429 queue full.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import shutil
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from pixgen import __version__
from pixgen.config import MAX_CUT_COUNT, MAX_SIDE, MAX_STEPS, list_presets, preset_path, read_yaml_mapping
from pixgen.errors import ConfigError, InputError, OutputError, PixgenError, one_line
from pixgen.fileio import atomic_path
from pixgen.serve.guard import MAX_UPLOAD_BYTES, Guard
from pixgen.serve.studio import FINAL, Busy, Entry, QueueFull, Studio
from pixgen.serve.submit import UPLOADS_DIR, Order, plan_manifest, plan_order

STATIC = Path(__file__).parent / "static"
MAX_STREAMS = 100  # event streams open at once; more get 503 (each costs a little CPU every 0.1 s)
MAX_UPLOADS_BYTES = 2 * 2**30  # all uploads of a studio together; more get 507
UPLOAD_PIXELS = MAX_SIDE * MAX_SIDE  # an upload's pixels at most, checked before it is decoded (~50 MB then)
UPLOAD_DECODES = threading.BoundedSemaphore(2)  # uploads decoded at once: each may take ~50 MB
FILE_NAMES = ("image.png", "progress.gif", "animation.gif", "animation.mp4")
FRAME_PREFIXES = ("step-", "frame-")
MAX_LIST = 500  # jobs in one listing
UPLOAD_FORMATS = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "WEBP": "webp"}  # MPO: JPEG from phone cameras


class TooMany(PixgenError):
    """More of something at once than the server takes (HTTP 503)."""


class RunRequest(BaseModel):
    """A run, or with ``animation`` an animation: a prompt, a preset and any config keys."""

    prompt: str = Field("", max_length=10_000)
    preset: str = "default"
    settings: dict[str, Any] | None = None
    animation: dict[str, Any] | None = None
    name: str | None = None


class ManifestRequest(BaseModel):
    manifest: str


class RerunRequest(BaseModel):
    seed: int | None = None  # None: a new random seed


class ContinueRequest(BaseModel):
    steps: int = Field(ge=1, le=MAX_STEPS)


def job_json(entry: Entry) -> dict[str, Any]:
    """A job as the API shows it (docs/serve.md)."""
    order, config = entry.order, entry.order.job.config
    return {"id": entry.id, "kind": order.kind, "name": order.job.name, "prompt": config.prompt,
            "preset": entry.preset, "status": entry.status, "cancel_requested": entry.cancel_requested,
            "error": public_error(entry.error, order.job.folder.parent), "submitted": entry.submitted,
            "seed": config.seed, "steps": config.steps,
            "size": list(config.size), "progress": entry.progress, "parameters": entry.parameters,
            "animation": order.animation, "files": job_files(entry), "parent": order.parent}


def public_error(error: str | None, root: Path) -> str | None:
    """A job's error as a web client should read it: paths inside DIR relative to it, and the studio's way to go on
    instead of the command line's (the server's log keeps the whole line)."""
    if error is None:
        return None
    error = re.sub(r"continue with: pixgen resume \S+", "resume the job", error)
    return error.replace(f"{root}/", "").replace(str(root), "DIR")


def job_files(entry: Entry) -> dict[str, Any]:
    folder, base = entry.order.job.folder, f"/api/v1/jobs/{entry.id}/files/"

    def url(name: str) -> str | None:
        return base + name if (folder / name).is_file() else None

    done = entry.status == "done"
    frames = sorted(p.name for p in (folder / "frames").glob("*.png")) if (folder / "frames").is_dir() else []
    image = gif = video = None
    if done and entry.order.kind == "animation":
        last = [f for f in frames if f.startswith("frame-")][-1:]
        image = base + "frames/" + last[0] if last else None
        gif, video = url("animation.gif"), url("animation.mp4")
    elif done:
        image, gif = url("image.png"), url("progress.gif")
    return {"image": image, "gif": gif, "video": video, "frames": [base + "frames/" + f for f in frames]}


def create_app(studio: Studio, pool, *, token: str | None = None, allowed_hosts: tuple[str, ...] | None = None,
               executor: str = "local", secure_cookie: bool = False) -> FastAPI:
    """The app serving ``studio``; with ``token``, every API request must carry it."""
    streams = SimpleNamespace(count=0)  # event streams open now (each polls its job every 0.1 s)
    app = FastAPI(title="pixgen studio", version=__version__, docs_url=None, redoc_url=None,
                  description="Make images with VQGAN+CLIP: queue jobs, watch them form, keep the results.")
    app.state.studio = studio

    @app.exception_handler(PixgenError)
    async def pixgen_error(_request: Request, err: PixgenError) -> JSONResponse:
        code = 429 if isinstance(err, QueueFull) else 409 if isinstance(err, Busy) else 422
        if isinstance(err, OutputError):  # the server's disk, not the request
            code = 500
        if isinstance(err, TooMany):
            code = 503
        return JSONResponse({"detail": one_line(err)}, status_code=code)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, err: Exception) -> JSONResponse:
        # a bug: one line for the client; uvicorn logs the traceback for the operator
        return JSONResponse({"detail": f"internal error (a bug in pixgen, please report it): {type(err).__name__}"},
                            status_code=500)

    @app.exception_handler(KeyError)
    async def unknown_job(_request: Request, err: KeyError) -> JSONResponse:
        return JSONResponse({"detail": f"no job {err.args[0]!r} in this studio"}, status_code=404)

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}".strip(": ")},
                            status_code=422)

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _mount_docs(app)

    @app.get("/api/v1/info")
    def info() -> dict[str, Any]:
        """Version, presets with their settings, limits and workers."""
        from pixgen.models.registry import load_registry

        registry = load_registry()
        presets = [{"name": name, "settings": read_yaml_mapping(preset_path(name), "preset")}
                   for name in list_presets()]
        return {"version": __version__, "presets": presets, "default_preset": "default",
                "models": {kind: registry.names(kind) for kind in ("vqgan", "clip")},
                "limits": {"max_side": MAX_SIDE, "max_steps": MAX_STEPS, "max_cut_count": MAX_CUT_COUNT,
                           "max_upload_bytes": MAX_UPLOAD_BYTES, "max_queue": studio.max_queue},
                "workers": [str(device or "auto") for device in pool.devices], "executor": executor,
                "token_required": token is not None}

    @app.post("/api/v1/jobs", status_code=201)
    def submit(request: RunRequest, response: Response) -> dict[str, Any]:
        """Queue a run (or, with ``animation``, an animation); the CLI's validation runs first."""
        studio.check_room()
        order = plan_order(studio.root, request.prompt, request.preset, request.settings,
                           animation=request.animation, name=request.name)
        return _queued(studio, [order], response)[0]

    @app.post("/api/v1/batches", status_code=201)
    def submit_batch(request: ManifestRequest, response: Response) -> dict[str, Any]:
        """Queue every job of a batch manifest (YAML text: defaults, jobs, matrix)."""
        orders = plan_manifest(studio.root, request.manifest, room=studio.check_room)
        return {"jobs": _queued(studio, orders, response)}

    @app.post("/api/v1/uploads", status_code=201)
    def upload(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        """Store an image (PNG, JPEG or WebP) for init_image or image_prompts; answers its id."""
        return store_upload(studio.root, file)

    @app.get("/api/v1/jobs")
    def jobs(status: str | None = None, q: str = "", kind: str | None = None,
             limit: int = Query(50, ge=1, le=MAX_LIST), offset: int = Query(0, ge=0)) -> dict[str, Any]:
        """Jobs newest first; ``status`` a comma-separated list, ``q`` a text in the prompt or name."""
        statuses = {s for s in (status or "").split(",") if s}
        found = studio.listing(statuses, q, kind)
        with studio.lock:
            return {"jobs": [job_json(e) for e in found[offset:offset + limit]], "total": len(found)}

    @app.get("/api/v1/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        with studio.lock:
            return job_json(studio.get(job_id))

    def snapshot(entry: Entry, status: str | None) -> tuple[dict | None, dict | None]:
        with studio.lock:
            progress = _progress_event(entry) if entry.progress else None
            return progress, job_json(entry) if entry.status != status else None

    @app.get("/api/v1/jobs/{job_id}/events", response_class=EventSourceResponse)
    async def events(entry: Annotated[Entry, Depends(job_entry)], request: Request):
        """Progress (step, loss, a preview at most every few tenths of a second) and status changes."""
        if streams.count >= MAX_STREAMS:
            raise TooMany(f"{MAX_STREAMS} event streams are open; close some pages or poll GET /api/v1/jobs/ID")
        streams.count += 1
        try:
            seen, status = -1, None
            while not await request.is_disconnected():
                if entry.version != seen:  # read without the lock: the event loop never waits for it
                    seen = entry.version
                    progress, whole = await run_in_threadpool(snapshot, entry, status)
                    if progress is not None:
                        yield ServerSentEvent(event="progress", data=progress)
                    if whole is not None:
                        status = whole["status"]
                        yield ServerSentEvent(event="status", data=whole)
                        if status in FINAL or status == "deleted":
                            return
                await asyncio.sleep(0.1)
        finally:
            streams.count -= 1

    @app.get("/api/v1/jobs/{job_id}/preview")
    def preview(job_id: str) -> Response:
        entry = studio.get(job_id)
        if entry.preview is None:
            return Response(status_code=204)
        return Response(entry.preview, media_type=entry.preview_type, headers={"Cache-Control": "no-store"})

    @app.get("/api/v1/jobs/{job_id}/files/{path:path}")
    def files(job_id: str, path: str, download: bool = False) -> FileResponse:
        """One output of the job: its image, GIF, video or a frame; nothing else under DIR."""
        target = output_file(studio.get(job_id).order.job.folder, path)
        return FileResponse(target, filename=f"{job_id}-{target.name}" if download else None,
                            content_disposition_type="attachment" if download else "inline")

    @app.post("/api/v1/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict[str, Any]:
        """Stop the job: queued, it will not run; running, it stops at its next step and keeps its state."""
        entry = studio.cancel(job_id)
        with studio.lock:
            return job_json(entry)

    @app.post("/api/v1/jobs/{job_id}/resume")
    def resume(job_id: str) -> dict[str, Any]:
        """Queue a cancelled or failed job again: it continues from its saved state."""
        entry = studio.resume(job_id)
        with studio.lock:
            return job_json(entry)

    @app.post("/api/v1/jobs/{job_id}/rerun", status_code=201)
    def rerun(job_id: str, request: RerunRequest, response: Response) -> dict[str, Any]:
        """The same settings with ``seed`` (null: a new random one), as a new job."""
        studio.check_room()
        return _queued(studio, [derived_order(studio, job_id, {"seed": request.seed})], response)[0]

    @app.post("/api/v1/jobs/{job_id}/continue", status_code=201)
    def more(job_id: str, request: ContinueRequest, response: Response) -> dict[str, Any]:
        """A new job that continues this run from its last state for ``steps`` more steps."""
        steps = request.steps
        entry = studio.get(job_id)
        if entry.order.kind != "run":
            raise ConfigError("only a still run can be continued; re-run an animation with more frames")
        if entry.status != "done":
            raise Busy(f"job {job_id} is {entry.status}; only a finished run can be continued")
        studio.check_room()
        order = continued(derived_order(studio, job_id, {"steps": entry.order.job.config.steps + steps}), entry.order)
        carry_state(entry.order, order)
        return _queued(studio, [order], response)[0]

    @app.delete("/api/v1/jobs/{job_id}")
    def delete(job_id: str, confirm: str = "") -> dict[str, Any]:
        """Delete the job's folder and forget it; only with ``?confirm=yes``, never while it is queued or running."""
        if confirm != "yes":
            raise ConfigError("deleting a job's files needs ?confirm=yes")
        studio.delete(job_id)
        return {"deleted": job_id}

    return Guard(app, token=token, allowed_hosts=allowed_hosts, secure_cookie=secure_cookie)


def job_entry(job_id: str, request: Request) -> Entry:
    """The job of the path, as a dependency: an unknown job is a 404 before an event stream starts."""
    return request.app.state.studio.get(job_id)


def _queued(studio: Studio, orders: list[Order], response: Response) -> list[dict[str, Any]]:
    if studio.broken:
        raise TooMany("the studio's job runner has stopped (see the server's log); restart pixgen serve")
    pairs = studio.submit(orders)
    if not any(new for _, new in pairs):
        response.status_code = 200  # every job was already there: nothing new queued
    with studio.lock:
        return [job_json(entry) for entry, _ in pairs]


def _progress_event(entry: Entry) -> dict[str, Any]:
    preview = None
    if entry.preview is not None:
        preview = f"data:{entry.preview_type};base64,{base64.b64encode(entry.preview).decode()}"
    return {**entry.progress, "preview": preview}


def derived_order(studio: Studio, job_id: str, changes: dict[str, Any]) -> Order:
    """A new order with the settings of ``job_id`` changed by ``changes`` (its uploads named by id again)."""
    entry = studio.get(job_id)
    settings = {k: v for k, v in entry.parameters.items() if k not in ("device", "prompt")}  # uploads by id
    settings.update(changes)
    animation = entry.order.animation
    prompt = entry.parameters["prompt"] if animation is None else ""
    return plan_order(studio.root, prompt, entry.preset, settings, animation=animation, parent=job_id)


def continued(order: Order, parent: Order) -> Order:
    """``order`` in a folder of its own: a run continued from ``parent`` is not a fresh run of as many steps
    (a learning-rate schedule, for one, depends on the total), so it must not share that run's folder."""
    from pixgen.pipeline.runner import slugify

    key = hashlib.sha256(f"{order.job.key} continued from {parent.id}".encode()).hexdigest()[:10]
    job = order.job
    return replace(order, job=replace(job, key=key, folder=job.folder.with_name(f"{slugify(job.name, 40)}-{key}")))


def carry_state(parent: Order, order: Order) -> None:
    """Start ``order`` from the last state of ``parent`` (its state.pt copied into the new folder)."""
    from pixgen.pipeline.runner import STATE_NAME

    source = parent.job.folder / STATE_NAME
    if not source.is_file():
        raise Busy(f"job {parent.id} kept no state to continue from")
    if order.job.folder.exists():
        return  # queued before: it continues from what its folder holds
    order.job.folder.mkdir(parents=True)
    with atomic_path(order.job.folder / STATE_NAME) as temp:
        shutil.copyfile(source, temp)


def output_file(folder: Path, path: str) -> Path:
    """The job's output ``path`` (image, GIF, video, a frame), refused unless it is one and lies inside the folder."""
    parts = Path(path).parts
    allowed = path in FILE_NAMES or (len(parts) == 2 and parts[0] == "frames" and parts[1].endswith(".png")
                                     and parts[1].startswith(FRAME_PREFIXES))
    target = folder / path
    if not allowed or target.is_symlink() or not target.is_file() or target.resolve().parent not in (
            folder.resolve(), (folder / "frames").resolve()):
        raise HTTPException(404, f"no file {path!r} in this job")
    return target


def store_upload(root: Path, file: UploadFile) -> dict[str, Any]:
    """Check an uploaded image (size, type, pixels) and keep it in DIR/uploads under its content's hash."""
    from pixgen.pipeline.output import open_image

    uploads = Path(root) / UPLOADS_DIR
    uploads.mkdir(parents=True, exist_ok=True)
    held = sum(p.stat().st_size for p in uploads.iterdir() if p.is_file())
    if held >= MAX_UPLOADS_BYTES:
        raise HTTPException(507, f"the studio's uploads take {held / 2**30:.1f} GiB, its limit; delete old ones from "
                                 f"{UPLOADS_DIR}/ on the server")
    with tempfile.NamedTemporaryFile(dir=uploads, prefix=".incoming-", delete=False) as handle:
        temp = Path(handle.name)
        size = 0
        while block := file.file.read(1 << 20):
            size += len(block)
            if size > MAX_UPLOAD_BYTES:
                temp.unlink()
                raise HTTPException(413, f"the upload is over {MAX_UPLOAD_BYTES // 2**20} MiB")
            handle.write(block)
    try:
        try:
            with UPLOAD_DECODES, open_image(temp, "upload", max_pixels=UPLOAD_PIXELS) as image:
                fmt, width, height = image.format, image.width, image.height
        except InputError as err:
            raise HTTPException(415, " ".join(str(err).replace(str(temp), "the upload").split())) from None
        if fmt not in UPLOAD_FORMATS:
            raise HTTPException(415, f"uploads must be PNG, JPEG or WebP images, not {fmt}")
        digest = hashlib.sha256(temp.read_bytes()).hexdigest()[:16]
        name = f"upload-{digest}.{UPLOAD_FORMATS[fmt]}"
        temp.replace(uploads / name)
    finally:
        temp.unlink(missing_ok=True)
    return {"id": name, "width": width, "height": height, "bytes": size}


def _mount_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the swagger-ui-bundle package, so it works offline (no CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        import swagger_ui_bundle
    except ImportError:
        swagger = None
    else:
        swagger = Path(swagger_ui_bundle.swagger_ui_path)
        app.mount("/static-docs", StaticFiles(directory=swagger), name="static-docs")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if swagger is None:
            return HTMLResponse('<p>The schema is at <a href="/openapi.json">/openapi.json</a>.</p>')
        return get_swagger_ui_html(openapi_url="/openapi.json", title="pixgen studio API",
                                   swagger_js_url="/static-docs/swagger-ui-bundle.js",
                                   swagger_css_url="/static-docs/swagger-ui.css", swagger_favicon_url="/favicon.ico")
