"""Dispatcher and tracker over a scripted channel and a real PostgreSQL."""

from __future__ import annotations

import trio

from gateway.channel import Status
from tests.channels import ScriptedChannel
from tests.conftest import start_gateway


async def wait_status(store, message_id: int, status: str, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while True:
            got = await store.fetchval("SELECT status FROM messages WHERE id = $1", message_id)
            if got == status:
                return
            await trio.sleep(0.02)


async def send(gw, body) -> list[dict]:
    async with gw.client() as c:
        r = await c.post("/v1/messages", json=body)
    assert r.status_code == 202, r.text
    return r.json()["messages"]


async def test_message_goes_from_accepted_to_delivered(nursery, database_url):
    ch = ScriptedChannel()
    gw = await start_gateway(nursery, database_url, channels=[ch])
    (m,) = await send(gw, {"to": "13800138000", "text": "hello"})
    mid = int(m["id"])
    await wait_status(gw.store, mid, "submitted")
    assert [s.id for s in ch.submitted] == [mid]
    assert ch.submitted[0].parts == ("hello",) and ch.submitted[0].operator == "cmcc"
    assert await gw.store.fetchval("SELECT count(*) FROM outbound_queue") == 0
    await ch.report("fake-1")
    await wait_status(gw.store, mid, "delivered")
    async with gw.client() as c:
        detail = (await c.get(f"/v1/messages/{mid}")).json()
        health = await c.get("/healthz")
    assert [e["status"] for e in detail["events"]] == ["accepted", "queued", "submitted", "delivered"]
    assert detail["channel"] == "fake"
    assert health.status_code == 200 and health.json()["channels"] == {"fake": "up"}


async def test_long_message_is_delivered_only_when_every_part_is(nursery, database_url):
    ch = ScriptedChannel()
    gw = await start_gateway(nursery, database_url, channels=[ch])
    (m,) = await send(gw, {"to": "13800138000", "text": "长" * 150})
    mid = int(m["id"])
    assert m["parts"] == 3
    await wait_status(gw.store, mid, "submitted")
    assert len(ch.submitted[0].parts) == 3
    await ch.report("fake-1")
    await ch.report("fake-3")
    await trio.sleep(0.3)
    assert await gw.store.fetchval("SELECT status FROM messages WHERE id = $1", mid) == "submitted"
    await ch.report("fake-2")
    await wait_status(gw.store, mid, "delivered")


async def test_a_failed_part_makes_the_message_final_and_final_is_final(nursery, database_url):
    ch = ScriptedChannel()
    gw = await start_gateway(nursery, database_url, channels=[ch])
    (m,) = await send(gw, {"to": "13800138000", "text": "x"})
    mid = int(m["id"])
    await wait_status(gw.store, mid, "submitted")
    await ch.report("fake-1", Status.UNDELIVERABLE, "UNDELIV")
    await wait_status(gw.store, mid, "undeliverable")
    await ch.report("fake-1", Status.DELIVERED)  # a late, contradicting report
    await trio.sleep(0.3)
    row = await gw.store.fetchrow("SELECT status, error_code FROM messages WHERE id = $1", mid)
    assert tuple(row) == ("undeliverable", "UNDELIV")


async def test_report_racing_ahead_of_its_submit_is_held_not_dropped(nursery, database_url):
    ch = ScriptedChannel(auto_ack=False)
    gw = await start_gateway(nursery, database_url, channels=[ch])
    (m,) = await send(gw, {"to": "13800138000", "text": "x"})
    mid = int(m["id"])
    with trio.fail_after(10):
        await ch.got_message.wait()
    # The report comes first (another node's link, a fast operator)...
    await ch.report("fake-1")
    await trio.sleep(0.2)
    assert gw.running.dispatcher.statistics()["held_reports"] == 1
    # ...then the submit acknowledgement is stored; the held report now finds its message.
    await ch.ack(ch.submitted[0], 1)
    await wait_status(gw.store, mid, "delivered")
    assert gw.running.dispatcher.statistics()["held_reports"] == 0


async def test_transient_failure_is_retried_permanent_fails(nursery, database_url):
    ch = ScriptedChannel(auto_ack=False)
    gw = await start_gateway(nursery, database_url, channels=[ch])
    (a,) = await send(gw, {"to": "13800138000", "text": "transient"})
    with trio.fail_after(10):
        await ch.got_message.wait()
    await ch.fail(ch.submitted[0], transient=True, reason="link down")
    with trio.fail_after(10):
        while len(ch.submitted) < 2:
            await trio.sleep(0.05)
    assert ch.submitted[1].id == int(a["id"]) and ch.submitted[1].attempts == 2
    await ch.fail(ch.submitted[1], transient=False, reason="invalid destination")
    await wait_status(gw.store, int(a["id"]), "failed")
    events = await gw.store.fetch("SELECT status, detail FROM message_events WHERE message_id = $1 ORDER BY at",
                                  int(a["id"]))
    assert ("queued", "retry: link down") in [tuple(e) for e in events]
    assert await gw.store.fetchval("SELECT count(*) FROM outbound_queue") == 0


class RefusingChannel(ScriptedChannel):
    """Refuses one text the way a protocol driver refuses a request it cannot frame."""

    async def submit(self, message):
        if "".join(message.parts) == "cannot":
            from gateway.cmpp.errors import LocalProtocolError

            raise LocalProtocolError("Msg_Content of 200 bytes exceeds 140")
        await super().submit(message)


async def test_a_message_the_channel_refuses_fails_alone(nursery, database_url):
    ch = RefusingChannel()
    gw = await start_gateway(nursery, database_url, channels=[ch])
    (bad,) = await send(gw, {"to": "13800138000", "text": "cannot"})
    await wait_status(gw.store, int(bad["id"]), "failed")
    (good,) = await send(gw, {"to": "13800138001", "text": "can"})
    await wait_status(gw.store, int(good["id"]), "submitted")
    detail = await gw.store.fetchval(
        "SELECT detail FROM message_events WHERE message_id = $1 AND status = 'failed'", int(bad["id"]))
    assert "cannot send it" in detail and "exceeds 140" in detail


async def test_no_channel_for_the_operator_keeps_the_message_queued(nursery, database_url):
    ch = ScriptedChannel(operators=("cucc",))
    gw = await start_gateway(nursery, database_url, channels=[ch])
    (m,) = await send(gw, {"to": "13800138000", "text": "cmcc number"})
    await trio.sleep(0.5)
    assert ch.submitted == []
    assert await gw.store.fetchval("SELECT status FROM messages WHERE id = $1", int(m["id"])) == "accepted"
    assert await gw.store.fetchval("SELECT count(*) FROM outbound_queue") == 1


async def test_high_priority_overtakes_queued_ones(nursery, database_url):
    ch = ScriptedChannel(room=0)
    gw = await start_gateway(nursery, database_url, channels=[ch])
    await send(gw, {"to": [f"1380013{i:04d}" for i in range(20)], "text": "promo", "class": "marketing"})
    (otp,) = await send(gw, {"to": "13900000001", "text": "code 1234", "priority": 3})
    ch.room = 1
    with trio.fail_after(10):
        await ch.got_message.wait()
    assert ch.submitted[0].id == int(otp["id"])


async def test_mo_is_stored(nursery, database_url):
    ch = ScriptedChannel()
    gw = await start_gateway(nursery, database_url, channels=[ch])
    await ch.mo("13900000001", "1")
    with trio.fail_after(10):
        while not await gw.store.fetchval("SELECT count(*) FROM inbound_messages"):
            await trio.sleep(0.02)
    row = await gw.store.fetchrow("SELECT channel, sender, service_number, body FROM inbound_messages")
    assert tuple(row) == ("fake", "13900000001", "10658888", "1")


async def test_a_screen_rejects_messages_before_routing(nursery, database_url):
    ch = ScriptedChannel()
    gw = await start_gateway(nursery, database_url, channels=[ch])

    async def screen(messages):
        return {m.id: "blocklisted" for m in messages if m.dest == "13900000000"}

    gw.running.dispatcher._screen = screen
    a = await send(gw, {"to": "13800138000", "text": "ok"})
    b = await send(gw, {"to": "13900000000", "text": "no"})
    await wait_status(gw.store, int(a[0]["id"]), "submitted")
    await wait_status(gw.store, int(b[0]["id"]), "rejected")
    row = await gw.store.fetchrow("SELECT error_code FROM messages WHERE id = $1", int(b[0]["id"]))
    assert row["error_code"] == "blocklisted"
    assert [m.dest for m in ch.submitted] == ["13800138000"]
    assert await gw.store.fetchval("SELECT count(*) FROM outbound_queue") == 0


# --- routing rules, fallbacks, retries on another channel, recipient limits ----------------------

from gateway.config import AccountConfig, DispatcherConfig, LimitsConfig  # noqa: E402
from gateway.events import LimitEvent  # noqa: E402
from gateway.router import RouteRule  # noqa: E402


async def wait_submitted(ch: ScriptedChannel, n: int, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while len(ch.submitted) < n:
            await trio.sleep(0.02)


async def test_rules_route_by_prefix_operator_account_and_class(nursery, database_url):
    cmcc, bulk, modems = (ScriptedChannel("cmcc-1", ("cmcc",)), ScriptedChannel("bulk", ("cmcc", "cucc")),
                          ScriptedChannel("modems", ("cucc", "ctcc")))
    routes = [
        RouteRule(name="vip", prefixes=["1390000"], channels=["cmcc-1"]),
        RouteRule(name="shop-marketing", accounts=["shop"], msg_class="marketing", channels=["bulk"]),
        RouteRule(name="unicom", operators=["cucc"], channels=["modems", "bulk"]),
        RouteRule(name="marketing", msg_class="marketing", channels=["bulk"]),
    ]
    gw = await start_gateway(nursery, database_url, channels=[cmcc, bulk, modems], routes=routes,
                             accounts=[AccountConfig(name="acme"), AccountConfig(name="shop")])
    shop = await gw.store.ensure_account("shop")
    shop_key = await gw.store.create_api_key(shop.id)
    vip = (await send(gw, {"to": "13900000001", "text": "a", "class": "marketing"}))[0]
    uni = (await send(gw, {"to": "18600000001", "text": "b", "class": "marketing"}))[0]
    promo = (await send(gw, {"to": "13800138000", "text": "c", "class": "marketing"}))[0]
    plain = (await send(gw, {"to": "13800138001", "text": "d"}))[0]
    gw.headers = {"Authorization": f"Bearer {shop_key}"}
    shop_uni = (await send(gw, {"to": "18600000002", "text": "e", "class": "marketing"}))[0]
    for m in (vip, uni, promo, plain, shop_uni):
        await wait_status(gw.store, int(m["id"]), "submitted")
    got = {int(m.id): name for name, ch in (("cmcc-1", cmcc), ("bulk", bulk), ("modems", modems))
           for m in ch.submitted}
    assert got == {int(vip["id"]): "cmcc-1", int(uni["id"]): "modems", int(promo["id"]): "bulk",
                   int(shop_uni["id"]): "bulk",  # the account rule comes before the operator rule
                   # no rule matches a transactional cmcc message: the default route, most room
                   int(plain["id"]): got[int(plain["id"])]}
    assert got[int(plain["id"])] in ("cmcc-1", "bulk")
    assert await gw.store.fetchval("SELECT channel FROM messages WHERE id = $1", int(uni["id"])) == "modems"


async def test_fallback_when_preferred_is_down_and_queued_while_none_can_take_it(nursery, database_url):
    primary, backup = ScriptedChannel("primary", ("cmcc",)), ScriptedChannel("backup", ("cmcc",))
    routes = [RouteRule(name="cmcc", operators=["cmcc"], channels=["primary", "backup"])]
    gw = await start_gateway(nursery, database_url, channels=[primary, backup], routes=routes)
    first = (await send(gw, {"to": "13800138000", "text": "1"}))[0]
    await wait_status(gw.store, int(first["id"]), "submitted")
    assert [m.id for m in primary.submitted] == [int(first["id"])] and backup.submitted == []
    primary.up = False
    second = (await send(gw, {"to": "13800138000", "text": "2"}))[0]
    await wait_status(gw.store, int(second["id"]), "submitted")
    assert [m.id for m in backup.submitted] == [int(second["id"])]
    # Neither can take it (one down, one full): queued, not failed, until one can.
    backup.room = len(backup.submitted)
    with gw.running.bus.subscribe() as sub:
        third = (await send(gw, {"to": "13800138000", "text": "3"}))[0]
        await trio.sleep(1.5)
        assert await gw.store.fetchval("SELECT status FROM messages WHERE id = $1", int(third["id"])) == "accepted"
        assert await gw.store.fetchval("SELECT count(*) FROM outbound_queue") == 1
        events, _ = await sub.receive()
    assert any(isinstance(e, LimitEvent) and e.scope == "channel" and e.name == "backup" for e in events)
    primary.up = True
    await wait_status(gw.store, int(third["id"]), "submitted")
    assert primary.submitted[-1].id == int(third["id"])


async def test_a_message_nothing_can_take_expires_when_its_validity_runs_out(nursery, database_url):
    ch = ScriptedChannel("only", ("cucc",))
    gw = await start_gateway(nursery, database_url, channels=[ch])
    (m,) = await send(gw, {"to": "13800138000", "text": "no channel serves cmcc", "validity_s": 60})
    await trio.sleep(0.3)
    await gw.store.execute("UPDATE messages SET expires_at = now() WHERE id = $1", int(m["id"]))
    await wait_status(gw.store, int(m["id"]), "expired", timeout=15)
    assert ch.submitted == [] and await gw.store.fetchval("SELECT count(*) FROM outbound_queue") == 0


async def test_a_transient_failure_is_retried_on_another_channel(nursery, database_url):
    a = ScriptedChannel("a", ("cmcc",), auto_ack=False)
    b = ScriptedChannel("b", ("cmcc",), auto_ack=False)
    gw = await start_gateway(nursery, database_url, channels=[a, b],
                             routes=[RouteRule(name="r", operators=["cmcc"], channels=["a", "b"])])
    (m,) = await send(gw, {"to": "13800138000", "text": "x"})
    await wait_submitted(a, 1)
    await a.fail(a.submitted[0], transient=True, reason="link down")
    await wait_submitted(b, 1)
    assert b.submitted[0].id == int(m["id"]) and b.submitted[0].attempts == 2 and len(a.submitted) == 1
    assert await gw.store.fetchval("SELECT last_channel FROM outbound_queue WHERE message_id = $1",
                                   int(m["id"])) == "a"
    await b.ack(b.submitted[0], 1)
    await wait_status(gw.store, int(m["id"]), "submitted")
    events = [tuple(e) for e in await gw.store.fetch(
        "SELECT status, detail FROM message_events WHERE message_id = $1 ORDER BY at", int(m["id"]))]
    assert events == [("queued", "channel=a"), ("queued", "retry: link down"), ("queued", "channel=b"),
                      ("submitted", "channel=b")]
    metrics = gw.running.metrics.exposition().decode()
    assert 'smsgw_message_retries_total{channel="a"} 1.0' in metrics


async def test_priority_overtakes_queued_marketing_while_the_claim_loop_is_saturated(nursery, database_url):
    ch = ScriptedChannel(room=0)
    gw = await start_gateway(nursery, database_url, channels=[ch])
    await send(gw, {"to": [f"1380013{i:04d}" for i in range(120)], "text": "promo", "class": "marketing"})

    async def trickle() -> None:  # the channel frees a little room at a time: always saturated
        while True:
            ch.room += 3
            await trio.sleep(0.05)

    nursery.start_soon(trickle)
    await wait_submitted(ch, 15)
    ahead = len(ch.submitted)
    (otp,) = await send(gw, {"to": "13900000001", "text": "code 1234", "priority": 3})
    with trio.fail_after(10):
        while int(otp["id"]) not in {m.id for m in ch.submitted}:
            await trio.sleep(0.01)
    position = [m.id for m in ch.submitted].index(int(otp["id"]))
    # Only what was already claimed when the code arrived went before it.
    assert position <= ahead + 12, (position, ahead)
    assert position < 120


async def test_recipient_limit_holds_the_rest_until_the_window_allows(nursery, database_url):
    ch = ScriptedChannel()
    gw = await start_gateway(nursery, database_url, channels=[ch],
                             limits=LimitsConfig(recipient_per_hour=2, recipient_exempt_transactional=True))
    with gw.running.bus.subscribe() as sub:
        ids = [int((await send(gw, {"to": "13800138000", "text": f"promo {i}", "class": "marketing"}))[0]["id"])
               for i in range(4)]
        otp = int((await send(gw, {"to": "13800138000", "text": "code 1"}))[0]["id"])
        await wait_status(gw.store, otp, "submitted")  # transactional: exempt by configuration
        await wait_submitted(ch, 3)
        await trio.sleep(0.5)
        events, _ = await sub.receive()
    assert sorted(m.id for m in ch.submitted) == sorted(ids[:2] + [otp])
    held = await gw.store.fetch(
        "SELECT message_id, extract(epoch FROM not_before - now()) AS wait FROM outbound_queue ORDER BY message_id")
    assert [r["message_id"] for r in held] == ids[2:]
    assert all(3400 < r["wait"] <= 3600 for r in held)
    assert [r["status"] for r in await gw.store.fetch(
        "SELECT status FROM messages WHERE id = ANY($1::bigint[])", ids[2:])] == ["accepted", "accepted"]
    limit = [e for e in events if isinstance(e, LimitEvent) and e.scope == "recipient"]
    assert limit and limit[0].name == "138****8000" and 3400 < limit[0].wait_s <= 3600
    assert await gw.store.fetchval("SELECT count(*) FROM recipient_sends") == 2
    # An hour later (the counted sends age out of the window) the held ones go.
    await gw.store.execute("UPDATE recipient_sends SET at = at - interval '1 hour'")
    await gw.store.execute("UPDATE outbound_queue SET not_before = now()")
    gw.running.dispatcher.wake()
    await wait_submitted(ch, 5)
    assert sorted(m.id for m in ch.submitted) == sorted(ids + [otp])


async def test_recipient_limit_holds_across_two_nodes_sharing_the_database(nursery, database_url):
    chans = [ScriptedChannel("a"), ScriptedChannel("b")]
    limits = LimitsConfig(recipient_per_hour=3)
    gws = [await start_gateway(nursery, database_url, channels=[ch], limits=limits,
                               dispatcher=DispatcherConfig(quiet_hours="", node_id=f"node-{ch.name}", batch_size=2))
           for ch in chans]
    # Both nodes race for 20 messages to one number (and 4 to another).
    async with gws[0].client() as c:
        r = await c.post("/v1/messages", json={"to": ["13800138000"] * 1 + ["13800138001"], "text": "x"})
        assert r.status_code == 202
    for i in range(19):
        await send(gws[i % 2], {"to": "13800138000", "text": f"n{i}", "client_ref": f"r{i}"})
    for i in range(3):
        await send(gws[i % 2], {"to": "13800138001", "text": f"m{i}"})
    await trio.sleep(2.0)
    sent = [m.dest for ch in chans for m in ch.submitted]
    assert sent.count("13800138000") == 3 and sent.count("13800138001") == 3
    assert await gws[0].store.fetchval("SELECT count(*) FROM outbound_queue") == 18


async def test_quiet_hours_hold_marketing_and_publish_a_limit_event(nursery, database_url, monkeypatch):
    from datetime import datetime, timedelta, timezone

    import gateway.dispatcher

    monkeypatch.setattr(gateway.dispatcher, "QUIET_EVENT_EVERY", 0.2)

    now = datetime.now(timezone.utc)
    span = f"{(now - timedelta(hours=1)):%H:%M}-{(now + timedelta(hours=1)):%H:%M}"
    ch = ScriptedChannel()
    gw = await start_gateway(nursery, database_url, channels=[ch],
                             dispatcher=DispatcherConfig(quiet_hours=span, timezone="UTC"))
    with gw.running.bus.subscribe() as sub:
        promo = (await send(gw, {"to": "13800138000", "text": "sale", "class": "marketing"}))[0]
        otp = (await send(gw, {"to": "13800138001", "text": "code 1"}))[0]
        await wait_status(gw.store, int(otp["id"]), "submitted")
        await trio.sleep(0.3)
        events, _ = await sub.receive()
    assert [m.id for m in ch.submitted] == [int(otp["id"])]
    assert await gw.store.fetchval("SELECT status FROM messages WHERE id = $1", int(promo["id"])) == "accepted"
    quiet = [e for e in events if isinstance(e, LimitEvent) and e.scope == "quiet_hours"]
    assert quiet and all(3000 < e.wait_s <= 3660 and e.name == "marketing" for e in quiet)
