"""The /v1/crm REST API over real HTTP, assembled the way the gateway does it
(``serve_gateway`` with ``[crm]`` enabled, as by default): staff tokens, permissions, members, attributes,
groups, CSV, purchases and points."""

from __future__ import annotations

import functools
import csv
import io

import httpx
import pytest
import trio

from crm_lite.demo import seed_demo

SERVICE = "10658888001"


class Crm:
    def __init__(self, url: str, seed: dict, api_key: str) -> None:
        self.url = url
        self.seed = seed
        self.api_key = api_key

    def client(self, who: str = "owner", token: str | None = None) -> httpx.AsyncClient:
        token = token or self.seed["staff"][who]["token"]
        return httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture
async def crm(nursery, database_url):
    from gateway.app import serve_gateway
    from gateway.config import DatabaseConfig, DispatcherConfig, HttpConfig, default_config

    config = default_config(database=DatabaseConfig(url=database_url), http=HttpConfig(listen="127.0.0.1:0"),
                            dispatcher=DispatcherConfig(quiet_hours=""))
    # crm_lite is on by default: serve_gateway registers its routes (register_crm among them).
    running = await nursery.start(functools.partial(serve_gateway, config, channels=()))
    acct = await running.store.ensure_account("mall")
    merchant = await running.store.ensure_merchant("mall", acct.id, SERVICE, "【演示商场】")
    seed = await seed_demo(running.store, merchant)
    return Crm(running.http_url, seed, await running.store.create_api_key(acct.id))


def _error(resp: httpx.Response, status: int, code: str, field: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code and err["message"]
    if field is not None:
        assert err.get("field") == field, err
    return err


async def test_authentication_and_permissions(crm):
    async with httpx.AsyncClient(base_url=crm.url, timeout=30) as anon:
        _error(await anon.get("/v1/crm/members"), 401, "unauthorized")
        _error(await anon.get("/v1/crm/members", headers={"Authorization": "Bearer crm_nope"}), 401, "unauthorized")
    async with crm.client("owner") as owner:
        resp = await owner.post("/v1/crm/staff", json={"phone": "13900000006", "name": "小赵", "role": "waiter"})
        assert resp.status_code == 201 and resp.json()["token"].startswith("crm_")
        waiter_token = resp.json()["token"]
        _error(await owner.post("/v1/crm/staff", json={"phone": "13900000006", "name": "x", "role": "waiter"}),
               409, "staff_exists")
        _error(await owner.post("/v1/crm/staff", json={"phone": "1390", "name": "x", "role": "waiter"}),
               400, "invalid_field", "phone")
        _error(await owner.post("/v1/crm/staff", json={"phone": "13900000005", "name": "x", "role": "boss"}),
               400, "invalid_field", "role")
        member = (await owner.post("/v1/crm/members", json={"phone": "13800138000"})).json()
        await owner.post("/v1/crm/purchases", json={"member": member["member_no"], "amount_fen": 5000, "key": "p1"})
    async with crm.client(token=waiter_token) as waiter:
        assert (await waiter.get(f"/v1/crm/members/{member['id']}")).json()["points"] == 50   # may look up
        err = _error(await waiter.post("/v1/crm/points/adjust", json={"member": member["id"], "points": 100,
                                                                       "key": "adj-1"}), 403, "forbidden")
        assert "points.adjust" in err["message"]
        _error(await waiter.post("/v1/crm/members", json={"phone": "13800138001"}), 403, "forbidden")
        _error(await waiter.get("/v1/crm/members/export"), 403, "forbidden")
    async with crm.client("cashier") as cashier:
        _error(await cashier.post("/v1/crm/points/adjust", json={"member": member["id"], "points": 1, "key": "a"}),
               403, "forbidden")
        _error(await cashier.get("/v1/crm/staff"), 403, "forbidden")
    async with crm.client("manager") as manager:
        _error(await manager.patch("/v1/crm/settings", json={"join_keyword": "HY"}), 403, "forbidden")
        assert (await manager.post("/v1/crm/points/adjust", json={"member": member["id"], "points": -20,
                                                                   "key": "adj-1"})).json()["balance"] == 30
    async with crm.client("owner") as owner:
        resp = await owner.patch(f"/v1/crm/staff/{crm.seed['staff']['cashier']['id']}", json={"active": False})
        assert resp.status_code == 200 and resp.json()["active"] is False
        _error(await owner.patch(f"/v1/crm/staff/{crm.seed['staff']['owner']['id']}", json={"role": "waiter"}),
               409, "last_owner")
    async with crm.client("cashier") as cashier:
        _error(await cashier.get("/v1/crm/members"), 401, "unauthorized")   # deactivated
    async with crm.client(token=crm.api_key) as account:   # the merchant's API key acts as its owner
        assert (await account.get("/v1/crm/staff")).status_code == 200


async def test_purchase_earns_points_by_the_merchant_rule_and_balance_shows_it(crm):
    async with crm.client("cashier") as cashier, crm.client("owner") as owner:
        member = (await cashier.post("/v1/crm/members", json={"phone": "+86 138 0013 8000", "name": "张三"})).json()
        assert member["phone"] == "13800138000" and member["member_no"] == "M000001" and member["points"] == 0
        resp = await cashier.post("/v1/crm/purchases", json={"phone": "13800138000", "amount_fen": 12_345,
                                                             "key": "pos-42"})
        assert resp.status_code == 201 and resp.json()["points"] == 123 and resp.json()["kind"] == "earn"
        repeat = await cashier.post("/v1/crm/purchases", json={"phone": "13800138000", "amount_fen": 12_345,
                                                               "key": "pos-42"})
        assert repeat.status_code == 200 and repeat.json()["id"] == resp.json()["id"] and repeat.json()["duplicate"]
        assert (await owner.patch("/v1/crm/settings", json={"points_per_yuan": 2})).json()["points_per_yuan"] == 2
        resp = await cashier.post("/v1/crm/purchases", json={"member": member["id"], "amount_fen": 1000, "key": "p2"})
        assert resp.json()["points"] == 20 and resp.json()["balance"] == 143
        got = (await cashier.get(f"/v1/crm/members/{member['member_no']}/points")).json()
        assert got["balance"] == 143 and [t["key"] for t in got["transactions"]] == ["p2", "pos-42"]
        _error(await cashier.post("/v1/crm/purchases", json={"phone": "13800138999", "amount_fen": 100, "key": "x"}),
               404, "member_not_found")
        _error(await cashier.post("/v1/crm/purchases", json={"member": 1, "amount_fen": -1, "key": "x"}),
               400, "invalid_field", "amount_fen")
        _error(await cashier.post("/v1/crm/purchases", json={"amount_fen": 1, "key": "x"}), 400, "invalid_field", "member")


async def test_redeem_fails_cleanly_and_is_idempotent(crm):
    async with crm.client("cashier") as cashier:
        member = (await cashier.post("/v1/crm/members", json={"phone": "13800138000"})).json()
        await cashier.post("/v1/crm/purchases", json={"member": member["id"], "amount_fen": 10_000, "key": "p1"})
        err = _error(await cashier.post("/v1/crm/points/redeem", json={"member": member["id"], "points": 101,
                                                                        "key": "r1"}), 409, "insufficient_points")
        assert "100" in err["message"]
        ok = await cashier.post("/v1/crm/points/redeem", json={"member": member["id"], "points": 60, "key": "r1"})
        again = await cashier.post("/v1/crm/points/redeem", json={"member": member["id"], "points": 60, "key": "r1"})
        assert ok.status_code == 201 and again.status_code == 200 and again.json()["id"] == ok.json()["id"]
        assert (await cashier.get(f"/v1/crm/members/{member['id']}")).json()["points"] == 40
        _error(await cashier.post("/v1/crm/points/redeem", json={"member": member["id"], "points": 0, "key": "r2"}),
               400, "invalid_field", "points")


async def test_concurrent_redemptions_over_http_never_go_negative(crm):
    async with crm.client("cashier") as cashier:
        member = (await cashier.post("/v1/crm/members", json={"phone": "13800138000"})).json()
        await cashier.post("/v1/crm/purchases", json={"member": member["id"], "amount_fen": 10_000, "key": "p1"})
        statuses: list[int] = []

        async def redeem(i: int) -> None:
            resp = await cashier.post("/v1/crm/points/redeem", json={"member": member["id"], "points": 30,
                                                                      "key": f"r{i}"})
            statuses.append(resp.status_code)

        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(redeem, i)
        assert sorted(statuses) == [201] * 3 + [409] * 9
        assert (await cashier.get(f"/v1/crm/members/{member['id']}")).json()["points"] == 10


async def test_custom_attributes_are_validated_by_type(crm):
    async with crm.client("manager") as manager:
        for body in ({"name": "level", "label": "等级", "type": "choice", "choices": ["银卡", "金卡"]},
                     {"name": "shoe_size", "type": "number"}, {"name": "first_visit", "type": "date"},
                     {"name": "city", "type": "text"}):
            assert (await manager.post("/v1/crm/attributes", json=body)).status_code == 201
        _error(await manager.post("/v1/crm/attributes", json={"name": "city", "type": "text"}), 409, "attribute_exists")
        _error(await manager.post("/v1/crm/attributes", json={"name": "Bad Name", "type": "text"}),
               400, "invalid_field", "name")
        _error(await manager.post("/v1/crm/attributes", json={"name": "x", "type": "color"}), 400, "invalid_field", "type")
        assert [a["name"] for a in (await manager.get("/v1/crm/attributes")).json()["attributes"]] == [
            "level", "shoe_size", "first_visit", "city"]
        good = {"level": "金卡", "shoe_size": 42, "first_visit": "2024-03-01", "city": "杭州"}
        member = (await manager.post("/v1/crm/members", json={"phone": "13800138000", "attributes": good})).json()
        assert member["attributes"] == good
        for name, bad in (("level", "钻石卡"), ("shoe_size", "big"), ("first_visit", "2024-13-01"), ("city", 5),
                          ("hobby", "x")):
            err = _error(await manager.patch(f"/v1/crm/members/{member['id']}", json={"attributes": {name: bad}}),
                         400, "invalid_field", f"attributes.{name}")
            assert name in err["message"]
        resp = await manager.patch(f"/v1/crm/members/{member['id']}",
                                   json={"name": "张三", "birthday": "1990-05-04", "attributes": {"city": None}})
        assert resp.json()["attributes"] == {"level": "金卡", "shoe_size": 42, "first_visit": "2024-03-01"}
        assert resp.json()["birthday"] == "1990-05-04" and resp.json()["name"] == "张三"
        _error(await manager.patch(f"/v1/crm/members/{member['id']}", json={"email": "nope"}), 400, "invalid_field",
               "email")
        _error(await manager.get("/v1/crm/members/M999999"), 404, "member_not_found")


async def test_groups_with_sub_groups_over_http(crm):
    async with crm.client("manager") as manager:
        vip = (await manager.post("/v1/crm/groups", json={"name": "VIP"})).json()
        gold = (await manager.post("/v1/crm/groups", json={"name": "金卡", "parent_id": vip["id"]})).json()
        _error(await manager.post("/v1/crm/groups", json={"name": "x", "parent_id": 999}), 400, "invalid_field",
               "parent_id")
        a = (await manager.post("/v1/crm/members", json={"phone": "13800138000", "groups": [vip["id"]]})).json()
        b = (await manager.post("/v1/crm/members", json={"phone": "13800138001"})).json()
        assert (await manager.post(f"/v1/crm/groups/{gold['id']}/members",
                                   json={"members": [b["member_no"], a["id"]]})).status_code == 200
        listed = (await manager.get(f"/v1/crm/groups/{vip['id']}/members")).json()["members"]
        assert [m["id"] for m in listed] == [a["id"], b["id"]]
        direct = (await manager.get(f"/v1/crm/groups/{vip['id']}/members?subgroups=false")).json()["members"]
        assert [m["id"] for m in direct] == [a["id"]]
        assert (await manager.get(f"/v1/crm/members/{a['id']}")).json()["groups"] == [vip["id"], gold["id"]]
        _error(await manager.patch(f"/v1/crm/groups/{vip['id']}", json={"parent_id": gold["id"]}), 400,
               "invalid_field", "parent_id")
        assert (await manager.delete(f"/v1/crm/groups/{gold['id']}/members/{b['id']}")).status_code == 204
        assert [m["id"] for m in (await manager.get(f"/v1/crm/members?group={vip['id']}")).json()["members"]] == [a["id"]]
        found = (await manager.get("/v1/crm/members", params={"phone": "138-0013-8001"})).json()["members"]
        assert [m["id"] for m in found] == [b["id"]]


async def test_csv_import_and_export_over_http(crm):
    async with crm.client("manager") as manager:
        await manager.post("/v1/crm/attributes", json={"name": "level", "type": "choice", "choices": ["银卡", "金卡"]})
        body = ("phone,姓名,level\n13800138000,张三,金卡\n13800138001,李四,铜卡\nabc,王五,\n"
                "13800138002,赵六,银卡\n").encode()
        resp = await manager.post("/v1/crm/members/import", content=body, headers={"Content-Type": "text/csv"})
        assert resp.status_code == 200, resp.text
        report = resp.json()
        assert (report["created"], report["bad_rows"]) == (2, 2)
        assert [(e["line"], e["field"]) for e in report["errors"]] == [(3, "attributes.level"), (4, "phone")]
        err = _error(await manager.post("/v1/crm/members/import", content=b"phone,hobby\n1,2\n",
                                        headers={"Content-Type": "text/csv"}), 400, "invalid_csv", "hobby")
        assert "hobby" in err["message"]
        exported = await manager.get("/v1/crm/members/export")
        assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(exported.content.decode("utf-8-sig"))))
        assert [(r["member_no"], r["phone"], r["name"], r["level"]) for r in rows] == [
            ("M000001", "13800138000", "张三", "金卡"), ("M000002", "13800138002", "赵六", "银卡")]
        back = (await manager.post("/v1/crm/members/import", content=exported.content,
                                   headers={"Content-Type": "text/csv"})).json()
        assert (back["created"], back["updated"], back["bad_rows"]) == (0, 2, 0)
        assert (await manager.get("/v1/crm/members/export")).content == exported.content


async def test_settings_and_expiry_over_http(crm):
    async with crm.client("owner") as owner:
        assert (await owner.get("/v1/crm/settings")).json()["join_keyword"] == "1"
        _error(await owner.patch("/v1/crm/settings", json={"join_keyword": "TD"}), 400, "invalid_field", "join_keyword")
        _error(await owner.patch("/v1/crm/settings", json={"points_keyword": "1"}), 400, "invalid_field",
               "points_keyword")
        _error(await owner.post("/v1/crm/points/expire", json={}), 400, "invalid_field", "days")
        resp = await owner.patch("/v1/crm/settings", json={"lottery_keyword": "抽奖", "points_expire_days": 365})
        assert resp.json()["lottery_keyword"] == "抽奖" and resp.json()["points_expire_days"] == 365
        member = (await owner.post("/v1/crm/members", json={"phone": "13800138000"})).json()
        await owner.post("/v1/crm/purchases", json={"member": member["id"], "amount_fen": 500, "key": "p1"})
        result = (await owner.post("/v1/crm/points/expire", json={"run": "nightly-1"})).json()
        assert (result["members"], result["points"]) == (0, 0)   # earned today: nothing is a year old
        assert (await owner.get(f"/v1/crm/members/{member['id']}")).json()["points"] == 5


async def test_odd_ids_and_numbers_answer_4xx_never_500(crm):
    # Digits that str.isdigit takes but int() or the database does not: superscripts, other scripts,
    # doubled signs, ids past bigint. Members, lottery and approval routes share one toolkit.
    async with crm.client("owner") as owner:
        _error(await owner.get("/v1/crm/members", params={"limit": "²"}), 400, "invalid_field", "limit")
        _error(await owner.get("/v1/crm/members", params={"after": "--5"}), 400, "invalid_field", "after")
        _error(await owner.get("/v1/crm/groups/1/members", params={"limit": "٣"}), 404, "group_not_found")
        _error(await owner.patch("/v1/crm/groups/²", json={"name": "x"}), 404, "group_not_found")
        _error(await owner.post("/v1/crm/staff/" + "9" * 30 + "/token"), 404, "staff_not_found")
        _error(await owner.get("/v1/crm/members/1/points", params={"limit": "1e3"}), 404, "member_not_found")
        _error(await owner.get("/v1/crm/lotteries/²"), 404, "not_found")
        _error(await owner.get("/v1/crm/approvals", params={"limit": "²"}), 400, "invalid_field", "limit")
        _error(await owner.get("/v1/crm/approvals/٣"), 404, "not_found")
        member = (await owner.post("/v1/crm/members", json={"phone": "13800138009"})).json()
        _error(await owner.get(f"/v1/crm/members/{member['id']}/points", params={"limit": "²"}),
               400, "invalid_field", "limit")
