"""A small routing table: method and path pattern to handler (SPEC "HTTP API").

Patterns are absolute paths made of ``/``-separated segments; a segment written ``{name}``
captures one non-empty path segment and is passed to the handler as a keyword argument::

    router = Router()
    router.add("GET", "/v1/messages/{id}", get_message)   # async def get_message(request, *, id)
    await serve_http(router, "127.0.0.1", 8080)

Exact static paths are found by one dict lookup; patterns with captures are tried in the order
they were added. An unknown path answers 404 ``not_found``; a known path asked with another
method answers 405 ``method_not_allowed`` with an ``Allow`` header (RFC 9110 section 15.5.6).
A ``HEAD`` request is served by the ``GET`` handler when no ``HEAD`` handler is registered
(RFC 9110 section 9.3.2; the server drops the content).
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Awaitable, Callable

from gateway.errors import GatewayError
from gateway.http.server import Request, Response, error_response

__all__ = ["RouteHandler", "Router", "RouterError"]

RouteHandler = Callable[..., Awaitable[Response]]
"""``async def handler(request: Request, **params: str) -> Response``."""

_METHOD_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Z]+")
_CAPTURE_RE = re.compile(r"\{([^{}]*)\}")


class RouterError(GatewayError):
    """A route cannot be added: bad pattern, bad method, or already taken."""


class _Route:
    """The handlers of one pattern shape, by method."""

    __slots__ = ("literals", "names", "positions", "methods", "pattern")

    def __init__(self, pattern: str, segments: list[str]) -> None:
        self.pattern = pattern
        # None where the segment is a capture
        self.literals: tuple[str | None, ...] = tuple(None if _CAPTURE_RE.fullmatch(seg) else seg for seg in segments)
        self.positions: tuple[int, ...] = tuple(i for i, lit in enumerate(self.literals) if lit is None)
        self.names: tuple[str, ...] = tuple(_CAPTURE_RE.fullmatch(segments[i]).group(1) for i in self.positions)  # type: ignore[union-attr]
        self.methods: dict[str, RouteHandler] = {}

    def match(self, segments: list[str]) -> dict[str, str] | None:
        for seg, lit in zip(segments, self.literals, strict=True):
            if lit is None:
                if not seg:
                    return None
            elif seg != lit:
                return None
        return {name: segments[i] for name, i in zip(self.names, self.positions, strict=True)}


def _allow_value(methods: set[str]) -> str:
    if "GET" in methods:
        methods = methods | {"HEAD"}
    return ", ".join(sorted(methods))


class Router:
    """A :data:`~gateway.http.server.Handler` that dispatches by method and path."""

    __slots__ = ("_dynamic", "_shapes", "_static")

    def __init__(self) -> None:
        self._static: dict[str, dict[str, RouteHandler]] = {}
        self._dynamic: dict[int, list[_Route]] = {}  # by segment count
        self._shapes: dict[str, _Route] = {}  # "/v1/messages/{}" -> route

    def add(self, method: str, pattern: str, handler: RouteHandler) -> None:
        """Route ``method`` requests for paths matching ``pattern`` to ``handler``."""
        if not isinstance(method, str) or not _METHOD_RE.fullmatch(method):
            raise RouterError(f"invalid method {method!r} (upper-case token expected)")
        if not isinstance(pattern, str) or not pattern.startswith("/"):
            raise RouterError(f"route pattern {pattern!r} must start with '/'")
        if not callable(handler):
            raise RouterError(f"handler for {method} {pattern} is not callable")
        segments = pattern.split("/")
        names: list[str] = []
        shape: list[str] = []
        for seg in segments:
            capture = _CAPTURE_RE.fullmatch(seg)
            if capture is not None:
                name = capture.group(1)
                if not name.isidentifier() or keyword.iskeyword(name) or name == "request":
                    raise RouterError(f"route pattern {pattern!r}: bad capture name {name!r}")
                if name in names:
                    raise RouterError(f"route pattern {pattern!r}: capture {name!r} repeated")
                names.append(name)
                shape.append("{}")
            elif "{" in seg or "}" in seg:
                raise RouterError(f"route pattern {pattern!r}: a capture must be a whole segment")
            else:
                shape.append(seg)
        if not names:
            methods = self._static.setdefault(pattern, {})
            if method in methods:
                raise RouterError(f"route {method} {pattern} added twice")
            methods[method] = handler
            return
        key = "/".join(shape)
        route = self._shapes.get(key)
        if route is None:
            route = _Route(pattern, segments)
            self._shapes[key] = route
            self._dynamic.setdefault(len(segments), []).append(route)
        elif route.names != tuple(names):
            raise RouterError(f"route pattern {pattern!r} conflicts with {route.pattern!r}: capture names differ")
        if method in route.methods:
            raise RouterError(f"route {method} {pattern} added twice")
        route.methods[method] = handler

    async def __call__(self, request: Request) -> Response:
        path = request.path
        method = request.method
        static = self._static.get(path)
        if static is not None:
            handler = static.get(method)
            if handler is None and method == "HEAD":
                handler = static.get("GET")
            if handler is not None:
                return await handler(request)
        routes = self._dynamic.get(path.count("/") + 1)
        allowed: set[str] | None = None
        if routes is not None:
            segments = path.split("/")
            for route in routes:
                params = route.match(segments)
                if params is None:
                    continue
                methods = route.methods
                handler = methods.get(method)
                if handler is None and method == "HEAD":
                    handler = methods.get("GET")
                if handler is not None:
                    return await handler(request, **params)
                if allowed is None:
                    allowed = set()
                allowed.update(methods)
        if static is not None:
            if allowed is None:
                allowed = set()
            allowed.update(static)
        if allowed is not None:
            allow = _allow_value(allowed)
            return error_response(
                405,
                "method_not_allowed",
                f"method {method} not allowed here; allowed: {allow}",
                headers=[("Allow", allow)],
            )
        return error_response(404, "not_found", "no such resource")
