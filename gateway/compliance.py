"""Compliance guards at work: the dispatcher's screen, merchant signatures, the blocklist seed.

The rules are pure (:mod:`gateway.router.compliance`); this module brings them to the store:

- :class:`ComplianceScreen` is the dispatcher's ``screen`` hook: one query per claimed batch
  finds blocklisted destinations and marketing to consumers who unsubscribed from a merchant
  that sends through the sending account (a merchant may send through several: its own
  account and ``[[merchants]] accounts``); those messages end ``rejected`` with
  ``blocklisted`` / ``unsubscribed``.
- :class:`MerchantDirectory` keeps the merchants in memory (refreshed after a short TTL), so the
  API can add a merchant's signature to marketing texts at accept time without a query per
  request.
- :class:`SigningOutbox` does the same for MTs the gateway originates (CRM campaigns).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import trio

from .channel import OutboundMessage
from .errors import ConfigError, StoreError
from .metrics import Metrics
from .router.commands import Outbox
from .router.compliance import MARKETING, refusal, with_signature
from .store import Merchant, Store
from .text import InvalidNumber, normalize_msisdn

log = logging.getLogger(__name__)

MERCHANT_CACHE_TTL = 30.0
"""Seconds the merchant directory is trusted before it is read again (a new or changed
merchant's signature applies within this time)."""


class ComplianceScreen:
    """The dispatcher's ``screen``: ``{message_id: reason}`` for the claimed messages that may
    not go. One query per batch, whatever its size."""

    def __init__(self, store: Store, metrics: Metrics | None = None) -> None:
        self._store = store
        self._metrics = metrics

    async def __call__(self, messages: list[OutboundMessage]) -> dict[int, str]:
        flags = await self._store.compliance_flags(
            [(m.id, m.dest, m.account_id, m.msg_class == MARKETING) for m in messages])
        if not flags:
            return {}
        refused: dict[int, str] = {}
        for m in messages:
            if m.id not in flags:
                continue
            blocked, unsubscribed = flags[m.id]
            reason = refusal(msg_class=m.msg_class, blocklisted=blocked, unsubscribed=unsubscribed)
            if reason is not None:
                refused[m.id] = str(reason)
                if self._metrics is not None:
                    self._metrics.compliance_refused.labels(str(reason)).inc()
        if refused:
            log.info("messages refused by compliance count=%d", len(refused))
        return refused


class MerchantDirectory:
    """The merchants by account, read from the store at most once per ``ttl`` seconds.

    :meth:`signature_for` is what the accept path asks: a dict look-up while the copy is fresh.
    An account may be a merchant's own or one of the further accounts it sends through; an
    account with several merchants signs with the first that has a signature (own accounts
    before further ones, then by merchant id).
    If the database cannot be read, the last copy stays in use (and the read is retried at the
    next request after the TTL).
    """

    def __init__(self, store: Store, *, ttl: float = MERCHANT_CACHE_TTL) -> None:
        self._store = store
        self._ttl = ttl
        self._by_account: dict[int, Merchant] = {}
        self._fresh_until = -1.0
        self._lock = trio.Lock()

    async def refresh(self) -> None:
        merchants = await self._store.merchants()
        by_id = {m.id: m for m in merchants}
        # A merchant's own account first, then the further accounts it sends through.
        pairs = [(m.account_id, m) for m in merchants]
        pairs += [(account_id, by_id[merchant_id]) for merchant_id, account_id in await self._store.merchant_accounts()
                  if merchant_id in by_id]
        by_account: dict[int, Merchant] = {}
        for account_id, m in pairs:  # the first with a signature wins
            current = by_account.get(account_id)
            if current is None or (not current.signature and m.signature):
                by_account[account_id] = m
        self._by_account = by_account
        self._fresh_until = time.monotonic() + self._ttl

    async def merchant_for_account(self, account_id: int) -> Merchant | None:
        if time.monotonic() >= self._fresh_until:
            async with self._lock:  # one reader refreshes; the others then find it fresh
                if time.monotonic() >= self._fresh_until:
                    try:
                        await self.refresh()
                    except StoreError as exc:
                        if self._fresh_until < 0:
                            raise
                        log.warning("refreshing merchants failed; keeping the last copy: %s", exc)
                        self._fresh_until = time.monotonic() + min(self._ttl, 5.0)
        return self._by_account.get(account_id)

    async def signature_for(self, account_id: int) -> str:
        """The signature the account's marketing carries (``""`` for none)."""
        merchant = await self.merchant_for_account(account_id)
        return merchant.signature if merchant is not None else ""


class SigningOutbox:
    """An :class:`~gateway.router.commands.Outbox` that signs marketing texts of merchants'
    accounts (as the API does) before handing them to ``inner``."""

    def __init__(self, inner: Outbox, directory: MerchantDirectory) -> None:
        self._inner = inner
        self._directory = directory

    async def send(self, *, account_id: int, to: str, text: str, msg_class: str = "transactional",
                   priority: int = 1, client_ref: str | None = None) -> list[int]:
        if msg_class == MARKETING:
            text = with_signature(text, await self._directory.signature_for(account_id), msg_class)
        return await self._inner.send(account_id=account_id, to=to, text=text, msg_class=msg_class,
                                      priority=priority, client_ref=client_ref)


def configured_blocklist(numbers: Sequence[str]) -> list[str]:
    """``[compliance] blocklist`` in the 11-digit form; a bad number is a :class:`ConfigError`
    naming it."""
    out: list[str] = []
    for i, raw in enumerate(numbers):
        try:
            phone = normalize_msisdn(raw)
        except InvalidNumber as exc:
            raise ConfigError(f"compliance.blocklist[{i}]: {raw!r} is not a Chinese mobile number: "
                              f"{exc.reason}") from None
        if phone not in out:
            out.append(phone)
    return out
