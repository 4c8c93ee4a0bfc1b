"""Group commit of accepted messages: durable before acknowledged, hundreds per commit.

An API request hands its :class:`~gateway.store.AcceptRequest` to :meth:`Intake.accept` and
waits. Flusher tasks gather what is waiting into a batch — until ``max_rows`` recipients or
``max_delay`` seconds after the first, whichever comes first — write it in one transaction and
only then wake the waiters, who answer 202. One commit per message caps out below a thousand a
second; a batch per commit goes two orders of magnitude further.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from .config import IntakeConfig
from .errors import StoreError, StoreUnavailable
from .metrics import Metrics
from .store import AcceptRequest, AcceptResult, Store

log = logging.getLogger(__name__)


class _Pending:
    __slots__ = ("request", "done", "result", "error")

    def __init__(self, request: AcceptRequest) -> None:
        self.request = request
        self.done = trio.Event()
        self.result: AcceptResult | None = None
        self.error: StoreError | None = None


class Intake:
    def __init__(self, store: Store, config: IntakeConfig, metrics: Metrics,
                 on_commit: Callable[[], None] | None = None) -> None:
        self._store = store
        self._on_commit = on_commit
        self._config = config
        self._metrics = metrics
        self._send, self._receive = trio.open_memory_channel[_Pending](config.queue_size)
        self._running = False
        self._committing = 0
        """Batches being written now."""

    async def accept(self, request: AcceptRequest, *, timeout: float = 10.0) -> AcceptResult:
        """Store ``request`` durably; returns once its transaction has committed.

        Raises :class:`StoreUnavailable` when the database cannot take it within ``timeout``
        (the request may still commit later; a ``client_ref`` makes the retry safe).
        """
        if not self._running:
            raise StoreUnavailable("intake is not running")
        pending = _Pending(request)
        with trio.move_on_after(timeout) as scope:
            await self._send.send(pending)
            await pending.done.wait()
        if scope.cancelled_caught:
            raise StoreUnavailable(f"not committed within {timeout:g} s")
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def statistics(self) -> trio.MemoryChannelStatistics:
        return self._receive.statistics()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for n in range(self._config.flushers):
                nursery.start_soon(self._flusher, n)
            self._running = True
            task_status.started()
            try:
                await trio.sleep(math.inf)
            finally:
                self._running = False

    async def _gather(self) -> list[_Pending]:
        """The next batch: what is waiting now, and — only while another batch is being
        committed, so that waiting can pay off — what arrives within ``max_delay``. Like
        PostgreSQL's ``commit_delay`` with ``commit_siblings``: an idle gateway never lingers."""
        first = await self._receive.receive()
        batch = [first]
        rows = len(first.request.messages)
        deadline = trio.current_time() + self._config.max_delay
        while rows < self._config.max_rows:
            try:
                item = self._receive.receive_nowait()
            except trio.WouldBlock:
                if self._committing == 0:
                    break
                item = None
                with trio.move_on_at(deadline):
                    item = await self._receive.receive()
                if item is None:
                    break
            batch.append(item)
            rows += len(item.request.messages)
        return batch

    async def _flusher(self, n: int) -> None:
        while True:
            batch = await self._gather()
            started = trio.current_time()
            self._committing += 1
            try:
                with trio.CancelScope(shield=True):
                    # Once a batch is being written, finish it: its callers are waiting.
                    results = await self._store.accept([p.request for p in batch])
            except StoreError as exc:
                log.warning("intake batch failed flusher=%d requests=%d error=%s", n, len(batch), exc)
                for p in batch:
                    p.error = exc
                    p.done.set()
                continue
            finally:
                self._committing -= 1
            self._metrics.intake_commit.observe(trio.current_time() - started)
            self._metrics.intake_batch_rows.observe(len(batch))
            fresh = 0
            parts = 0
            for p, result in zip(batch, results):
                p.result = result
                p.done.set()
                if not result.duplicate:
                    fresh += len(result.messages)
                    parts += sum(m.parts for m in result.messages)
            if fresh and self._on_commit is not None:
                self._on_commit()
            self._metrics.messages_accepted.inc(fresh)
            self._metrics.message_parts_accepted.inc(parts)
