"""The store: PostgreSQL through asyncpg, behind Trio-flavoured functions.

asyncpg is an asyncio library and the gateway runs on Trio: the root opens one
``trio_asyncio`` loop and every crossing into asyncio happens in this package, marked
``aio_as_trio``. Each unit of work (a batch of accepted messages, a batch of channel events)
is one asyncio coroutine in one transaction, so it crosses once. Nothing outside this package
sees asyncpg: its errors become :class:`~gateway.errors.StoreUnavailable` (cannot reach the
database) or :class:`~gateway.errors.StoreError`. Functions named ``_aio_*`` run on the
asyncio side, each inside one crossing (:meth:`StoreCore._call`).

:class:`Store` is one class assembled from one class per concern, each in its own module next
to its SQL:

- ``core``: :class:`StoreCore` (the pool, the crossing ``_call``, plain statements,
  :meth:`~StoreCore.transaction`, migrations), :class:`Transaction`;
- ``records``: the Structs the store takes and returns;
- ``accounts``: accounts and API keys;
- ``accept``: the intake's group commit (``_aio_accept``) and message ids;
- ``messages``: a message and its history, by id or by recipient;
- ``queue``: the claim (:func:`claim_statement`), leases, releases and retries, queue statistics;
- ``status``: submitted parts, delivery reports, other status transitions;
- ``routing``: the routing table, a routed batch's bookkeeping, per-recipient counting;
- ``mo``: inbound messages and MO subscriptions;
- ``merchants``: merchants, their accounts, unsubscribes and the blocklist;
- ``modems``: modem SIM quotas;
- ``notify``: LISTEN/NOTIFY.

Everything the rest of the gateway uses is imported from here (``from gateway.store import
Store, open_store, AcceptRequest, ...``). A module-level constant is read in the module that
defines it (``gateway.store.queue.QUEUE_STATS_MIN_AGE``): the names here are re-exports.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import trio_asyncio
from trio_asyncio import aio_as_trio

from .accept import ID_BLOCK, AcceptStore
from .accounts import API_KEY_PREFIX, AccountStore, hash_api_key
from .core import ROLLBACK_TIMEOUT, StoreCore, Transaction, _keep_session, _translate
from .merchants import MerchantStore
from .messages import MessageStore
from .mo import MoStore
from .modems import ModemQuotaStore
from .notify import LISTEN_CHECK_INTERVAL, NotifyStore
from .queue import CLAIM_CLASSES, CLAIM_PRIORITIES, QUEUE_STATS_MIN_AGE, QUEUE_STATS_SHARE, QueueStore, claim_statement
from .records import (
    Account,
    AcceptRequest,
    AcceptResult,
    BlockedNumber,
    InboundMo,
    Merchant,
    MessageEvent,
    MessageView,
    MoFinish,
    MoSubscription,
    NewMessage,
    ReportOutcome,
    StoredMessage,
)
from .routing import RECIPIENT_LOCK_CLASS, RoutingStore
from .status import StatusStore

__all__ = [
    "API_KEY_PREFIX",
    "CLAIM_CLASSES",
    "CLAIM_PRIORITIES",
    "ID_BLOCK",
    "LISTEN_CHECK_INTERVAL",
    "QUEUE_STATS_MIN_AGE",
    "QUEUE_STATS_SHARE",
    "RECIPIENT_LOCK_CLASS",
    "ROLLBACK_TIMEOUT",
    "Account",
    "AcceptRequest",
    "AcceptResult",
    "BlockedNumber",
    "InboundMo",
    "Merchant",
    "MessageEvent",
    "MessageView",
    "MoFinish",
    "MoSubscription",
    "NewMessage",
    "ReportOutcome",
    "Store",
    "StoreCore",
    "StoredMessage",
    "Transaction",
    "claim_statement",
    "hash_api_key",
    "open_store",
]

log = logging.getLogger(__name__)


class Store(AccountStore, MerchantStore, AcceptStore, MessageStore, QueueStore, StatusStore, RoutingStore,
            MoStore, ModemQuotaStore, NotifyStore):
    """Trio-flavoured access to the database. Create with :func:`open_store`.

    Its methods are those of the concerns' classes (see this package's modules), which all
    build on :class:`StoreCore`."""


@asynccontextmanager
async def open_store(url: str, *, pool_size: int = 8, connect_timeout: float = 10.0) -> AsyncIterator[Store]:
    """A connection pool to ``url``; the caller has entered ``trio_asyncio.open_loop()``."""
    try:
        pool = await aio_as_trio(asyncpg.create_pool)(
            dsn=url, min_size=min(2, pool_size), max_size=pool_size, timeout=connect_timeout,
            command_timeout=60, server_settings={"application_name": "smsgw"}, reset=_keep_session,
        )
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise _translate(exc) from exc
    try:
        yield Store(pool, trio_asyncio.current_loop.get())
    finally:
        try:
            await aio_as_trio(pool.close)()
        except Exception as exc:  # closing must not mask the error that got us here
            log.warning("closing the database pool failed: %s", exc)
