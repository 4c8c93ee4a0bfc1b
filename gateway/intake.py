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

EXPIRY_TICK = 0.25
"""How often the deadlines of waiting requests are checked: a timeout fires up to this late."""


class _Pending:
    """One request on its way through the intake.

    ``task`` is the waiting caller until it is answered, then ``None``: the flusher, the
    deadline check and the caller's own cancellation each answer it at most once, whoever
    comes first. ``taken`` is set once a flusher starts writing it."""

    __slots__ = ("request", "deadline", "task", "taken", "result", "error")

    def __init__(self, request: AcceptRequest, deadline: float, task: trio.lowlevel.Task) -> None:
        self.request = request
        self.deadline = deadline
        self.task: trio.lowlevel.Task | None = task
        self.taken = False
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
        self._waiting: set[_Pending] = set()
        """Requests whose callers wait for an answer, for the deadline check."""

    async def accept(self, request: AcceptRequest, *, timeout: float = 10.0) -> AcceptResult:
        """Store ``request`` durably; returns once its transaction has committed.

        Raises :class:`StoreUnavailable` when the database cannot take it within ``timeout``
        (checked every :data:`EXPIRY_TICK`). A request that times out before a batch took it
        is never stored; one already being written may still commit (a ``client_ref`` makes
        the retry safe). Cancelling the caller behaves the same way.

        The wait costs one pass through the scheduler: no cancel scope or Event per request;
        the intake's flusher wakes the caller directly and one task checks every deadline.
        """
        if not self._running:
            raise StoreUnavailable("intake is not running")
        deadline = trio.current_time() + timeout
        pending = _Pending(request, deadline, trio.lowlevel.current_task())
        try:
            self._send.send_nowait(pending)
        except trio.WouldBlock:  # the queue is full: wait for room, within the deadline
            with trio.move_on_at(deadline) as scope:
                await self._send.send(pending)
            if scope.cancelled_caught:  # a cancelled send handed nothing over
                raise StoreUnavailable(f"not committed within {timeout:g} s") from None
        waiting = self._waiting
        waiting.add(pending)

        def abort(_: object) -> trio.lowlevel.Abort:
            pending.task = None
            waiting.discard(pending)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _answer(self, pending: _Pending) -> None:
        task = pending.task
        if task is not None:
            pending.task = None
            self._waiting.discard(pending)
            trio.lowlevel.reschedule(task)

    def statistics(self) -> trio.MemoryChannelStatistics:
        return self._receive.statistics()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for n in range(self._config.flushers):
                nursery.start_soon(self._flusher, n)
            nursery.start_soon(self._expire)
            self._running = True
            task_status.started()
            try:
                await trio.sleep(math.inf)
            finally:
                self._running = False
                # Nothing will answer the callers still waiting now (a batch being written is
                # shielded and answers its own before this nursery exits).
                for pending in [p for p in self._waiting if not p.taken]:
                    pending.error = StoreUnavailable("the intake stopped")
                    self._answer(pending)

    async def _expire(self) -> None:
        """Answer the requests whose deadline has passed with :class:`StoreUnavailable`."""
        while True:
            await trio.sleep(EXPIRY_TICK)
            now = trio.current_time()
            for pending in [p for p in self._waiting if p.deadline <= now]:
                pending.error = StoreUnavailable(
                    "not committed in time" if pending.taken else "not taken into a commit in time")
                self._answer(pending)

    async def _receive_live(self) -> _Pending:
        """The next queued request whose caller still waits; the others are dropped unstored
        (their callers were answered 503, or went away)."""
        while True:
            item = await self._receive.receive()
            if item.task is not None:
                return item

    async def _gather(self) -> list[_Pending]:
        """The next batch: what is waiting now, and — only while another batch is being
        committed, so that waiting can pay off — what arrives within ``max_delay``. Like
        PostgreSQL's ``commit_delay`` with ``commit_siblings``: an idle gateway never lingers."""
        first = await self._receive_live()
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
                    item = await self._receive_live()
                if item is None:
                    break
            if item.task is None:
                continue
            batch.append(item)
            rows += len(item.request.messages)
        return batch

    async def _flusher(self, n: int) -> None:
        while True:
            # Taken only now, with no checkpoint before the shielded commit: a request the
            # deadline check answered while the batch was gathered stays out of it, and if
            # the intake stops while a batch is gathered, run() answers its callers.
            batch = [p for p in await self._gather() if p.task is not None]
            if not batch:
                continue
            for p in batch:
                p.taken = True
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
                    self._answer(p)
                continue
            finally:
                self._committing -= 1
            self._metrics.intake_commit.observe(trio.current_time() - started)
            self._metrics.intake_batch_rows.observe(len(batch))
            fresh = 0
            parts = 0
            for p, result in zip(batch, results):
                p.result = result
                self._answer(p)
                if not result.duplicate:
                    fresh += len(result.messages)
                    parts += sum(m.parts for m in result.messages)
            if fresh and self._on_commit is not None:
                self._on_commit()
            self._metrics.messages_accepted.inc(fresh)
            self._metrics.message_parts_accepted.inc(parts)
