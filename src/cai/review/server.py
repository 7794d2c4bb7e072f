"""The review page as a Starlette app (`create_app`); the CLI serves it with uvicorn (`cai review serve`).

Every request must name the bound address in its Host header (no DNS rebinding) and carry the access token, as
the `X-CAI-Token` header or, for reading the page, `?token=` (no token: 401; a wrong one: 403). A request that
changes something (POST) must send the token in that header, which a cross-site form cannot set. Answers forbid
framing, caching and referrers, and the page's Content-Security-Policy runs only its own script; model and prompt
text reaches the page only as JSON and is put in with textContent. The only thing the app writes is a decision.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from cai.errors import CaiError
from cai.review.session import ReviewSession

TOKEN_HEADER = "x-cai-token"
ASSETS = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-store", "X-Frame-Options": "DENY"}
READS = ("GET", "HEAD")


def new_token() -> str:
    """A fresh access token."""
    return secrets.token_urlsafe(24)


def allowed_hosts(host: str, port: int) -> set[str] | None:
    """The Host headers a server bound to `host`:`port` answers: the loopback names for a loopback address, the
    address itself otherwise; None (any) for a wildcard address, where the token alone keeps others out."""
    if host in ("0.0.0.0", "::", ""):
        return None
    names = {host, "127.0.0.1", "localhost", "[::1]"} if host in ("127.0.0.1", "localhost", "::1") else {host}
    return {f"{f'[{n}]' if ':' in n and not n.startswith('[') else n}:{port}" for n in names}


def _refuse(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=HEADERS)


class Guard(BaseHTTPMiddleware):
    """The Host, token and custom-header rules of the module docstring, before any route."""

    def __init__(self, app: Any, token: str, hosts: Iterable[str] | None) -> None:
        super().__init__(app)
        self.token = token
        self.hosts = None if hosts is None else {h.lower() for h in hosts}

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        host = request.headers.get("host", "").lower()
        if self.hosts is not None and host not in self.hosts:
            return _refuse(403, "this server answers only at its own address (the Host header differs)")
        header = request.headers.get(TOKEN_HEADER)
        given = header if header is not None else request.query_params.get("token")
        if not given:
            return _refuse(401, "the access token is missing (open the URL that `cai review serve` printed)")
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            return _refuse(403, "wrong access token")
        if request.method not in READS and header is None:
            return _refuse(403, f"a change needs the {TOKEN_HEADER} header")
        response = await call_next(request)
        for k, v in HEADERS.items():
            response.headers.setdefault(k, v)
        return response


def _asset(name: str) -> str:
    return resources.files("cai.review").joinpath("assets", name).read_text(encoding="utf-8")


def create_app(session: ReviewSession, token: str, hosts: Iterable[str] | None) -> Starlette:
    """The review page over `session`: `/` (the page), `/assets/…`, `/api/queue`, `/api/record/{n}` and
    `POST /api/decision`; `token` and `hosts` (see `allowed_hosts`) guard every request."""

    async def page(request: Request) -> Response:
        html = _asset("review.html").replace("{{token}}", token)  # URL-safe characters only: nothing to escape
        return HTMLResponse(html)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return _refuse(404, "no such file")
        return Response(_asset(name), media_type=ASSETS[name])

    def queue(request: Request) -> Response:
        return JSONResponse({"reviewer": session.reviewer, "total": len(session), "start": session.start(),
                             "progress": session.progress()})

    def record(request: Request) -> Response:
        try:
            return JSONResponse({**session.record(int(request.path_params["n"])), "progress": session.progress()})
        except CaiError as e:
            return _refuse(404, str(e))

    async def decide(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _refuse(400, "the body is not JSON")
        try:
            mine = await _in_thread(session.save, body)
        except CaiError as e:
            return _refuse(400, str(e))
        return JSONResponse({"mine": mine, "progress": session.progress()})

    routes = [Route("/", page), Route("/assets/{name}", asset), Route("/api/queue", queue),
              Route("/api/record/{n:int}", record), Route("/api/decision", decide, methods=["POST"])]
    return Starlette(routes=routes, middleware=[Middleware(Guard, token=token, hosts=hosts)])


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a worker thread (a save waits for the disk; the server keeps answering)."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)
