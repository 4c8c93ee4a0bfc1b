"""The gateway's HTTP/1.1 server and its routing table.

``serve_http(handler, host, port)`` runs the server (see :mod:`gateway.http.server`);
a :class:`Router` is a handler that dispatches on method and path (see
:mod:`gateway.http.router`).
"""

from gateway.http.router import RouteHandler, Router, RouterError
from gateway.http.server import (
    CONTINUE_RESPONSE,
    Handler,
    HttpConnection,
    HttpLimits,
    LimitsError,
    LocalProtocolError,
    Phase,
    ProtocolError,
    RemoteProtocolError,
    Request,
    Response,
    error_response,
    render_response,
    serve_http,
)

__all__ = [
    "CONTINUE_RESPONSE",
    "Handler",
    "HttpConnection",
    "HttpLimits",
    "LimitsError",
    "LocalProtocolError",
    "Phase",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "Response",
    "RouteHandler",
    "Router",
    "RouterError",
    "error_response",
    "render_response",
    "serve_http",
]
