"""CMPP 2.0 / 3.0 PDU types, result codes and Msg_Id / Msg_Fmt functions.

Field names are the spec's, in snake_case. Fixed-width octet strings are ``str`` (ASCII,
NUL padding removed); ``msg_content`` is always raw ``bytes``; ``msg_id`` is an opaque u64.
Reference: CMPP 2.0 / 3.0, section "Bodies" of the protocol reference (cmpp.md).
"""

from __future__ import annotations

import enum

import msgspec

from gateway.cmpp.errors import LocalProtocolError

__all__ = [
    "VERSION_2_0",
    "VERSION_2_1",
    "VERSION_3_0",
    "CommandId",
    "ConnectStatus",
    "SubmitResult",
    "DeliverResult",
    "MsgFmt",
    "Stat",
    "Header",
    "Connect",
    "ConnectResp",
    "Terminate",
    "TerminateResp",
    "Submit",
    "SubmitResp",
    "Deliver",
    "DeliverResp",
    "StatusReportBody",
    "Query",
    "QueryResp",
    "Cancel",
    "CancelResp",
    "ActiveTest",
    "ActiveTestResp",
    "Pdu",
    "RequestPdu",
    "ResponsePdu",
    "MsgId",
    "encode_text",
    "decode_text",
    "is_response",
    "major_version",
]

VERSION_2_0 = 0x20
VERSION_2_1 = 0x21  # seen from some peers; spoken with the 2.0 layouts
VERSION_3_0 = 0x30


def major_version(version: int) -> int:
    """The high nibble of the Version byte (2 or 3); CONNECT, cmpp.md "Bodies"."""
    return (version >> 4) & 0x0F


class CommandId(enum.IntEnum):
    """Command_Id values of the 12-byte header (cmpp.md "Header")."""

    CONNECT = 0x00000001
    TERMINATE = 0x00000002
    SUBMIT = 0x00000004
    DELIVER = 0x00000005
    QUERY = 0x00000006
    CANCEL = 0x00000007
    ACTIVE_TEST = 0x00000008
    CONNECT_RESP = 0x80000001
    TERMINATE_RESP = 0x80000002
    SUBMIT_RESP = 0x80000004
    DELIVER_RESP = 0x80000005
    QUERY_RESP = 0x80000006
    CANCEL_RESP = 0x80000007
    ACTIVE_TEST_RESP = 0x80000008


class ConnectStatus(enum.IntEnum):
    """CONNECT_RESP Status (cmpp.md "CONNECT_RESP"); 5 and above are "other errors"."""

    OK = 0
    BAD_STRUCTURE = 1
    BAD_SOURCE_ADDR = 2
    AUTH_FAILED = 3
    VERSION_TOO_HIGH = 4
    OTHER = 5


class SubmitResult(enum.IntEnum):
    """SUBMIT_RESP Result (cmpp.md "SUBMIT_RESP"); 9 and above are "others"."""

    OK = 0
    BAD_STRUCTURE = 1
    BAD_COMMAND = 2
    REPEATED_SEQUENCE = 3
    BAD_LENGTH = 4
    BAD_FEE_CODE = 5
    TOO_LONG = 6
    BAD_SERVICE_CODE = 7
    FLOW_CONTROL = 8
    OTHER = 9


class DeliverResult(enum.IntEnum):
    """DELIVER_RESP Result: 0 ok; the rest as SUBMIT_RESP's structure errors."""

    OK = 0
    BAD_STRUCTURE = 1
    BAD_COMMAND = 2
    REPEATED_SEQUENCE = 3
    BAD_LENGTH = 4
    BAD_FEE_CODE = 5
    TOO_LONG = 6
    BAD_SERVICE_CODE = 7
    FLOW_CONTROL = 8
    OTHER = 9


class MsgFmt(enum.IntEnum):
    """Msg_Fmt (cmpp.md "Message formats")."""

    ASCII = 0
    WRITE_CARD = 3
    BINARY = 4
    UCS2 = 8
    GBK = 15


class Stat(enum.StrEnum):
    """The well-known Stat words of a status report; operators add their own codes."""

    DELIVRD = "DELIVRD"
    EXPIRED = "EXPIRED"
    DELETED = "DELETED"
    UNDELIV = "UNDELIV"
    ACCEPTD = "ACCEPTD"
    UNKNOWN = "UNKNOWN"
    REJECTD = "REJECTD"


class Header(msgspec.Struct, frozen=True, kw_only=True):
    """The 12-byte header: Total_Length, Command_Id, Sequence_Id (cmpp.md "Header")."""

    total_length: int
    command_id: int
    sequence_id: int


class Connect(msgspec.Struct, frozen=True, kw_only=True):
    """CMPP_CONNECT: the SP logs in (cmpp.md "CONNECT")."""

    source_addr: str
    authenticator_source: bytes
    version: int
    timestamp: int


class ConnectResp(msgspec.Struct, frozen=True, kw_only=True):
    """CMPP_CONNECT_RESP (cmpp.md "CONNECT_RESP")."""

    status: int
    authenticator_ismg: bytes = b"\x00" * 16
    version: int = VERSION_3_0


class Terminate(msgspec.Struct, frozen=True, kw_only=True):
    """CMPP_TERMINATE: empty body."""


class TerminateResp(msgspec.Struct, frozen=True, kw_only=True):
    """CMPP_TERMINATE_RESP: empty body."""


class Submit(msgspec.Struct, frozen=True, kw_only=True):
    """CMPP_SUBMIT (cmpp.md "SUBMIT 2.0" / "SUBMIT 3.0").

    ``fee_terminal_type``, ``dest_terminal_type`` and ``link_id`` exist in 3.0 only and are
    not sent on 2.0 links.
    """

    msg_id: int = 0
    pk_total: int = 1
    pk_number: int = 1
    registered_delivery: int = 0
    msg_level: int = 0
    service_id: str = ""
    fee_usertype: int = 0
    fee_terminal_id: str = ""
    fee_terminal_type: int = 0
    tp_pid: int = 0
    tp_udhi: int = 0
    msg_fmt: int = MsgFmt.ASCII
    msg_src: str = ""
    fee_type: str = "01"
    fee_code: str = "000000"
    valid_time: str = ""
    at_time: str = ""
    src_id: str = ""
    dest_terminal_ids: tuple[str, ...] = ()
    dest_terminal_type: int = 0
    msg_content: bytes = b""
    link_id: str = ""


class SubmitResp(msgspec.Struct, frozen=True, kw_only=True):
    """CMPP_SUBMIT_RESP: Msg_Id and Result (1 byte in 2.0, 4 in 3.0)."""

    msg_id: int
    result: int


class Deliver(msgspec.Struct, frozen=True, kw_only=True):
    """CMPP_DELIVER: an MO (registered_delivery 0) or a status report (1).

    For a status report ``msg_content`` holds the report body; decode it with
    :func:`gateway.cmpp.codec.decode_status_report` (the frame decoder has already checked
    its length).
    """

    msg_id: int
    dest_id: str
    service_id: str = ""
    tp_pid: int = 0
    tp_udhi: int = 0
    msg_fmt: int = MsgFmt.ASCII
    src_terminal_id: str
    src_terminal_type: int = 0
    registered_delivery: int = 0
    msg_content: bytes = b""
    link_id: str = ""


class DeliverResp(msgspec.Struct, frozen=True, kw_only=True):
    """CMPP_DELIVER_RESP: answer every DELIVER, status reports too."""

    msg_id: int
    result: int = DeliverResult.OK


class StatusReportBody(msgspec.Struct, frozen=True, kw_only=True):
    """The Msg_Content of a DELIVER with Registered_Delivery = 1 (cmpp.md "Status report")."""

    msg_id: int
    stat: str
    submit_time: str
    done_time: str
    dest_terminal_id: str
    smsc_sequence: int = 0


class Query(msgspec.Struct, frozen=True, kw_only=True):
    """CMPP_QUERY: Time (YYYYMMDD), Query_Type, Query_Code, Reserve."""

    time: str
    query_type: int = 0
    query_code: str = ""


class QueryResp(msgspec.Struct, frozen=True, kw_only=True):
    """CMPP_QUERY_RESP: the ISMG's MT/MO counters for the day asked."""

    time: str
    query_type: int = 0
    query_code: str = ""
    mt_tlmsg: int = 0
    mt_tlusr: int = 0
    mt_scs: int = 0
    mt_wt: int = 0
    mt_fl: int = 0
    mo_scs: int = 0
    mo_wt: int = 0
    mo_fl: int = 0


class Cancel(msgspec.Struct, frozen=True, kw_only=True):
    """CMPP_CANCEL: cancel a submitted message by Msg_Id."""

    msg_id: int


class CancelResp(msgspec.Struct, frozen=True, kw_only=True):
    """CMPP_CANCEL_RESP: Success_Id (0 ok, 1 failed); 1 byte in 2.0, 4 in 3.0."""

    success_id: int


class ActiveTest(msgspec.Struct, frozen=True, kw_only=True):
    """CMPP_ACTIVE_TEST: empty body."""


class ActiveTestResp(msgspec.Struct, frozen=True, kw_only=True):
    """CMPP_ACTIVE_TEST_RESP: Reserved 1."""

    reserved: int = 0


RequestPdu = Connect | Terminate | Submit | Deliver | Query | Cancel | ActiveTest
ResponsePdu = (
    ConnectResp | TerminateResp | SubmitResp | DeliverResp | QueryResp | CancelResp | ActiveTestResp
)
Pdu = RequestPdu | ResponsePdu

_RESPONSE_TYPES = (
    ConnectResp,
    TerminateResp,
    SubmitResp,
    DeliverResp,
    QueryResp,
    CancelResp,
    ActiveTestResp,
)


def is_response(pdu: object) -> bool:
    """True for the ``*_RESP`` PDU types (Command_Id high bit set)."""
    return isinstance(pdu, _RESPONSE_TYPES)


# --- Msg_Id ------------------------------------------------------------------------------

_MSG_ID_FIELDS = (
    # name, width in bits, from the high bit down (cmpp.md "Msg_Id")
    ("month", 4),
    ("day", 5),
    ("hour", 5),
    ("minute", 6),
    ("second", 6),
    ("gateway", 22),
    ("sequence", 16),
)


class MsgId(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of a 64-bit Msg_Id (cmpp.md "Msg_Id").

    Correlate on the plain ``int``; take it apart only for display.
    """

    month: int
    day: int
    hour: int
    minute: int
    second: int
    gateway: int
    sequence: int

    def to_int(self) -> int:
        """Pack into the u64 the ISMG sends; fields out of range are a LocalProtocolError."""
        month, day, hour, minute = self.month, self.day, self.hour, self.minute
        second, gateway, sequence = self.second, self.gateway, self.sequence
        if (
            0 <= month < 16 and 0 <= day < 32 and 0 <= hour < 32 and 0 <= minute < 64
            and 0 <= second < 64 and 0 <= gateway < (1 << 22) and 0 <= sequence < (1 << 16)
        ):
            return (
                month << 60 | day << 55 | hour << 50 | minute << 44 | second << 38
                | gateway << 16 | sequence
            )
        value = 0  # some field is out of range: find it, and name it
        for name, bits in _MSG_ID_FIELDS:
            part = getattr(self, name)
            if not 0 <= part < (1 << bits):
                raise LocalProtocolError(f"Msg_Id field {name}={part} does not fit {bits} bits")
            value = (value << bits) | part
        return value

    @classmethod
    def from_int(cls, value: int) -> MsgId:
        """Take a u64 Msg_Id apart."""
        if not 0 <= value < (1 << 64):
            raise LocalProtocolError(f"Msg_Id {value} is not a u64")
        return cls(
            month=value >> 60, day=value >> 55 & 0x1F, hour=value >> 50 & 0x1F,
            minute=value >> 44 & 0x3F, second=value >> 38 & 0x3F, gateway=value >> 16 & 0x3FFFFF,
            sequence=value & 0xFFFF,
        )

    def __str__(self) -> str:
        return (
            f"{self.month:02d}{self.day:02d}{self.hour:02d}{self.minute:02d}{self.second:02d}"
            f"-{self.gateway:07d}-{self.sequence:05d}"
        )


# --- Msg_Fmt text ------------------------------------------------------------------------

_CODECS = {
    MsgFmt.ASCII: "ascii",
    MsgFmt.UCS2: "utf-16-be",
    MsgFmt.GBK: "gb18030",
}


def encode_text(text: str, msg_fmt: int) -> bytes:
    """Encode ``text`` for Msg_Fmt (cmpp.md "Message formats").

    ASCII must be pure ASCII; UCS2 is UTF-16BE (characters outside the BMP as surrogate
    pairs); GBK is encoded as GB18030. Binary formats carry bytes, not text.
    """
    try:
        codec = _CODECS[MsgFmt(msg_fmt)]
    except (ValueError, KeyError):
        raise LocalProtocolError(f"Msg_Fmt {msg_fmt} does not carry text") from None
    try:
        return text.encode(codec)
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"text not encodable as Msg_Fmt {msg_fmt}: {exc.reason}") from None


def decode_text(content: bytes, msg_fmt: int) -> str:
    """Decode received Msg_Content, tolerantly (cmpp.md "Message formats").

    Undecodable bytes become U+FFFD; an odd trailing UCS2 byte is replaced too. Binary and
    write-card content (and unknown formats) decode as Latin-1, one character per byte, so
    nothing is lost.
    """
    try:
        fmt = MsgFmt(msg_fmt)
    except ValueError:
        return content.decode("latin-1")
    codec = _CODECS.get(fmt)
    if codec is None:
        return content.decode("latin-1")
    return content.decode(codec, errors="replace")
