"""Mobile approvals over the real database and the gateway's own outbox: SP by SMS, Y/N from
the approver, refusals, escalation by the service, the audit trail and the REST routes."""

from __future__ import annotations

import functools
from contextlib import asynccontextmanager
from datetime import datetime, timezone

import httpx
import pytest
import trio

from crm_lite import approvals as ap
from crm_lite.approvals_api import register_routes
from crm_lite.errors import InvalidInput
from crm_lite.staff import Role, Staff, create_staff, staff_by_token
from gateway.api import ApiError
from gateway.router.commands import InboundCommand, parse_command

SIG = "【演示商场】"
OWNER, MANAGER, CASHIER, WAITER, STRANGER = "13900000009", "13900000008", "13900000007", "13900000006", "13800000001"


def make_authenticate(store, stand_ins):
    """Staff tokens, plus ``stand_ins``: tokens acting as a Staff with no staff row (as a
    merchant's account key acts for its owner)."""
    async def authenticate(request):
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        staff = stand_ins.get(token) or await staff_by_token(store, token)
        if staff is None:
            raise ApiError(401, "unauthorized", "send a staff token as `Authorization: Bearer crm_...`")
        return staff
    return authenticate


class Office:
    """A gateway with the approval routes, a merchant, its staff (owner ← manager ← cashier,
    waiter ← owner) and helpers to play their phones."""

    def __init__(self, running, merchant):
        self.running = running
        self.store = running.store
        self.outbox = running.outbox
        self.merchant = merchant
        self.staff = {}
        self.tokens = {}

    async def hire(self):
        owner, self.tokens["owner"] = await create_staff(self.store, self.merchant.id, OWNER, "王老板", Role.OWNER)
        manager, self.tokens["manager"] = await create_staff(self.store, self.merchant.id, MANAGER, "李经理",
                                                             Role.MANAGER, approver_id=owner.id)
        cashier, self.tokens["cashier"] = await create_staff(self.store, self.merchant.id, CASHIER, "张收银",
                                                             Role.CASHIER, approver_id=manager.id)
        waiter, self.tokens["waiter"] = await create_staff(self.store, self.merchant.id, WAITER, "赵服务", Role.WAITER)
        self.staff = {"owner": owner, "manager": manager, "cashier": cashier, "waiter": waiter}

    async def command(self, phone: str, text: str) -> InboundCommand:
        at = datetime.now(timezone.utc)
        (mo_id,) = await self.store.record_mo([("test", phone, self.merchant.service_number, text, at)])
        keyword, args = parse_command(text)
        return InboundCommand(mo_id=mo_id, merchant=self.merchant, phone=phone, keyword=keyword, args=args,
                              text=text, channel="test", received_at=at)

    async def text(self, handler, phone: str, text: str) -> InboundCommand:
        command = await self.command(phone, text)
        assert await handler.handle(command, self.outbox) is True
        return command

    async def inbox(self, phone: str) -> list[str]:
        return [r["body"] for r in await self.store.fetch(
            "SELECT body FROM messages WHERE dest = $1 ORDER BY id", phone)]

    async def message_count(self) -> int:
        return await self.store.fetchval("SELECT count(*) FROM messages")

    async def trail(self, number: int) -> list[tuple[str, str | None, str | None]]:
        request = await ap.request_by_number(self.store, self.merchant.id, number)
        return [(e.kind, e.actor_name, e.target_name) for e in await ap.history(self.store, request.id)]

    def client(self, role: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.AsyncClient(base_url=self.running.http_url, headers=headers, timeout=30)


@pytest.fixture
async def office(nursery, database_url):
    from gateway.app import serve_gateway
    from gateway.config import CrmConfig, DatabaseConfig, DispatcherConfig, HttpConfig, default_config

    stand_ins = {}

    def routes(router, running):
        register_routes(router, running.store, running.outbox, make_authenticate(running.store, stand_ins),
                        timeout_s=3600)

    config = default_config(database=DatabaseConfig(url=database_url), http=HttpConfig(listen="127.0.0.1:0"),
                            dispatcher=DispatcherConfig(quiet_hours=""),
                            crm=CrmConfig(enabled=False))  # these routes alone, with test authentication
    running = await nursery.start(functools.partial(serve_gateway, config, channels=(), extra_routes=routes))
    account = await running.store.ensure_account("mall")
    merchant = await running.store.ensure_merchant("mall", account.id, "10658888001", SIG)
    office = Office(running, merchant)
    await office.hire()
    stand_ins["account-key"] = Staff(id=0, merchant_id=merchant.id, phone="", name="mall", role=Role.OWNER)
    office.tokens["account"] = "account-key"
    return office


@asynccontextmanager
async def escalations(office, interval: float):
    """The escalation service for the block's length, stopped before the gateway (whose
    database loop it uses) is."""
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(ap.serve_escalations, office.store, office.outbox, interval=interval))
        yield
        nursery.cancel_scope.cancel()


async def wait_for(predicate, timeout: float = 15.0):
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.05)


# --- pure parsing ---------------------------------------------------------------------------------


def test_parse_sp_and_decisions():
    assert ap.parse_sp("SP 报销 500 出差") == ("报销", 50000, "出差")
    assert ap.parse_sp("ｓｐ  采购 12.5元 打印纸 两箱") == ("采购", 1250, "打印纸 两箱")
    assert ap.parse_sp("sp Taxi 0.01 Airport run") == ("Taxi", 1, "Airport run")
    for bad in ["SP", "SP 报销", "SP 报销 500", "SP 报销 abc 出差", "SP 报销 -5 出差", "SP 报销 1.234 出差",
                "SP 报销 0 出差", "SP 报销 99999999999 出差", "SP " + "长" * 21 + " 5 出差"]:
        with pytest.raises(InvalidInput):
            ap.parse_sp(bad)
    assert ap.parse_decision("Y12") == (True, 12)
    assert ap.parse_decision("N7") == (False, 7)
    assert ap.parse_decision("N", ("7",)) == (False, 7)
    assert ap.parse_decision("YES") is None and ap.parse_decision("Y") is None and ap.parse_decision("CJ") is None
    assert ap.yuan(50000) == "500" and ap.yuan(1250) == "12.5" and ap.yuan(1) == "0.01"


# --- by SMS ---------------------------------------------------------------------------------------


async def test_sp_by_sms_notifies_the_approver_once(office):
    handler = ap.ApprovalHandler(office.store)
    command = await office.text(handler, CASHIER, "SP 报销 500 出差")
    assert await office.inbox(CASHIER) == [f"{SIG}已提交申请#1 报销 500元 出差，等待李经理审批。"]
    assert await office.inbox(MANAGER) == [f"{SIG}申请#1 张收银 报销 500元 出差，回复Y1同意，N1拒绝"]
    before = await office.message_count()
    assert await handler.handle(command, office.outbox) is True  # re-dispatch after a crash
    assert await office.message_count() == before
    assert await office.store.fetchval("SELECT count(*) FROM crm_approval_requests") == 1
    refs = await office.store.fetch("SELECT client_ref FROM messages ORDER BY id")
    assert [r["client_ref"] for r in refs] == [f"mo-{command.mo_id}-1", f"mo-{command.mo_id}-2"]
    # numbers count up per merchant
    await office.text(handler, CASHIER, "SP 采购 12.5 打印纸")
    assert (await office.inbox(MANAGER))[-1] == f"{SIG}申请#2 张收银 采购 12.5元 打印纸，回复Y2同意，N2拒绝"
    assert await handler.handle(await office.command(CASHIER, "CJ"), office.outbox) is False


async def test_y_by_the_approver_decides_and_tells_the_requester(office):
    handler = ap.ApprovalHandler(office.store)
    await office.text(handler, CASHIER, "SP 报销 500 出差")
    decision = await office.text(handler, MANAGER, "y1")
    assert (await office.inbox(MANAGER))[-1] == f"{SIG}已同意申请#1（张收银 报销 500元）。"
    assert (await office.inbox(CASHIER))[-1] == f"{SIG}您的申请#1 报销 500元已被李经理同意。"
    request = await ap.request_by_number(office.store, office.merchant.id, 1)
    assert request.status == "approved" and request.decided_by == office.staff["manager"].id
    before = await office.message_count()
    await handler.handle(decision, office.outbox)  # the same MO again: nothing new
    assert await office.message_count() == before
    await office.text(handler, MANAGER, "N1")  # a new text on a decided request
    assert (await office.inbox(MANAGER))[-1] == f"{SIG}申请#1 已被李经理同意，无需再次处理。"
    assert (await ap.request_by_number(office.store, office.merchant.id, 1)).status == "approved"
    assert await office.trail(1) == [("filed", "张收银", "李经理"), ("notified", None, "李经理"),
                                     ("decided", "李经理", None), ("told", None, "张收银")]


async def test_n_rejects(office):
    handler = ap.ApprovalHandler(office.store)
    await office.text(handler, CASHIER, "SP 报销 80 打车")
    await office.text(handler, MANAGER, "N1")
    assert (await office.inbox(MANAGER))[-1] == f"{SIG}已拒绝申请#1（张收银 报销 80元）。"
    assert (await office.inbox(CASHIER))[-1] == f"{SIG}您的申请#1 报销 80元已被李经理拒绝。"
    assert (await ap.request_by_number(office.store, office.merchant.id, 1)).status == "rejected"


async def test_only_the_named_approver_may_decide(office):
    handler = ap.ApprovalHandler(office.store)
    await office.text(handler, CASHIER, "SP 报销 500 出差")
    await office.text(handler, OWNER, "Y1")
    assert await office.inbox(OWNER) == [f"{SIG}抱歉，申请#1 由李经理审批，您无法处理。"]
    await office.text(handler, CASHIER, "Y1")
    assert (await office.inbox(CASHIER))[-1] == f"{SIG}抱歉，申请#1 由李经理审批，您无法处理。"
    await office.text(handler, STRANGER, "Y1")
    assert await office.inbox(STRANGER) == [f"{SIG}审批指令仅限本店员工使用。如需帮助请联系门店。"]
    await office.text(handler, MANAGER, "Y9")
    assert (await office.inbox(MANAGER))[-1] == f"{SIG}未找到申请#9，请核对编号。"
    request = await ap.request_by_number(office.store, office.merchant.id, 1)
    assert request.status == "pending" and request.decided_by is None
    assert [k for k, _, _ in await office.trail(1)] == ["filed", "notified", "refused", "refused"]
    assert (await office.inbox(CASHIER))[:1] == [f"{SIG}已提交申请#1 报销 500元 出差，等待李经理审批。"]


async def test_malformed_sp_gets_the_format(office):
    handler = ap.ApprovalHandler(office.store)
    for text in ["SP", "SP 报销 五百 出差", "sp 报销 500"]:
        await office.text(handler, CASHIER, text)
    assert await office.inbox(CASHIER) == [f"{SIG}审批申请{ap.FORMAT_HELP}"] * 3
    assert await office.store.fetchval("SELECT count(*) FROM crm_approval_requests") == 0
    assert "SP 类型 金额 事由" in await handler.help_text(office.merchant)
    assert ("SP 类型 金额 事由", "员工提交审批") in await handler.commands(office.merchant)


# --- escalation -----------------------------------------------------------------------------------


async def test_escalation_passes_the_request_up_and_only_the_new_approver_decides(office):
    handler = ap.ApprovalHandler(office.store, timeout_s=0.5)
    await office.text(handler, CASHIER, "SP 报销 500 出差")

    async def owner_told():
        return bool(await office.inbox(OWNER)) and ("notified", None, "王老板") in await office.trail(1)

    async with escalations(office, interval=0.1):
        await wait_for(owner_told)
    assert await office.inbox(OWNER) == [f"{SIG}申请#1 张收银 报销 500元 出差（超时转交），回复Y1同意，N1拒绝"]
    request = await ap.request_by_number(office.store, office.merchant.id, 1)
    assert request.approver_name == "王老板" and request.level == 1
    await office.text(handler, MANAGER, "Y1")
    assert (await office.inbox(MANAGER))[-1] == f"{SIG}抱歉，申请#1 由王老板审批，您无法处理。"
    await office.text(handler, OWNER, "Y1")
    assert (await office.inbox(CASHIER))[-1] == f"{SIG}您的申请#1 报销 500元已被王老板同意。"
    assert await office.trail(1) == [
        ("filed", "张收银", "李经理"), ("notified", None, "李经理"), ("escalated", None, "王老板"),
        ("notified", None, "王老板"), ("refused", "李经理", "王老板"), ("decided", "王老板", None),
        ("told", None, "张收银")]
    events = await ap.history(office.store, request.id)
    assert all(a.at <= b.at for a, b in zip(events, events[1:]))


async def test_escalation_stops_at_the_top(office):
    handler = ap.ApprovalHandler(office.store, timeout_s=0.2)
    await office.text(handler, MANAGER, "SP 采购 300 桌椅")  # the manager's approver is the owner

    async def stalled():
        return (await ap.request_by_number(office.store, office.merchant.id, 1)).deadline is None

    async with escalations(office, interval=0.05):
        await wait_for(stalled)
    request = await ap.request_by_number(office.store, office.merchant.id, 1)
    assert request.approver_name == "王老板" and request.level == 0 and request.status == "pending"
    assert [k for k, _, _ in await office.trail(1)] == ["filed", "notified", "stalled"]
    assert await office.inbox(OWNER) == [f"{SIG}申请#1 李经理 采购 300元 桌椅，回复Y1同意，N1拒绝"]


async def test_concurrent_escalators_move_each_request_once(office):
    cashier = office.staff["cashier"]
    for i in range(6):
        await ap.file_request(office.store, cashier, kind="报销", amount_fen=100 + i, reason="测试", timeout_s=0.01)
    await trio.sleep(0.1)
    moved: list[int] = []

    async def one():
        moved.extend(await ap.escalate_due(office.store, limit=3))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
    levels = [r["level"] for r in await office.store.fetch("SELECT level FROM crm_approval_requests")]
    assert len(moved) == len(set(moved)) <= 6
    assert all(level <= 1 for level in levels) and sum(levels) == len(moved)
    # the notices owed (never sent inline here) go out once each
    assert await ap.send_pending(office.store, office.outbox) == 6
    assert await ap.send_pending(office.store, office.outbox) == 0
    assert await office.message_count() == 6


# --- REST -----------------------------------------------------------------------------------------


async def test_rest_file_list_get_decide_with_permissions(office):
    body = {"kind": "报销", "amount_fen": 50000, "reason": "出差", "client_key": "k-1"}
    async with office.client("cashier") as cashier, office.client("manager") as manager, \
            office.client("owner") as owner, office.client("waiter") as waiter, office.client(None) as anon:
        r = await anon.post("/v1/crm/approvals", json=body)
        assert r.status_code == 401
        r = await cashier.post("/v1/crm/approvals", json={**body, "amount_fen": 0})
        assert r.status_code == 400 and r.json()["error"]["field"] == "amount_fen"
        r = await cashier.post("/v1/crm/approvals", json=body)
        assert r.status_code == 201, r.text
        filed = r.json()
        assert filed["request"]["number"] == 1 and filed["request"]["approver_name"] == "李经理"
        assert [e["kind"] for e in filed["events"]] == ["filed", "notified"]
        assert await office.inbox(MANAGER) == [f"{SIG}申请#1 张收银 报销 500元 出差，回复Y1同意，N1拒绝"]
        r = await cashier.post("/v1/crm/approvals", json=body)  # the same key: the same request
        assert r.status_code == 200 and r.json()["request"]["id"] == filed["request"]["id"]
        assert len(await office.inbox(MANAGER)) == 1

        assert (await waiter.get("/v1/crm/approvals")).json()["requests"] == []
        r = await waiter.get("/v1/crm/approvals/1")
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert [x["number"] for x in (await owner.get("/v1/crm/approvals")).json()["requests"]] == [1]
        assert (await cashier.get("/v1/crm/approvals", params={"status": "approved"})).json()["requests"] == []
        assert (await cashier.get("/v1/crm/approvals", params={"status": "maybe"})).status_code == 400
        assert (await cashier.get("/v1/crm/approvals/77")).status_code == 404

        r = await owner.post("/v1/crm/approvals/1/decision", json={"decision": "approve"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "not_approver"
        r = await manager.post("/v1/crm/approvals/1/decision", json={"decision": "maybe"})
        assert r.status_code == 400 and r.json()["error"]["field"] == "decision"
        r = await manager.post("/v1/crm/approvals/1/decision", json={"decision": "reject"})
        assert r.status_code == 200 and r.json()["request"]["status"] == "rejected"
        r = await manager.post("/v1/crm/approvals/1/decision", json={"decision": "approve"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "already_decided"
        assert await office.inbox(CASHIER) == [f"{SIG}您的申请#1 报销 500元已被李经理拒绝。"]
        trail = (await cashier.get("/v1/crm/approvals/1")).json()["events"]
        assert [(e["kind"], e["actor_name"]) for e in trail] == [
            ("filed", "张收银"), ("notified", None), ("refused", "王老板"), ("decided", "李经理"), ("told", None)]
        assert all(e["at"] for e in trail)


async def test_an_account_key_acting_for_the_owner_reads_but_does_not_act(office):
    async with office.client("account") as account, office.client("cashier") as cashier:
        r = await account.post("/v1/crm/approvals", json={"kind": "报销", "amount_fen": 100, "reason": "x"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert (await cashier.post("/v1/crm/approvals",
                                   json={"kind": "报销", "amount_fen": 100, "reason": "x"})).status_code == 201
        assert [x["number"] for x in (await account.get("/v1/crm/approvals")).json()["requests"]] == [1]
        assert (await account.get("/v1/crm/approvals/1")).status_code == 200
        r = await account.post("/v1/crm/approvals/1/decision", json={"decision": "approve"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert (await ap.request_by_number(office.store, office.merchant.id, 1)).status == "pending"
