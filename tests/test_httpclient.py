"""The keep-alive HTTP client against real Trio servers on 127.0.0.1: status-only answers (the
callback path) and whole ones (the path between the gateway's own processes)."""

from __future__ import annotations

import functools
import os
import socket

import pytest
import trio

from gateway.httpclient import (MAX_BODY, Answer, HttpClient, HttpClientError, Limits, Target, header_lines, render,
                                target)
from tests.http_peer import read_request

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RawServer:
    """Answers each request on a connection with the next of ``answers`` (bytes, or None to
    close without answering, or "hang" to stay silent); records the requests it parsed."""

    def __init__(self, answers, *, close_after: int | None = None) -> None:
        self.answers = list(answers)
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buf = b""
        served = 0
        async with stream:
            while True:
                got = await read_request(stream, buf)
                if got is None:
                    return
                request, buf = got
                self.requests.append(request)
                answer = self.answers.pop(0) if self.answers else OK
                if answer is None:
                    return
                if answer == "hang":
                    await trio.sleep_forever()
                await stream.send_all(answer)
                served += 1
                if b"Connection: close" in answer or (self.close_after is not None and served >= self.close_after):
                    return

    async def start(self, nursery) -> int:
        (listener,) = await nursery.start(functools.partial(trio.serve_tcp, self.handle, 0, host="127.0.0.1"))
        return listener.socket.getsockname()[1]


async def test_keep_alive_reuses_one_connection_and_sends_what_was_asked(nursery):
    server = RawServer([OK, b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nbusy"])
    port = await server.start(nursery)
    async with HttpClient() as client:
        t = target(f"http://127.0.0.1:{port}/dlr?id=1&type=8")
        answers = [await client.request("GET", t, b"User-Agent: smsgw-dlr\r\n"),
                   await client.request("POST", target(f"http://127.0.0.1:{port}/hook"),
                                        b"Content-Type: application/json\r\n", b'{"a":1}'),
                   await client.request("GET", t, b"")]
        statuses = [a.status for a in answers]
        assert all(a.headers == [] and a.body == b"" for a in answers)  # status only, unless asked
        assert statuses == [200, 204, 500]
        assert client.connects == 1 and server.connections == 1
        assert client.statistics() == {"connects": 1, "idle": 1}
    assert server.requests[0] == (f"GET /dlr?id=1&type=8 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                  "User-Agent: smsgw-dlr\r\n\r\n").encode()
    assert server.requests[1].endswith(b'Content-Length: 7\r\n\r\n{"a":1}')


async def test_chunked_and_close_delimited_answers(nursery):
    chunked = (b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n")
    close_delimited = b"HTTP/1.1 201 Created\r\nConnection: close\r\n\r\nthe rest until EOF"
    server = RawServer([chunked, chunked, close_delimited])
    port = await server.start(nursery)
    async with HttpClient() as client:
        t = target(f"http://127.0.0.1:{port}/x")
        assert [(await client.request("GET", t, b"")).status for _ in range(3)] == [202, 202, 201]
        assert client.connects == 1  # chunked answers keep the connection
        assert client.statistics()["idle"] == 0  # the close-delimited one ended it
        assert (await client.request("GET", t, b"")).status == 200
        assert client.connects == 2


async def test_a_connection_the_server_closed_while_idle_is_not_used(nursery):
    server = RawServer([], close_after=1)  # answers once per connection, then hangs up
    port = await server.start(nursery)
    async with HttpClient() as client:
        t = target(f"http://127.0.0.1:{port}/x")
        assert (await client.request("GET", t, b"")).status == 200
        await trio.sleep(0.1)  # the server's close reaches us
        assert (await client.request("GET", t, b"")).status == 200
        assert client.connects == 2 and len(server.requests) == 2  # each request sent exactly once


async def test_no_answer_is_an_error_and_never_a_silent_retry(nursery):
    server = RawServer([None])  # reads the request, closes without answering
    port = await server.start(nursery)
    async with HttpClient() as client:
        t = target(f"http://127.0.0.1:{port}/x")
        with pytest.raises(HttpClientError, match="without an answer"):
            await client.request("GET", t, b"")
        assert len(server.requests) == 1  # it may have been processed: the caller decides
        assert (await client.request("GET", t, b"")).status == 200


async def test_the_callers_deadline_closes_the_connection(nursery):
    server = RawServer(["hang"])
    port = await server.start(nursery)
    async with HttpClient() as client:
        t = target(f"http://127.0.0.1:{port}/x")
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(0.3):
                await client.request("GET", t, b"")
        assert client.statistics()["idle"] == 0
        assert (await client.request("GET", t, b"")).status == 200
        assert client.connects == 2


async def test_oversized_malformed_and_refused(nursery):
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1) + b"x" * (MAX_BODY + 1)
    server = RawServer([big, b"NOT HTTP AT ALL\r\n\r\n"])
    port = await server.start(nursery)
    async with HttpClient() as client:
        t = target(f"http://127.0.0.1:{port}/x")
        with pytest.raises(HttpClientError, match="body over"):
            await client.request("GET", t, b"")
        with pytest.raises(HttpClientError, match="malformed"):
            await client.request("GET", t, b"")
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        free_port = listener.getsockname()[1]
        listener.close()
        with pytest.raises(HttpClientError, match="cannot connect"):
            await client.request("GET", target(f"http://127.0.0.1:{free_port}/x"), b"")


def test_targets_it_takes_and_leaves_to_the_general_client():
    t = target("http://App.example:8080/dlr?to=%p 1&x=中#frag")
    assert (t.host, t.port, t.authority) == ("app.example", 8080, "app.example:8080")
    assert t.path == "/dlr?to=%p%201&x=%E4%B8%AD"
    assert target("http://example.com").path == "/" and target("http://example.com").port == 80
    assert "\r" not in target("http://a.example/x\r\nInjected: 1").path  # never a header of its own
    for other in ("https://a.example/x", "http://user:pw@a.example/x", "http://例子.cn/x", "ftp://a/x",
                  "http://a.example:99999/x", "not a url"):
        assert target(other) is None, other
    assert render("POST", target("http://h/p"), b"X: 1\r\n", b"{}") == (
        b"POST /p HTTP/1.1\r\nHost: h\r\nX: 1\r\nContent-Length: 2\r\n\r\n{}")
    assert render("PATCH", Target("127.0.0.1", 1, "api.example", "/v1/x?a=1"), header_lines([("A", "é")])) == (
        "PATCH /v1/x?a=1 HTTP/1.1\r\nHost: api.example\r\nA: é\r\nContent-Length: 0\r\n\r\n".encode("latin-1"))
    assert render("GET", target("http://h/")) == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"  # no framing without a body


async def test_a_request_that_could_not_be_written_goes_once_more_on_a_fresh_connection(nursery):
    server = RawServer([])
    port = await server.start(nursery)
    async with HttpClient() as client:
        t = target(f"http://127.0.0.1:{port}/x")
        assert (await client.request("GET", t, b"")).status == 200
        # The idle connection looks healthy (nothing to read) but can no longer be written to.
        ((idle, _),) = client._idle[("127.0.0.1", port)]
        idle.socket.shutdown(socket.SHUT_WR)
        assert (await client.request("GET", t, b"")).status == 200
        assert client.connects == 2 and len(server.requests) == 2  # sent once, on the new connection


async def test_whole_answers_keep_headers_in_order_and_the_body(nursery):
    chunked = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-B: 2\r\nX-A: 1\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n")
    close_delimited = b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n{\"error\":1}"
    server = RawServer([chunked, b"HTTP/1.1 204 No Content\r\n\r\n", close_delimited])
    port = await server.start(nursery)
    async with HttpClient() as client:
        t = Target("127.0.0.1", port, "gw.example", "/v1/messages?limit=2")
        first = await client.request("POST", t, header_lines([("X-Smsgw-Forwarded-For", "10.0.0.1")]), b"{}",
                                     whole=True)
        assert first == Answer(200, [("Content-Type", "text/plain"), ("X-B", "2"), ("X-A", "1"),
                                     ("Transfer-Encoding", "chunked")], b"abcdefg")
        assert await client.request("GET", t, whole=True) == Answer(204, [], b"")
        assert await client.request("GET", t, whole=True) == Answer(404, [("Connection", "close")], b'{"error":1}')
        assert client.connects == 1 and client.statistics()["idle"] == 0
    assert server.requests[0] == (b"POST /v1/messages?limit=2 HTTP/1.1\r\nHost: gw.example\r\n"
                                  b"X-Smsgw-Forwarded-For: 10.0.0.1\r\nContent-Length: 2\r\n\r\n{}")


async def test_the_callers_limits_bound_head_and_body_kept_or_not(nursery):
    body = b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n" + b"x" * 101
    head = b"HTTP/1.1 200 OK\r\nX-Long: " + b"y" * 200 + b"\r\nContent-Length: 0\r\n\r\n"
    fits = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"z" * 100
    server = RawServer([body, body, head, fits])
    port = await server.start(nursery)
    async with HttpClient(Limits(max_head=128, max_body=100)) as client:
        t = target(f"http://127.0.0.1:{port}/x")
        with pytest.raises(HttpClientError, match="body over 100 bytes"):
            await client.request("GET", t)
        with pytest.raises(HttpClientError, match="body over 100 bytes"):
            await client.request("GET", t, whole=True)
        with pytest.raises(HttpClientError, match="headers over 128 bytes"):
            await client.request("GET", t, whole=True)
        assert client.statistics()["idle"] == 0  # each refused answer closed its connection
        assert (await client.request("GET", t, whole=True)).body == b"z" * 100
        assert client.connects == 4


async def test_idle_pool_bounds_per_host_lru_hosts_and_idle_timeout(nursery):
    first, second = RawServer([]), RawServer([])
    port1, port2 = await first.start(nursery), await second.start(nursery)
    t1, t2 = target(f"http://127.0.0.1:{port1}/x"), target(f"http://127.0.0.1:{port2}/x")
    async with HttpClient(Limits(max_idle_per_host=2, max_hosts=1, idle_timeout=0.2)) as client:
        async with trio.open_nursery() as inner:
            for _ in range(3):  # three at once: three connections, two of them kept
                inner.start_soon(client.request, "GET", t1)
        assert client.connects == 3 and client.statistics()["idle"] == 2
        await client.request("GET", t2)  # a second host: the least recently used one is dropped
        assert client.statistics()["idle"] == 1
        await client.request("GET", t1)
        assert client.connects == 5
        await trio.sleep(0.3)  # past the idle timeout: not reused
        await client.request("GET", t1)
        assert client.connects == 6
        client.discard("127.0.0.1", port1)
        assert client.statistics()["idle"] == 0
    assert first.connections == 5 and second.connections == 1


async def test_cancelled_while_sending_a_large_body_closes_the_connection(nursery):
    async def answer_once_then_stop_reading(stream: trio.SocketStream) -> None:
        async with stream:
            assert await read_request(stream, b"") is not None
            await stream.send_all(OK)
            await trio.sleep_forever()

    (listener,) = await nursery.start(functools.partial(trio.serve_tcp, answer_once_then_stop_reading, 0,
                                                        host="127.0.0.1"))
    port = listener.socket.getsockname()[1]
    async with HttpClient() as client:
        t = target(f"http://127.0.0.1:{port}/x")
        assert (await client.request("GET", t)).status == 200  # a kept connection ...
        ((kept, _),) = client._idle[("127.0.0.1", port)]
        with trio.move_on_after(0.3) as scope:  # ... on which the server reads no more: sending blocks
            await client.request("POST", t, b"", b"x" * (16 * 1024 * 1024))
        assert scope.cancelled_caught
        assert kept.socket.fileno() == -1  # closed, not left in an unknown state
        assert client.statistics() == {"connects": 1, "idle": 0}


async def test_stale_check_works_on_descriptors_above_1024(nursery):
    server = RawServer([], close_after=1)
    port = await server.start(nursery)
    fillers = [os.dup(0) for _ in range(1100)]  # push the client's sockets above FD_SETSIZE
    try:
        async with HttpClient() as client:
            t = target(f"http://127.0.0.1:{port}/x")
            assert (await client.request("GET", t)).status == 200
            ((idle, _),) = client._idle[("127.0.0.1", port)]
            assert idle.socket.fileno() > 1024
            await trio.sleep(0.1)  # the server's close reaches us: noticed before reuse
            assert (await client.request("GET", t)).status == 200
            assert client.connects == 2 and len(server.requests) == 2
    finally:
        for fd in fillers:
            os.close(fd)
