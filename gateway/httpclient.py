"""The gateway's keep-alive HTTP/1.1 client over Trio sockets and httptools.

Two kinds of caller share it. The callback sender (:mod:`gateway.webhooks`) posts small
one-shot requests to plain-``http`` URLs (webhooks, Kannel dlr-url) and keeps only the status
code: the answer's headers and body are parsed, bounded and dropped. The gateway's own
processes (:mod:`gateway.worker`, :mod:`gateway.workers`) pass requests on and read metrics
over 127.0.0.1 and relay the answers: they ask for the headers and body as well
(``whole=True``).

A request is rendered as bytes (:func:`render`), written on a kept-alive connection and the
answer parsed with httptools (status line, headers, ``Content-Length``, chunked or
close-delimited bodies), within the caller's :class:`Limits`.

Connections are pooled per ``(host, port)``: at most ``max_idle_per_host`` idle ones, each
kept for at most ``idle_timeout`` seconds, over at most ``max_hosts`` hosts (the least recently
used one dropped beyond). One request at a time per connection (no pipelining). An idle
connection that is readable before we write (the peer closed it, or sent stray bytes) is
dropped before use; if writing the request on a reused connection fails, nothing of it was sent
and it goes once more on a fresh connection. Once any of it may have reached the peer there is
no retry here: the caller decides.

Deadlines are the caller's cancel scopes; a request cancelled midway closes its connection.
Every failure of the exchange is an :class:`HttpClientError`.
"""

from __future__ import annotations

import select
import socket
from collections import OrderedDict
from collections.abc import Iterable
from urllib.parse import quote, urlsplit

import httptools
import msgspec
import trio

from .errors import GatewayError

__all__ = ["Answer", "HttpClient", "HttpClientError", "Limits", "Target", "header_lines", "render", "target"]

MAX_HEAD = 16 * 1024
"""Default bound on an answer's status line and headers."""
MAX_BODY = 64 * 1024
"""Default bound on an answer's body (callback answers are a word or two)."""
MAX_IDLE_PER_HOST = 32
"""Default number of idle keep-alive connections kept per host."""
MAX_HOSTS = 256
"""Default number of hosts with idle connections kept."""
IDLE_TIMEOUT = 30.0
"""Default seconds an idle connection is kept (servers commonly close theirs after 5 to 75 s)."""
RECEIVE_SIZE = 65536
_URL_SAFE = "/?&=%:+,;@!$'()*~#[]-._"
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class HttpClientError(GatewayError):
    """The exchange failed: no connection, the peer closed it, a malformed or oversized answer."""


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """The bounds a client keeps: on each answer, and on its pool of idle connections."""

    max_head: int = MAX_HEAD
    """Status line and headers larger than this are refused."""
    max_body: int = MAX_BODY
    """A body larger than this is refused (also when it is not kept)."""
    max_idle_per_host: int = MAX_IDLE_PER_HOST
    max_hosts: int = MAX_HOSTS
    idle_timeout: float = IDLE_TIMEOUT


class Answer(msgspec.Struct):
    """An answer as received: its status, and when asked for, its header fields in order and its body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Target:
    """Where to connect, the ``Host`` header and the request line's target."""

    __slots__ = ("host", "port", "authority", "path")

    def __init__(self, host: str, port: int, authority: str, path: str) -> None:
        self.host = host
        self.port = port
        self.authority = authority
        self.path = path


def target(url: str) -> Target | None:
    """The target of ``url`` when this client can send it (``http``, an ASCII host, no
    credentials), else None (the caller uses a general client). Characters a request line may
    not carry (spaces, non-ASCII, control characters) are percent-encoded; the fragment dropped."""
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError:
        return None
    host = parts.hostname
    if parts.scheme.lower() != "http" or not host or not host.isascii() or "@" in parts.netloc:
        return None
    path = quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_URL_SAFE)
    authority = parts.netloc.lower()
    if any(c in authority for c in " \r\n\t"):
        return None
    return Target(host, port, authority, path)


def header_lines(headers: Iterable[tuple[str, str]]) -> bytes:
    """``Name: value\\r\\n`` lines for :func:`render`."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")


def render(method: str, t: Target, headers: bytes = b"", body: bytes = b"") -> bytes:
    """The request as bytes. ``headers`` are pre-rendered ``Name: value\\r\\n`` lines and must
    not carry ``Host``, ``Content-Length``, ``Transfer-Encoding`` or ``Connection`` (this
    function and the client set the framing)."""
    head = f"{method} {t.path} HTTP/1.1\r\nHost: {t.authority}\r\n".encode("latin-1") + headers
    if body or method in ("POST", "PUT", "PATCH"):
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


class _Status:
    """httptools callbacks for one answer whose headers and body are bounded and dropped."""

    __slots__ = ("parser", "max_head", "max_body", "head_size", "body_size", "headers_done", "complete",
                 "keep_alive", "status")

    def __init__(self, limits: Limits) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.max_head = limits.max_head
        self.max_body = limits.max_body
        self.head_size = 0
        self.body_size = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.status = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.max_head:
            raise HttpClientError(f"answer headers over {self.max_head} bytes")

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = self.parser.get_status_code()

    def on_body(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        if self.body_size > self.max_body:
            raise HttpClientError(f"answer body over {self.max_body} bytes")

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # only valid inside the callback

    def answer(self) -> Answer:
        return Answer(self.status, [], b"")


class _Whole(_Status):
    """httptools callbacks for one answer kept whole: status, headers and body."""

    __slots__ = ("headers", "body")

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, chunk: bytes) -> None:
        super().on_body(chunk)
        self.body.append(chunk)

    def answer(self) -> Answer:
        return Answer(self.status, self.headers, b"".join(self.body))


def _stale(stream: trio.SocketStream, idle_since: float, now: float, idle_timeout: float) -> bool:
    """Idle too long, or closed or talking while idle: not to be used again."""
    if now - idle_since > idle_timeout:
        return True
    poller = select.poll()  # not select.select: descriptors above 1024 are common in a busy gateway
    try:
        poller.register(stream.socket.fileno(), select.POLLIN)
        return bool(poller.poll(0))  # an idle HTTP/1.1 connection has nothing to say but EOF
    except (OSError, ValueError):
        return True


class HttpClient:
    """Requests on connections pooled per ``(host, port)``, within ``limits``. Use as an async
    context manager (closing it closes the idle connections)."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._idle: OrderedDict[tuple[str, int], list[tuple[trio.SocketStream, float]]] = OrderedDict()
        self.connects = 0
        """Connections opened so far."""

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, OrderedDict()
        for conns in idle.values():
            for stream, _ in conns:
                stream.socket.close()  # nothing to flush on an idle socket

    def discard(self, host: str, port: int) -> None:
        """Close the idle connections to ``host:port`` (a peer that is gone)."""
        for stream, _ in self._idle.pop((host, port), ()):
            stream.socket.close()

    def statistics(self) -> dict[str, int]:
        return {"connects": self.connects, "idle": sum(len(c) for c in self._idle.values())}

    async def request(self, method: str, t: Target, headers: bytes = b"", body: bytes = b"", *,
                      whole: bool = False) -> Answer:
        """Send one request (see :func:`render` for ``headers``) and return its answer: the
        status only, or with ``whole`` also its headers and body. Raises :class:`HttpClientError`."""
        data = render(method, t, headers, body)
        key = (t.host, t.port)
        stream = self._checkout(key)
        fresh = stream is None
        if stream is None:
            stream = await self._connect(key)
        while True:
            try:
                await stream.send_all(data)
                break
            except _BROKEN as exc:
                stream.socket.close()
                if fresh:
                    raise HttpClientError(f"sending to {t.host}:{t.port} failed: {exc!r}") from None
                stream = await self._connect(key)  # the peer had closed the idle one: nothing was sent
                fresh = True
            except BaseException:  # cancelled midway: the connection is in an unknown state
                stream.socket.close()
                raise
        return await self._receive(key, stream, _Whole(self.limits) if whole else _Status(self.limits))

    def _checkout(self, key: tuple[str, int]) -> trio.SocketStream | None:
        conns = self._idle.get(key)
        now = trio.current_time()
        while conns:
            stream, since = conns.pop()
            if not _stale(stream, since, now, self.limits.idle_timeout):
                return stream
            stream.socket.close()
        return None

    async def _connect(self, key: tuple[str, int]) -> trio.SocketStream:
        try:
            stream = await trio.open_tcp_stream(*key)
        except OSError as exc:
            raise HttpClientError(f"cannot connect to {key[0]}:{key[1]}: {exc}") from None
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connects += 1
        return stream

    async def _receive(self, key: tuple[str, int], stream: trio.SocketStream, parse: _Status) -> Answer:
        try:
            while not parse.complete:
                chunk = await stream.receive_some(RECEIVE_SIZE)
                if not chunk:
                    if parse.headers_done:  # a close-delimited body: the end of the answer
                        stream.socket.close()
                        return parse.answer()
                    raise HttpClientError(f"{key[0]}:{key[1]} closed the connection without an answer")
                parse.parser.feed_data(chunk)
        except _BROKEN as exc:
            stream.socket.close()
            raise HttpClientError(f"receiving the answer from {key[0]}:{key[1]} failed: {exc!r}") from None
        except httptools.HttpParserError as exc:
            stream.socket.close()
            if isinstance(exc.__context__, HttpClientError):  # a bound of ours, raised in a callback
                raise exc.__context__ from None
            raise HttpClientError(f"malformed answer from {key[0]}:{key[1]}: {exc}") from None
        except BaseException:  # our own errors, or cancelled mid-exchange
            stream.socket.close()
            raise
        if parse.keep_alive:
            self._checkin(key, stream)
        else:
            stream.socket.close()
        return parse.answer()

    def _checkin(self, key: tuple[str, int], stream: trio.SocketStream) -> None:
        conns = self._idle.get(key)
        if conns is None:
            conns = self._idle[key] = []
            while len(self._idle) > self.limits.max_hosts:
                _, dropped = self._idle.popitem(last=False)
                for s, _ in dropped:
                    s.socket.close()
        else:
            self._idle.move_to_end(key)
        if len(conns) >= self.limits.max_idle_per_host:
            stream.socket.close()
            return
        conns.append((stream, trio.current_time()))
