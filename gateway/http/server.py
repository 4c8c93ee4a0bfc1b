"""The gateway's HTTP/1.1 server: a sans-IO connection around llhttp and a thin Trio driver.

Message syntax and connection management follow RFC 9112 (HTTP/1.1); status codes, ``Expect``
and ``HEAD`` follow RFC 9110. Parsing is done by llhttp through ``httptools``; this module
adds what a server needs around it:

* :class:`HttpConnection` -- no sockets, no clock: bytes in through
  :meth:`HttpConnection.receive_data`, complete requests out of :attr:`HttpConnection.requests`,
  a :class:`RemoteProtocolError` in :attr:`HttpConnection.failure` when the peer misbehaved.
  Limits on header and body size are enforced here.
* :func:`render_response` -- a :class:`Response` to the bytes of one HTTP/1.1 response.
* :func:`serve_http` -- the Trio service: one task per connection, requests answered in order
  (pipelining), deadlines for headers, bodies and idle keep-alive, a cap on connections.
"""

from __future__ import annotations

import enum
import errno
import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

import httptools
import msgspec
import trio

from gateway.errors import ConfigError, GatewayError

__all__ = [
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
    "error_response",
    "open_http_listeners",
    "render_response",
    "serve_http",
]

logger = logging.getLogger(__name__)

#: Bytes asked of the socket per read. Also bounds how many pipelined requests one read can
#: queue, since nothing more is read before the queue has been answered.
READ_SIZE = 65_536
#: Pause before accepting again when the process is out of file descriptors or memory.
ACCEPT_RETRY_DELAY = 0.1
#: accept() failures that mean "out of resources, try again later" rather than a broken listener.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: How often connection deadlines are checked; timeouts fire up to this much late.
TIMER_TICK = 1.0
#: Bound on the final error response or 408 sent before a connection is dropped.
ERROR_SEND_TIMEOUT = 5.0

SERVER_NAME = "smsgw"

# --------------------------------------------------------------------------- public types


class ProtocolError(GatewayError):
    """Something broke the HTTP/1.1 message rules (RFC 9112)."""


class LocalProtocolError(ProtocolError):
    """We were about to misbehave: a handler's response cannot be sent as it is."""


class RemoteProtocolError(ProtocolError):
    """The peer misbehaved; ``status`` and ``code`` say how the server answers before closing."""

    def __init__(self, message: str, *, status: HTTPStatus, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class LimitsError(ConfigError, ValueError):
    """An :class:`HttpLimits` value is out of range (names the field)."""


class Request(msgspec.Struct):
    """One complete request as handed to a handler (RFC 9112 section 3, 6)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    remote: str


class Response(msgspec.Struct):
    """What a handler answers; the server adds Content-Length, Date, Server and Connection."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = []


Handler = Callable[[Request], Awaitable[Response]]


class HttpLimits(msgspec.Struct, frozen=True):
    """Per-server limits. Durations are seconds.

    ``header_timeout`` bounds a new connection's wait for its first request and the time from
    a request's first byte to the end of its headers; ``body_timeout`` bounds the time from the
    end of the headers to the end of the body; ``keepalive_timeout`` bounds the idle time
    between requests on a kept-alive connection.
    """

    max_body: int = 1_048_576
    max_header_bytes: int = 16_384
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    max_connections: int = 10_000

    def __post_init__(self) -> None:
        for name in ("max_body", "max_header_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise LimitsError(f"http limit {name} must be at least 1")
        for name in ("header_timeout", "body_timeout", "keepalive_timeout"):
            if not getattr(self, name) > 0:
                raise LimitsError(f"http limit {name} must be a positive number of seconds")


_ERROR_ENCODER = msgspec.json.Encoder()


def error_response(status: int, code: str, message: str, *, headers: list[tuple[str, str]] | None = None) -> Response:
    """The API's error shape (SPEC "HTTP API"): ``{"error": {"code": ..., "message": ...}}``."""
    body = _ERROR_ENCODER.encode({"error": {"code": code, "message": message}})
    return Response(status=status, body=body, headers=headers if headers is not None else [])


# --------------------------------------------------------------------------- response bytes

_CRLF = b"\r\n"
_SERVER_LINE = b"Server: " + SERVER_NAME.encode("ascii") + _CRLF
_CLOSE_LINE = b"Connection: close\r\n"
_KEEP_ALIVE_LINE = b"Connection: keep-alive\r\n"
#: RFC 9112 section 9.2 / RFC 9110 section 10.1.1: the interim answer to ``Expect: 100-continue``.
CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: RFC 9110 sections 15.3.5 and 15.4.5: no content, hence no Content-Length, for these.
_NO_CONTENT_STATUSES = frozenset({204, 304})
#: Header names a handler may not set: the server owns message framing (RFC 9112 section 6).
_RESERVED_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "content-type", "date", "server"})
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _status_line(status: int) -> bytes:
    if not isinstance(status, int):
        raise LocalProtocolError(f"response status {status!r} is not an integer")
    if not 200 <= status <= 599:
        raise LocalProtocolError(f"response status {status} is not a final status (200-599)")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii"))


_STATUS_LINES: dict[int, bytes] = {int(s): _status_line(int(s)) for s in HTTPStatus if 200 <= s <= 599}


def _header_line(name: str, value: str) -> bytes:
    """One ``name: value`` line, refusing anything that could split the message (RFC 9110 5.5)."""
    if not isinstance(name, str) or not _TOKEN_RE.fullmatch(name):
        raise LocalProtocolError(f"invalid response header name {name!r}")
    if not isinstance(value, str) or _BAD_VALUE_RE.search(value):
        raise LocalProtocolError(f"invalid value for response header {name}")
    try:
        return b"%s: %s\r\n" % (name.encode("ascii"), value.strip(" \t").encode("latin-1"))
    except UnicodeEncodeError:
        raise LocalProtocolError(f"response header {name} is not Latin-1") from None


_CONTENT_TYPE_LINES: dict[str, bytes] = {
    ct: _header_line("Content-Type", ct)
    for ct in (
        "application/json",
        "text/plain; charset=utf-8",
        "text/html; charset=utf-8",
        "text/plain; version=0.0.4; charset=utf-8",
    )
}


def render_response(
    response: Response,
    date_line: bytes,
    *,
    head: bool = False,
    keep_alive: bool = True,
    http10: bool = False,
) -> bytes:
    """The bytes of one response (RFC 9112 sections 4-6) in a single buffer.

    ``date_line`` is the full ``Date: ...\\r\\n`` line (RFC 9110 section 6.6.1), supplied by the
    caller since this function has no clock. ``head`` omits the content but keeps its
    Content-Length (RFC 9110 section 9.3.2). ``keep_alive=False`` adds ``Connection: close``;
    an HTTP/1.0 peer that asked for keep-alive gets ``Connection: keep-alive`` (RFC 9112
    section 9.3). 204 and 304 carry neither content nor Content-Length.
    Raises :class:`LocalProtocolError` for a response that cannot be sent as given.
    """
    status = response.status
    status_line = _STATUS_LINES.get(status) if type(status) is int else None
    if status_line is None:
        status_line = _status_line(status)
    body = response.body
    if type(body) is not bytes:
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise LocalProtocolError(f"response body must be bytes, not {type(body).__name__}")
        body = bytes(body)
    if keep_alive:
        connection = _KEEP_ALIVE_LINE if http10 else b""
    else:
        connection = _CLOSE_LINE
    extra = response.headers
    if extra:
        lines = []
        for item in extra:
            try:
                name, value = item
            except (TypeError, ValueError):
                raise LocalProtocolError(f"response header {item!r} is not a (name, value) pair") from None
            if isinstance(name, str) and name.lower() in _RESERVED_HEADERS:
                raise LocalProtocolError(f"response header {name} is set by the server")
            lines.append(_header_line(name, value))
        connection = b"".join(lines) + connection
    if status in _NO_CONTENT_STATUSES:
        return b"%s%s%s%s\r\n" % (status_line, _SERVER_LINE, date_line, connection)
    content_type = response.content_type
    ct_line = _CONTENT_TYPE_LINES.get(content_type)
    if ct_line is None:
        ct_line = _header_line("Content-Type", content_type)
    return b"%s%s%s%sContent-Length: %d\r\n%s\r\n%s" % (
        status_line,
        _SERVER_LINE,
        date_line,
        ct_line,
        len(body),
        connection,
        b"" if head else body,
    )


# --------------------------------------------------------------------------- sans-IO connection


class Phase(enum.IntEnum):
    """Where the connection stands in the current request (RFC 9112 section 2.1)."""

    IDLE = 0  # between requests: no byte of the next one seen
    HEADERS = 1  # request line or header section under way
    BODY = 2  # header section complete, content under way


# module-level aliases: a global lookup is much cheaper than an Enum class attribute
_IDLE, _HEADERS, _BODY = Phase.IDLE, Phase.HEADERS, Phase.BODY

#: Header names seen on nearly every request, lower-cased without a decode each time.
_COMMON_HEADER_NAMES: dict[bytes, str] = {
    raw: raw.decode("ascii").lower()
    for name in (
        "Host",
        "User-Agent",
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Authorization",
        "Connection",
        "Content-Length",
        "Content-Type",
        "Transfer-Encoding",
        "Expect",
        "Cookie",
        "Origin",
        "Referer",
        "X-Forwarded-For",
        "X-Request-Id",
    )
    for raw in (name.encode("ascii"), name.lower().encode("ascii"))
}
_METHODS: dict[bytes, str] = {
    m.encode("ascii"): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
}

Incoming = tuple[Request, bool, bool]
"""A parsed request with its ``keep_alive`` and ``http10`` flags, as queued by the connection."""


class HttpConnection:
    """Server side of one HTTP/1.1 connection, without I/O (RFC 9112).

    Feed every byte received to :meth:`receive_data`. Each complete request is appended to
    :attr:`requests` as ``(request, keep_alive, http10)``, in arrival order, so pipelined
    requests are answered in order. When the peer breaks the protocol or a limit,
    :attr:`failure` holds a :class:`RemoteProtocolError` naming the status to answer; requests
    completed before it are still in :attr:`requests` and should be answered first. After a
    failure, or once :attr:`upgrade_requested` is set (the peer asked to switch protocols,
    which this server does not do), further bytes are ignored and the connection should be
    closed once the queue is answered.
    """

    __slots__ = (
        "_body_parts",
        "_body_size",
        "_carry",
        "_continue_sent",
        "_expect_continue",
        "_header_bytes",
        "_headers",
        "_http10",
        "_keep_alive",
        "_max_body",
        "_max_header_bytes",
        "_method",
        "_parser",
        "_path",
        "_progress",
        "_query",
        "_remote",
        "_url",
        "failure",
        "phase",
        "requests",
        "upgrade_requested",
    )

    def __init__(self, limits: HttpLimits, remote: str = "") -> None:
        self._max_body = limits.max_body
        self._max_header_bytes = limits.max_header_bytes
        self._remote = remote
        self.requests: deque[Incoming] = deque()
        self.failure: RemoteProtocolError | None = None
        self.upgrade_requested = False
        self.phase = _IDLE
        self._carry = 0
        self._progress = False
        self._on_message_begin()
        self._parser = httptools.HttpRequestParser(self)

    # ---- public API

    @property
    def stopped(self) -> bool:
        """True once no further request can come from this connection."""
        return self.failure is not None or self.upgrade_requested

    @property
    def continue_needed(self) -> bool:
        """The request under way sent ``Expect: 100-continue`` and waits for the interim answer.

        Send :data:`CONTINUE_RESPONSE` (after every earlier response), then call
        :meth:`continue_was_sent` (RFC 9110 section 10.1.1).
        """
        return self._expect_continue and not self._continue_sent and self.phase is _BODY

    def continue_was_sent(self) -> None:
        """Record that the ``100 Continue`` for the request under way went out."""
        self._continue_sent = True

    def receive_data(self, data: bytes) -> None:
        """Parse ``data``; never raises for anything the peer sends."""
        if self.failure is not None or self.upgrade_requested:
            return
        self._progress = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The upgrade request itself is complete and queued; answer it, then close.
            self.upgrade_requested = True
            if self.requests:
                request, _keep_alive, http10 = self.requests[-1]
                self.requests[-1] = (request, False, http10)
            return
        except httptools.HttpParserCallbackError:
            if self.failure is None:  # a callback failed on a value it could not take in
                self._fail(HTTPStatus.BAD_REQUEST, "bad_request", "malformed request")
            return
        except httptools.HttpParserError as exc:
            if self.failure is None:
                self.failure = RemoteProtocolError(
                    f"malformed request: {exc}", status=HTTPStatus.BAD_REQUEST, code="bad_request"
                )
            return
        if self.phase is not _IDLE:
            # llhttp hands a header field to us only when it is complete; bytes of one still
            # arriving sit in the parser, as do chunk extensions and trailers. Count the bytes
            # of reads that produced nothing, so that none of these can grow without bound.
            if self._progress:
                self._carry = 0
            else:
                self._carry += len(data)
                if self._header_bytes + self._carry > self._max_header_bytes:
                    if self.phase is _HEADERS:
                        self._headers_too_large()
                    else:
                        self._fail(HTTPStatus.BAD_REQUEST, "bad_request", "chunked framing or trailers too large")

    # ---- failures

    def _fail(self, status: HTTPStatus, code: str, message: str) -> RemoteProtocolError:
        """Record the failure that ends this connection; callbacks raise what it returns."""
        self.failure = exc = RemoteProtocolError(message, status=status, code=code)
        return exc

    def _headers_too_large(self) -> RemoteProtocolError:
        return self._fail(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            f"request header section exceeds {self._max_header_bytes} bytes",
        )

    def _body_too_large(self) -> RemoteProtocolError:
        return self._fail(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body_too_large", f"request body exceeds {self._max_body} bytes"
        )

    # ---- llhttp callbacks (called from within feed_data)

    def on_message_begin(self) -> None:
        self._on_message_begin()
        self.phase = _HEADERS
        self._progress = True

    def _on_message_begin(self) -> None:
        # _method, _path, _query, _keep_alive and _http10 are set when the headers complete
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body_parts: list[bytes] | None = None
        self._body_size = 0
        self._header_bytes = 0
        self._expect_continue = False
        self._continue_sent = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        self._progress = True
        if self._header_bytes > self._max_header_bytes:
            raise self._fail(HTTPStatus.REQUEST_URI_TOO_LONG, "uri_too_long", "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        self._progress = True
        if self._header_bytes > self._max_header_bytes:
            raise self._headers_too_large()
        if self.phase is _BODY:
            return  # a trailer field (RFC 9112 section 7.1.2): not merged into the headers
        key = _COMMON_HEADER_NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
        headers = self._headers
        if key in headers:
            headers[key] = headers[key] + ", " + value.decode("latin-1")
        else:
            headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._progress = True
        parser = self._parser
        version = parser.get_http_version()
        if version[0] != "1":
            raise self._fail(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "http_version_not_supported", f"HTTP/{version}")
        self._http10 = version == "1.0"
        self._keep_alive = parser.should_keep_alive()
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method)
        self._method = method if method is not None else raw_method.decode("ascii")
        self._split_target(self._url)
        headers = self._headers
        if not self._http10 and "host" not in headers:  # RFC 9112 section 3.2
            raise self._fail(HTTPStatus.BAD_REQUEST, "bad_request", "missing Host header")
        length = headers.get("content-length")
        if length is not None and int(length) > self._max_body:  # llhttp checked its syntax
            raise self._body_too_large()
        expect = headers.get("expect")
        if expect is not None:
            if expect.lower() != "100-continue":  # RFC 9110 section 10.1.1
                raise self._fail(HTTPStatus.EXPECTATION_FAILED, "expectation_failed", "only 100-continue is supported")
            self._expect_continue = not self._http10
        self.phase = _BODY

    def _split_target(self, url: bytes) -> None:
        """Request target to decoded path and raw query (RFC 9112 section 3.2)."""
        if url[:1] == b"/":
            mark = url.find(b"#")  # a fragment is not part of the target; drop one if sent
            if mark >= 0:
                url = url[:mark]
            mark = url.find(b"?")
            if mark >= 0:
                raw_path, query = url[:mark], url[mark + 1 :]
            else:
                raw_path, query = url, b""
        elif url == b"*":
            raw_path, query = url, b""
        else:  # absolute-form, as sent to proxies; servers must accept it
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise self._fail(HTTPStatus.BAD_REQUEST, "bad_request", "invalid request target") from None
            raw_path = parsed.path or b"/"
            query = parsed.query or b""
        if b"%" in raw_path:
            try:
                self._path = unquote_to_bytes(raw_path).decode("utf-8")
            except UnicodeDecodeError:
                raise self._fail(HTTPStatus.BAD_REQUEST, "bad_request", "request path is not UTF-8") from None
        else:
            self._path = raw_path.decode("latin-1")
        self._query = query.decode("latin-1") if query else ""

    def on_body(self, body: bytes) -> None:
        size = self._body_size + len(body)
        if size > self._max_body:
            raise self._body_too_large()
        self._body_size = size
        if self._body_parts is None:
            self._body_parts = [body]
        else:
            self._body_parts.append(body)
        self._progress = True

    def on_message_complete(self) -> None:
        parts = self._body_parts
        if parts is None:
            body = b""
        elif len(parts) == 1:
            body = parts[0]
        else:
            body = b"".join(parts)
        self.requests.append(
            (
                Request(self._method, self._path, self._query, self._headers, body, self._remote),
                self._keep_alive,
                self._http10,
            )
        )
        self.phase = _IDLE


# --------------------------------------------------------------------------- Trio driver


def _date_line(now: float) -> bytes:
    """The ``Date`` header line for wall-clock time ``now`` (RFC 9110 section 6.6.1)."""
    return b"Date: " + formatdate(int(now), usegmt=True).encode("ascii") + _CRLF


_PHONE_RE = re.compile(r"\d{7,}")


def _masked(text: str) -> str:
    """Phone-number-like digit runs shortened to ``138****8000`` for logs."""
    return _PHONE_RE.sub(lambda m: m.group()[:3] + "****" + m.group()[-4:], text)


def _peer_name(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    if sock is None:
        return ""
    try:
        address = sock.getpeername()
    except OSError:
        return ""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)


class _Timer:
    """A connection's deadline, checked by the server's ticker rather than by the event loop.

    Moving a plain float per request costs next to nothing, where moving a cancel scope's own
    deadline costs more than parsing the request. The ticker cancels ``scope`` (and sets
    ``expired``) once ``deadline`` has passed.
    """

    __slots__ = ("deadline", "expired", "scope")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self.scope = trio.CancelScope()


class _SocketIO:
    """Receive and send on a connected TCP socket with one pass through the scheduler a
    request, not two.

    Trio's ``SocketStream`` first tries each ``recv`` (which on a keep-alive connection has
    nothing yet, right after the response went out: a failed system call and an exception)
    and, after a ``send`` that went through, passes through the scheduler once more.
    Here a receive waits for readiness, then reads; a send writes what the socket takes at
    once and waits only for the rest. The wait for the next request remains the
    connection's checkpoint: cancellation and deadlines act there.
    """

    __slots__ = ("_fd", "_stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno()

    async def receive(self) -> bytes:
        fd = self._fd
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                return os.read(fd, READ_SIZE)
            except BlockingIOError:  # readiness without data: wait again
                continue

    async def send(self, data: bytes) -> None:
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):  # the socket's buffer is full: the rest goes when it drains
            await self._stream.send_all(memoryview(data)[sent:])


class _StreamIO:
    """The same two operations over any other ``trio.abc.Stream``."""

    __slots__ = ("receive_some", "send")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.receive_some = stream.receive_some
        self.send = stream.send_all

    async def receive(self) -> bytes:
        return await self.receive_some(READ_SIZE)


class _Server:
    """State shared by the connections of one :func:`serve_http`.

    ``now`` is a coarse copy of ``trio.current_time()`` and ``date_line`` the current ``Date``
    line, both refreshed every :data:`TIMER_TICK` by :meth:`tick`, so that the per-request path
    reads neither clock. Deadlines are set ``TIMER_TICK`` beyond ``now + timeout`` to make up
    for the staleness of ``now``; a timeout thus fires between its nominal time and two ticks
    after it.
    """

    __slots__ = ("date_line", "handler", "limits", "now", "timers")

    def __init__(self, handler: Handler, limits: HttpLimits) -> None:
        self.handler = handler
        self.limits = limits
        self.timers: set[_Timer] = set()
        self.now = trio.current_time()
        self.date_line = _date_line(time.time())

    async def tick(self) -> None:
        """Refresh the coarse clocks and cancel the connections whose deadline has passed."""
        timers = self.timers
        while True:
            await trio.sleep(TIMER_TICK)
            self.now = now = trio.current_time()
            self.date_line = _date_line(time.time())
            for timer in timers:
                if timer.deadline <= now and not timer.expired:
                    timer.expired = True
                    timer.scope.cancel()

    def deadline_after(self, timeout: float) -> float:
        """A deadline no earlier than ``timeout`` seconds from now, on the coarse clock."""
        return self.now + timeout + TIMER_TICK

    async def _send_final(self, stream: trio.abc.Stream, response: Response) -> None:
        """Send an error response the connection ends with, bounded in time."""
        data = render_response(response, self.date_line, keep_alive=False)
        with trio.move_on_after(ERROR_SEND_TIMEOUT):
            await stream.send_all(data)

    def _failed(self, request: Request, keep_alive: bool, http10: bool) -> bytes:
        """A handler raised or answered something unsendable: log it, answer 500."""
        logger.exception(
            "http handler failed method=%s path=%s remote=%s",
            request.method,
            _masked(request.path),
            request.remote,
        )
        failure = error_response(500, "internal_error", "the server failed to handle the request")
        return render_response(
            failure, self.date_line, head=request.method == "HEAD", keep_alive=keep_alive, http10=http10
        )

    async def serve_connection(self, stream: trio.abc.Stream, remote: str) -> None:
        """Serve one connection until it closes (RFC 9112 section 9).

        A new connection has ``header_timeout`` to start a request; a started request has
        ``header_timeout`` to complete its header section and then ``body_timeout`` for its
        content; once a response is handed over, the peer has ``keepalive_timeout`` to take it
        and send the next request. No deadline runs while a handler does.
        """
        limits = self.limits
        handler = self.handler
        conn = HttpConnection(limits, remote)
        requests = conn.requests
        io = _SocketIO(stream) if type(stream) is trio.SocketStream else _StreamIO(stream)
        receive = io.receive
        send = io.send
        keepalive_timeout = limits.keepalive_timeout + TIMER_TICK
        tracked = _IDLE
        reading = False
        timer = _Timer(self.deadline_after(limits.header_timeout))
        scope = timer.scope
        self.timers.add(timer)
        try:
            with scope:
                while True:
                    served = False
                    while requests:
                        request, keep_alive, http10 = requests.popleft()
                        timer.deadline = math.inf
                        try:
                            response = await handler(request)
                            if type(response) is not Response:
                                raise LocalProtocolError(f"handler returned {type(response).__name__}, not Response")
                            data = render_response(
                                response,
                                self.date_line,
                                head=request.method == "HEAD",
                                keep_alive=keep_alive,
                                http10=http10,
                            )
                        except Exception:
                            data = self._failed(request, keep_alive, http10)
                        timer.deadline = self.now + keepalive_timeout
                        await send(data)
                        if not keep_alive:
                            return
                        served = True
                    if conn.failure is not None or conn.upgrade_requested:
                        failure = conn.failure
                        if failure is not None:
                            logger.debug(
                                "http request refused remote=%s status=%d reason=%s",
                                remote,
                                failure.status,
                                failure.message,
                            )
                            await self._send_final(
                                stream, error_response(failure.status, failure.code, failure.message)
                            )
                        return
                    if conn.continue_needed:
                        await send(CONTINUE_RESPONSE)
                        conn.continue_was_sent()
                    phase = conn.phase
                    if phase is not _IDLE and (served or phase is not tracked):
                        # a request has started, or moved from its header section to its content
                        timeout = limits.header_timeout if phase is _HEADERS else limits.body_timeout
                        timer.deadline = self.deadline_after(timeout)
                    tracked = phase
                    reading = True
                    data = await receive()
                    if timer.expired:  # the deadline passed while the data was on its way
                        break
                    reading = False
                    if not data:
                        if phase is not _IDLE:
                            logger.debug("http peer closed mid-request remote=%s", remote)
                        return
                    conn.receive_data(data)
        finally:
            self.timers.discard(timer)
        # only a timeout gets here
        if reading and conn.phase is not _IDLE:
            logger.debug("http request timed out remote=%s phase=%s", remote, conn.phase.name)
            await self._send_final(stream, error_response(408, "request_timeout", "request not received in time"))

    async def run_connection(self, stream: trio.SocketStream, limiter: trio.CapacityLimiter, slot: object) -> None:
        """One connection's task; it gives its connection slot back when done."""
        remote = _peer_name(stream)
        try:
            async with stream:
                await self.serve_connection(stream, remote)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            logger.debug("http connection lost remote=%s error=%r", remote, exc)
        except Exception:
            # A fault in this connection's handling must not take the other connections down.
            logger.exception("http connection failed remote=%s", remote)
        finally:
            limiter.release_on_behalf_of(slot)

    async def accept_loop(
        self, listener: trio.SocketListener, limiter: trio.CapacityLimiter, nursery: trio.Nursery
    ) -> None:
        """Accept while a connection slot is free; wait for one otherwise."""
        async with listener:
            while True:
                slot = object()
                await limiter.acquire_on_behalf_of(slot)
                try:
                    stream = await self._accept(listener)
                except BaseException:
                    limiter.release_on_behalf_of(slot)
                    raise
                nursery.start_soon(self.run_connection, stream, limiter, slot)

    @staticmethod
    async def _accept(listener: trio.SocketListener) -> trio.SocketStream:
        while True:
            try:
                return await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                logger.error("http accept failed errno=%s retry_in=%s", errno.errorcode[exc.errno], ACCEPT_RETRY_DELAY)
                await trio.sleep(ACCEPT_RETRY_DELAY)


async def serve_http(
    handler: Handler,
    host: str,
    port: int,
    *,
    limits: HttpLimits = HttpLimits(),
    listeners: list[trio.SocketListener] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTP/1.1 on ``host:port`` until cancelled (SPEC "HTTP API", "Ports").

    Binds first, then reports the bound port through ``task_status.started(port)``; port 0
    picks a free one (and then only the first address ``host`` resolves to is bound, so that
    the reported port is the only one). One task per connection; at most
    ``limits.max_connections`` at once, beyond which accepting waits. Cancelling the caller's
    scope closes the listeners and every connection.

    ``listeners`` made beforehand (e.g. by :func:`open_http_listeners` with ``reuse_port``)
    are served instead of binding ``host:port``; they are closed when the server stops.
    """
    if listeners is None:
        listeners = await open_http_listeners(host, port)
    bound_port = listeners[0].socket.getsockname()[1]
    server = _Server(handler, limits)
    limiter = trio.CapacityLimiter(limits.max_connections)
    logger.info("http listening host=%s port=%d", host, bound_port)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.tick)
            for listener in listeners:
                nursery.start_soon(server.accept_loop, listener, limiter, nursery)
            task_status.started(bound_port)
    finally:
        for listener in listeners:
            with trio.CancelScope(shield=True):
                await listener.aclose()


async def open_http_listeners(host: str, port: int, *, reuse_port: bool = False) -> list[trio.SocketListener]:
    """Listening sockets for :func:`serve_http` on ``host:port``; port 0 binds only the first
    address ``host`` resolves to, so that the one port picked is the only one.

    With ``reuse_port`` each socket is bound with ``SO_REUSEPORT`` (Linux 3.9+), so that
    other processes of the same user may bind the same address and port, and the kernel
    spreads new connections over every socket so bound.
    """
    if not reuse_port:
        listeners = await trio.open_tcp_listeners(port, host=host)
        if port == 0 and len(listeners) > 1:
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        return listeners
    addresses = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE)
    if port == 0:
        addresses = addresses[:1]
    listeners = []
    try:
        for family, type_, proto, _, sockaddr in addresses:
            sock = trio.socket.socket(family, type_, proto)
            try:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
                if family == trio.socket.AF_INET6:
                    sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
                await sock.bind(sockaddr)
                sock.listen(LISTEN_BACKLOG)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


#: Pending connections per listening socket made by :func:`open_http_listeners` with
#: ``reuse_port`` (the kernel caps it at ``net.core.somaxconn``), as trio's own default.
LISTEN_BACKLOG = 0xFFFF
