"""The records the store takes and hands back: small frozen msgspec Structs.

What the gateway asks the store to keep (:class:`AcceptRequest` of :class:`NewMessage`,
:class:`MoFinish`) and rows as the store returns them (accounts, merchants, stored messages
and their history, report outcomes, inbound messages, MO subscriptions, blocked numbers).
No database access here.
"""

from __future__ import annotations

from datetime import datetime

import msgspec


class Account(msgspec.Struct, frozen=True):
    id: int
    name: str
    webhook_secret: str


class Merchant(msgspec.Struct, frozen=True, kw_only=True):
    """A business served by the deployment: it sends as ``account_id`` and is texted at
    ``service_number``."""

    id: int
    name: str
    account_id: int
    service_number: str
    signature: str = ""


class NewMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One recipient of an accepted request, ready to store."""

    dest: str
    operator: str
    body: str
    encoding: str
    parts: int


class AcceptRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A send request as the intake stores it: one or more recipients, one transaction."""

    account_id: int
    messages: tuple[NewMessage, ...]
    client_ref: str | None = None
    priority: int = 0
    msg_class: str = "transactional"
    validity_s: int = 86400
    """At least 60 (the API's floor): the expiry sweep's cursor relies on no accept
    transaction lasting longer than a message's validity (migration 0016)."""
    callback_url: str | None = None
    sender: str = ""
    dlr_url: str | None = None
    """A Kannel dlr-url template, called for the events in ``dlr_mask``."""
    dlr_mask: int = 0


class StoredMessage(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    dest: str
    status: str
    parts: int


class AcceptResult(msgspec.Struct, frozen=True, kw_only=True):
    messages: tuple[StoredMessage, ...]
    duplicate: bool = False


class MessageEvent(msgspec.Struct, frozen=True):
    status: str
    at: datetime
    detail: str


class MessageView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    account_id: int
    dest: str
    body: str
    status: str
    channel: str | None
    parts: int
    created_at: datetime
    callback_url: str | None
    error_code: str | None
    events: tuple[MessageEvent, ...]


class ReportOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a delivery report did: the message it closed (if final), or nothing matched."""

    matched: bool
    message_id: int | None = None
    status: str | None = None


# -- MO and compliance ------------------------------------------------------------------------


class MoFinish(msgspec.Struct, frozen=True, kw_only=True):
    """How one dispatched MO is recorded (:meth:`Store.finish_mos`)."""

    mo_id: int
    merchant_id: int | None
    command: str
    outcome: str
    callbacks: tuple[MoSubscription, ...] = ()


class InboundMo(msgspec.Struct, frozen=True, kw_only=True):
    """A stored inbound message, as MO dispatch claims it."""

    id: int
    channel: str
    sender: str
    service_number: str
    body: str
    received_at: datetime
    attempts: int = 1


class MoSubscription(msgspec.Struct, frozen=True, kw_only=True):
    """An upstream app's subscription to the MOs of a service number (and its extensions),
    optionally only those whose first word is ``keyword``."""

    id: int
    account_id: int
    service_number: str
    keyword: str
    url: str
    created_at: datetime | None = None


class BlockedNumber(msgspec.Struct, frozen=True, kw_only=True):
    phone: str
    reason: str
    source: str
    created_at: datetime
