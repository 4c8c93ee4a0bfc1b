"""Compliance guards end to end: unsubscribes, the blocklist, merchant signatures."""

from __future__ import annotations

import httpx
import pytest
import trio

from gateway.compliance import ComplianceScreen, MerchantDirectory, configured_blocklist
from gateway.config import AdminConfig, ComplianceConfig, MerchantConfig, parse_config
from gateway.errors import ConfigError
from gateway.store import AcceptRequest, NewMessage
from tests.channels import ScriptedChannel
from tests.conftest import start_gateway
from tests.test_dispatcher import send

MALL_NUMBER = "10658888001"
SIGNATURE = "【某某商场】"
CONSUMER = "13900000001"
ADMIN = "admin-secret"


def mall() -> MerchantConfig:
    # the test gateway's account "acme" is the merchant's
    return MerchantConfig(name="mall", account="acme", service_number=MALL_NUMBER, signature=SIGNATURE)


async def start(nursery, database_url, **overrides):
    channel = ScriptedChannel()
    gw = await start_gateway(nursery, database_url, channels=[channel], merchants=[mall()], **overrides)
    return gw, channel


async def final(gw, message_id: str) -> tuple[str, str | None]:
    with trio.fail_after(10):
        while True:
            row = await gw.store.fetchrow("SELECT status, error_code FROM messages WHERE id = $1", int(message_id))
            if row["status"] in ("submitted", "rejected"):
                return row["status"], row["error_code"]
            await trio.sleep(0.02)


async def test_td_stops_marketing_but_not_transactional(nursery, database_url):
    gw, channel = await start(nursery, database_url)
    await channel.mo(CONSUMER, "退订", service_number=MALL_NUMBER)
    with trio.fail_after(10):  # unsubscribed, and the confirmation accepted
        while await gw.store.fetchval("SELECT count(*) FROM inbound_messages WHERE outcome = 'unsubscribed'") == 0:
            await trio.sleep(0.02)
    (promo,) = await send(gw, {"to": CONSUMER, "text": "周末全场八折", "class": "marketing"})
    (code,) = await send(gw, {"to": CONSUMER, "text": "您的验证码是 1234"})
    (other,) = await send(gw, {"to": "13900000002", "text": "周末全场八折", "class": "marketing"})
    assert await final(gw, promo["id"]) == ("rejected", "unsubscribed")
    assert await final(gw, code["id"]) == ("submitted", None)
    assert await final(gw, other["id"]) == ("submitted", None)
    async with gw.client() as c:
        detail = (await c.get(f"/v1/messages/{promo['id']}")).json()
    assert detail["status"] == "rejected" and detail["events"][-1]["detail"] == "rejected: unsubscribed"
    sent = {m.id: "".join(m.parts) for m in channel.submitted}
    assert sent[int(code["id"])] == "您的验证码是 1234"
    assert sent[int(other["id"])] == SIGNATURE + "周末全场八折"
    # The confirmation of the unsubscribe went out (transactional), from the merchant's number.
    confirmations = [m for m in channel.submitted if m.dest == CONSUMER and m.id != int(code["id"])]
    assert len(confirmations) == 1 and "退订" in "".join(confirmations[0].parts)
    metrics = gw.running.metrics.exposition().decode()
    assert 'smsgw_compliance_refused_total{reason="unsubscribed"} 1.0' in metrics

    # Joining again (crm's business) lifts it.
    merchant = (await gw.store.merchants())[0]
    assert await gw.store.resubscribe(merchant.id, CONSUMER)
    (again,) = await send(gw, {"to": CONSUMER, "text": "新品上市", "class": "marketing"})
    assert await final(gw, again["id"]) == ("submitted", None)


async def test_unsubscribing_from_one_merchant_leaves_another_accounts_marketing(nursery, database_url):
    channel = ScriptedChannel()
    other = MerchantConfig(name="cafe", account="cafe", service_number="10658888002", signature="【咖啡馆】")
    gw = await start_gateway(nursery, database_url, channels=[channel], merchants=[mall(), other])
    cafe = await gw.store.account_by_name("cafe")
    await channel.mo(CONSUMER, "TD", service_number="10658888002")
    with trio.fail_after(10):
        while await gw.store.fetchval("SELECT count(*) FROM mo_unsubscribes") == 0:
            await trio.sleep(0.02)
    (mine,) = await send(gw, {"to": CONSUMER, "text": "八折", "class": "marketing"})
    assert await final(gw, mine["id"]) == ("submitted", None)
    ids = await gw.running.outbox.send(account_id=cafe.id, to=CONSUMER, text="买一送一", msg_class="marketing")
    assert await final(gw, str(ids[0])) == ("rejected", "unsubscribed")


async def test_screen_is_one_query_per_batch_and_names_the_reason(store):
    account = await store.ensure_account("shop")
    merchant = await store.ensure_merchant("shop", account.id, "10658888003", "")
    await store.unsubscribe(merchant.id, "13800000001")
    await store.block("13800000002", "complaint")
    msgs = tuple(NewMessage(dest=d, operator="cmcc", body="x", encoding="gsm7", parts=1)
                 for d in ("13800000001", "13800000002", "13800000003"))
    for msg_class in ("marketing", "transactional"):
        await store.accept([AcceptRequest(account_id=account.id, messages=msgs, msg_class=msg_class)])
    claimed = await store.claim("n1", 10, 60)
    refused = await ComplianceScreen(store)(claimed)
    by_dest = {(m.dest, m.msg_class): refused.get(m.id) for m in claimed}
    assert by_dest == {
        ("13800000001", "marketing"): "unsubscribed", ("13800000001", "transactional"): None,
        ("13800000002", "marketing"): "blocklisted", ("13800000002", "transactional"): "blocklisted",
        ("13800000003", "marketing"): None, ("13800000003", "transactional"): None,
    }
    assert await ComplianceScreen(store)([]) == {}


async def test_blocklist_admin_api(nursery, database_url):
    gw, channel = await start(nursery, database_url, admin=AdminConfig(listen="127.0.0.1:0", token=ADMIN))
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
        r = await c.post("/v1/admin/blocklist", json={"phone": "13800138000"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = await c.post("/v1/admin/blocklist", json={"phone": "13800138000"}, headers={"Authorization": "Bearer x"})
        assert r.status_code == 401
        r = await c.post("/v1/admin/blocklist", json={"phone": "+86 138-0013-8000", "reason": "complaint"},
                         headers=admin)
        assert r.status_code == 201, r.text
        assert r.json()["phone"] == "13800138000" and r.json()["reason"] == "complaint"
        r = await c.post("/v1/admin/blocklist", json={"phone": "13800138000"}, headers=admin)
        assert r.status_code == 200 and r.json()["reason"] == "complaint"
        r = await c.post("/v1/admin/blocklist", json={"phone": "12345"}, headers=admin)
        assert r.status_code == 400 and r.json()["error"] == {
            "code": "invalid_number", "field": "phone",
            "message": r.json()["error"]["message"]} and "12345" in r.json()["error"]["message"]
        r = await c.post("/v1/admin/blocklist", json={"number": "13800138000"}, headers=admin)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_field"
        r = await c.post("/v1/admin/blocklist", content=b"{", headers=admin)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        r = await c.post("/v1/admin/blocklist", json={"phone": "13900139000"}, headers=admin)
        assert r.status_code == 201
        listed = (await c.get("/v1/admin/blocklist", headers=admin)).json()["numbers"]
        assert [(n["phone"], n["source"]) for n in listed] == [("13800138000", "admin"), ("13900139000", "admin")]

        # Anything to a blocklisted number ends rejected, transactional too.
        (m,) = await send(gw, {"to": "13800138000", "text": "您的验证码是 1234"})
        assert await final(gw, m["id"]) == ("rejected", "blocklisted")

        r = await c.delete("/v1/admin/blocklist/13800138000", headers=admin)
        assert r.status_code == 204
        r = await c.delete("/v1/admin/blocklist/13800138000", headers=admin)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await c.request("DELETE", "/v1/admin/blocklist", json={"phone": "13900139000"}, headers=admin)
        assert r.status_code == 204
        assert (await c.get("/v1/admin/blocklist", headers=admin)).json()["numbers"] == []
    (m,) = await send(gw, {"to": "13800138000", "text": "您的验证码是 1234"})
    assert await final(gw, m["id"]) == ("submitted", None)


async def test_blocklist_api_is_forbidden_without_an_admin_token(nursery, database_url):
    gw, _ = await start(nursery, database_url)
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
        for method, path in (("POST", "/v1/admin/blocklist"), ("GET", "/v1/admin/blocklist"),
                             ("DELETE", "/v1/admin/blocklist/13800138000")):
            r = await c.request(method, path, json={"phone": "13800138000"},
                                headers={"Authorization": "Bearer change-me"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
    assert await gw.store.blocklist() == []


async def test_configured_blocklist_is_seeded_and_kept_in_step(nursery, database_url):
    gw, _ = await start(nursery, database_url,
                        compliance=ComplianceConfig(blocklist=["+86 139 0000 0009", "13900000009"]))
    entries = await gw.store.blocklist()
    assert [(e.phone, e.source) for e in entries] == [("13900000009", "config")]
    (m,) = await send(gw, {"to": "13900000009", "text": "hello"})
    assert await final(gw, m["id"]) == ("rejected", "blocklisted")
    # A later start with another list: the configured entries follow it; admin ones stay.
    store = gw.store
    await store.block("13800000001", "by hand")
    await store.seed_blocklist(["13700000007"])
    assert sorted((e.phone, e.source) for e in await store.blocklist()) == [
        ("13700000007", "config"), ("13800000001", "admin")]


def test_a_bad_configured_number_is_named_at_start():
    with pytest.raises(ConfigError, match=r"compliance.blocklist\[1\]: '12345'"):
        parse_config('[compliance]\nblocklist = ["13800138000", "12345"]')
    with pytest.raises(ConfigError, match="unknown field"):
        parse_config('[compliance]\nblocklst = []')
    assert configured_blocklist(["+8613800138000", "138 0013 8000"]) == ["13800138000"]


async def test_signature_is_added_to_marketing_and_counted_in_parts(nursery, database_url):
    gw, channel = await start(nursery, database_url)
    seventy = "优" * 70  # one UCS2 part on its own
    (promo,) = await send(gw, {"to": "13800138000", "text": seventy, "class": "marketing"})
    (signed,) = await send(gw, {"to": "13800138001", "text": SIGNATURE + "八折", "class": "marketing"})
    (plain,) = await send(gw, {"to": "13800138002", "text": seventy})
    assert promo["parts"] == 2 and plain["parts"] == 1 and signed["parts"] == 1
    bodies = {r["id"]: r["body"] for r in await gw.store.fetch("SELECT id, body FROM messages")}
    assert bodies[int(promo["id"])] == SIGNATURE + seventy
    assert bodies[int(signed["id"])] == SIGNATURE + "八折"
    assert bodies[int(plain["id"])] == seventy
    # Kannel's sendsms is transactional: unchanged.
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
        r = await c.get("/cgi-bin/sendsms", params={"username": "acme", "password": gw.key, "to": "13800138003",
                                                     "text": "取件码 8899"})
    assert r.status_code == 202
    assert await gw.store.fetchval("SELECT body FROM messages WHERE dest = '13800138003'") == "取件码 8899"
    # The gateway's own marketing (CRM campaigns) is signed the same way.
    ids = await gw.running.outbox.send(account_id=gw.account.id, to="13800138004", text="会员日",
                                       msg_class="marketing")
    assert await gw.store.fetchval("SELECT body FROM messages WHERE id = $1", ids[0]) == SIGNATURE + "会员日"


async def test_an_account_that_is_no_merchants_sends_unsigned(nursery, database_url):
    channel = ScriptedChannel()
    gw = await start_gateway(nursery, database_url, channels=[channel])
    (m,) = await send(gw, {"to": "13800138000", "text": "优" * 70, "class": "marketing"})
    assert m["parts"] == 1


async def test_merchant_directory_reads_again_after_its_ttl(store):
    account = await store.ensure_account("shop")
    directory = MerchantDirectory(store, ttl=0.3)
    assert await directory.signature_for(account.id) == ""
    await store.ensure_merchant("shop", account.id, "10658888004", "【小店】")
    assert await directory.signature_for(account.id) == ""  # still the cached copy: no query per request
    await trio.sleep(0.35)
    assert await directory.signature_for(account.id) == "【小店】"


# --- unsubscribes per merchant, whichever of its accounts sends ---------------------------------


async def test_td_to_a_merchant_stops_its_marketing_from_each_of_its_accounts(nursery, database_url):
    channel = ScriptedChannel()
    # the mall sends as "acme" (the test gateway's account) and through its app's account
    shop = MerchantConfig(name="mall", account="acme", service_number=MALL_NUMBER, signature=SIGNATURE,
                          accounts=["mall-app"])
    cafe = MerchantConfig(name="cafe", account="cafe", service_number="10658888002", signature="【咖啡馆】")
    gw = await start_gateway(nursery, database_url, channels=[channel], merchants=[shop, cafe])
    app = await gw.store.account_by_name("mall-app")
    cafe_account = await gw.store.account_by_name("cafe")
    await channel.mo(CONSUMER, "TD", service_number=MALL_NUMBER)
    with trio.fail_after(10):
        while await gw.store.fetchval("SELECT count(*) FROM mo_unsubscribes") == 0:
            await trio.sleep(0.02)
    outbox = gw.running.outbox
    (promo_app,) = await outbox.send(account_id=app.id, to=CONSUMER, text="会员日满减", msg_class="marketing")
    (code_app,) = await outbox.send(account_id=app.id, to=CONSUMER, text="您的取货码 8812")
    (promo_cafe,) = await outbox.send(account_id=cafe_account.id, to=CONSUMER, text="新品拿铁", msg_class="marketing")
    (promo_own,) = await send(gw, {"to": CONSUMER, "text": "周末全场八折", "class": "marketing"})
    (promo_app_other,) = await outbox.send(account_id=app.id, to="13900000002", text="会员日满减",
                                           msg_class="marketing")
    assert await final(gw, str(promo_app)) == ("rejected", "unsubscribed")
    assert await final(gw, promo_own["id"]) == ("rejected", "unsubscribed")
    assert await final(gw, str(code_app)) == ("submitted", None)
    assert await final(gw, str(promo_cafe)) == ("submitted", None)
    assert await final(gw, str(promo_app_other)) == ("submitted", None)
    sent = {m.id: "".join(m.parts) for m in channel.submitted}
    # the app's marketing carries the mall's signature, like the mall's own account's
    assert sent[promo_app_other] == SIGNATURE + "会员日满减"
    assert sent[promo_cafe] == "【咖啡馆】新品拿铁"


async def test_merchant_accounts_follow_the_configuration(store):
    own = await store.ensure_account("mall")
    app = await store.ensure_account("mall-app")
    agency = await store.ensure_account("agency")
    merchant = await store.ensure_merchant("mall", own.id, MALL_NUMBER, SIGNATURE)
    await store.set_merchant_accounts(merchant.id, [app.id, agency.id, own.id])  # its own is implied
    assert await store.merchant_accounts() == [(merchant.id, app.id), (merchant.id, agency.id)]
    await store.set_merchant_accounts(merchant.id, [agency.id])  # the app left the configuration
    assert await store.merchant_accounts() == [(merchant.id, agency.id)]
    directory = MerchantDirectory(store)
    assert await directory.signature_for(agency.id) == SIGNATURE
    assert await directory.signature_for(app.id) == ""
    await store.unsubscribe(merchant.id, CONSUMER)
    flags = await store.compliance_flags([(1, CONSUMER, agency.id, True), (2, CONSUMER, app.id, True),
                                          (3, CONSUMER, own.id, True), (4, CONSUMER, agency.id, False)])
    assert flags == {1: (False, True), 3: (False, True)}


def test_merchant_accounts_config_key():
    config = parse_config(b'[[merchants]]\nname = "mall"\naccount = "mall"\nservice_number = "10658888001"\n'
                          b'accounts = ["mall-app", "agency"]\n')
    assert config.merchants[0].accounts == ["mall-app", "agency"]
    with pytest.raises(ConfigError, match="accounts"):
        parse_config(b'[[merchants]]\nname = "mall"\naccount = "mall"\nservice_number = "10658888001"\n'
                     b'accounts = ["bad name!"]\n')
