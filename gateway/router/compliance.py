"""Compliance policy (pure): who may not be sent to, and the merchant's signature.

Issue 5, "Compliance guards": a consumer who texted ``TD`` / ``T`` / ``退订`` to a merchant gets
no more *marketing* from that merchant, through whichever of its accounts (such a send ends
``rejected`` with the code ``unsubscribed``); an account shared by several merchants stops
marketing to a consumer who left any of them, the message not saying which it is for; a number on the global blocklist gets nothing at all (``blocklisted``),
transactional texts included. The merchant's signature (``【某某商场】``) is put in front of a
marketing text that lacks it, the Chinese convention, before its parts are counted.

The I/O around these rules (one query per claimed batch, the merchant cache) lives in
:mod:`gateway.compliance`.
"""

from __future__ import annotations

from enum import StrEnum

MARKETING = "marketing"


class Refusal(StrEnum):
    """Why a claimed message is not sent: the error code it ends ``rejected`` with."""

    BLOCKLISTED = "blocklisted"
    UNSUBSCRIBED = "unsubscribed"


def refusal(*, msg_class: str, blocklisted: bool, unsubscribed: bool) -> Refusal | None:
    """The reason a message may not go, or ``None``.

    The blocklist stops every class; an unsubscribe stops marketing only (a one-time code or
    an order notice still goes to someone who opted out of promotions). When both apply the
    blocklist is named, being the stronger reason.
    """
    if blocklisted:
        return Refusal.BLOCKLISTED
    if unsubscribed and msg_class == MARKETING:
        return Refusal.UNSUBSCRIBED
    return None


def has_signature(text: str, signature: str) -> bool:
    """Whether ``text`` already carries ``signature`` where operators look for it: at its
    start or its end (surrounding whitespace ignored)."""
    body = text.strip()
    return body.startswith(signature) or body.endswith(signature)


def with_signature(text: str, signature: str, msg_class: str) -> str:
    """``text`` as it is sent: a marketing text lacking the merchant's ``signature`` gets it
    in front; transactional texts, and texts of accounts without a signature, are unchanged.
    Idempotent."""
    if msg_class != MARKETING or not signature or has_signature(text, signature):
        return text
    return signature + text
