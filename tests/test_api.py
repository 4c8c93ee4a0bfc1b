"""The HTTP API against a real gateway on a real PostgreSQL (SPEC.md "HTTP API")."""

from __future__ import annotations

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api import ApiError, build_accept, decode_send


async def count_messages(store) -> int:
    return await store.fetchval("SELECT count(*) FROM messages")


async def test_send_is_stored_before_202_and_readable(gateway):
    async with gateway.client() as c:
        r = await c.post("/v1/messages", json={"to": "+86 138-0013-8000", "text": "你好，欢迎光临！"})
        assert r.status_code == 202
        (m,) = r.json()["messages"]
        assert m["to"] == "13800138000" and m["status"] == "accepted" and m["parts"] == 1
        # Durable before acknowledged: the row is committed by the time we read the 202.
        row = await gateway.store.fetchrow("SELECT dest, body, status FROM messages WHERE id = $1", int(m["id"]))
        assert tuple(row) == ("13800138000", "你好，欢迎光临！", "accepted")
        r = await c.get(f"/v1/messages/{m['id']}")
        assert r.status_code == 200
        body = r.json()
        assert body["id"] == m["id"] and body["text"] == "你好，欢迎光临！" and body["to"] == "13800138000"
        assert body["status"] == "accepted" and body["channel"] is None and body["parts"] == 1
        assert [e["status"] for e in body["events"]] == ["accepted"]
        assert body["created_at"].endswith("Z")


async def test_batch_of_recipients_and_parts(gateway):
    to = [f"1380013{i:04d}" for i in range(100)]
    async with gateway.client() as c:
        r = await c.post("/v1/messages", json={"to": to, "text": "a" * 161, "class": "marketing", "priority": 2})
    assert r.status_code == 202
    msgs = r.json()["messages"]
    assert [m["to"] for m in msgs] == to
    assert all(m["parts"] == 2 for m in msgs)
    assert len({m["id"] for m in msgs}) == 100
    assert await count_messages(gateway.store) == 100
    assert await gateway.store.fetchval("SELECT count(*) FROM outbound_queue WHERE priority = 2") == 100


async def test_duplicate_numbers_in_one_request_are_sent_once(gateway):
    async with gateway.client() as c:
        r = await c.post("/v1/messages", json={"to": ["13800138000", "+8613800138000", "8613800138000"], "text": "x"})
    assert r.status_code == 202
    assert len(r.json()["messages"]) == 1


async def test_errors_have_the_documented_shape_and_store_nothing(gateway):
    cases = [
        (b"{not json", 400, "invalid_json", None),
        (b"", 400, "invalid_json", None),
        (b"[]", 400, "invalid_field", None),
        (b'{"text": "x"}', 400, "invalid_field", "to"),
        (b'{"to": "13800138000"}', 400, "invalid_field", "text"),
        (b'{"to": "13800138000", "text": 5}', 400, "invalid_field", "text"),
        (b'{"to": "13800138000", "text": ""}', 400, "invalid_field", "text"),
        (b'{"to": "13800138000", "text": "x", "priority": 9}', 400, "invalid_field", "priority"),
        (b'{"to": "13800138000", "text": "x", "class": "spam"}', 400, "invalid_field", "class"),
        (b'{"to": "13800138000", "text": "x", "txt": "typo"}', 400, "invalid_field", "txt"),
        (b'{"to": "13800138000", "text": "x", "callback_url": "ftp://x"}', 400, "invalid_field", "callback_url"),
        (b'{"to": [], "text": "x"}', 400, "invalid_field", "to"),
        (b'{"to": "12345", "text": "x"}', 400, "invalid_number", "to"),
        (b'{"to": ["13800138000", "+44 20 7946 0958"], "text": "x"}', 400, "invalid_number", "to[1]"),
        (b'{"to": "13800138000", "text": "' + b"x" * 1600 + b'"}', 413, "text_too_long", "text"),
    ]
    async with gateway.client() as c:
        for body, status, code, field in cases:
            r = await c.post("/v1/messages", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (body[:60], r.text)
            err = r.json()["error"]
            assert err["code"] == code, (body[:60], err)
            assert err.get("field") == field, (body[:60], err)
            assert err["message"]
        r = await c.post("/v1/messages", json={"to": ["13800138000"] * 1001, "text": "x"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_recipients"
        r = await c.post("/v1/messages", json={"to": "12345", "text": "x"})
        assert "12345" in r.json()["error"]["message"]
    assert await count_messages(gateway.store) == 0


async def test_authentication(gateway):
    import httpx

    async with httpx.AsyncClient(base_url=gateway.url) as c:
        r = await c.post("/v1/messages", json={"to": "13800138000", "text": "x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert "Bearer" in r.headers["www-authenticate"]
        r = await c.post("/v1/messages", json={"to": "13800138000", "text": "x"},
                         headers={"Authorization": "Bearer smsgw_nope"})
        assert r.status_code == 401
        r = await c.get("/v1/messages/1", headers={"Authorization": "Basic eA=="})
        assert r.status_code == 401
    assert await count_messages(gateway.store) == 0


async def test_messages_are_private_to_their_account(gateway):
    other = await gateway.store.ensure_account("other")
    other_key = await gateway.store.create_api_key(other.id)
    async with gateway.client() as c:
        r = await c.post("/v1/messages", json={"to": "13800138000", "text": "x"})
        mid = r.json()["messages"][0]["id"]
        r = await c.get(f"/v1/messages/{mid}", headers={"Authorization": f"Bearer {other_key}"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        for bad in ("abc", "99999999", "1" * 40):
            r = await c.get(f"/v1/messages/{bad}")
            assert r.status_code == 404
        r = await c.delete("/v1/messages/1")
        assert r.status_code == 405


async def test_idempotency_under_concurrent_duplicates(gateway):
    results = []

    async def send(c):
        r = await c.post("/v1/messages", json={"to": ["13800138000", "13900000001"], "text": "once",
                                               "client_ref": "order-42"})
        results.append(r)

    async with gateway.client() as c:
        async with trio.open_nursery() as n:
            for _ in range(20):
                n.start_soon(send, c)
        # And again later, after the first batch committed.
        await send(c)
    assert all(r.status_code == 202 for r in results)
    id_sets = {tuple(m["id"] for m in r.json()["messages"]) for r in results}
    assert len(id_sets) == 1
    assert await count_messages(gateway.store) == 2
    # Another account may use the same client_ref independently.
    other = await gateway.store.ensure_account("other")
    key = await gateway.store.create_api_key(other.id)
    async with gateway.client() as c:
        r = await c.post("/v1/messages", json={"to": "13800138000", "text": "x", "client_ref": "order-42"},
                         headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 202 and r.json()["messages"][0]["id"] not in id_sets.pop()
    assert await count_messages(gateway.store) == 3


async def test_concurrent_requests_share_commits(gateway):
    async def send(c, i):
        r = await c.post("/v1/messages", json={"to": f"1390000{i:04d}", "text": f"n{i}"})
        assert r.status_code == 202

    async with gateway.client() as c:
        async with trio.open_nursery() as n:
            for i in range(300):
                n.start_soon(send, c, i)
    assert await count_messages(gateway.store) == 300
    h = gateway.running.metrics.intake_batch_rows
    batches = h.collect()[0].samples
    count = next(s.value for s in batches if s.name.endswith("_count"))
    assert count < 300, "concurrent requests should be grouped into fewer commits"


async def test_healthz_and_metrics(gateway):
    async with gateway.client() as c:
        r = await c.get("/healthz")
        # The database is up but no channel is configured: degraded, by SPEC.
        assert r.status_code == 503
        assert r.json() == {"status": "degraded", "database": "ok", "channels": {}}
        await c.post("/v1/messages", json={"to": "13800138000", "text": "x"})
        r = await c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert "smsgw_messages_accepted_total 1.0" in r.text
        assert 'smsgw_api_requests_total{code="202",route="send"} 1.0' in r.text
        assert "smsgw_queue_depth 1.0" in r.text


# --- the request decoder, property-tested --------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_decoder_never_fails_unexpectedly_on_bytes(data):
    try:
        req = decode_send(data, max_recipients=10)
    except ApiError as exc:
        assert exc.status in (400, 413)
        return
    assert isinstance(req.text, str)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["to", "text", "client_ref", "priority", "class", "validity_s",
                                        "callback_url", "sender", "other"]), _json_values, max_size=8))
def test_decoder_and_builder_accept_or_reject_cleanly(obj):
    import msgspec

    body = msgspec.json.encode(obj)
    try:
        req = decode_send(body, max_recipients=10)
        accept = build_accept(req, 1, max_parts=10)
    except ApiError as exc:
        assert exc.status in (400, 413)
        assert exc.body.error.code in {"invalid_json", "invalid_field", "invalid_number", "too_many_recipients",
                                       "text_too_long"}
        return
    assert accept.messages and all(len(m.dest) == 11 for m in accept.messages)
    assert 0 <= accept.priority <= 3
