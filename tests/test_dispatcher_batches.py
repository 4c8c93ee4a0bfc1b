"""The dispatcher's batched bookkeeping: counters per channel, a burst of events in few writes."""

from __future__ import annotations

import trio

from gateway.channel import Status
from tests.channels import ScriptedChannel
from tests.conftest import start_gateway


def counted(gw, status: str, channel: str) -> float:
    """``smsgw_messages_total{status, channel}`` as exposed."""
    for metric in gw.running.metrics.messages.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels == {"status": status, "channel": channel}:
                return sample.value
    return 0.0


async def wait_count(store, sql: str, want: int, timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while await store.fetchval(sql) != want:
            await trio.sleep(0.02)


async def test_messages_are_counted_on_their_own_channel_when_channels_share_batches(nursery, database_url):
    mobile = ScriptedChannel("mobile", operators=("cmcc",), room=500)
    unicom = ScriptedChannel("unicom", operators=("cucc",), room=500)
    gw = await start_gateway(nursery, database_url, channels=[mobile, unicom])
    to = [f"1380013{i:04d}" for i in range(30)] + [f"1860013{i:04d}" for i in range(20)]
    async with gw.client() as c:
        r = await c.post("/v1/messages", json={"to": to, "text": "hello"})
    assert r.status_code == 202, r.text
    await wait_count(gw.store, "SELECT count(*) FROM messages WHERE status = 'submitted'", 50)
    # Every report at once: they reach the event loop together and share its batches.
    for ch, n in ((mobile, 30), (unicom, 20)):
        for seq in range(1, n + 1):
            await ch.report(f"{ch.name}-{seq}", Status.DELIVERED if seq % 10 else Status.UNDELIVERABLE, "UNDELIV")
    await wait_count(gw.store, "SELECT count(*) FROM messages WHERE status IN ('delivered', 'undeliverable')", 50)
    assert [counted(gw, "queued", "mobile"), counted(gw, "queued", "unicom")] == [30, 20]
    assert [counted(gw, "submitted", "mobile"), counted(gw, "submitted", "unicom")] == [30, 20]
    assert [counted(gw, "delivered", "mobile"), counted(gw, "delivered", "unicom")] == [27, 18]
    assert [counted(gw, "undeliverable", "mobile"), counted(gw, "undeliverable", "unicom")] == [3, 2]
    assert {m.dest[:3] for m in mobile.submitted} == {"138"} and {m.dest[:3] for m in unicom.submitted} == {"186"}


async def test_a_burst_of_events_is_written_in_batches_not_one_by_one(nursery, database_url):
    """500 acknowledgements in a burst: the event loop takes them together (a handful of
    statements, not 500), and every message ends submitted with its history."""
    ch = ScriptedChannel(room=1000, auto_ack=False)
    gw = await start_gateway(nursery, database_url, channels=[ch])
    async with gw.client() as c:
        r = await c.post("/v1/messages", json={"to": [f"1380013{i:04d}" for i in range(500)], "text": "hi"})
    assert r.status_code == 202, r.text
    with trio.fail_after(20):
        while len(ch.submitted) < 500:
            await trio.sleep(0.02)
    store = gw.store
    for m in ch.submitted:
        await ch.ack(m, 1)
    await wait_count(store, "SELECT count(*) FROM messages WHERE status = 'submitted'", 500)
    # One statement per batch: the messages of a batch share its transaction's now().
    batches = await store.fetchval("SELECT count(DISTINCT updated_at) FROM messages WHERE status = 'submitted'")
    assert 1 <= batches <= 10, batches
    assert await store.fetchval("SELECT count(*) FROM message_events WHERE status = 'submitted'") == 500
    assert await store.fetchval("SELECT count(*) FROM outbound_queue") == 0
