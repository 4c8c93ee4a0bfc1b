"""A pool of GSM modems: supervision, selection, rate and quota, failover, MO and reports.

One supervised task per modem opens its device (:class:`SerialStream`), runs
:meth:`Modem.initialize` and serves sends one at a time, paced by a token bucket on
:func:`trio.current_time` (SPEC: per-SIM rate and daily quota). A modem whose command times
out is reset and reopened; one whose device is gone leaves the pool and is reopened with
backoff. The send in flight on a lost modem, and those queued on it, go back to selection:
nothing is lost, at most the one send in flight is repeated.

Incoming (TS 27.005 §3.4.1): ``+CMTI`` → ``AT+CMGR`` → :class:`Reassembler` →
:class:`ModemMo`; the stored parts are deleted (``AT+CMGD``) only after the consumer calls
:meth:`ModemMo.ack`. At start ``AT+CMGL=4`` delivers what arrived while we were away. Status
reports (``+CDS`` / ``+CDSI``) become :class:`ModemReport` with the TS 23.040 §9.2.3.15
class from :func:`classify_status`.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import msgspec
import trio

from gateway.modem_pool.at import (
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
    Registration,
    SignalQuality,
)
from gateway.modem_pool.errors import CommandError, ModemError, ModemUnavailable
from gateway.modem_pool.modem import Modem
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
    "COMMAND_TIMEOUT",
    "EVENT_QUEUE",
    "HEALTH_INTERVAL",
    "INIT_TIMEOUT",
    "MAX_CONSECUTIVE_ERRORS",
    "QUEUE_ALLOWANCE",
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
_BURST = 1.0
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
    sent_today: int = 0
    day: str = ""
    tokens: float = _BURST
    refilled: float | None = None
    queue: deque[SendRequest] = field(default_factory=deque)
    in_flight: SendRequest | None = None
    wakeup: trio.Event = field(default_factory=trio.Event)
    # Held from AT+CMGS until its PartSent is out, so a report never overtakes its part.
    report_gate: trio.Lock = field(default_factory=trio.Lock)

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

    def roll_day(self) -> None:
        today = datetime.now(timezone.utc).date().isoformat()
        if today != self.day:
            self.day = today
            self.sent_today = 0

    def quota_room(self) -> int:
        self.roll_day()
        queued = sum(len(r.parts) for r in self.queue)
        if self.in_flight is not None:
            queued += len(self.in_flight.parts)
        return self.spec.daily_quota - self.sent_today - queued

    def refill(self, now: float) -> None:
        if self.refilled is None:
            self.refilled = now
        rate = self.spec.rate_per_minute / 60.0
        self.tokens = min(_BURST, self.tokens + (now - self.refilled) * rate)
        self.refilled = now

    def token_wait(self, now: float) -> float:
        self.refill(now)
        if self.tokens >= 1.0:
            return 0.0
        return (1.0 - self.tokens) * 60.0 / self.spec.rate_per_minute

    def wake(self) -> None:
        self.wakeup.set()
        self.wakeup = trio.Event()


class ModemPool:
    """Several modems behind one send queue; events on :attr:`events`.

    ``await nursery.start(pool.run)``, then :meth:`send` requests and read :attr:`events`.
    ``opener`` opens a device (the default is :meth:`SerialStream.open`).
    """

    def __init__(
        self,
        modems: Sequence[ModemSpec],
        *,
        health_interval: float = HEALTH_INTERVAL,
        command_timeout: float = COMMAND_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
        event_queue: int = EVENT_QUEUE,
    ) -> None:
        names = [m.name for m in modems]
        if len(set(names)) != len(names):
            raise ModemError("modem names must be unique")
        self._slots = {m.name: _Slot(m) for m in modems}
        self._health_interval = health_interval
        self._command_timeout = command_timeout
        self._send_timeout = send_timeout
        self._events_send, self.events = trio.open_memory_channel[PoolEvent](event_queue)
        self._changed = trio.Event()
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
        """Sends :meth:`send` would take now without waiting."""
        return sum(
            max(0, QUEUE_ALLOWANCE - s.load) for s in self._slots.values() if s.healthy
        )

    def statistics(self) -> list[ModemStatistics]:
        out = []
        for s in self._slots.values():
            s.roll_day()
            out.append(
                ModemStatistics(
                    name=s.spec.name,
                    state=s.state,
                    rssi=s.signal.rssi if s.signal is not None else None,
                    registered=s.registered,
                    sent_today=s.sent_today,
                    queued=s.load,
                    consecutive_errors=s.consecutive_errors,
                    own_number=s.own_number,
                )
            )
        return out

    async def send(self, request: SendRequest) -> None:
        """Queue ``request`` on the best modem, waiting until one has room.

        The caller's cancel scope bounds the wait. Choice: a healthy modem serving the
        request's operator with daily quota left, least loaded, soonest rate token.
        """
        await self._place(request, failover=False)

    async def _place(self, request: SendRequest, *, failover: bool) -> None:
        while True:
            # Sends taken back from a lost modem go first: they have waited longest.
            slot = self._choose(request, failover) if failover or not self._orphans else None
            if slot is not None:
                if failover:
                    slot.queue.appendleft(request)
                else:
                    slot.queue.append(request)
                slot.wake()
                return
            await self._wait_changed()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Supervise every modem until cancelled."""
        async with trio.open_nursery() as nursery:
            for slot in self._slots.values():
                nursery.start_soon(self._supervise, slot)
            nursery.start_soon(self._reassign)
            task_status.started()

    # ---------------------------------------------------------------- selection

    def _choose(self, request: SendRequest, failover: bool = False) -> _Slot | None:
        now = trio.current_time()
        best: tuple[int, float] | None = None
        chosen = None
        for slot in self._slots.values():
            if not slot.healthy or request.operator not in slot.spec.operators:
                continue
            if slot.load >= QUEUE_ALLOWANCE + failover:
                continue
            if slot.quota_room() < len(request.parts):
                continue
            key = (slot.load, slot.token_wait(now))
            if best is None or key < best:
                best, chosen = key, slot
        return chosen

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_changed(self) -> None:
        await self._changed.wait()

    async def _reassign(self) -> None:
        while True:
            if not self._orphans:
                await self._orphaned.wait()
                self._orphaned = trio.Event()
                continue
            await self._place(self._orphans[0], failover=True)
            self._orphans.popleft()
            self._notify()

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
                logger.info("modem unavailable modem=%s reason=%s retry_in=%.0f", name, reason, backoff)
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
            self._notify()
            logger.info("modem failover modem=%s sends=%d", slot.spec.name, len(pending))
            self._orphaned.set()

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
                with trio.move_on_after(INIT_TIMEOUT) as scope:
                    status = await modem.initialize()
                if scope.cancelled_caught:
                    raise _Hung("hung: start-up timed out")
                slot.own_number = status.own_number or slot.own_number
                slot.signal = status.signal
                slot.registered = status.registration.registered
                slot.consecutive_errors = 0
                slot.state = ModemState.UP
                slot.refill(trio.current_time())
                self._notify()
                await self._emit(ModemUp(modem=spec.name, own_number=slot.own_number))
                nursery.start_soon(self._poll_health, slot, modem)
                nursery.start_soon(self._incoming, slot, modem, nursery)
                await self._pick_up_stored(slot, modem, nursery)
                await self._send_loop(slot, modem)
        finally:
            await stream.aclose()

    async def _poll_health(self, slot: _Slot, modem: Modem) -> None:
        while True:
            await trio.sleep(self._health_interval)
            signal = await self._command(modem, QuerySignal())
            registration = await self._command(modem, QueryRegistration())
            if isinstance(signal, SignalQuality):
                slot.signal = signal
            if isinstance(registration, Registration):
                was = slot.healthy
                slot.registered = registration.registered
                if slot.healthy != was:
                    self._notify()

    # ---------------------------------------------------------------- sending

    async def _send_loop(self, slot: _Slot, modem: Modem) -> None:
        while True:
            if not slot.queue:
                await slot.wakeup.wait()
                continue
            request = slot.queue.popleft()
            slot.in_flight = request
            await self._send_one(slot, modem, request)
            slot.in_flight = None
            self._notify()

    async def _take_token(self, slot: _Slot) -> None:
        while (wait := slot.token_wait(trio.current_time())) > 0:
            await trio.sleep(wait)
        slot.tokens -= 1.0

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
            slot.roll_day()

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
                slot.sent_today += 1
                slot.consecutive_errors = 0
                mr = result.mr if isinstance(result, SubmitResult) else 0
                mrs.append(mr)
                await self._emit(
                    PartSent(
                        ref=request.ref, modem=name, part=number, tp_mr=mr,
                        destination=str(destination),
                    )
                )
        logger.info(
            "modem sent modem=%s to=%s parts=%d mr=%s",
            name, mask_number(request.destination), len(mrs), ",".join(map(str, mrs)),
        )

    # ---------------------------------------------------------------- incoming

    async def _pick_up_stored(self, slot: _Slot, modem: Modem, nursery) -> None:

        listing = await self._command(modem, ListMessages(MessageStat.ALL))
        if not isinstance(listing, MessageList):
            return
        for stored in listing.messages:
            await self._handle_pdu(slot, modem, nursery, stored.pdu, stored.index)

    async def _incoming(self, slot: _Slot, modem: Modem, nursery) -> None:

        async for event in modem.unsolicited:
            if isinstance(event, (NewMessage, NewStatusReport)):
                stored = await self._command(modem, ReadMessage(event.index))
                if isinstance(stored, StoredMessage):
                    await self._handle_pdu(slot, modem, nursery, stored.pdu, event.index)
            elif isinstance(event, (IncomingStatusReport, IncomingDeliver)):
                await self._handle_pdu(slot, modem, nursery, event.pdu, None)

    async def _handle_pdu(
        self, slot: _Slot, modem: Modem, nursery, pdu: str, index: int | None
    ) -> None:

        name = slot.spec.name
        try:
            message = decode_incoming(pdu)
        except ModemError as exc:
            logger.warning("modem unreadable pdu modem=%s index=%s error=%s", name, index, exc)
            if index is not None:
                await self._command(modem, DeleteMessage(index))
            return
        if isinstance(message, StatusReport):
            async with slot.report_gate:
                await self._emit(
                    ModemReport(
                        modem=name,
                        tp_mr=message.mr,
                        recipient=str(message.recipient),
                        status=message.status_class,
                        tp_status=message.status,
                        at=message.discharge_time,
                    )
                )
            if index is not None:
                await self._command(modem, DeleteMessage(index))
            return
        await self._deliver(slot, modem, nursery, message, index)

    async def _deliver(
        self, slot: _Slot, modem: Modem, nursery, deliver: Deliver, index: int | None
    ) -> None:
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
            return
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
            nursery.start_soon(self._delete_after_ack, modem, mo, held)

    async def _delete_after_ack(self, modem: Modem, mo: ModemMo, indices: list[int]) -> None:

        await mo._acked.wait()
        for index in indices:
            await self._command(modem, DeleteMessage(index))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, _Hung):
        return str(exc)
    if isinstance(exc, (ModemUnavailable, OSError)):
        return f"unavailable: {exc}"
    return f"{type(exc).__name__}: {exc}"
