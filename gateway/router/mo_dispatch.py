"""What to do with an inbound message (pure): issue 5, "MO dispatch".

The service number identifies the merchant, the first word the command
(:func:`gateway.router.commands.parse_command`). For a known merchant, in order:

1. ``TD`` / ``T`` / ``退订`` unsubscribes the sender from the merchant's marketing, confirmed by SMS;
2. each :class:`~gateway.router.commands.CommandHandler` in turn (crm_lite's commands);
3. a subscribed upstream app (:func:`matching_subscriptions`) gets an MO callback;
4. otherwise a short help reply. Never silence.

An MO for no known merchant goes to the apps subscribed to its service number, or is only
recorded (outcome ``no_merchant``). :class:`gateway.mo_dispatch.MoDispatcher` does the I/O.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from enum import StrEnum

from ..store import Merchant, MoSubscription
from .commands import normalize_text, parse_command

UNSUBSCRIBE_KEYWORDS = frozenset({"TD", "T", "退订"})
"""SPEC.md's unsubscribe commands, as :func:`parse_command` normalizes them."""
KNOWN_KEYWORDS = frozenset({"1", "2", "CJ", "TD", "T", "退订", "Y", "N"})
"""The command language's keywords: the bounded values of the dispatch metric's label."""
OTHER = "other"
MAX_KEYWORD = 20
"""Characters of a subscription keyword at most (it is one word)."""
MAX_EXTENSION = 12
"""Digits a request's ``sender`` extension may have (the API's limit)."""

_TRAILING = string.punctuation + "。，！？、；：…～·　"


class Outcome(StrEnum):
    """How an MO was dispatched (``inbound_messages.outcome``)."""

    UNSUBSCRIBED = "unsubscribed"
    HANDLED = "handled"
    CALLBACK = "callback"
    HELP = "help"
    NO_MERCHANT = "no_merchant"
    FAILED = "failed"
    """A handler kept failing; the MO was given up after its attempts (logged)."""


class FirstStep(StrEnum):
    """The first thing to do with an MO, before any handler is asked."""

    UNSUBSCRIBE = "unsubscribe"
    HANDLERS = "handlers"
    CALLBACKS_ONLY = "callbacks_only"


def is_unsubscribe(keyword: str) -> bool:
    """``TD``, ``T`` or ``退订`` (as :func:`parse_command` gives them), also followed by
    punctuation (``退订。``, ``TD!``): a consumer who means to opt out is never misread."""
    return keyword in UNSUBSCRIBE_KEYWORDS or keyword.rstrip(_TRAILING) in UNSUBSCRIBE_KEYWORDS


def first_step(merchant: Merchant | None, keyword: str) -> FirstStep:
    if merchant is None:
        return FirstStep.CALLBACKS_ONLY
    if is_unsubscribe(keyword):
        return FirstStep.UNSUBSCRIBE
    return FirstStep.HANDLERS


def command_label(keyword: str) -> str:
    """The metric label for a keyword: a known one (``Y12`` counts as ``Y``), else ``other``."""
    if is_unsubscribe(keyword):
        return keyword.rstrip(_TRAILING)
    if keyword in KNOWN_KEYWORDS:
        return keyword
    if len(keyword) > 1 and keyword[0] in "YN" and keyword[1:].isdigit():
        return keyword[0]
    return OTHER


def normalize_keyword(raw: str) -> str:
    """A subscription's keyword as MOs will be compared with it (``" ｃｊ "`` → ``"CJ"``);
    ``""`` for none. Raises :class:`ValueError` for more than one word or an overlong one."""
    folded = normalize_text(raw)
    if not folded:
        return ""
    keyword, args = parse_command(folded)
    if args:
        raise ValueError("a keyword is one word")
    if len(keyword) > MAX_KEYWORD:
        raise ValueError(f"a keyword has at most {MAX_KEYWORD} characters")
    return keyword


def matching_subscriptions(subscriptions: Iterable[MoSubscription], *, service_number: str, keyword: str,
                           merchant: Merchant | None) -> list[MoSubscription]:
    """The subscriptions an MO to ``service_number`` whose first word is ``keyword`` goes to.

    A subscription matches when the MO's number starts with the subscribed one (a service
    number may carry an extension) and its keyword is empty or equal to the MO's. An MO to a
    known merchant goes only to subscriptions of the merchant's own account: another account
    never reads a merchant's consumers. One callback per (account, URL), for the most
    specific subscription (longest number, then a keyword over none, then the oldest).
    """
    chosen: dict[tuple[int, str], MoSubscription] = {}
    for sub in subscriptions:
        if not service_number.startswith(sub.service_number):
            continue
        if sub.keyword and sub.keyword != keyword:
            continue
        if merchant is not None and sub.account_id != merchant.account_id:
            continue
        key = (sub.account_id, sub.url)
        best = chosen.get(key)
        if best is None or _specificity(sub) > _specificity(best):
            chosen[key] = sub
    return sorted(chosen.values(), key=lambda s: s.id)


def _specificity(sub: MoSubscription) -> tuple[int, int, int]:
    return len(sub.service_number), 1 if sub.keyword else 0, -sub.id


def sender_extension(merchant_number: str, base_numbers: Sequence[str]) -> str:
    """The digits to append to a link's service number so that a reply comes from the
    merchant's number (``10658888001`` under the base ``10658888`` → ``"001"``): the longest
    base the merchant's number extends; ``""`` when none does (the reply comes from the base)."""
    best = ""
    found = False
    for base in base_numbers:
        if base and merchant_number.startswith(base) and (not found or len(base) > len(best)):
            rest = merchant_number[len(base):]
            if len(rest) <= MAX_EXTENSION:
                best, found = base, True
    return merchant_number[len(best):] if found else ""


def reply_ref(mo_id: int, n: int) -> str:
    """The ``client_ref`` of the ``n``-th reply (1-based) to MO ``mo_id``: a dispatch done again
    after a crash sends the same replies under the same refs, so nothing goes twice."""
    return f"mo-{mo_id}-{n}"


def default_help(merchant: Merchant) -> str:
    """The gateway's help reply when no command handler is plugged in."""
    return f"{merchant.signature}回复TD退订营销短信。其他内容已收到，谢谢！"


def unsubscribe_confirmation(merchant: Merchant) -> str:
    return f"{merchant.signature}您已退订营销短信，将不再收到本商户的推广信息。"
