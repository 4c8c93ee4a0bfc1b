"""The ISMG simulator: the server side of CMPP over TCP, for tests, the demo and load tests.

It reuses :class:`~gateway.cmpp.connection.CmppConnection` in the server role. Behaviour is
set by constructor arguments (named variants such as :func:`HappyIsmg` and
:func:`ThrottlingIsmg`); faults are injected by methods and attributes
(:meth:`IsmgSimulator.drop_connections`, :attr:`IsmgSimulator.response_delay`,
:attr:`IsmgSimulator.refuse_logins`, :meth:`IsmgSimulator.garble_next_frame`).

Implements the ISMG side of cmpp.md: CONNECT verification, SUBMIT_RESP with unique Msg_Ids,
status reports as DELIVER with Registered_Delivery = 1 in the layout of the link's version,
MOs (long ones split with the 6-byte UDH), Result 8 over the contracted rate.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec
import trio

from gateway.cmpp.codec import encode_status_report
from gateway.cmpp.connection import (
    CmppConnection,
    LinkDead,
    LoginRequested,
    ProtocolFailure,
    RequestReceived,
    ResponseReceived,
    Role,
    StrayResponse,
    TerminateRequested,
)
from gateway.cmpp.longsms import split_long
from gateway.cmpp.pdus import (
    VERSION_3_0,
    ActiveTest,
    ActiveTestResp,
    Cancel,
    CancelResp,
    ConnectStatus,
    Deliver,
    DeliverResp,
    DeliverResult,
    MsgFmt,
    MsgId,
    Query,
    QueryResp,
    StatusReportBody,
    Submit,
    SubmitResp,
    SubmitResult,
    TerminateResp,
)
from gateway.cmpp.ratelimit import TokenBucket

__all__ = [
    "MAX_PENDING_DELIVERIES",
    "RECENT_SUBMITS",
    "IsmgSimulator",
    "SimulatorStatistics",
    "HappyIsmg",
    "ThrottlingIsmg",
    "FlakyIsmg",
]

logger = logging.getLogger(__name__)

#: Status reports and MOs waiting to be sent (default ``max_pending_reports``); beyond it SUBMITs
#: asking for a report are answered with Result 8 (flow control) until the SP takes its reports.
MAX_PENDING_DELIVERIES = 100_000
#: Room kept in the delivery queue beyond ``max_pending_reports`` for DELIVERs put back when a
#: connection is lost and for injected MOs, so that neither is dropped while SUBMITs are refused.
DELIVERY_RESERVE = 4_096
#: How many of the latest SUBMITs are kept for inspection.
RECENT_SUBMITS = 1000
#: Bytes asked of the socket per read.
RECEIVE_SIZE = 65536
#: Status reports and MOs framed into one write at most.
MAX_DELIVERS_PER_WRITE = 64
#: Seconds a read's replies may take to go out before the connection gives up on them.
FLUSH_TIMEOUT = 5.0
#: Seconds between calls to CmppConnection.tick().
TICK_INTERVAL = 1.0
#: Seconds a TERMINATE or a final write may take when an SP connection closes.
CLOSE_TIMEOUT = 2.0


class SimulatorStatistics(msgspec.Struct, frozen=True, kw_only=True):
    connections: int
    logins_accepted: int
    logins_refused: int
    submits: int
    accepted: int
    throttled: int
    failed: int
    unique_msg_ids: int
    reports_queued: int
    reports_sent: int
    reports_acked: int
    mo_sent: int
    mo_acked: int
    pending_deliveries: int
    protocol_failures: int
    duplicates: int = 0
    """Accepted SUBMITs whose destinations and content had been accepted before (counted
    only when the simulator was built with ``count_duplicates=True``)."""


@dataclass(slots=True)
class _Outbound:
    """A DELIVER to send (status report or MO part), on whichever SP connection is logged in."""

    due: float
    dest_id: str
    src_terminal_id: str
    msg_id: int
    service_id: str = ""
    msg_fmt: int = MsgFmt.ASCII
    tp_udhi: int = 0
    content: bytes = b""
    report: StatusReportBody | None = None
    acked: trio.Event | None = field(default=None)

    def pdu(self, version: int) -> Deliver:
        if self.report is not None:
            content = encode_status_report(self.report, version)
            return Deliver(
                msg_id=self.msg_id, dest_id=self.dest_id, service_id=self.service_id,
                src_terminal_id=self.src_terminal_id, registered_delivery=1, msg_content=content,
            )
        return Deliver(
            msg_id=self.msg_id, dest_id=self.dest_id, service_id=self.service_id,
            tp_udhi=self.tp_udhi, msg_fmt=self.msg_fmt, src_terminal_id=self.src_terminal_id,
            registered_delivery=0, msg_content=self.content,
        )


class IsmgSimulator:
    """A CMPP 2.0/3.0 ISMG on TCP.

    ``outcomes`` maps Stat words to weights for status reports (default all DELIVRD);
    ``fail_rate`` is the fraction of SUBMITs refused with ``fail_result``; ``max_rate``
    is the per-connection SUBMIT rate (messages/second) above which SUBMITs are answered
    with Result 8; ``seed`` makes outcomes reproducible; Msg_Ids are a deterministic
    sequence from ``start_time`` (epoch seconds; now when None) and ``gateway_code``;
    ``count_duplicates`` keeps a hash of every accepted SUBMIT's destinations and content and
    counts the repeats in ``duplicates`` (for load tests: a message sent twice);
    ``max_pending_reports`` bounds the status reports waiting for the SP, beyond which SUBMITs
    asking for one are answered with Result 8 (counted in ``throttled`` and ``backlogged``).
    """

    def __init__(
        self,
        *,
        sp_id: str = "901234",
        secret: str = "s3cret",
        version: int = VERSION_3_0,
        dlr_delay: float = 0.0,
        outcomes: Mapping[str, float] | None = None,
        fail_rate: float = 0.0,
        fail_result: int = SubmitResult.OTHER,
        max_rate: float | None = None,
        seed: int = 0,
        gateway_code: int = 1,
        start_time: float | None = None,
        window: int = 16,
        response_timeout: float = 60.0,
        max_retries: int = 3,
        active_test_interval: float | None = 180.0,
        secrets: Mapping[str, str] | None = None,
        count_duplicates: bool = False,
        max_pending_reports: int = MAX_PENDING_DELIVERIES,
    ) -> None:
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be within 0..1, not {fail_rate}")
        self.sp_id = sp_id
        self.secret = secret
        self.version = version
        self.dlr_delay = dlr_delay
        self.outcomes = dict(outcomes or {"DELIVRD": 1.0})
        self.fail_rate = fail_rate
        self.fail_result = fail_result
        self.max_rate = max_rate
        self.gateway_code = gateway_code
        self.window = window
        self.response_timeout = response_timeout
        self.max_retries = max_retries
        self.active_test_interval = active_test_interval
        self.max_pending_reports = max_pending_reports
        self._secrets = dict(secrets or {sp_id: secret})
        self._rng = random.Random(seed)
        self._start = int(time.time() if start_time is None else start_time)
        self._msg_counter = 0
        self._msg_id_second = -1
        self._msg_id_high = 0
        self._smsc_sequence = 0
        self._stamp_second = -1
        self._stamp_text = ""
        self._mo_ref = 0
        # fault injection
        self.refuse_logins = False
        self.response_delay = 0.0
        self._garble = 0
        # state
        self.port: int | None = None
        self._connections: set[_SpConnection] = set()
        self._logged_in = trio.Event()
        self._send_out: trio.MemorySendChannel[_Outbound] | None = None
        self._recv_out: trio.MemoryReceiveChannel[_Outbound] | None = None
        self.recent_submits: deque[Submit] = deque(maxlen=RECENT_SUBMITS)
        # counters
        self.connections = 0
        self.logins_accepted = 0
        self.logins_refused = 0
        self.submits = 0
        self.accepted = 0
        self.throttled = 0
        self.backlogged = 0
        """SUBMITs answered with Result 8 because the reports waiting for the SP were too many."""
        self.failed = 0
        self.reports_queued = 0
        self.reports_sent = 0
        self.reports_acked = 0
        self.mo_sent = 0
        self.mo_acked = 0
        self.protocol_failures = 0
        # duplicate detection (load tests): one hash per accepted SUBMIT, so opt-in
        self.duplicates = 0
        self._seen: set[int] | None = set() if count_duplicates else None

    # -- public -------------------------------------------------------------------------------

    def statistics(self) -> SimulatorStatistics:
        pending = 0
        if self._send_out is not None:
            pending = self._send_out.statistics().current_buffer_used
        return SimulatorStatistics(
            connections=len(self._connections),
            logins_accepted=self.logins_accepted,
            logins_refused=self.logins_refused,
            submits=self.submits,
            accepted=self.accepted,
            throttled=self.throttled,
            failed=self.failed,
            unique_msg_ids=self._msg_counter,
            reports_queued=self.reports_queued,
            reports_sent=self.reports_sent,
            reports_acked=self.reports_acked,
            mo_sent=self.mo_sent,
            mo_acked=self.mo_acked,
            pending_deliveries=pending,
            protocol_failures=self.protocol_failures,
            duplicates=self.duplicates,
        )

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 7890,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and serve until cancelled; ``task_status.started(port)`` reports the bound
        port (port 0 picks a free one)."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        self._send_out, self._recv_out = trio.open_memory_channel[_Outbound](
            self.max_pending_reports + DELIVERY_RESERVE)
        logger.info("ismg simulator listening host=%s port=%s version=0x%02x", host, self.port,
                    self.version)
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def wait_logged_in(self) -> None:
        """Return once at least one SP connection is logged in."""
        while not any(s.logged_in for s in self._connections):
            await self._logged_in.wait()

    async def inject_mo(self, src: str, dest: str, text: str | bytes, *,
                        msg_fmt: int | None = None, service_id: str = "") -> int:
        """Send an MO from handset ``src`` to service number ``dest``; long text is split with
        the 6-byte UDH. Returns the number of parts once every part has been answered by the
        SP (parts are re-sent after a connection drop)."""
        if self._send_out is None:
            raise RuntimeError("inject_mo() before serve()")
        if msg_fmt is None:
            if isinstance(text, bytes):
                msg_fmt = MsgFmt.BINARY
            else:
                msg_fmt = MsgFmt.ASCII if text.isascii() else MsgFmt.UCS2
        self._mo_ref = (self._mo_ref + 1) & 0xFF
        parts = split_long(text, msg_fmt, self._mo_ref)
        items = [
            _Outbound(
                due=trio.current_time(), dest_id=dest, src_terminal_id=src,
                msg_id=self._next_msg_id(), service_id=service_id, msg_fmt=msg_fmt,
                tp_udhi=part.udhi, content=part.content, acked=trio.Event(),
            )
            for part in parts
        ]
        for item in items:
            await self._send_out.send(item)
        for item in items:
            assert item.acked is not None
            await item.acked.wait()
        return len(items)

    def drop_connections(self) -> int:
        """Fault: close every SP connection abruptly (no TERMINATE). Returns how many."""
        for sp in list(self._connections):
            sp.cancel_scope.cancel()
        return len(self._connections)

    def garble_next_frame(self, count: int = 1) -> None:
        """Fault: the next ``count`` frames written get an impossible Total_Length."""
        self._garble += count

    # -- internals ------------------------------------------------------------------------------

    def _next_msg_id(self) -> int:
        n = self._msg_counter
        self._msg_counter += 1
        second = n >> 16
        if second != self._msg_id_second:  # the time fields change once per 65,536 ids
            tm = time.gmtime(self._start + second)
            self._msg_id_high = MsgId(
                month=tm.tm_mon, day=tm.tm_mday, hour=tm.tm_hour, minute=tm.tm_min,
                second=tm.tm_sec, gateway=self.gateway_code & 0x3FFFFF, sequence=0,
            ).to_int()
            self._msg_id_second = second
        return self._msg_id_high | (n & 0xFFFF)

    def _stamp(self, epoch: float) -> str:
        """YYMMDDHHMM (UTC) of ``epoch``, formatted once per second."""
        second = int(epoch)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp_text = _stamp(second)
        return self._stamp_text

    def _pick_outcome(self) -> str:
        if len(self.outcomes) == 1:
            return next(iter(self.outcomes))
        words = list(self.outcomes)
        return self._rng.choices(words, weights=[self.outcomes[w] for w in words])[0]

    def _take_garble(self) -> bool:
        if self._garble > 0:
            self._garble -= 1
            return True
        return False

    def _report_backlog_full(self, more: int) -> bool:
        assert self._send_out is not None
        full = self._send_out.statistics().current_buffer_used + more > self.max_pending_reports
        if full and not self.backlogged:
            logger.warning("ismg report backlog full pending=%d: SUBMITs answered with Result 8 until the SP "
                           "takes its reports", self.max_pending_reports)
        return full

    def _requeue(self, item: _Outbound) -> None:
        assert self._send_out is not None
        try:
            self._send_out.send_nowait(item)
        except (trio.WouldBlock, trio.ClosedResourceError):
            logger.warning("ismg delivery lost on requeue msg_id=%d", item.msg_id)

    async def _handle(self, stream: trio.SocketStream) -> None:
        sp = _SpConnection(self, stream)
        self._connections.add(sp)
        self.connections += 1
        try:
            await sp.run()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            logger.info("ismg connection lost peer=%s error=%r", sp.peer, group.exceptions[0])
        finally:
            self._connections.discard(sp)
            for _pdu, context in sp.conn.unacknowledged():
                if isinstance(context, _Outbound):
                    self._requeue(context)
            with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                scope.shield = True
                await stream.aclose()


def _stamp(epoch: float) -> str:
    return time.strftime("%y%m%d%H%M", time.gmtime(epoch))


class _SpConnection:
    """One SP connection."""

    def __init__(self, sim: IsmgSimulator, stream: trio.SocketStream) -> None:
        self.sim = sim
        self.stream = stream
        self.conn = CmppConnection(
            Role.SERVER,
            sim.version,
            secrets=sim._secrets.get,
            window=sim.window,
            response_timeout=sim.response_timeout,
            max_retries=sim.max_retries,
            active_test_interval=sim.active_test_interval,
        )
        self.cancel_scope = trio.CancelScope()
        self.logged_in = False
        self.bucket = (
            TokenBucket(sim.max_rate, now=trio.current_time()) if sim.max_rate else None
        )
        self._write_lock = trio.StrictFIFOLock()
        self._event_lock = trio.StrictFIFOLock()
        self._pending: bytearray | None = None
        self._window_freed = trio.Event()
        self.peer = "?"
        try:
            host, port = stream.socket.getpeername()[:2]
            self.peer = f"{host}:{port}"
        except OSError:
            pass

    async def run(self) -> None:
        with self.cancel_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ticker)
                await self._reader(nursery)
                nursery.cancel_scope.cancel()

    async def _write(self, data: bytes) -> None:
        """Send now, or — while a read's events are being handled — add to that read's one write."""
        if not data:
            return
        if self._pending is not None:
            self._pending += data
            return
        await self._send(data)

    async def _send(self, data: bytes) -> None:
        lock = self._write_lock
        try:  # a free lock is taken without a scheduler round trip (the send is one)
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            if self.sim._take_garble():
                data = (5).to_bytes(4, "big") + data[4:]
            await self.stream.send_all(data)
        finally:
            lock.release()

    async def _reader(self, nursery: trio.Nursery) -> None:
        while not self.conn.closed:
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            self.conn.receive_data(data, now=trio.current_time())
            await self._drain(nursery)

    async def _ticker(self) -> None:
        while not self.conn.closed:
            await trio.sleep(TICK_INTERVAL)
            await self._write(self.conn.tick(trio.current_time()))
            await self._drain(None)
        self.cancel_scope.cancel()

    async def _drain(self, nursery: trio.Nursery | None) -> None:
        lock = self._event_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            await self._drain_locked(nursery)
        finally:
            lock.release()

    async def _drain_locked(self, nursery: trio.Nursery | None) -> None:
        conn = self.conn
        self._pending = bytearray()
        try:
            while (ev := conn.next_event()) is not None:
                if type(ev) is RequestReceived and type(ev.pdu) is Submit and not conn.closed:
                    await self._on_submit(ev.sequence_id, ev.pdu)  # the steady state's bulk
                elif type(ev) is ResponseReceived and type(ev.response) is DeliverResp:
                    self._on_deliver_resp(ev.context)
                else:
                    await self._on_event(ev, nursery)
        finally:
            data, self._pending = bytes(self._pending), None
            if data:
                # Shielded: a TERMINATE_RESP or a refusal must go out before the close.
                with trio.move_on_after(FLUSH_TIMEOUT) as scope:
                    scope.shield = True
                    try:
                        await self._send(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        logger.debug("ismg reply not sent peer=%s error=%r", self.peer, exc)

    async def _on_event(self, ev: object, nursery: trio.Nursery | None) -> None:
        sim = self.sim
        now = trio.current_time()
        if self.conn.closed and isinstance(ev, (RequestReceived, TerminateRequested)):
            return  # nothing can be answered any more
        match ev:
            case LoginRequested():
                status = ConnectStatus.OTHER if sim.refuse_logins else ev.status
                if status != ConnectStatus.OK:
                    sim.logins_refused += 1
                await self._write(self.conn.answer_login(now=now, status=status))
                if status == ConnectStatus.OK:
                    sim.logins_accepted += 1
                    self.logged_in = True
                    sim._logged_in.set()
                    sim._logged_in = trio.Event()
                    assert nursery is not None
                    nursery.start_soon(self._deliverer)
                    logger.info("ismg login ok peer=%s sp_id=%s version=0x%02x", self.peer,
                                ev.source_addr, ev.version)
                else:
                    logger.info("ismg login refused peer=%s sp_id=%s status=%d", self.peer,
                                ev.source_addr, status)
                    self.cancel_scope.cancel()
            case RequestReceived(pdu=Submit() as submit):
                await self._on_submit(ev.sequence_id, submit)
            case RequestReceived(pdu=ActiveTest()):
                await self._write(self.conn.respond(ev.sequence_id, ActiveTestResp(), now=now))
            case RequestReceived(pdu=Query() as query):
                resp = QueryResp(time=query.time, query_type=query.query_type,
                                 query_code=query.query_code, mt_tlmsg=sim.submits,
                                 mt_scs=sim.accepted, mt_fl=sim.failed, mo_scs=sim.mo_acked)
                await self._write(self.conn.respond(ev.sequence_id, resp, now=now))
            case RequestReceived(pdu=Cancel()):
                await self._write(self.conn.respond(ev.sequence_id, CancelResp(success_id=1),
                                                    now=now))
            case RequestReceived(pdu=Deliver() as deliver):
                await self._write(self.conn.respond(
                    ev.sequence_id,
                    DeliverResp(msg_id=deliver.msg_id, result=DeliverResult.BAD_COMMAND), now=now))
            case ResponseReceived(response=DeliverResp(), context=_Outbound() as item):
                self._on_deliver_resp(item)
            case TerminateRequested():
                await self._write(self.conn.respond(ev.sequence_id, TerminateResp(), now=now))
                self.cancel_scope.cancel()
            case ProtocolFailure():
                sim.protocol_failures += 1
                logger.warning("ismg protocol failure peer=%s reason=%s", self.peer, ev.reason)
                self.cancel_scope.cancel()
            case LinkDead():
                logger.warning("ismg link dead peer=%s reason=%s", self.peer, ev.reason)
                self.cancel_scope.cancel()
            case StrayResponse():
                logger.debug("ismg stray response peer=%s seq=%d", self.peer, ev.sequence_id)

    def _on_deliver_resp(self, item: object) -> None:
        if not isinstance(item, _Outbound):
            return
        sim = self.sim
        if item.report is not None:
            sim.reports_acked += 1
        else:
            sim.mo_acked += 1
        if item.acked is not None:
            item.acked.set()
        # The deliverer makes a fresh Event each time it waits for room.
        self._window_freed.set()

    async def _on_submit(self, seq: int, submit: Submit) -> None:
        sim = self.sim
        sim.submits += 1
        sim.recent_submits.append(submit)
        if sim.response_delay > 0:
            await trio.sleep(sim.response_delay)
        now = trio.current_time()
        if self.bucket is not None and not self.bucket.try_take(now):
            sim.throttled += 1
            await self._write(self.conn.respond(
                seq, SubmitResp(msg_id=0, result=SubmitResult.FLOW_CONTROL), now=now))
            return
        if submit.registered_delivery == 1 and sim._report_backlog_full(len(submit.dest_terminal_ids)):
            # Like an ISMG whose SP does not take its reports: flow control, never a reader
            # blocked on the queue (it could then not read the DELIVER_RESPs that drain it).
            sim.throttled += 1
            sim.backlogged += 1
            await self._write(self.conn.respond(
                seq, SubmitResp(msg_id=0, result=SubmitResult.FLOW_CONTROL), now=now))
            return
        if sim.fail_rate and sim._rng.random() < sim.fail_rate:
            sim.failed += 1
            await self._write(self.conn.respond(
                seq, SubmitResp(msg_id=0, result=sim.fail_result), now=now))
            return
        msg_id = sim._next_msg_id()
        sim.accepted += 1
        if sim._seen is not None:
            key = hash((tuple(submit.dest_terminal_ids), submit.msg_content))
            if key in sim._seen:
                sim.duplicates += 1
            else:
                sim._seen.add(key)
        await self._write(self.conn.respond(seq, SubmitResp(msg_id=msg_id, result=0), now=now))
        if submit.registered_delivery == 1:
            assert sim._send_out is not None
            wall = time.time()
            submit_stamp = sim._stamp(wall)
            done_stamp = sim._stamp(wall + sim.dlr_delay)
            for dest in submit.dest_terminal_ids:
                stat = sim._pick_outcome()
                sim._smsc_sequence = (sim._smsc_sequence + 1) & 0xFFFFFFFF
                report = StatusReportBody(
                    msg_id=msg_id, stat=stat, submit_time=submit_stamp,
                    done_time=done_stamp, dest_terminal_id=dest,
                    smsc_sequence=sim._smsc_sequence,
                )
                sim.reports_queued += 1
                outbound = _Outbound(
                    due=now + sim.dlr_delay, dest_id=submit.src_id, src_terminal_id=dest,
                    msg_id=sim._next_msg_id(), service_id=submit.service_id, report=report,
                )
                try:  # no scheduler round trip while the queue has room
                    sim._send_out.send_nowait(outbound)
                except trio.WouldBlock:
                    await sim._send_out.send(outbound)

    async def _deliverer(self) -> None:
        """Send queued status reports and MOs over this connection, within the window; those
        already due go out together in one write."""
        sim = self.sim
        assert sim._recv_out is not None
        recv = sim._recv_out.clone()
        held: _Outbound | None = None  # taken from the queue but not yet due
        async with recv:
            while True:
                if held is not None:
                    item, held = held, None
                else:
                    try:
                        item = await recv.receive()
                    except trio.EndOfChannel:
                        return
                batch = [item]
                try:
                    if item.due > trio.current_time():
                        await trio.sleep_until(item.due)
                    while not self.conn.window_available():
                        self._window_freed = trio.Event()
                        await self._window_freed.wait()
                    if not self.conn.established:
                        sim._requeue(item)
                        return
                    now = trio.current_time()
                    frames = [self.conn.send(item.pdu(self.conn.version), now=now, context=item)]
                    while len(frames) < MAX_DELIVERS_PER_WRITE and self.conn.window_available():
                        try:
                            nxt = recv.receive_nowait()
                        except trio.WouldBlock:
                            break
                        if nxt.due > now:
                            held = nxt
                            break
                        batch.append(nxt)
                        frames.append(self.conn.send(nxt.pdu(self.conn.version), now=now, context=nxt))
                    await self._write(b"".join(frames))
                except BaseException:
                    tracked = [ctx for _, ctx in self.conn.unacknowledged()]
                    for lost in batch + ([held] if held is not None else []):
                        if not any(ctx is lost for ctx in tracked):
                            sim._requeue(lost)
                    raise
                for sent in batch:
                    if sent.report is not None:
                        sim.reports_sent += 1
                    else:
                        sim.mo_sent += 1


def HappyIsmg(**kw: object) -> IsmgSimulator:
    """Accepts everything and reports DELIVRD at once."""
    return IsmgSimulator(**kw)  # type: ignore[arg-type]


def ThrottlingIsmg(max_rate: float = 10.0, **kw: object) -> IsmgSimulator:
    """Answers Result 8 above ``max_rate`` SUBMITs per second per connection."""
    return IsmgSimulator(max_rate=max_rate, **kw)  # type: ignore[arg-type]


def FlakyIsmg(fail_rate: float = 0.1, seed: int = 0, **kw: object) -> IsmgSimulator:
    """Refuses a share of SUBMITs and reports a mix of outcomes."""
    kw.setdefault("outcomes", {"DELIVRD": 0.8, "UNDELIV": 0.1, "EXPIRED": 0.1})
    return IsmgSimulator(fail_rate=fail_rate, seed=seed, **kw)  # type: ignore[arg-type]

