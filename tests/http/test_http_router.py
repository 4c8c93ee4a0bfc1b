"""The routing table: static and captured segments, 404, 405 with Allow (RFC 9110 15.5.6)."""

from __future__ import annotations

import functools
import json

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import given, settings

from gateway.errors import GatewayError
from gateway.http import Request, Response, Router, RouterError, serve_http


def request(method: str, path: str) -> Request:
    return Request(method=method, path=path, query="", headers={}, body=b"", remote="127.0.0.1:1")


def recorder(name: str, calls: list):
    async def handler(request: Request, **params: str) -> Response:
        calls.append((name, request.method, params))
        return Response(status=200, body=name.encode())

    return handler


@pytest.fixture
def routed() -> tuple[Router, list]:
    calls: list = []
    router = Router()
    router.add("POST", "/v1/messages", recorder("send", calls))
    router.add("GET", "/v1/messages/{id}", recorder("get", calls))
    router.add("DELETE", "/v1/messages/{id}", recorder("delete", calls))
    router.add("GET", "/v1/accounts/{account}/keys/{key}", recorder("key", calls))
    router.add("GET", "/healthz", recorder("health", calls))
    router.add("GET", "/", recorder("root", calls))
    return router, calls


async def test_static_route(routed) -> None:
    router, calls = routed
    response = await router(request("POST", "/v1/messages"))
    assert (response.status, response.body) == (200, b"send")
    assert calls == [("send", "POST", {})]
    assert (await router(request("GET", "/"))).body == b"root"


async def test_params_extracted(routed) -> None:
    router, calls = routed
    assert (await router(request("GET", "/v1/messages/abc-123"))).body == b"get"
    assert (await router(request("DELETE", "/v1/messages/9"))).body == b"delete"
    assert (await router(request("GET", "/v1/accounts/shop/keys/k1"))).body == b"key"
    assert calls == [
        ("get", "GET", {"id": "abc-123"}),
        ("delete", "DELETE", {"id": "9"}),
        ("key", "GET", {"account": "shop", "key": "k1"}),
    ]


@pytest.mark.parametrize(
    "path", ["/nope", "/v1/messages/1/extra", "/v1/messages/", "/v1", "/healthz/", "", "*", "/v1/accounts/a/keys"]
)
async def test_unknown_path_404(routed, path: str) -> None:
    router, calls = routed
    response = await router(request("GET", path))
    assert response.status == 404 and response.content_type == "application/json"
    assert json.loads(response.body)["error"]["code"] == "not_found"
    assert calls == []


async def test_wrong_method_405_with_allow(routed) -> None:
    router, calls = routed
    response = await router(request("PUT", "/v1/messages/7"))
    assert response.status == 405
    assert response.headers == [("Allow", "DELETE, GET, HEAD")]
    assert json.loads(response.body)["error"]["code"] == "method_not_allowed"
    response = await router(request("GET", "/v1/messages"))
    assert response.status == 405 and response.headers == [("Allow", "POST")]
    assert calls == []


async def test_head_served_by_get(routed) -> None:
    router, calls = routed
    assert (await router(request("HEAD", "/healthz"))).status == 200
    assert (await router(request("HEAD", "/v1/messages/5"))).status == 200
    assert calls == [("health", "HEAD", {}), ("get", "HEAD", {"id": "5"})]
    assert (await router(request("HEAD", "/v1/messages"))).status == 405


async def test_explicit_head_handler_wins() -> None:
    calls: list = []
    router = Router()
    router.add("GET", "/x", recorder("get", calls))
    router.add("HEAD", "/x", recorder("head", calls))
    assert (await router(request("HEAD", "/x"))).body == b"head"


async def test_static_path_also_matched_by_pattern_with_other_method() -> None:
    calls: list = []
    router = Router()
    router.add("GET", "/v1/messages/latest", recorder("latest", calls))
    router.add("DELETE", "/v1/messages/{id}", recorder("delete", calls))
    assert (await router(request("DELETE", "/v1/messages/latest"))).body == b"delete"
    assert (await router(request("GET", "/v1/messages/latest"))).body == b"latest"
    response = await router(request("PATCH", "/v1/messages/latest"))
    assert response.status == 405 and response.headers == [("Allow", "DELETE, GET, HEAD")]
    assert calls == [("delete", "DELETE", {"id": "latest"}), ("latest", "GET", {})]


async def test_first_added_pattern_wins_then_method_decides() -> None:
    calls: list = []
    router = Router()
    router.add("GET", "/v1/{kind}/latest", recorder("kind", calls))
    router.add("GET", "/v1/messages/{id}", recorder("message", calls))
    router.add("POST", "/v1/messages/{id}", recorder("post", calls))
    assert (await router(request("GET", "/v1/messages/latest"))).body == b"kind"
    assert (await router(request("POST", "/v1/messages/latest"))).body == b"post"
    assert (await router(request("GET", "/v1/messages/42"))).body == b"message"


async def test_same_shape_other_method_shares_route() -> None:
    calls: list = []
    router = Router()
    router.add("GET", "/v1/inbox/{phone}", recorder("get", calls))
    router.add("DELETE", "/v1/inbox/{phone}", recorder("del", calls))
    await router(request("DELETE", "/v1/inbox/13900000001"))
    assert calls == [("del", "DELETE", {"phone": "13900000001"})]


@pytest.mark.parametrize(
    ("method", "pattern"),
    [
        ("GET", "v1/messages"),  # no leading slash
        ("GET", "/v1/{id}/{id}"),  # capture repeated
        ("GET", "/v1/m{id}"),  # capture not a whole segment
        ("GET", "/v1/{}"),  # empty capture name
        ("GET", "/v1/{1x}"),  # not an identifier
        ("GET", "/v1/{class}"),  # a keyword cannot be a keyword argument
        ("GET", "/v1/{request}"),  # clashes with the handler's first parameter
        ("get", "/v1/x"),  # methods are upper-case tokens
        ("G T", "/v1/x"),
    ],
)
def test_bad_routes_refused(method: str, pattern: str) -> None:
    router = Router()
    with pytest.raises(RouterError):
        router.add(method, pattern, recorder("x", []))


def test_duplicates_and_conflicts_refused() -> None:
    router = Router()
    router.add("GET", "/a", recorder("a", []))
    router.add("GET", "/b/{id}", recorder("b", []))
    with pytest.raises(RouterError, match="twice"):
        router.add("GET", "/a", recorder("a2", []))
    with pytest.raises(RouterError, match="twice"):
        router.add("GET", "/b/{id}", recorder("b2", []))
    with pytest.raises(RouterError, match="capture names differ"):
        router.add("POST", "/b/{other}", recorder("b3", []))
    with pytest.raises(RouterError, match="not callable"):
        router.add("POST", "/c", "not a handler")  # type: ignore[arg-type]
    assert issubclass(RouterError, GatewayError)


@settings(max_examples=200, deadline=None)
@given(
    st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), min_size=1, max_size=20),
    st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), min_size=1, max_size=20),
)
def test_any_segment_value_is_captured_exactly(first: str, second: str) -> None:
    calls: list = []
    router = Router()
    router.add("GET", "/v1/accounts/{account}/keys/{key}", recorder("key", calls))
    response = trio.run(router, request("GET", f"/v1/accounts/{first}/keys/{second}"))
    assert response.status == 200
    assert calls == [("key", "GET", {"account": first, "key": second})]


async def test_router_behind_the_server(nursery: trio.Nursery) -> None:
    calls: list = []
    router = Router()
    router.add("GET", "/v1/messages/{id}", recorder("get", calls))
    port = await nursery.start(functools.partial(serve_http, router, "127.0.0.1", 0))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"GET /v1/messages/%E4%B8%AD HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /v1/messages/1 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    first, second = received.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 OK\r\n") and first.endswith(b"\r\n\r\nget")
    assert second.startswith(b"405 Method Not Allowed\r\n")
    assert b"\r\nAllow: GET, HEAD\r\n" in second and b"\r\nConnection: close\r\n" in second
    assert calls == [("get", "GET", {"id": "\u4e2d"})]
