"""The SP side of one CMPP TCP connection, on Trio: :class:`CmppLink`.

A thin driver around :class:`~gateway.cmpp.connection.CmppConnection`: it connects with
exponential backoff, logs in, keeps the window full from its input, obeys a per-link
messages/second rate, backs off and retries on Result 8 (never drops), answers every
DELIVER and ACTIVE_TEST, heartbeats an idle link, reconnects after any drop and re-submits
whatever was unacknowledged (cmpp.md "Timing and flow").

The gateway talks to it through :class:`SubmitRequest` (``await link.submit(request)``) and
the events sent on the bounded channel it passes in: :class:`LinkUp`, :class:`LinkDown`,
:class:`SubmitAcked`, :class:`SubmitRejected`, :class:`StatusReport`, :class:`MoReceived`.
A message whose SUBMIT_RESP was lost with the connection is submitted again, so the ISMG may
see it twice; CMPP offers no way to tell.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from gateway.cmpp.auth import timestamp
from gateway.cmpp.codec import MAX_MSG_LENGTH, status_report_fields
from gateway.cmpp.connection import (
    CmppConnection,
    ConnectionStatistics,
    Event,
    LinkDead,
    LoginAccepted,
    LoginRefused,
    ProtocolFailure,
    RequestReceived,
    ResponseReceived,
    Role,
    StrayResponse,
    TerminateRequested,
    Terminated,
)
from gateway.cmpp.errors import LinkError, LocalProtocolError, RemoteProtocolError
from gateway.cmpp.longsms import Reassembled, Reassembler
from gateway.cmpp.pdus import (
    VERSION_3_0,
    ActiveTest,
    ActiveTestResp,
    Deliver,
    DeliverResp,
    MsgFmt,
    Submit,
    SubmitResp,
    SubmitResult,
    Terminate,
    TerminateResp,
    decode_text,
)
from gateway.cmpp.ratelimit import TokenBucket

__all__ = [
    "INPUT_QUEUE_SIZE",
    "CmppLinkConfig",
    "SubmitRequest",
    "LinkEvent",
    "LinkUp",
    "LinkDown",
    "SubmitAcked",
    "SubmitRejected",
    "StatusReport",
    "MoReceived",
    "LinkStatistics",
    "CmppLink",
    "mask_number",
    "is_transient",
]

logger = logging.getLogger(__name__)

#: Submit requests accepted by a link ahead of the window.
INPUT_QUEUE_SIZE = 256
#: SUBMITs framed into one write at most.
MAX_SUBMITS_PER_WRITE = 64
#: Bytes asked of the socket per read.
RECEIVE_SIZE = 65536
#: Seconds a graceful TERMINATE may take when the link is stopped.
CLOSE_TIMEOUT = 2.0

#: SUBMIT_RESP results that are worth retrying later (anything from 9 up is unspecified).
_PERMANENT_RESULTS = frozenset(
    {
        SubmitResult.BAD_STRUCTURE,
        SubmitResult.BAD_COMMAND,
        SubmitResult.BAD_LENGTH,
        SubmitResult.BAD_FEE_CODE,
        SubmitResult.TOO_LONG,
        SubmitResult.BAD_SERVICE_CODE,
    }
)


def is_transient(result: int) -> bool:
    """Whether a SUBMIT_RESP Result may succeed if tried again (3, 8 and 9+)."""
    return result != SubmitResult.OK and result not in _PERMANENT_RESULTS


def mask_number(number: str) -> str:
    """A phone number fit for logs: 138****8000."""
    if len(number) < 8:
        return "****"
    return f"{number[:3]}****{number[-4:]}"


class CmppLinkConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One TCP connection to an ISMG. Times in seconds; ``rate`` in messages per second."""

    sp_id: str
    secret: str
    host: str = "127.0.0.1"
    port: int = 7890
    version: int = VERSION_3_0
    name: str = "cmpp"
    window: int = 16
    rate: float = 200.0
    response_timeout: float = 60.0
    max_retries: int = 3
    active_test_interval: float = 180.0
    connect_timeout: float = 10.0
    reconnect_initial: float = 1.0
    reconnect_max: float = 60.0
    flow_control_initial: float = 0.5
    flow_control_max: float = 10.0
    reassembly_timeout: float = 120.0
    tick_interval: float = 1.0
    verify_ismg: bool = True


class SubmitRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One SUBMIT (one part of a message) to send; ``ref`` is opaque to the link and comes
    back in SubmitAcked / SubmitRejected."""

    ref: Any
    dest: str
    src_id: str
    content: bytes
    msg_fmt: int = MsgFmt.UCS2
    udhi: int = 0
    pk_total: int = 1
    pk_number: int = 1
    registered_delivery: int = 1
    service_id: str = ""
    msg_level: int = 0
    fee_usertype: int = 0
    fee_type: str = "01"
    fee_code: str = "000000"
    valid_time: str = ""
    at_time: str = ""
    link_id: str = ""


class LinkEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Base of what a link reports; ``link`` is its configured name."""

    link: str


class LinkUp(LinkEvent, frozen=True, kw_only=True):
    version: int


class LinkDown(LinkEvent, frozen=True, kw_only=True):
    reason: str


class SubmitAcked(LinkEvent, frozen=True, kw_only=True):
    ref: Any
    msg_id: int


class SubmitRejected(LinkEvent, frozen=True, kw_only=True):
    ref: Any
    result: int
    transient: bool


class StatusReport(LinkEvent, frozen=True, kw_only=True):
    """A delivery report: ``stat`` is DELIVRD, UNDELIV, ... or an operator code."""

    msg_id: int
    stat: str
    dest: str
    submit_time: str
    done_time: str


class MoReceived(LinkEvent, frozen=True, kw_only=True):
    """A mobile-originated message, long ones reassembled. ``complete`` is False when parts
    never arrived within the reassembly timeout (``text`` then holds what did)."""

    src: str
    dest: str
    text: str
    msg_fmt: int
    received_at: float
    content: bytes = b""
    complete: bool = True


class LinkStatistics(msgspec.Struct, frozen=True, kw_only=True):
    up: bool
    connects: int
    logins: int
    submitted: int
    acked: int
    rejected: int
    flow_controlled: int
    resubmitted: int
    reports: int
    mo: int
    retry_queue: int
    input_queue: int
    window_used: int
    connection: ConnectionStatistics | None = None


class _LinkEnded(Exception):
    """Internal: ends one connection's tasks with a reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _connect_timestamp(wall: float) -> int:
    tm = time.localtime(wall)
    return timestamp(tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec)


async def _acquire(lock: trio.StrictFIFOLock) -> None:
    """Take ``lock``; when it is free, without the scheduler round trip ``acquire()`` costs."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


class CmppLink:
    """The SP end of one CMPP connection. Start with ``await nursery.start(link.run)``."""

    def __init__(
        self,
        config: CmppLinkConfig,
        events: trio.MemorySendChannel[LinkEvent],
        *,
        input_size: int = INPUT_QUEUE_SIZE,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._events = events
        self._wall = wall_clock
        self._input_send, self._input_recv = trio.open_memory_channel[SubmitRequest](input_size)
        self._retry: deque[SubmitRequest] = deque()
        self._input_count = 0  # requests in the input queue, for ``queued`` (its statistics() is dear)
        self._bucket: TokenBucket | None = None  # made in run(), on the run's clock
        self._paused_until = 0.0
        self._fc_backoff = config.flow_control_initial
        self._reassembler = Reassembler(timeout=config.reassembly_timeout)
        self._conn: CmppConnection | None = None
        self._write_lock = trio.StrictFIFOLock()
        self._replies: bytearray | None = None
        self._event_lock = trio.StrictFIFOLock()
        self._window_freed = trio.Event()
        self._input_wait: trio.CancelScope | None = None
        self._up = False
        self.connects = 0
        self.logins = 0
        self.submitted = 0
        self.acked = 0
        self.rejected = 0
        self.flow_controlled = 0
        self.resubmitted = 0
        self.reports = 0
        self.mo = 0

    # -- the gateway's side ------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self._up

    async def submit(self, request: SubmitRequest) -> None:
        """Queue a SUBMIT; waits while the link's input queue is full (backpressure).

        With room in the queue it returns without a scheduler round trip (no checkpoint), so
        a caller queueing many in a row does so in one step; a full queue always waits."""
        _check_request(request)
        try:
            self._input_send.send_nowait(request)
        except trio.WouldBlock:
            await self._input_send.send(request)
        self._input_count += 1

    def submit_nowait(self, request: SubmitRequest) -> None:
        """Queue a SUBMIT or raise trio.WouldBlock when the input queue is full.

        Both raise :class:`LocalProtocolError` at once for a request CMPP cannot carry, so one
        bad request fails its caller, never the link that would have framed it."""
        _check_request(request)
        self._input_send.send_nowait(request)
        self._input_count += 1

    @property
    def queued(self) -> int:
        """SUBMITs waiting to go: the input queue and those to send again (after a reconnect
        or flow control). What a channel compares, per message, to place it on the least busy
        link; two integers, where :meth:`statistics` builds whole records."""
        return self._input_count + len(self._retry)

    def statistics(self) -> LinkStatistics:
        conn = self._conn
        return LinkStatistics(
            up=self._up,
            connects=self.connects,
            logins=self.logins,
            submitted=self.submitted,
            acked=self.acked,
            rejected=self.rejected,
            flow_controlled=self.flow_controlled,
            resubmitted=self.resubmitted,
            reports=self.reports,
            mo=self.mo,
            retry_queue=len(self._retry),
            input_queue=self._input_send.statistics().current_buffer_used,
            window_used=(conn.window - conn.window_available()) if conn is not None else 0,
            connection=conn.statistics() if conn is not None else None,
        )

    async def _emit(self, event: LinkEvent) -> None:
        # The common case, room in the buffer, skips the scheduler round trip that an awaited
        # send costs; the reader's next receive is the checkpoint. A full buffer still waits.
        try:
            try:
                self._events.send_nowait(event)
            except trio.WouldBlock:
                await self._events.send(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise LinkError(f"link={self.config.name} event channel closed") from None

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, log in and serve; reconnect with exponential backoff, forever."""
        cfg = self.config
        if self._bucket is None:
            self._bucket = TokenBucket(cfg.rate, now=trio.current_time())
        task_status.started()
        delay = cfg.reconnect_initial
        while True:
            was_up, reason = await self._connect_once()
            if was_up:
                delay = cfg.reconnect_initial
            logger.warning("cmpp link down link=%s reason=%s retry_in=%.1fs", cfg.name, reason,
                           delay)
            await self._emit(LinkDown(link=cfg.name, reason=reason))
            await trio.sleep(delay)
            delay = min(delay * 2, cfg.reconnect_max)

    async def _connect_once(self) -> tuple[bool, str]:
        """One connection's life; returns (whether it logged in, why it ended)."""
        cfg = self.config
        self.connects += 1
        try:
            with trio.fail_after(cfg.connect_timeout):
                stream = await trio.open_tcp_stream(cfg.host, cfg.port)
        except (OSError, trio.TooSlowError) as exc:
            return False, f"connect to {cfg.host}:{cfg.port} failed: {exc!r}"
        conn = CmppConnection(
            Role.CLIENT,
            cfg.version,
            sp_id=cfg.sp_id,
            secret=cfg.secret,
            window=cfg.window,
            response_timeout=cfg.response_timeout,
            max_retries=cfg.max_retries,
            active_test_interval=cfg.active_test_interval,
            verify_ismg=cfg.verify_ismg,
        )
        self._conn = conn
        was_up = False
        reason = "closed"
        try:
            try:
                await self._login(stream, conn)
                was_up = True
                self._up = True
                self.logins += 1
                logger.info("cmpp link up link=%s host=%s port=%s version=0x%02x", cfg.name,
                            cfg.host, cfg.port, conn.version)
                await self._emit(LinkUp(link=cfg.name, version=conn.version))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader, stream, conn)
                    nursery.start_soon(self._ticker, stream, conn)
                    nursery.start_soon(self._pump, stream, conn)
            except* LinkError as group:
                raise group.exceptions[0] from None
            except* _LinkEnded as group:
                reason = str(group.exceptions[0])
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
                reason = f"connection lost: {group.exceptions[0]!r}"
            except* trio.TooSlowError:
                reason = f"login unanswered after {cfg.response_timeout:g}s"
            return was_up, reason
        finally:
            self._up = False
            self._requeue_unacknowledged(conn)
            with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                scope.shield = True
                if conn.established:
                    await self._terminate(stream, conn)
                await stream.aclose()

    async def _terminate(self, stream: trio.SocketStream, conn: CmppConnection) -> None:
        """Graceful close when the link is stopped: TERMINATE, then wait for its RESP."""
        try:
            await stream.send_all(conn.send(Terminate(), now=trio.current_time()))
            while not conn.closed:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                conn.receive_data(data, now=trio.current_time())
                while (ev := conn.next_event()) is not None:
                    if isinstance(ev, Terminated):
                        logger.info("cmpp link terminated link=%s", self.config.name)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return

    def _requeue_unacknowledged(self, conn: CmppConnection) -> None:
        unacked = [ctx for _pdu, ctx in conn.unacknowledged() if isinstance(ctx, SubmitRequest)]
        if unacked:
            self.resubmitted += len(unacked)
            logger.info("cmpp resubmit link=%s count=%d", self.config.name, len(unacked))
            self._retry.extendleft(reversed(unacked))

    async def _login(self, stream: trio.SocketStream, conn: CmppConnection) -> None:
        cfg = self.config
        now = trio.current_time()
        await stream.send_all(conn.login(timestamp=_connect_timestamp(self._wall()), now=now))
        with trio.fail_after(cfg.response_timeout):
            while True:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    raise _LinkEnded("connection closed during login")
                conn.receive_data(data, now=trio.current_time())
                while (ev := conn.next_event()) is not None:
                    match ev:
                        case LoginAccepted():
                            return
                        case LoginRefused():
                            raise _LinkEnded(f"login refused: {ev.reason}")
                        case ProtocolFailure() | LinkDead():
                            raise _LinkEnded(f"login failed: {ev.reason}")

    # -- the connection's tasks ---------------------------------------------------------------

    async def _write(self, stream: trio.SocketStream, data: bytes) -> None:
        if data:
            await _acquire(self._write_lock)
            try:
                await stream.send_all(data)
            finally:
                self._write_lock.release()

    async def _reader(self, stream: trio.SocketStream, conn: CmppConnection) -> None:
        await self._drain(stream, conn)  # frames that came in the same read as CONNECT_RESP
        while True:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise _LinkEnded("connection closed by the ISMG")
            conn.receive_data(data, now=trio.current_time())
            await self._drain(stream, conn)

    async def _ticker(self, stream: trio.SocketStream, conn: CmppConnection) -> None:
        while True:
            await trio.sleep(self.config.tick_interval)
            now = trio.current_time()
            await self._write(stream, conn.tick(now))
            for partial in self._reassembler.expire(now):
                await self._deliver_mo(partial)
            await self._drain(stream, conn)

    async def _pump(self, stream: trio.SocketStream, conn: CmppConnection) -> None:
        """Keep the window full: window room, flow-control pause and rate token first, then
        take a request and send it with no await in between (so none can be lost)."""
        bucket = self._bucket
        assert bucket is not None
        while True:
            while not conn.window_available():
                self._window_freed = trio.Event()
                await self._window_freed.wait()
            if trio.current_time() < self._paused_until:
                await trio.sleep_until(self._paused_until)
                continue
            delay = bucket.delay(trio.current_time())
            if delay > 0:
                await trio.sleep(delay)
                continue
            request: SubmitRequest | None
            if self._retry:
                request = self._retry.popleft()
            else:
                try:  # queued input needs no wait (the write below is the checkpoint)
                    request = self._input_recv.receive_nowait()
                except trio.WouldBlock:
                    # Wait for input; a request coming back for retry (Result 8) ends the wait.
                    request = None
                    with trio.CancelScope() as self._input_wait:
                        request = await self._input_recv.receive()
                    self._input_wait = None
                if request is None:
                    continue
                self._input_count -= 1
                if trio.current_time() < self._paused_until or not conn.window_available():
                    self._retry.appendleft(request)
                    continue
            if not conn.established:
                # The reader saw the link end; it is about to cancel this task.
                self._retry.appendleft(request)
                await trio.sleep_forever()
            now = trio.current_time()
            bucket.try_take(now)
            frames = [conn.send(self._to_submit(request), now=now, context=request)]
            # Whatever else the window, the rate and the input allow right now goes in the same
            # write: one syscall for a window's worth of SUBMITs. Each is tracked by the
            # connection as it is framed, so a failed write loses none (they are re-submitted).
            retry, take_input, send, to_submit = (
                self._retry, self._input_recv.receive_nowait, conn.send, self._to_submit)
            while len(frames) < MAX_SUBMITS_PER_WRITE and conn.window_available() and now >= self._paused_until:
                if retry:
                    if not bucket.try_take(now):
                        break
                    more = retry.popleft()
                else:
                    try:
                        more = take_input()
                    except trio.WouldBlock:
                        break
                    self._input_count -= 1
                    if not bucket.try_take(now):
                        retry.appendleft(more)  # first in line once the rate allows
                        break
                frames.append(send(to_submit(more), now=now, context=more))
            self.submitted += len(frames)
            await self._write(stream, b"".join(frames))

    def _to_submit(self, r: SubmitRequest) -> Submit:
        return Submit(
            pk_total=r.pk_total,
            pk_number=r.pk_number,
            registered_delivery=r.registered_delivery,
            msg_level=r.msg_level,
            service_id=r.service_id,
            fee_usertype=r.fee_usertype,
            tp_udhi=r.udhi,
            msg_fmt=r.msg_fmt,
            msg_src=self.config.sp_id,
            fee_type=r.fee_type,
            fee_code=r.fee_code,
            valid_time=r.valid_time,
            at_time=r.at_time,
            src_id=r.src_id,
            dest_terminal_ids=(r.dest,),
            msg_content=r.content,
            link_id=r.link_id,
        )

    async def _drain(self, stream: trio.SocketStream, conn: CmppConnection) -> None:
        """Handle every event the last read produced; the responses they call for (DELIVER_RESP,
        ACTIVE_TEST_RESP) go out together in one write, after the events were passed on."""
        await _acquire(self._event_lock)
        try:
            self._replies = bytearray()
            now = trio.current_time()  # one time for the events of one read
            try:
                while (ev := conn.next_event()) is not None:
                    if type(ev) is ResponseReceived:
                        # The steady state's bulk, without a coroutine per event: a SUBMIT_RESP.
                        self._wake_pump()
                        resp, req = ev.response, ev.context
                        if type(resp) is SubmitResp and type(req) is SubmitRequest:
                            out = self._on_submit_resp(req, resp, now)
                            if out is not None:
                                await self._emit(out)
                        continue
                    if (
                        type(ev) is RequestReceived and type(ev.pdu) is Deliver
                        and ev.pdu.registered_delivery == 1 and not conn.closed
                    ):
                        # ... and a status report, answered in this read's one write.
                        deliver = ev.pdu
                        await self._emit(self._report_event(deliver))
                        self._replies += conn.respond(
                            ev.sequence_id, DeliverResp(msg_id=deliver.msg_id), now=now)
                        continue
                    await self._on_event(ev, stream, conn)
            finally:
                replies, self._replies = self._replies, None
                if replies and not conn.closed:
                    await self._write(stream, bytes(replies))
        finally:
            self._event_lock.release()

    async def _reply(self, stream: trio.SocketStream, data: bytes) -> None:
        if self._replies is not None:
            self._replies += data
        else:
            await self._write(stream, data)

    def _wake_pump(self) -> None:
        # The pump makes a fresh Event each time it waits for room; setting a set one is a no-op.
        self._window_freed.set()

    async def _on_event(self, ev: Event, stream: trio.SocketStream, conn: CmppConnection) -> None:
        name = self.config.name
        now = trio.current_time()
        match ev:
            case ResponseReceived():
                self._wake_pump()
            case RequestReceived(pdu=Deliver() as deliver):
                if deliver.registered_delivery == 1:
                    await self._emit(self._report_event(deliver))
                else:
                    await self._on_mo(deliver, now)
                if not conn.closed:
                    await self._reply(stream, conn.respond(
                        ev.sequence_id, DeliverResp(msg_id=deliver.msg_id), now=now))
            case RequestReceived(pdu=ActiveTest()):
                if not conn.closed:
                    await self._reply(stream, conn.respond(ev.sequence_id, ActiveTestResp(),
                                                           now=now))
            case RequestReceived(pdu=Submit()):
                logger.warning("cmpp unexpected SUBMIT from ISMG link=%s seq=%d", name,
                               ev.sequence_id)
                if not conn.closed:
                    await self._write(stream, conn.respond(
                        ev.sequence_id, SubmitResp(msg_id=0, result=SubmitResult.BAD_COMMAND),
                        now=now))
            case RequestReceived():
                logger.warning("cmpp unexpected request link=%s pdu=%s seq=%d", name,
                               type(ev.pdu).__name__, ev.sequence_id)
            case TerminateRequested():
                if not conn.closed:
                    # After the replies already owed, so that they are not lost behind it.
                    await self._reply(stream, conn.respond(ev.sequence_id, TerminateResp(), now=now))
                    if self._replies:
                        replies, self._replies = bytes(self._replies), bytearray()
                        await self._write(stream, replies)
                raise _LinkEnded("terminated by the ISMG")
            case ProtocolFailure():
                logger.warning("cmpp protocol failure link=%s reason=%s", name, ev.reason)
                raise _LinkEnded(f"protocol failure: {ev.reason}")
            case LinkDead():
                logger.warning("cmpp link dead link=%s reason=%s", name, ev.reason)
                raise _LinkEnded(f"link dead: {ev.reason}")
            case StrayResponse():
                logger.debug("cmpp stray response link=%s seq=%d pdu=%s", name, ev.sequence_id,
                             type(ev.pdu).__name__)

    def _on_submit_resp(self, req: SubmitRequest, resp: SubmitResp,
                        now: float) -> SubmitAcked | SubmitRejected | None:
        """Account for a SUBMIT_RESP; returns the event to pass on (None: retried later)."""
        cfg = self.config
        if resp.result == SubmitResult.OK:
            self.acked += 1
            self._fc_backoff = cfg.flow_control_initial
            return SubmitAcked(link=cfg.name, ref=req.ref, msg_id=resp.msg_id)
        if resp.result == SubmitResult.FLOW_CONTROL:
            self.flow_controlled += 1
            self._retry.append(req)
            if self._input_wait is not None:
                self._input_wait.cancel()
            if now >= self._paused_until:
                self._paused_until = now + self._fc_backoff
                logger.info("cmpp flow control link=%s pause=%.2fs", cfg.name, self._fc_backoff)
                self._fc_backoff = min(self._fc_backoff * 2, cfg.flow_control_max)
            return None
        self.rejected += 1
        logger.info("cmpp submit rejected link=%s dest=%s result=%d", cfg.name,
                    mask_number(req.dest), resp.result)
        return SubmitRejected(link=cfg.name, ref=req.ref, result=resp.result,
                              transient=is_transient(resp.result))

    def _report_event(self, deliver: Deliver) -> StatusReport:
        # The length was checked by the decoder; only the report's fields are decoded here.
        fields = status_report_fields(deliver.msg_content)
        msg_id, stat, submit_time, done_time, dest, _smsc_sequence = fields
        self.reports += 1
        return StatusReport(link=self.config.name, msg_id=msg_id, stat=stat, dest=dest,
                            submit_time=submit_time, done_time=done_time)

    async def _on_mo(self, deliver: Deliver, now: float) -> None:
        src = deliver.src_terminal_id
        meta = (deliver.dest_id, deliver.msg_fmt)
        try:
            whole = self._reassembler.add(src, deliver.msg_content, udhi=bool(deliver.tp_udhi),
                                          now=now, meta=meta)
        except RemoteProtocolError as exc:
            logger.warning("cmpp MO with bad UDH link=%s src=%s reason=%s; delivered as is",
                           self.config.name, mask_number(src), exc.reason)
            whole = Reassembled(sender=src, ref=0, total=1, content=deliver.msg_content,
                                first_seen=now, meta=meta)
        if whole is not None:
            await self._deliver_mo(whole)

    async def _deliver_mo(self, whole: Reassembled) -> None:
        dest, msg_fmt = whole.meta
        if not whole.complete:
            logger.warning("cmpp MO incomplete link=%s src=%s missing=%s", self.config.name,
                           mask_number(whole.sender), whole.missing)
        self.mo += 1
        await self._emit(MoReceived(
            link=self.config.name, src=whole.sender, dest=dest,
            text=decode_text(whole.content, msg_fmt), msg_fmt=msg_fmt,
            received_at=self._wall(), content=whole.content, complete=whole.complete,
        ))


def _check_request(request: SubmitRequest) -> None:
    """What the codec would refuse when framing ``request`` (cmpp.md "SUBMIT"), checked before
    it is queued."""
    if len(request.content) > MAX_MSG_LENGTH:
        raise LocalProtocolError(f"Msg_Content of {len(request.content)} bytes exceeds {MAX_MSG_LENGTH}")
    if not 1 <= request.pk_number <= request.pk_total <= 0xFF:
        raise LocalProtocolError(f"part {request.pk_number} of {request.pk_total} is out of range")
