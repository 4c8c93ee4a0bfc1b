"""Retention: finished messages are deleted some days after their validity ended (README
"Retention", ``[retention] days``; 0, the default, keeps them for ever).

Every ``interval`` seconds the purge deletes, a page at a time and oldest first, the messages
in a final state whose ``expires_at`` lies more than ``days`` days back, with their history
rows; their refs, queue rows and callbacks go with them (triggers and cascades). It reads
``messages_expiry (expires_at, id)`` from its start, so a page costs what it deletes. Several
nodes may purge at once: each page's rows are locked (``SKIP LOCKED``), so no two delete the
same messages.
"""

from __future__ import annotations

import logging

import trio

from .config import RetentionConfig
from .errors import StoreError
from .metrics import Metrics
from .store import Store

log = logging.getLogger(__name__)

PURGE_PAGE = 5_000
"""Messages deleted per statement."""
PURGE_PAUSE = 0.05
"""Seconds between two pages, so that a long purge leaves the database to the traffic."""


async def purge_once(store: Store, days: int, *, page: int = PURGE_PAGE, pause: float = PURGE_PAUSE) -> int:
    """Delete the messages that retention lets go, page after page; returns how many."""
    deleted = 0
    while True:
        n = await store.purge_finished(days, page)
        deleted += n
        if n < page:
            return deleted
        await trio.sleep(pause)


async def serve_retention(store: Store, config: RetentionConfig, metrics: Metrics, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Purge every ``config.interval`` seconds until cancelled (nothing when ``days`` is 0)."""
    task_status.started()
    if config.days == 0:
        return
    while True:
        try:
            n = await purge_once(store, config.days)
        except StoreError as exc:
            log.warning("retention purge failed error=%s", exc)
        else:
            if n:
                metrics.messages_purged.inc(n)
                log.info("retention purged messages=%d older_than_days=%d", n, config.days)
        await trio.sleep(config.interval)
