"""The lean callback client against real Trio servers on 127.0.0.1."""

from __future__ import annotations

import functools

import pytest
import trio

from gateway.hookhttp import MAX_RESPONSE_BODY, CallbackHttpError, HookClient, render, target
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
    async with HookClient() as client:
        t = target(f"http://127.0.0.1:{port}/dlr?id=1&type=8")
        statuses = [await client.request("GET", t, b"User-Agent: smsgw-dlr\r\n"),
                    await client.request("POST", target(f"http://127.0.0.1:{port}/hook"),
                                         b"Content-Type: application/json\r\n", b'{"a":1}'),
                    await client.request("GET", t, b"")]
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
    async with HookClient() as client:
        t = target(f"http://127.0.0.1:{port}/x")
        assert [await client.request("GET", t, b"") for _ in range(3)] == [202, 202, 201]
        assert client.connects == 1  # chunked answers keep the connection
        assert client.statistics()["idle"] == 0  # the close-delimited one ended it
        assert await client.request("GET", t, b"") == 200
        assert client.connects == 2


async def test_a_connection_the_server_closed_while_idle_is_not_used(nursery):
    server = RawServer([], close_after=1)  # answers once per connection, then hangs up
    port = await server.start(nursery)
    async with HookClient() as client:
        t = target(f"http://127.0.0.1:{port}/x")
        assert await client.request("GET", t, b"") == 200
        await trio.sleep(0.1)  # the server's close reaches us
        assert await client.request("GET", t, b"") == 200
        assert client.connects == 2 and len(server.requests) == 2  # each request sent exactly once


async def test_no_answer_is_an_error_and_never_a_silent_retry(nursery):
    server = RawServer([None])  # reads the request, closes without answering
    port = await server.start(nursery)
    async with HookClient() as client:
        t = target(f"http://127.0.0.1:{port}/x")
        with pytest.raises(CallbackHttpError, match="without an answer"):
            await client.request("GET", t, b"")
        assert len(server.requests) == 1  # it may have been processed: the caller decides
        assert await client.request("GET", t, b"") == 200


async def test_the_callers_deadline_closes_the_connection(nursery):
    server = RawServer(["hang"])
    port = await server.start(nursery)
    async with HookClient() as client:
        t = target(f"http://127.0.0.1:{port}/x")
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(0.3):
                await client.request("GET", t, b"")
        assert client.statistics()["idle"] == 0
        assert await client.request("GET", t, b"") == 200
        assert client.connects == 2


async def test_oversized_malformed_and_refused(nursery):
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_RESPONSE_BODY + 1) + b"x" * (MAX_RESPONSE_BODY + 1)
    server = RawServer([big, b"NOT HTTP AT ALL\r\n\r\n"])
    port = await server.start(nursery)
    async with HookClient() as client:
        t = target(f"http://127.0.0.1:{port}/x")
        with pytest.raises(CallbackHttpError, match="body over"):
            await client.request("GET", t, b"")
        with pytest.raises(CallbackHttpError, match="malformed"):
            await client.request("GET", t, b"")
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        free_port = listener.getsockname()[1]
        listener.close()
        with pytest.raises(CallbackHttpError, match="cannot connect"):
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


async def test_a_request_that_could_not_be_written_goes_once_more_on_a_fresh_connection(nursery):
    import socket

    server = RawServer([])
    port = await server.start(nursery)
    async with HookClient() as client:
        t = target(f"http://127.0.0.1:{port}/x")
        assert await client.request("GET", t, b"") == 200
        # The idle connection looks healthy (nothing to read) but can no longer be written to.
        (idle,) = client._idle[("127.0.0.1", port)]
        idle.stream.socket.shutdown(socket.SHUT_WR)
        assert await client.request("GET", t, b"") == 200
        assert client.connects == 2 and len(server.requests) == 2  # sent once, on the new connection
