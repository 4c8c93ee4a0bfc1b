"""The admin endpoints for the routing table, over HTTP against a real gateway and database."""

from __future__ import annotations

import httpx
import trio

from gateway.config import AdminConfig, DispatcherConfig
from gateway.router import RouteRule
from tests.channels import ScriptedChannel
from tests.conftest import start_gateway
from tests.test_dispatcher import send, wait_status

TOKEN = "s3cret-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CONFIG_ROUTES = [RouteRule(name="cmcc", operators=["cmcc"], channels=["a"])]


async def start(nursery, database_url, *, token=TOKEN, routes=CONFIG_ROUTES, node="n1"):
    chans = [ScriptedChannel("a", ("cmcc",)), ScriptedChannel("b", ("cmcc", "cucc"))]
    gw = await start_gateway(nursery, database_url, channels=chans, admin=AdminConfig(listen="127.0.0.1:0", token=token),
                             routes=routes, dispatcher=DispatcherConfig(quiet_hours="", node_id=node))
    return gw, chans


async def test_without_a_token_configured_the_admin_endpoints_are_forbidden(nursery, database_url):
    gw, _ = await start(nursery, database_url, token="")
    async with httpx.AsyncClient(base_url=gw.url) as c:
        r = await c.get("/v1/admin/routes")
        p = await c.put("/v1/admin/routes", json=[], headers={"Authorization": "Bearer anything"})
    assert r.status_code == p.status_code == 403
    assert r.json()["error"]["code"] == "admin_disabled"


async def test_missing_or_wrong_token_is_401_and_api_keys_are_not_admin_tokens(nursery, database_url):
    gw, _ = await start(nursery, database_url)
    async with httpx.AsyncClient(base_url=gw.url) as c:
        codes = [(await c.get("/v1/admin/routes", headers=h)).status_code
                 for h in ({}, {"Authorization": "Bearer wrong"}, gw.headers, {"Authorization": TOKEN})]
        put = await c.put("/v1/admin/routes", json=[], headers={"Authorization": "Bearer wrong"})
        ok = await c.get("/v1/admin/routes", headers=ADMIN)
    assert codes == [401, 401, 401, 401] and put.status_code == 401
    assert put.json()["error"]["code"] == "unauthorized"
    assert ok.status_code == 200
    assert ok.json() == {"version": 1, "source": "config",
                         "routes": [{"name": "cmcc", "channels": ["a"], "operators": ["cmcc"], "prefixes": [],
                                     "accounts": [], "class": None}]}


async def test_a_bad_rule_set_is_400_naming_the_field_and_changes_nothing(nursery, database_url):
    gw, _ = await start(nursery, database_url)
    bad = [
        ([{"name": "x", "channels": ["a"]}, {"name": "y", "channels": ["a", "nope"]}], "routes[1].channels[1]"),
        ([{"name": "x", "channels": ["a"], "accounts": ["ghost"]}], "routes[0].accounts[0]"),
        ([{"name": "x", "channels": ["a"], "class": "bulk"}], "routes[0].class"),
        ([{"name": "x"}], "routes[0].channels"),
        ({"rules": []}, "routes"),
    ]
    async with httpx.AsyncClient(base_url=gw.url, headers=ADMIN) as c:
        for body, field in bad:
            r = await c.put("/v1/admin/routes", json=body)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["field"] == field, r.text
        r = await c.put("/v1/admin/routes", content=b"[{", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        after = (await c.get("/v1/admin/routes")).json()
    assert after["version"] == 1 and after["routes"][0]["name"] == "cmcc"
    assert gw.running.dispatcher.routes.version == 1


async def test_a_new_table_takes_effect_at_the_next_claim_and_is_persisted(nursery, database_url):
    gw, (a, b) = await start(nursery, database_url)
    first = (await send(gw, {"to": "13800138000", "text": "1"}))[0]
    await wait_status(gw.store, int(first["id"]), "submitted")
    assert [m.id for m in a.submitted] == [int(first["id"])]
    async with httpx.AsyncClient(base_url=gw.url, headers=ADMIN) as c:
        r = await c.put("/v1/admin/routes", json={"routes": [
            {"name": "to-b", "operators": ["cmcc"], "accounts": ["acme"], "channels": ["b", "a"]}]})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 2 and r.json()["source"] == "api"
        shown = (await c.get("/v1/admin/routes")).json()
    assert shown["routes"][0]["channels"] == ["b", "a"] and shown["version"] == 2
    second = (await send(gw, {"to": "13800138000", "text": "2"}))[0]
    await wait_status(gw.store, int(second["id"]), "submitted")
    assert [m.id for m in b.submitted] == [int(second["id"])]
    row = await gw.store.fetchrow("SELECT version, source, rules->0->>'name' AS name FROM routing_table")
    assert tuple(row) == (2, "api", "to-b")


async def test_other_nodes_and_restarts_see_the_api_table_until_reset_to_the_config(nursery, database_url):
    one, (a1, b1) = await start(nursery, database_url, node="n1")
    two, (a2, b2) = await start(nursery, database_url, node="n2",
                                routes=[RouteRule(name="other", operators=["cmcc"], channels=["b"])])
    # The second node's configuration differs; its start re-seeded the table (still 'config').
    assert (await one.store.routing_table())[1:] == (2, "config")
    async with httpx.AsyncClient(base_url=one.url, headers=ADMIN) as c:
        r = await c.put("/v1/admin/routes", json=[{"name": "via-b", "channels": ["b"]}])
        assert r.status_code == 200 and r.json()["version"] == 3
    with trio.fail_after(10):  # the other node polls the version
        while two.running.dispatcher.routes.version != 3:
            await trio.sleep(0.1)
    assert two.running.dispatcher.routes.rules[0].name == "via-b"
    # A node starting later with [[routes]] in its configuration keeps the API's table...
    three, _ = await start(nursery, database_url, node="n3")
    assert three.running.dispatcher.routes.version == 3
    assert three.running.dispatcher.routes.rules[0].name == "via-b"
    # ...until DELETE goes back to the configuration's rules (those of the node asked).
    async with httpx.AsyncClient(base_url=three.url, headers=ADMIN) as c:
        r = await c.delete("/v1/admin/routes")
    assert r.status_code == 200 and r.json()["source"] == "config" and r.json()["routes"][0]["name"] == "cmcc"
    assert (await one.store.routing_table())[1:] == (4, "config")
