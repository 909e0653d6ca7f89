"""A lean request handler for routes whose parameters are simple, with FastAPI's answers.

FastAPI's generic handler solves a dependency graph on every request (path, query, header
and cookie machinery, two exit stacks, telemetry hooks) even for an endpoint that takes an
id from the path and one JSON body.  For such a route (path parameters, at most one body
model, the `Request`, no dependencies, no response model) `lean_handler` does the same
steps directly, validating each value with FastAPI's own per-field function, in the same
order and with the same locations, so values, errors and error bodies are the ones the
generic handler gives (tests/unit/test_lean.py compares both on good and bad requests).
Any other route, or a FastAPI without the functions used here, keeps the generic handler.
"""

from __future__ import annotations

import email.message
import inspect
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, params
from fastapi._compat import ModelField
from fastapi.datastructures import DefaultPlaceholder
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware
from fastapi.routing import APIRoute, APIRouter
from fastapi.utils import is_body_allowed_for_status_code
from pydantic import ValidationError
from pydantic_core import PydanticUndefined as Undefined
from starlette._utils import get_route_path
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

try:  # FastAPI's own steps; a FastAPI without them keeps the generic handler
    from fastapi._body_limit import MAX_BODY_SIZE_SCOPE_KEY, get_body_limit_error
    from fastapi.dependencies.utils import (
        _get_param_aliases,
        _get_param_model,
        _validate_value_with_model_field,
    )
    from fastapi.routing import (
        _apply_router_form_limits,
        _effective_route_context_var,
        _extract_endpoint_context,
        _update_scope,
    )
    from fastapi.telemetry._api import _route_selected

    _FASTAPI_STEPS = True
except ImportError:  # pragma: no cover - depends on the installed FastAPI
    _FASTAPI_STEPS = False

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _is_json_media_type(content_type: str) -> bool:
    """FastAPI's test: application/json or application/*+json, parameters aside."""
    if content_type == "application/json":
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def _simple(route: APIRoute) -> bool:
    """True when the route's endpoint needs nothing the lean handler leaves out."""
    dependant = route.dependant
    call = dependant.call
    body_fields = dependant.body_params
    effective = _effective_route_context_var.get()
    return (
        call is not None
        and inspect.iscoroutinefunction(call)
        and not inspect.isasyncgenfunction(call)
        and (effective is None or effective.original_route is not route)
        and not dependant.dependencies
        and not dependant.query_params
        and not dependant.header_params
        and not dependant.cookie_params
        and not dependant.background_tasks_param_name
        and not dependant.response_param_name
        and not dependant.security_scopes_param_name
        and not dependant.http_connection_param_name
        and not dependant.websocket_param_name
        and route.response_field is None
        and route.stream_item_field is None
        and not route.is_json_stream
        and isinstance(route.response_class, DefaultPlaceholder)
        and getattr(route, "max_body_size", None) is None
        and not route._embed_body_fields
        and len(body_fields) <= 1
        and not any(isinstance(f.field_info, params.Form) for f in body_fields)
        and all(
            isinstance(f.field_info, params.Path) and _get_param_model(f) is None
            for f in dependant.path_params
        )
    )


def lean_handler(route: APIRoute) -> Handler | None:
    """The route's handler without the dependency machinery, or None when it needs it."""
    if not _FASTAPI_STEPS or not _simple(route):
        return None
    dependant = route.dependant
    call = dependant.call
    assert call is not None
    path_fields = [
        (field, alias, ("path", alias))
        for field in dependant.path_params
        for alias in (_get_param_aliases(field)[0][1],)
    ]
    body_field = route.body_field if dependant.body_params else None
    request_param = dependant.request_param_name
    status_code = route.status_code
    assert isinstance(route.response_class, DefaultPlaceholder)  # `_simple` checked it
    response_class = route.response_class.value
    strict_content_type = route.strict_content_type
    if isinstance(strict_content_type, DefaultPlaceholder):
        strict_content_type = strict_content_type.value
    validate = _validate_value_with_model_field

    def check(
        field: ModelField, value: Any, values: dict[str, Any], loc: tuple[str, ...]
    ) -> tuple[Any, list[Any]]:
        """FastAPI's validation of one value; its own function only for what it adds (a
        missing value's default or error, an invalid value's errors, located)."""
        adapter = getattr(field, "_type_adapter", None)
        if value is not Undefined and adapter is not None:
            try:
                return adapter.validate_python(value, from_attributes=True), []
            except ValidationError:
                pass  # validated again below, for the errors as FastAPI words them
        return validate(field=field, value=value, values=values, loc=loc)

    def endpoint_context(request: Request) -> Any:
        ctx = dict(_extract_endpoint_context(call))
        mount_path = request.scope.get("root_path", "").rstrip("/")
        ctx["path"] = f"{request.method} {mount_path}{dependant.path}"
        return ctx

    async def read_body(request: Request) -> Any:
        try:
            body_bytes = await request.body()
            if not body_bytes:
                return Undefined
            content_type = request.headers.get("content-type")
            if not content_type:
                return body_bytes if strict_content_type else json.loads(body_bytes)
            if _is_json_media_type(content_type):
                return json.loads(body_bytes)
            return body_bytes
        except json.JSONDecodeError as e:
            error = {
                "type": "json_invalid",
                "loc": ("body", e.pos),
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": e.msg},
            }
            raise RequestValidationError(
                [error], body=e.doc, endpoint_ctx=endpoint_context(request)
            ) from e
        except HTTPException:
            raise
        except Exception as e:
            if MAX_BODY_SIZE_SCOPE_KEY in request.scope and (
                limit_error := get_body_limit_error(e)
            ):
                raise limit_error from e
            raise HTTPException(400, "There was an error parsing the body") from e

    async def handle(request: Request) -> Response:
        body: Any = Undefined
        if body_field is not None:
            body = await read_body(request)
        values: dict[str, Any] = {}
        errors: list[Any] = []
        if path_fields:
            received = request.path_params
            for field, alias, loc in path_fields:
                value = received.get(alias)
                value, field_errors = check(
                    field, Undefined if value is None else value, values, loc
                )
                if field_errors:
                    errors.extend(field_errors)
                else:
                    values[field.name] = value
        if body_field is not None:
            value, field_errors = check(body_field, body, values, ("body",))
            values[body_field.name] = value
            errors.extend(field_errors)
        if request_param:
            values[request_param] = request
        if errors:
            raise RequestValidationError(
                errors,
                body=None if body is Undefined else body,
                endpoint_ctx=endpoint_context(request),
            )
        raw = await call(**values)
        if isinstance(raw, Response):
            return raw
        # what the generic handler does with a plain value and no response model
        args = {} if status_code is None else {"status_code": status_code}
        response: Response = response_class(jsonable_encoder(raw), **args)
        if not is_body_allowed_for_status_code(response.status_code):
            response.body = b""
        return response

    return handle


def lean_app(handler: Handler) -> ASGIApp:
    """`fastapi.routing.request_response` without the dependencies' exit stacks (a lean
    route has no dependency to close) and without its own exception wrapper: what the
    route raises is answered by the app's `ExceptionMiddleware`, with the same handlers."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await handler(Request(scope, receive, send))
        await response(scope, receive, send)

    return app


def _first_segment(route: BaseRoute) -> str | None:
    """The literal first path segment a plain route needs, or None when it may match any."""
    if type(route) is not Route and not isinstance(route, APIRoute):
        return None  # mounts, hosts, included routers, websockets: checked for every path
    segment = route.path_format[1:].split("/", 1)[0]
    return None if "{" in segment else segment


class LeanRouter(APIRouter):
    """APIRouter whose lookup asks only the routes that can match the path's first segment.

    The routes keep their order and their own `matches`, so the one chosen is the one the
    full scan chooses; when none of them matches fully, the full scan runs and answers as
    it always does (405, 404).  Installed on an app's router by `lean_router`.
    """

    _index_key: tuple[int, int] | None = None
    _by_segment: dict[str, list[BaseRoute]]
    _any_segment: list[BaseRoute]

    def _candidates(self, path: str) -> list[BaseRoute]:
        key = (self._routes_version, len(self.routes))
        if key != self._index_key:
            keyed = [(_first_segment(route), route) for route in self.routes]
            segments = {segment for segment, _ in keyed if segment is not None}
            self._by_segment = {
                segment: [r for s, r in keyed if s is None or s == segment] for segment in segments
            }
            self._any_segment = [r for s, r in keyed if s is None]
            self._index_key = key
        return self._by_segment.get(path[1:].split("/", 1)[0], self._any_segment)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            _apply_router_form_limits(scope, self.form_limits)
            if "router" not in scope:
                scope["router"] = self
            for route in self._candidates(get_route_path(scope)):
                match, child_scope = route.matches(scope)
                if match == Match.FULL:
                    _update_scope(scope, child_scope)
                    _route_selected(
                        scope=scope,
                        path=getattr(route, "path_format", None),
                        mount=isinstance(route, Mount),
                    )
                    await route.handle(scope, receive, send)
                    return
        await super().app(scope, receive, send)


def lean_router(app: FastAPI) -> None:
    """Make `app`'s router a `LeanRouter` (same state, only the lookup differs)."""
    router = app.router
    if _FASTAPI_STEPS and type(router) is APIRouter and router.middleware_stack == router.app:
        router.__class__ = LeanRouter
        router.middleware_stack = router.app


def without_exit_stack(app: FastAPI, route_class: type[APIRoute]) -> None:
    """Leave FastAPI's `AsyncExitStackMiddleware` out of `app`'s middleware stack: only the
    generic handler uses its stack (to close uploaded files), so a `route_class` route that
    runs the generic handler brings its own (`exit_stack_for_generic`), and a lean one none.
    An app with any other kind of route (an included router, a mount) keeps the stack."""
    build = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        stack = build()
        if not all(isinstance(r, route_class) or type(r) is Route for r in app.router.routes):
            return stack
        layer: Any = stack
        while (inner := getattr(layer, "app", None)) is not None:
            if isinstance(inner, AsyncExitStackMiddleware):
                layer.app = inner.app
                break
            layer = inner
        return stack

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]


def exit_stack_for_generic(route_app: ASGIApp) -> ASGIApp:
    """A generic route's app inside the exit stack `without_exit_stack` took out of the app."""
    return AsyncExitStackMiddleware(route_app)
