"""What every service's HTTP surface shares: errors, body limits, admin auth, exports.

Routes stay thin: they parse and call the domain; a domain refusal is a `DomainError`
subclass that declares its `code` and `status`, and the one handler `install_errors` adds
answers it.  Every error body is `{"error": <code>, "detail": <message>, ...}`.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.settings import Settings


class FieldProblem(BaseModel):
    field: str
    message: str


class ErrorOut(BaseModel):
    """Every error body: a code, a sentence, and for validation errors the fields at fault."""

    model_config = ConfigDict(extra="allow")

    error: str
    detail: str
    fields: list[FieldProblem] | None = None


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for a route's errors, plus those any route can answer (400, 413, 422)."""
    out: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorOut, "description": "undecodable body"},
        413: {"model": ErrorOut, "description": "body too large"},
        422: {"model": ErrorOut, "description": "invalid request"},
    }
    for status in statuses:
        out[status] = {"model": ErrorOut, "description": "error"}
    return out


class DomainError(Exception):
    """A refusal answered as `status` with `{"error": code, "detail": message, **extra}`.

    Subclasses declare `code` and `status` as class attributes; a subclass that declares
    neither answers its parent's, so a new error is never a 500.  An instance may override
    both (the order service's notification refusals carry their code per instance).
    """

    code: str = "refused"
    status: int = 400
    # seconds a client should wait before retrying, sent as Retry-After
    retry_after_s: int | None = None

    def __init__(
        self, detail: str, *, code: str | None = None, status: int | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}


class AdminUnauthorized(DomainError):
    code = "unauthorized"
    status = 401


def _validation_body(exc: RequestValidationError) -> dict[str, Any]:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        problems.append({"field": ".".join(loc) or "body", "message": err.get("msg", "")})
    fields = ", ".join(p["field"] for p in problems)
    return {"error": "invalid_request", "detail": f"invalid field(s): {fields}", "fields": problems}


class BodyLimit:
    """Pure ASGI guard: refuse bodies over `limit` bytes with 413 before the route runs."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_json(send, 413, self._too_large())
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _send_json(send, 413, self._too_large())

    def _too_large(self) -> dict[str, Any]:
        return {"error": "body_too_large", "detail": f"request body over {self.limit} bytes"}


class _BodyTooLarge(Exception):
    pass


async def _send_json(send: Send, status: int, body: Mapping[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def install_errors(app: FastAPI) -> None:
    """The JSON error handlers `base_app` installs: domain refusals, invalid requests, the rest."""

    # Starlette finds this handler for every subclass by walking the exception's MRO
    @app.exception_handler(DomainError)
    async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
        headers = None if exc.retry_after_s is None else {"Retry-After": str(exc.retry_after_s)}
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_validation_body(exc), status_code=422)

    # framework errors (undecodable body, unknown route, wrong method) in the same shape
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_ERROR_CODES.get(exc.status_code, "http_error")
        body = {"error": code, "detail": str(exc.detail)}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


_HTTP_ERROR_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


def admin_guard(settings: Settings) -> Callable[[Request], Awaitable[None]]:
    """A dependency that refuses (401) requests without the stack's bearer token."""

    async def require_admin(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token, settings.admin_token):
            raise AdminUnauthorized(
                "admin endpoints need 'Authorization: Bearer <token>' from stack.json"
            )

    return require_admin


def ndjson(records: Iterable[Mapping[str, Any]]) -> Response:
    """The audit export format: one JSON object per line, each with a "type"."""
    body = "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in records)
    return Response(body, media_type="application/x-ndjson")
