"""Emulated modems on pseudo-terminals, for trials and the demo (SPEC: simulators).

``serve_sim_modems`` starts N :class:`ModemEmulator` on one :class:`HandsetNetwork` and
reports one :class:`SimModem` (pty path, SIM number, operator) per modem.

``serve_handset_network`` opens the simulated handset network to other processes over TCP
(``smsgw sim modems --network-listen HOST:PORT``): one JSON object per line each way, see
:func:`handle_request` and the README section "Handset network protocol".
:func:`open_handset_client` is the client side, for load testers and tests.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from gateway.errors import GatewayError
from gateway.modem_pool.emulator import HandsetNetwork, ModemEmulator, national
from gateway.modem_pool.pdu import mask_number

logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_NUMBERS",
    "MAX_NETWORK_CLIENTS",
    "MAX_REQUEST_LINE",
    "HandsetClient",
    "HandsetProtocolError",
    "SimModem",
    "handle_request",
    "open_handset_client",
    "serve_handset_network",
    "serve_sim_modems",
]

#: Two China Unicom and two China Telecom SIMs, as the demo uses them.
DEMO_NUMBERS = (
    ("18600000001", "cucc"),
    ("18600000002", "cucc"),
    ("18900000001", "ctcc"),
    ("18900000002", "ctcc"),
)


@dataclass(frozen=True, slots=True)
class SimModem:
    device: str
    number: str
    operator: str


def _default(count: int) -> list[tuple[str, str]]:
    out = []
    for i in range(count):
        prefix, operator = ("186", "cucc") if i % 2 == 0 else ("189", "ctcc")
        out.append((f"{prefix}{10000000 + i // 2:08d}", operator))
    return out


async def serve_sim_modems(
    count: int,
    *,
    numbers: Sequence[str] | None = None,
    operators: Sequence[str] | None = None,
    network: HandsetNetwork | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
    **emulator_options,
) -> None:
    """Serve ``count`` emulated modems until cancelled; reports ``list[SimModem]``."""
    if count < 1:
        raise ValueError("count must be positive")
    plan = _default(count)
    if numbers is not None:
        if len(numbers) != count:
            raise ValueError("one number per modem")
        plan = [(n, op) for n, (_, op) in zip(numbers, plan)]
    if operators is not None:
        if len(operators) != count:
            raise ValueError("one operator per modem")
        plan = [(n, op) for (n, _), op in zip(plan, operators)]
    network = network if network is not None else HandsetNetwork()
    async with trio.open_nursery() as nursery:
        modems = []
        for i, (number, operator) in enumerate(plan):
            emulator = ModemEmulator(
                network, number, name=f"sim{i + 1}", imei=f"8600000{i + 1:08d}", **emulator_options
            )
            device = await nursery.start(emulator.run)
            modems.append(SimModem(device=device, number=number, operator=operator))
        task_status.started(modems)


# --------------------------------------------------------------------------- handset network over TCP

#: Longest request line (bytes, newline excluded) the handset network server reads.
MAX_REQUEST_LINE = 64 * 1024
#: Client connections served at once; more wait to be accepted.
MAX_NETWORK_CLIENTS = 64
#: Longest answer line the client accepts (an inbox of long texts can be large).
MAX_ANSWER_LINE = 16 * 1024 * 1024


class _Request(msgspec.Struct, frozen=True, kw_only=True, tag_field="op"):
    id: Any = None


class MoRequest(_Request, tag="mo"):
    """A handset texts one of the modems' numbers."""

    sender: str = msgspec.field(name="from")
    to: str
    text: str = msgspec.field(default="")

    def __post_init__(self) -> None:
        for field, value in (("from", self.sender), ("to", self.to)):
            digits = value[1:] if value.startswith("+") else value
            if not (digits.isascii() and digits.isdigit() and 1 <= len(digits) <= 20):
                raise ValueError(f"{field}: not a phone number: {value!r}")
        if not self.text:
            raise ValueError("text: must not be empty")


class InboxRequest(_Request, tag="inbox"):
    """What a handset has received."""

    phone: str


class StatsRequest(_Request, tag="stats"):
    """What the network carried so far."""


class ModemsRequest(_Request, tag="modems"):
    """The modems attached to the network."""


class UnplugRequest(_Request, tag="unplug"):
    """Pull out the modem with this number (its pty closes): fault injection."""

    number: str


class ReplugRequest(_Request, tag="replug"):
    """Plug the modem with this number back in (a fresh pty at the same path)."""

    number: str


_REQUEST_DECODER = msgspec.json.Decoder(
    MoRequest | InboxRequest | StatsRequest | ModemsRequest | UnplugRequest | ReplugRequest
)
_ENCODER = msgspec.json.Encoder()


class HandsetProtocolError(GatewayError):
    """The handset network answered a request with an error, or the connection failed."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


def _error(code: str, message: str, request_id: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": False, "error": {"code": code, "message": message}}
    if request_id is not None:
        out["id"] = request_id
    return out


def handle_request(network: HandsetNetwork, line: bytes) -> bytes:
    """Answer one request line of the handset network protocol; returns the answer line.

    Requests (one JSON object per line, ``"id"`` optional and echoed back):

    * ``{"op": "mo", "from": "13900000001", "to": "18610000000", "text": "1"}`` - a handset
      texts a modem's number; answer ``{"ok": true, "parts": 1}``.
    * ``{"op": "inbox", "phone": "18600000001"}`` - answer ``{"ok": true, "messages":
      [{"from", "text", "parts"}, ...]}``, oldest first.
    * ``{"op": "stats"}`` - answer ``{"ok": true, "submitted", "delivered", "undeliverable",
      "status_reports", "mo", "modems": [{"number", "device", "sent"}]}`` (counts in parts).
    * ``{"op": "modems"}`` - answer ``{"ok": true, "modems": [{"number", "device", "sent"}]}``.
    * ``{"op": "unplug", "number": "18610000000"}`` / ``{"op": "replug", ...}`` - pull a
      modem out (its pty closes) or plug it back in; answer ``{"ok": true}``.

    Errors: ``{"ok": false, "error": {"code": "bad_request" | "unknown_number", "message"}}``.
    """
    try:
        request = _REQUEST_DECODER.decode(line)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return _ENCODER.encode(_error("bad_request", str(exc))) + b"\n"
    answer: dict[str, Any]
    if isinstance(request, MoRequest):
        try:
            parts = network.send_from_handset(request.sender, request.to, request.text)
        except KeyError:
            answer = _error("unknown_number", f"no emulated modem has number {request.to}", request.id)
        else:
            logger.info("handset mo from=%s to=%s parts=%d",
                        mask_number(request.sender), mask_number(request.to), parts)
            answer = {"ok": True, "parts": parts}
    elif isinstance(request, InboxRequest):
        answer = {"ok": True, "messages": [
            {"from": m.sender, "text": m.text, "parts": m.parts} for m in network.inbox(request.phone)
        ]}
    elif isinstance(request, StatsRequest):
        answer = {"ok": True, **dataclasses.asdict(network.statistics()),
                  "modems": _modem_list(network)}
    elif isinstance(request, (UnplugRequest, ReplugRequest)):
        emulator = network.modems.get(national(request.number))
        if emulator is None:
            answer = _error("unknown_number", f"no emulated modem has number {request.number}", request.id)
        else:
            if isinstance(request, UnplugRequest):
                emulator.unplug()
            else:
                emulator.replug()
            logger.info("handset network %s modem=%s",
                        "unplug" if isinstance(request, UnplugRequest) else "replug", emulator.name)
            answer = {"ok": True}
    else:
        answer = {"ok": True, "modems": _modem_list(network)}
    if request.id is not None and answer.get("ok"):
        answer["id"] = request.id
    return _ENCODER.encode(answer) + b"\n"


def _modem_list(network: HandsetNetwork) -> list[dict[str, Any]]:
    out = []
    for number, emulator in sorted(network.modems.items()):
        try:
            device = emulator.device
        except GatewayError:
            device = None
        out.append({"number": number, "device": device, "sent": emulator.sent_count})
    return out


async def _serve_client(network: HandsetNetwork, stream: trio.abc.Stream) -> None:
    buffer = bytearray()
    async with stream:
        while True:
            try:
                data = await stream.receive_some(MAX_REQUEST_LINE)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            buffer += data
            answers = bytearray()
            while (end := buffer.find(b"\n")) >= 0:
                line = bytes(buffer[:end]).strip()
                del buffer[: end + 1]
                if line:
                    answers += handle_request(network, line)
            if len(buffer) > MAX_REQUEST_LINE:
                answers += _ENCODER.encode(_error(
                    "bad_request", f"request line longer than {MAX_REQUEST_LINE} bytes")) + b"\n"
                buffer.clear()
                try:
                    await stream.send_all(bytes(answers))
                except trio.BrokenResourceError:
                    pass
                return
            if answers:
                try:
                    await stream.send_all(bytes(answers))
                except trio.BrokenResourceError:
                    return


async def serve_handset_network(
    network: HandsetNetwork,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``network`` on ``host:port`` until cancelled; reports the bound port."""
    limiter = trio.CapacityLimiter(MAX_NETWORK_CLIENTS)

    async def handler(stream: trio.SocketStream) -> None:
        async with limiter:
            await _serve_client(network, stream)

    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    logger.info("handset network listening host=%s port=%d", host, bound)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(bound)


class HandsetClient:
    """The client side of the handset network protocol, one request at a time."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._lock = trio.Lock()

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request; returns the answer, or raises :class:`HandsetProtocolError`."""
        async with self._lock:
            await self._stream.send_all(_ENCODER.encode({"op": op, **fields}) + b"\n")
            while (end := self._buffer.find(b"\n")) < 0:
                if len(self._buffer) > MAX_ANSWER_LINE:
                    raise HandsetProtocolError("bad_answer", "answer line too long")
                data = await self._stream.receive_some()
                if not data:
                    raise HandsetProtocolError("closed", "the handset network closed the connection")
                self._buffer += data
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
        try:
            answer = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            raise HandsetProtocolError("bad_answer", f"not JSON: {exc}") from None
        if not isinstance(answer, dict):
            raise HandsetProtocolError("bad_answer", "not a JSON object")
        if not answer.get("ok"):
            error = answer.get("error") or {}
            raise HandsetProtocolError(error.get("code", "error"), error.get("message", ""))
        return answer

    async def mo(self, sender: str, to: str, text: str) -> int:
        """A handset texts ``to`` (a modem's number); returns the parts sent."""
        return (await self.request("mo", **{"from": sender, "to": to, "text": text}))["parts"]

    async def inbox(self, phone: str) -> list[dict[str, Any]]:
        return (await self.request("inbox", phone=phone))["messages"]

    async def stats(self) -> dict[str, Any]:
        return await self.request("stats")

    async def modems(self) -> list[dict[str, Any]]:
        return (await self.request("modems"))["modems"]

    async def unplug(self, number: str) -> None:
        await self.request("unplug", number=number)

    async def replug(self, number: str) -> None:
        await self.request("replug", number=number)


@asynccontextmanager
async def open_handset_client(host: str, port: int) -> AsyncIterator[HandsetClient]:
    """Connect to a handset network served by :func:`serve_handset_network`."""
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise HandsetProtocolError("unreachable", f"cannot connect to {host}:{port}: {exc}") from None
    async with stream:
        yield HandsetClient(stream)
