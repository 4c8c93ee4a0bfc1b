"""The HTTP/1.1 server: the sans-IO connection and response rendering against hand-written
bytes (RFC 9112 / RFC 9110), then the Trio server over real TCP on 127.0.0.1."""

from __future__ import annotations

import functools
import json
import logging
import re
import socket
import struct

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, given, settings

from gateway.errors import ConfigError, GatewayError
from gateway.http import (
    CONTINUE_RESPONSE,
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
from gateway.http.server import _date_line

DATE_LINE = b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"


def feed(data: bytes, limits: HttpLimits | None = None, remote: str = "10.0.0.1:5555") -> HttpConnection:
    conn = HttpConnection(limits or HttpLimits(), remote)
    conn.receive_data(data)
    return conn


# =========================================================================== sans-IO core


def test_get_with_query_and_repeated_headers() -> None:
    conn = feed(
        b"GET /v1/messages/123?full=1&x=%20 HTTP/1.1\r\n"
        b"Host: gw.example\r\n"
        b"Accept: */*\r\n"
        b"X-Trace: a\r\n"
        b"x-trace: b\r\n"
        b"\r\n"
    )
    assert conn.failure is None
    assert list(conn.requests) == [
        (
            Request(
                method="GET",
                path="/v1/messages/123",
                query="full=1&x=%20",
                headers={"host": "gw.example", "accept": "*/*", "x-trace": "a, b"},
                body=b"",
                remote="10.0.0.1:5555",
            ),
            True,
            False,
        )
    ]
    assert conn.phase is Phase.IDLE


def test_content_length_body() -> None:
    conn = feed(
        b"POST /v1/messages HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
        b'Content-Length: 13\r\n\r\n{"to": "138"}'
    )
    ((request, keep_alive, http10),) = conn.requests
    assert (request.method, request.path, request.body) == ("POST", "/v1/messages", b'{"to": "138"}')
    assert request.headers["content-length"] == "13"
    assert keep_alive and not http10


def test_chunked_body_with_extension_and_trailer() -> None:
    # RFC 9112 section 7.1: chunk-size [ chunk-ext ] CRLF chunk-data CRLF ... last-chunk trailer-section CRLF
    conn = feed(
        b"POST /in HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;name=value\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Checksum: 42\r\n\r\n"
    )
    ((request, _, _),) = conn.requests
    assert request.body == b"Wikipedia in\r\n\r\nchunks."
    assert "x-checksum" not in request.headers  # trailers are not merged into the header fields


def test_percent_decoded_path_keeps_query_raw() -> None:
    conn = feed(b"GET /v1/sim/inbox/%2B8613800138000/%E4%B8%AD?q=%E4 HTTP/1.1\r\nHost: h\r\n\r\n")
    ((request, _, _),) = conn.requests
    assert request.path == "/v1/sim/inbox/+8613800138000/\u4e2d"
    assert request.query == "q=%E4"


def test_fragment_dropped_from_target() -> None:
    ((request, _, _),) = feed(b"GET /a?b=1#frag HTTP/1.1\r\nHost: h\r\n\r\n").requests
    assert (request.path, request.query) == ("/a", "b=1")


def test_absolute_form_target() -> None:
    ((request, _, _),) = feed(b"GET http://gw.example:8080/v1/x?y=1 HTTP/1.1\r\nHost: gw.example\r\n\r\n").requests
    assert (request.path, request.query) == ("/v1/x", "y=1")


def test_asterisk_form_target() -> None:
    ((request, _, _),) = feed(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").requests
    assert (request.method, request.path) == ("OPTIONS", "*")


def test_path_not_utf8_is_400() -> None:
    conn = feed(b"GET /%FF%FE HTTP/1.1\r\nHost: h\r\n\r\n")
    assert conn.failure is not None
    assert (conn.failure.status, conn.failure.code) == (400, "bad_request")
    assert not conn.requests


def test_pipelined_requests_queue_in_order() -> None:
    conn = feed(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    assert [(r.method, r.path, r.body, ka) for r, ka, _ in conn.requests] == [
        ("GET", "/1", b"", True),
        ("POST", "/2", b"abc", True),
        ("GET", "/3", b"", False),
    ]


def test_http10_closes_unless_keep_alive_asked() -> None:
    ((_, keep_alive, http10),) = feed(b"GET / HTTP/1.0\r\n\r\n").requests
    assert (keep_alive, http10) == (False, True)
    ((_, keep_alive, http10),) = feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").requests
    assert (keep_alive, http10) == (True, True)


def test_connection_close_in_http11() -> None:
    ((_, keep_alive, _),) = feed(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").requests
    assert keep_alive is False


def test_http11_without_host_is_400() -> None:
    conn = feed(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n")
    assert conn.failure is not None and conn.failure.status == 400


def test_content_length_over_limit_refused_before_body() -> None:
    conn = feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 17\r\n\r\n", HttpLimits(max_body=16))
    assert conn.failure is not None
    assert (conn.failure.status, conn.failure.code) == (413, "body_too_large")


def test_content_length_at_limit_accepted() -> None:
    conn = feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 16\r\n\r\n" + b"x" * 16, HttpLimits(max_body=16))
    assert conn.failure is None and conn.requests[0][0].body == b"x" * 16


def test_chunked_body_over_limit() -> None:
    conn = feed(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n9\r\n123456789\r\n0\r\n\r\n",
        HttpLimits(max_body=16),
    )
    assert conn.failure is not None and conn.failure.code == "body_too_large"
    assert not conn.requests


def test_complete_header_section_over_limit_is_431() -> None:
    limits = HttpLimits(max_header_bytes=128)
    conn = feed(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 120 + b"\r\n\r\n", limits)
    assert conn.failure is not None
    assert (conn.failure.status, conn.failure.code) == (431, "headers_too_large")


def test_never_ending_header_is_bounded() -> None:
    limits = HttpLimits(max_header_bytes=1024)
    conn = HttpConnection(limits, "r")
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ")
    sent = 0
    while conn.failure is None and sent < 10 * 1024:
        conn.receive_data(b"a" * 100)
        sent += 100
    assert conn.failure is not None and conn.failure.status == 431
    assert sent <= 1024 + 100


def test_long_target_is_414() -> None:
    conn = feed(b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: h\r\n\r\n", HttpLimits(max_header_bytes=256))
    assert conn.failure is not None and conn.failure.status == 414


def test_big_pipelined_batch_is_not_mistaken_for_big_headers() -> None:
    limits = HttpLimits(max_header_bytes=256)
    one = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
    conn = feed(one * 100 + b"GET /partial HTTP/1.1\r\nHo", limits)
    assert conn.failure is None and len(conn.requests) == 100
    conn.receive_data(b"st: h\r\n\r\n")
    assert conn.failure is None and len(conn.requests) == 101


def test_expect_100_continue_flow() -> None:
    conn = feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-Continue\r\n\r\n")
    assert conn.phase is Phase.BODY and conn.continue_needed
    conn.continue_was_sent()
    assert not conn.continue_needed
    conn.receive_data(b"abc")
    assert conn.requests[0][0].body == b"abc" and not conn.continue_needed


def test_expect_other_is_417() -> None:
    conn = feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: teapot\r\n\r\n")
    assert conn.failure is not None and conn.failure.status == 417


def test_upgrade_request_queued_then_stops() -> None:
    conn = feed(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello")
    assert conn.upgrade_requested and conn.stopped
    ((request, keep_alive, _),) = conn.requests
    assert request.path == "/ws" and keep_alive is False
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert len(conn.requests) == 1


def test_garbage_is_400_and_later_bytes_ignored() -> None:
    conn = feed(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a TLS ClientHello
    assert conn.failure is not None and (conn.failure.status, conn.failure.code) == (400, "bad_request")
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert not conn.requests


def test_requests_before_a_failure_are_kept() -> None:
    conn = feed(b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\nBROKEN\x00 / HTTP/1.1\r\n\r\n")
    assert [r.path for r, _, _ in conn.requests] == ["/ok"]
    assert conn.failure is not None and conn.failure.status == 400


def test_phases() -> None:
    conn = HttpConnection(HttpLimits(), "r")
    assert conn.phase is Phase.IDLE
    conn.receive_data(b"POST / HT")
    assert conn.phase is Phase.HEADERS
    conn.receive_data(b"TP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\na")
    assert conn.phase is Phase.BODY
    conn.receive_data(b"b")
    assert conn.phase is Phase.IDLE and conn.requests[0][0].body == b"ab"


def test_error_classes() -> None:
    assert issubclass(RemoteProtocolError, ProtocolError) and issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(ProtocolError, GatewayError)
    conn = feed(b"nonsense\r\n\r\n")
    assert isinstance(conn.failure, RemoteProtocolError)


PIPELINE = (
    b"POST /a?x=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;e=1\r\nde\r\n0\r\n\r\n"
    b"GET /b HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
    b"PUT /c/%E4%B8%AD HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    b"HEAD /d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(PIPELINE)), max_size=12))
def test_any_split_of_the_stream_gives_the_same_requests(cuts: list[int]) -> None:
    whole = feed(PIPELINE)
    assert len(whole.requests) == 4 and whole.failure is None
    conn = HttpConnection(HttpLimits(), "10.0.0.1:5555")
    edges = [0, *sorted(cuts), len(PIPELINE)]
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        conn.receive_data(PIPELINE[start:end])
    assert list(conn.requests) == list(whole.requests)
    assert conn.failure is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_garbage_never_raises(chunks: list[bytes]) -> None:
    conn = HttpConnection(HttpLimits(max_header_bytes=128, max_body=64), "r")
    for chunk in chunks:
        conn.receive_data(chunk)
    assert conn.failure is None or isinstance(conn.failure, RemoteProtocolError)
    if conn.failure is not None:
        assert conn.failure.status in {400, 413, 414, 417, 431, 505}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
            st.text(alphabet="abcxyz0123456789-_.~", min_size=1, max_size=12),
            st.binary(max_size=40),
            st.booleans(),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_round_trip_of_generated_requests(items: list[tuple[str, str, bytes, bool]]) -> None:
    wire = b""
    for method, segment, body, chunked in items:
        wire += f"{method} /{segment}?k={segment} HTTP/1.1\r\nHost: h\r\n".encode()
        if chunked:
            wire += b"Transfer-Encoding: chunked\r\n\r\n"
            if body:
                wire += b"%x\r\n%s\r\n" % (len(body), body)
            wire += b"0\r\n\r\n"
        else:
            wire += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    conn = feed(wire)
    assert conn.failure is None
    assert [(r.method, r.path, r.query, r.body) for r, _, _ in conn.requests] == [
        (m, "/" + s, "k=" + s, b) for m, s, b, _ in items
    ]


# --------------------------------------------------------------------------- rendering


def test_render_plain_response() -> None:
    data = render_response(Response(status=200, body=b'{"a":1}'), DATE_LINE)
    assert data == (
        b"HTTP/1.1 200 OK\r\n"
        b"Server: smsgw\r\n"
        b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: 7\r\n"
        b"\r\n"
        b'{"a":1}'
    )


def test_render_head_close_and_extra_headers() -> None:
    response = Response(status=429, body=b"{}", headers=[("Retry-After", "3")])
    data = render_response(response, DATE_LINE, head=True, keep_alive=False)
    assert data == (
        b"HTTP/1.1 429 Too Many Requests\r\n"
        b"Server: smsgw\r\n"
        b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: 2\r\n"
        b"Retry-After: 3\r\n"
        b"Connection: close\r\n"
        b"\r\n"
    )


def test_render_http10_keep_alive_and_text_type() -> None:
    response = Response(status=202, body=b"0: Accepted for delivery", content_type="text/plain; charset=utf-8")
    data = render_response(response, DATE_LINE, http10=True)
    assert data == (
        b"HTTP/1.1 202 Accepted\r\n"
        b"Server: smsgw\r\n"
        b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 24\r\n"
        b"Connection: keep-alive\r\n"
        b"\r\n"
        b"0: Accepted for delivery"
    )


def test_render_204_has_no_content_fields() -> None:
    data = render_response(Response(status=204), DATE_LINE)
    assert data == b"HTTP/1.1 204 No Content\r\nServer: smsgw\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"


def test_render_unregistered_status_code() -> None:
    assert render_response(Response(status=299), DATE_LINE).startswith(b"HTTP/1.1 299 \r\n")


@pytest.mark.parametrize(
    "response",
    [
        Response(status=99),
        Response(status=600),
        Response(status=101),
        Response(status=200, headers=[("X-Evil", "a\r\nSet-Cookie: x=1")]),
        Response(status=200, headers=[("Bad Name", "v")]),
        Response(status=200, headers=[("Content-Length", "5")]),
        Response(status=200, headers=[("Connection", "close")]),
        Response(status=200, headers=[("X-Name", "\u4e2d")]),
        Response(status=200, headers=[("X-Only-Name",)]),  # type: ignore[list-item]
        Response(status=200, body="text"),  # type: ignore[arg-type]
        Response(status=200, content_type="text/plain\r\nX: y"),
    ],
)
def test_render_refuses_what_cannot_be_sent(response: Response) -> None:
    with pytest.raises(LocalProtocolError):
        render_response(response, DATE_LINE)


def test_date_line_format() -> None:
    # RFC 9110 section 5.6.7: IMF-fixdate, the example "Sun, 06 Nov 1994 08:49:37 GMT"
    assert _date_line(784111777.0) == DATE_LINE
    assert _date_line(784111777.9) == DATE_LINE


def test_obs_text_header_value_kept_as_latin1() -> None:
    ((request, _, _),) = feed(b"GET / HTTP/1.1\r\nHost: h\r\nX-Name: caf\xe9\r\n\r\n").requests
    assert request.headers["x-name"] == "caf\u00e9"


def test_error_response_shape() -> None:
    response = error_response(429, "rate_limited", "slow down", headers=[("Retry-After", "3")])
    assert response.status == 429 and response.headers == [("Retry-After", "3")]
    assert json.loads(response.body) == {"error": {"code": "rate_limited", "message": "slow down"}}


@pytest.mark.parametrize("field", ["max_body", "max_header_bytes", "max_connections", "header_timeout"])
def test_limits_validated(field: str) -> None:
    with pytest.raises(LimitsError, match=field) as info:
        HttpLimits(**{field: 0})
    assert isinstance(info.value, ConfigError)


# =========================================================================== over TCP


class RawClient:
    """Requests written by hand; responses read by a minimal reader of our own."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        chunk = await self.stream.receive_some(65536)
        self.buffer += chunk
        return bool(chunk)

    async def read_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not await self._fill():
                raise AssertionError(f"EOF after {bytes(self.buffer)!r}, wanted {n} bytes")
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def response(self, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            if not await self._fill():
                raise AssertionError(f"EOF before a response; got {bytes(self.buffer)!r}")
        end = self.buffer.index(b"\r\n\r\n")
        head_bytes = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
        match = re.fullmatch(r"HTTP/1\.1 (\d{3}) [^\r\n]*", status_line)
        assert match, status_line
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"duplicate header {name}"
            headers[name.lower()] = value.strip()
        status = int(match.group(1))
        body = b""
        if not head and status not in (204, 304) and status >= 200:
            body = await self.read_exact(int(headers["content-length"]))
        return status, headers, body

    async def at_eof(self) -> bool:
        """True when the server closed without sending anything more."""
        while await self._fill():
            pass
        return not self.buffer


BIG_BODY = 16 * 1024 * 1024


async def echo_app(request: Request) -> Response:
    if request.path.startswith("/boom"):
        raise RuntimeError("handler exploded")
    if request.path == "/bad-response":
        return Response(status=200, headers=[("X-Evil", "a\r\nb")])
    if request.path == "/not-a-response":
        return {"status": 200}  # type: ignore[return-value]
    if request.path == "/big":
        return Response(status=200, body=b"x" * BIG_BODY)
    if request.path == "/limited":
        return error_response(429, "rate_limited", "slow down", headers=[("Retry-After", "3")])
    if request.path.startswith("/sleep/"):
        await trio.sleep(float(request.path.rsplit("/", 1)[1]))
    payload = {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "body": request.body.decode("latin-1"),
        "host": request.headers.get("host"),
        "remote_ok": request.remote.startswith("127.0.0.1:"),
    }
    return Response(status=200, body=json.dumps(payload).encode())


class Server:
    def __init__(self, port: int, calls: list[Request]) -> None:
        self.port = port
        self.calls = calls

    async def connect(self) -> RawClient:
        return RawClient(await trio.open_tcp_stream("127.0.0.1", self.port))


@pytest.fixture
async def server_factory(nursery: trio.Nursery):
    async def start(**limit_args: float) -> Server:
        calls: list[Request] = []

        async def handler(request: Request) -> Response:
            calls.append(request)
            return await echo_app(request)

        serve = functools.partial(serve_http, handler, "127.0.0.1", 0, limits=HttpLimits(**limit_args))  # type: ignore[arg-type]
        port = await nursery.start(serve)
        return Server(port, calls)

    return start


GET = b"GET /echo?n=%d HTTP/1.1\r\nHost: t\r\n\r\n"


async def test_keep_alive_several_requests(server_factory) -> None:
    server = await server_factory()
    client = await server.connect()
    for n in range(3):
        await client.send(GET % n)
        status, headers, body = await client.response()
        assert status == 200
        assert json.loads(body)["query"] == f"n={n}"
        assert headers["server"] == "smsgw"
        assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT", headers["date"])
        assert headers["content-length"] == str(len(body))
        assert "connection" not in headers
    assert json.loads(body)["remote_ok"] is True
    assert len(server.calls) == 3


async def test_pipelined_requests_answered_in_order(server_factory) -> None:
    server = await server_factory()
    client = await server.connect()
    await client.send(
        GET % 1
        + b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nping"
        + GET % 3
        + b"GET /limited HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    first = json.loads((await client.response())[2])
    second = json.loads((await client.response())[2])
    third = json.loads((await client.response())[2])
    status, headers, body = await client.response()
    assert (first["query"], second["body"], third["query"]) == ("n=1", "ping", "n=3")
    assert status == 429 and headers["retry-after"] == "3"
    assert json.loads(body)["error"]["code"] == "rate_limited"


async def test_chunked_request_body(server_factory) -> None:
    server = await server_factory()
    client = await server.connect()
    await client.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"
    )
    status, _, body = await client.response()
    assert status == 200 and json.loads(body)["body"] == "Wikipedia"


async def test_body_too_large_413_and_close(server_factory) -> None:
    server = await server_factory(max_body=16)
    client = await server.connect()
    await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 17\r\n\r\n" + b"x" * 17)
    status, headers, body = await client.response()
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "body_too_large"
    assert await client.at_eof()
    assert server.calls == []


async def test_chunked_body_too_large_413(server_factory) -> None:
    server = await server_factory(max_body=16)
    client = await server.connect()
    await client.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10\r\n0123456789abcdef\r\n1\r\nX\r\n0\r\n\r\n"
    )
    status, _, body = await client.response()
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"
    assert await client.at_eof()


async def test_headers_too_large_431(server_factory) -> None:
    server = await server_factory(max_header_bytes=256)
    client = await server.connect()
    await client.send(b"GET /echo HTTP/1.1\r\nHost: t\r\nCookie: " + b"c" * 300 + b"\r\n\r\n")
    status, headers, body = await client.response()
    assert status == 431 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "headers_too_large"
    assert await client.at_eof()


async def test_garbage_400_and_close(server_factory) -> None:
    server = await server_factory()
    client = await server.connect()
    await client.send(b"HELLO THERE\x00\x01\r\n\r\n")
    status, headers, body = await client.response()
    assert status == 400 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "bad_request"
    assert await client.at_eof()


async def test_requests_before_garbage_are_answered(server_factory) -> None:
    server = await server_factory()
    client = await server.connect()
    await client.send(GET % 7 + b"\x00garbage\r\n\r\n")
    status, _, body = await client.response()
    assert status == 200 and json.loads(body)["query"] == "n=7"
    assert (await client.response())[0] == 400
    assert await client.at_eof()


async def test_http10_closes_after_response(server_factory) -> None:
    server = await server_factory()
    client = await server.connect()
    await client.send(b"GET /echo HTTP/1.0\r\n\r\n")
    status, headers, _ = await client.response()
    assert status == 200 and headers["connection"] == "close"
    assert await client.at_eof()


async def test_http10_keep_alive_when_asked(server_factory) -> None:
    server = await server_factory()
    client = await server.connect()
    for _ in range(2):
        await client.send(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = await client.response()
        assert status == 200 and headers["connection"] == "keep-alive"
    assert len(server.calls) == 2


async def test_connection_close_honoured(server_factory) -> None:
    server = await server_factory()
    client = await server.connect()
    await client.send(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + GET % 2)
    status, headers, _ = await client.response()
    assert status == 200 and headers["connection"] == "close"
    assert await client.at_eof()
    assert len(server.calls) == 1


async def test_head_has_length_but_no_body(server_factory) -> None:
    server = await server_factory()
    client = await server.connect()
    await client.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
    _, get_headers, get_body = await client.response()
    await client.send(b"HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\n" + GET % 9)
    status, headers, body = await client.response(head=True)
    assert status == 200 and body == b""
    # the HEAD handler sees method HEAD; its body would be longer by one byte ("HEAD" vs "GET")
    assert int(headers["content-length"]) == len(get_body) + 1 == int(get_headers["content-length"]) + 1
    status, _, body = await client.response()  # the next response starts right after the head
    assert status == 200 and json.loads(body)["query"] == "n=9"


async def test_expect_100_continue(server_factory) -> None:
    server = await server_factory()
    client = await server.connect()
    await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert await client.read_exact(len(CONTINUE_RESPONSE)) == b"HTTP/1.1 100 Continue\r\n\r\n"
    await client.send(b"hello")
    status, _, body = await client.response()
    assert status == 200 and json.loads(body)["body"] == "hello"


async def test_expect_100_continue_refused_when_too_large(server_factory) -> None:
    server = await server_factory(max_body=4)
    client = await server.connect()
    await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    status, _, body = await client.response()
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"
    assert await client.at_eof()


async def test_handler_exception_500_and_server_keeps_serving(server_factory, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.http.server")
    server = await server_factory()
    client = await server.connect()
    await client.send(b"GET /boom/13800138000 HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, body = await client.response()
    assert status == 500 and "connection" not in headers
    assert json.loads(body)["error"]["code"] == "internal_error"
    assert "exploded" not in body.decode()
    failures = [r for r in caplog.records if r.exc_info]
    assert failures and "handler exploded" in str(failures[0].exc_info[1])
    assert "path=/boom/138****8000" in failures[0].getMessage()  # phone numbers masked in logs
    await client.send(GET % 1)  # same connection still works
    assert (await client.response())[0] == 200


@pytest.mark.parametrize("path", [b"/bad-response", b"/not-a-response"])
async def test_invalid_handler_response_is_500(server_factory, path: bytes) -> None:
    server = await server_factory()
    client = await server.connect()
    await client.send(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n" + GET % 2)
    status, _, body = await client.response()
    assert status == 500 and json.loads(body)["error"]["code"] == "internal_error"
    assert (await client.response())[0] == 200


async def test_upgrade_answered_then_closed(server_factory) -> None:
    server = await server_factory()
    client = await server.connect()
    await client.send(b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    status, headers, _ = await client.response()
    assert status == 200 and headers["connection"] == "close"
    assert await client.at_eof()


async def test_header_timeout_closes_slowloris(server_factory, autojump_clock) -> None:
    server = await server_factory()
    client = await server.connect()
    start = trio.current_time()
    await client.send(b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Slow: a")
    await trio.sleep(6)
    await client.send(b"aaaa")  # trickling does not extend the deadline
    status, headers, body = await client.response()
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert 10 <= trio.current_time() - start <= 12  # fires within two ticks of its time
    assert await client.at_eof()


async def test_silent_connection_closed_after_header_timeout(server_factory, autojump_clock) -> None:
    server = await server_factory()
    client = await server.connect()
    start = trio.current_time()
    assert await client.at_eof()
    assert 10 <= trio.current_time() - start <= 12  # fires within two ticks of its time


async def test_body_timeout(server_factory, autojump_clock) -> None:
    server = await server_factory()
    client = await server.connect()
    await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
    start = trio.current_time()
    for _ in range(4):
        await trio.sleep(5)
        await client.send(b"d")
    status, _, body = await client.response()
    assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
    assert 30 <= trio.current_time() - start <= 32
    assert server.calls == []


async def test_idle_keep_alive_timeout(server_factory, autojump_clock) -> None:
    server = await server_factory()
    client = await server.connect()
    await client.send(GET % 1)
    assert (await client.response())[0] == 200
    start = trio.current_time()
    assert await client.at_eof()
    assert 75 <= trio.current_time() - start <= 77


async def test_slow_handler_is_not_timed_out(server_factory, autojump_clock) -> None:
    server = await server_factory(keepalive_timeout=5.0, header_timeout=5.0)
    client = await server.connect()
    await client.send(b"GET /sleep/120 HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _, body = await client.response()
    assert status == 200 and json.loads(body)["path"] == "/sleep/120"


async def test_client_disconnect_mid_body(server_factory) -> None:
    server = await server_factory()
    client = await server.connect()
    await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n0123456789")
    await client.stream.aclose()
    other = await server.connect()
    await other.send(GET % 5)
    status, _, body = await other.response()
    assert status == 200 and json.loads(body)["query"] == "n=5"
    assert [r.path for r in server.calls] == ["/echo"] and server.calls[0].method == "GET"


async def test_client_reset_while_handler_runs(server_factory, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.http.server")
    server = await server_factory()
    client = await server.connect()
    await client.send(b"GET /sleep/0.05 HTTP/1.1\r\nHost: t\r\n\r\n" * 4)
    # SO_LINGER 0: close() sends a RST instead of a FIN
    client.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.stream.aclose()
    await trio.sleep(0.5)
    other = await server.connect()
    await other.send(GET % 6)
    assert (await other.response())[0] == 200
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("connection lost" in r.getMessage() for r in caplog.records)


async def test_many_concurrent_connections(server_factory) -> None:
    server = await server_factory()
    seen: list[str] = []

    async def one(i: int) -> None:
        client = await server.connect()
        for n in range(3):
            await client.send(b"GET /echo?c=%d&n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % (i, n))
            status, _, body = await client.response()
            assert status == 200
            seen.append(json.loads(body)["query"])
        await client.stream.aclose()

    async with trio.open_nursery() as nursery:
        for i in range(150):
            nursery.start_soon(one, i)
    assert sorted(seen) == sorted(f"c={i}&n={n}" for i in range(150) for n in range(3))


async def test_connection_cap_makes_accept_wait(server_factory, autojump_clock) -> None:
    server = await server_factory(max_connections=2)
    first, second = await server.connect(), await server.connect()
    for client in (first, second):
        await client.send(GET % 1)
        assert (await client.response())[0] == 200
    start = trio.current_time()
    third = await server.connect()  # the kernel completes the handshake; the server does not accept yet
    await third.send(GET % 3)
    status, _, body = await third.response()
    # served only once the two idle connections hit the keep-alive timeout
    assert status == 200 and json.loads(body)["query"] == "n=3"
    assert trio.current_time() - start >= 75
    assert await first.at_eof() and await second.at_eof()


async def test_clean_shutdown_on_cancel() -> None:
    async def handler(request: Request) -> Response:
        return Response(status=200)

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, handler, "127.0.0.1", 0)
            client = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
            await client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await client.response())[0] == 200
            scope.cancel()
    assert scope.cancelled_caught
    assert await client.at_eof()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_peer_that_never_reads_is_dropped(server_factory, autojump_clock) -> None:
    server = await server_factory()
    client = await server.connect()
    await client.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
    await trio.sleep(200)  # the server's send stalls once the socket buffers are full
    received = 0
    while chunk := await client.stream.receive_some(1 << 20):
        received += len(chunk)
    assert 0 < received < BIG_BODY
    other = await server.connect()
    await other.send(GET % 1)
    assert (await other.response())[0] == 200


async def test_response_larger_than_the_socket_buffer_arrives_whole(server_factory) -> None:
    # The first write takes what the socket buffer holds; the rest waits for the reader.
    server = await server_factory()
    client = await server.connect()
    await client.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n" + GET % 7)
    await trio.sleep(0.2)  # let the server fill the buffers and wait before anything is read
    status, headers, body = await client.response()
    assert status == 200 and len(body) == BIG_BODY and body.count(b"x") == BIG_BODY
    status, _, body = await client.response()
    assert status == 200 and json.loads(body)["query"] == "n=7"
