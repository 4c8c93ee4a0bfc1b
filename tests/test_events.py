"""The event bus: bounded per subscriber, drops counted, transitions published by the store."""

from __future__ import annotations

import trio

from gateway.events import EventBus, LinkEvent, MtEvent
from tests.channels import ScriptedChannel
from tests.conftest import start_gateway


def link(n: int) -> LinkEvent:
    return LinkEvent(channel=f"c{n}", up=True)


async def test_nobody_listening_costs_nothing_and_keeps_nothing():
    bus = EventBus()
    assert not bus.active
    bus.publish(link(1))
    assert bus.statistics() == {"subscribers": 0, "published": 0}


async def test_each_subscriber_gets_every_event_in_order():
    bus = EventBus()
    with bus.subscribe() as a, bus.subscribe() as b:
        for i in range(5):
            bus.publish(link(i))
        got_a, dropped_a = await a.receive()
        got_b, _ = await b.receive(max_events=2)
        assert [e.channel for e in got_a] == ["c0", "c1", "c2", "c3", "c4"] and dropped_a == 0
        assert [e.channel for e in got_b] == ["c0", "c1"]
        assert b.pending() == 3
    assert not bus.active


async def test_a_slow_subscriber_loses_events_and_is_told_how_many():
    bus = EventBus()
    with bus.subscribe(size=3) as slow, bus.subscribe(size=100) as fast:
        for i in range(10):
            bus.publish(link(i))
        events, dropped = await slow.receive()
        assert [e.channel for e in events] == ["c0", "c1", "c2"] and dropped == 7
        assert len((await fast.receive())[0]) == 10
        bus.publish(link(99))
        events, dropped = await slow.receive()
        assert [e.channel for e in events] == ["c99"] and dropped == 0
        assert slow.dropped_total == 7


async def test_receive_waits_for_the_next_event():
    bus = EventBus()
    with bus.subscribe() as sub:
        async with trio.open_nursery() as nursery:
            got: list = []

            async def reader():
                got.append(await sub.receive())

            nursery.start_soon(reader)
            await trio.sleep(0.01)
            assert got == []
            bus.publish(link(7))
        assert got[0][0][0].channel == "c7"


async def test_message_transitions_reach_the_bus(nursery, database_url):
    ch = ScriptedChannel()
    gw = await start_gateway(nursery, database_url, channels=[ch])
    with gw.running.bus.subscribe() as sub:
        async with gw.client() as c:
            r = await c.post("/v1/messages", json={"to": "13800138000", "text": "hi", "class": "marketing"})
        mid = int(r.json()["messages"][0]["id"])
        seen: list[MtEvent] = []
        with trio.fail_after(10):
            while not any(e.status == "submitted" for e in seen):
                events, _ = await sub.receive()
                seen += [e for e in events if isinstance(e, MtEvent) and e.id == mid]
            await ch.report("fake-1")
            while not any(e.status == "delivered" for e in seen):
                events, _ = await sub.receive()
                seen += [e for e in events if isinstance(e, MtEvent) and e.id == mid]
    assert [e.status for e in seen] == ["accepted", "queued", "submitted", "delivered"]
    assert {e.to for e in seen} == {"13800138000"} and {e.account_id for e in seen} == {gw.account.id}
    assert seen[0].msg_class == "marketing" and seen[2].channel == "fake"
