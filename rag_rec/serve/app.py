"""The HTTP API: bundles, copy, a streaming chat assistant, ingestion, health, metrics and the chat page."""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, HTTPException, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag_rec.errors import IndexStoreError, LLMOutputError, MissingExtraError, RagRecError, StorageError
from rag_rec.schemas import (
    BundleRequest,
    BundleResponse,
    ChatRequest,
    CopyRequest,
    CopyResponse,
    EventsIn,
    ItemOut,
    ProductsIn,
    UpsertResult,
)
from rag_rec.serve.chat import Answer, ChatPolicy, text_chunks
from rag_rec.serve.limits import ConcurrencyLimiter, RateLimiter
from rag_rec.serve.metrics import ServeMetrics
from rag_rec.serve.models import (
    ChatClarifyEvent,
    ChatDoneEvent,
    ChatTextEvent,
    ErrorOut,
    FieldIssue,
    HealthOut,
)
from rag_rec.service import BundleService
from rag_rec.settings import ServeSettings, Settings
from rag_rec.slots import ComputeSlots

log = logging.getLogger("rag_rec.serve")

STATIC_DIR = Path(__file__).parent / "static"
GUARDED_PREFIX = "/v1/"
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
}
ERROR_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
               422: "validation_error", 429: "rate_limited", 500: "internal_error", 502: "bad_gateway",
               503: "service_unavailable"}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {400: "Malformed JSON", 401: "Missing or invalid X-API-Key", 404: "Unknown product id",
                    415: "A body that is not JSON (Content-Type other than application/json)",
                    413: "Request body larger than the limit", 422: "Invalid fields (named in detail)",
                    429: "Rate limit exceeded (see Retry-After)", 503: "Overloaded or a backend is unavailable"}
    return {code: {"model": ErrorOut, "description": descriptions.get(code, ERROR_CODES[code])} for code in codes}


READ_ERRORS = _errors(400, 413, 422, 429, 503)
WRITE_ERRORS = _errors(400, 401, 413, 415, 422, 429, 503)
BODY_ERRORS = _errors(400, 413, 415, 422, 429, 503)  # endpoints that take a JSON body


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds {limit} bytes")


def _error_response(status: int, detail: Any, request_id: str | None, headers: dict[str, str] | None = None,
                    error: str | None = None) -> JSONResponse:
    body = ErrorOut(error=error or ERROR_CODES.get(status, "error"), detail=detail, request_id=request_id)
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)


def _request_id(scope: Scope) -> str | None:
    return scope.get("rag_rec.request_id")


class GuardMiddleware:
    """Request ids, metrics, body-size limit (413), per-client rate limit (429) and load shedding (503).

    Rate limits and shedding apply to /v1/* only, so probes and metrics keep answering under load.
    """

    def __init__(self, app: ASGIApp, *, settings: ServeSettings, metrics: ServeMetrics, router_app: FastAPI):
        self.app, self.settings, self.metrics, self.router_app = app, settings, metrics, router_app
        self.rate = RateLimiter(settings.rate_limit_per_minute)
        self.concurrency = ConcurrencyLimiter(settings.max_concurrency)

    def _route(self, scope: Scope) -> str:
        for route in self.router_app.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "other")
        return "unmatched"

    def _client_key(self, scope: Scope) -> str:
        headers = dict(scope.get("headers") or [])
        key = headers.get(b"x-api-key", b"").decode("latin-1")
        for index, valid in enumerate(self.settings.api_keys):
            if key and secrets.compare_digest(key.encode(), valid.encode()):  # str compare_digest refuses non-ASCII
                return f"key:{index}"
        client = scope.get("client")
        return f"ip:{client[0] if client else 'unknown'}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        incoming_id = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming_id if REQUEST_ID.match(incoming_id) else uuid.uuid4().hex[:16]
        scope["rag_rec.request_id"] = request_id
        route, method, path = self._route(scope), scope["method"], scope["path"]
        state: dict[str, Any] = {"status": 500, "started": False, "too_large": False}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
                response_headers = MutableHeaders(scope=message)
                response_headers["X-Request-ID"] = request_id
                response_headers.setdefault("X-Content-Type-Options", "nosniff")
            await send(message)

        async def reject(status: int, detail: str, reason: str, extra: dict[str, str] | None = None) -> None:
            self.metrics.rejected.labels(reason=reason).inc()
            code = "overloaded" if reason == "overloaded" else None  # not service_unavailable: a failing backend
            await _error_response(status, detail, request_id, extra, code)(scope, receive, send_with_headers)

        limit = self.settings.max_body_bytes
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    state["too_large"] = True
                    raise BodyTooLarge(limit)
            return message

        admitted = False
        try:
            declared = headers.get(b"content-length", b"").decode("latin-1")
            if declared.isdigit() and int(declared) > limit:
                await reject(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes", "too_large")
                return
            content_type = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            if (path.startswith(GUARDED_PREFIX) and method in ("POST", "PUT", "PATCH") and content_type
                    and content_type != "application/json" and not content_type.endswith("+json")):
                await reject(415, f"send the body as JSON with Content-Type: application/json (got {content_type})",
                             "unsupported_media_type")
                return
            if path.startswith(GUARDED_PREFIX):
                wait = self.rate.acquire(self._client_key(scope))
                if wait is not None:
                    retry_after = str(max(1, math.ceil(wait)))
                    await reject(429, f"rate limit of {self.settings.rate_limit_per_minute} requests per minute "
                                      f"exceeded; retry after {retry_after} s", "rate_limited",
                                 {"Retry-After": retry_after})
                    return
                if not self.concurrency.try_enter():
                    await reject(503, f"server busy: {self.settings.max_concurrency} requests already in flight",
                                 "overloaded", {"Retry-After": "1"})
                    return
                admitted = True
                self.metrics.in_flight.inc()
            await self.app(scope, limited_receive, send_with_headers)
        except BodyTooLarge as exc:
            if state["started"]:
                raise
            state["too_large"] = False
            await reject(413, exc.detail, "too_large")
        except Exception as exc:
            log.exception("request %s to %s failed", request_id, path)
            if state["started"]:
                raise
            status, code, detail = _service_error(exc)
            await _error_response(status, detail, request_id, error=code)(scope, receive, send_with_headers)
        finally:
            if state.get("too_large"):  # answered 413 by the app's HTTPException handler
                self.metrics.rejected.labels(reason="too_large").inc()
            if admitted:
                self.concurrency.leave()
                self.metrics.in_flight.dec()
            self.metrics.observe(route, method, state["status"], time.perf_counter() - started_at)


API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="Required by the write endpoints (/v1/events, /v1/products)")


def require_api_key(request: Request, key: Annotated[str | None, Security(API_KEY_HEADER)] = None) -> str:
    """The caller's API key, or 401 when it is missing or not one of settings.serve.api_keys."""
    if not key:
        raise HTTPException(401, "missing X-API-Key header", headers={"WWW-Authenticate": "ApiKey"})
    valid_keys: list[str] = request.app.state.settings.api_keys
    if not any(secrets.compare_digest(key.encode(), valid.encode()) for valid in valid_keys):
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "ApiKey"})
    return key


def _sse(event: str, data: BaseModel | dict[str, Any]) -> bytes:
    payload = data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data, ensure_ascii=False)
    return f"event: {event}\ndata: {payload}\n\n".encode()


def _service_error(exc: Exception) -> tuple[int, str, str]:
    """(status, code, detail) for an exception raised by the service."""
    if isinstance(exc, (IndexStoreError, MissingExtraError, StorageError)):
        return 503, "service_unavailable", str(exc)
    if isinstance(exc, LLMOutputError):
        return 502, "bad_gateway", str(exc)
    if isinstance(exc, RagRecError):
        return 500, "internal_error", str(exc)
    return 500, "internal_error", "unexpected server error; the request id is in the server log"


SSE_DOC = {
    200: {
        "description": (
            "Server-Sent Events (text/event-stream). Events, each `data` a JSON object:\n"
            "- `message`: {\"text\": ...} a chunk of the assistant's reply (concatenate them)\n"
            "- `bundles`: a BundleResponse\n"
            "- `clarify`: {\"question\": ..., \"missing\": \"need\"|\"budget\"} when the need is too vague\n"
            "- `error`: an ErrorOut\n"
            "- `done`: {\"request_id\": ..., \"latency_ms\": ...}, always last"
        ),
        "content": {"text/event-stream": {"schema": {
            "type": "object",
            "description": "One Server-Sent Event; `data` is a JSON document",
            "required": ["event", "data"],
            "properties": {
                "event": {"type": "string", "enum": ["message", "bundles", "clarify", "error", "done"]},
                "data": {"type": "string", "contentMediaType": "application/json"},
            },
        }}},
    },
    **BODY_ERRORS,
}


def create_app(service: BundleService, settings: ServeSettings | Settings) -> FastAPI:
    """The API over any BundleService (the service is synchronous; its calls run in a threadpool)."""
    serve = settings.serve if isinstance(settings, Settings) else settings
    metrics = ServeMetrics()
    policy = ChatPolicy()
    slots = ComputeSlots(serve.compute_threads)
    # threads of their own (one per admitted request), so requests queued for a slot never hold the threads that
    # health checks and product lookups use
    slot_threads = anyio.CapacityLimiter(max(serve.max_concurrency, 1))

    async def compute(fn, *args, response: Response | None = None):
        """fn(*args) on a thread once a compute slot is free; the wait goes to Server-Timing (`slot`)."""
        value, queued = await anyio.to_thread.run_sync(partial(slots.run, fn, *args), limiter=slot_threads)
        metrics.slot_wait.observe(queued)
        if response is not None:
            response.headers["Server-Timing"] = f"slot;dur={queued * 1000:.1f}"
        return value

    app = FastAPI(
        title="rag_rec bundle API",
        version="1",
        summary="Complementary product bundles with reasons, grounded in retrieved products.",
        description="Errors are JSON `{\"error\": code, \"detail\": ..., \"request_id\": ...}`. "
                    "Write endpoints need the `X-API-Key` header. Every response carries `X-Request-ID`.",
        responses={500: {"model": ErrorOut, "description": "Unexpected server error"}},
    )
    app.state.service, app.state.settings, app.state.metrics, app.state.policy = service, serve, metrics, policy
    app.add_middleware(GuardMiddleware, settings=serve, metrics=metrics, router_app=app)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        rid = _request_id(request.scope)
        bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            where = bad_json["loc"][-1] if bad_json.get("loc") else "?"
            reason = (bad_json.get("ctx") or {}).get("error", "invalid JSON")
            return _error_response(400, f"request body is not valid JSON: {reason} at character {where}", rid,
                                   error="malformed_json")
        issues = [FieldIssue(field=".".join(str(part) for part in e.get("loc", ())), message=e.get("msg", ""),
                             type=e.get("type", "")) for e in errors]
        return _error_response(422, [issue.model_dump() for issue in issues], rid)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(exc.status_code, exc.detail, _request_id(request.scope), dict(exc.headers or {}))

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", response_model=HealthOut, summary="Liveness and readiness",
             responses={503: {"model": HealthOut, "description": "The service reports an error"}}, tags=["ops"])
    async def healthz() -> Any:
        try:
            info = await run_in_threadpool(service.health)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            log.warning("health check failed: %s", exc)
            return JSONResponse(HealthOut(status="unavailable", service={"error": str(exc)}).model_dump(),
                                status_code=503)
        return HealthOut(status="ok", service=jsonable_encoder(info or {}))

    @app.get("/metrics", summary="Prometheus metrics", tags=["ops"],
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post("/v1/bundles", response_model=BundleResponse, summary="Recommend complementary bundles",
              description="Bundles for a user, anchor items and/or a need in words. Unknown ids are reported in "
                          "`notes`, never as errors. `produced_by` says which path composed the answer.",
              responses=BODY_ERRORS, tags=["bundles"])
    async def bundles(request: BundleRequest, http: Response) -> BundleResponse:
        response = await compute(service.recommend, request, response=http)
        metrics.composed("bundles", response.produced_by)
        return response

    @app.post("/v1/copy", response_model=CopyResponse, summary="Write a title and blurb for a bundle",
              description="Products whose catalogue title is only a placeholder are refused (422 naming "
                          "`body.items.N`). `notes` say why a template was served instead of LLM copy.",
              responses={**BODY_ERRORS, **_errors(404)}, tags=["bundles"])
    async def copy(request: Request, body: CopyRequest) -> CopyResponse:
        try:
            response = await compute(service.copy, body)
        except KeyError as exc:
            detail = exc.args[0] if exc.args else "unknown product id"
            return _error_response(404, str(detail), _request_id(request.scope), error="unknown_product")
        except ValidationError as exc:  # products the catalogue cannot describe: reported like the body's fields
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
        metrics.composed("copy", response.produced_by)
        return response

    @app.post("/v1/chat", summary="Chat with the shopping assistant (Server-Sent Events)",
              description="Send the whole conversation; the reply streams as `message` chunks, then `bundles` "
                          "(or a `clarify` question when the need is too vague), then `done`.",
              response_class=StreamingResponse, responses=SSE_DOC, tags=["chat"])
    async def chat(request: Request, body: ChatRequest) -> StreamingResponse:
        request_id = _request_id(request.scope) or uuid.uuid4().hex[:16]

        async def events() -> AsyncIterator[bytes]:
            started = time.perf_counter()
            try:
                plan = await compute(policy.plan, body, service.product)
                if isinstance(plan, Answer):
                    yield _sse("message", ChatTextEvent(text=policy.preamble(plan)))
                    response = await compute(service.recommend, plan.request)
                    metrics.composed("chat", response.produced_by)
                    for chunk in text_chunks(policy.reply(plan, response)):
                        yield _sse("message", ChatTextEvent(text=chunk))
                    yield _sse("bundles", response)
                else:
                    yield _sse("clarify", ChatClarifyEvent(question=plan.question, missing=plan.missing))
            except Exception as exc:
                _, code, detail = _service_error(exc)
                metrics.stream_errors.labels(endpoint="chat", error=code).inc()  # the response said 200 already
                log.exception("chat %s failed", request_id)
                yield _sse("error", ErrorOut(error=code, detail=detail, request_id=request_id))
            yield _sse("done", ChatDoneEvent(request_id=request_id,
                                             latency_ms=round((time.perf_counter() - started) * 1000, 1)))

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/events", response_model=UpsertResult, summary="Record interactions (incremental CF update)",
              responses=WRITE_ERRORS, tags=["ingest"], dependencies=[Security(require_api_key)])
    async def events(request: Request, body: EventsIn) -> UpsertResult:
        try:
            return await compute(service.add_events, body)
        except KeyError as exc:  # nothing of the batch was stored: the caller fixes the named rows and resends
            detail = exc.args[0] if exc.args else "unknown product id"
            return _error_response(422, str(detail), _request_id(request.scope), error="unknown_product")

    @app.post("/v1/products", response_model=UpsertResult, summary="Upsert products into catalogue and index",
              responses=WRITE_ERRORS, tags=["ingest"], dependencies=[Security(require_api_key)])
    async def products(body: ProductsIn) -> UpsertResult:
        return await compute(service.add_products, body)

    @app.get("/v1/products/search", response_model=list[ItemOut], summary="Text search over the catalogue",
             responses=READ_ERRORS, tags=["catalogue"])
    async def search(q: Annotated[str, Query(min_length=1, max_length=200, description="Search text")],
                     k: Annotated[int, Query(ge=1, le=50)] = 10) -> list[ItemOut]:
        return await compute(service.search_products, q, k)

    @app.get("/v1/products/{item_id:path}", response_model=ItemOut, summary="One product by id (may hold '/')",
             responses={**READ_ERRORS, **_errors(404)}, tags=["catalogue"])
    async def product(request: Request,
                      item_id: Annotated[str, PathParam(min_length=1, max_length=128)]) -> Any:
        item = await compute(service.product, item_id)
        if item is None:
            return _error_response(404, f"unknown product id {item_id!r}", _request_id(request.scope),
                                   error="unknown_product")
        return item

    return app


def uvicorn_config(app, serve: ServeSettings, **overrides):
    """The uvicorn configuration of the API (keep-alive from settings, proxy headers, graceful shutdown); every
    server of the app — `rag-rec serve` and the test servers — is built from it."""
    from rag_rec.errors import require

    uvicorn = require("uvicorn", "serve")
    options = {"host": serve.host, "port": serve.port, "proxy_headers": True,
               "forwarded_allow_ips": serve.forwarded_allow_ips,
               "timeout_keep_alive": serve.keep_alive_s, "timeout_graceful_shutdown": 10, **overrides}
    return uvicorn.Config(app, **options)


def serve_main(settings: Settings | ServeSettings, service: BundleService, *, log_level: str = "info") -> None:
    """Run the API with uvicorn on settings.serve.host:port until interrupted."""
    from rag_rec.errors import require

    uvicorn = require("uvicorn", "serve")
    serve = settings.serve if isinstance(settings, Settings) else settings
    app = create_app(service, serve)
    log.info("serving on http://%s:%d", serve.host, serve.port)
    uvicorn.Server(uvicorn_config(app, serve, log_level=log_level)).run()
