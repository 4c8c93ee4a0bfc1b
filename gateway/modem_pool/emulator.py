"""A GSM modem emulator on a pseudo-terminal, and a simulated handset network.

:class:`ModemEmulator` opens a pty (raw mode) and answers the AT command set of TS 27.007 and
TS 27.005 in PDU mode the way a common USB modem does: echo on at power-up, ``ATE0``,
``AT+CMEE``, ``AT+CMGF=0``, ``AT+CPIN``, ``AT+CSQ``, ``AT+CREG?``, ``AT+CNMI``, ``AT+CPMS``,
``AT+CNUM``, ``AT+CMGS`` with the ``> `` prompt, ``AT+CMGR``/``AT+CMGL``/``AT+CMGD`` on a
small SIM storage. Messages it sends go to a :class:`HandsetNetwork`, which delivers them
to a simulated handset inbox or to another emulated modem (as ``+CMTI``) and answers a
status report request with ``+CDS``.

Faults are chosen by constructor arguments: ``send_error`` (``+CMS ERROR`` on every send, or
on the first ``send_error_count`` sends), ``no_answer``, ``garbage`` (bytes before every
answer), ``answer_delay`` and ``byte_delay`` (slow answers, dribbled byte by byte),
``send_delay`` (the network time of a send, between the PDU and ``+CMGS``: 2-6 s on real
SIMs), ``storage_slots`` (a small or full SIM), ``cnma_timeout`` (with ``AT+CSMS=1``, a
direct ``+CMT``/``+CDS`` not acknowledged by ``AT+CNMA`` in time is delivered again), and
:meth:`ModemEmulator.unplug` / :meth:`ModemEmulator.replug`.
"""

from __future__ import annotations

import logging
import os
import tty
from collections import Counter, deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import trio

from gateway.modem_pool.at import MessageStat
from gateway.modem_pool.errors import ModemError, PduError
from gateway.modem_pool.pdu import (
    mask_number,
    Address,
    Deliver,
    Reassembler,
    StatusReport,
    Submit,
    TpStatus,
    cmgs_length,
    decode_submit,
    encode_deliver,
    encode_status_report,
    split_text,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_COMMAND_LINE",
    "MAX_WAITING_DELIVERIES",
    "OUTPUT_QUEUE_SIZE",
    "HandsetNetwork",
    "InboxMessage",
    "ModemEmulator",
    "NetworkStatistics",
]

#: Longest command line or PDU body the emulator accepts before discarding it.
MAX_COMMAND_LINE = 1024
#: Bytes chunks queued for the pty before new unsolicited codes are dropped.
OUTPUT_QUEUE_SIZE = 256
#: Messages held by the network for a modem whose SIM storage is full.
MAX_WAITING_DELIVERIES = 64
#: Messages kept per handset inbox.
MAX_INBOX = 1000
#: SMS-SUBMITs an emulator keeps in :attr:`ModemEmulator.sent`.
MAX_SENT_KEPT = 1000

_NETWORK_TZ = timezone(timedelta(hours=8))
_CTRL_Z = 0x1A
_ESC = 0x1B


def national(number: str) -> str:
    """``+8613800138000``, ``8613800138000`` and ``13800138000`` all become the last."""
    digits = number.lstrip("+")
    if digits.startswith("86") and len(digits) == 13:
        return digits[2:]
    return digits


@dataclass(frozen=True, slots=True)
class InboxMessage:
    """A message a simulated handset received (concatenated parts already joined)."""

    sender: str
    text: str
    parts: int


@dataclass(frozen=True, slots=True)
class NetworkStatistics:
    """Counts of what the simulated network carried, in SMS parts (PDUs).

    ``submitted``: SMS-SUBMITs taken from modems; ``delivered``: of those, parts handed to a
    handset or a modem; ``undeliverable``: parts for an unreachable number;
    ``status_reports``: SMS-STATUS-REPORTs sent back to modems; ``mo``: parts handsets sent
    to modems.
    """

    submitted: int
    delivered: int
    undeliverable: int
    status_reports: int
    mo: int


class HandsetNetwork:
    """In-process stand-in for the mobile network: handsets, modems and the SMSC.

    A number attached by a :class:`ModemEmulator` receives as that modem; any other number is
    a handset whose inbox :meth:`inbox` lists. Numbers in ``unreachable`` never receive:
    their status reports say "not obtainable" (TP-ST 0x43).
    """

    def __init__(self, *, unreachable: frozenset[str] = frozenset()) -> None:
        self._modems: dict[str, ModemEmulator] = {}
        self._inboxes: dict[str, deque[InboxMessage]] = {}
        self._reassemblers: dict[str, Reassembler] = {}
        self._unreachable = frozenset(national(n) for n in unreachable)
        self._ref = 0
        self._submitted = 0
        self._delivered = 0
        self._undeliverable = 0
        self._status_reports = 0
        self._mo = 0

    def attach(self, number: str, modem: ModemEmulator) -> None:
        self._modems[national(number)] = modem

    def detach(self, number: str) -> None:
        self._modems.pop(national(number), None)

    def inbox(self, number: str) -> list[InboxMessage]:
        return list(self._inboxes.get(national(number), ()))

    @property
    def modems(self) -> dict[str, ModemEmulator]:
        """The attached modems by national number (a copy)."""
        return dict(self._modems)

    def statistics(self) -> NetworkStatistics:
        return NetworkStatistics(
            submitted=self._submitted,
            delivered=self._delivered,
            undeliverable=self._undeliverable,
            status_reports=self._status_reports,
            mo=self._mo,
        )

    def send_from_handset(self, sender: str, to: str, text: str) -> int:
        """A handset texts ``to`` (an emulated modem); returns the number of parts sent."""
        modem = self._modems.get(national(to))
        if modem is None:
            raise KeyError(f"no emulated modem has number {to}")
        self._ref = (self._ref + 1) % 256
        parts = split_text(text, ref=self._ref)
        originator = Address.parse(sender)
        for part in parts:
            modem.accept_deliver(
                Deliver(originator=originator, user_data=part, scts=self._now())
            )
        self._mo += len(parts)
        return len(parts)

    def route(self, sender: ModemEmulator, submit: Submit, mr: int) -> None:
        """Carry one SMS-SUBMIT from ``sender``; a status report follows if it asked."""
        target = national(submit.destination.number)
        status = TpStatus.DELIVERED
        self._submitted += 1
        if target in self._unreachable:
            status = TpStatus.NOT_OBTAINABLE
            self._undeliverable += 1
        elif target in self._modems:
            self._modems[target].accept_deliver(
                Deliver(
                    originator=Address.parse(sender.number),
                    user_data=submit.user_data,
                    scts=self._now(),
                )
            )
        else:
            self._to_handset(target, sender.number, submit)
        if status == TpStatus.DELIVERED:
            self._delivered += 1
        if submit.status_report:
            self._status_reports += 1
            now = self._now()
            sender.accept_status_report(
                StatusReport(
                    mr=mr,
                    recipient=submit.destination,
                    scts=now,
                    discharge_time=now,
                    status=status,
                )
            )

    def _to_handset(self, target: str, sender: str, submit: Submit) -> None:
        reassembler = self._reassemblers.setdefault(target, Reassembler())
        deliver = Deliver(
            originator=Address.parse(sender), user_data=submit.user_data, scts=self._now()
        )
        done = reassembler.add(deliver, trio.current_time())
        if done is not None:
            inbox = self._inboxes.setdefault(target, deque(maxlen=MAX_INBOX))
            inbox.append(InboxMessage(sender=sender, text=done.text, parts=len(done.parts)))

    @staticmethod
    def _now() -> datetime:
        return datetime.now(_NETWORK_TZ).replace(microsecond=0)


@dataclass(slots=True)
class _Slot:
    stat: int
    pdu: bytes


class _DteReader:
    """Splits what the DTE writes into command lines, or a PDU body after the prompt."""

    def __init__(self) -> None:
        self.body_mode = False
        self._buf = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        items: list[tuple[str, str]] = []
        for byte in data:
            if self.body_mode:
                if byte == _CTRL_Z:
                    items.append(("body", self._take()))
                    self.body_mode = False
                elif byte == _ESC:
                    self._take()
                    items.append(("cancel", ""))
                    self.body_mode = False
                elif byte not in (0x0D, 0x0A):
                    self._add(byte)
            elif byte == 0x0D:
                overflow = self._overflow
                line = self._take()
                items.append(("error" if overflow else "line", line))
            elif byte != 0x0A:
                self._add(byte)
        return items

    def _add(self, byte: int) -> None:
        if len(self._buf) >= MAX_COMMAND_LINE:
            self._overflow = True
            return
        self._buf.append(byte)

    def _take(self) -> str:
        text = self._buf.decode("latin-1")
        self._buf.clear()
        self._overflow = False
        return text


class ModemEmulator:
    """One emulated USB modem on a pseudo-terminal (TS 27.007 / TS 27.005 PDU mode).

    ``await nursery.start(modem.run)`` returns the device path to open. With ``link_path``
    the device is a symlink kept at that path across :meth:`unplug`/:meth:`replug`.
    """

    def __init__(
        self,
        network: HandsetNetwork,
        number: str,
        *,
        name: str = "emulated",
        imei: str = "860000000000001",
        pin: str | None = None,
        rssi: int = 20,
        storage_slots: int = 20,
        send_error: int | None = None,
        send_error_count: int | None = None,
        no_answer: bool = False,
        garbage: bytes = b"",
        answer_delay: float = 0.0,
        send_delay: float = 0.0,
        byte_delay: float = 0.0,
        cnma_timeout: float = 10.0,
        boot_banner: bytes = b"",
        link_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.network = network
        self.number = number
        self.name = name
        self.imei = imei
        self.rssi = rssi
        self.send_error = send_error
        self.send_error_count = send_error_count
        self.no_answer = no_answer
        self.garbage = garbage
        self.answer_delay = answer_delay
        self.send_delay = send_delay
        self.cnma_timeout = cnma_timeout
        #: ``+CMT``/``+CDS`` delivered again for want of ``AT+CNMA``.
        self.redelivered = 0
        #: Commands received, by name without ``AT`` and arguments (``+CSQ``, ``+CMGS``).
        self.commands: Counter[str] = Counter()
        self._ack_changed = trio.Event()
        self.byte_delay = byte_delay
        self.boot_banner = boot_banner
        self._pin = pin
        self._slots = storage_slots
        self._storage: dict[int, _Slot] = {}
        self._waiting: deque[Deliver] = deque(maxlen=MAX_WAITING_DELIVERIES)
        self._link_path = Path(link_path) if link_path is not None else None
        self._mr = 0
        self._out: trio.MemorySendChannel[bytes] | None = None
        self._unplugged = trio.Event()
        self._replugged = trio.Event()
        self._device: str | None = None
        #: The last SMS-SUBMITs this modem took (bounded); ``sent_count`` counts them all.
        self.sent: deque[Submit] = deque(maxlen=MAX_SENT_KEPT)
        self.sent_count = 0
        self._last_sent: tuple[Submit, int] | None = None
        self._reset_settings()

    # ---------------------------------------------------------------- public

    @property
    def device(self) -> str:
        if self._device is None:
            raise ModemError("the emulator is not running")
        return str(self._link_path) if self._link_path is not None else self._device

    @property
    def stored(self) -> int:
        return len(self._storage)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve the pty until cancelled; unplug and replug close and reopen it."""
        self.network.attach(self.number, self)
        try:
            started = False
            while True:
                self._unplugged = trio.Event()
                await self._power_cycle(task_status if not started else None)
                started = True
                await self._replugged.wait()
                self._replugged = trio.Event()
        finally:
            self.network.detach(self.number)

    def unplug(self) -> None:
        """Pull the modem out: its pty closes (readers see an I/O error)."""
        self._unplugged.set()

    def replug(self) -> None:
        """Plug it back in: a fresh pty, settings back to power-up (echo on)."""
        self._replugged.set()

    def accept_deliver(self, deliver: Deliver) -> None:
        """An SMS-DELIVER from the network (TS 27.005 §3.4.1 routing by AT+CNMI <mt>)."""
        pdu = encode_deliver(deliver)
        if self._cnmi_mt in (2, 3):
            self._route_direct(f"+CMT: ,{cmgs_length(pdu)}\r\n{pdu.hex().upper()}")
            return
        index = self._store(MessageStat.REC_UNREAD, pdu)
        if index is None:
            self._waiting.append(deliver)
            return
        if self._cnmi_mt == 1:
            self._urc(f'+CMTI: "SM",{index}')

    def accept_status_report(self, report: StatusReport) -> None:
        """An SMS-STATUS-REPORT from the network (routed by AT+CNMI <ds>)."""
        pdu = encode_status_report(report)
        if self._cnmi_ds == 1:
            self._route_direct(f"+CDS: {cmgs_length(pdu)}\r\n{pdu.hex().upper()}")
        elif self._cnmi_ds == 2:
            index = self._store(MessageStat.REC_UNREAD, pdu)
            if index is not None:
                self._urc(f'+CDSI: "SM",{index}')

    # ---------------------------------------------------------------- pty plumbing

    def _route_direct(self, urc: str) -> None:
        """A ``+CMT``/``+CDS`` straight to the DTE. With ``AT+CSMS=1`` each needs ``AT+CNMA``
        (TS 27.005 §3.4.4): the next is held until then, and one left unacknowledged for
        ``cnma_timeout`` seconds is delivered again, as the network would."""
        if self._csms == 0:
            self._urc(urc)
            return
        self._awaiting_ack.append(urc)
        if len(self._awaiting_ack) == 1:
            self._emit_awaiting()

    def _emit_awaiting(self) -> None:
        self._urc(self._awaiting_ack[0])
        self._ack_deadline = trio.current_time() + self.cnma_timeout
        self._ack_changed.set()

    async def _redeliver_unacknowledged(self) -> None:
        while True:
            self._ack_changed = trio.Event()
            deadline = self._ack_deadline if self._awaiting_ack else None
            if deadline is None:
                await self._ack_changed.wait()
                continue
            with trio.move_on_at(deadline) as scope:
                await self._ack_changed.wait()
            if scope.cancelled_caught and self._awaiting_ack:
                self.redelivered += 1
                self._emit_awaiting()

    def _reset_settings(self) -> None:
        self._sim_ready = self._pin is None
        self._echo = True
        self._cmee = 0
        self._pdu_mode = False
        self._cnmi_mt = 0
        self._cnmi_ds = 0
        self._pending_cmgs: int | None = None
        self._csms = 0
        self._awaiting_ack: deque[str] = deque()
        self._ack_deadline: float | None = None

    async def _power_cycle(self, task_status) -> None:
        self._reset_settings()
        master, slave = os.openpty()
        tty.setraw(slave)
        self._device = os.ttyname(slave)
        if self._link_path is not None:
            tmp = self._link_path.with_name(self._link_path.name + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self._device)
            tmp.replace(self._link_path)
        stream = trio.lowlevel.FdStream(master)
        send, receive = trio.open_memory_channel[bytes](OUTPUT_QUEUE_SIZE)
        self._out = send
        logger.info("modem emulator plugged name=%s device=%s", self.name, self._device)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, stream, receive)
                nursery.start_soon(self._reader, stream)
                nursery.start_soon(self._redeliver_unacknowledged)
                if self.boot_banner:
                    self._write(self.boot_banner)
                if task_status is not None:
                    task_status.started(self.device)
                await self._unplugged.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._out = None
            send.close()
            with trio.CancelScope(shield=True):
                await stream.aclose()
            os.close(slave)
            logger.info("modem emulator unplugged name=%s", self.name)

    async def _writer(self, stream: trio.lowlevel.FdStream, receive) -> None:
        async with receive:
            async for chunk in receive:
                try:
                    if self.byte_delay > 0:
                        for i in range(len(chunk)):
                            await stream.send_all(chunk[i : i + 1])
                            await trio.sleep(self.byte_delay)
                    else:
                        await stream.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    logger.info("modem emulator pty closed name=%s error=%s", self.name, exc)
                    return

    async def _reader(self, stream: trio.lowlevel.FdStream) -> None:
        reader = _DteReader()
        while True:
            try:
                data = await stream.receive_some(4096)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                logger.info("modem emulator pty closed name=%s error=%s", self.name, exc)
                return
            if not data:
                return  # the emulator holds the slave end open, so this means the pty went away
            if self._echo and not self.no_answer:
                self._write(data)
            for kind, text in reader.feed(data):
                if self.no_answer:
                    continue
                if self.answer_delay > 0:
                    await trio.sleep(self.answer_delay)
                if kind == "body":
                    if self.send_delay > 0:
                        await trio.sleep(self.send_delay)  # the network round trip of a send
                    answer = self._on_body(text)
                elif kind == "cancel":
                    self._pending_cmgs = None
                    answer = self._final("OK")
                elif kind == "error":
                    answer = self._final("ERROR")
                else:
                    answer = self._on_line(text)
                if answer is None:
                    continue
                if self.garbage:
                    self._write(self.garbage)
                self._write(answer)
                reader.body_mode = self._pending_cmgs is not None
                if kind == "body":
                    self._after_send()

    def _write(self, data: bytes) -> None:
        if self._out is None:
            return
        try:
            self._out.send_nowait(data)
        except trio.WouldBlock:
            logger.warning("modem emulator output full name=%s dropped=%d", self.name, len(data))

    def _urc(self, text: str) -> None:
        self._write(f"\r\n{text}\r\n".encode("ascii"))

    # ---------------------------------------------------------------- AT commands

    @staticmethod
    def _final(result: str, *info: str) -> bytes:
        out = "".join(f"\r\n{line}\r\n" for line in info)
        return (out + f"\r\n{result}\r\n").encode("ascii")

    def _cme(self, code: int) -> bytes:
        return self._final(f"+CME ERROR: {code}" if self._cmee else "ERROR")

    def _cms(self, code: int) -> bytes:
        return self._final(f"+CMS ERROR: {code}")

    def _on_line(self, line: str) -> bytes | None:
        text = line.strip()
        if not text:
            return None
        if text[:2].upper() != "AT":
            return None  # modems ignore what does not start with AT
        cmd = text[2:]
        upper = cmd.upper()
        name, _, arg = upper.partition("=")
        self.commands[name] += 1
        if upper == "":
            return self._final("OK")
        if upper in ("E0", "E1", "E"):
            self._echo = upper == "E1"
            return self._final("OK")
        if upper in ("I", "I0"):
            return self._final("OK", "Emulated", "USB Modem", "Revision: 1.0")
        if upper == "+CGSN":
            return self._final("OK", self.imei)
        if name == "+CMEE" and arg in ("0", "1", "2"):
            self._cmee = int(arg)
            return self._final("OK")
        if upper == "+CPIN?":
            return self._final("OK", "+CPIN: READY" if self._sim_ready else "+CPIN: SIM PIN")
        if name == "+CPIN" and arg:
            if self._sim_ready:
                return self._cme(3)
            if arg.strip('"') == self._pin:
                self._sim_ready = True
                return self._final("OK")
            return self._cme(16)
        if upper == "+CSQ":
            return self._final("OK", f"+CSQ: {self.rssi},99")
        if upper == "+CREG?":
            return self._final("OK", "+CREG: 0,1" if self._sim_ready else "+CREG: 0,0")
        if not self._sim_ready and name.startswith(("+CMG", "+CNMI", "+CPMS", "+CNUM", "+CNMA")):
            return self._cms(311)
        if name == "+CMGF":
            if arg == "0":
                self._pdu_mode = True
                return self._final("OK")
            return self._cms(303)
        if name == "+CNMI" and arg:
            values = arg.split(",")
            if not all(v.isdigit() for v in values) or len(values) > 5:
                return self._cms(302)
            padded = [int(v) for v in values] + [0] * (5 - len(values))
            self._cnmi_mt, self._cnmi_ds = padded[1], padded[3]
            return self._final("OK")
        if name == "+CPMS":
            usage = f"{len(self._storage)},{self._slots}"
            if upper == "+CPMS?":
                return self._final("OK", "+CPMS: " + ",".join(f'"SM",{usage}' for _ in range(3)))
            mems = [m.strip().strip('"') for m in arg.split(",")]
            if any(m != "SM" for m in mems):
                return self._cms(302)
            return self._final("OK", "+CPMS: " + ",".join(usage for _ in range(3)))
        if upper == "+CNUM":
            return self._final("OK", f'+CNUM: "","{self.number}",145')
        if upper == "+CNMA":
            if not self._awaiting_ack:
                return self._cms(340)  # no +CNMA acknowledgement expected
            self._awaiting_ack.popleft()
            self._ack_deadline = None
            if self._awaiting_ack:
                self._emit_awaiting()
            return self._final("OK")
        if name == "+CSMS":
            if upper == "+CSMS?":
                return self._final("OK", f"+CSMS: {self._csms},1,1,1")
            if arg not in ("0", "1"):
                return self._cms(302)
            self._csms = int(arg)
            return self._final("OK", "+CSMS: 1,1,1")
        if name == "+CMGS" and arg.isdigit():
            if not self._pdu_mode:
                return self._cms(302)
            self._pending_cmgs = int(arg)
            return b"\r\n> "
        if name == "+CMGR" and arg.isdigit():
            slot = self._storage.get(int(arg))
            if slot is None:
                return self._cms(321)
            answer = self._final(
                "OK", f"+CMGR: {slot.stat},,{cmgs_length(slot.pdu)}", slot.pdu.hex().upper()
            )
            if slot.stat == MessageStat.REC_UNREAD:
                slot.stat = MessageStat.REC_READ
            return answer
        if name == "+CMGL":
            want = int(arg) if arg.isdigit() else 0
            if want > 4:
                return self._cms(302)
            lines = []
            for index in sorted(self._storage):
                slot = self._storage[index]
                if want == 4 or slot.stat == want:
                    lines.append(f"+CMGL: {index},{slot.stat},,{cmgs_length(slot.pdu)}")
                    lines.append(slot.pdu.hex().upper())
                    if slot.stat == MessageStat.REC_UNREAD:
                        slot.stat = MessageStat.REC_READ
            return self._final("OK", *lines)
        if name == "+CMGD" and arg:
            index_text, _, flag_text = arg.partition(",")
            if not index_text.isdigit() or (flag_text and not flag_text.isdigit()):
                return self._cms(302)
            flag = int(flag_text or 0)
            if flag == 4:
                self._storage.clear()
            elif flag == 0:
                if self._storage.pop(int(index_text), None) is None:
                    return self._cms(321)
            else:
                keep = {1: (0, 2, 3), 2: (0, 2), 3: (0,)}.get(flag, ())
                self._storage = {i: s for i, s in self._storage.items() if s.stat in keep}
            self._drain_waiting()
            return self._final("OK")
        return self._final("ERROR")

    def _on_body(self, body: str) -> bytes:
        length, self._pending_cmgs = self._pending_cmgs, None
        try:
            pdu = bytes.fromhex(body.strip())
            if length is None or cmgs_length(pdu) != length:
                raise PduError("AT+CMGS length does not match the PDU")
            submit = decode_submit(pdu)
        except (ValueError, PduError):
            return self._cms(304)
        if self.send_error is not None and self.send_error_count != 0:
            if self.send_error_count is not None:
                self.send_error_count -= 1
            return self._cms(self.send_error)
        mr = self._mr
        self._mr = (self._mr + 1) % 256
        self.sent.append(submit)
        self.sent_count += 1
        self._last_sent = (submit, mr)
        return self._final("OK", f"+CMGS: {mr}")

    def _after_send(self) -> None:
        last = self._last_sent
        if last is None:
            return
        self._last_sent = None
        submit, mr = last
        logger.info(
            "modem emulator sent name=%s to=%s mr=%d",
            self.name,
            mask_number(submit.destination.number),
            mr,
        )
        self.network.route(self, submit, mr)

    # ---------------------------------------------------------------- SIM storage

    def _store(self, stat: int, pdu: bytes) -> int | None:
        for index in range(1, self._slots + 1):
            if index not in self._storage:
                self._storage[index] = _Slot(stat=stat, pdu=pdu)
                return index
        return None

    def _drain_waiting(self) -> None:
        while self._waiting and len(self._storage) < self._slots:
            self.accept_deliver(self._waiting.popleft())

