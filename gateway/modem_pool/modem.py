"""Trio driver for one GSM modem: the sans-IO :class:`AtConnection` over a byte stream.

One command in flight (TS 27.007 §5.1), serialized by a lock; unsolicited result codes
(``+CMTI``, ``+CDS``, ``^RSSI``...) go to a bounded channel, :attr:`Modem.unsolicited`.
Timeouts belong to the caller: cancel a :meth:`Modem.command` with a cancel scope and the
driver abandons the command (ESC at the ``> `` prompt) before the cancellation goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import trio

from gateway.modem_pool.at import (
    AtConnection,
    AtStatistics,
    Attention,
    Command,
    CommandCompleted,
    CommandFailed,
    DeleteMessage,
    EnterPin,
    Event,
    Garbage,
    ListMessages,
    MessageList,
    MessageStat,
    OwnNumbers,
    PinState,
    Prompt,
    QueryOwnNumber,
    QueryPin,
    QueryRegistration,
    QuerySignal,
    QueryStorage,
    ReadMessage,
    Registration,
    ReportErrors,
    Response,
    ResponseMalformed,
    SelectPduMode,
    SelectStorage,
    SendMessage,
    SetEcho,
    SetIndications,
    SignalQuality,
    StorageStatus,
    StoredMessage,
    SubmitResult,
)
from gateway.modem_pool.errors import (
    CommandError,
    ModemError,
    ModemUnavailable,
    RemoteProtocolError,
)
from gateway.modem_pool.pdu import (
    mask_number,
    Address,
    Alphabet,
    encode_submit,
    submit_parts,
    submits_for_parts,
)

logger = logging.getLogger(__name__)

_R = TypeVar("_R")

__all__ = [
    "ABANDON_TIMEOUT",
    "INDICATION_SETTINGS",
    "SIM_BUSY_ATTEMPTS",
    "SIM_BUSY_WAIT",
    "MAX_PENDING_UNSOLICITED",
    "RESYNC_QUIET",
    "SYNC_ATTEMPTS",
    "SYNC_TIMEOUT",
    "Modem",
    "ModemStatus",
]

#: Unsolicited events held for the consumer before new ones are dropped (and counted).
MAX_PENDING_UNSOLICITED = 256
#: ``AT`` probes sent to get in step with a modem at start.
SYNC_ATTEMPTS = 5
#: Seconds to wait for each probe's ``OK``.
SYNC_TIMEOUT = 1.0
#: Seconds given to writing ESC when a command is abandoned.
ABANDON_TIMEOUT = 1.0
#: After an abandoned command, the line must stay quiet this many seconds (late answers
#: drain as garbage) before the next command, so a late ``OK`` cannot complete it.
RESYNC_QUIET = 0.25
_RESPONSE_QUEUE = 4
#: ``AT+CPIN?`` tries while the SIM answers "busy" after power-up, and the wait between.
SIM_BUSY_ATTEMPTS = 10
SIM_BUSY_WAIT = 0.5
_SIM_BUSY = frozenset({14, 314})  # +CME ERROR: SIM busy, +CMS ERROR: (U)SIM busy
#: ``AT+CNMI`` settings tried in order (TS 27.005 §3.4.1): status reports routed as
#: ``+CDS`` (ds=1) or stored and announced as ``+CDSI`` (ds=2); mode 2 buffers indications
#: while the link is busy, mode 1 discards them then (messages stay stored on the SIM).
INDICATION_SETTINGS = (
    SetIndications(mode=2, mt=1, ds=1),
    SetIndications(mode=2, mt=1, ds=2),
    SetIndications(mode=1, mt=1, ds=1),
    SetIndications(mode=1, mt=1, ds=2),
)


def _expect(response: Response, kind: type[_R]) -> _R:
    if not isinstance(response, kind):
        raise RemoteProtocolError(f"expected {kind.__name__}, got {type(response).__name__}")
    return response


@dataclass(frozen=True, slots=True)
class ModemStatus:
    """What :meth:`Modem.initialize` found out."""

    own_number: str | None
    signal: SignalQuality
    registration: Registration
    storage: StorageStatus


class Modem:
    """One modem over a :class:`trio.abc.Stream` (a :class:`SerialStream` in production).

    ``await nursery.start(modem.run)`` starts the reader; then :meth:`initialize` and the
    commands. ``run`` raises :class:`ModemUnavailable` when the stream breaks.
    """

    def __init__(
        self, stream: trio.abc.Stream, *, name: str = "modem", pin: str | None = None
    ) -> None:
        self.name = name
        self._stream = stream
        self._pin = pin
        self._conn = AtConnection()
        self._lock = trio.Lock()
        self._responses_send, self._responses = trio.open_memory_channel[Event](_RESPONSE_QUEUE)
        self._urc_send, self.unsolicited = trio.open_memory_channel[Event](
            MAX_PENDING_UNSOLICITED
        )
        self._concat_ref = 0
        self._needs_resync = False
        self._last_receive = 0.0
        self.unsolicited_dropped = 0

    # ---------------------------------------------------------------- service

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Read the modem until the stream breaks or the caller cancels."""
        task_status.started()
        try:
            while True:
                try:
                    data = await self._stream.receive_some()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise ModemUnavailable(f"{self.name}: {exc}") from None
                self._last_receive = trio.current_time()
                self._conn.receive_data(data)
                for event in self._conn.events():
                    self._dispatch(event)
        finally:
            self._responses_send.close()
            self._urc_send.close()

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, (CommandCompleted, CommandFailed, ResponseMalformed, Prompt)):
            # At most a prompt and a result per command, drained before the next one.
            try:
                self._responses_send.send_nowait(event)
            except trio.WouldBlock:
                logger.warning(
                    "modem answer dropped modem=%s event=%s", self.name, type(event).__name__
                )
        elif isinstance(event, Garbage):
            logger.debug("modem garbage modem=%s reason=%s", self.name, event.reason)
        else:
            try:
                self._urc_send.send_nowait(event)
            except trio.WouldBlock:
                self.unsolicited_dropped += 1
                logger.warning(
                    "modem unsolicited dropped modem=%s event=%s", self.name, type(event).__name__
                )

    # ---------------------------------------------------------------- commands

    async def command(self, command: Command) -> Response:
        """Send ``command`` and wait for its typed response.

        Raises :class:`CommandError` on an error result, :class:`RemoteProtocolError` on an
        unparsable answer, :class:`ModemUnavailable` when the modem went away.
        """
        async with self._lock:
            if self._needs_resync:
                await self._wait_quiet()
            while True:  # answers to an abandoned command that slipped in
                try:
                    self._responses.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            line = self._conn.send(command)
            try:
                await self._stream.send_all(line)
                while True:
                    try:
                        event = await self._responses.receive()
                    except trio.EndOfChannel:
                        raise ModemUnavailable(f"{self.name}: reader stopped") from None
                    if isinstance(event, Prompt):
                        await self._stream.send_all(self._conn.send_body())
                    elif isinstance(event, CommandCompleted):
                        return event.response
                    elif isinstance(event, CommandFailed):
                        raise CommandError(command.label, event.result, event.code, event.text)
                    else:
                        raise RemoteProtocolError(f"{command.label}: {event.reason}")
            except BaseException:
                if self._conn.command is command:
                    await self._abandon()
                raise

    async def _wait_quiet(self) -> None:
        await trio.sleep(RESYNC_QUIET)
        while (quiet := trio.current_time() - self._last_receive) < RESYNC_QUIET:
            await trio.sleep(RESYNC_QUIET - quiet)
        self._needs_resync = False

    async def _abandon(self) -> None:
        self._needs_resync = True
        tail = self._conn.abandon()
        if not tail:
            return
        with trio.move_on_after(ABANDON_TIMEOUT, shield=True):
            try:
                await self._stream.send_all(tail)
            except (ModemUnavailable, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                logger.debug("modem abandon not written modem=%s error=%s", self.name, exc)

    async def initialize(
        self, *, sync_attempts: int = SYNC_ATTEMPTS, sync_timeout: float = SYNC_TIMEOUT
    ) -> ModemStatus:
        """The start-up sequence: AT, ATE0, AT+CMEE=1, PIN, PDU mode, storage, indications."""
        for _ in range(sync_attempts):
            with trio.move_on_after(sync_timeout):
                await self.command(Attention())
                break
        else:
            raise ModemUnavailable(f"{self.name}: no answer to AT")
        await self.command(SetEcho(on=False))
        try:
            await self.command(ReportErrors(1))
        except CommandError as exc:
            # Errors then come as a bare ERROR, without their codes; the modem still works.
            logger.warning("modem rejected AT+CMEE=1 modem=%s error=%s", self.name, exc)
        pin = await self._query_pin()
        if not pin.ready:
            if pin.code != "SIM PIN" or self._pin is None:
                raise ModemError(f"{self.name}: SIM not ready ({pin.code})")
            await self.command(EnterPin(self._pin))
        await self.command(SelectPduMode())
        try:
            storage = _expect(await self.command(SelectStorage()), StorageStatus)
        except CommandError as exc:
            # Some firmware takes no AT+CPMS arguments (or not these): its own storage, as
            # AT+CPMS? reports it, is where new messages go and where AT+CMGR/L/D look.
            logger.warning("modem rejected AT+CPMS modem=%s error=%s", self.name, exc)
            storage = _expect(await self.command(QueryStorage()), StorageStatus)
        await self._set_indications()
        own_number = None
        try:
            numbers = _expect(await self.command(QueryOwnNumber()), OwnNumbers)
        except CommandError:
            numbers = OwnNumbers(())
        if numbers.entries:
            own_number = numbers.entries[0].number
        signal = _expect(await self.command(QuerySignal()), SignalQuality)
        registration = _expect(await self.command(QueryRegistration()), Registration)
        logger.info(
            "modem ready modem=%s number=%s rssi=%d registered=%s",
            self.name,
            mask_number(own_number or ""),
            signal.rssi,
            registration.registered,
        )
        return ModemStatus(own_number, signal, registration, storage)

    async def _query_pin(self) -> PinState:
        """``AT+CPIN?``, waiting out a SIM still busy after power-up (CME 14, CMS 314)."""
        for attempt in range(1, SIM_BUSY_ATTEMPTS + 1):
            try:
                return _expect(await self.command(QueryPin()), PinState)
            except CommandError as exc:
                if exc.code not in _SIM_BUSY or attempt == SIM_BUSY_ATTEMPTS:
                    raise
                logger.info("modem sim busy modem=%s attempt=%d", self.name, attempt)
                await trio.sleep(SIM_BUSY_WAIT)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _set_indications(self) -> SetIndications:
        """``AT+CNMI``: the first of :data:`INDICATION_SETTINGS` the modem accepts.

        Modems differ in the ``<mode>``/``<ds>`` pairs they take; every setting tried gives
        ``+CMTI`` for new messages and ``+CDS`` or ``+CDSI`` for status reports.
        """
        errors = []
        for setting in INDICATION_SETTINGS:
            try:
                await self.command(setting)
            except CommandError as exc:
                errors.append(str(exc))
                continue
            if errors:
                logger.warning(
                    "modem indications fallback modem=%s setting=%s rejected=%s",
                    self.name, setting.text, "; ".join(errors),
                )
            return setting
        raise ModemError(
            f"{self.name}: AT+CNMI rejected for every setting tried, so new messages and "
            f"status reports would go unannounced ({'; '.join(errors)})"
        )

    async def send_pdu(self, pdu: bytes) -> int:
        """``AT+CMGS`` with a full PDU (SMSC prefix included); returns the TP-MR."""
        return _expect(await self.command(SendMessage(pdu)), SubmitResult).mr

    async def send_text(
        self,
        destination: str,
        text: str,
        *,
        status_report: bool = True,
        validity: int | None = 0xA7,
    ) -> list[int]:
        """Send ``text`` (concatenated if long); returns the TP-MR of each part, in order."""
        self._concat_ref = (self._concat_ref + 1) % 256
        parts = submit_parts(
            Address.parse(destination),
            text,
            ref=self._concat_ref,
            status_report=status_report,
            validity=validity,
        )
        mrs = []
        for part in parts:
            mrs.append(await self.send_pdu(encode_submit(part)))
        logger.info(
            "modem sent modem=%s to=%s parts=%d mr=%s",
            self.name,
            mask_number(destination),
            len(parts),
            ",".join(map(str, mrs)),
        )
        return mrs

    async def send_parts(
        self,
        destination: str,
        parts: Sequence[str],
        *,
        alphabet: Alphabet,
        status_report: bool = True,
        validity: int | None = 0xA7,
    ) -> list[int]:
        """Send a text already cut into parts; returns the TP-MR of each part, in order."""
        self._concat_ref = (self._concat_ref + 1) % 256
        submits = submits_for_parts(
            Address.parse(destination),
            parts,
            alphabet=alphabet,
            ref=self._concat_ref,
            status_report=status_report,
            validity=validity,
        )
        mrs = [await self.send_pdu(encode_submit(submit)) for submit in submits]
        logger.info(
            "modem sent modem=%s to=%s parts=%d mr=%s",
            self.name,
            mask_number(destination),
            len(submits),
            ",".join(map(str, mrs)),
        )
        return mrs

    async def read_message(self, index: int) -> StoredMessage:
        return _expect(await self.command(ReadMessage(index)), StoredMessage)

    async def list_messages(self, stat: int = MessageStat.ALL) -> MessageList:
        return _expect(await self.command(ListMessages(stat)), MessageList)

    async def delete_message(self, index: int) -> None:
        await self.command(DeleteMessage(index))

    def statistics(self) -> AtStatistics:
        return self._conn.statistics()
