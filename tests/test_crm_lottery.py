"""Lottery campaigns over the real database and the gateway's own outbox: entering by SMS,
drawing once, notifying winners once, the REST routes and the audit document."""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from datetime import datetime, timedelta, timezone

import httpx
import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_lite import lottery as lt
from crm_lite.errors import AlreadyDrawn, Conflict, InvalidInput
from crm_lite.lottery_api import register_routes
from crm_lite.staff import Role, create_staff, staff_by_token
from gateway.api import ApiError
from gateway.router.commands import InboundCommand, parse_command

SIG = "【演示商场】"
HOUR = timedelta(hours=1)


def now() -> datetime:
    return datetime.now(timezone.utc)


def make_authenticate(store):
    async def authenticate(request):
        header = request.headers.get("authorization", "")
        staff = await staff_by_token(store, header.removeprefix("Bearer ").strip())
        if staff is None:
            raise ApiError(401, "unauthorized", "send a staff token as `Authorization: Bearer crm_...`")
        return staff
    return authenticate


class Shop:
    """A gateway with the lottery routes, a merchant, and helpers to play a handset."""

    def __init__(self, running, merchant):
        self.running = running
        self.store = running.store
        self.outbox = running.outbox
        self.merchant = merchant

    async def command(self, phone: str, text: str, *, mo_id: int | None = None,
                      at: datetime | None = None) -> InboundCommand:
        at = at or now()
        if mo_id is None:
            (mo_id,) = await self.store.record_mo([("test", phone, self.merchant.service_number, text, at)])
        keyword, args = parse_command(text)
        return InboundCommand(mo_id=mo_id, merchant=self.merchant, phone=phone, keyword=keyword, args=args,
                              text=text, channel="test", received_at=at)

    async def inbox(self, phone: str) -> list[str]:
        return [r["body"] for r in await self.store.fetch(
            "SELECT body FROM messages WHERE dest = $1 ORDER BY id", phone)]

    def client(self, token: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.running.http_url, headers=headers, timeout=30)


async def open_shop(nursery, database_url) -> Shop:
    from gateway.app import serve_gateway
    from gateway.config import CrmConfig, DatabaseConfig, DispatcherConfig, HttpConfig, default_config

    def routes(router, running):
        register_routes(router, running.store, running.outbox, make_authenticate(running.store))

    config = default_config(database=DatabaseConfig(url=database_url), http=HttpConfig(listen="127.0.0.1:0"),
                            dispatcher=DispatcherConfig(quiet_hours=""),
                            crm=CrmConfig(enabled=False))  # these routes alone, with test authentication
    running = await nursery.start(functools.partial(serve_gateway, config, channels=(), extra_routes=routes))
    account = await running.store.ensure_account("mall")
    merchant = await running.store.ensure_merchant("mall", account.id, "10658888001", SIG)
    return Shop(running, merchant)


@pytest.fixture
async def shop(nursery, database_url):
    return await open_shop(nursery, database_url)


# --- entering by SMS ------------------------------------------------------------------------------


async def test_enter_by_sms_numbers_entries_and_enforces_the_limit(shop):
    lot = await lt.create_lottery(shop.store, shop.merchant.id, name="周年庆", starts_at=now() - HOUR,
                                  ends_at=now() + HOUR, max_entries=2, prizes=[("电饭煲", 1)])
    handler = lt.LotteryHandler(shop.store)
    phone = "13900000001"
    for _ in range(3):
        assert await handler.handle(await shop.command(phone, "ｃｊ"), shop.outbox) is True
    inbox = await shop.inbox(phone)
    assert inbox[0] == f"{SIG}您已参加「周年庆」抽奖，抽奖号1，开奖后中奖者将收到短信通知。"
    assert "抽奖号2" in inbox[1]
    assert "已达本次活动上限" in inbox[2] and len(inbox) == 3
    assert await shop.store.fetchval("SELECT count(*) FROM crm_lottery_entries WHERE lottery_id = $1", lot.id) == 2
    # another phone gets the next number
    await handler.handle(await shop.command("13900000002", "CJ"), shop.outbox)
    assert "抽奖号3" in (await shop.inbox("13900000002"))[0]


async def test_redispatched_mo_enters_once_and_replies_once(shop):
    lot = await lt.create_lottery(shop.store, shop.merchant.id, name="周年庆", starts_at=now() - HOUR,
                                  ends_at=now() + HOUR, max_entries=5)
    handler = lt.LotteryHandler(shop.store)
    command = await shop.command("13900000003", "CJ")
    async with trio.open_nursery() as nursery:  # even when the two dispatches race
        for _ in range(2):
            nursery.start_soon(handler.handle, command, shop.outbox)
    await handler.handle(command, shop.outbox)
    assert await shop.store.fetchval("SELECT count(*) FROM crm_lottery_entries WHERE lottery_id = $1", lot.id) == 1
    assert await shop.inbox("13900000003") == [f"{SIG}您已参加「周年庆」抽奖，抽奖号1，开奖后中奖者将收到短信通知。"]
    refs = await shop.store.fetch("SELECT client_ref FROM messages WHERE dest = '13900000003'")
    assert [r["client_ref"] for r in refs] == [f"mo-{command.mo_id}-1"]


async def test_simultaneous_entries_of_one_phone_respect_its_limits(shop):
    lot = await lt.create_lottery(shop.store, shop.merchant.id, name="抢先", starts_at=now() - HOUR,
                                  ends_at=now() + HOUR, max_entries=3, max_entries_per_day=2)
    outcomes = []

    async def one(mo_id):
        outcomes.append(await lt.enter(shop.store, lot, "13900000010", at=now(), mo_id=mo_id))

    async with trio.open_nursery() as nursery:
        for mo_id in range(1, 9):
            nursery.start_soon(one, 10_000 + mo_id)
    entered = sorted(o.entry_no for o in outcomes if o.status == lt.EntryStatus.ENTERED)
    assert len(entered) == 2 and len(set(entered)) == 2
    assert Counter(o.status for o in outcomes)[lt.EntryStatus.DAILY_LIMIT] == 6
    assert await shop.store.fetchval("SELECT count(*) FROM crm_lottery_entries WHERE lottery_id = $1", lot.id) == 2
    assert (await lt.lottery(shop.store, shop.merchant.id, lot.id)).entry_count == 2


async def test_outside_the_window_or_closed_says_why(shop):
    handler = lt.LotteryHandler(shop.store)
    soon = await lt.create_lottery(shop.store, shop.merchant.id, name="春季", keyword="CJ",
                                   starts_at=now() + 2 * HOUR, ends_at=now() + 3 * HOUR)
    await handler.handle(await shop.command("13900000004", "CJ"), shop.outbox)
    assert "抽奖将于" in (await shop.inbox("13900000004"))[-1] and "开始" in (await shop.inbox("13900000004"))[-1]
    past = await lt.create_lottery(shop.store, shop.merchant.id, name="冬季", keyword="DJ",
                                   starts_at=now() - 3 * HOUR, ends_at=now() - 2 * HOUR)
    await handler.handle(await shop.command("13900000004", "DJ"), shop.outbox)
    assert (await shop.inbox("13900000004"))[-1] == f"{SIG}「冬季」抽奖已截止，感谢关注，下次活动再见。"
    running = await lt.create_lottery(shop.store, shop.merchant.id, name="夏季", keyword="XJ",
                                      starts_at=now() - HOUR, ends_at=now() + HOUR)
    await lt.close_lottery(shop.store, shop.merchant.id, running.id)
    await handler.handle(await shop.command("13900000004", "XJ"), shop.outbox)
    assert "已截止" in (await shop.inbox("13900000004"))[-1]
    assert await shop.store.fetchval("SELECT count(*) FROM crm_lottery_entries") == 0
    assert soon.status == past.status == "open"


async def test_daily_limit_and_members_only(shop):
    await lt.create_lottery(shop.store, shop.merchant.id, name="每日", starts_at=now() - 48 * HOUR,
                            ends_at=now() + HOUR, max_entries=5, max_entries_per_day=1)
    handler = lt.LotteryHandler(shop.store)
    yesterday = now() - 24 * HOUR
    await handler.handle(await shop.command("13900000005", "CJ", at=yesterday), shop.outbox)
    await handler.handle(await shop.command("13900000005", "CJ"), shop.outbox)
    await handler.handle(await shop.command("13900000005", "CJ"), shop.outbox)
    inbox = await shop.inbox("13900000005")
    assert "抽奖号1" in inbox[0] and "抽奖号2" in inbox[1]
    assert inbox[2] == f"{SIG}您今天已参加「每日」抽奖1次，请明天再来。"

    members = {"13900000006"}

    async def is_member(merchant_id, phone):
        assert merchant_id == shop.merchant.id
        return phone in members

    await lt.create_lottery(shop.store, shop.merchant.id, name="会员专享", keyword="HY", members_only=True,
                            starts_at=now() - HOUR, ends_at=now() + HOUR)
    members_handler = lt.LotteryHandler(shop.store, is_member=is_member)
    await members_handler.handle(await shop.command("13900000007", "HY"), shop.outbox)
    assert (await shop.inbox("13900000007")) == [
        f"{SIG}「会员专享」抽奖仅限会员参加。回复1免费加入会员，再回复HY即可参加。"]
    await members_handler.handle(await shop.command("13900000006", "HY"), shop.outbox)
    assert "抽奖号1" in (await shop.inbox("13900000006"))[0]
    plain_check = lt.LotteryHandler(shop.store, is_member=lambda merchant_id, phone: phone == "13900000011")
    await plain_check.handle(await shop.command("13900000011", "HY"), shop.outbox)
    await plain_check.handle(await shop.command("13900000012", "HY"), shop.outbox)
    assert "抽奖号2" in (await shop.inbox("13900000011"))[0]
    assert "仅限会员" in (await shop.inbox("13900000012"))[0]


async def test_no_lottery_and_other_keywords(shop):
    handler = lt.LotteryHandler(shop.store)
    assert await handler.handle(await shop.command("13900000008", "CJ"), shop.outbox) is True
    assert await shop.inbox("13900000008") == [f"{SIG}目前没有进行中的抽奖活动，敬请关注。"]
    assert await handler.handle(await shop.command("13900000008", "2"), shop.outbox) is False
    assert await handler.commands(shop.merchant) == [("CJ", "参加抽奖")]
    await lt.create_lottery(shop.store, shop.merchant.id, name="周年庆", keyword="zq", starts_at=now() - HOUR,
                            ends_at=now() + HOUR)
    assert await handler.commands(shop.merchant) == [("ZQ", "参加「周年庆」抽奖")]
    assert "回复ZQ参加「周年庆」抽奖" in await handler.help_text(shop.merchant)
    with pytest.raises(InvalidInput) as bad:
        await lt.create_lottery(shop.store, shop.merchant.id, name="x", keyword="Y12", starts_at=now(),
                                ends_at=now() + HOUR)
    assert bad.value.field == "keyword"
    with pytest.raises(Conflict, match="overlapping") as clash:
        await lt.create_lottery(shop.store, shop.merchant.id, name="again", keyword="ZQ", starts_at=now(),
                                ends_at=now() + HOUR)
    assert (clash.value.status, clash.value.code) == (409, "keyword_taken")


async def test_the_merchants_own_lottery_keyword(shop):
    async def keyword_for(merchant_id):
        return "cj2" if merchant_id == shop.merchant.id else "CJ"

    handler = lt.LotteryHandler(shop.store, keyword_for=keyword_for)
    assert await handler.handle(await shop.command("13900000013", "CJ"), shop.outbox) is False
    assert await handler.handle(await shop.command("13900000013", "CJ2"), shop.outbox) is True
    assert await shop.inbox("13900000013") == [f"{SIG}目前没有进行中的抽奖活动，敬请关注。"]
    assert await handler.commands(shop.merchant) == [("CJ2", "参加抽奖")]


# --- the draw -------------------------------------------------------------------------------------


async def test_concurrent_draws_draw_once_and_never_oversell(shop):
    lot = await lt.create_lottery(shop.store, shop.merchant.id, name="大抽奖", starts_at=now() - HOUR,
                                  ends_at=now() + HOUR, prizes=[("一等奖", 1), ("二等奖", 3)])
    await lt.import_entries(shop.store, lot.id, [f"1380000{i:04d}" for i in range(50)], at=now())
    await lt.close_lottery(shop.store, shop.merchant.id, lot.id)
    outcomes: list[object] = []

    async def one():
        try:
            outcomes.append(len(await lt.draw_lottery(shop.store, shop.merchant.id, lot.id)))
        except AlreadyDrawn as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(one)
    assert sorted(o for o in outcomes if isinstance(o, int)) == [4]
    assert sum(isinstance(o, AlreadyDrawn) and o.code == "already_drawn" for o in outcomes) == 3
    rows = await shop.store.fetch("SELECT prize_id, count(*) AS n FROM crm_lottery_winners GROUP BY prize_id")
    assert sorted(r["n"] for r in rows) == [1, 3]
    # the database itself refuses a unit beyond the stock, whatever code tries it
    prize = await shop.store.fetchrow("SELECT id, stock FROM crm_lottery_prizes WHERE lottery_id = $1"
                                      " AND name = '一等奖'", lot.id)
    from gateway.errors import StoreConflict
    with pytest.raises(StoreConflict):
        await shop.store.execute(
            "INSERT INTO crm_lottery_winners (lottery_id, prize_id, stock, unit, entry_no, phone)"
            " VALUES ($1, $2, $3, 2, 7, '13800000006')", lot.id, prize["id"], prize["stock"])


async def test_winners_are_told_once(shop):
    lot = await lt.create_lottery(shop.store, shop.merchant.id, name="幸运", starts_at=now() - 2 * HOUR,
                                  ends_at=now() - HOUR, prizes=[("咖啡券", 2)], max_wins=None)
    await lt.import_entries(shop.store, lot.id, ["13700000001", "13700000002", "13700000001"], at=now() - HOUR)
    won = await lt.draw_lottery(shop.store, shop.merchant.id, lot.id)  # past its window: no close needed
    assert len(won) == 2
    assert await lt.notify_winners(shop.store, shop.outbox, shop.merchant, lot.id) == 2
    assert await lt.notify_winners(shop.store, shop.outbox, shop.merchant, lot.id) == 0
    # a crash between sending and marking: sending again is absorbed by the client_ref
    await shop.store.execute("UPDATE crm_lottery_winners SET notified_at = NULL")
    assert await lt.notify_winners(shop.store, shop.outbox, shop.merchant, lot.id) == 2
    sent = await shop.store.fetch("SELECT dest, body FROM messages ORDER BY id")
    assert len(sent) == 2
    assert Counter(r["dest"] for r in sent) == Counter(w.phone for w in won)
    assert all(r["body"].startswith(f"{SIG}恭喜！您在「幸运」抽奖中获得「咖啡券」") for r in sent)


def generated_cases(count: int) -> list[tuple[list[str], list[int], int | None]]:
    """Cases drawn by hypothesis (entries by phone, prize stocks, win limit), to run against
    the database in one event loop."""
    cases = []

    @settings(max_examples=count, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(phones=st.lists(st.sampled_from([f"1360000{i:04d}" for i in range(8)]), max_size=40),
           stocks=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=3),
           max_wins=st.sampled_from([None, 1, 2]))
    def collect(phones, stocks, max_wins):
        cases.append((phones, stocks, max_wins))

    collect()
    return cases


async def test_audit_document_recomputes_the_stored_winners(shop):
    cases = generated_cases(12)
    assert len(cases) >= 5
    for n, (phones, stocks, max_wins) in enumerate(cases):
        lot = await lt.create_lottery(shop.store, shop.merchant.id, name="属性", keyword=f"P{n}",
                                      starts_at=now() - HOUR, ends_at=now() + HOUR, max_wins=max_wins,
                                      prizes=[(f"奖{i}", s) for i, s in enumerate(stocks)])
        if phones:
            await lt.import_entries(shop.store, lot.id, phones, at=now())
        await lt.close_lottery(shop.store, shop.merchant.id, lot.id)
        stored = await lt.draw_lottery(shop.store, shop.merchant.id, lot.id)
        plain = msgspec.json.decode(msgspec.json.encode(await lt.audit(shop.store, shop.merchant.id, lot.id)))
        assert hashlib.sha256(bytes.fromhex(plain["seed"])).hexdigest() == plain["seed_hash"] == lot.seed_hash
        again = lt.recompute(plain["seed"], plain["entries"], plain["prizes"], max_wins=plain["max_wins"])
        assert [(w.prize_id, w.unit, w.entry_no, w.phone) for w in again] == \
            [(w.prize_id, w.unit, w.entry_no, w.phone) for w in stored]
        per_phone = Counter(phones)
        eligible = len(phones) if max_wins is None else sum(min(c, max_wins) for c in per_phone.values())
        assert len(stored) == min(eligible, sum(stocks))
        assert max_wins is None or max(Counter(w.phone for w in stored).values(), default=0) <= max_wins


# --- REST -----------------------------------------------------------------------------------------


async def test_rest_campaign_life_and_audit_recomputation(shop):
    owner, owner_token = await create_staff(shop.store, shop.merchant.id, "13900000009", "王总", Role.OWNER)
    _, cashier_token = await create_staff(shop.store, shop.merchant.id, "13900000007", "小李", Role.CASHIER,
                                          approver_id=owner.id)
    start = now() - HOUR
    body = {"name": "周年庆", "starts_at": start.isoformat(), "ends_at": (now() + HOUR).isoformat(),
            "max_entries": 3, "prizes": [{"name": "电视", "stock": 1}]}
    async with shop.client(owner_token) as api, shop.client(cashier_token) as cashier, shop.client(None) as anon:
        r = await anon.post("/v1/crm/lotteries", json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = await cashier.post("/v1/crm/lotteries", json=body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = await api.post("/v1/crm/lotteries", json={**body, "ends_at": "tomorrow"})
        assert r.status_code == 400 and r.json()["error"]["field"] == "ends_at"
        r = await api.post("/v1/crm/lotteries", json={**body, "keyword": "SP"})
        assert r.status_code == 400 and r.json()["error"]["field"] == "keyword"
        r = await api.post("/v1/crm/lotteries", json={**body, "prizes": [{"name": "x", "stock": 0}]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_field"
        r = await api.post("/v1/crm/lotteries", json=body)
        assert r.status_code == 201, r.text
        lot = r.json()
        assert lot["keyword"] == "CJ" and lot["status"] == "open" and len(lot["seed_hash"]) == 64
        lid = lot["id"]
        r = await api.post(f"/v1/crm/lotteries/{lid}/prizes", json={"name": "抱枕", "stock": 2})
        assert r.status_code == 201 and r.json()["position"] == 2

        handler = lt.LotteryHandler(shop.store)
        for i in range(6):
            await handler.handle(await shop.command(f"1350000{i % 4:04d}", "CJ"), shop.outbox)
        r = await api.get(f"/v1/crm/lotteries/{lid}/entries", params={"limit": 4})
        page = r.json()
        assert [e["entry_no"] for e in page["entries"]] == [1, 2, 3, 4] and page["next_after"] == 4
        r = await api.get(f"/v1/crm/lotteries/{lid}/entries", params={"after": 4})
        assert [e["entry_no"] for e in r.json()["entries"]] == [5, 6] and r.json()["next_after"] is None

        before = (await api.get(f"/v1/crm/lotteries/{lid}/audit")).json()
        assert before["seed"] is None and before["seed_hash"] == lot["seed_hash"] and before["winners"] == []
        r = await api.post(f"/v1/crm/lotteries/{lid}/draw")
        assert r.status_code == 409 and r.json()["error"]["code"] == "lottery_open"
        assert (await cashier.post(f"/v1/crm/lotteries/{lid}/draw")).status_code == 403
        assert (await api.post(f"/v1/crm/lotteries/{lid}/close")).json()["status"] == "closed"
        r = await api.post(f"/v1/crm/lotteries/{lid}/draw")
        assert r.status_code == 200, r.text
        drawn = r.json()
        assert drawn["notified"] == 3 and len(drawn["winners"]) == 3 and drawn["untold"] == 0
        r = await api.post(f"/v1/crm/lotteries/{lid}/draw")
        assert r.status_code == 409 and r.json()["error"]["code"] == "already_drawn"
        r = await api.post(f"/v1/crm/lotteries/{lid}/prizes", json={"name": "晚到", "stock": 1})
        assert r.status_code == 409

        audit = (await api.get(f"/v1/crm/lotteries/{lid}/audit")).json()
        assert hashlib.sha256(bytes.fromhex(audit["seed"])).hexdigest() == lot["seed_hash"]
        again = lt.recompute(audit["seed"], audit["entries"], audit["prizes"], max_wins=audit["max_wins"])
        assert [[w.prize_id, w.unit, w.entry_no, w.phone] for w in again] == \
            [[w["prize_id"], w["unit"], w["entry_no"], w["phone"]] for w in audit["winners"]]
        assert [w["entry_no"] for w in audit["winners"]] == \
            [n for n in audit["draw_order"] if n in {w["entry_no"] for w in audit["winners"]}]
        assert (await api.post(f"/v1/crm/lotteries/{lid}/notify")).json()["notified"] == 0
        listed = (await api.get("/v1/crm/lotteries")).json()["lotteries"]
        assert [x["id"] for x in listed] == [lid] and listed[0]["status"] == "drawn" and listed[0]["entries"] == 6

        # another merchant's staff sees nothing of it
        other_acct = await shop.store.ensure_account("other")
        other = await shop.store.ensure_merchant("other", other_acct.id, "10658888002")
        _, other_token = await create_staff(shop.store, other.id, "13900000009", "赵总", Role.OWNER)
        async with shop.client(other_token) as stranger:
            r = await stranger.get(f"/v1/crm/lotteries/{lid}/audit")
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
            assert (await stranger.get("/v1/crm/lotteries/abc")).status_code == 404
    assert owner.role == Role.OWNER


# --- demo -----------------------------------------------------------------------------------------


async def test_demo_seed_is_repeatable_and_playable(shop):
    from crm_lite import approvals as ap
    from crm_lite.demo_lottery import DEMO_STAFF_PHONES, seed_demo

    first = await seed_demo(shop.store, shop.merchant, DEMO_STAFF_PHONES)
    again = await seed_demo(shop.store, shop.merchant, ["13900000009", "13900000008", "13900000007"])
    assert first["lottery"]["id"] == again["lottery"]["id"] and first["lottery"]["keyword"] == "CJ"
    assert [p["stock"] for p in first["lottery"]["prizes"]] == [1, 5, 20]
    assert all(s["token"].startswith("crm_") for s in first["staff"].values())
    assert all(s["token"] is None for s in again["staff"].values())
    assert {k: s["id"] for k, s in first["staff"].items()} == {k: s["id"] for k, s in again["staff"].items()}
    await shop.store.execute("UPDATE crm_staff SET active = false WHERE phone = '13900000007'")
    third = await seed_demo(shop.store, shop.merchant)
    assert third["staff"]["cashier"]["id"] == first["staff"]["cashier"]["id"]
    chain = {r["phone"]: r["approver"] for r in await shop.store.fetch(
        "SELECT s.phone, a.phone AS approver FROM crm_staff s LEFT JOIN crm_staff a ON a.id = s.approver_id")}
    assert chain == {"13900000009": None, "13900000008": "13900000009", "13900000007": "13900000008"}

    await lt.LotteryHandler(shop.store).handle(await shop.command("13900000001", "CJ"), shop.outbox)
    assert "「开业抽奖」抽奖，抽奖号1" in (await shop.inbox("13900000001"))[0]
    await ap.ApprovalHandler(shop.store).handle(await shop.command("13900000007", "SP 报销 500 出差"), shop.outbox)
    assert await shop.inbox("13900000008") == [f"{SIG}申请#1 张收银 报销 500元 出差，回复Y1同意，N1拒绝"]
