"""The dashboard's web app (Starlette): the page, its live feed, the metrics and two actions.

Routes:

- ``GET /``: the page (``page.html``), with this process's CSRF token in it.
- ``GET /events``: Server-Sent Events, one ``data:`` line of JSON per poll
  (``poller.Poller``: one poll of Redis for all viewers).
- ``GET /api/state``: the latest snapshot as JSON.
- ``GET /metrics``: Prometheus text format (``metrics.render``).
- ``POST /api/downloads/{id}/cancel`` and ``.../resume``: ``actions``.

Safe by default.  Bound to a loopback address, the app answers only
requests whose ``Host`` names a loopback host (no DNS rebinding).  Actions
are POST only and carry the page's CSRF token in ``X-CSRF-Token`` (a page
of another origin can neither read it nor send that header without a
CORS preflight, which is never granted); an ``Origin`` or
``Sec-Fetch-Site`` naming another origin is refused as well.  With a
``token`` (required off loopback) actions also need
``Authorization: Bearer TOKEN``.  Every error is a short plain-text 4xx
or 5xx, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from rangefetch import DownloadError, OutputExistsError, QueueError, Settings, StateError, UsageError
from rangefetch.distributed.connections import open_redis
from rangefetch.distributed.store import Store
from rangefetch.errors import RangefetchError

from . import metrics
from .actions import ResumeRefused, cancel_download, resume_download
from .command import is_loopback
from .poller import POLL_INTERVAL, Poller
from .snapshot import read_snapshot

__all__ = ["LOOPBACK_HOSTS", "create_app"]

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
KEEPALIVE = 15.0  # seconds between SSE comments on a quiet feed
_DOWNLOAD_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def create_app(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    token: str | None = None,
    redis: Redis | None = None,
    interval: float = POLL_INTERVAL,
) -> Starlette:
    """The dashboard app for ``settings.redis_url`` (or ``redis``, which the caller then owns).

    ``host`` is the address it is served on: a loopback one limits the
    accepted ``Host`` headers to loopback names.  ``token``, if given,
    guards the actions.
    """
    csrf = secrets.token_urlsafe(32)
    state: dict[str, Any] = {}

    async def read() -> dict[str, Any]:
        return await read_snapshot(state["store"], slot_limit=settings.distributed.per_host_connections)

    poller = Poller(read, interval=interval)
    page = _page(csrf, token_required=token is not None)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        own = redis is None
        client = await open_redis(settings, patient=True) if redis is None else redis
        state["redis"], state["store"] = client, Store(client)
        try:
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(poller.run())
                try:
                    yield
                finally:
                    task.cancel()
        finally:
            if own:
                await client.aclose()

    async def index(request: Request) -> Response:
        nonce = secrets.token_urlsafe(16)
        return HTMLResponse(page.replace("{{NONCE}}", nonce), headers={**_NO_STORE, **_page_headers(nonce)})

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            yield f"retry: {round(max(1.0, interval * 4) * 1000)}\n\n"
            seen = -1
            while not poller.closed:
                if poller.version != seen:
                    seen = poller.version
                    yield f"data: {poller.latest_json}\n\n"
                else:
                    yield ": keepalive\n\n"
                await poller.changed(seen, timeout=KEEPALIVE)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={**_NO_STORE, "X-Accel-Buffering": "no"}
        )

    async def api_state(request: Request) -> Response:
        return Response(poller.latest_json, media_type="application/json", headers=_NO_STORE)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(poller), media_type=metrics.CONTENT_TYPE)

    def action(
        run: Callable[[Store, Redis, Settings, str], Awaitable[Any]], done: Callable[[str, Any], str]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            _check_action(request, csrf=csrf, token=token)
            did = request.path_params["did"]
            if not _DOWNLOAD_ID.fullmatch(did):
                raise HTTPException(400, "malformed download id")
            try:
                result = await run(state["store"], state["redis"], settings, did)
            except (StateError, ResumeRefused, OutputExistsError) as exc:
                raise HTTPException(409, str(exc)) from exc
            except UsageError as exc:  # "no download ..."
                raise HTTPException(404, str(exc)) from exc
            except QueueError as exc:
                raise HTTPException(503, str(exc)) from exc
            except DownloadError as exc:  # the probe failed: the server's fault, not the request's
                raise HTTPException(502, str(exc)) from exc
            except RangefetchError as exc:
                raise HTTPException(400, str(exc)) from exc
            message = done(did, result)
            log.info("%s", message)
            await poller.poll_once()  # every page sees the change now, not at the next tick
            return JSONResponse({"ok": True, "message": message})

        return endpoint

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/events", events, methods=["GET"]),
        Route("/api/state", api_state, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route(
            "/api/downloads/{did}/cancel",
            action(cancel_download, lambda did, n: f"cancelled {did}: {n} queued jobs removed"),
            methods=["POST"],
        ),
        Route(
            "/api/downloads/{did}/resume",
            action(resume_download, lambda did, r: f"resumed {did}: {r.added} jobs enqueued ({r.state.value})"),
            methods=["POST"],
        ),
    ]
    allowed = [*LOOPBACK_HOSTS, host] if is_loopback(host) else ["*"]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed)],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.poller = poller
    app.state.csrf = csrf
    return app


def _check_action(request: Request, *, csrf: str, token: str | None) -> None:
    """Refuse an action without the token (when one is set), the CSRF token, or from another origin.

    Raises:
        HTTPException: 401 without the right token, 403 for a cross-site request.
    """
    if token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "this dashboard needs its token for actions (Authorization: Bearer TOKEN)")
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(403, "cross-site request refused")
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        raise HTTPException(403, "cross-origin request refused")
    if not secrets.compare_digest(request.headers.get("x-csrf-token", "").encode(), csrf.encode()):
        raise HTTPException(403, "missing or wrong CSRF token (X-CSRF-Token); reload the page")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    if exc.status_code == 405:
        headers = {"Allow": "POST" if request.url.path.startswith("/api/downloads/") else "GET"}
    return PlainTextResponse(f"{exc.detail}\n", status_code=exc.status_code, headers=headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("dashboard request %s failed: %s", request.url.path, type(exc).__name__)
    return PlainTextResponse("internal error\n", status_code=500)


def _page(csrf: str, *, token_required: bool) -> str:
    text = files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    return text.replace("{{CSRF}}", html.escape(csrf)).replace("{{TOKEN}}", "1" if token_required else "0")


def _page_headers(nonce: str) -> dict[str, str]:
    """The page loads nothing from elsewhere, runs only its own script, and is never framed (no clickjacking)."""
    policy = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


_NO_STORE = {"Cache-Control": "no-store"}
