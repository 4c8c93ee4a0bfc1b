"""crm_lite.restkit: the one error mapping of every /v1/crm route (``guarded``), and the
plumbing that turns path segments, query parameters and bodies into values or 4xx answers."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm_lite.errors import (
    AlreadyDrawn,
    Conflict,
    CrmError,
    CsvFileError,
    Forbidden,
    InsufficientPoints,
    InvalidInput,
    NoApprover,
    NotFound,
)
from crm_lite.restkit import MAX_ID, add_routes, decode, guarded, json_response, path_id, query_int, query_str
from crm_lite.staff import Permission, Role, Staff
from gateway.api import ApiError
from gateway.errors import StoreConflict, StoreError, StoreUnavailable
from gateway.http import Request, Response, Router

ACTOR = Staff(id=7, merchant_id=3, phone="13900000009", name="王老板", role=Role.OWNER)


def _request(path: str = "/v1/crm/things", query: str = "", body: bytes = b"", method: str = "GET") -> Request:
    return Request(method=method, path=path, query=query, headers={"authorization": "Bearer crm_x"}, body=body,
                   remote="127.0.0.1")


async def _authenticate(request: Request) -> Staff:
    return ACTOR


def _raising(exc: BaseException):
    async def handler(request: Request, actor: Staff, **params: str) -> Response:
        raise exc

    return handler


def _error(response: Response) -> dict:
    doc = msgspec.json.decode(response.body)
    assert list(doc) == ["error"], doc
    assert set(doc["error"]) <= {"code", "message", "field"} and doc["error"]["message"], doc
    return doc["error"]


def _retry_after(response: Response) -> str | None:
    return next((v for k, v in response.headers if k.lower() == "retry-after"), None)


# (error raised by a handler, status, code, field, Retry-After)
CASES = [
    (ApiError(429, "rate_limited", "slow down", headers=[("Retry-After", "3")]), 429, "rate_limited", None, "3"),
    (ApiError(400, "invalid_field", "limit is too big", field="limit"), 400, "invalid_field", "limit", None),
    (Forbidden(Role.CASHIER, Permission.STAFF_MANAGE), 403, "forbidden", None, None),
    (InvalidInput("attributes.level", "level must be one of 银卡, 金卡"), 400, "invalid_field", "attributes.level",
     None),
    (CsvFileError("unknown column 'hobby'", field="hobby"), 400, "invalid_csv", "hobby", None),
    (CsvFileError("the file is not UTF-8 (byte 3)"), 400, "invalid_csv", None, None),
    (NotFound("member", "no member M000009"), 404, "member_not_found", None, None),
    (NotFound(None, "no lottery 12"), 404, "not_found", None, None),
    (Conflict("keyword_taken", "lottery 2 already uses keyword CJ"), 409, "keyword_taken", None, None),
    (InsufficientPoints(128, 500), 409, "insufficient_points", None, None),
    (AlreadyDrawn("lottery 4 is already drawn"), 409, "already_drawn", None, None),
    (NoApprover("小王 has no approver"), 409, "no_approver", None, None),
    (CrmError("something the domain refuses"), 400, "crm_error", None, None),
    (StoreUnavailable("connection refused"), 503, "database_unavailable", None, "5"),
    (StoreConflict("duplicate key", "crm_members_merchant_id_phone_key"), 409, "conflict", None, None),
    (StoreError("statement timeout"), 503, "storage_error", None, "5"),
]


@pytest.mark.parametrize(("exc", "status", "code", "field", "retry_after"), CASES,
                         ids=[f"{type(c[0]).__name__}-{c[2]}" for c in CASES])
async def test_guarded_maps_each_error_kind(exc, status, code, field, retry_after):
    response = await guarded(_authenticate, _raising(exc))(_request())
    assert response.status == status
    err = _error(response)
    assert err["code"] == code
    assert err.get("field") == field
    assert _retry_after(response) == retry_after


async def test_guarded_messages_say_what_to_do():
    forbidden = _error(await guarded(_authenticate, _raising(Forbidden(Role.WAITER, Permission.POINTS_ADJUST)))(
        _request()))
    assert forbidden["message"] == "a waiter may not points.adjust: ask an owner or manager"
    clash = _error(await guarded(_authenticate, _raising(StoreConflict("dup", "crm_staff_merchant_id_phone_key")))(
        _request()))
    assert "crm_staff_merchant_id_phone_key" in clash["message"]
    points = _error(await guarded(_authenticate, _raising(InsufficientPoints(128, 500)))(_request()))
    assert points["message"] == "the balance is 128 points; 500 asked"


async def test_guarded_maps_errors_of_authentication_too():
    async def unauthorized(request: Request) -> Staff:
        raise ApiError(401, "unauthorized", "unknown or revoked staff token",
                       headers=[("WWW-Authenticate", 'Bearer realm="smsgw-crm"')])

    async def database_down(request: Request) -> Staff:
        raise StoreUnavailable("connection refused")

    called = []

    async def handler(request: Request, actor: Staff) -> Response:
        called.append(actor)
        return json_response({})

    response = await guarded(unauthorized, handler)(_request())
    assert response.status == 401 and _error(response)["code"] == "unauthorized"
    assert ("WWW-Authenticate", 'Bearer realm="smsgw-crm"') in response.headers
    response = await guarded(database_down, handler)(_request())
    assert (response.status, _error(response)["code"], _retry_after(response)) == (503, "database_unavailable", "5")
    assert called == []


async def test_guarded_passes_the_actor_and_path_parameters():
    async def handler(request: Request, actor: Staff, *, id: str) -> Response:
        return json_response({"actor": actor.id, "id": path_id(id, "thing")}, 201)

    response = await guarded(_authenticate, handler)(_request(), id="42")
    assert response.status == 201 and msgspec.json.decode(response.body) == {"actor": 7, "id": 42}


async def test_guarded_leaves_programming_errors_alone():
    # Not an error kind it knows: the server's 500 and its log line, not a made-up 4xx.
    with pytest.raises(ZeroDivisionError):
        await guarded(_authenticate, _raising(ZeroDivisionError("division by zero")))(_request())


async def test_add_routes_guards_every_route():
    async def ok(request: Request, actor: Staff, *, id: str) -> Response:
        return json_response({"id": path_id(id, "thing", code="thing_not_found")})

    router = Router()
    add_routes(router, _authenticate, [("GET", "/v1/crm/things/{id}", ok),
                                       ("POST", "/v1/crm/things", _raising(InvalidInput("name", "name is empty")))])
    response = await router(_request("/v1/crm/things/5"))
    assert response.status == 200 and msgspec.json.decode(response.body) == {"id": 5}
    response = await router(_request("/v1/crm/things/x5"))
    assert response.status == 404 and _error(response)["code"] == "thing_not_found"
    response = await router(_request("/v1/crm/things", method="POST", body=b"{}"))
    assert response.status == 400 and _error(response) == {"code": "invalid_field", "message": "name is empty",
                                                            "field": "name"}


# --- plumbing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "1.5", " 7", "²", "٣", "１", str(MAX_ID), "9" * 40, ""])
def test_path_id_refuses_what_names_no_resource(raw):
    with pytest.raises(ApiError) as caught:
        path_id(raw, "group", code="group_not_found")
    assert caught.value.status == 404 and caught.value.body.error.code == "group_not_found"


def test_path_id_takes_positive_ascii_integers():
    assert path_id("1", "lottery") == 1
    assert path_id(str(MAX_ID - 1), "lottery") == MAX_ID - 1
    with pytest.raises(ApiError) as caught:
        path_id("x", "lottery")
    assert caught.value.body.error.code == "not_found"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=25))
def test_path_id_never_fails_otherwise(raw):
    try:
        value = path_id(raw, "member")
    except ApiError as exc:
        assert exc.status == 404
    else:
        assert 0 < value < MAX_ID and raw.isascii() and int(raw) == value


def test_query_parameters():
    request = _request(query="limit=20&after=&phone=138&phone=139&sub=true")
    assert query_str(request, "phone") == "139"   # the last one counts
    assert query_str(request, "missing") is None
    assert query_int(request, "limit", 100, low=1, high=500) == 20
    assert query_int(request, "after", 7) == 7       # empty: the default
    assert query_int(request, "missing", 3) == 3
    for raw in ["0", "501", "-5", "--5", "²", "1e3", "abc", "20.0"]:
        with pytest.raises(ApiError) as caught:
            query_int(_request(query=f"limit={raw}"), "limit", 100, low=1, high=500)
        err = caught.value.body.error
        assert (caught.value.status, err.code, err.field) == (400, "invalid_field", "limit"), raw


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=25))
def test_query_int_never_fails_otherwise(raw):
    request = _request(query=f"after={raw}")
    try:
        value = query_int(request, "after", 0, low=0, high=2**31 - 1)
    except ApiError as exc:
        assert exc.status == 400 and exc.body.error.field == "after"
    else:
        assert 0 <= value <= 2**31 - 1


class _Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    stock: int


def test_decode_names_the_field():
    assert decode(b'{"name": "x", "stock": 2}', _Body) == _Body(name="x", stock=2)
    cases = [(b"", "invalid_json", None), (b"{", "invalid_json", None),
             (b'{"name": "x"}', "invalid_field", "stock"), (b'{"name": "x", "stock": "2"}', "invalid_field", "stock"),
             (b'{"name": "x", "stock": 2, "colour": 1}', "invalid_field", "colour")]
    for body, code, field in cases:
        with pytest.raises(ApiError) as caught:
            decode(body, _Body)
        err = caught.value.body.error
        assert (caught.value.status, err.code, err.field) == (400, code, field), body


async def test_guarded_logs_the_route_of_a_store_failure(caplog):
    caplog.set_level("WARNING", logger="crm_lite.restkit")
    await guarded(_authenticate, _raising(StoreUnavailable("connection refused")), route="GET /v1/crm/x")(_request())
    await guarded(_authenticate, _raising(StoreError("statement timeout")))(_request())
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "database unavailable route=GET /v1/crm/x error=connection refused"
    assert lines[1].startswith("store error route=_raising.<locals>.handler error=statement timeout")
