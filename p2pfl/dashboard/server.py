"""The dashboard's web server: one page, its static files, and the runs as JSON and server-sent events.

Owns the HTTP surface (Starlette on uvicorn): `GET /` (the page), `GET /static/...` (the page's
script, style and the vendored Apache ECharts, from a fixed list: no path from the request
reaches the file system), `GET /api/runs` (every run's snapshot) and `GET /api/events` (server-sent
events: a snapshot of every run, then the rows appended since, as the run directories grow). It
watches the run directories through `dashboard.runs` (a look every `poll_s`; the browser is
pushed to, it never polls).

Safety (docs/dashboard.md): read-only (GET and HEAD only: no endpoint starts, stops or changes
anything); binds 127.0.0.1 unless `host` says otherwise; a Host header that is not a name this
server was bound as is refused (DNS rebinding: a page of another site resolving its name to
127.0.0.1 cannot read the metrics); a strict Content-Security-Policy (scripts only from this
server, no inline script, no eval, connections only to this server, no framing).

Must not write to run directories or start anything but the server; must not import torch, zmq
or the node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from p2pfl.dashboard.listen import bind, is_loopback, url_of
from p2pfl.dashboard.runs import Run

__all__ = ["Dashboard", "create_app", "is_loopback", "static_text"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
POLL_S = 0.5  # how often the run directories are looked at (a stat per file when nothing changed)
CLOSE_CHECK_S = 0.25  # how soon an event stream notices the server is stopping
KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies and the browser from closing an idle stream
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}
#: The only files served under /static/ (name -> (package path, media type)).
STATIC_FILES = {
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "app.css": ("app.css", "text/css; charset=utf-8"),
    "vendor/echarts.min.js": ("vendor/echarts/echarts.min.js", "text/javascript; charset=utf-8"),
}


def static_text(name: str) -> str:
    """A file of the page (index.html, app.js, app.css, vendor/echarts/...), from the package."""
    return resources.files("p2pfl.dashboard").joinpath("static", *name.split("/")).read_text(encoding="utf-8")


def allowed_hosts(host: str) -> list[str]:
    """Host header names accepted: the loopback names, and the bound host; any for a wildcard bind
    (the user asked with --host for every interface; docs say what that exposes)."""
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    names = list(LOOPBACK_NAMES)
    if host not in names:
        names.append(host)
    return names


class Watcher:
    """Looks at the run directories every `poll_s` and wakes the event streams when something changed."""

    def __init__(self, runs: Sequence[Run], poll_s: float = POLL_S) -> None:
        self.runs = list(runs)
        self.poll_s = poll_s
        self.changed = asyncio.Event()
        self.generation = 0
        self.closing = threading.Event()  # set by `Dashboard.stop`, from another thread
        self._lock = threading.Lock()  # refresh runs in a worker thread; snapshots must not see half a refresh

    def refresh(self) -> bool:
        with self._lock:
            before = [(len(r.rows), r.version, r.status, len(r.messages), len(r.edges)) for r in self.runs]
            for run in self.runs:
                run.refresh()
            after = [(len(r.rows), r.version, r.status, len(r.messages), len(r.edges)) for r in self.runs]
        return before != after

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                changed = await asyncio.to_thread(self.refresh)
            except Exception:  # a reader bug must not end the updates of every run: say it, look again later
                log.exception("dashboard: reading the run directories failed")
                continue
            if changed:
                self.generation += 1
                self.changed.set()
                self.changed = asyncio.Event()

    def snapshot(self, i: int) -> dict[str, Any]:
        with self._lock:
            return self.runs[i].snapshot()

    def update(self, i: int, cursor: tuple[Any, ...]) -> tuple[str, dict[str, Any], tuple[Any, ...]] | None:
        """What a stream at `cursor` has not seen of run i: (event, data, new cursor), or None."""
        with self._lock:
            run = self.runs[i]
            now = self.cursor(i)
            if now == cursor:
                return None
            if run.version != cursor[0]:
                return "snapshot", {"run": i, **run.snapshot()}, now
            facts = run.facts()
            if len(run.edges) == cursor[2]:
                facts.pop("nodes")
                facts.pop("edges")
            return "rows", {"run": i, "rows": run.rows[cursor[1]:], **facts}, now

    def cursor(self, i: int) -> tuple[Any, ...]:
        run = self.runs[i]
        return run.version, len(run.rows), len(run.edges), run.status, tuple(run.messages)


class SecurityHeaders:
    """ASGI middleware: the security headers on every response (a plain ASGI wrapper, which unlike
    Starlette's BaseHTTPMiddleware passes an event stream through untouched)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + self.headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    # json.dumps escapes no newline raw: one data line per event
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), allow_nan=False)}\n\n".encode()


def create_app(runs: Sequence[Run], *, host: str = DEFAULT_HOST, poll_s: float = POLL_S) -> Starlette:
    """The dashboard of `runs` as an ASGI app (read-only; see the module docstring)."""
    watcher = Watcher(runs, poll_s)
    page = static_text("index.html")
    statics = {name: (static_text(path), media) for name, (path, media) in STATIC_FILES.items()}

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in statics:
            return PlainTextResponse("not found", status_code=404)
        text, media = statics[name]
        return Response(text, media_type=media)

    async def api_runs(request: Request) -> Response:
        return JSONResponse([watcher.snapshot(i) for i in range(len(watcher.runs))],
                            headers={"Cache-Control": "no-store"})

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            cursors = []
            for i in range(len(watcher.runs)):
                with watcher._lock:
                    snap, cursor = watcher.runs[i].snapshot(), watcher.cursor(i)
                cursors.append(cursor)
                yield _sse("snapshot", {"run": i, **snap})
            yield _sse("ready", {"runs": len(watcher.runs)})
            quiet, seen = 0.0, watcher.generation
            while not watcher.closing.is_set():  # the server is stopping: end the stream, cleanly
                # A change while this stream was sending counts (generation), not only one it waits for.
                if watcher.generation == seen:
                    try:
                        await asyncio.wait_for(watcher.changed.wait(), timeout=CLOSE_CHECK_S)
                    except asyncio.TimeoutError:
                        quiet += CLOSE_CHECK_S
                        if quiet >= KEEPALIVE_S:
                            quiet = 0.0
                            yield b": keep-alive\n\n"
                        continue
                quiet, seen = 0.0, watcher.generation
                if await request.is_disconnected():
                    return
                for i in range(len(watcher.runs)):
                    out = watcher.update(i, cursors[i])
                    if out is not None:
                        kind, data, cursors[i] = out
                        yield _sse(kind, data)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(watcher.run())
        try:
            yield
        finally:
            task.cancel()

    routes = [Route("/", index, methods=["GET"]), Route("/static/{name:path}", static, methods=["GET"]),
              Route("/api/runs", api_runs, methods=["GET"]), Route("/api/events", events, methods=["GET"])]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(host)),
                  Middleware(SecurityHeaders)]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.watcher = watcher
    return app


class Dashboard:
    """A dashboard server on its own thread (`simulate --dashboard`), served until Ctrl-C (`wait_for_interrupt`)."""

    def __init__(self, runs: Sequence[Run], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 poll_s: float = POLL_S, sock: socket.socket | None = None) -> None:
        import uvicorn  # imported here: reading run directories (runs.py, htmlreport) does not need it

        self.sock = bind(host, port) if sock is None else sock  # `sock`: bound by whoever started us
        self.url = url_of(self.sock)
        app = create_app(runs, host=host, poll_s=poll_s)
        self.watcher: Watcher = app.state.watcher
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                        name="p2pfl-dashboard", daemon=True)
        self._thread.start()

    def wait_for_interrupt(self, parent: int | None = None) -> None:
        """Serve (already started) until Ctrl-C or SIGTERM (or, given `parent`, until that process is
        gone: `simulate --dashboard`'s launcher), then stop; call from the main thread."""
        stop = threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                if parent is not None and os.getppid() != parent:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.stop()

    def stop(self) -> None:
        self.watcher.closing.set()  # open event streams end, so the shutdown is graceful
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sock.close()
