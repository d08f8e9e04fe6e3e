"""What stands between the network and the studio: token, host and origin checks, body limits, page headers.

- With a token (any ``--host`` but loopback), every request but the page shell and its static
  files must carry it: the ``pixgen_token`` cookie (set by ``?token=`` on any URL or by
  ``POST /api/v1/login``), or ``Authorization: Bearer``. Otherwise 401.
- Bound to loopback, the ``Host`` header must name loopback: a web page elsewhere cannot reach
  the studio by pointing a DNS name at 127.0.0.1 (DNS rebinding).
- A request that changes something and says where it comes from (``Origin``) must come from
  the studio's own page.
- Request bodies are limited (uploads more than the rest); past the limit, 413.
- Every answer forbids framing and sniffing; the page may load only its own scripts and styles.
"""

from __future__ import annotations

import hmac
import json
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

COOKIE = "pixgen_token"
MAX_UPLOAD_BYTES = 16 * 2**20  # one uploaded image
MAX_BODY_BYTES = 5 * 2**20  # any other request (a batch manifest is at most 4 MiB)
OPEN_PATHS = ("/", "/favicon.ico", "/api/v1/login")
OPEN_PREFIXES = ("/static/",)
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
DOCS_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
               "script-src 'self' 'unsafe-inline'; frame-ancestors 'none'")


class Guard:
    """ASGI middleware around the studio app (see the module's docstring)."""

    def __init__(self, app, *, token: str | None, allowed_hosts: tuple[str, ...] | None, secure_cookie: bool = False):
        self.app, self.token, self.allowed_hosts, self.secure = app, token, allowed_hosts, secure_cookie

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path, method = scope["path"], scope["method"]
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _hostname(host) not in self.allowed_hosts:
            return await _refuse(send, 421, f"this studio answers only to {', '.join(self.allowed_hosts)}")
        origin = headers.get("origin")
        if method not in ("GET", "HEAD", "OPTIONS") and origin and urlsplit(origin).netloc != host:
            return await _refuse(send, 403, "requests from other web sites are refused")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        set_cookie = None
        if self.token is not None:
            given = _given_token(headers, query)
            if path == "/api/v1/login" and method == "POST":
                return await self._login(receive, send)
            if query.get("token") and self._valid(query["token"][0]):
                set_cookie = self.token
            elif not (path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or self._valid(given)):
                return await _refuse(send, 401, "this studio needs its token: open the URL pixgen serve printed, "
                                                "or send Authorization: Bearer <token>")
        elif path == "/api/v1/login":
            return await _answer(send, 200, {"detail": "this studio needs no token"})
        limit = MAX_UPLOAD_BYTES + 2**16 if path == "/api/v1/uploads" else MAX_BODY_BYTES
        if int(headers.get("content-length") or 0) > limit:
            return await _refuse(send, 413, f"the request body is over {limit // 2**20} MiB")
        received, refused = 0, False
        too_large = f"the request body is over {limit // 2**20} MiB"

        async def limited_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # a chunked body (no Content-Length) past the limit: answer 413 here, then
                refused = True    # tell the app the client left, and drop whatever it answers
                await _refuse(send, 413, too_large)
                return {"type": "http.disconnect"}
            return message

        policy = DOCS_POLICY if path == "/docs" else PAGE_POLICY

        async def send_with_headers(message):
            if refused:
                return
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                         (b"referrer-policy", b"no-referrer"), (b"content-security-policy", policy.encode())]
                if set_cookie is not None:
                    extra.append((b"set-cookie", _cookie(set_cookie, self.secure)))
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except Exception:
            if not refused:
                raise

    def _valid(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    async def _login(self, receive, send):
        body, more = b"", True
        while more and len(body) <= 4096:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            given = json.loads(body or b"{}").get("token")
        except (ValueError, AttributeError):
            given = None
        if not isinstance(given, str) or not self._valid(given):
            return await _refuse(send, 401, "wrong token")
        return await _answer(send, 200, {"detail": "signed in"}, [(b"set-cookie", _cookie(self.token, self.secure))])


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _given_token(headers: dict[str, str], query: dict[str, list[str]]) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed cookie header is no token
        return None
    return cookie[COOKIE].value if COOKIE in cookie else None


def _cookie(token: str, secure: bool) -> bytes:
    """The session cookie; ``secure`` (the studio is reached over https) keeps it off plain http."""
    return f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{'; Secure' if secure else ''}".encode()


async def _refuse(send, status: int, detail: str) -> None:
    await _answer(send, status, {"detail": detail})


async def _answer(send, status: int, body: dict, headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
        (b"x-content-type-options", b"nosniff"), *(headers or [])]})
    await send({"type": "http.response.body", "body": data})
