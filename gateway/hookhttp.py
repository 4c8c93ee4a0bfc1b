"""A lean keep-alive HTTP/1.1 client for plain-``http`` callback URLs (webhooks, dlr-url).

The webhook sender's requests are small, one-shot and only their status matters, so the
general client's per-request machinery (URL and header models, cookie jars, auth and redirect
layers, response streams) is most of their cost. This client renders a request as bytes,
writes it on a kept-alive Trio socket and parses the answer with httptools (status line,
headers, ``Content-Length``, chunked or close-delimited bodies; the body is read, bounded by
:data:`MAX_RESPONSE_BODY`, and dropped).

Connections are pooled per ``(host, port)``: at most :data:`MAX_IDLE_PER_HOST` idle ones kept,
for at most :data:`IDLE_TIMEOUT` seconds, over at most :data:`MAX_HOSTS` hosts. One request at a
time per connection (no pipelining). An idle connection the server has closed (readable
before we wrote: EOF or stray bytes) is dropped before use; if writing the request fails on a
reused connection the request was not sent and goes once more on a fresh one. Once any of it
may have reached the server there is no retry here: the caller's schedule decides.

Deadlines are the caller's cancel scopes; a request cancelled midway closes its connection.
"""

from __future__ import annotations

import select
import socket
from collections import OrderedDict
from urllib.parse import quote, urlsplit

import httptools
import trio

from .errors import GatewayError

__all__ = ["CallbackHttpError", "CallbackTarget", "HookClient", "MAX_RESPONSE_BODY", "target"]

MAX_RESPONSE_BODY = 64 * 1024
"""An answer body larger than this is refused (callback answers are a word or two)."""
MAX_RESPONSE_HEAD = 16 * 1024
"""Status line and headers larger than this are refused."""
MAX_IDLE_PER_HOST = 32
"""Idle keep-alive connections kept per host (the sender's concurrency)."""
MAX_HOSTS = 256
"""Hosts with idle connections kept; the least recently used one is dropped beyond this."""
IDLE_TIMEOUT = 30.0
"""Seconds an idle connection is kept (servers commonly close theirs after 5 to 75 s)."""
RECEIVE_SIZE = 65536
_URL_SAFE = "/?&=%:+,;@!$'()*~#[]-._"


class CallbackHttpError(GatewayError):
    """The exchange failed: no connection, the peer closed it, a malformed or oversized answer."""


class CallbackTarget:
    """A parsed plain-http URL: where to connect and the request line's target."""

    __slots__ = ("host", "port", "authority", "path")

    def __init__(self, host: str, port: int, authority: str, path: str) -> None:
        self.host = host
        self.port = port
        self.authority = authority
        self.path = path


def target(url: str) -> CallbackTarget | None:
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
    return CallbackTarget(host, port, authority, path)


def render(method: str, t: CallbackTarget, headers: bytes, body: bytes = b"") -> bytes:
    """The request as bytes; ``headers`` are pre-rendered ``Name: value\\r\\n`` lines."""
    head = f"{method} {t.path} HTTP/1.1\r\nHost: {t.authority}\r\n".encode("ascii") + headers
    if body or method in ("POST", "PUT"):
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


class _Answer:
    """httptools callbacks for one response."""

    __slots__ = ("parser", "head_size", "body_size", "headers_done", "complete", "keep_alive", "status")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head_size = 0
        self.body_size = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.status = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value)
        if self.head_size > MAX_RESPONSE_HEAD:
            raise CallbackHttpError(f"response headers over {MAX_RESPONSE_HEAD} bytes")

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = self.parser.get_status_code()

    def on_body(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        if self.body_size > MAX_RESPONSE_BODY:
            raise CallbackHttpError(f"response body over {MAX_RESPONSE_BODY} bytes")

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # only valid inside the callback


class _Connection:
    __slots__ = ("stream", "idle_since")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.idle_since = 0.0

    def stale(self, now: float) -> bool:
        """Closed or talking while idle, or idle too long: not to be used again."""
        if now - self.idle_since > IDLE_TIMEOUT:
            return True
        poller = select.poll()  # not select.select: descriptors above 1024 are common in a busy gateway
        try:
            poller.register(self.stream.socket.fileno(), select.POLLIN)
            return bool(poller.poll(0))  # an idle HTTP/1.1 connection has nothing to say but EOF
        except (OSError, ValueError):
            return True

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


class HookClient:
    """Plain-http requests on pooled keep-alive connections. Use as an async context manager
    (closing it closes the idle connections)."""

    def __init__(self) -> None:
        self._idle: OrderedDict[tuple[str, int], list[_Connection]] = OrderedDict()
        self.connects = 0
        """Connections opened so far (for tests and statistics)."""

    async def __aenter__(self) -> HookClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, OrderedDict()
        for conns in idle.values():
            for conn in conns:
                await conn.aclose()

    def statistics(self) -> dict[str, int]:
        return {"connects": self.connects, "idle": sum(len(c) for c in self._idle.values())}

    async def request(self, method: str, t: CallbackTarget, headers: bytes, body: bytes = b"") -> int:
        """Send one request; return the answer's status code. Raises :class:`CallbackHttpError`."""
        data = render(method, t, headers, body)
        key = (t.host, t.port)
        conn = self._checkout(key)
        if conn is not None:
            try:
                await conn.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await conn.aclose()  # the server had closed it: nothing was sent
                conn = None
            except BaseException:  # cancelled midway: the connection is in an unknown state
                await conn.aclose()
                raise
            else:
                return await self._answer(key, conn)
        conn = await self._connect(t)
        try:
            await conn.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            await conn.aclose()
            raise CallbackHttpError(f"sending to {t.authority} failed: {exc!r}") from None
        except BaseException:
            await conn.aclose()
            raise
        return await self._answer(key, conn)

    def _checkout(self, key: tuple[str, int]) -> _Connection | None:
        conns = self._idle.get(key)
        now = trio.current_time()
        while conns:
            conn = conns.pop()
            if not conn.stale(now):
                return conn
            conn.stream.socket.close()  # nothing to flush on an idle socket
        return None

    async def _connect(self, t: CallbackTarget) -> _Connection:
        try:
            stream = await trio.open_tcp_stream(t.host, t.port)
        except OSError as exc:
            raise CallbackHttpError(f"cannot connect to {t.authority}: {exc}") from None
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connects += 1
        return _Connection(stream)

    async def _answer(self, key: tuple[str, int], conn: _Connection) -> int:
        answer = _Answer()
        try:
            while not answer.complete:
                chunk = await conn.stream.receive_some(RECEIVE_SIZE)
                if not chunk:
                    if answer.headers_done:  # a close-delimited body: the end of the answer
                        await conn.aclose()
                        return answer.status
                    raise CallbackHttpError("the server closed the connection without an answer")
                answer.parser.feed_data(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            await conn.aclose()
            raise CallbackHttpError(f"receiving the answer failed: {exc!r}") from None
        except httptools.HttpParserError as exc:
            await conn.aclose()
            if isinstance(exc.__context__, CallbackHttpError):  # a bound of ours, raised in a callback
                raise exc.__context__ from None
            raise CallbackHttpError(f"malformed answer: {exc}") from None
        except BaseException:  # our own errors from the callbacks, or cancelled mid-exchange
            await conn.aclose()
            raise
        if answer.keep_alive:
            self._checkin(key, conn)
        else:
            await conn.aclose()
        return answer.status

    def _checkin(self, key: tuple[str, int], conn: _Connection) -> None:
        conn.idle_since = trio.current_time()
        conns = self._idle.get(key)
        if conns is None:
            conns = self._idle[key] = []
            while len(self._idle) > MAX_HOSTS:
                _, dropped = self._idle.popitem(last=False)
                for c in dropped:
                    c.stream.socket.close()
        else:
            self._idle.move_to_end(key)
        if len(conns) >= MAX_IDLE_PER_HOST:
            conn.stream.socket.close()
            return
        conns.append(conn)
