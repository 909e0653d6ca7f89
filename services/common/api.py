"""What every service's HTTP surface shares: errors, routes, admin auth, exports.

Routes stay thin: they parse and call the domain; a domain refusal is a `DomainError`
subclass that declares its `code` and `status`, and the one handler `install_errors` adds
answers it.  Every error body is `{"error": <code>, "detail": <message>, ...}` and quotes
at most a short prefix of what the caller sent (`services.common.limits.quote`).
Every route is a `ServiceRoute`: an admin route checks its bearer token before the body
is read, so an anonymous caller learns nothing about the body's schema.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection

from services.common.lean import exit_stack_for_generic, lean_app, lean_handler
from services.common.limits import QUOTE_CHARS
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
    """OpenAPI entries for a route's errors, plus those any route can answer."""
    out: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorOut, "description": "undecodable body"},
        413: {"model": ErrorOut, "description": "body too large"},
        414: {"model": ErrorOut, "description": "request target too long"},
        422: {"model": ErrorOut, "description": "invalid request"},
        431: {"model": ErrorOut, "description": "request header fields too large"},
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


NOT_JSON = "body is not valid JSON"
# a field path or message longer than this was written by the caller (an unknown key)
_MESSAGE_CHARS = 200


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _validation_body(exc: RequestValidationError) -> dict[str, Any]:
    problems = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            # the decoder's byte offset is no field, and its message may quote the input
            problems.append({"field": "body", "message": NOT_JSON})
            continue
        loc = [_clip(str(p), QUOTE_CHARS) for p in err.get("loc", ()) if p not in ("body",)]
        message = _clip(str(err.get("msg", "")), _MESSAGE_CHARS)
        problems.append({"field": ".".join(loc) or "body", "message": message})
    if problems and all(p["message"] == NOT_JSON for p in problems):
        return {"error": "invalid_request", "detail": NOT_JSON, "fields": problems[:1]}
    fields = _clip(", ".join(p["field"] for p in problems), _MESSAGE_CHARS)
    return {"error": "invalid_request", "detail": f"invalid field(s): {fields}", "fields": problems}


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


_HTTP_ERROR_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


class AdminBearer(HTTPBearer):
    """The admin routes' bearer token: an OpenAPI security scheme, checked by `ServiceRoute`
    before the body is read (and again as an ordinary dependency)."""

    def __init__(self, token: str) -> None:
        super().__init__(
            scheme_name="adminToken",
            description="the stack's admin_token (stack.json)",
            auto_error=False,
        )
        self._token = token.encode()

    def check(self, request: HTTPConnection) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self._token):
            raise AdminUnauthorized(
                "admin endpoints need 'Authorization: Bearer <token>' from stack.json"
            )

    async def __call__(self, request: HTTPConnection) -> None:
        self.check(request)


def admin_guard(settings: Settings) -> AdminBearer:
    """The dependency admin routes declare: 401 without the stack's bearer token."""
    return AdminBearer(settings.admin_token)


class ServiceRoute(APIRoute):
    """Every route `base_app` builds: admin token first, then the body.

    FastAPI reads and parses the body before it runs any dependency, so an admin route's
    `AdminBearer` is checked here first; and a body that is not UTF-8 stays the contract's
    400 `bad_request` but says so instead of "There was an error parsing the body".
    A route with simple parameters (the journey's) runs `services.common.lean`'s handler,
    which answers what FastAPI's generic one does at a fraction of its cost.
    """

    # tests switch it off to compare the lean handler's answers with the generic one's
    lean = True
    _lean: Callable[[Request], Coroutine[Any, Any, Response]] | None = None

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if self._lean is not None:
            self.app = lean_app(self.get_route_handler())
        else:
            self.app = exit_stack_for_generic(self.app)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        self._lean = lean_handler(self) if self.lean else None
        handler = self._lean or super().get_route_handler()
        guards = [d.dependency for d in self.dependencies if isinstance(d.dependency, AdminBearer)]
        if not guards and self.body_field is None:
            return handler  # no token to check, no body for the framework to decode

        async def route(request: Request) -> Response:
            for guard in guards:
                guard.check(request)
            try:
                return await handler(request)
            except StarletteHTTPException as exc:
                if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
                    raise StarletteHTTPException(400, f"{NOT_JSON} (not UTF-8)") from None
                raise

        return route


def ndjson(records: Iterable[Mapping[str, Any]]) -> Response:
    """The audit export format: one JSON object per line, each with a "type"."""
    body = "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in records)
    return Response(body, media_type="application/x-ndjson")
