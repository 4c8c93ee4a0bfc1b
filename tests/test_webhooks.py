"""Delivery webhooks: outbox written with the final state, signed POSTs, retries, expiry."""

from __future__ import annotations

import functools

import msgspec
import trio

from gateway.channel import Status
from gateway.http import Request, Response, Router, serve_http
from gateway.metrics import Metrics
from gateway.store import AcceptRequest, NewMessage
from gateway.webhooks import SIGNATURE_HEADER, WebhookSender, verify


class Receiver:
    """An upstream app's webhook endpoint, on the gateway's own HTTP server."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.calls: list[Request] = []
        self.got = trio.Event()

    async def handle(self, request: Request) -> Response:
        self.calls.append(request)
        if len(self.calls) <= self.fail_first:
            return Response(status=500, body=b'{"error": "busy"}')
        self.got.set()
        return Response(status=204)

    async def start(self, nursery) -> str:
        router = Router()
        router.add("POST", "/dlr", self.handle)
        port = await nursery.start(functools.partial(serve_http, router, "127.0.0.1", 0))
        return f"http://127.0.0.1:{port}/dlr"


async def make_final(store, url: str | None, status=Status.DELIVERED) -> tuple[int, object]:
    account = await store.ensure_account("shop")
    (res,) = await store.accept([AcceptRequest(
        account_id=account.id, callback_url=url,
        messages=(NewMessage(dest="13800138000", operator="cmcc", body="x", encoding="gsm7", parts=1),))])
    mid = res.messages[0].id
    await store.set_status([(mid, Status.SUBMITTED, "cmcc-1", None, "")])
    await store.set_status([(mid, status, None, "UNDELIV" if status != Status.DELIVERED else None, "report")])
    return mid, account


async def test_final_state_posts_a_signed_callback(store, nursery):
    receiver = Receiver()
    url = await receiver.start(nursery)
    mid, account = await make_final(store, url)
    assert await store.fetchval("SELECT count(*) FROM webhook_outbox") == 1
    await nursery.start(WebhookSender(store, Metrics(), idle_poll=0.05).run)
    with trio.fail_after(10):
        await receiver.got.wait()
    (call,) = receiver.calls
    assert verify(account.webhook_secret, call.body, call.headers[SIGNATURE_HEADER.lower()])
    assert not verify("another secret", call.body, call.headers[SIGNATURE_HEADER.lower()])
    body = msgspec.json.decode(call.body)
    assert body["id"] == str(mid) and body["to"] == "13800138000" and body["status"] == "delivered"
    assert body["channel"] == "cmcc-1" and body["error_code"] is None and body["at"].endswith("Z")
    with trio.fail_after(5):
        while await store.fetchval("SELECT state FROM webhook_outbox") != "delivered":
            await trio.sleep(0.02)


async def test_failures_are_retried_then_given_up(store, nursery):
    receiver = Receiver(fail_first=2)
    url = await receiver.start(nursery)
    await make_final(store, url, Status.UNDELIVERABLE)
    await nursery.start(WebhookSender(store, Metrics(), backoff=(0, 0.1, 0.1), idle_poll=0.05).run)
    with trio.fail_after(10):
        await receiver.got.wait()
    assert len(receiver.calls) == 3
    assert msgspec.json.decode(receiver.calls[-1].body)["error_code"] == "UNDELIV"
    row = await store.fetchrow("SELECT state, attempts FROM webhook_outbox")
    with trio.fail_after(5):
        while (row := await store.fetchrow("SELECT state, attempts FROM webhook_outbox"))["state"] != "delivered":
            await trio.sleep(0.02)
    assert row["attempts"] == 3

    # An endpoint that never answers 2xx exhausts the budget and is marked failed.
    never = Receiver(fail_first=10**6)
    url2 = await never.start(nursery)
    await make_final(store, url2)
    with trio.fail_after(10):
        while await store.fetchval("SELECT count(*) FROM webhook_outbox WHERE state = 'failed'") == 0:
            await trio.sleep(0.05)
    row = await store.fetchrow("SELECT attempts, last_error FROM webhook_outbox WHERE state = 'failed'")
    assert row["attempts"] == 3 and row["last_error"] == "HTTP 500" and len(never.calls) == 3


async def test_no_callback_url_no_webhook_and_non_final_states_none(store):
    await make_final(store, None)
    assert await store.fetchval("SELECT count(*) FROM webhook_outbox") == 0


async def test_overdue_messages_expire_with_a_webhook(store):
    account = await store.ensure_account("shop")
    (res,) = await store.accept([AcceptRequest(
        account_id=account.id, callback_url="http://127.0.0.1:9/x",
        messages=(NewMessage(dest="13800138000", operator="cmcc", body="x", encoding="gsm7", parts=1),))])
    mid = res.messages[0].id
    await store.set_status([(mid, Status.SUBMITTED, "cmcc-1", None, "")])
    assert await store.expire_overdue() == 0
    await store.execute("UPDATE messages SET expires_at = now() - interval '1 second' WHERE id = $1", mid)
    assert await store.expire_overdue() == 1
    assert await store.fetchval("SELECT status FROM messages WHERE id = $1", mid) == "expired"
    assert await store.fetchval("SELECT count(*) FROM webhook_outbox WHERE message_id = $1", mid) == 1


async def test_callback_url_from_the_api_is_called_on_delivery(nursery, database_url):
    from tests.channels import ScriptedChannel
    from tests.conftest import start_gateway
    from tests.test_dispatcher import send

    receiver = Receiver()
    url = await receiver.start(nursery)
    channel = ScriptedChannel()
    gw = await start_gateway(nursery, database_url, channels=[channel])
    (m,) = await send(gw, {"to": "13800138000", "text": "x", "callback_url": url})
    with trio.fail_after(10):
        while not channel.submitted:
            await trio.sleep(0.02)
    await trio.sleep(0.2)  # the submit acknowledgement is recorded
    await channel.report("fake-1")
    with trio.fail_after(10):
        await receiver.got.wait()
    body = msgspec.json.decode(receiver.calls[0].body)
    assert body["id"] == m["id"] and body["status"] == "delivered" and body["channel"] == "fake"
    assert verify(gw.account.webhook_secret, receiver.calls[0].body,
                  receiver.calls[0].headers[SIGNATURE_HEADER.lower()])
