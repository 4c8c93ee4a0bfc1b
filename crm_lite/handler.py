"""The CRM's one command handler for MO dispatch: the parts (members, lottery, approvals, ...)
tried in order, and one help text listing every command the merchant has.

Each part implements :class:`gateway.router.commands.CommandHandler` and may offer
``commands(merchant) -> list[tuple[keyword, description]]`` (plain or async) for the help text.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from gateway.router.commands import CommandHandler, InboundCommand, Outbox
from gateway.store import Merchant, Store

from .member_commands import reply_ref

UNSUBSCRIBE = ("TD", "退订")
"""Answered by the gateway before any handler, listed in the help all the same."""


class CrmHandler:
    """:class:`~gateway.router.commands.CommandHandler` composed of ``parts``.

    ``handle`` returns ``False`` when no part knows the keyword, so MO dispatch can try keyword
    subscriptions and then answer with :meth:`help_text`. With ``answer_unknown=True`` the
    handler answers an unknown command with the help itself (``client_ref=mo-<id>-1``) and
    claims every command.
    """

    def __init__(self, store: Store, parts: Sequence[CommandHandler], *, answer_unknown: bool = False) -> None:
        self._store = store
        self.parts = tuple(parts)
        self._answer_unknown = answer_unknown

    async def commands(self, merchant: Merchant) -> list[tuple[str, str]]:
        listed: list[tuple[str, str]] = []
        for part in self.parts:
            offer = getattr(part, "commands", None)
            if offer is None:
                continue
            found = offer(merchant)
            if inspect.isawaitable(found):
                found = await found
            listed.extend((str(k), str(d)) for k, d in found)
        return listed

    async def prepare(self, commands: Sequence[InboundCommand]) -> None:
        """A batch of commands is about to be handled: the parts that offer ``prepare`` look up
        what the batch needs at once (MO dispatch calls this; it is only an optimization)."""
        for part in self.parts:
            prepare = getattr(part, "prepare", None)
            if prepare is not None:
                await prepare(commands)

    async def help_text(self, merchant: Merchant) -> str:
        """``【签名】回复：1 加入会员，2 查询积分，CJ 参与抽奖，TD 退订。``"""
        listed = [f"{k} {d}" for k, d in await self.commands(merchant)]
        listed.append(f"{UNSUBSCRIBE[0]} {UNSUBSCRIBE[1]}")
        return f"{merchant.signature}回复：{'，'.join(listed)}。"

    async def handle(self, command: InboundCommand, outbox: Outbox) -> bool:
        for part in self.parts:
            if await part.handle(command, outbox):
                return True
        if not self._answer_unknown:
            return False
        await outbox.send(account_id=command.merchant.account_id, to=command.phone,
                          text=await self.help_text(command.merchant), client_ref=reply_ref(command))
        return True


def members_handler(store: Store, *more_parts: CommandHandler, answer_unknown: bool = False) -> CrmHandler:
    """The composition: members first, then ``more_parts`` (lottery, approvals)."""
    from .member_commands import MembersPart

    return CrmHandler(store, [MembersPart(store), *more_parts], answer_unknown=answer_unknown)
