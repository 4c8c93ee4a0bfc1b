"""The members' SMS commands through the gateway's own outbox: replies are rows in
``messages`` with the right text and client_ref; a re-dispatched MO sends nothing new."""

from __future__ import annotations

from datetime import datetime, timezone

from crm_lite.handler import CrmHandler, members_handler
from crm_lite.members import member_by_phone
from crm_lite.points import record
from crm_lite.settings import update_settings
from gateway.router.commands import InboundCommand, parse_command
from tests.conftest import start_gateway

SERVICE = "10658888001"


class Sms:
    """Texts the merchant as a consumer would, and reads what was sent back."""

    def __init__(self, running, merchant, handler) -> None:
        self.running = running
        self.store = running.store
        self.merchant = merchant
        self.handler = handler

    async def command(self, phone: str, text: str, mo_id: int | None = None) -> InboundCommand:
        if mo_id is None:
            [mo_id] = await self.store.record_mo([("test", phone, SERVICE, text, datetime.now(timezone.utc))])
        keyword, args = parse_command(text)
        return InboundCommand(mo_id=mo_id, merchant=self.merchant, phone=phone, keyword=keyword, args=args,
                              text=text, channel="test", received_at=datetime.now(timezone.utc))

    async def text(self, phone: str, text: str) -> tuple[InboundCommand, bool]:
        cmd = await self.command(phone, text)
        return cmd, await self.handler.handle(cmd, self.running.outbox)

    async def sent(self, phone: str) -> list[tuple[str, str, str]]:
        rows = await self.store.fetch("SELECT body, client_ref, class FROM messages WHERE dest = $1 ORDER BY id", phone)
        return [(r["body"], r["client_ref"], r["class"]) for r in rows]


async def _sms(nursery, database_url) -> Sms:
    gw = await start_gateway(nursery, database_url)
    store = gw.running.store
    acct = await store.ensure_account("mall")
    merchant = await store.ensure_merchant("mall", acct.id, SERVICE, "【演示商场】")
    return Sms(gw.running, merchant, members_handler(store))


async def test_join_twice_welcomes_once_then_says_already_a_member(nursery, database_url):
    sms = await _sms(nursery, database_url)
    first, handled = await sms.text("13900000001", "1")
    assert handled
    second, _ = await sms.text("13900000001", "代码1")
    assert await sms.sent("13900000001") == [
        ("【演示商场】欢迎加入会员！您的会员号 M000001，回复2查询积分。", f"mo-{first.mo_id}-1", "transactional"),
        ("【演示商场】您已是会员，会员号 M000001，回复2查询积分。", f"mo-{second.mo_id}-1", "transactional"),
    ]
    member = await member_by_phone(sms.store, sms.merchant.id, "13900000001")
    assert member is not None and member.member_no == "M000001" and member.source == "sms"


async def test_full_width_and_code_prefix_forms(nursery, database_url):
    sms = await _sms(nursery, database_url)
    for phone, text in (("13900000001", "１"), ("13900000002", "代码１"), ("13900000003", " 代码 1 ")):
        _, handled = await sms.text(phone, text)
        assert handled
        [(body, _, _)] = await sms.sent(phone)
        assert body.startswith("【演示商场】欢迎加入会员")
    _, handled = await sms.text("13900000001", "代码２")
    assert handled and (await sms.sent("13900000001"))[-1][0] == "【演示商场】会员 M000001，您的积分余额为 0 分。"


async def test_points_for_a_member_and_an_invitation_for_a_stranger(nursery, database_url):
    sms = await _sms(nursery, database_url)
    await sms.text("13900000001", "1")
    member = await member_by_phone(sms.store, sms.merchant.id, "13900000001")
    await record(sms.store, sms.merchant.id, member.id, "earn", 128, "pos-1")
    await sms.text("13900000001", "2")
    stranger, _ = await sms.text("13900000002", "２")
    assert (await sms.sent("13900000001"))[-1][0] == "【演示商场】会员 M000001，您的积分余额为 128 分。"
    assert await sms.sent("13900000002") == [
        ("【演示商场】您还不是会员，回复1即可免费加入并累积积分。", f"mo-{stranger.mo_id}-1", "transactional")]
    assert await member_by_phone(sms.store, sms.merchant.id, "13900000002") is None


async def test_redispatching_the_same_mo_sends_nothing_new(nursery, database_url):
    sms = await _sms(nursery, database_url)
    join_cmd, _ = await sms.text("13900000001", "1")
    points_cmd, _ = await sms.text("13900000001", "2")
    before = await sms.sent("13900000001")
    for cmd in (join_cmd, points_cmd, join_cmd):
        assert await sms.handler.handle(cmd, sms.running.outbox)
    assert await sms.sent("13900000001") == before and len(before) == 2
    assert before[0][0].startswith("【演示商场】欢迎加入会员")
    assert await sms.store.fetchval("SELECT count(*) FROM crm_members") == 1


async def test_merchant_keywords_and_help_for_unknown_commands(nursery, database_url):
    sms = await _sms(nursery, database_url)
    await update_settings(sms.store, sms.merchant.id, join_keyword="hy", points_keyword="jf")
    help_text = await sms.handler.help_text(sms.merchant)
    assert help_text == "【演示商场】回复：HY 加入会员，JF 查询积分，TD 退订。"
    _, handled = await sms.text("13900000001", "1")          # no longer this merchant's join keyword
    assert not handled and await sms.sent("13900000001") == []
    _, handled = await sms.text("13900000001", "ｈｙ")
    assert handled and "会员号 M000001，回复JF查询积分" in (await sms.sent("13900000001"))[0][0]
    # a handler that answers unknown commands itself sends the help, once per MO
    answering = CrmHandler(sms.store, sms.handler.parts, answer_unknown=True)
    cmd = await sms.command("13900000002", "hello")
    assert await answering.handle(cmd, sms.running.outbox)
    assert await answering.handle(cmd, sms.running.outbox)
    assert await sms.sent("13900000002") == [(help_text, f"mo-{cmd.mo_id}-1", "transactional")]


class _Lottery:
    """Another part, as the lottery offers: its own keyword and a plain commands() list."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def commands(self, merchant):
        return [("CJ", "参与抽奖")]

    async def help_text(self, merchant):
        return "CJ 参与抽奖"

    async def handle(self, command, outbox) -> bool:
        self.seen.append(command.keyword)
        return command.keyword == "CJ"


async def test_composition_tries_parts_in_order_and_lists_every_command(nursery, database_url):
    sms = await _sms(nursery, database_url)
    lottery = _Lottery()
    handler = members_handler(sms.store, lottery)
    assert await handler.help_text(sms.merchant) == "【演示商场】回复：1 加入会员，2 查询积分，CJ 参与抽奖，TD 退订。"
    assert await handler.handle(await sms.command("13900000001", "cj"), sms.running.outbox)
    assert not await handler.handle(await sms.command("13900000001", "XYZ"), sms.running.outbox)
    assert await handler.handle(await sms.command("13900000001", "1"), sms.running.outbox)
    assert lottery.seen == ["CJ", "XYZ"]   # the members part answered "1" before the lottery saw it
