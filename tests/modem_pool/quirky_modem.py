"""A small scripted AT responder on a real pty, with the habits of real USB modems.

Written for the tests apart from :mod:`gateway.modem_pool.emulator`: it shares no code with
it and reads what the driver sends with ``gsmmodem.pdu`` (an independent PDU library), so
the driver is checked against behaviour it was not written alongside. Quirks, all on by
default and each one switchable:

* echo on at power-up, still echoing until ``ATE0`` is processed;
* unsolicited noise (``^RSSI``, ``^BOOT``, ``^MODE``, ``RING``, unsolicited ``+CREG``, empty
  lines, a stray CR) between a command's echo and its answer and inside multi-line answers;
* slow answers, written a few bytes at a time with CR and LF in separate writes;
* the ``> `` prompt late and in pieces; ``+CMGS: <mr>`` and ``OK`` in separate writes;
* ``+CMTI`` / ``+CDSI`` written while a send is in flight;
* commands it rejects (``AT+CSCS``, chosen ``AT+CNMI`` settings), numeric or verbose errors;
* vanishing: the pty closed in the middle of a command, and plugged back later.
"""

from __future__ import annotations

import os
import tty
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import gsmmodem.pdu as gsmpdu
import trio

CST = timezone(timedelta(hours=8))
NOISE = (
    b"\r\n^RSSI:17\r\n",
    b"\r\n^BOOT:12345678,0,0,0,6\r\n",
    b"\r\n^MODE:5,4\r\n",
    b"\r\nRING\r\n",
    b"\r\n+CREG: 1\r\n",
    b"\r\n\r\n",
    b"\r",
)


@dataclass
class Quirks:
    echo_at_start: bool = True
    noise: bool = True
    delay: float = 0.15
    chunk: int = 3
    reject: tuple[str, ...] = ("AT+CSCS",)
    """Command prefixes answered with plain ``ERROR``."""
    errors: dict[str, list[bytes]] = field(default_factory=dict)
    """Command prefix -> error lines to answer with, one per occurrence, before succeeding."""
    send_errors: list[bytes] = field(default_factory=list)
    """Final results for the next ``AT+CMGS`` bodies, e.g. ``b"+CMS ERROR: 500"``."""
    indications_during_send: bool = True
    mo_during_send: list[str] = field(default_factory=list)
    """SMS-DELIVER PDUs (hex) stored and announced with ``+CMTI`` during the next sends."""
    report_storage: str = "SM"
    """Where status reports are stored and announced (``+CDSI: "SR",n`` on many sticks)."""
    vanish_on_command: str | None = None
    """Close the pty, once, when a command starting with this arrives, without an answer."""
    vanish_on_send: int | None = None
    """Close the pty when this (1-based) ``AT+CMGS`` body arrives, without an answer."""


@dataclass
class Sent:
    number: str
    text: str
    reference: int
    concat: tuple[int, int, int] | None


def deliver_pdu(sender: str, text: str, when: datetime) -> str:
    """An SMS-DELIVER in hex, TS 23.040 §9.2.2.1, built from ``gsmmodem.pdu`` primitives."""
    try:
        septets = gsmpdu.encodeGsm7(text)
        dcs, udl, ud = 0x00, len(septets), bytes(gsmpdu.packSeptets(septets))
    except ValueError:
        ud = bytes(gsmpdu.encodeUcs2(text))
        dcs, udl = 0x08, len(ud)
    out = bytearray((0x00, 0x04)) + gsmpdu._encodeAddressField(sender)
    out += bytes((0x00, dcs)) + gsmpdu._encodeTimestamp(when) + bytes((udl,)) + ud
    return out.hex().upper()


def status_report_pdu(mr: int, recipient: str, status: int, when: datetime) -> str:
    """An SMS-STATUS-REPORT in hex, TS 23.040 §9.2.2.3."""
    out = bytearray((0x00, 0x06, mr)) + gsmpdu._encodeAddressField(recipient)
    out += gsmpdu._encodeTimestamp(when) + gsmpdu._encodeTimestamp(when + timedelta(seconds=3))
    out.append(status)
    return out.hex().upper()


class QuirkyModem:
    """``await nursery.start(modem.run)``; the device is :attr:`link` (a symlink to the pty)."""

    def __init__(self, link: Path, number: str, quirks: Quirks | None = None) -> None:
        self.link = Path(link)
        self.number = number
        self.quirks = quirks or Quirks()
        self.storage: dict[int, tuple[int, str]] = {}  # "SM": index -> (stat, pdu hex)
        self.report_store: dict[int, tuple[int, str]] = {}  # "SR", when reports go there
        self.mem1 = "SM"
        self.sent: list[Sent] = []
        self.commands: list[str] = []
        self.deleted: list[int] = []
        self.sends_seen = 0
        self.plugged = trio.Event()
        self._next_index = 1
        self._next_mr = 0x40
        self._echo = self.quirks.echo_at_start
        self._master: int | None = None
        self._unplug = trio.Event()
        self._replug = trio.Event()

    def store(self, pdu: str, stat: int = 0) -> int:
        index = self._next_index
        self._next_index += 1
        self.storage[index] = (stat, pdu)
        return index

    def _memory(self) -> dict[int, tuple[int, str]]:
        return self.storage if self.mem1 == "SM" else self.report_store

    def unplug(self) -> None:
        self._unplug.set()

    def replug(self) -> None:
        self._replug.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            master, slave = os.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            tmp = self.link.with_suffix(".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(os.ttyname(slave))
            tmp.replace(self.link)
            self._echo = self.quirks.echo_at_start
            self._master = master
            self.plugged.set()
            if not started:
                started = True
                task_status.started()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._serve, nursery)
                    await self._unplug.wait()
                    nursery.cancel_scope.cancel()
            finally:
                self.plugged = trio.Event()
                self._master = None
                os.close(master)
                os.close(slave)
                self.link.unlink(missing_ok=True)
            self._unplug = trio.Event()
            await self._replug.wait()
            self._replug = trio.Event()

    # ---------------------------------------------------------------- wire

    async def _read(self) -> bytes:
        while True:
            try:
                data = os.read(self._master, 4096)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._master)
                continue
            except OSError:
                await trio.sleep(0.01)  # no reader on the slave side yet
                continue
            if data:
                return data

    async def _write(self, data: bytes) -> None:
        step = max(1, self.quirks.chunk)
        for i in range(0, len(data), step):
            os.write(self._master, data[i : i + step])
            await trio.sleep(0.002)

    async def _noise(self, k: int) -> None:
        if self.quirks.noise:
            await self._write(NOISE[k % len(NOISE)])

    async def _answer(self, lines: list[bytes], final: bytes = b"OK") -> None:
        await trio.sleep(self.quirks.delay)
        for k, line in enumerate(lines):
            await self._write(b"\r\n" + line + b"\r\n")
            await self._noise(k + 1)
        await self._write(b"\r\n" + final + b"\r\n")

    async def _serve(self, nursery) -> None:
        buffer = b""
        count = 0
        while True:
            buffer += await self._read()
            while b"\r" in buffer:
                line, _, buffer = buffer.partition(b"\r")
                text = line.strip(b"\n ").decode("ascii", "replace")
                if not text:
                    continue
                if self._echo:
                    await self._write(line + b"\r")
                count += 1
                await self._noise(count)
                if text.upper().startswith("AT+CMGS="):
                    buffer = await self._cmgs(buffer, nursery)
                else:
                    await self._command(text)

    async def _command(self, text: str) -> None:
        self.commands.append(text)
        upper = text.upper()
        vanish = self.quirks.vanish_on_command
        if vanish is not None and upper.startswith(vanish):
            self.quirks.vanish_on_command = None
            await self._write(b"\r\n+CMGL: 1,")  # half an answer, then the device is gone
            self.unplug()
            await trio.sleep_forever()
        for prefix in self.quirks.reject:
            if upper.startswith(prefix):
                await self._answer([], b"ERROR")
                return
        for prefix, errors in self.quirks.errors.items():
            if upper.startswith(prefix) and errors:
                await self._answer([], errors.pop(0))
                return
        if upper in ("AT", "ATZ") or upper.startswith(("AT+CMEE=", "AT+CMGF=", "AT+CNMI=")):
            await self._answer([])
        elif upper in ("ATE0", "ATE1"):
            self._echo = upper == "ATE1"
            await self._answer([])
        elif upper == "AT+CPIN?":
            await self._answer([b"+CPIN: READY"])
        elif upper == "AT+CPMS?":
            used = len(self.storage)
            await self._answer([f'+CPMS: "SM",{used},30,"SM",{used},30,"SM",{used},30'.encode()])
        elif upper.startswith("AT+CPMS="):
            self.mem1 = upper.partition("=")[2].split(",")[0].strip('"')
            used = str(len(self._memory())).encode()
            await self._answer([b"+CPMS: " + b",".join([used, b"30"] * 3)])
        elif upper == "AT+CNUM":
            await self._answer([b'+CNUM: "","' + self.number.encode() + b'",145'])
        elif upper == "AT+CSQ":
            await self._answer([b"+CSQ: 21,99"])
        elif upper == "AT+CREG?":
            # an unsolicited "+CREG: <stat>" lands among the answer's lines
            await self._answer([b"+CREG: 1", b"+CREG: 0,1"] if self.quirks.noise else [b"+CREG: 0,1"])
        elif upper.startswith("AT+CMGL="):
            lines = []
            for index, (stat, pdu) in sorted(self._memory().items()):
                lines.append(f"+CMGL: {index},{stat},,{len(pdu) // 2 - 1}".encode())
                lines.append(pdu.encode())
            await self._answer(lines)
        elif upper.startswith("AT+CMGR="):
            index = int(upper.partition("=")[2])
            if index not in self._memory():
                await self._answer([], b"+CMS ERROR: 321")
                return
            stat, pdu = self._memory()[index]
            await self._answer([f"+CMGR: {stat},,{len(pdu) // 2 - 1}".encode(), pdu.encode()])
        elif upper.startswith("AT+CMGD="):
            index = int(upper.partition("=")[2].partition(",")[0])
            self._memory().pop(index, None)
            self.deleted.append(index if self.mem1 == "SM" else (self.mem1, index))
            await self._answer([])
        else:
            await self._answer([], b"ERROR")

    async def _cmgs(self, buffer: bytes, nursery) -> bytes:
        self.commands.append("AT+CMGS")
        # the prompt, late and in pieces
        await trio.sleep(self.quirks.delay * 2)
        for piece in (b"\r", b"\n", b">", b" "):
            os.write(self._master, piece)
            await trio.sleep(0.02)
        while b"\x1a" not in buffer and b"\x1b" not in buffer:
            buffer += await self._read()
        if b"\x1b" in buffer.partition(b"\x1a")[0]:
            await self._answer([])  # cancelled at the prompt
            return buffer.partition(b"\x1b")[2]
        body, _, rest = buffer.partition(b"\x1a")
        if self._echo:
            await self._write(body)
        self.sends_seen += 1
        if self.quirks.vanish_on_send == self.sends_seen:
            self.quirks.vanish_on_send = None
            await trio.sleep(0.05)
            self.unplug()
            await trio.sleep_forever()
        if self.quirks.send_errors:
            await self._answer([], self.quirks.send_errors.pop(0))
            return rest
        decoded = gsmpdu.decodeSmsPdu(body.strip().decode("ascii"))
        concat = None
        for ie in decoded.get("udh", []):
            if ie.id in (0x00, 0x08):
                concat = (ie.reference, ie.parts, ie.number)
        mr = self._next_mr
        self._next_mr = (self._next_mr + 1) % 256
        self.sent.append(Sent(decoded["number"], decoded["text"], mr, concat))
        await trio.sleep(self.quirks.delay)
        if self.quirks.indications_during_send:
            # a status report stored and announced before this send's own answer
            report = status_report_pdu(mr, decoded["number"], 0x00, datetime.now(CST))
            if self.quirks.report_storage == "SM":
                index = self.store(report)
            else:
                index = len(self.report_store) + 1
                while index in self.report_store:
                    index += 1
                self.report_store[index] = (0, report)
            await self._write(f'\r\n+CDSI: "{self.quirks.report_storage}",{index}\r\n'.encode())
        if self.quirks.mo_during_send:
            index = self.store(self.quirks.mo_during_send.pop(0))
            await self._write(f'\r\n+CMTI: "SM",{index}\r\n'.encode())
        await self._write(b"\r\n+CMGS: " + str(mr).encode() + b"\r\n")
        await trio.sleep(self.quirks.delay)
        await self._noise(3)
        await self._write(b"\r\nOK\r\n")
        return rest
