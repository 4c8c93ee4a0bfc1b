"""A keep-alive HTTP/1.1 client for the gateway's own processes on 127.0.0.1.

A worker process passes the requests it does not serve to the main process, and the main
process reads each worker's metrics, over private listeners on the loopback interface. The
answers are relayed unchanged, so this client keeps what the general callback client
(:mod:`gateway.hookhttp`) drops: the answer's headers and body.

One peer per client; at most :data:`MAX_IDLE` idle connections kept, each for at most
:data:`IDLE_TIMEOUT` seconds. One request at a time per connection. An idle connection the
peer has closed is noticed when writing to it fails, and the request then goes once more on a
fresh connection (nothing of it was sent); one that is readable before the request is
written (EOF, or stray bytes) is dropped before use. Deadlines are the caller's cancel scopes; a
request cancelled midway closes its connection.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterable

import httptools
import msgspec
import trio

from .errors import GatewayError

__all__ = ["Answer", "LoopbackClient", "LoopbackError", "MAX_ANSWER_BODY"]

MAX_ANSWER_BODY = 64 * 1024 * 1024
"""An answer body larger than this is refused (the largest are admin listings and metrics)."""
MAX_ANSWER_HEAD = 64 * 1024
"""Status line and headers larger than this are refused."""
MAX_IDLE = 64
"""Idle keep-alive connections kept."""
IDLE_TIMEOUT = 30.0
"""Seconds an idle connection is kept (the gateway's server keeps one for 75 s)."""
RECEIVE_SIZE = 65536


class LoopbackError(GatewayError):
    """The exchange failed: no connection, the peer closed it, a malformed or oversized answer."""


class Answer(msgspec.Struct):
    """An answer as received: its status, its header fields in order, its body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class _Parse:
    """httptools callbacks for one answer."""

    __slots__ = ("parser", "head_size", "body", "body_size", "headers", "headers_done", "complete", "keep_alive",
                 "status")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head_size = 0
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.status = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_ANSWER_HEAD:
            raise LoopbackError(f"answer headers over {MAX_ANSWER_HEAD} bytes")
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = self.parser.get_status_code()

    def on_body(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        if self.body_size > MAX_ANSWER_BODY:
            raise LoopbackError(f"answer body over {MAX_ANSWER_BODY} bytes")
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # only valid inside the callback

    def answer(self) -> Answer:
        return Answer(self.status, self.headers, b"".join(self.body))


def render_request(method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes, authority: str) -> bytes:
    """One request as bytes: ``target`` is the path and query as sent; ``headers`` must not
    carry ``Content-Length``, ``Transfer-Encoding`` or ``Connection`` (this client frames)."""
    lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1")]
    have_host = False
    for name, value in headers:
        if name.lower() == "host":
            have_host = True
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    if not have_host:
        lines.append(f"Host: {authority}\r\n".encode("latin-1"))
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(b"Content-Length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


class LoopbackClient:
    """Requests to one peer at ``host:port``. Close with :meth:`aclose` (or ``async with``)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.authority = f"{host}:{port}"
        self._idle: list[tuple[trio.SocketStream, float]] = []
        self.connects = 0

    async def __aenter__(self) -> LoopbackClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for stream, _ in idle:
            stream.socket.close()  # nothing to flush on an idle socket

    async def request(self, method: str, target: str, headers: Iterable[tuple[str, str]] = (),
                      body: bytes = b"") -> Answer:
        """Send one request and return the whole answer. Raises :class:`LoopbackError`."""
        data = render_request(method, target, headers, body, self.authority)
        stream = self._checkout()
        if stream is not None:
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                stream.socket.close()  # the peer had closed it: nothing was sent
                stream = None
            except BaseException:  # cancelled midway: the connection is in an unknown state
                stream.socket.close()
                raise
        if stream is None:
            stream = await self._connect()
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                stream.socket.close()
                raise LoopbackError(f"sending to {self.authority} failed: {exc!r}") from None
            except BaseException:
                stream.socket.close()
                raise
        return await self._receive(stream)

    def _checkout(self) -> trio.SocketStream | None:
        now = trio.current_time()
        while self._idle:
            stream, since = self._idle.pop()
            if now - since < IDLE_TIMEOUT and not _readable(stream):
                return stream
            stream.socket.close()  # expired, or the peer closed it (EOF) or sent stray bytes
        return None

    async def _connect(self) -> trio.SocketStream:
        try:
            stream = await trio.open_tcp_stream(self.host, self.port)
        except OSError as exc:
            raise LoopbackError(f"cannot connect to {self.authority}: {exc}") from None
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connects += 1
        return stream

    async def _receive(self, stream: trio.SocketStream) -> Answer:
        parse = _Parse()
        try:
            while not parse.complete:
                chunk = await stream.receive_some(RECEIVE_SIZE)
                if not chunk:
                    if parse.headers_done:  # a close-delimited body: the end of the answer
                        stream.socket.close()
                        return parse.answer()
                    raise LoopbackError(f"{self.authority} closed the connection without an answer")
                parse.parser.feed_data(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            stream.socket.close()
            raise LoopbackError(f"receiving the answer from {self.authority} failed: {exc!r}") from None
        except httptools.HttpParserError as exc:
            stream.socket.close()
            if isinstance(exc.__context__, LoopbackError):  # a bound of ours, raised in a callback
                raise exc.__context__ from None
            raise LoopbackError(f"malformed answer from {self.authority}: {exc}") from None
        except BaseException:  # our own errors from the callbacks, or cancelled mid-exchange
            stream.socket.close()
            raise
        if parse.keep_alive and len(self._idle) < MAX_IDLE:
            self._idle.append((stream, trio.current_time()))
        else:
            stream.socket.close()
        return parse.answer()


def _readable(stream: trio.SocketStream) -> bool:
    """An idle connection with something to read: the peer closed it or misbehaved."""
    readable, _, _ = select.select([stream.socket.fileno()], [], [], 0)
    return bool(readable)
