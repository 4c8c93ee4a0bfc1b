"""The CMPP channel in the gateway: HTTP in, CMPP over real TCP to the ISMG simulator, reports back."""

from __future__ import annotations

import trio

from gateway.channel import OutboundMessage, Status
from gateway.cmpp import IsmgSimulator
from gateway.cmpp_channel import CmppChannel, encode_parts, stat_status
from gateway.config import CmppConfig
from tests.conftest import start_gateway
from tests.test_dispatcher import send, wait_status


def cmpp_config(port: int, **kw) -> CmppConfig:
    base = dict(name="cmcc-1", host="127.0.0.1", port=port, version="3.0", sp_id="901234", secret="s3cret",
                service_number="10658888", window=16, rate=1000.0, operators=["cmcc"])
    base.update(kw)
    return CmppConfig(**base)


async def start_stack(nursery, database_url, sim: IsmgSimulator, **kw):
    port = await nursery.start(sim.serve, "127.0.0.1", 0)
    channel = CmppChannel(cmpp_config(port, **kw))
    gw = await start_gateway(nursery, database_url, channels=[channel])
    with trio.fail_after(10):
        await sim.wait_logged_in()
    return gw, channel


async def test_message_to_china_mobile_ends_delivered(nursery, database_url):
    sim = IsmgSimulator(sp_id="901234", secret="s3cret", dlr_delay=0.05)
    gw, channel = await start_stack(nursery, database_url, sim)
    short, = await send(gw, {"to": "13800138000", "text": "Your code is 1234"})
    long_zh, = await send(gw, {"to": "13800138001", "text": "尊敬的会员，" + "本周末全场商品八折优惠，欢迎光临。" * 8})
    assert long_zh["parts"] > 1
    await wait_status(gw.store, int(short["id"]), "delivered")
    await wait_status(gw.store, int(long_zh["id"]), "delivered")
    async with gw.client() as c:
        detail = (await c.get(f"/v1/messages/{long_zh['id']}")).json()
        health = await c.get("/healthz")
    assert detail["channel"] == "cmcc-1"
    assert [e["status"] for e in detail["events"]] == ["accepted", "queued", "submitted", "delivered"]
    assert health.status_code == 200 and health.json()["channels"] == {"cmcc-1": "up"}
    refs = await gw.store.fetchval("SELECT count(*) FROM message_refs WHERE message_id = $1", int(long_zh["id"]))
    assert refs == long_zh["parts"]
    async with gw.client() as c:
        metrics = (await c.get("/metrics")).text
    assert 'smsgw_link_up{channel="cmcc-1",link="cmcc-1"} 1.0' in metrics
    assert 'smsgw_link_window_size{channel="cmcc-1",link="cmcc-1"} 16.0' in metrics
    assert 'smsgw_link_window_used{channel="cmcc-1",link="cmcc-1"}' in metrics
    assert f'smsgw_link_submits_acked_total{{channel="cmcc-1",link="cmcc-1"}} {1 + long_zh["parts"]}.0' in metrics


async def test_undeliverable_report_is_final_with_the_operator_code(nursery, database_url):
    sim = IsmgSimulator(sp_id="901234", secret="s3cret", outcomes={"UNDELIV": 1.0})
    gw, _ = await start_stack(nursery, database_url, sim)
    m, = await send(gw, {"to": "13800138000", "text": "x"})
    await wait_status(gw.store, int(m["id"]), "undeliverable")
    assert await gw.store.fetchval("SELECT error_code FROM messages WHERE id = $1", int(m["id"])) == "UNDELIV"


async def test_mo_through_the_ismg_reaches_the_store_reassembled(nursery, database_url):
    sim = IsmgSimulator(sp_id="901234", secret="s3cret")
    gw, _ = await start_stack(nursery, database_url, sim)
    text = "我想查询积分，" * 15
    with trio.fail_after(10):
        parts = await sim.inject_mo("8613900000001", "10658888001", text)
    assert parts > 1
    with trio.fail_after(10):
        while not await gw.store.fetchval("SELECT count(*) FROM inbound_messages"):
            await trio.sleep(0.02)
    row = await gw.store.fetchrow("SELECT channel, sender, service_number, body FROM inbound_messages")
    assert tuple(row) == ("cmcc-1", "13900000001", "10658888001", text)


async def test_messages_survive_a_dropped_connection(nursery, database_url):
    sim = IsmgSimulator(sp_id="901234", secret="s3cret", dlr_delay=0.05)
    gw, channel = await start_stack(nursery, database_url, sim)
    first = await send(gw, {"to": [f"1380013{i:04d}" for i in range(50)], "text": "before the drop"})
    sim.drop_connections()
    second = await send(gw, {"to": [f"1390013{i:04d}" for i in range(50)], "text": "during the drop"})
    for m in first + second:
        await wait_status(gw.store, int(m["id"]), "delivered", timeout=30)


def test_stat_words_map_to_spec_statuses():
    assert stat_status("DELIVRD") is Status.DELIVERED
    assert stat_status("EXPIRED") is Status.EXPIRED
    assert stat_status("REJECTD") is Status.REJECTED
    assert stat_status("UNDELIV") is Status.UNDELIVERABLE
    assert stat_status("MK:0001") is Status.UNDELIVERABLE
    assert stat_status("ACCEPTD") is None


def test_parts_are_cut_by_the_cmpp_limits():
    from datetime import datetime, timezone

    from gateway.text import plan

    def msg(text):
        p = plan(text)
        return OutboundMessage(id=1, account_id=1, dest="13800138000", operator="cmcc", encoding=p.encoding,
                               parts=p.parts, priority=0, msg_class="transactional", sender="",
                               expires_at=datetime.now(timezone.utc))

    (fmt, udhi, content), = encode_parts(msg("hello"), 7)
    assert (fmt, udhi, content) == (0, 0, b"hello")
    parts = encode_parts(msg("你" * 70), 7)
    assert [(f, u) for f, u, _ in parts] == [(8, 0)] and len(parts[0][2]) == 140
    parts = encode_parts(msg("你" * 71), 9)
    assert len(parts) == 2 and all(f == 8 and u == 1 for f, u, _ in parts)
    assert parts[0][2][:6] == bytes([5, 0, 3, 9, 2, 1]) and parts[1][2][:6] == bytes([5, 0, 3, 9, 2, 2])
    assert len(parts[0][2]) == 6 + 134
    parts = encode_parts(msg("a" * 300), 1)  # two GSM parts, three SUBMITs of 134 ASCII bytes at most
    assert [(f, u, len(c)) for f, u, c in parts] == [(0, 1, 140), (0, 1, 140), (0, 1, 6 + 32)]
    (fmt, udhi, content), = encode_parts(msg("a" * 140), 1)
    assert (fmt, udhi, len(content)) == (0, 0, 140)
    parts = encode_parts(msg("a" * 160), 1)  # one GSM part; Msg_Content holds 140 bytes
    assert [(f, u, len(c)) for f, u, c in parts] == [(0, 1, 140), (0, 1, 6 + 26)]
    parts = encode_parts(msg("é" * 100), 1)  # GSM 7-bit but not ASCII: UCS2, 67 characters a part
    assert [(f, u, len(c)) for f, u, c in parts] == [(8, 1, 140), (8, 1, 6 + 66)]
    assert b"".join(c[6:] for _, _, c in parts).decode("utf-16-be") == "é" * 100
    (fmt, udhi, content), = encode_parts(msg("{" * 100), 1)  # two GSM parts (escapes), 100 bytes
    assert (fmt, udhi, content) == (0, 0, b"{" * 100)
    parts = encode_parts(msg("😀" * 40), 3)  # a surrogate pair is never cut
    assert [len(c) - 6 for _, _, c in parts] == [132, 28]


async def test_texts_the_ismg_takes_in_another_number_of_parts_end_delivered(nursery, database_url):
    # 160 ASCII characters do not fit one Msg_Content of 140 bytes, "é" makes a GSM text UCS2
    # and GSM escapes take one ASCII byte: each ends delivered, its parts as the ISMG took them.
    sim = IsmgSimulator(sp_id="901234", secret="s3cret", dlr_delay=0.05)
    gw, _ = await start_stack(nursery, database_url, sim)
    cases = {"x" * 160: (1, 2), "é" * 100: (1, 2), "y" * 300: (2, 3), "{" * 100: (2, 1)}
    sent = {}
    for i, (text, (planned, _)) in enumerate(cases.items()):
        m, = await send(gw, {"to": f"1380013800{i}", "text": text})
        assert m["parts"] == planned
        sent[text] = m
    for text, m in sent.items():
        await wait_status(gw.store, int(m["id"]), "delivered")
        async with gw.client() as c:
            detail = (await c.get(f"/v1/messages/{m['id']}")).json()
        assert detail["parts"] == cases[text][1] and detail["text"] == text
        refs = await gw.store.fetchval("SELECT count(*) FROM message_refs WHERE message_id = $1", int(m["id"]))
        assert refs == cases[text][1]


async def test_a_transiently_rejected_part_is_retried_alone(nursery, database_url):
    # Every part refused with a transient Result (9: "other") 30% of the time: each part is
    # retried on its own until accepted, so the operator accepts each part exactly once.
    sim = IsmgSimulator(sp_id="901234", secret="s3cret", fail_rate=0.3, fail_result=9, seed=7)
    port = await nursery.start(sim.serve, "127.0.0.1", 0)
    channel = CmppChannel(cmpp_config(port), part_retry_delay=0.01)
    gw = await start_gateway(nursery, database_url, channels=[channel])
    long_zh, = await send(gw, {"to": "13800138001", "text": "本周末全场商品八折优惠，欢迎光临。" * 12})
    await wait_status(gw.store, int(long_zh["id"]), "delivered", timeout=20)
    assert sim.failed > 0, "the seed must make the simulator refuse some parts"
    assert sim.accepted == long_zh["parts"]
    parts = sorted(s.pk_number for s in sim.recent_submits if s.dest_terminal_ids == ("13800138001",))
    assert set(parts) == set(range(1, long_zh["parts"] + 1)) and len(parts) == long_zh["parts"] + sim.failed
    history = await gw.store.fetch("SELECT status FROM message_events WHERE message_id = $1", int(long_zh["id"]))
    assert [r["status"] for r in history].count("queued") == 1  # never given back whole


async def test_messages_go_to_the_link_with_the_fewest_waiting(nursery):
    """Each message goes, all its parts together, to the up link with the fewest SUBMITs
    waiting (``CmppLink.queued``, the first of equals); capacity counts what they can take."""
    from datetime import datetime, timezone

    from gateway.cmpp.client import INPUT_QUEUE_SIZE
    from gateway.text import plan

    def msg(i: int, text: str) -> OutboundMessage:
        p = plan(text)
        return OutboundMessage(id=i, account_id=1, dest="13800138000", operator="cmcc", encoding=p.encoding,
                               parts=p.parts, priority=0, msg_class="transactional", sender="",
                               expires_at=datetime.now(timezone.utc))

    sim = IsmgSimulator(sp_id="901234", secret="s3cret")
    port = await nursery.start(sim.serve, "127.0.0.1", 0)
    channel = CmppChannel(cmpp_config(port, connections=2, rate=8.0))  # four SUBMITs a second a link
    send_events, _receive_events = trio.open_memory_channel(100)
    await nursery.start(channel.run, send_events)
    with trio.fail_after(10):
        while not all(link.up for link in channel.links):
            await trio.sleep(0.01)
    a, b = channel.links
    assert channel.capacity() == INPUT_QUEUE_SIZE  # half of both links' room
    # Submitting with room in the queues does not yield, so no pump runs in between.
    await channel.submit(msg(1, "你" * 150))  # three UCS2 parts, all on the first link
    await channel.submit(msg(2, "one"))
    await channel.submit(msg(3, "two"))
    await channel.submit(msg(4, "three"))  # 3 against 2: the second link again
    assert (a.queued, b.queued) == (3, 3)
    await channel.submit(msg(5, "four"))  # equals: the first
    assert (a.queued, b.queued) == (4, 3)
    assert channel.capacity() == (2 * INPUT_QUEUE_SIZE - 7) // 2
    with trio.fail_after(10):
        while a.queued or b.queued or len(sim.recent_submits) < 7:
            await trio.sleep(0.05)
    assert a.statistics().submitted == 4 and b.statistics().submitted == 3
