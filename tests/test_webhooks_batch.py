"""The webhook sender at volume: batched claims and outcomes, order per message, at least once."""

from __future__ import annotations

import functools
import random
import urllib.parse
from collections import defaultdict

import trio

from gateway.channel import Status
from gateway.http import Request, Response, Router, serve_http
from gateway.metrics import Metrics
from gateway.store import AcceptRequest, NewMessage
from gateway.webhooks import BATCH, WebhookSender


class DlrReceiver:
    """A Kannel app's dlr-url endpoint that records ``(id, type)`` in arrival order."""

    def __init__(self, *, jitter: float = 0.0) -> None:
        self.calls: list[tuple[str, str]] = []
        self.jitter = jitter
        self.changed = trio.Event()
        self._random = random.Random(7)

    async def handle(self, request: Request) -> Response:
        params = dict(urllib.parse.parse_qsl(request.query))
        if self.jitter:  # a slow first answer would let a later callback overtake, were order not kept
            await trio.sleep(self._random.random() * self.jitter)
        self.calls.append((params["id"], params["type"]))
        self.changed.set()
        self.changed = trio.Event()
        return Response(status=200, body=b"ok", content_type="text/plain")

    async def start(self, nursery) -> str:
        router = Router()
        router.add("GET", "/dlr", self.handle)
        port = await nursery.start(functools.partial(serve_http, router, "127.0.0.1", 0))
        return f"http://127.0.0.1:{port}/dlr?id=%I&type=%d"

    async def wait_for(self, count: int, timeout: float) -> None:
        with trio.fail_after(timeout):
            while len(self.calls) < count:
                await self.changed.wait()


async def accept_with_dlr(store, url: str, count: int) -> list[int]:
    account = await store.ensure_account("shop")
    results = await store.accept([AcceptRequest(
        account_id=account.id, dlr_url=url, dlr_mask=31,
        messages=tuple(NewMessage(dest=f"1380013{i:04d}", operator="cmcc", body="x", encoding="gsm7", parts=1)
                       for i in range(count)))])
    return [m.id for res in results for m in res.messages]


async def outbox_state(store) -> dict[str, int]:
    rows = await store.fetch("SELECT state, count(*) AS n FROM webhook_outbox GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


async def test_many_callbacks_arrive_once_each_in_order_per_message(store, nursery):
    receiver = DlrReceiver(jitter=0.02)
    url = await receiver.start(nursery)
    count = BATCH // 2 + 20  # more than one claim's worth of rows
    ids = await accept_with_dlr(store, url, count)
    for mid in ids:  # a message's callbacks next to each other in the outbox, as one claim would see them
        await store.set_status([(mid, Status.SUBMITTED, "cmcc-1", None, "")])
        await store.set_status([(mid, Status.DELIVERED, None, None, "report")])
    expected = defaultdict(list)
    for r in await store.fetch("SELECT message_id, dlr_type FROM webhook_outbox ORDER BY id"):
        expected[str(r["message_id"])].append(str(r["dlr_type"]))
    total = sum(len(v) for v in expected.values())
    assert total == 2 * count and all(v[-1] == "1" for v in expected.values())

    await nursery.start(WebhookSender(store, Metrics(), idle_poll=0.05).run)
    await receiver.wait_for(total, 60)
    with trio.fail_after(10):
        while (await outbox_state(store)) != {"delivered": total}:
            await trio.sleep(0.05)
    got = defaultdict(list)
    for message_id, dlr_type in receiver.calls:
        got[message_id].append(dlr_type)
    assert got == expected  # every callback once, none overtaking an earlier one of its message
    assert len(receiver.calls) == total


async def start_one_message(store, nursery) -> tuple[DlrReceiver, int]:
    receiver = DlrReceiver()
    url = await receiver.start(nursery)
    (mid,) = await accept_with_dlr(store, url, 1)
    await store.set_status([(mid, Status.SUBMITTED, "cmcc-1", None, "")])
    await store.set_status([(mid, Status.DELIVERED, None, None, "report")])
    assert await store.fetchval("SELECT count(*) FROM webhook_outbox WHERE message_id = $1", mid) == 2
    return receiver, mid


async def test_outcomes_lost_before_their_update_are_sent_again(store, nursery):
    receiver, mid = await start_one_message(store, nursery)
    # The database refuses to record outcomes (a real failure of the UPDATE, not a stand-in).
    await store.execute("""
        CREATE FUNCTION refuse_outcome() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;
        CREATE TRIGGER refuse_outcome BEFORE UPDATE ON webhook_outbox
            FOR EACH ROW WHEN (NEW.state <> OLD.state) EXECUTE FUNCTION refuse_outcome();""")
    await nursery.start(WebhookSender(store, Metrics(), idle_poll=0.05, lease=0.5).run)
    await receiver.wait_for(1, 10)
    await trio.sleep(0.2)
    first = await store.fetchrow("SELECT state, attempts FROM webhook_outbox"
                                 " WHERE message_id = $1 ORDER BY id LIMIT 1", mid)
    assert first["state"] == "pending"
    assert receiver.calls[0] == (str(mid), "8")

    # Once the database takes writes again, the lease has run out: the same callback goes
    # again (at least once), then the next one; the order holds throughout.
    await store.execute("DROP TRIGGER refuse_outcome ON webhook_outbox")
    with trio.fail_after(10):
        while (await outbox_state(store)) != {"delivered": 2}:
            await trio.sleep(0.05)
    assert len(receiver.calls) >= 3 and set(receiver.calls[:-1]) == {(str(mid), "8")}
    assert receiver.calls[-1] == (str(mid), "1")
    attempts = await store.fetch("SELECT attempts FROM webhook_outbox WHERE message_id = $1 ORDER BY id", mid)
    assert attempts[0]["attempts"] == len(receiver.calls) - 1 and attempts[1]["attempts"] == 1


async def test_a_stopping_sender_records_what_it_knows_so_nothing_goes_twice(store, nursery):
    receiver, mid = await start_one_message(store, nursery)
    # A finisher that would wait a minute before recording, stopped after the first answer.
    with trio.CancelScope() as stopped:
        async with trio.open_nursery() as inner:
            await inner.start(WebhookSender(store, Metrics(), idle_poll=0.05, lease=0.5, finish_window=60).run)
            await receiver.wait_for(1, 10)
            await trio.sleep(0.2)
            stopped.cancel()
    first = await store.fetchrow("SELECT state, attempts FROM webhook_outbox"
                                 " WHERE message_id = $1 ORDER BY id LIMIT 1", mid)
    assert first["state"] == "delivered" and first["attempts"] == 1

    await nursery.start(WebhookSender(store, Metrics(), idle_poll=0.05, lease=0.5).run)
    await receiver.wait_for(2, 10)
    with trio.fail_after(10):
        while (await outbox_state(store)) != {"delivered": 2}:
            await trio.sleep(0.05)
    await trio.sleep(0.7)  # longer than the lease: nothing more comes
    assert receiver.calls == [(str(mid), "8"), (str(mid), "1")]
