"""The members part of the SMS command language: join (``1``) and points (``2``).

Keywords are the merchant's (crm_settings), ``1`` and ``2`` by default; ``代码1`` and full-width
forms arrive already folded by :func:`gateway.router.commands.parse_command`. Every reply goes
through the outbox with ``client_ref=mo-<mo_id>-1``, and joining is idempotent by the inbound
message id, so a command dispatched twice sends one reply and makes one member.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import msgspec

from gateway.router.commands import InboundCommand, Outbox
from gateway.store import Merchant, Store
from gateway.text import mask_msisdn

from .members import Member, join, member_by_phone, members_with_balances
from .points import balance_of
from .settings import MerchantSettings, settings_for, settings_for_many

log = logging.getLogger(__name__)


def reply_ref(command: InboundCommand, n: int = 1) -> str:
    """The client_ref of the ``n``-th message sent because of ``command`` (idempotent sends)."""
    return f"mo-{command.mo_id}-{n}"


def welcome_text(merchant: Merchant, member_no: str, points_keyword: str) -> str:
    return f"{merchant.signature}欢迎加入会员！您的会员号 {member_no}，回复{points_keyword}查询积分。"


def already_member_text(merchant: Merchant, member_no: str, points_keyword: str) -> str:
    return f"{merchant.signature}您已是会员，会员号 {member_no}，回复{points_keyword}查询积分。"


def balance_text(merchant: Merchant, member_no: str, balance: int) -> str:
    return f"{merchant.signature}会员 {member_no}，您的积分余额为 {balance} 分。"


def invite_text(merchant: Merchant, join_keyword: str) -> str:
    return f"{merchant.signature}您还不是会员，回复{join_keyword}即可免费加入并累积积分。"


class _Prepared(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`MembersPart.prepare` looked up for one command."""

    settings: MerchantSettings
    looked_up: bool
    """Whether ``member`` and ``balance`` were looked up (a points command)."""
    member: Member | None = None
    balance: int = 0


class MembersPart:
    """:class:`~gateway.router.commands.CommandHandler` for joining and asking for points.

    :meth:`prepare` looks up, for a whole batch of commands in two queries, the merchants'
    settings and the members asking for their points; :meth:`handle` uses them and looks up
    itself what was not prepared.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._prepared: dict[int, _Prepared] = {}
        """By ``mo_id``, for the latest batch only (so bounded by MO dispatch's claim)."""

    async def prepare(self, commands: Sequence[InboundCommand]) -> None:
        """Look up what ``commands`` need at once. A member is looked up in advance only when
        the batch holds no other command from the same phone to the same merchant (an earlier
        ``1`` in the same batch would make the answer stale)."""
        self._prepared = {}
        settings = await settings_for_many(self._store, [c.merchant.id for c in commands])
        senders = Counter((c.merchant.id, c.phone) for c in commands)
        asking = [c for c in commands if senders[(c.merchant.id, c.phone)] == 1
                  and c.keyword == settings[c.merchant.id].points_keyword]
        found = await members_with_balances(self._store, [(c.merchant.id, c.phone) for c in asking])
        asked = {c.mo_id for c in asking}
        prepared: dict[int, _Prepared] = {}
        for c in commands:
            member, balance = found.get((c.merchant.id, c.phone), (None, 0))
            prepared[c.mo_id] = _Prepared(settings=settings[c.merchant.id], looked_up=c.mo_id in asked,
                                          member=member, balance=balance)
        self._prepared = prepared

    async def commands(self, merchant: Merchant) -> list[tuple[str, str]]:
        settings = await settings_for(self._store, merchant.id)
        return [(settings.join_keyword, "加入会员"), (settings.points_keyword, "查询积分")]

    async def help_text(self, merchant: Merchant) -> str:
        listed = "，".join(f"{k} {d}" for k, d in await self.commands(merchant))
        return f"{merchant.signature}回复：{listed}。"

    async def handle(self, command: InboundCommand, outbox: Outbox) -> bool:
        merchant = command.merchant
        prepared = self._prepared.pop(command.mo_id, None)
        if prepared is not None and prepared.settings.merchant_id != merchant.id:
            prepared = None
        settings = prepared.settings if prepared is not None else await settings_for(self._store, merchant.id)
        if command.keyword == settings.join_keyword:
            member, created = await join(self._store, merchant.id, command.phone, mo_id=command.mo_id)
            if created:
                log.info("member joined merchant=%s member=%s phone=%s mo_id=%d", merchant.name, member.member_no,
                         mask_msisdn(command.phone), command.mo_id)
                text = welcome_text(merchant, member.member_no, settings.points_keyword)
            else:
                text = already_member_text(merchant, member.member_no, settings.points_keyword)
        elif command.keyword == settings.points_keyword:
            if prepared is not None and prepared.looked_up:
                member, balance = prepared.member, prepared.balance
            else:
                member = await member_by_phone(self._store, merchant.id, command.phone)
                balance = 0 if member is None else await balance_of(self._store, member.id)
            if member is None:
                text = invite_text(merchant, settings.join_keyword)
            else:
                text = balance_text(merchant, member.member_no, balance)
        else:
            return False
        await outbox.send(account_id=merchant.account_id, to=command.phone, text=text, client_ref=reply_ref(command))
        return True
