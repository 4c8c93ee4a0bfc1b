"""MO callbacks: the subscriptions API, signed POSTs to a real local receiver, retries."""

from __future__ import annotations

import httpx
import msgspec
import trio

from gateway.config import MerchantConfig
from gateway.metrics import Metrics
from gateway.webhooks import SIGNATURE_HEADER, WebhookSender, verify
from tests.channels import ScriptedChannel
from tests.conftest import start_gateway
from tests.test_mo_dispatch import CONSUMER, MALL_NUMBER, setup, start_mo, store_mo, wait_for
from tests.test_webhooks import Receiver


def mall() -> MerchantConfig:
    return MerchantConfig(name="mall", account="acme", service_number=MALL_NUMBER, signature="【某某商场】")


async def test_subscriptions_api(nursery, database_url):
    gw = await start_gateway(nursery, database_url, channels=[ScriptedChannel()],
                             merchants=[mall(), MerchantConfig(name="cafe", account="cafe",
                                                               service_number="10658888002")])
    async with gw.client() as c:
        r = await c.post("/v1/mo/subscriptions",
                         json={"service_number": MALL_NUMBER, "keyword": " ｃｊ ", "url": "https://app.example/mo"})
        assert r.status_code == 201, r.text
        sub = r.json()
        assert sub["keyword"] == "CJ" and sub["service_number"] == MALL_NUMBER and sub["id"].isdigit()
        again = await c.post("/v1/mo/subscriptions",
                             json={"service_number": MALL_NUMBER, "keyword": "CJ", "url": "https://app.example/mo"})
        assert again.status_code == 200 and again.json()["id"] == sub["id"]
        r = await c.post("/v1/mo/subscriptions", json={"service_number": "10690000", "url": "http://127.0.0.1:1/x"})
        assert r.status_code == 201 and r.json()["keyword"] == ""
        listed = (await c.get("/v1/mo/subscriptions")).json()["subscriptions"]
        assert [(s["service_number"], s["keyword"]) for s in listed] == [(MALL_NUMBER, "CJ"), ("10690000", "")]

        for body, field in (({"service_number": MALL_NUMBER, "url": "ftp://x/y"}, "url"),
                            ({"service_number": "abc", "url": "http://x/y"}, "service_number"),
                            ({"service_number": MALL_NUMBER, "url": "http://x/y", "keyword": "two words"}, "keyword"),
                            ({"url": "http://x/y"}, "service_number")):
            r = await c.post("/v1/mo/subscriptions", json=body)
            assert r.status_code == 400 and r.json()["error"]["field"] == field, (body, r.text)
        r = await c.post("/v1/mo/subscriptions", content=b"not json")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        # Another account's merchant number: its consumers are not ours to read.
        r = await c.post("/v1/mo/subscriptions", json={"service_number": "10658888002", "url": "http://x/y"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"

        assert (await c.delete(f"/v1/mo/subscriptions/{sub['id']}")).status_code == 204
        r = await c.delete(f"/v1/mo/subscriptions/{sub['id']}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert [s["service_number"] for s in (await c.get("/v1/mo/subscriptions")).json()["subscriptions"]] == [
            "10690000"]
    # Another account sees none of them and cannot delete them.
    cafe = await gw.store.account_by_name("cafe")
    key = await gw.store.create_api_key(cafe.id)
    async with httpx.AsyncClient(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        assert (await c.get("/v1/mo/subscriptions")).json() == {"subscriptions": []}
        (remaining,) = await gw.store.mo_subscriptions(gw.account.id)
        assert (await c.delete(f"/v1/mo/subscriptions/{remaining.id}")).status_code == 404
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
        r = await c.get("/v1/mo/subscriptions")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


async def test_a_subscribed_keyword_is_posted_signed_end_to_end(nursery, database_url):
    receiver = Receiver()
    url = await receiver.start(nursery)
    channel = ScriptedChannel()
    gw = await start_gateway(nursery, database_url, channels=[channel], merchants=[mall()])
    async with gw.client() as c:
        r = await c.post("/v1/mo/subscriptions", json={"service_number": MALL_NUMBER, "keyword": "CJ", "url": url})
        assert r.status_code == 201
    await channel.mo(CONSUMER, "ｃｊ 我要抽奖", service_number=MALL_NUMBER + "7")
    with trio.fail_after(10):
        await receiver.got.wait()
    (call,) = receiver.calls
    assert verify(gw.account.webhook_secret, call.body, call.headers[SIGNATURE_HEADER.lower()])
    body = msgspec.json.decode(call.body)
    mo_id = await gw.store.fetchval("SELECT id FROM inbound_messages")
    assert list(body) == ["id", "from", "to", "text", "keyword", "received_at"]
    assert body["id"] == str(mo_id) and body["from"] == CONSUMER and body["to"] == MALL_NUMBER + "7"
    assert body["text"] == "ｃｊ 我要抽奖" and body["keyword"] == "CJ" and body["received_at"].endswith("Z")
    # The app answers the lottery itself: the gateway sent no help reply.
    await trio.sleep(0.2)
    assert not [m for m in channel.submitted if m.dest == CONSUMER]
    with trio.fail_after(5):
        while await gw.store.fetchval("SELECT state FROM webhook_outbox WHERE kind = 'mo'") != "delivered":
            await trio.sleep(0.02)


async def test_mo_callbacks_are_retried_then_given_up(store, nursery):
    merchant = await setup(store)
    flaky = Receiver(fail_first=2)
    never = Receiver(fail_first=10**6)
    await store.add_mo_subscription(merchant.account_id, MALL_NUMBER, "", await flaky.start(nursery))
    await store.add_mo_subscription(merchant.account_id, MALL_NUMBER, "", await never.start(nursery))
    mo_id = await store_mo(store, "随便说点什么")
    await nursery.start(WebhookSender(store, Metrics(), backoff=(0, 0.1, 0.1), idle_poll=0.05).run)
    await start_mo(nursery, store)
    with trio.fail_after(10):
        await flaky.got.wait()
    assert len(flaky.calls) == 3
    assert len({c.body for c in flaky.calls}) == 1  # the same callback each time
    account = await store.account_by_name("mall")
    assert verify(account.webhook_secret, flaky.calls[-1].body, flaky.calls[-1].headers[SIGNATURE_HEADER.lower()])
    assert msgspec.json.decode(flaky.calls[-1].body)["id"] == str(mo_id)
    rows = await wait_for(lambda: store.fetch(
        "SELECT url, state, attempts, last_error FROM webhook_outbox WHERE mo_id = $1 AND state <> 'pending'"
        " ORDER BY id", mo_id))
    with trio.fail_after(10):
        while len(rows) < 2:
            rows = await store.fetch("SELECT url, state, attempts, last_error FROM webhook_outbox"
                                     " WHERE mo_id = $1 AND state <> 'pending' ORDER BY id", mo_id)
            await trio.sleep(0.05)
    assert [(r["state"], r["attempts"]) for r in rows] == [("delivered", 3), ("failed", 3)]
    assert rows[1]["last_error"] == "HTTP 500" and len(never.calls) == 3
    assert (await store.inbound(mo_id))["outcome"] == "callback"


async def test_subscriptions_per_account_are_bounded(nursery, database_url, monkeypatch):
    monkeypatch.setattr("gateway.mo_api.MAX_SUBSCRIPTIONS", 2)
    gw = await start_gateway(nursery, database_url, channels=[ScriptedChannel()])
    async with gw.client() as c:
        for i in range(2):
            r = await c.post("/v1/mo/subscriptions", json={"service_number": "10690000", "url": f"http://a/{i}"})
            assert r.status_code == 201
        r = await c.post("/v1/mo/subscriptions", json={"service_number": "10690000", "url": "http://a/2"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "too_many_subscriptions"
        # Asking again for one it holds is still answered.
        r = await c.post("/v1/mo/subscriptions", json={"service_number": "10690000", "url": "http://a/1"})
        assert r.status_code == 200
