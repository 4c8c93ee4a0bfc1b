"""The REST toolkit of every ``/v1/crm/...`` route (members, points, settings, staff,
lotteries, approvals): body decoding with the field named, JSON answers, path ids, query
parameters, and :func:`guarded`, the one place that turns errors into SPEC's error shape
``{"error": {"code", "message"[, "field"]}}``.

REST plumbing only: the errors it maps live in :mod:`crm_lite.errors` (and ``gateway``'s),
and no domain module imports this one.

What :func:`guarded` answers, error by error (bad input is never a 500):

- :class:`~gateway.api.ApiError`: its status, code and headers;
- :class:`~crm_lite.errors.Forbidden`: 403 ``forbidden`` ("...: ask an owner or manager");
- any other :class:`~crm_lite.errors.CrmError` (``InvalidInput``, ``CsvFileError``,
  ``NotFound``, ``Conflict``...): its ``status`` and ``code``, with its ``field``;
- :class:`~gateway.errors.StoreUnavailable`: 503 ``database_unavailable``, ``Retry-After: 5``;
- :class:`~gateway.errors.StoreConflict`: 409 ``conflict``, naming the constraint;
- any other :class:`~gateway.errors.StoreError`: 503 ``storage_error``, ``Retry-After: 5``.

The two 503s are the HTTP API's own (:mod:`gateway.api`), so a client retries CRM calls and
send requests alike.
"""

from __future__ import annotations

import functools
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import msgspec

from gateway.api import ApiError, decode_body
from gateway.errors import StoreConflict, StoreError, StoreUnavailable
from gateway.http import Request, Response, Router

from .errors import CrmError, Forbidden
from .staff import Staff

log = logging.getLogger(__name__)

T = TypeVar("T")
Authenticate = Callable[[Request], Awaitable[Staff]]
"""Turns a request into the acting staff member, or raises a 401 :class:`ApiError`."""
Handler = Callable[..., Awaitable[Response]]
"""``handler(request, actor, **path_params) -> Response``."""

MAX_ID = 2**62
"""Path ids and query integers stay below this (PostgreSQL ``bigint`` with room to spare)."""
RETRY_AFTER_S = 5
"""Seconds a 503 asks the client to wait before retrying."""

_encoder = msgspec.json.Encoder()
_INT_RE = re.compile(r"-?[0-9]{1,19}")
"""ASCII digits only: ``str.isdigit`` also takes ``²``, which ``int()`` refuses."""


def decode(body: bytes, type_: type[T]) -> T:
    """``body`` as ``type_``; raises a 400 :class:`ApiError` naming the offending field."""
    return decode_body(body, type_)


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(status=status, body=_encoder.encode(obj))


def _whole_number(raw: str, low: int, high: int) -> int | None:
    """``raw`` as an integer in ``[low, high]``, or ``None``."""
    if not _INT_RE.fullmatch(raw):
        return None
    value = int(raw)
    return value if low <= value <= high else None


def path_id(value: str, what: str, *, code: str = "not_found") -> int:
    """A positive integer path segment naming a ``what``; anything else is a 404 ``code``
    (no such resource), since no resource has that id."""
    found = _whole_number(value, 1, MAX_ID - 1)
    if found is None:
        raise ApiError(404, code, f"no {what} {value!r}")
    return found


def query_str(request: Request, name: str) -> str | None:
    """The last value of query parameter ``name``, or ``None``."""
    values = urllib.parse.parse_qs(request.query, keep_blank_values=True).get(name)
    return values[-1] if values else None


def query_int(request: Request, name: str, default: int, *, low: int = 0, high: int = MAX_ID) -> int:
    """Query parameter ``name`` as an integer from ``low`` to ``high`` (``default`` when absent
    or empty); anything else is a 400 naming it."""
    raw = query_str(request, name)
    if raw is None or raw == "":
        return default
    found = _whole_number(raw, low, high)
    if found is None:
        raise ApiError(400, "invalid_field", f"query parameter {name} must be a whole number from {low} to {high}",
                       field=name)
    return found


def guarded(authenticate: Authenticate, handler: Handler, *, route: str | None = None) -> Handler:
    """A route handler that authenticates the caller, runs ``handler(request, actor, **params)``
    and answers every error kind in SPEC's shape (see the module's table). ``route`` names the
    route in log lines (default: the handler's qualified name)."""
    label = route or getattr(handler, "__qualname__", repr(handler))

    @functools.wraps(handler)
    async def guarded_route(request: Request, **params: str) -> Response:
        try:
            actor = await authenticate(request)
            return await handler(request, actor, **params)
        except ApiError as exc:
            return exc.response()
        except Forbidden as exc:
            return ApiError(exc.status, exc.code, f"{exc.message}: ask an owner or manager").response()
        except CrmError as exc:
            return ApiError(exc.status, exc.code, exc.message, field=exc.field).response()
        except StoreUnavailable as exc:
            log.warning("database unavailable route=%s error=%s", label, exc)
            return ApiError(503, "database_unavailable", "the database is unreachable; retry later",
                            headers=[("Retry-After", str(RETRY_AFTER_S))]).response()
        except StoreConflict as exc:  # input that clashes with what is stored, caught by a constraint
            return ApiError(409, "conflict", "the request clashes with stored data"
                            f" ({exc.constraint or 'a constraint'})").response()
        except StoreError as exc:
            log.error("store error route=%s error=%s", label, exc)
            return ApiError(503, "storage_error", "the store failed; retry later",
                            headers=[("Retry-After", str(RETRY_AFTER_S))]).response()

    return guarded_route


def add_routes(router: Router, authenticate: Authenticate, routes: Iterable[tuple[str, str, Handler]]) -> None:
    """Add each ``(method, pattern, handler)`` to ``router``, :func:`guarded`."""
    for method, pattern, handler in routes:
        router.add(method, pattern, guarded(authenticate, handler, route=f"{method} {pattern}"))
