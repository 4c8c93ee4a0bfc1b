"""The SMS command language's entry: what an inbound text says, and who answers it.

SPEC.md, "Numbers and the SMS command language": a consumer texts a merchant's service
number; the first word is the command, full-width and half-width digits and letters alike,
case-insensitive, surrounding spaces ignored; ``代码1`` is ``1``. :func:`parse_command` does
that normalization (pure). MO dispatch hands each command for a known merchant to a
:class:`CommandHandler` (crm_lite is one, plugged in at the assembly point); handlers answer
through an :class:`Outbox`, so every reply is an ordinary MT through the same pipeline.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Protocol

import msgspec

from ..store import Merchant

CODE_PREFIX = "代码"
"""``代码1`` means ``1``: some handset menus and printed flyers spell commands so."""
MAX_COMMAND_TEXT = 1000
"""Characters of an inbound text considered; the rest is ignored."""


def normalize_text(text: str) -> str:
    """NFKC (full-width letters, digits and spaces become half-width; the ideographic space
    a plain space), upper-case, inner whitespace collapsed, ends stripped."""
    folded = unicodedata.normalize("NFKC", text[:MAX_COMMAND_TEXT]).upper()
    return " ".join(folded.split())


def parse_command(text: str) -> tuple[str, tuple[str, ...]]:
    """``(keyword, args)``: the first word, normalized, and the words after it.

    ``" ｃｊ "`` → ``("CJ", ())``; ``"代码1"`` and ``"代码 1"`` → ``("1", ())``;
    ``"SP 报销 500 出差"`` → ``("SP", ("报销", "500", "出差"))``; ``"y12"`` → ``("Y12", ())``;
    an empty or blank text → ``("", ())``.
    """
    words = normalize_text(text).split(" ")
    if words == [""]:
        return "", ()
    first = words[0]
    if first.startswith(CODE_PREFIX):
        rest = first[len(CODE_PREFIX):]
        if rest:
            words[0] = rest
        elif len(words) > 1:
            words = words[1:]
    return words[0], tuple(words[1:])


class InboundCommand(msgspec.Struct, frozen=True, kw_only=True):
    """A consumer's (or staff member's) text to a merchant, as a command."""

    mo_id: int
    """The stored inbound message (``inbound_messages.id``)."""
    merchant: Merchant
    phone: str
    """The sender's 11-digit national number."""
    keyword: str
    """:func:`parse_command`'s first word, e.g. ``"1"``, ``"CJ"``, ``"Y12"``, ``"TD"``."""
    args: tuple[str, ...]
    text: str
    """The text as received."""
    channel: str
    received_at: datetime


class Outbox(Protocol):
    """Sends MTs through the gateway's own pipeline (durably accepted, routed, tracked)."""

    async def send(self, *, account_id: int, to: str, text: str, msg_class: str = "transactional",
                   priority: int = 1, client_ref: str | None = None) -> list[int]:
        """Accept one text to one number; returns the message ids (the originals when
        ``client_ref`` was used before by the account)."""


class CommandHandler(Protocol):
    """Answers the commands it knows (crm_lite's members, points, lottery, approvals)."""

    async def handle(self, command: InboundCommand, outbox: Outbox) -> bool:
        """Act on ``command`` and send any reply through ``outbox``; ``False`` if the
        command is not one of this handler's (MO dispatch then tries keyword subscriptions,
        then answers with :meth:`help_text`)."""

    async def help_text(self, merchant: Merchant) -> str:
        """The short help listing this merchant's commands."""
