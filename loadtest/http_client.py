"""A lean HTTP/1.1 keep-alive client over Trio sockets, for the load generator.

One request at a time per connection (no pipelining), responses parsed with httptools.
Requests are pre-rendered bytes (:func:`render_request`), so a request costs one
``send_all`` and a read or two. Bodies are bounded by :data:`MAX_RESPONSE_BODY`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httptools
import trio

from gateway.errors import GatewayError

__all__ = ["MAX_RESPONSE_BODY", "HttpClientError", "Connection", "Endpoint", "render_request"]

MAX_RESPONSE_BODY = 4 * 1024 * 1024
"""A response body larger than this is a protocol error (the API's answers are small)."""
RECEIVE_SIZE = 65536
CONNECT_TIMEOUT = 10.0


class HttpClientError(GatewayError):
    """The server closed the connection, answered garbage, or could not be reached."""


class Endpoint:
    """Where requests go: ``http://host:port`` with an optional API key."""

    def __init__(self, url: str, api_key: str = "") -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise HttpClientError(f"expected an http://HOST:PORT URL, got {url!r}")
        self.url = url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.authority = parts.netloc
        self.api_key = api_key


def render_request(endpoint: Endpoint, method: str, path: str, body: bytes = b"", *,
                   auth: bool = True) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {endpoint.authority}"]
    if auth and endpoint.api_key:
        head.append(f"Authorization: Bearer {endpoint.api_key}")
    if body or method in ("POST", "PUT"):
        head.append("Content-Type: application/json")
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class _Parsed:
    """httptools callbacks for one response at a time."""

    __slots__ = ("body", "complete", "too_large", "keep_alive", "parser")

    def __init__(self) -> None:
        self.body = bytearray()
        self.complete = False
        self.too_large = False
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_body(self, chunk: bytes) -> None:
        if len(self.body) + len(chunk) > MAX_RESPONSE_BODY:
            self.too_large = True
            return
        self.body += chunk

    def on_message_complete(self) -> None:
        self.complete = True
        # Only meaningful inside the callback: afterwards the parser has reset for the next message.
        self.keep_alive = self.parser.should_keep_alive()


class Connection:
    """A keep-alive connection, opened on first use and again after the server closes it."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._stream: trio.SocketStream | None = None
        self.connects = 0

    async def request(self, data: bytes) -> tuple[int, bytes]:
        """Send one rendered request; return the status code and the body. Raises
        :class:`HttpClientError` when the exchange fails (the connection is then closed)."""
        if self._stream is None:
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    self._stream = await trio.open_tcp_stream(self.endpoint.host, self.endpoint.port)
            except (OSError, trio.TooSlowError) as exc:
                raise HttpClientError(f"cannot connect to {self.endpoint.url}: {exc}") from None
            self.connects += 1
        stream = self._stream
        state = _Parsed()
        parser = state.parser
        try:
            await stream.send_all(data)
            while not state.complete:
                chunk = await stream.receive_some(RECEIVE_SIZE)
                if not chunk:
                    raise HttpClientError("the server closed the connection")
                parser.feed_data(chunk)
            if state.too_large:
                raise HttpClientError(f"response body over {MAX_RESPONSE_BODY} bytes")
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, httptools.HttpParserError,
                HttpClientError) as exc:
            await self.aclose()
            if isinstance(exc, HttpClientError):
                raise
            raise HttpClientError(f"request failed: {exc!r}") from None
        except BaseException:
            await self.aclose()  # cancelled mid-exchange: the connection is in an unknown state
            raise
        if not state.keep_alive:
            await self.aclose()
        return parser.get_status_code(), bytes(state.body)

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()


async def fetch(endpoint: Endpoint, method: str, path: str, body: bytes = b"", *,
                timeout: float = 10.0) -> tuple[int, bytes]:
    """One request on a fresh connection, for occasional calls (metrics, stats, samples)."""
    conn = Connection(endpoint)
    try:
        with trio.fail_after(timeout):
            return await conn.request(render_request(endpoint, method, path, body))
    except trio.TooSlowError:
        raise HttpClientError(f"{method} {endpoint.url}{path} took over {timeout:g} s") from None
    finally:
        await conn.aclose()
