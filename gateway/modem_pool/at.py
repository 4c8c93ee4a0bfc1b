"""Sans-IO AT command engine for GSM modems (3GPP TS 27.007 and TS 27.005, PDU mode).

The :class:`AtConnection` owns no serial port and no clock. The driver writes what
:meth:`AtConnection.send` returns, feeds every byte read from the modem to
:meth:`AtConnection.receive_data` and then drains :meth:`AtConnection.events`.

It keeps one command in flight (TS 27.007 §5.1: a new command line may only be issued after
the final result code of the previous one) and sorts every line the modem sends into:

* the echo of the command (ITU-T V.25ter ``E1``, on at power-up), dropped;
* information text of the command in flight (``+CSQ: 20,99``; for ``+CMGR``/``+CMGL`` the
  header and the PDU line that follows it, TS 27.005 §3.4.2 and §3.4.3 PDU mode);
* the ``> `` prompt of ``AT+CMGS`` (TS 27.005 §3.5.1), which has no line end;
* the final result code (``OK``, ``ERROR``, ``+CME ERROR: <err>`` TS 27.007 §9.2,
  ``+CMS ERROR: <err>`` TS 27.005 §3.2.5), which completes the command with a typed response;
* unsolicited result codes (``+CMTI``, ``+CMT`` and ``+CDS`` with their PDU line, ``+CDSI``,
  TS 27.005 §3.4.1; ``RING``; vendor ``^`` codes), taken out wherever they fall, even between
  a command and its answer;
* garbage (non-printable noise, overlong lines, result codes nobody waits for), reported as
  :class:`Garbage` events and never allowed to break the lines after it.

Timeouts belong to the driver: when it gives up on a command it calls
:meth:`AtConnection.abandon` and writes what it returns.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from gateway.modem_pool.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_COMMAND_LENGTH",
    "MAX_INFO_LINES",
    "MAX_LINE_LENGTH",
    "MAX_PENDING_EVENTS",
    "AckMessage",
    "AtConnection",
    "AtStatistics",
    "Attention",
    "CmeError",
    "CmsError",
    "Command",
    "CommandCompleted",
    "CommandFailed",
    "DeleteMessage",
    "Done",
    "EnterPin",
    "Event",
    "FinalResult",
    "Garbage",
    "IncomingDeliver",
    "IncomingStatusReport",
    "ListMessages",
    "MessageList",
    "MessageStat",
    "NewMessage",
    "NewStatusReport",
    "OwnNumber",
    "OwnNumbers",
    "PinState",
    "Prompt",
    "QueryOwnNumber",
    "QueryPin",
    "QueryRegistration",
    "QuerySignal",
    "QueryStorage",
    "RawCommand",
    "RawResponse",
    "ReadMessage",
    "Registration",
    "RegistrationStat",
    "ReportErrors",
    "Response",
    "ResponseError",
    "ResponseMalformed",
    "Ring",
    "SelectPduMode",
    "SelectStorage",
    "SendMessage",
    "SetEcho",
    "SetIndications",
    "SignalQuality",
    "StorageArea",
    "StorageStatus",
    "StoredMessage",
    "SubmitResult",
    "Unsolicited",
    "VendorNotice",
]

#: Longest line kept, in bytes. A PDU line is at most 2 * (12 + 164) = 352 hex digits.
MAX_LINE_LENGTH = 1024
#: Most information lines one command may collect (``AT+CMGL`` on a 255-slot store: 510).
MAX_INFO_LINES = 600
#: Parsed events waiting to be drained beyond which :meth:`AtConnection.receive_data` refuses.
MAX_PENDING_EVENTS = 4096
#: Longest command line accepted by :meth:`AtConnection.send` (TS 27.007 §4.1: at least 80).
MAX_COMMAND_LENGTH = 512

_CR = 0x0D
_LF = 0x0A
_LINE_END = re.compile(rb"[\r\n]")
_CTRL_Z = b"\x1a"
_ESC = b"\x1b"
_PRINTABLE = frozenset(range(0x20, 0x7F)) | {0x09}
_EDGE_STRIP = b" \t\x1a\x00"
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


# --------------------------------------------------------------------------- result codes


class FinalResult(enum.Enum):
    """Final result codes ending a command (V.25ter §5.7.1, TS 27.007 §9.2, TS 27.005 §3.2.5)."""

    OK = "OK"
    ERROR = "ERROR"
    CME_ERROR = "+CME ERROR"
    CMS_ERROR = "+CMS ERROR"
    NO_CARRIER = "NO CARRIER"
    BUSY = "BUSY"
    NO_ANSWER = "NO ANSWER"
    NO_DIALTONE = "NO DIALTONE"
    COMMAND_NOT_SUPPORT = "COMMAND NOT SUPPORT"


_BARE_FINALS = {
    r.value: r
    for r in FinalResult
    if r not in (FinalResult.CME_ERROR, FinalResult.CMS_ERROR)
}


class CmsError(enum.IntEnum):
    """Common ``+CMS ERROR`` values (TS 27.005 §3.2.5). Events keep the plain int."""

    ME_FAILURE = 300
    SMS_SERVICE_RESERVED = 301
    OPERATION_NOT_ALLOWED = 302
    OPERATION_NOT_SUPPORTED = 303
    INVALID_PDU_MODE_PARAMETER = 304
    INVALID_TEXT_MODE_PARAMETER = 305
    SIM_NOT_INSERTED = 310
    SIM_PIN_REQUIRED = 311
    SIM_FAILURE = 313
    SIM_BUSY = 314
    SIM_WRONG = 315
    MEMORY_FAILURE = 320
    INVALID_MEMORY_INDEX = 321
    MEMORY_FULL = 322
    SMSC_ADDRESS_UNKNOWN = 330
    NO_NETWORK_SERVICE = 331
    NETWORK_TIMEOUT = 332
    NO_CNMA_EXPECTED = 340
    UNKNOWN_ERROR = 500


class CmeError(enum.IntEnum):
    """Common ``+CME ERROR`` values (TS 27.007 §9.2.1). Events keep the plain int."""

    PHONE_FAILURE = 0
    OPERATION_NOT_ALLOWED = 3
    OPERATION_NOT_SUPPORTED = 4
    SIM_NOT_INSERTED = 10
    SIM_PIN_REQUIRED = 11
    SIM_PUK_REQUIRED = 12
    SIM_FAILURE = 13
    SIM_BUSY = 14
    SIM_WRONG = 15
    INCORRECT_PASSWORD = 16
    MEMORY_FULL = 20
    INVALID_INDEX = 21
    NOT_FOUND = 22
    NO_NETWORK_SERVICE = 30
    NETWORK_TIMEOUT = 31
    UNKNOWN = 100


# Verbose error texts (AT+CMEE=2, or a modem that answers verbosely whatever it is told) that
# are spelt differently from the member names above (TS 27.005 §3.2.5, TS 27.007 §9.2.1).
_VERBOSE_ALIASES = {
    "SMS_SERVICE_OF_ME_RESERVED": "SMS_SERVICE_RESERVED",
    "NO_CNMA_ACKNOWLEDGEMENT_EXPECTED": "NO_CNMA_EXPECTED",
}


def _verbose_code(detail: str, cme: bool) -> int | None:
    """The numeric code of a verbose ``+CME``/``+CMS ERROR`` text, when it is a known one."""
    key = re.sub(r"[^A-Z0-9]+", "_", detail.upper().replace("(U)", "")).strip("_")
    key = _VERBOSE_ALIASES.get(key, key)
    if cme:
        member = CmeError.__members__.get("UNKNOWN" if key == "UNKNOWN_ERROR" else key)
    else:
        member = CmsError.__members__.get("UNKNOWN_ERROR" if key == "UNKNOWN" else key)
    return int(member) if member is not None else None


class RegistrationStat(enum.IntEnum):
    """``<stat>`` of ``+CREG`` (TS 27.007 §7.2)."""

    NOT_REGISTERED = 0
    HOME = 1
    SEARCHING = 2
    DENIED = 3
    UNKNOWN = 4
    ROAMING = 5
    SMS_ONLY_HOME = 6
    SMS_ONLY_ROAMING = 7


class MessageStat(enum.IntEnum):
    """``<stat>`` of ``+CMGR``/``+CMGL`` in PDU mode (TS 27.005 §3.1)."""

    REC_UNREAD = 0
    REC_READ = 1
    STO_UNSENT = 2
    STO_SENT = 3
    ALL = 4


# --------------------------------------------------------------------------- responses


class ResponseError(RemoteProtocolError):
    """Information text of a command could not be parsed into its typed response."""


@dataclass(frozen=True, slots=True)
class Done:
    """Response of a command that answers with ``OK`` and no information text."""


@dataclass(frozen=True, slots=True)
class RawResponse:
    """Information lines of a :class:`RawCommand`, as received."""

    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PinState:
    """``+CPIN: <code>`` (TS 27.007 §8.3)."""

    code: str

    @property
    def ready(self) -> bool:
        return self.code == "READY"


@dataclass(frozen=True, slots=True)
class SignalQuality:
    """``+CSQ: <rssi>,<ber>`` (TS 27.007 §8.5); 99 means not known."""

    rssi: int
    ber: int

    @property
    def dbm(self) -> int | None:
        """Received signal strength in dBm (-113 + 2 * rssi), ``None`` when unknown."""
        if self.rssi == 99:
            return None
        return -113 + 2 * self.rssi


@dataclass(frozen=True, slots=True)
class Registration:
    """``+CREG: [<n>,]<stat>[,<lac>,<ci>]`` (TS 27.007 §7.2)."""

    n: int | None
    stat: int
    lac: str | None = None
    ci: str | None = None

    @property
    def registered(self) -> bool:
        """True when registered to the home network or roaming (SMS-only included)."""
        return self.stat in (
            RegistrationStat.HOME,
            RegistrationStat.ROAMING,
            RegistrationStat.SMS_ONLY_HOME,
            RegistrationStat.SMS_ONLY_ROAMING,
        )


@dataclass(frozen=True, slots=True)
class StorageArea:
    """One ``<mem>,<used>,<total>`` group of ``+CPMS`` (TS 27.005 §3.2.2)."""

    name: str | None
    used: int
    total: int

    @property
    def full(self) -> bool:
        return self.used >= self.total


@dataclass(frozen=True, slots=True)
class StorageStatus:
    """``+CPMS`` answer: read/delete, write/send and receive storages, in that order."""

    areas: tuple[StorageArea, ...]


@dataclass(frozen=True, slots=True)
class OwnNumber:
    """One ``+CNUM: [<alpha>],<number>,<type>`` line (TS 27.007 §7.1)."""

    alpha: str
    number: str
    type: int


@dataclass(frozen=True, slots=True)
class OwnNumbers:
    """The SIM's own numbers; empty when the SIM does not store one."""

    entries: tuple[OwnNumber, ...]


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """``+CMGS: <mr>`` (TS 27.005 §3.5.1): the TP-MR the modem gave the message."""

    mr: int


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message read from storage (TS 27.005 §3.4.2/§3.4.3, PDU mode).

    ``pdu`` is the hex of the PDU line including the SMSC address prefix.
    """

    index: int
    stat: int
    alpha: str
    length: int
    pdu: str


@dataclass(frozen=True, slots=True)
class MessageList:
    """``AT+CMGL`` answer, in the order the modem listed the messages."""

    messages: tuple[StoredMessage, ...]


Response = (
    Done
    | RawResponse
    | PinState
    | SignalQuality
    | Registration
    | StorageStatus
    | OwnNumbers
    | SubmitResult
    | StoredMessage
    | MessageList
)


# --------------------------------------------------------------------------- argument parsing


def _split_args(text: str) -> list[str]:
    """Split ``a,"b,c",,d`` into ``["a", "b,c", "", "d"]`` (quotes removed)."""
    args: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            args.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if quoted:
        raise ResponseError(f"unterminated quoted string in {text!r}")
    args.append("".join(current).strip())
    return args


def _int(token: str, what: str) -> int:
    if not token or not token.isascii() or not token.isdigit():
        raise ResponseError(f"{what}: expected a number, got {token!r}")
    return int(token)


def _payload(line: str, prefix: str) -> str:
    """The text after ``<prefix>:``."""
    head, sep, rest = line.partition(":")
    if not sep or head.strip().upper() != prefix:
        raise ResponseError(f"expected a {prefix} line, got {line!r}")
    return rest.strip()


def _is_hex(text: str) -> bool:
    return bool(text) and len(text) % 2 == 0 and all(c in _HEX_DIGITS for c in text)


def _header_length(line: str) -> int | None:
    """``<length>`` (the last argument) of a +CMGR/+CMGL/+CMT/+CDS header, if numeric."""
    rest = line.partition(":")[2]
    try:
        last = _split_args(rest)[-1]
    except ResponseError:
        return None
    if last.isascii() and last.isdigit():
        return int(last)
    return None


def _single(lines: tuple[str, ...], prefix: str) -> str:
    if len(lines) != 1:
        raise ResponseError(f"expected one {prefix} line, got {len(lines)}")
    return _payload(lines[0], prefix)


def _pdu_pairs(lines: tuple[str, ...], prefix: str) -> Iterator[tuple[list[str], str]]:
    """Pair each header with the PDU line after it (none when ``<length>`` is 0)."""
    i = 0
    while i < len(lines):
        args = _split_args(_payload(lines[i], prefix))
        length = _int(args[-1], f"{prefix} length")
        if length == 0:
            yield args, ""
            i += 1
            continue
        if i + 1 >= len(lines) or not _is_hex(lines[i + 1]):
            raise ResponseError(f"{prefix} header without its PDU line")
        yield args, lines[i + 1].upper()
        i += 2


# --------------------------------------------------------------------------- commands


def _check_command_text(text: str) -> None:
    if not text[:2].upper() == "AT":
        raise LocalProtocolError(f"command must start with AT: {text!r}")
    if len(text) > MAX_COMMAND_LENGTH:
        raise LocalProtocolError(f"command longer than {MAX_COMMAND_LENGTH} characters")
    if not text.isascii() or any(not (0x20 <= ord(c) < 0x7F) for c in text):
        raise LocalProtocolError(f"command must be printable ASCII: {text!r}")


def _line_name(text: str) -> str:
    return text.partition(":")[0].strip().upper()


def _interjection(text: str) -> bool:
    """Whether ``text`` may be an unsolicited code interjected between a ``+CMGR``/``+CMGL``
    or ``+CMT``/``+CDS`` header and its PDU line: not a final result code, not hex."""
    if text.upper() in _BARE_FINALS or _line_name(text) in ("+CME ERROR", "+CMS ERROR"):
        return False
    return not _is_hex(text)


class Command:
    """A command line and how to turn its information text into a typed response.

    ``prefix`` names the information lines that belong to it (``None``: every line that is
    not a known unsolicited code or a final result); ``pdu_follows`` says a PDU line follows
    each header line; ``prompt`` says the modem answers with ``> `` before the final result.
    """

    __slots__ = ()

    prefix: ClassVar[str | None] = ""
    pdu_follows: ClassVar[bool] = False
    prompt: ClassVar[bool] = False

    @property
    def text(self) -> str:
        raise LocalProtocolError(f"{type(self).__name__} has no command text")

    @property
    def label(self) -> str:
        """The command line as it may appear in logs and errors (secrets masked)."""
        return self.text

    def body(self) -> bytes:
        """What to send after the ``> `` prompt (commands with ``prompt`` only)."""
        raise LocalProtocolError(f"{type(self).__name__} takes no body")

    def response(self, lines: tuple[str, ...]) -> Response:
        """Build the typed response; ``ResponseError`` when the lines do not parse."""
        if lines:
            raise ResponseError(f"unexpected information text {lines[0]!r}")
        return Done()


@dataclass(frozen=True, slots=True)
class Attention(Command):
    """``AT``: is the modem alive."""

    prefix: ClassVar[str | None] = ""

    @property
    def text(self) -> str:
        return "AT"


@dataclass(frozen=True, slots=True)
class SetEcho(Command):
    """``ATE0``/``ATE1`` (V.25ter §6.2.4). Modems power up with echo on."""

    on: bool = False

    @property
    def text(self) -> str:
        return "ATE1" if self.on else "ATE0"


@dataclass(frozen=True, slots=True)
class ReportErrors(Command):
    """``AT+CMEE=<n>`` (TS 27.007 §9.1): 1 gives numeric ``+CME ERROR: <n>``."""

    mode: int = 1

    def __post_init__(self) -> None:
        if self.mode not in (0, 1, 2):
            raise LocalProtocolError(f"AT+CMEE mode must be 0, 1 or 2, not {self.mode}")

    @property
    def text(self) -> str:
        return f"AT+CMEE={self.mode}"


@dataclass(frozen=True, slots=True)
class SelectPduMode(Command):
    """``AT+CMGF=0`` (TS 27.005 §3.2.3): PDU mode."""

    @property
    def text(self) -> str:
        return "AT+CMGF=0"


@dataclass(frozen=True, slots=True)
class QueryPin(Command):
    """``AT+CPIN?`` (TS 27.007 §8.3)."""

    prefix: ClassVar[str | None] = "+CPIN"

    @property
    def text(self) -> str:
        return "AT+CPIN?"

    def response(self, lines: tuple[str, ...]) -> PinState:
        code = _single(lines, "+CPIN").strip('"')
        if not code:
            raise ResponseError("empty +CPIN code")
        return PinState(code)


@dataclass(frozen=True, slots=True)
class EnterPin(Command):
    """``AT+CPIN="<pin>"`` (TS 27.007 §8.3)."""

    pin: str = field(repr=False)

    def __post_init__(self) -> None:
        if not (4 <= len(self.pin) <= 8) or not self.pin.isascii() or not self.pin.isdigit():
            raise LocalProtocolError("a PIN is 4 to 8 digits")

    @property
    def text(self) -> str:
        return f'AT+CPIN="{self.pin}"'

    @property
    def label(self) -> str:
        return 'AT+CPIN="****"'


@dataclass(frozen=True, slots=True)
class QuerySignal(Command):
    """``AT+CSQ`` (TS 27.007 §8.5)."""

    prefix: ClassVar[str | None] = "+CSQ"

    @property
    def text(self) -> str:
        return "AT+CSQ"

    def response(self, lines: tuple[str, ...]) -> SignalQuality:
        args = _split_args(_single(lines, "+CSQ"))
        if len(args) != 2:
            raise ResponseError(f"+CSQ wants 2 values, got {len(args)}")
        rssi, ber = _int(args[0], "rssi"), _int(args[1], "ber")
        if not (rssi <= 31 or rssi == 99) or not (ber <= 7 or ber == 99):
            raise ResponseError(f"+CSQ out of range: {rssi},{ber}")
        return SignalQuality(rssi, ber)


@dataclass(frozen=True, slots=True)
class QueryRegistration(Command):
    """``AT+CREG?`` (TS 27.007 §7.2)."""

    prefix: ClassVar[str | None] = "+CREG"

    @property
    def text(self) -> str:
        return "AT+CREG?"

    def response(self, lines: tuple[str, ...]) -> Registration:
        # With AT+CREG=1/2 an unsolicited "+CREG: <stat>[,<lac>,<ci>]" can land among the
        # answer lines; the answer is the one whose second value is the numeric <stat>.
        answers = []
        for line in lines:
            args = _split_args(_payload(line, "+CREG"))
            if len(args) >= 2 and args[1].isascii() and args[1].isdigit():
                answers.append(args)
        if not answers:
            raise ResponseError("+CREG? answer wants <n>,<stat>")
        args = answers[-1]
        n, stat = _int(args[0], "n"), _int(args[1], "stat")
        lac = args[2] if len(args) > 2 and args[2] else None
        ci = args[3] if len(args) > 3 and args[3] else None
        return Registration(n=n, stat=stat, lac=lac, ci=ci)


@dataclass(frozen=True, slots=True)
class SetIndications(Command):
    """``AT+CNMI=<mode>,<mt>,<bm>,<ds>,<bfr>`` (TS 27.005 §3.4.1).

    The default 2,1,0,1,0 announces new messages as ``+CMTI`` and routes status reports
    as ``+CDS`` with their PDU.
    """

    mode: int = 2
    mt: int = 1
    bm: int = 0
    ds: int = 1
    bfr: int = 0

    def __post_init__(self) -> None:
        for name, value, top in (
            ("mode", self.mode, 3),
            ("mt", self.mt, 3),
            ("bm", self.bm, 3),
            ("ds", self.ds, 2),
            ("bfr", self.bfr, 1),
        ):
            if not 0 <= value <= top:
                raise LocalProtocolError(f"AT+CNMI {name} must be 0..{top}, not {value}")

    @property
    def text(self) -> str:
        return f"AT+CNMI={self.mode},{self.mt},{self.bm},{self.ds},{self.bfr}"


def _storage_areas(payload: str) -> tuple[StorageArea, ...]:
    named = payload.lstrip().startswith('"')
    args = _split_args(payload)
    width = 3 if named else 2
    if not args or len(args) % width:
        raise ResponseError(f"+CPMS groups of {width} expected: {payload!r}")
    areas = []
    for i in range(0, len(args), width):
        group = args[i : i + width]
        name = group[0] if named else None
        used = _int(group[-2], "used")
        total = _int(group[-1], "total")
        areas.append(StorageArea(name=name, used=used, total=total))
    return tuple(areas)


_STORAGES = frozenset({"SM", "ME", "MT", "BM", "SR", "TA"})


@dataclass(frozen=True, slots=True)
class SelectStorage(Command):
    """``AT+CPMS="<mem1>","<mem2>","<mem3>"`` (TS 27.005 §3.2.2)."""

    prefix: ClassVar[str | None] = "+CPMS"
    mem1: str = "SM"
    mem2: str = "SM"
    mem3: str = "SM"

    def __post_init__(self) -> None:
        for mem in (self.mem1, self.mem2, self.mem3):
            if mem not in _STORAGES:
                raise LocalProtocolError(f"unknown message storage {mem!r}")

    @property
    def text(self) -> str:
        return f'AT+CPMS="{self.mem1}","{self.mem2}","{self.mem3}"'

    def response(self, lines: tuple[str, ...]) -> StorageStatus:
        return StorageStatus(_storage_areas(_single(lines, "+CPMS")))


@dataclass(frozen=True, slots=True)
class QueryStorage(Command):
    """``AT+CPMS?`` (TS 27.005 §3.2.2)."""

    prefix: ClassVar[str | None] = "+CPMS"

    @property
    def text(self) -> str:
        return "AT+CPMS?"

    def response(self, lines: tuple[str, ...]) -> StorageStatus:
        return StorageStatus(_storage_areas(_single(lines, "+CPMS")))


@dataclass(frozen=True, slots=True)
class QueryOwnNumber(Command):
    """``AT+CNUM`` (TS 27.007 §7.1)."""

    prefix: ClassVar[str | None] = "+CNUM"

    @property
    def text(self) -> str:
        return "AT+CNUM"

    def response(self, lines: tuple[str, ...]) -> OwnNumbers:
        entries = []
        for line in lines:
            args = _split_args(_payload(line, "+CNUM"))
            if len(args) < 3:
                raise ResponseError(f"+CNUM wants <alpha>,<number>,<type>: {line!r}")
            entries.append(OwnNumber(alpha=args[0], number=args[1], type=_int(args[2], "type")))
        return OwnNumbers(tuple(entries))


@dataclass(frozen=True, slots=True)
class SendMessage(Command):
    """``AT+CMGS=<length>`` then the PDU and Ctrl-Z (TS 27.005 §3.5.1, PDU mode).

    ``pdu`` is the full PDU as the modem takes it: SMSC address (a zero length octet for
    the SIM's default) then the TPDU; ``<length>`` counts the TPDU octets only.
    """

    prefix: ClassVar[str | None] = "+CMGS"
    prompt: ClassVar[bool] = True
    pdu: bytes = field(repr=False)  # carries the message text: kept out of logs

    def __post_init__(self) -> None:
        if not self.pdu:
            raise LocalProtocolError("empty PDU")
        smsc_len = self.pdu[0]
        if smsc_len > 11:
            raise LocalProtocolError(f"SMSC address length {smsc_len} > 11 octets")
        tpdu_length = len(self.pdu) - 1 - smsc_len
        if not 1 <= tpdu_length <= 164:
            raise LocalProtocolError(f"TPDU length {tpdu_length} not in 1..164")

    @property
    def tpdu_length(self) -> int:
        return len(self.pdu) - 1 - self.pdu[0]

    @property
    def text(self) -> str:
        return f"AT+CMGS={self.tpdu_length}"

    def body(self) -> bytes:
        return self.pdu.hex().upper().encode("ascii") + _CTRL_Z

    def response(self, lines: tuple[str, ...]) -> SubmitResult:
        args = _split_args(_single(lines, "+CMGS"))
        mr = _int(args[0], "mr")
        if mr > 255:
            raise ResponseError(f"TP-MR {mr} > 255")
        return SubmitResult(mr)


@dataclass(frozen=True, slots=True)
class ReadMessage(Command):
    """``AT+CMGR=<index>`` (TS 27.005 §3.4.3, PDU mode)."""

    prefix: ClassVar[str | None] = "+CMGR"
    pdu_follows: ClassVar[bool] = True
    index: int

    def __post_init__(self) -> None:
        if not 0 <= self.index <= 65535:
            raise LocalProtocolError(f"storage index {self.index} out of range")

    @property
    def text(self) -> str:
        return f"AT+CMGR={self.index}"

    def response(self, lines: tuple[str, ...]) -> StoredMessage:
        pairs = list(_pdu_pairs(lines, "+CMGR"))
        if len(pairs) != 1:
            raise ResponseError(f"expected one +CMGR message, got {len(pairs)}")
        args, pdu = pairs[0]
        if len(args) < 2:
            raise ResponseError("+CMGR wants <stat>,[<alpha>],<length>")
        return StoredMessage(
            index=self.index,
            stat=_int(args[0], "stat"),
            alpha=args[1] if len(args) > 2 else "",
            length=_int(args[-1], "length"),
            pdu=pdu,
        )


@dataclass(frozen=True, slots=True)
class ListMessages(Command):
    """``AT+CMGL=<stat>`` (TS 27.005 §3.4.2, PDU mode); 4 lists all."""

    prefix: ClassVar[str | None] = "+CMGL"
    pdu_follows: ClassVar[bool] = True
    stat: int = MessageStat.ALL

    def __post_init__(self) -> None:
        if not 0 <= self.stat <= 4:
            raise LocalProtocolError(f"AT+CMGL stat must be 0..4, not {self.stat}")

    @property
    def text(self) -> str:
        return f"AT+CMGL={int(self.stat)}"

    def response(self, lines: tuple[str, ...]) -> MessageList:
        messages = []
        for args, pdu in _pdu_pairs(lines, "+CMGL"):
            if len(args) < 3:
                raise ResponseError("+CMGL wants <index>,<stat>,[<alpha>],<length>")
            messages.append(
                StoredMessage(
                    index=_int(args[0], "index"),
                    stat=_int(args[1], "stat"),
                    alpha=args[2] if len(args) > 3 else "",
                    length=_int(args[-1], "length"),
                    pdu=pdu,
                )
            )
        return MessageList(tuple(messages))


@dataclass(frozen=True, slots=True)
class DeleteMessage(Command):
    """``AT+CMGD=<index>[,<delflag>]`` (TS 27.005 §3.5.4); delflag 4 deletes all."""

    index: int
    delflag: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.index <= 65535:
            raise LocalProtocolError(f"storage index {self.index} out of range")
        if not 0 <= self.delflag <= 4:
            raise LocalProtocolError(f"AT+CMGD delflag must be 0..4, not {self.delflag}")

    @property
    def text(self) -> str:
        if self.delflag:
            return f"AT+CMGD={self.index},{self.delflag}"
        return f"AT+CMGD={self.index}"


@dataclass(frozen=True, slots=True)
class AckMessage(Command):
    """``AT+CNMA`` (TS 27.005 §3.4.4): acknowledge a ``+CMT``/``+CDS`` routed to us."""

    @property
    def text(self) -> str:
        return "AT+CNMA"


@dataclass(frozen=True, slots=True)
class RawCommand(Command):
    """Any other command; with ``info_prefix`` ``None`` every non-URC line is collected."""

    command: str
    info_prefix: str | None = None

    def __post_init__(self) -> None:
        _check_command_text(self.command)

    @property
    def text(self) -> str:
        return self.command

    def response(self, lines: tuple[str, ...]) -> RawResponse:
        return RawResponse(lines)


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class CommandCompleted:
    """The command in flight ended with ``OK``; ``response`` is its typed answer."""

    command: Command
    response: Response


@dataclass(frozen=True, slots=True)
class CommandFailed:
    """The command in flight ended with an error result; ``code`` as sent, if numeric."""

    command: Command
    result: FinalResult
    code: int | None = None
    text: str = ""


@dataclass(frozen=True, slots=True)
class ResponseMalformed:
    """The command ended with ``OK`` but its information text did not parse."""

    command: Command
    reason: str
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Prompt:
    """The ``> `` prompt: the driver now writes :meth:`AtConnection.send_body`."""

    command: Command


@dataclass(frozen=True, slots=True)
class NewMessage:
    """``+CMTI: <mem>,<index>``: a message was stored (TS 27.005 §3.4.1)."""

    storage: str
    index: int


@dataclass(frozen=True, slots=True)
class NewStatusReport:
    """``+CDSI: <mem>,<index>``: a status report was stored (TS 27.005 §3.4.1)."""

    storage: str
    index: int


@dataclass(frozen=True, slots=True)
class IncomingDeliver:
    """``+CMT: [<alpha>],<length>`` and its PDU line: a message routed directly to us."""

    alpha: str
    length: int
    pdu: str


@dataclass(frozen=True, slots=True)
class IncomingStatusReport:
    """``+CDS: <length>`` and its PDU line: a status report routed directly to us."""

    length: int
    pdu: str


@dataclass(frozen=True, slots=True)
class Ring:
    """``RING``: an incoming call (V.25ter)."""


@dataclass(frozen=True, slots=True)
class VendorNotice:
    """A vendor unsolicited code such as ``^RSSI:14``, ``^BOOT:...``, ``^MODE:5,4``."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Unsolicited:
    """A well-formed line no command claims (``+CREG: 1``, ``RDY``, ``SMS Ready``)."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Garbage:
    """Bytes that could not be understood; parsing resumes on the next line."""

    data: bytes
    reason: str


Event = (
    CommandCompleted
    | CommandFailed
    | ResponseMalformed
    | Prompt
    | NewMessage
    | NewStatusReport
    | IncomingDeliver
    | IncomingStatusReport
    | Ring
    | VendorNotice
    | Unsolicited
    | Garbage
)


@dataclass(slots=True)
class AtStatistics:
    """Counters of one :class:`AtConnection`."""

    commands_sent: int = 0
    commands_completed: int = 0
    commands_failed: int = 0
    responses_malformed: int = 0
    commands_abandoned: int = 0
    unsolicited: int = 0
    garbage: int = 0


# --------------------------------------------------------------------------- connection


class _Phase(enum.Enum):
    AWAIT_RESULT = enum.auto()
    AWAIT_PROMPT = enum.auto()
    PROMPTED = enum.auto()
    BODY_SENT = enum.auto()


@dataclass(slots=True)
class _InFlight:
    command: Command
    text: str
    phase: _Phase
    lines: list[str] = field(default_factory=list)
    expect_pdu: bool = False
    problem: str | None = None


_URC_NAMES = frozenset({"+CMTI", "+CDSI", "+CMT", "+CDS", "RING"})


class AtConnection:
    """One modem's AT exchange, sans-IO (TS 27.007 §5, TS 27.005 §3).

    ``send(command) -> bytes``; ``receive_data(bytes)``; ``events()`` yields what was parsed.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discarding = False
        self._inflight: _InFlight | None = None
        self._urc_header: tuple[str, str, int] | None = None
        self._events: deque[Event] = deque()
        self._stats = AtStatistics()

    # ---------------------------------------------------------------- sending

    @property
    def command(self) -> Command | None:
        """The command in flight, if any."""
        return self._inflight.command if self._inflight else None

    @property
    def awaiting_body(self) -> bool:
        """True between the ``> `` prompt and :meth:`send_body`."""
        return self._inflight is not None and self._inflight.phase is _Phase.PROMPTED

    def send(self, command: Command) -> bytes:
        """Start ``command``; returns the command line to write (terminated by CR)."""
        if self._inflight is not None:
            raise LocalProtocolError(
                f"{self._inflight.command.label} is still in flight; one command at a time"
            )
        text = command.text
        _check_command_text(text)
        phase = _Phase.AWAIT_PROMPT if command.prompt else _Phase.AWAIT_RESULT
        self._inflight = _InFlight(command=command, text=text.upper(), phase=phase)
        self._stats.commands_sent += 1
        return text.encode("ascii") + b"\r"

    def send_body(self) -> bytes:
        """After :class:`Prompt`: the PDU hex and Ctrl-Z to write."""
        flight = self._inflight
        if flight is None or flight.phase is not _Phase.PROMPTED:
            raise LocalProtocolError("no prompt is waiting for a body")
        flight.phase = _Phase.BODY_SENT
        return flight.command.body()

    def abandon(self) -> bytes:
        """Give up the command in flight (the caller timed out); returns bytes to write.

        A command waiting at (or for) the ``> `` prompt is cancelled with ESC. Late answer
        lines then surface as :class:`Garbage`.
        """
        flight = self._inflight
        if flight is None:
            return b""
        self._inflight = None
        self._stats.commands_abandoned += 1
        if flight.phase in (_Phase.AWAIT_PROMPT, _Phase.PROMPTED):
            return _ESC
        return b""

    # ---------------------------------------------------------------- receiving

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the modem, in any chunking.

        Raises :class:`LocalProtocolError`, changing nothing, while more than
        ``MAX_PENDING_EVENTS`` parsed events wait to be drained.
        """
        if len(self._events) >= MAX_PENDING_EVENTS:
            raise LocalProtocolError(
                f"{len(self._events)} events pending; drain events() before feeding more"
            )
        buf = self._buffer
        buf += data
        start = 0
        n = len(buf)
        while start < n:
            flight = self._inflight
            if flight is not None and flight.phase is _Phase.AWAIT_PROMPT:
                j = start
                while j < n and buf[j] in (_CR, _LF, 0x20):
                    j += 1
                if j < n and buf[j] == 0x3E:  # '>'
                    start = j + 1
                    if start < n and buf[start] == 0x20:
                        start += 1
                    flight.phase = _Phase.PROMPTED
                    self._emit(Prompt(flight.command))
                    continue
            match = _LINE_END.search(buf, start)
            if match is None:
                break
            end = match.start()
            line = bytes(buf[start:end])
            start = end + 1
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > MAX_LINE_LENGTH:
                self._garbage(line[:64], f"line longer than {MAX_LINE_LENGTH} bytes")
                continue
            self._on_line(line)
        del buf[:start]
        if len(buf) > MAX_LINE_LENGTH:
            if not self._discarding:
                self._garbage(bytes(buf[:64]), f"line longer than {MAX_LINE_LENGTH} bytes")
            self._discarding = True
            buf.clear()

    def events(self) -> Iterator[Event]:
        """Yield and forget the events parsed so far."""
        while self._events:
            yield self._events.popleft()

    def next_event(self) -> Event | None:
        """The oldest parsed event, or ``None`` when more data is needed."""
        return self._events.popleft() if self._events else None

    def statistics(self) -> AtStatistics:
        s = self._stats
        return AtStatistics(
            commands_sent=s.commands_sent,
            commands_completed=s.commands_completed,
            commands_failed=s.commands_failed,
            responses_malformed=s.responses_malformed,
            commands_abandoned=s.commands_abandoned,
            unsolicited=s.unsolicited,
            garbage=s.garbage,
        )

    # ---------------------------------------------------------------- internals

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _garbage(self, data: bytes, reason: str) -> None:
        self._stats.garbage += 1
        self._emit(Garbage(data, reason))

    def _unsolicited(self, event: Event) -> None:
        self._stats.unsolicited += 1
        self._emit(event)

    def _on_line(self, raw: bytes) -> None:
        raw = raw.strip(_EDGE_STRIP)
        if not raw:
            return
        skip = 0
        while skip < len(raw) and raw[skip] not in _PRINTABLE:
            skip += 1
        if skip:
            self._garbage(raw[:skip], "non-printable bytes")
            raw = raw[skip:].strip(_EDGE_STRIP)
            if not raw:
                return
        if any(b not in _PRINTABLE for b in raw):
            self._garbage(raw, "non-printable bytes")
            return
        text = raw.decode("ascii")
        flight = self._inflight

        if self._urc_header is not None:
            kind, alpha, length = self._urc_header
            if _is_hex(text):
                self._urc_header = None
                if kind == "+CMT":
                    self._unsolicited(IncomingDeliver(alpha=alpha, length=length, pdu=text.upper()))
                else:
                    self._unsolicited(IncomingStatusReport(length=length, pdu=text.upper()))
                return
            if not _interjection(text) or _line_name(text) in _URC_NAMES:
                self._urc_header = None
                self._garbage(kind.encode(), f"{kind} header without its PDU line")
            # else vendor noise between the header and its PDU line: the PDU still follows

        if flight is not None and flight.expect_pdu:
            if _is_hex(text):
                flight.expect_pdu = False
                self._collect(flight, text)
                return
            if not _interjection(text) or _line_name(text) == flight.command.prefix:
                flight.expect_pdu = False
                flight.problem = f"{flight.command.prefix} header without its PDU line"
            # else an unsolicited code between a header and its PDU line (seen on Huawei
            # and ZTE sticks): routed below, and the PDU line is still awaited

        if self._final(text, flight):
            return

        if flight is not None:
            upper = text.upper()
            if upper == flight.text:
                return  # echo of the command
            if flight.phase is _Phase.BODY_SENT and upper == flight.command.body()[:-1].decode():
                return  # echo of the PDU
            if flight.phase is _Phase.PROMPTED and _is_hex(text):
                return  # echo of a body written before the prompt was parsed

        name, _, value = text.partition(":")
        name = name.strip().upper()
        value = value.strip()

        if name in _URC_NAMES:
            self._on_urc(name, value, text)
            return

        if flight is not None:
            prefix = self._prefix(flight.command)
            if prefix is None or (prefix and name == prefix):
                self._collect(flight, text)
                if flight.command.pdu_follows and name == prefix:
                    length = _header_length(text)
                    flight.expect_pdu = length is None or length > 0
                return

        if name.startswith("^"):
            self._unsolicited(VendorNotice(name=name, value=value))
            return
        if ":" in text:
            self._unsolicited(Unsolicited(name=name, value=value))
        else:
            self._unsolicited(Unsolicited(name=text, value=""))

    @staticmethod
    def _prefix(command: Command) -> str | None:
        if isinstance(command, RawCommand):
            return command.info_prefix.upper() if command.info_prefix else None
        return command.prefix

    def _collect(self, flight: _InFlight, text: str) -> None:
        if len(flight.lines) >= MAX_INFO_LINES:
            flight.problem = f"more than {MAX_INFO_LINES} information lines"
            return
        flight.lines.append(text)

    def _on_urc(self, name: str, value: str, text: str) -> None:
        if name == "RING":
            self._unsolicited(Ring())
            return
        try:
            args = _split_args(value)
            if name in ("+CMTI", "+CDSI"):
                if len(args) != 2:
                    raise ResponseError("wants <mem>,<index>")
                cls = NewMessage if name == "+CMTI" else NewStatusReport
                self._unsolicited(cls(storage=args[0], index=_int(args[1], "index")))
            elif name == "+CMT":
                if len(args) < 2:
                    raise ResponseError("wants [<alpha>],<length>")
                self._urc_header = (name, args[0], _int(args[-1], "length"))
            else:  # +CDS
                if len(args) != 1:
                    raise ResponseError("wants <length> (PDU mode)")
                self._urc_header = (name, "", _int(args[0], "length"))
        except ResponseError as exc:
            self._garbage(text.encode(), f"malformed {name}: {exc}")

    def _final(self, text: str, flight: _InFlight | None) -> bool:
        upper = text.upper()
        result = _BARE_FINALS.get(upper)
        code: int | None = None
        detail = ""
        if result is None:
            head, sep, rest = upper.partition(":")
            if not sep or head.strip() not in ("+CME ERROR", "+CMS ERROR"):
                return False
            cme = head.strip() == "+CME ERROR"
            result = FinalResult.CME_ERROR if cme else FinalResult.CMS_ERROR
            detail = text.partition(":")[2].strip()
            if detail.isascii() and detail.isdigit():
                code = int(detail)
            else:
                code = _verbose_code(detail, cme)
        if flight is None:
            self._garbage(text.encode(), "result code with no command in flight")
            return True
        self._inflight = None
        if result is FinalResult.OK:
            lines = tuple(flight.lines)
            if flight.expect_pdu and flight.problem is None:
                flight.problem = f"{flight.command.prefix} header without its PDU line"
            if flight.problem is None:
                try:
                    response = flight.command.response(lines)
                except ResponseError as exc:
                    flight.problem = str(exc)
                else:
                    self._stats.commands_completed += 1
                    self._emit(CommandCompleted(flight.command, response))
                    return True
            self._stats.responses_malformed += 1
            self._emit(ResponseMalformed(flight.command, flight.problem, lines))
            return True
        self._stats.commands_failed += 1
        self._emit(CommandFailed(flight.command, result, code, detail))
        return True
