"""The admin websocket (SPEC.md "Admin websocket"): live traffic and state for operators.

:class:`AdminServer` listens on ``[admin] listen`` with trio-websocket. A handshake needs an
admin token (``Authorization: Bearer <token>`` or ``?token=``); without a valid one it is
refused with 401, logged without the token. ``[admin] token`` sees numbers masked and no
texts; ``[admin] privileged_token`` sees everything.

Each viewer gets a ``snapshot``, then the events the :class:`~admin_ws.hub.Hub` fans out,
through its filter and within its frame budget, in batches of one write, and a ``stats`` frame
each second. A viewer that falls behind loses events and is told how many (``dropped``); one
that answers no ping for ``stall_timeout`` seconds is disconnected. Neither slows the gateway:
the hub costs the gateway one subscriber, a viewer only reads from it, and what all viewers
are sent together is bounded (``total_rate``, ``FLUSHES_PER_SECOND``).
"""

from __future__ import annotations

import functools
import hmac
import logging
import math
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer
from wsproto.events import TextMessage
from wsproto.utilities import LocalProtocolError

from gateway.config import AdminConfig, split_listen
from gateway.errors import StoreError
from gateway.events import Event, EventBus
from gateway.metrics import Metrics
from gateway.store import Store

from .frames import (
    PASS_ALL,
    BadClientFrame,
    Board,
    ChannelState,
    Criteria,
    ErrorFrame,
    FilterAck,
    FilterRequest,
    Frame,
    FrameBudget,
    LinkState,
    ModemState,
    Pong,
    QueueState,
    Snapshot,
    Stats,
    check_prefix,
    decode_client_frame,
    encode,
    filter_view,
    matches,
    rates,
    to_frame,
)
from .hub import Hub

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 1.0
"""Seconds between ``stats`` frames (and rate samples)."""
HANDSHAKE_TIMEOUT = 10.0
"""Seconds a new connection has to complete its websocket handshake."""
CLOSE_TIMEOUT = 2.0
"""Seconds the closing handshake may take before the connection is simply dropped."""
CLIENT_QUEUE = 8
"""Client frames buffered before the server stops reading (the client is then slowed)."""
CLIENT_FRAME_MAX = 16 * 1024
"""Bytes a client frame may have; a larger one closes the connection (1009)."""
FLUSH_INTERVAL = 0.1
"""Seconds between two batches of frames to one viewer at least (events gather in the ring)."""
FLUSHES_PER_SECOND = 100.0
"""Batches a second to all viewers together at most: with many viewers each waits longer
between batches and gets more frames in each. A batch goes out in one write: the write is
what a frame costs the gateway, so this bounds the viewers' cost."""
QUEUE_SAMPLE_INTERVAL = 5.0
"""Seconds between two reads of the queue's depth and age for the board: the query walks the
queue, which may hold a campaign's worth of messages, so it is not run every second."""
BOARD_MAX_AGE = 2.0
"""Seconds a sampled board may be old and still go out in a snapshot."""


def _batch_writer(ws: WebSocketConnection) -> Callable[[list[str]], Awaitable[None]] | None:
    """One write for a batch of text messages, or None when this trio-websocket lacks the parts.

    trio-websocket's public API writes one message per call, and the write is what a frame
    costs the gateway. A batch is framed with the connection's own wsproto state and written
    under its own stream lock, as ``send_message`` does for one message: these are internals
    of trio-websocket (a test checks they are there, so an upgrade that moves them is noticed);
    without them the viewer sends one message per call."""
    proto = getattr(ws, "_wsproto", None)
    stream = getattr(ws, "_stream", None)
    lock = getattr(ws, "_stream_lock", None)
    if proto is None or stream is None or lock is None:
        return None

    async def write(texts: list[str]) -> None:
        if ws.closed is not None:
            raise ConnectionClosed(ws.closed)
        try:
            data = b"".join(proto.send(TextMessage(data=text)) for text in texts)
        except LocalProtocolError:  # closing: the reader task records why
            raise ConnectionClosed(ws.closed) from None
        async with lock:
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ConnectionClosed(ws.closed) from None

    return write


class _Stalled(Exception):
    """A send to the viewer took longer than ``stall_timeout``."""


def _remote(request: WebSocketRequest) -> str:
    try:
        r = request.remote
        return f"{r.address}:{r.port}" if hasattr(r, "port") else str(r)
    except OSError:
        return "?"


def _token(request: WebSocketRequest) -> str:
    for name, value in request.headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    query = urllib.parse.urlsplit(request.path).query
    values = urllib.parse.parse_qs(query).get("token")
    return values[0] if values else ""


def _error_body(code: str, message: str) -> bytes:
    return msgspec.json.encode({"error": {"code": code, "message": message}})


class AdminServer:
    """See the module docstring. ``channels`` gives the gateway's channels when called."""

    def __init__(self, config: AdminConfig, *, store: Store, bus: EventBus, metrics: Metrics,
                 channels: Callable[[], Iterable[object]]) -> None:
        self.config = config
        self._store = store
        self._metrics = metrics
        self._channels = channels
        self.hub = Hub(bus, config.buffer)
        self.port = 0
        self._board: Board | None = None
        self._board_at = -1e9
        self._totals: dict[str, float] = {}
        self._counters: dict[tuple[str, str], float] = {}
        self._sampled_at = 0.0
        self._rates: dict[str, float] = {}
        self._link_rates: dict[tuple[str, str], float] = {}
        self._queue: dict[str, QueueState] = {}
        self._queue_at = -math.inf

    # -- privilege --------------------------------------------------------------------------

    def privilege(self, token: str) -> bool | None:
        """True for the privileged token, False for the plain one, None for anything else."""
        if not token:
            return None
        if self.config.privileged_token and hmac.compare_digest(token.encode(), self.config.privileged_token.encode()):
            return True
        if self.config.token and hmac.compare_digest(token.encode(), self.config.token.encode()):
            return False
        return None

    def viewer_rate(self) -> float:
        """Frames a second each viewer may be sent now: its own cap, or its share of the total."""
        return min(self.config.viewer_rate, self.config.total_rate / max(1, self.hub.viewers))

    def flush_interval(self) -> float:
        """Seconds between two batches to one viewer now (see ``FLUSHES_PER_SECOND``)."""
        return max(FLUSH_INTERVAL, self.hub.viewers / FLUSHES_PER_SECOND)

    # -- service ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; reports the port listened on."""
        host, port = split_listen(self.config.listen)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.hub.run)
            await nursery.start(self._sample)
            listeners = await trio.open_tcp_listeners(port, host=host)
            server = WebSocketServer(
                self._handle, listeners,
                connect_timeout=HANDSHAKE_TIMEOUT, disconnect_timeout=CLOSE_TIMEOUT,
                message_queue_size=CLIENT_QUEUE, max_message_size=CLIENT_FRAME_MAX)
            await nursery.start(server.run)
            self.port = listeners[0].socket.getsockname()[1]
            log.info("admin stream up listen=%s:%d", host, self.port)
            task_status.started(self.port)

    async def _handle(self, request: WebSocketRequest) -> None:
        remote = _remote(request)
        path = urllib.parse.urlsplit(request.path).path
        if path not in ("", "/"):
            await request.reject(404, extra_headers=[(b"Content-Type", b"application/json")],
                                 body=_error_body("not_found", "the admin stream is at /"))
            return
        token = _token(request)
        privileged = self.privilege(token)
        if privileged is None:
            reason = "missing_token" if not token else "invalid_token"
            self._metrics.admin_refused.labels(reason).inc()
            log.warning("admin handshake refused remote=%s reason=%s", remote, reason)
            await request.reject(
                401, extra_headers=[(b"Content-Type", b"application/json"),
                                    (b"WWW-Authenticate", b'Bearer realm="smsgw-admin"')],
                body=_error_body("unauthorized", "send the admin token as `Authorization: Bearer <token>`"
                                                 " or as the `token` query parameter"))
            return
        if self.hub.viewers >= self.config.max_viewers:
            self._metrics.admin_refused.labels("too_many_viewers").inc()
            log.warning("admin handshake refused remote=%s reason=too_many_viewers max=%d",
                        remote, self.config.max_viewers)
            await request.reject(503, extra_headers=[(b"Content-Type", b"application/json"),
                                                     (b"Retry-After", b"10")],
                                 body=_error_body("too_many_viewers",
                                                  f"{self.config.max_viewers} viewers are connected already"))
            return
        ws = await request.accept()
        await _Viewer(self, ws, privileged=privileged, remote=remote).run()

    # -- board --------------------------------------------------------------------------------

    async def board(self) -> Board:
        """The latest board, sampled now if the last one is too old (nobody was watching)."""
        if self._board is None or trio.current_time() - self._board_at > BOARD_MAX_AGE:
            await self._refresh(queue=True)
        assert self._board is not None
        return self._board

    async def _sample(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(SAMPLE_INTERVAL)
            watched = self.hub.viewers > 0
            due = trio.current_time() - self._queue_at >= QUEUE_SAMPLE_INTERVAL
            await self._refresh(queue=watched and due)
            if watched:
                self.hub.publish_board(self._board)

    async def _refresh(self, *, queue: bool) -> None:
        """Read totals, channel statistics and (with ``queue``) the queue into a new board."""
        now = trio.current_time()
        elapsed = now - self._sampled_at if self._sampled_at else 0.0
        totals = self._metrics.totals()
        counters: dict[tuple[str, str], float] = {}
        channels = []
        for channel in self._channels():
            links, modems = [], []
            stats = getattr(channel, "statistics", None)
            for name, v in (stats() if stats is not None else {}).items():
                counters[(channel.name, name)] = v.get("submitted", 0.0)
                links.append(LinkState(
                    name=name, up=bool(v.get("up")), window_used=int(v.get("window_used", 0)),
                    window=int(v.get("window", 0)), queued=int(v.get("queued", 0)),
                    rate=self._link_rates.get((channel.name, name), 0.0)))
            modem_stats = getattr(channel, "modem_statistics", None)
            for name, v in (modem_stats() if modem_stats is not None else {}).items():
                counters[(channel.name, name)] = v.get("sent_today") or 0.0
                rssi = v.get("rssi")
                modems.append(ModemState(
                    name=name, state=str(v.get("state", "")), up=bool(v.get("up")),
                    rssi=None if rssi is None else int(rssi), registered=bool(v.get("registered")),
                    sent_today=int(v.get("sent_today") or 0), queued=int(v.get("queued") or 0),
                    rate=self._link_rates.get((channel.name, name), 0.0)))
            channels.append(ChannelState(name=channel.name, up=bool(getattr(channel, "up", False)),
                                         links=links, modems=modems))
        if elapsed >= SAMPLE_INTERVAL / 2:
            self._rates = rates(self._totals, totals, elapsed)
            self._link_rates = rates(self._counters, counters, elapsed)  # type: ignore[arg-type]
            self._totals, self._counters, self._sampled_at = totals, counters, now
        elif not self._sampled_at:
            self._rates = {k: 0.0 for k in totals}
            self._totals, self._counters, self._sampled_at = totals, counters, now
        if queue:
            self._queue_at = trio.current_time()
            try:
                stats = await self._store.queue_stats()
                self._queue = {k: QueueState(depth=d, oldest_age_s=round(a, 3)) for k, (d, a) in stats.items()}
                for klass in ("transactional", "marketing"):
                    self._queue.setdefault(klass, QueueState(depth=0, oldest_age_s=0.0))
            except StoreError as exc:  # the board goes out with the last queue figures
                log.warning("admin board: queue unavailable error=%s", exc)
        self._board = Board(at=round(time.time(), 3), channels=channels, queue=dict(self._queue),
                            rates=dict(self._rates), totals=totals, viewers=self.hub.viewers)
        self._board_at = now

    # -- filters ------------------------------------------------------------------------------

    async def resolve(self, request: FilterRequest, *, privileged: bool) -> Criteria:
        """Turn a client's filter into criteria, looking names up in the store."""
        check_prefix(request.prefix, privileged=privileged)
        account_ids = None
        merchant_id = None
        try:
            if request.account is not None:
                if request.account.isdigit():
                    account_ids = frozenset({int(request.account)})
                else:
                    account = await self._store.account_by_name(request.account)
                    if account is None:
                        raise BadClientFrame("unknown_account", f"no account named {request.account!r}")
                    account_ids = frozenset({account.id})
            if request.merchant is not None:
                merchant = next((m for m in await self._store.merchants() if m.name == request.merchant), None)
                if merchant is None:
                    raise BadClientFrame("unknown_merchant", f"no merchant named {request.merchant!r}")
                merchant_id = merchant.id
                account_ids = (account_ids or frozenset({merchant.account_id})) & frozenset({merchant.account_id})
        except StoreError:
            raise BadClientFrame("unavailable", "the database is unreachable; try the filter again") from None
        statuses = request.status
        if isinstance(statuses, str):
            statuses = [statuses]
        criteria = Criteria(
            channel=request.channel, account_ids=account_ids, merchant_id=merchant_id,
            statuses=frozenset(statuses) if statuses is not None else None, prefix=request.prefix,
            types=frozenset(request.types) if request.types is not None else None)
        return PASS_ALL if criteria == Criteria() else criteria


def _stats_frame(board: Board, seq: int, dropped: int) -> Frame:
    return Stats(seq=seq, dropped=dropped, board=board)


class _Viewer:
    """One connected viewer: a writer (snapshot, events, stats) and a reader (client frames)."""

    def __init__(self, server: AdminServer, ws: WebSocketConnection, *, privileged: bool, remote: str) -> None:
        self._server = server
        self._ws = ws
        self._write_batch = _batch_writer(ws)
        self._metrics = server._metrics
        self.privileged = privileged
        self.remote = remote
        self.criteria = PASS_ALL
        self.filter: dict[str, object] = {}
        self.seq = 0
        self.pending_dropped = 0
        self.dropped_total = 0
        self.frames = 0
        self._lock = trio.Lock()
        self.outcome = "closed"

    async def run(self) -> None:
        hub = self._server.hub
        position = hub.attach()
        self._metrics.admin_viewers.inc()
        log.info("admin viewer connected remote=%s privileged=%s viewers=%d", self.remote, self.privileged,
                 hub.viewers)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, nursery.cancel_scope)
                nursery.start_soon(self._keepalive, nursery.cancel_scope)
                await self._write(position)
                nursery.cancel_scope.cancel()
        finally:
            hub.detach()
            self._metrics.admin_viewers.dec()
            if self.outcome == "stalled":
                self._metrics.admin_disconnects.labels("stalled").inc()
                log.warning("admin viewer disconnected remote=%s reason=stalled timeout=%.1fs frames=%d dropped=%d",
                            self.remote, self._server.config.stall_timeout, self.frames, self.dropped_total)
            else:
                log.info("admin viewer left remote=%s frames=%d dropped=%d", self.remote, self.frames,
                         self.dropped_total)

    def _drop(self, n: int) -> None:
        if n:
            self.pending_dropped += n
            self.dropped_total += n
            self._metrics.admin_dropped.inc(n)

    async def _send(self, *makers: Callable[[int, int], Frame]) -> None:
        """Number frames, attach the pending drop count to the first, send them in one write;
        :class:`_Stalled` when the connection takes nothing for ``stall_timeout`` seconds."""
        async with self._lock:
            texts = []
            for make in makers:
                self.seq += 1
                texts.append(encode(make(self.seq, self.pending_dropped)))
                self.pending_dropped = 0
            with trio.move_on_after(self._server.config.stall_timeout) as scope:
                if self._write_batch is not None and len(texts) > 1:
                    await self._write_batch(texts)
                else:
                    for text in texts:
                        await self._ws.send_message(text)
            if scope.cancelled_caught:
                raise _Stalled()
            self.frames += len(texts)
            self._metrics.admin_frames.inc(len(texts))

    async def _write(self, position: int) -> None:
        server, hub = self._server, self._server.hub
        try:
            board = await server.board()
            await self._send(lambda seq, dropped: Snapshot(
                seq=seq, dropped=dropped, privileged=self.privileged, filter=self.filter, board=board))
            seen_board = hub.board_version
            rate = server.viewer_rate()
            budget = FrameBudget(rate, max(1.0, rate), trio.current_time())
            flushed = -math.inf
            while True:
                # At most one batch per FLUSH_INTERVAL, and none without budget: events gather
                # in the ring meanwhile. A quiet stream's next event goes out as it comes.
                await trio.sleep_until(flushed + server.flush_interval())
                if budget.refill(trio.current_time(), server.viewer_rate()) < 1.0 and \
                        hub.board_version == seen_board:
                    await trio.sleep(budget.wait_time() + 0.001)
                await hub.wait(position, seen_board)
                makers: list[Callable[[int, int], Frame]] = []
                if hub.board_version != seen_board:
                    seen_board = hub.board_version
                    makers.append(functools.partial(_stats_frame, hub.board))
                allowed = int(budget.refill(trio.current_time()))
                criteria = self.criteria
                if criteria is PASS_ALL:  # every event passes: read only the newest the budget allows
                    passing, position, skipped = hub.tail(position, allowed)
                    self._drop(skipped)
                else:  # a filter must see every event
                    events, position, lost = hub.read(position, hub.size)
                    self._drop(lost + events.count(None))
                    passing = [e for e in events if e is not None and matches(criteria, e)]
                if len(passing) > allowed:  # over budget: the newest are the ones worth seeing
                    self._drop(len(passing) - allowed)
                    passing = passing[len(passing) - allowed:]
                for event in passing:
                    budget.take()
                    makers.append(functools.partial(self._event_frame, event))
                if makers:
                    await self._send(*makers)
                flushed = trio.current_time()
        except _Stalled:
            self.outcome = "stalled"
        except ConnectionClosed:
            self.outcome = "closed"

    async def _keepalive(self, cancel_scope: trio.CancelScope) -> None:
        """Ping the viewer; one that does not answer within ``stall_timeout`` is not reading
        (or is that far behind, the pong queued after what it has not read yet): cut it off."""
        timeout = self._server.config.stall_timeout
        try:
            while True:
                await trio.sleep(timeout / 2)
                with trio.move_on_after(timeout) as scope:
                    await self._ws.ping()
                if scope.cancelled_caught:
                    self.outcome = "stalled"
                    cancel_scope.cancel()
                    return
        except ConnectionClosed:
            cancel_scope.cancel()

    def _event_frame(self, event: Event, seq: int, dropped: int) -> Frame:
        return to_frame(event, seq=seq, dropped=dropped, privileged=self.privileged)

    async def _read(self, cancel_scope: trio.CancelScope) -> None:
        try:
            while True:
                data = await self._ws.get_message()
                try:
                    request = decode_client_frame(data)
                    if isinstance(request, FilterRequest):
                        self.criteria = await self._server.resolve(request, privileged=self.privileged)
                        self.filter = filter_view(request)
                        view = self.filter
                        await self._send(lambda seq, dropped: FilterAck(seq=seq, dropped=dropped, filter=view))
                    else:
                        await self._send(lambda seq, dropped: Pong(seq=seq, dropped=dropped))
                except BadClientFrame as exc:
                    code, message = exc.code, exc.message
                    log.info("admin viewer sent a bad frame remote=%s code=%s", self.remote, code)
                    await self._send(lambda seq, dropped: ErrorFrame(seq=seq, dropped=dropped, code=code,
                                                                     message=message))
        except _Stalled:
            self.outcome = "stalled"
        except ConnectionClosed:
            pass
        cancel_scope.cancel()
