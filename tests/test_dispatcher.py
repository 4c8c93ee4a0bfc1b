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
