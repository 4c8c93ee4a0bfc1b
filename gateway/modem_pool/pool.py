"""A pool of GSM modems: supervision, selection, rate and quota, failover, MO and reports.

One supervised task per modem opens its device (:class:`SerialStream`), runs
:meth:`Modem.initialize` and serves sends one at a time, paced by a token bucket on
:func:`trio.current_time` (SPEC: per-SIM rate and daily quota, counted per local day). The
choice of modem and the rate are the pure :mod:`gateway.modem_pool.policy`. A modem whose
command times out is reset (port closed and reopened, start-up run again); one whose device
is gone leaves the pool and is reopened with backoff. The send in flight on a lost modem,
and those queued on it, are taken by the next modem of their operator whose rate allows,
ahead of its own queue, or given back to the caller as transient failures when no healthy
modem serves their operator: nothing is lost, at most the one send in flight is repeated.

Incoming (TS 27.005 §3.4.1): ``+CMTI`` → ``AT+CMGR`` → :class:`Reassembler` →
:class:`ModemMo`; the stored parts are deleted (``AT+CMGD``) only after the consumer calls
:meth:`ModemMo.ack`. At start ``AT+CMGL=4`` delivers what arrived while we were away. Status
reports (``+CDS`` / ``+CDSI``) become :class:`ModemReport` with the TS 23.040 §9.2.3.15
class from :func:`classify_status`.
"""

from __future__ import annotations

import enum
import logging
import zoneinfo
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo

import msgspec
import trio

from gateway.modem_pool.at import (
    AckMessage,
    CmsError,
    DeleteMessage,
    IncomingDeliver,
    ListMessages,
    MessageList,
    ReadMessage,
    SendMessage,
    StoredMessage,
    SubmitResult,
    IncomingStatusReport,
    MessageStat,
    NewMessage,
    NewStatusReport,
    QueryRegistration,
    QuerySignal,
    RawCommand,
    Registration,
    SelectStorage,
    SetIndications,
    SignalQuality,
)
from gateway.modem_pool.errors import (
    CommandError,
    LocalProtocolError,
    ModemError,
    ModemUnavailable,
)
from gateway.modem_pool.modem import Modem
from gateway.modem_pool.policy import Candidate, DailyCount, TokenBucket, choose, local_day
from gateway.modem_pool.pdu import (
    mask_number,
    Address,
    Alphabet,
    Deliver,
    Reassembler,
    StatusClass,
    StatusReport,
    decode_incoming,
    encode_submit,
    submits_for_parts,
)
from gateway.modem_pool.serial_stream import SerialStream

logger = logging.getLogger(__name__)

__all__ = [
    "CNMA_WAIT",
    "COMMAND_TIMEOUT",
    "DEFAULT_TIMEZONE",
    "EVENT_QUEUE",
    "HEALTH_INTERVAL",
    "INIT_TIMEOUT",
    "MAX_CONSECUTIVE_ERRORS",
    "QUEUE_ALLOWANCE",
    "READ_STORAGE",
    "REOPEN_BACKOFF_MAX",
    "REOPEN_BACKOFF_MIN",
    "SEND_TIMEOUT",
    "ModemDown",
    "ModemMo",
    "ModemPool",
    "ModemReport",
    "ModemSpec",
    "ModemState",
    "ModemStatistics",
    "ModemUp",
    "PartSent",
    "PoolEvent",
    "SendFailed",
    "SendRequest",
    "cms_transient",
]

#: Sends a modem holds (queued + in flight) before selection looks elsewhere.
QUEUE_ALLOWANCE = 2
#: Pool events held for the consumer; the pool waits when it is full.
EVENT_QUEUE = 1024
#: Seconds between ``AT+CSQ`` / ``AT+CREG?`` health polls.
HEALTH_INTERVAL = 30.0
#: Seconds for an ordinary command before the modem counts as hung.
COMMAND_TIMEOUT = 10.0
#: Seconds for one ``AT+CMGS`` (network round trip included).
SEND_TIMEOUT = 60.0
#: Seconds for the whole start-up sequence.
INIT_TIMEOUT = 30.0
#: Send errors in a row after which a modem is not chosen until a send or poll succeeds.
MAX_CONSECUTIVE_ERRORS = 5
#: Reopen delays after the device went away, doubling between these bounds.
REOPEN_BACKOFF_MIN = 1.0
REOPEN_BACKOFF_MAX = 60.0
#: Sends held for reassignment after their modem failed.
_ORPHAN_LIMIT = 4096
#: The time zone whose calendar day a SIM's daily quota counts in (the dispatcher's default).
DEFAULT_TIMEZONE = "Asia/Shanghai"
#: Seconds between looks at the modems while a send waits for room (a new day, a refill).
_RECHECK = 1.0
#: Seconds a directly routed MO (``+CMT``) waits for the consumer's ack before ``AT+CNMA``.
CNMA_WAIT = 5.0
#: The storage AT+CPMS selects for reading and deleting at start-up (the SIM).
READ_STORAGE = "SM"
#: TP-VP relative validity asked of the SMSC: 0xA7 = 24 hours (TS 23.040 §9.2.3.12.1).
VALIDITY = 0xA7

# TS 24.011 §8.2.5.4 RP-causes that are worth another try (network side, temporary).
_TRANSIENT_RP_CAUSES = frozenset({22, 38, 41, 42, 47, 69, 111, 127})
# TS 27.005 §3.2.5 ME/network errors that say nothing about the message itself.
_TRANSIENT_CMS = frozenset({300, 320, 322, 331, 332})


def cms_transient(code: int | None) -> bool:
    """Whether a ``+CMS ERROR`` for a send is worth retrying (TS 27.005 §3.2.5).

    500-class (unknown / manufacturer) errors and network-side conditions (no service,
    timeout, congestion) are transient; an unassigned number, a barred destination or a bad
    PDU (the 0-127 RP-causes and 301-305, 310-316, 321, 330) are permanent.
    """
    if code is None:
        return True
    if code >= 500:
        return True
    if code in _TRANSIENT_CMS:
        return True
    if code < 128:
        return code in _TRANSIENT_RP_CAUSES
    return False


class ModemSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One modem of the pool."""

    name: str
    device: str
    operators: frozenset[str]
    rate_per_minute: float = 6.0
    daily_quota: int = 500
    pin: str | None = None
    baudrate: int = 115200
    direct_routing: bool | None = None
    """This modem's incoming routing (see :class:`ModemPool`); None: the pool's ``direct_routing``."""


class SendRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One message to send: its text already cut into parts, all sent by one modem."""

    ref: int
    destination: str
    operator: str
    parts: tuple[str, ...]
    alphabet: Alphabet


class ModemState(enum.StrEnum):
    DOWN = "down"
    STARTING = "starting"
    UP = "up"


# ------------------------------------------------------------------------- events


class ModemUp(msgspec.Struct, frozen=True, kw_only=True):
    modem: str
    own_number: str | None


class ModemDown(msgspec.Struct, frozen=True, kw_only=True):
    modem: str
    reason: str


class PartSent(msgspec.Struct, frozen=True, kw_only=True):
    """Part ``part`` (1-based) of request ``ref`` was taken by the network as TP-MR ``tp_mr``."""

    ref: int
    modem: str
    part: int
    tp_mr: int
    destination: str
    day: str = ""
    """The local day (ISO) whose daily quota the part counted against."""


class SendFailed(msgspec.Struct, frozen=True, kw_only=True):
    ref: int
    transient: bool
    reason: str
    cms_code: int | None = None


class ModemReport(msgspec.Struct, frozen=True, kw_only=True):
    """An SMS-STATUS-REPORT, correlated by (modem, TP-MR, recipient)."""

    modem: str
    tp_mr: int
    recipient: str
    status: StatusClass
    tp_status: int
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class ModemMo:
    """A reassembled MO. Call :meth:`ack` once it is persisted: the SIM copy is then deleted."""

    modem: str
    sender: str
    text: str
    received_at: datetime
    own_number: str | None
    _acked: trio.Event = field(default_factory=trio.Event, repr=False, compare=False)

    def ack(self) -> None:
        self._acked.set()

    @property
    def acked(self) -> bool:
        return self._acked.is_set()


PoolEvent = ModemUp | ModemDown | PartSent | SendFailed | ModemReport | ModemMo


@dataclass(frozen=True, slots=True)
class ModemStatistics:
    name: str
    state: ModemState
    rssi: int | None
    registered: bool
    sent_today: int
    queued: int
    consecutive_errors: int
    own_number: str | None
    in_flight: int | None = None
    """The ref of the send on the modem now, if any."""


class _Hung(ModemError):
    """A command timed out: the modem is reset and reopened."""


@dataclass(slots=True)
class _Slot:
    spec: ModemSpec
    state: ModemState = ModemState.DOWN
    own_number: str | None = None
    signal: SignalQuality | None = None
    registered: bool = False
    consecutive_errors: int = 0
    count: DailyCount = field(default_factory=DailyCount)
    bucket: TokenBucket | None = None
    # A send succeeded since the last health poll: the modem is evidently registered.
    proven: bool = False
    queue: deque[SendRequest] = field(default_factory=deque)
    in_flight: SendRequest | None = None
    wakeup: trio.Event = field(default_factory=trio.Event)
    # Held from AT+CMGS until its PartSent is out, so a report never overtakes its part.
    report_gate: trio.Lock = field(default_factory=trio.Lock)
    # Held while the read storage is switched away from the SIM ("SR" for status reports):
    # a listing or delete of SIM indices must not run in between.
    memory_lock: trio.Lock = field(default_factory=trio.Lock)
    # SIM indices read and not yet deleted: a message listed at start-up and also announced
    # by +CMTI (it arrived while the list was being read) is taken once.
    on_sim: set[int] = field(default_factory=set)

    @property
    def load(self) -> int:
        return len(self.queue) + (self.in_flight is not None)

    @property
    def healthy(self) -> bool:
        return (
            self.state is ModemState.UP
            and self.registered
            and self.consecutive_errors < MAX_CONSECUTIVE_ERRORS
        )

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(self.spec.rate_per_minute)

    def quota_room(self, day: str) -> int:
        """Parts the SIM may still send on ``day``, those queued or in flight deducted."""
        self.count.roll(day)
        queued = sum(len(r.parts) for r in self.queue)
        if self.in_flight is not None:
            queued += len(self.in_flight.parts)
        return self.spec.daily_quota - self.count.sent - queued

    def candidate(self, now: float, day: str) -> Candidate:
        return Candidate(
            name=self.spec.name,
            operators=self.spec.operators,
            healthy=self.healthy,
            load=self.load,
            quota_room=self.quota_room(day),
            token_wait=self.bucket.wait(now),
        )

    def wake(self) -> None:
        self.wakeup.set()
        self.wakeup = trio.Event()


class ModemPool:
    """Several modems behind one send queue; events on :attr:`events`.

    ``await nursery.start(pool.run)``, then :meth:`send` requests and read :attr:`events`.

    Daily quotas count per calendar day in ``timezone`` (a name or a :class:`tzinfo`), read
    from ``wall_clock``; :meth:`seed_counts` brings in what was sent earlier that day (from the
    database, at start). With ``direct_routing`` (for every modem, or per modem in its
    :class:`ModemSpec`) the modem is set to ``AT+CSMS=1`` and
    ``AT+CNMI=2,2,0,1,0``: MOs and reports come as ``+CMT``/``+CDS`` and each is acknowledged
    with ``AT+CNMA`` (TS 27.005 §3.4.4) once taken; by default MOs are stored on the SIM
    (``+CMTI``) and deleted after the consumer's ack.
    """

    def __init__(
        self,
        modems: Sequence[ModemSpec],
        *,
        health_interval: float = HEALTH_INTERVAL,
        command_timeout: float = COMMAND_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
        init_timeout: float = INIT_TIMEOUT,
        event_queue: int = EVENT_QUEUE,
        timezone: str | tzinfo = DEFAULT_TIMEZONE,
        wall_clock: Callable[[], datetime] | None = None,
        direct_routing: bool = False,
    ) -> None:
        names = [m.name for m in modems]
        if len(set(names)) != len(names):
            raise ModemError("modem names must be unique")
        self._slots = {m.name: _Slot(m) for m in modems}
        if isinstance(timezone, str):
            try:
                timezone = zoneinfo.ZoneInfo(timezone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ModemError(f"unknown time zone {timezone!r}") from None
        self._zone = timezone
        self._wall_clock = wall_clock or _utc_now
        self._direct = direct_routing
        self._health_interval = health_interval
        self._command_timeout = command_timeout
        self._send_timeout = send_timeout
        self._init_timeout = init_timeout
        self._events_send, self.events = trio.open_memory_channel[PoolEvent](event_queue)
        self._changed = trio.Event()
        # Sends taken back from a lost modem: the next modem of their operator that is free
        # takes them before its own queue (failover within one send time).
        self._orphans: deque[SendRequest] = deque()
        self._orphaned = trio.Event()
        self._reassembler = Reassembler()
        # SIM indices of the parts of each message being reassembled, by modem and group.
        self._indices: dict[tuple[str, str, tuple[int, int] | None], list[int]] = {}

    # ---------------------------------------------------------------- public

    @property
    def operators(self) -> frozenset[str]:
        return frozenset().union(*(s.spec.operators for s in self._slots.values()))

    @property
    def usable(self) -> int:
        """Modems healthy enough to be chosen."""
        return sum(1 for s in self._slots.values() if s.healthy)

    def capacity(self) -> int:
        """Sends :meth:`send` would take now without waiting (at one part each)."""
        day = self.today()
        return sum(
            min(max(0, QUEUE_ALLOWANCE - s.load), max(0, s.quota_room(day)))
            for s in self._slots.values()
            if s.healthy
        )

    def today(self) -> str:
        """The local day (ISO) daily quotas count in now."""
        return local_day(self._wall_clock(), self._zone)

    def seed_counts(self, day: str, counts: Mapping[str, int]) -> None:
        """Parts each modem (by name) already sent on ``day``, e.g. before a restart."""
        for name, sent in counts.items():
            slot = self._slots.get(name)
            if slot is not None:
                slot.count.seed(day, sent)
        self._notify()

    def statistics(self) -> list[ModemStatistics]:
        out = []
        day = self.today()
        for s in self._slots.values():
            s.count.roll(day)
            out.append(
                ModemStatistics(
                    name=s.spec.name,
                    state=s.state,
                    rssi=s.signal.rssi if s.signal is not None else None,
                    registered=s.registered,
                    sent_today=s.count.sent,
                    queued=s.load,
                    consecutive_errors=s.consecutive_errors,
                    own_number=s.own_number,
                    in_flight=s.in_flight.ref if s.in_flight is not None else None,
                )
            )
        return out

    async def send(self, request: SendRequest) -> None:
        """Queue ``request`` on the best modem, waiting until one has room.

        The caller's cancel scope bounds the wait. Choice (:func:`policy.choose`): a healthy
        modem serving the request's operator with daily quota left, least loaded, soonest
        rate token. When no healthy modem serves the operator, or all of them have spent
        their daily quota, the request is not held: a transient :class:`SendFailed` gives it
        back to the caller at once (to retry later, or elsewhere).
        """
        while True:
            slot = self._choose(request)
            if slot is not None:
                slot.queue.append(request)
                slot.wake()
                return
            if not self._servable(request):
                await self._emit(SendFailed(
                    ref=request.ref, transient=True,
                    reason=f"no usable modem with quota left serves {request.operator}",
                ))
                return
            # Changes wake us; a new local day (quotas start again) is seen within a recheck.
            with trio.move_on_after(_RECHECK):
                await self._wait_changed()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Supervise every modem until cancelled."""
        async with trio.open_nursery() as nursery:
            for slot in self._slots.values():
                nursery.start_soon(self._supervise, slot)
            nursery.start_soon(self._reassign)
            task_status.started()

    # ---------------------------------------------------------------- selection

    def _choose(self, request: SendRequest) -> _Slot | None:
        now = trio.current_time()
        day = self.today()
        name = choose(
            (s.candidate(now, day) for s in self._slots.values()),
            request.operator,
            len(request.parts),
            max_load=QUEUE_ALLOWANCE,
        )
        return self._slots[name] if name is not None else None

    def _orphan_for(self, slot: _Slot) -> int | None:
        """Index of the oldest orphan ``slot`` can send (operator and quota), if any."""
        if not self._orphans or not slot.healthy:
            return None
        room = slot.quota_room(self.today())
        for i, request in enumerate(self._orphans):
            if request.operator in slot.spec.operators and len(request.parts) <= room:
                return i
        return None

    def _take_orphan(self, slot: _Slot) -> SendRequest | None:
        """The oldest orphan ``slot`` can send, taken off the list."""
        i = self._orphan_for(slot)
        if i is None:
            return None
        request = self._orphans[i]
        del self._orphans[i]
        return request

    def _servable(self, request: SendRequest) -> bool:
        """Whether some healthy modem of the request's operator has quota for it today."""
        day = self.today()
        for slot in self._slots.values():
            if slot.healthy and request.operator in slot.spec.operators:
                slot.count.roll(day)
                if slot.spec.daily_quota - slot.count.sent >= len(request.parts):
                    return True
        return False

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        if self._orphans:
            self._orphaned.set()

    async def _wait_changed(self) -> None:
        await self._changed.wait()

    async def _reassign(self) -> None:
        """Give orphans no modem can take back to the caller, as transient failures.

        Free modems take orphans themselves (:meth:`_take_orphan`); what remains after a
        change has no healthy modem of its operator with quota left, and is better retried
        by the caller (perhaps on another channel) than held here.
        """
        while True:
            await self._orphaned.wait()
            self._orphaned = trio.Event()
            stranded = [r for r in self._orphans if not self._servable(r)]
            for request in stranded:
                self._orphans.remove(request)
                logger.info("modem failover impossible ref=%s operator=%s", request.ref, request.operator)
                await self._emit(SendFailed(
                    ref=request.ref, transient=True,
                    reason=f"modem lost and no other modem serves {request.operator}",
                ))
            if self._orphans:
                for slot in self._slots.values():
                    slot.wake()

    async def _emit(self, event: PoolEvent) -> None:
        await self._events_send.send(event)

    # ---------------------------------------------------------------- supervision

    async def _supervise(self, slot: _Slot) -> None:
        backoff = REOPEN_BACKOFF_MIN
        name = slot.spec.name
        while True:
            slot.state = ModemState.STARTING
            reason = ""
            try:
                await self._serve(slot)
            except Exception as exc:  # noqa: BLE001 - every failure means: reset the modem
                reason = _describe(exc)
            hung = reason.startswith("hung")
            was_up = slot.state is ModemState.UP
            slot.state = ModemState.DOWN
            slot.registered = False
            self._orphan(slot)
            self._notify()
            if was_up:
                logger.warning("modem down modem=%s reason=%s", name, reason)
                await self._emit(ModemDown(modem=name, reason=reason))
                backoff = REOPEN_BACKOFF_MIN
            else:
                # A device not (yet) there is routine; a modem that answers but will not start
                # (SIM not ready, indications refused) wants someone's attention.
                level = logging.INFO if reason.startswith(("unavailable", "hung")) else logging.WARNING
                logger.log(
                    level, "modem unavailable modem=%s reason=%s retry_in=%.0f", name, reason, backoff
                )
            await trio.sleep(REOPEN_BACKOFF_MIN if hung else backoff)
            if not hung and not was_up:
                backoff = min(REOPEN_BACKOFF_MAX, backoff * 2)

    def _orphan(self, slot: _Slot) -> None:
        pending = []
        if slot.in_flight is not None:
            pending.append(slot.in_flight)
            slot.in_flight = None
        pending.extend(slot.queue)
        slot.queue.clear()
        for request in pending:
            if len(self._orphans) >= _ORPHAN_LIMIT:
                logger.error("modem pool orphan queue full ref=%s", request.ref)
                continue
            self._orphans.append(request)
        if pending:
            logger.info("modem failover modem=%s sends=%d", slot.spec.name, len(pending))
            self._notify()

    async def _command(self, modem: Modem, command, timeout: float | None = None):
        with trio.move_on_after(timeout or self._command_timeout) as scope:
            return await modem.command(command)
        assert scope.cancelled_caught
        raise _Hung(f"hung: {command.label} timed out")

    async def _serve(self, slot: _Slot) -> None:
        spec = slot.spec
        stream = SerialStream.open(spec.device, baudrate=spec.baudrate)
        try:
            modem = Modem(stream, name=spec.name, pin=spec.pin or None)
            async with trio.open_nursery() as nursery:
                await nursery.start(modem.run)
                with trio.move_on_after(self._init_timeout) as scope:
                    status = await modem.initialize()
                    if self._direct_for(spec):
                        await modem.command(RawCommand("AT+CSMS=1", "+CSMS"))
                        await modem.command(SetIndications(mode=2, mt=2, ds=1))
                if scope.cancelled_caught:
                    raise _Hung("hung: start-up timed out")
                slot.own_number = status.own_number or slot.own_number
                slot.signal = status.signal
                slot.registered = status.registration.registered
                slot.consecutive_errors = 0
                slot.state = ModemState.UP
                self._notify()
                await self._emit(ModemUp(modem=spec.name, own_number=slot.own_number))
                nursery.start_soon(self._poll_health, slot, modem)
                slot.on_sim.clear()  # a reopened modem lists its SIM again
                nursery.start_soon(self._incoming, slot, modem, nursery)
                await self._pick_up_stored(slot, modem, nursery)
                await self._send_loop(slot, modem)
        finally:
            await stream.aclose()

    async def _poll_health(self, slot: _Slot, modem: Modem) -> None:
        while True:
            await trio.sleep(self._health_interval)
            if slot.proven:
                # A send went through since the last poll: the SIM is registered, and the
                # poll would only keep the modem from its next send.
                slot.proven = False
                continue
            signal = await self._command(modem, QuerySignal())
            registration = await self._command(modem, QueryRegistration())
            if isinstance(signal, SignalQuality):
                slot.signal = signal
            if isinstance(registration, Registration):
                was = slot.healthy
                slot.registered = registration.registered
                if slot.registered and slot.consecutive_errors:
                    # The poll succeeded: a modem benched for send errors is tried again.
                    logger.info(
                        "modem back in rotation modem=%s errors=%d",
                        slot.spec.name, slot.consecutive_errors,
                    )
                    slot.consecutive_errors = 0
                if slot.healthy != was:
                    self._notify()

    # ---------------------------------------------------------------- sending

    async def _send_loop(self, slot: _Slot, modem: Modem) -> None:
        while True:
            if not slot.queue and self._orphan_for(slot) is None:
                await slot.wakeup.wait()
                continue
            # The request is picked when the SIM's rate allows a send, not before: an orphan
            # goes out on the first modem of its operator whose rate allows, not behind a
            # request that a modem holds while it waits for its token.
            while (wait := slot.bucket.wait(trio.current_time())) > 0:
                await trio.sleep(wait)
            request = self._take_orphan(slot)
            if request is None:
                if not slot.queue:  # another modem took the orphan first
                    await trio.lowlevel.checkpoint()
                    continue
                request = slot.queue.popleft()
            slot.in_flight = request
            await self._send_one(slot, modem, request)
            slot.in_flight = None
            self._notify()

    async def _take_token(self, slot: _Slot) -> None:
        while not slot.bucket.take(trio.current_time()):
            await trio.sleep(slot.bucket.wait(trio.current_time()))

    async def _send_one(self, slot: _Slot, modem: Modem, request: SendRequest) -> None:
        name = slot.spec.name
        try:
            destination = Address.parse(request.destination)
            submits = submits_for_parts(
                destination,
                request.parts,
                alphabet=request.alphabet,
                ref=request.ref % 256,
                status_report=True,
                validity=VALIDITY,
            )
        except ModemError as exc:
            await self._emit(SendFailed(ref=request.ref, transient=False, reason=str(exc)))
            return
        mrs: list[int] = []
        for number, submit in enumerate(submits, 1):
            await self._take_token(slot)
            day = self.today()
            slot.count.roll(day)

            async with slot.report_gate:
                try:
                    result = await self._command(
                        modem, SendMessage(encode_submit(submit)), self._send_timeout
                    )
                except CommandError as exc:
                    slot.consecutive_errors += 1
                    transient = cms_transient(exc.code)
                    logger.warning(
                        "modem send failed modem=%s to=%s code=%s transient=%s",
                        name, mask_number(request.destination), exc.code, transient,
                    )
                    await self._emit(
                        SendFailed(
                            ref=request.ref, transient=transient, reason=str(exc), cms_code=exc.code
                        )
                    )
                    if slot.consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
                        self._notify()
                    return
                slot.count.sent += 1
                slot.consecutive_errors = 0
                slot.proven = True
                mr = result.mr if isinstance(result, SubmitResult) else 0
                mrs.append(mr)
                await self._emit(
                    PartSent(
                        ref=request.ref, modem=name, part=number, tp_mr=mr,
                        destination=str(destination), day=day,
                    )
                )
        logger.info(
            "modem sent modem=%s to=%s parts=%d mr=%s",
            name, mask_number(request.destination), len(mrs), ",".join(map(str, mrs)),
        )

    # ---------------------------------------------------------------- incoming

    async def _pick_up_stored(self, slot: _Slot, modem: Modem, nursery) -> None:

        async with slot.memory_lock:
            listing = await self._command(modem, ListMessages(MessageStat.ALL))
        if not isinstance(listing, MessageList):
            return
        for stored in listing.messages:
            await self._handle_pdu(slot, modem, nursery, stored.pdu, stored.index)

    async def _incoming(self, slot: _Slot, modem: Modem, nursery) -> None:

        async for event in modem.unsolicited:
            if isinstance(event, (NewMessage, NewStatusReport)) and (
                event.storage.upper() not in (READ_STORAGE, "")
            ):
                await self._read_elsewhere(slot, modem, nursery, event.storage.upper(), event.index)
            elif isinstance(event, (NewMessage, NewStatusReport)):
                stored = await self._command(modem, ReadMessage(event.index))
                if isinstance(stored, StoredMessage):
                    await self._handle_pdu(slot, modem, nursery, stored.pdu, event.index)
            elif isinstance(event, (IncomingStatusReport, IncomingDeliver)):
                mo = await self._handle_pdu(slot, modem, nursery, event.pdu, None)
                if self._direct_for(slot.spec):
                    await self._acknowledge(slot, modem, mo)

    async def _read_elsewhere(
        self, slot: _Slot, modem: Modem, nursery, storage: str, index: int
    ) -> None:
        """Read (and delete) a message announced in another storage than the SIM's.

        Modems with ``AT+CNMI=...,2,...`` often keep status reports in ``"SR"`` whatever
        ``AT+CPMS`` asked (``+CDSI: "SR",3``). The read storage is switched there for the one
        message and back to the SIM after (TS 27.005 §3.2.2). A status report is deleted at
        once; an MO found there is handed on and left in place (it is not listed again at
        start, which reads the SIM only).
        """
        name = slot.spec.name
        async with slot.memory_lock:
            try:
                await self._command(modem, SelectStorage(mem1=storage))
            except (CommandError, LocalProtocolError) as exc:
                logger.warning("modem storage not readable modem=%s storage=%s error=%s",
                               name, storage, exc)
                return
            try:
                stored = await self._command(modem, ReadMessage(index))
                try:
                    message = decode_incoming(stored.pdu)
                except ModemError as exc:
                    logger.warning("modem unreadable pdu modem=%s storage=%s index=%d error=%s",
                                   name, storage, index, exc)
                    message = None
                if isinstance(message, StatusReport):
                    await self._report(slot, message)
                if not isinstance(message, Deliver):
                    await self._command(modem, DeleteMessage(index))
            finally:
                with trio.move_on_after(self._command_timeout, shield=True):
                    await modem.command(SelectStorage())
        if isinstance(message, Deliver):
            await self._deliver(slot, modem, nursery, message, None)

    async def _report(self, slot: _Slot, message: StatusReport) -> None:
        async with slot.report_gate:
            await self._emit(
                ModemReport(
                    modem=slot.spec.name,
                    tp_mr=message.mr,
                    recipient=str(message.recipient),
                    status=message.status_class,
                    tp_status=message.status,
                    at=message.discharge_time,
                )
            )

    def _direct_for(self, spec: ModemSpec) -> bool:
        return self._direct if spec.direct_routing is None else spec.direct_routing

    async def _acknowledge(self, slot: _Slot, modem: Modem, mo: ModemMo | None) -> None:
        """``AT+CNMA`` for a ``+CMT``/``+CDS`` (TS 27.005 §3.4.4), once it is safe.

        A completed MO is acknowledged only after its consumer took it (:meth:`ModemMo.ack`);
        if that does not happen within :data:`CNMA_WAIT` no ack goes out and the network
        delivers the message again: a duplicate rather than a loss. The modem routes no other
        ``+CMT`` until then (§3.4.1), so waiting here holds nothing else up.
        """
        if mo is not None:
            with trio.move_on_after(CNMA_WAIT):
                await mo._acked.wait()
            if not mo.acked:
                logger.warning("modem mo not taken in time, left for redelivery modem=%s", slot.spec.name)
                return
        try:
            await self._command(modem, AckMessage())
        except CommandError as exc:
            logger.warning("modem cnma refused modem=%s error=%s", slot.spec.name, exc)

    async def _handle_pdu(
        self, slot: _Slot, modem: Modem, nursery, pdu: str, index: int | None
    ) -> ModemMo | None:
        """Decode and pass on one incoming PDU; returns the MO it completed, if any."""

        name = slot.spec.name
        if index is not None:
            if index in slot.on_sim:
                return None  # already taken (listed at start-up and announced as well)
            slot.on_sim.add(index)
        try:
            message = decode_incoming(pdu)
        except ModemError as exc:
            logger.warning("modem unreadable pdu modem=%s index=%s error=%s", name, index, exc)
            if index is not None:
                await self._delete_stored(slot, modem, index)
            return None
        if isinstance(message, StatusReport):
            await self._report(slot, message)
            if index is not None:
                await self._delete_stored(slot, modem, index)
            return None
        return await self._deliver(slot, modem, nursery, message, index)

    async def _deliver(
        self, slot: _Slot, modem: Modem, nursery, deliver: Deliver, index: int | None
    ) -> ModemMo | None:
        concat = deliver.user_data.concat
        key = (
            slot.spec.name,
            deliver.originator.number,
            (concat.ref, concat.total) if concat is not None and concat.total > 1 else None,
        )
        if index is not None:
            self._indices.setdefault(key, []).append(index)
        done = self._reassembler.add(deliver, trio.current_time())
        if done is None:
            return None
        held = self._indices.pop(key, [])
        mo = ModemMo(
            modem=slot.spec.name,
            sender=str(done.originator),
            text=done.text,
            received_at=done.parts[0].scts,
            own_number=slot.own_number,
        )
        logger.info(
            "modem mo modem=%s from=%s parts=%d", slot.spec.name, mask_number(mo.sender), len(done.parts)
        )
        await self._emit(mo)
        if held:
            nursery.start_soon(self._delete_after_ack, slot, modem, mo, held)
        return mo

    async def _delete_after_ack(self, slot: _Slot, modem: Modem, mo: ModemMo, indices: list[int]) -> None:

        await mo._acked.wait()
        for index in indices:
            await self._delete_stored(slot, modem, index)

    async def _delete_stored(self, slot: _Slot, modem: Modem, index: int) -> None:
        """``AT+CMGD`` for a message taken from the SIM; one already gone is not an error."""
        try:
            async with slot.memory_lock:
                await self._command(modem, DeleteMessage(index))
        except CommandError as exc:
            if exc.code != CmsError.INVALID_MEMORY_INDEX:
                raise
            logger.info("modem stored message already gone modem=%s index=%d", slot.spec.name, index)
        slot.on_sim.discard(index)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, _Hung):
        return str(exc)
    if isinstance(exc, (ModemUnavailable, OSError)):
        return f"unavailable: {exc}"
    return f"{type(exc).__name__}: {exc}"
