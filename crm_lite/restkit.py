"""Small helpers shared by the lottery and approval REST routes: body decoding with the field
named, JSON answers, and one place that turns domain errors into SPEC's error shape.

Every route handler is wrapped by :func:`guarded`: :class:`~gateway.api.ApiError` becomes its
response, :class:`~crm_lite.staff.Forbidden` a 403 ``forbidden``, an unreachable database a
503, a constraint violation a 409 ``conflict``, and a :class:`DomainError` the status and code
it carries. Bad input never answers 500.
"""

from __future__ import annotations

import functools
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from gateway.api import ApiError
from gateway.errors import GatewayError, StoreConflict, StoreUnavailable
from gateway.http import Request, Response

from .staff import Forbidden, Staff

log = logging.getLogger(__name__)

T = TypeVar("T")
Authenticate = Callable[[Request], Awaitable[Staff]]

_encoder = msgspec.json.Encoder()
_FIELD_RE = re.compile(r"`\$\.([^`\[]+)")
_MISSING_RE = re.compile(r"(?:missing required field|unknown field) `([^`]+)`")
MAX_ID = 2**62


class DomainError(GatewayError):
    """A request the domain refuses: carries the HTTP status and the SPEC error code."""

    status = 409
    code = "conflict"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class NotFound(DomainError):
    status = 404
    code = "not_found"


def decode(body: bytes, type_: type[T]) -> T:
    """``body`` as ``type_``; raises a 400 :class:`ApiError` naming the offending field."""
    if not body:
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = _MISSING_RE.search(text) or _FIELD_RE.search(text)
        raise ApiError(400, "invalid_field", text, field=m.group(1) if m else None) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"malformed JSON: {exc}") from None


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(status=status, body=_encoder.encode(obj))


def path_id(value: str, name: str = "id") -> int:
    """A positive integer path segment; anything else is a 404 (no such resource)."""
    if not value.isdigit() or not 0 < int(value) < MAX_ID:
        raise ApiError(404, "not_found", f"no such {name}: {value!r}")
    return int(value)


def query_str(request: Request, name: str) -> str | None:
    """The last value of query parameter ``name``, or ``None``."""
    values = urllib.parse.parse_qs(request.query, keep_blank_values=True).get(name)
    return values[-1] if values else None


def query_int(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = query_str(request, name)
    if raw is None or raw == "":
        return default
    if not raw.lstrip("-").isdigit() or not low <= int(raw) <= high:
        raise ApiError(400, "invalid_field", f"{name} must be an integer from {low} to {high}", field=name)
    return int(raw)


def guarded(authenticate: Authenticate,
            handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """A route handler that authenticates the caller and maps errors to SPEC responses.
    ``handler(request, actor, **params)``."""

    @functools.wraps(handler)
    async def route(request: Request, **params: str) -> Response:
        try:
            actor = await authenticate(request)
            return await handler(request, actor, **params)
        except ApiError as exc:
            return exc.response()
        except Forbidden as exc:
            return ApiError(403, "forbidden", str(exc)).response()
        except DomainError as exc:
            return ApiError(exc.status, exc.code, str(exc)).response()
        except StoreConflict as exc:  # input that clashes with what is stored, caught by a constraint
            return ApiError(409, "conflict", f"the request clashes with stored data ({exc.constraint or exc})").response()
        except StoreUnavailable as exc:
            log.warning("crm request failed: database unavailable path=%s error=%s", request.path, exc)
            return ApiError(503, "unavailable", "the database is unreachable; try again").response()

    return route
