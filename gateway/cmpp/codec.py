"""CMPP 2.0 / 3.0 binary codec, sans-IO: PDUs to bytes and a frame decoder for any chunking.

Every integer is big-endian; fixed-width strings are NUL-padded on the right (cmpp.md).
The layouts of each version are precompiled ``struct.Struct``s gathered in one table per
version (:data:`LAYOUT_2_0`, :data:`LAYOUT_3_0`). Encoding is strict; decoding is tolerant
where the field is known to vary (response Status/Result widths, 60- or 71-byte status
reports, empty ACTIVE_TEST_RESP) and strict about lengths otherwise.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from gateway.cmpp.errors import LocalProtocolError, RemoteProtocolError
from gateway.cmpp.pdus import (
    ActiveTest,
    ActiveTestResp,
    Cancel,
    CancelResp,
    CommandId,
    Connect,
    ConnectResp,
    Deliver,
    DeliverResp,
    Header,
    Pdu,
    Query,
    QueryResp,
    StatusReportBody,
    Submit,
    SubmitResp,
    Terminate,
    TerminateResp,
    major_version,
)

__all__ = [
    "HEADER",
    "HEADER_LENGTH",
    "MAX_FRAME",
    "MAX_DESTINATIONS",
    "MAX_MSG_LENGTH",
    "TEXT_CACHE_SIZE",
    "Layout",
    "LAYOUT_2_0",
    "LAYOUT_3_0",
    "layout_for",
    "encode",
    "encode_general",
    "encode_status_report",
    "encode_status_report_general",
    "status_report_fields",
    "decode_status_report",
    "decode_body",
    "FrameDecoder",
]

HEADER = struct.Struct(">III")
HEADER_LENGTH = HEADER.size  # 12
#: Largest Total_Length accepted. A 3.0 SUBMIT of 140 bytes to 100 numbers is 3,503 bytes,
#: the largest PDU the spec allows; anything bigger is garbage.
MAX_FRAME = 4096
#: DestUsr_tl upper bound (cmpp.md "SUBMIT 2.0").
MAX_DESTINATIONS = 100
#: Msg_Length upper bound for what we send (cmpp.md "SUBMIT 2.0"); received up to 255.
MAX_MSG_LENGTH = 140


@dataclass(frozen=True, slots=True)
class Layout:
    """The binary layouts of one CMPP version."""

    version: int
    terminal_id_width: int
    connect: struct.Struct
    connect_resp: struct.Struct
    submit_head: struct.Struct  # Msg_Id .. DestUsr_tl
    dest_terminal_id: struct.Struct
    submit_dest_tail: struct.Struct  # Dest_terminal_type (3.0) + Msg_Length
    submit_tail: struct.Struct  # Reserve (2.0) or LinkID (3.0)
    submit_resp: struct.Struct
    deliver_head: struct.Struct  # Msg_Id .. Msg_Length
    deliver_tail: struct.Struct  # Reserved (2.0) or LinkID (3.0)
    deliver_resp: struct.Struct
    status_report: struct.Struct
    query: struct.Struct
    query_resp: struct.Struct
    cancel: struct.Struct
    cancel_resp: struct.Struct
    active_test_resp: struct.Struct
    # Whole frames, header included, for the PDUs of the steady state: one pack per frame.
    submit_resp_frame: struct.Struct
    deliver_resp_frame: struct.Struct
    #: SUBMIT to one destination, indexed by Msg_Length (0..MAX_MSG_LENGTH).
    submit_frames: tuple[struct.Struct, ...]
    #: DELIVER, indexed by Msg_Length (0..255).
    deliver_frames: tuple[struct.Struct, ...]


def _frame(header: str, body: str) -> struct.Struct:
    return struct.Struct(">" + header + body.removeprefix(">"))


_SUBMIT_HEAD_2_0 = ">QBBBB10sB21sBBB6s2s6s17s17s21sB"
_SUBMIT_HEAD_3_0 = ">QBBBB10sB32sBBBB6s2s6s17s17s21sB"
_DELIVER_HEAD_2_0 = ">Q21s10sBBB21sBB"
_DELIVER_HEAD_3_0 = ">Q21s10sBBB32sBBB"


LAYOUT_2_0 = Layout(
    version=0x20,
    terminal_id_width=21,
    connect=struct.Struct(">6s16sBI"),
    connect_resp=struct.Struct(">B16sB"),
    # Msg_Id Pk_total Pk_number Registered_Delivery Msg_level Service_Id Fee_UserType
    # Fee_terminal_Id TP_pId TP_udhi Msg_Fmt Msg_src FeeType FeeCode ValId_Time At_Time
    # Src_Id DestUsr_tl
    submit_head=struct.Struct(_SUBMIT_HEAD_2_0),
    dest_terminal_id=struct.Struct(">21s"),
    submit_dest_tail=struct.Struct(">B"),
    submit_tail=struct.Struct(">8s"),
    submit_resp=struct.Struct(">QB"),
    # Msg_Id Dest_Id Service_Id TP_pid TP_udhi Msg_Fmt Src_terminal_Id Registered_Delivery
    # Msg_Length
    deliver_head=struct.Struct(_DELIVER_HEAD_2_0),
    deliver_tail=struct.Struct(">8s"),
    deliver_resp=struct.Struct(">QB"),
    status_report=struct.Struct(">Q7s10s10s21sI"),
    query=struct.Struct(">8sB10s8s"),
    query_resp=struct.Struct(">8sB10sIIIIIIII"),
    cancel=struct.Struct(">Q"),
    cancel_resp=struct.Struct(">B"),
    active_test_resp=struct.Struct(">B"),
    submit_resp_frame=_frame("III", ">QB"),
    deliver_resp_frame=_frame("III", ">QB"),
    submit_frames=tuple(
        _frame("III", f"{_SUBMIT_HEAD_2_0[1:]}21sB{n}s8s") for n in range(MAX_MSG_LENGTH + 1)
    ),
    deliver_frames=tuple(_frame("III", f"{_DELIVER_HEAD_2_0[1:]}{n}s8s") for n in range(256)),
)

LAYOUT_3_0 = Layout(
    version=0x30,
    terminal_id_width=32,
    connect=struct.Struct(">6s16sBI"),
    connect_resp=struct.Struct(">I16sB"),
    # as 2.0, with Fee_terminal_Id 32 + Fee_terminal_type 1
    submit_head=struct.Struct(_SUBMIT_HEAD_3_0),
    dest_terminal_id=struct.Struct(">32s"),
    submit_dest_tail=struct.Struct(">BB"),
    submit_tail=struct.Struct(">20s"),
    submit_resp=struct.Struct(">QI"),
    # as 2.0, with Src_terminal_Id 32 + Src_terminal_type 1
    deliver_head=struct.Struct(_DELIVER_HEAD_3_0),
    deliver_tail=struct.Struct(">20s"),
    deliver_resp=struct.Struct(">QI"),
    status_report=struct.Struct(">Q7s10s10s32sI"),
    query=struct.Struct(">8sB10s8s"),
    query_resp=struct.Struct(">8sB10sIIIIIIII"),
    cancel=struct.Struct(">Q"),
    cancel_resp=struct.Struct(">I"),
    active_test_resp=struct.Struct(">B"),
    submit_resp_frame=_frame("III", ">QI"),
    deliver_resp_frame=_frame("III", ">QI"),
    submit_frames=tuple(
        _frame("III", f"{_SUBMIT_HEAD_3_0[1:]}32sBB{n}s20s") for n in range(MAX_MSG_LENGTH + 1)
    ),
    deliver_frames=tuple(_frame("III", f"{_DELIVER_HEAD_3_0[1:]}{n}s20s") for n in range(256)),
)

_STATUS_REPORT_LAYOUTS = {
    LAYOUT_2_0.status_report.size: LAYOUT_2_0.status_report,  # 60
    LAYOUT_3_0.status_report.size: LAYOUT_3_0.status_report,  # 71
}


_LAYOUT_BY_VERSION = {0x20: LAYOUT_2_0, 0x21: LAYOUT_2_0, 0x30: LAYOUT_3_0}
_SUBMIT_RESP_BY_SIZE = {s.size: s for s in (LAYOUT_2_0.submit_resp, LAYOUT_3_0.submit_resp)}
_DELIVER_RESP_BY_SIZE = {s.size: s for s in (LAYOUT_2_0.deliver_resp, LAYOUT_3_0.deliver_resp)}
_STATUS_REPORT_SIZES = frozenset(_STATUS_REPORT_LAYOUTS)


def layout_for(version: int) -> Layout:
    """The layout table for a Version byte: major 2 (0x20, 0x21) or 3 (0x30)."""
    layout = _LAYOUT_BY_VERSION.get(version)
    if layout is not None:
        return layout
    major = major_version(version)
    if major == 2:
        return LAYOUT_2_0
    if major == 3:
        return LAYOUT_3_0
    raise LocalProtocolError(f"unsupported CMPP version 0x{version:02x}")


# --- field encoding and decoding -------------------------------------------------------------------------


def _octets(value: str, width: int, name: str) -> bytes:
    """A fixed-width ASCII field; too long or non-ASCII is our error (strict on send)."""
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        raise LocalProtocolError(f"{name} must be ASCII: {value!r}") from None
    if len(raw) > width:
        raise LocalProtocolError(f"{name} longer than {width} bytes: {value!r}")
    return raw


def _text(raw: bytes) -> str:
    """A received fixed-width string: up to the first NUL, ASCII, tolerant of junk bytes."""
    end = raw.find(0)
    return (raw if end < 0 else raw[:end]).decode("ascii", "replace")


#: Distinct fixed-width strings a FrameDecoder remembers (service ids, service numbers, fee
#: codes: the fields that repeat from PDU to PDU); past this it starts afresh.
TEXT_CACHE_SIZE = 1024


def _text_cache(size: int = TEXT_CACHE_SIZE) -> Callable[[bytes], str]:
    """:func:`_text` remembering its answers, for the fields that repeat (one per decoder)."""
    cache: dict[bytes, str] = {}
    get = cache.get

    def text(raw: bytes) -> str:
        value = get(raw)
        if value is None:
            if len(cache) >= size:
                cache.clear()
            value = cache[raw] = _text(raw)
        return value

    return text


def _u8(value: int, name: str) -> int:
    if not 0 <= value <= 0xFF:
        raise LocalProtocolError(f"{name}={value} does not fit one byte")
    return value


def _u32(value: int, name: str) -> int:
    if not 0 <= value <= 0xFFFFFFFF:
        raise LocalProtocolError(f"{name}={value} does not fit four bytes")
    return value


def _u64(value: int, name: str) -> int:
    if not 0 <= value < (1 << 64):
        raise LocalProtocolError(f"{name}={value} is not a u64")
    return value


def _status_width(layout: Layout, value: int, name: str) -> int:
    return _u8(value, name) if layout is LAYOUT_2_0 else _u32(value, name)


# --- encode ------------------------------------------------------------------------------


def encode_status_report(report: StatusReportBody, version: int) -> bytes:
    """The 60-byte (2.0) or 71-byte (3.0) status report body (cmpp.md "Status report")."""
    layout = _LAYOUT_BY_VERSION.get(version) or layout_for(version)
    stat, submit_time, done_time, dest = (
        report.stat, report.submit_time, report.done_time, report.dest_terminal_id)
    if (
        len(stat) <= 7 and len(submit_time) <= 10 and len(done_time) <= 10
        and len(dest) <= layout.terminal_id_width
        and (stat + submit_time + done_time + dest).isascii()
    ):
        try:  # one pack; an integer out of range falls to the field-by-field path below
            return layout.status_report.pack(
                report.msg_id, stat.encode(), submit_time.encode(), done_time.encode(),
                dest.encode(), report.smsc_sequence,
            )
        except struct.error:
            pass
    return encode_status_report_general(report, layout.version)


def encode_status_report_general(report: StatusReportBody, version: int) -> bytes:
    """:func:`encode_status_report` field by field, naming a bad field in its error."""
    layout = layout_for(version)
    return layout.status_report.pack(
        _u64(report.msg_id, "msg_id"),
        _octets(report.stat, 7, "stat"),
        _octets(report.submit_time, 10, "submit_time"),
        _octets(report.done_time, 10, "done_time"),
        _octets(report.dest_terminal_id, layout.terminal_id_width, "dest_terminal_id"),
        _u32(report.smsc_sequence, "smsc_sequence"),
    )


def status_report_fields(content: bytes) -> tuple[int, str, str, str, str, int]:
    """A status report body of either layout, chosen by its length (60 or 71), as the tuple
    (msg_id, stat, submit_time, done_time, dest_terminal_id, smsc_sequence): what
    :func:`decode_status_report` returns, without building the Struct."""
    layout = _STATUS_REPORT_LAYOUTS.get(len(content))
    if layout is None:
        raise RemoteProtocolError(
            f"status report of {len(content)} bytes (expected 60 or 71)"
        )
    msg_id, stat, submit_time, done_time, dest, smsc_sequence = layout.unpack(content)
    return msg_id, _text(stat), _text(submit_time), _text(done_time), _text(dest), smsc_sequence


def decode_status_report(content: bytes) -> StatusReportBody:
    """Decode a status report body of either layout, chosen by its length (60 or 71)."""
    msg_id, stat, submit_time, done_time, dest, smsc_sequence = status_report_fields(content)
    return StatusReportBody(
        msg_id=msg_id,
        stat=stat,
        submit_time=submit_time,
        done_time=done_time,
        dest_terminal_id=dest,
        smsc_sequence=smsc_sequence,
    )


def _encode_submit(pdu: Submit, layout: Layout) -> bytes:
    v3 = layout is LAYOUT_3_0
    width = layout.terminal_id_width
    dests = pdu.dest_terminal_ids
    if not 1 <= len(dests) <= MAX_DESTINATIONS:
        raise LocalProtocolError(f"SUBMIT needs 1..{MAX_DESTINATIONS} destinations, got {len(dests)}")
    if len(pdu.msg_content) > MAX_MSG_LENGTH:
        raise LocalProtocolError(
            f"Msg_Content of {len(pdu.msg_content)} bytes exceeds {MAX_MSG_LENGTH}"
        )
    if not 1 <= pdu.pk_number <= pdu.pk_total:
        raise LocalProtocolError(f"Pk_number {pdu.pk_number} outside 1..Pk_total {pdu.pk_total}")
    head_fields: list[object] = [
        _u64(pdu.msg_id, "msg_id"),
        _u8(pdu.pk_total, "pk_total"),
        _u8(pdu.pk_number, "pk_number"),
        _u8(pdu.registered_delivery, "registered_delivery"),
        _u8(pdu.msg_level, "msg_level"),
        _octets(pdu.service_id, 10, "service_id"),
        _u8(pdu.fee_usertype, "fee_usertype"),
        _octets(pdu.fee_terminal_id, width, "fee_terminal_id"),
    ]
    if v3:
        head_fields.append(_u8(pdu.fee_terminal_type, "fee_terminal_type"))
    head_fields += [
        _u8(pdu.tp_pid, "tp_pid"),
        _u8(pdu.tp_udhi, "tp_udhi"),
        _u8(pdu.msg_fmt, "msg_fmt"),
        _octets(pdu.msg_src, 6, "msg_src"),
        _octets(pdu.fee_type, 2, "fee_type"),
        _octets(pdu.fee_code, 6, "fee_code"),
        _octets(pdu.valid_time, 17, "valid_time"),
        _octets(pdu.at_time, 17, "at_time"),
        _octets(pdu.src_id, 21, "src_id"),
        len(dests),
    ]
    parts = [layout.submit_head.pack(*head_fields)]
    pack_dest = layout.dest_terminal_id.pack
    parts.extend(pack_dest(_octets(d, width, "dest_terminal_id")) for d in dests)
    if v3:
        parts.append(
            layout.submit_dest_tail.pack(
                _u8(pdu.dest_terminal_type, "dest_terminal_type"), len(pdu.msg_content)
            )
        )
        parts.append(pdu.msg_content)
        parts.append(layout.submit_tail.pack(_octets(pdu.link_id, 20, "link_id")))
    else:
        parts.append(layout.submit_dest_tail.pack(len(pdu.msg_content)))
        parts.append(pdu.msg_content)
        parts.append(layout.submit_tail.pack(b""))
    return b"".join(parts)


def _encode_deliver(pdu: Deliver, layout: Layout) -> bytes:
    v3 = layout is LAYOUT_3_0
    if len(pdu.msg_content) > 0xFF:
        raise LocalProtocolError(f"Msg_Content of {len(pdu.msg_content)} bytes exceeds 255")
    fields: list[object] = [
        _u64(pdu.msg_id, "msg_id"),
        _octets(pdu.dest_id, 21, "dest_id"),
        _octets(pdu.service_id, 10, "service_id"),
        _u8(pdu.tp_pid, "tp_pid"),
        _u8(pdu.tp_udhi, "tp_udhi"),
        _u8(pdu.msg_fmt, "msg_fmt"),
        _octets(pdu.src_terminal_id, layout.terminal_id_width, "src_terminal_id"),
    ]
    if v3:
        fields.append(_u8(pdu.src_terminal_type, "src_terminal_type"))
    fields += [_u8(pdu.registered_delivery, "registered_delivery"), len(pdu.msg_content)]
    tail = _octets(pdu.link_id, 20, "link_id") if v3 else b""
    return layout.deliver_head.pack(*fields) + pdu.msg_content + layout.deliver_tail.pack(tail)


def _encode_body(pdu: Pdu, layout: Layout) -> tuple[int, bytes]:
    match pdu:
        case Submit():
            return CommandId.SUBMIT, _encode_submit(pdu, layout)
        case SubmitResp():
            return CommandId.SUBMIT_RESP, layout.submit_resp.pack(
                _u64(pdu.msg_id, "msg_id"), _status_width(layout, pdu.result, "result")
            )
        case Deliver():
            return CommandId.DELIVER, _encode_deliver(pdu, layout)
        case DeliverResp():
            return CommandId.DELIVER_RESP, layout.deliver_resp.pack(
                _u64(pdu.msg_id, "msg_id"), _status_width(layout, pdu.result, "result")
            )
        case ActiveTest():
            return CommandId.ACTIVE_TEST, b""
        case ActiveTestResp():
            return CommandId.ACTIVE_TEST_RESP, layout.active_test_resp.pack(
                _u8(pdu.reserved, "reserved")
            )
        case Connect():
            if len(pdu.authenticator_source) != 16:
                raise LocalProtocolError("AuthenticatorSource must be 16 bytes")
            return CommandId.CONNECT, layout.connect.pack(
                _octets(pdu.source_addr, 6, "source_addr"),
                pdu.authenticator_source,
                _u8(pdu.version, "version"),
                _u32(pdu.timestamp, "timestamp"),
            )
        case ConnectResp():
            if len(pdu.authenticator_ismg) != 16:
                raise LocalProtocolError("AuthenticatorISMG must be 16 bytes")
            return CommandId.CONNECT_RESP, layout.connect_resp.pack(
                _status_width(layout, pdu.status, "status"),
                pdu.authenticator_ismg,
                _u8(pdu.version, "version"),
            )
        case Terminate():
            return CommandId.TERMINATE, b""
        case TerminateResp():
            return CommandId.TERMINATE_RESP, b""
        case Query():
            return CommandId.QUERY, layout.query.pack(
                _octets(pdu.time, 8, "time"),
                _u8(pdu.query_type, "query_type"),
                _octets(pdu.query_code, 10, "query_code"),
                b"",
            )
        case QueryResp():
            return CommandId.QUERY_RESP, layout.query_resp.pack(
                _octets(pdu.time, 8, "time"),
                _u8(pdu.query_type, "query_type"),
                _octets(pdu.query_code, 10, "query_code"),
                *(
                    _u32(getattr(pdu, name), name)
                    for name in (
                        "mt_tlmsg", "mt_tlusr", "mt_scs", "mt_wt", "mt_fl", "mo_scs", "mo_wt", "mo_fl"
                    )
                ),
            )
        case Cancel():
            return CommandId.CANCEL, layout.cancel.pack(_u64(pdu.msg_id, "msg_id"))
        case CancelResp():
            return CommandId.CANCEL_RESP, layout.cancel_resp.pack(
                _status_width(layout, pdu.success_id, "success_id")
            )
    raise LocalProtocolError(f"not a CMPP PDU: {type(pdu).__name__}")


# --- fast paths ------------------------------------------------------------------------------
#
# The PDUs of the steady state (SUBMIT to one number, its SUBMIT_RESP, DELIVER, DELIVER_RESP)
# are packed header and body in one call of a whole-frame Struct. Each returns None when the
# PDU is not of the shape it handles, or has a string field that is too long or not ASCII;
# integers out of range make the Struct raise struct.error. Either way :func:`encode` then
# takes the general path, which checks field by field and names the culprit in its
# LocalProtocolError, so the bytes and the errors are those of the general path.


def _fast_submit(pdu: Submit, layout: Layout, seq: int) -> bytes | None:
    dests = pdu.dest_terminal_ids
    content = pdu.msg_content
    if len(dests) != 1 or len(content) > MAX_MSG_LENGTH or not 1 <= pdu.pk_number <= pdu.pk_total:
        return None
    dest = dests[0]
    width = layout.terminal_id_width
    service_id, fee_terminal_id, msg_src = pdu.service_id, pdu.fee_terminal_id, pdu.msg_src
    fee_type, fee_code, valid_time = pdu.fee_type, pdu.fee_code, pdu.valid_time
    at_time, src_id, link_id = pdu.at_time, pdu.src_id, pdu.link_id
    if (
        len(service_id) > 10 or len(fee_terminal_id) > width or len(msg_src) > 6
        or len(fee_type) > 2 or len(fee_code) > 6 or len(valid_time) > 17 or len(at_time) > 17
        or len(src_id) > 21 or len(dest) > width or len(link_id) > 20
        or not (service_id + fee_terminal_id + msg_src + fee_type + fee_code + valid_time
                + at_time + src_id + dest + link_id).isascii()
    ):
        return None
    frame = layout.submit_frames[len(content)]
    if layout is LAYOUT_3_0:
        return frame.pack(
            frame.size, CommandId.SUBMIT, seq, pdu.msg_id, pdu.pk_total, pdu.pk_number,
            pdu.registered_delivery, pdu.msg_level, service_id.encode(), pdu.fee_usertype,
            fee_terminal_id.encode(), pdu.fee_terminal_type, pdu.tp_pid, pdu.tp_udhi,
            pdu.msg_fmt, msg_src.encode(), fee_type.encode(), fee_code.encode(),
            valid_time.encode(), at_time.encode(), src_id.encode(), 1, dest.encode(),
            pdu.dest_terminal_type, len(content), content, link_id.encode(),
        )
    return frame.pack(
        frame.size, CommandId.SUBMIT, seq, pdu.msg_id, pdu.pk_total, pdu.pk_number,
        pdu.registered_delivery, pdu.msg_level, service_id.encode(), pdu.fee_usertype,
        fee_terminal_id.encode(), pdu.tp_pid, pdu.tp_udhi, pdu.msg_fmt, msg_src.encode(),
        fee_type.encode(), fee_code.encode(), valid_time.encode(), at_time.encode(),
        src_id.encode(), 1, dest.encode(), len(content), content, b"",
    )


def _fast_deliver(pdu: Deliver, layout: Layout, seq: int) -> bytes | None:
    content = pdu.msg_content
    dest_id, service_id, link_id = pdu.dest_id, pdu.service_id, pdu.link_id
    src = pdu.src_terminal_id
    if (
        len(content) > 0xFF or len(dest_id) > 21 or len(service_id) > 10
        or len(src) > layout.terminal_id_width or len(link_id) > 20
        or not (dest_id + service_id + src + link_id).isascii()
    ):
        return None
    frame = layout.deliver_frames[len(content)]
    if layout is LAYOUT_3_0:
        return frame.pack(
            frame.size, CommandId.DELIVER, seq, pdu.msg_id, dest_id.encode(),
            service_id.encode(), pdu.tp_pid, pdu.tp_udhi, pdu.msg_fmt, src.encode(),
            pdu.src_terminal_type, pdu.registered_delivery, len(content), content,
            link_id.encode(),
        )
    return frame.pack(
        frame.size, CommandId.DELIVER, seq, pdu.msg_id, dest_id.encode(), service_id.encode(),
        pdu.tp_pid, pdu.tp_udhi, pdu.msg_fmt, src.encode(), pdu.registered_delivery,
        len(content), content, b"",
    )


def _fast_submit_resp(pdu: SubmitResp, layout: Layout, seq: int) -> bytes:
    frame = layout.submit_resp_frame
    return frame.pack(frame.size, CommandId.SUBMIT_RESP, seq, pdu.msg_id, pdu.result)


def _fast_deliver_resp(pdu: DeliverResp, layout: Layout, seq: int) -> bytes:
    frame = layout.deliver_resp_frame
    return frame.pack(frame.size, CommandId.DELIVER_RESP, seq, pdu.msg_id, pdu.result)


_FAST_ENCODERS: dict[type, Callable[[Any, Layout, int], bytes | None]] = {
    Submit: _fast_submit,
    SubmitResp: _fast_submit_resp,
    Deliver: _fast_deliver,
    DeliverResp: _fast_deliver_resp,
}


def encode(pdu: Pdu, sequence_id: int, version: int) -> bytes:
    """One complete frame: header plus body in the layout of ``version`` (cmpp.md "Header")."""
    layout = _LAYOUT_BY_VERSION.get(version) or layout_for(version)
    fast = _FAST_ENCODERS.get(type(pdu))
    if fast is not None:
        try:
            frame = fast(pdu, layout, sequence_id)
        except struct.error:
            frame = None  # an integer out of range: the general path says which
        if frame is not None:
            return frame
    return encode_general(pdu, sequence_id, layout.version)


def encode_general(pdu: Pdu, sequence_id: int, version: int) -> bytes:
    """:func:`encode` without the whole-frame fast paths: every field checked and packed in
    turn. The reference the fast paths are tested against."""
    layout = layout_for(version)
    command_id, body = _encode_body(pdu, layout)
    total = HEADER_LENGTH + len(body)
    return HEADER.pack(total, command_id, _u32(sequence_id, "sequence_id")) + body


# --- decode ------------------------------------------------------------------------------


def _fixed(s: struct.Struct, body: bytes, what: str) -> tuple:
    if len(body) != s.size:
        kind = "truncated" if len(body) < s.size else "over-long"
        raise RemoteProtocolError(f"{kind} {what} body: {len(body)} bytes, expected {s.size}")
    return s.unpack(body)


def _by_length(options: tuple[struct.Struct, ...], body: bytes, what: str) -> tuple:
    for s in options:
        if len(body) == s.size:
            return s.unpack(body)
    sizes = " or ".join(str(s.size) for s in options)
    raise RemoteProtocolError(f"bad {what} body length {len(body)}, expected {sizes}")


def _decode_submit(body: bytes, layout: Layout, text: Callable[[bytes], str] = _text) -> Submit:
    v3 = layout is LAYOUT_3_0
    head = layout.submit_head
    if len(body) < head.size:
        raise RemoteProtocolError(f"truncated SUBMIT body: {len(body)} bytes")
    fields = head.unpack_from(body)
    if v3:
        (msg_id, pk_total, pk_number, reg, level, service_id, fee_usertype, fee_terminal_id,
         fee_terminal_type, tp_pid, tp_udhi, msg_fmt, msg_src, fee_type, fee_code, valid_time,
         at_time, src_id, n_dest) = fields
    else:
        (msg_id, pk_total, pk_number, reg, level, service_id, fee_usertype, fee_terminal_id,
         tp_pid, tp_udhi, msg_fmt, msg_src, fee_type, fee_code, valid_time, at_time, src_id,
         n_dest) = fields
        fee_terminal_type = 0
    offset = head.size
    dest_s = layout.dest_terminal_id
    dests_end = offset + n_dest * dest_s.size
    tail_s = layout.submit_dest_tail
    if len(body) < dests_end + tail_s.size:
        raise RemoteProtocolError(f"truncated SUBMIT body: {len(body)} bytes for {n_dest} destinations")
    if n_dest == 1:
        dests: tuple[str, ...] = (_text(dest_s.unpack_from(body, offset)[0]),)
    else:
        dests = tuple(
            _text(dest_s.unpack_from(body, offset + i * dest_s.size)[0]) for i in range(n_dest)
        )
    if v3:
        dest_terminal_type, msg_length = tail_s.unpack_from(body, dests_end)
    else:
        (msg_length,) = tail_s.unpack_from(body, dests_end)
        dest_terminal_type = 0
    content_start = dests_end + tail_s.size
    expected = content_start + msg_length + layout.submit_tail.size
    if len(body) != expected:
        kind = "truncated" if len(body) < expected else "over-long"
        raise RemoteProtocolError(f"{kind} SUBMIT body: {len(body)} bytes, expected {expected}")
    content = body[content_start : content_start + msg_length]
    (tail,) = layout.submit_tail.unpack_from(body, content_start + msg_length)
    return Submit(
        msg_id=msg_id,
        pk_total=pk_total,
        pk_number=pk_number,
        registered_delivery=reg,
        msg_level=level,
        service_id=text(service_id),
        fee_usertype=fee_usertype,
        fee_terminal_id=text(fee_terminal_id),
        fee_terminal_type=fee_terminal_type,
        tp_pid=tp_pid,
        tp_udhi=tp_udhi,
        msg_fmt=msg_fmt,
        msg_src=text(msg_src),
        fee_type=text(fee_type),
        fee_code=text(fee_code),
        valid_time=text(valid_time),
        at_time=text(at_time),
        src_id=text(src_id),
        dest_terminal_ids=dests,
        dest_terminal_type=dest_terminal_type,
        msg_content=content,
        link_id=text(tail) if v3 else "",
    )


def _decode_deliver(body: bytes, layout: Layout, text: Callable[[bytes], str] = _text) -> Deliver:
    v3 = layout is LAYOUT_3_0
    head = layout.deliver_head
    if len(body) < head.size:
        raise RemoteProtocolError(f"truncated DELIVER body: {len(body)} bytes")
    fields = head.unpack_from(body)
    if v3:
        (msg_id, dest_id, service_id, tp_pid, tp_udhi, msg_fmt, src, src_type, reg,
         msg_length) = fields
    else:
        (msg_id, dest_id, service_id, tp_pid, tp_udhi, msg_fmt, src, reg, msg_length) = fields
        src_type = 0
    expected = head.size + msg_length + layout.deliver_tail.size
    if len(body) != expected:
        kind = "truncated" if len(body) < expected else "over-long"
        raise RemoteProtocolError(f"{kind} DELIVER body: {len(body)} bytes, expected {expected}")
    content = body[head.size : head.size + msg_length]
    if reg == 1 and len(content) not in _STATUS_REPORT_SIZES:
        # A malformed report is a malformed frame (the length is all there is to check).
        raise RemoteProtocolError(f"status report of {len(content)} bytes (expected 60 or 71)")
    (tail,) = layout.deliver_tail.unpack_from(body, head.size + msg_length)
    return Deliver(
        msg_id=msg_id,
        dest_id=text(dest_id),
        service_id=text(service_id),
        tp_pid=tp_pid,
        tp_udhi=tp_udhi,
        msg_fmt=msg_fmt,
        src_terminal_id=_text(src),
        src_terminal_type=src_type,
        registered_delivery=reg,
        msg_content=content,
        link_id=text(tail) if v3 else "",
    )


def _expect_empty(body: bytes, what: str) -> None:
    if body:
        raise RemoteProtocolError(f"over-long {what} body: {len(body)} bytes, expected 0")


def decode_body(command_id: int, body: bytes, version: int, *,
                text: Callable[[bytes], str] = _text) -> Pdu:
    """Decode one PDU body (without its header) as sent by a peer speaking ``version``.

    ``text`` decodes the SUBMIT and DELIVER fields that repeat from PDU to PDU (a
    FrameDecoder passes one that remembers them)."""
    layout = _LAYOUT_BY_VERSION.get(version) or layout_for(version)
    match command_id:
        case CommandId.SUBMIT:
            return _decode_submit(body, layout, text)
        case CommandId.SUBMIT_RESP:
            resp = _SUBMIT_RESP_BY_SIZE.get(len(body))
            if resp is None:
                _by_length((LAYOUT_2_0.submit_resp, LAYOUT_3_0.submit_resp), body, "SUBMIT_RESP")
            msg_id, result = resp.unpack(body)
            return SubmitResp(msg_id=msg_id, result=result)
        case CommandId.DELIVER:
            return _decode_deliver(body, layout, text)
        case CommandId.DELIVER_RESP:
            resp = _DELIVER_RESP_BY_SIZE.get(len(body))
            if resp is None:
                _by_length((LAYOUT_2_0.deliver_resp, LAYOUT_3_0.deliver_resp), body, "DELIVER_RESP")
            msg_id, result = resp.unpack(body)
            return DeliverResp(msg_id=msg_id, result=result)
        case CommandId.ACTIVE_TEST:
            _expect_empty(body, "ACTIVE_TEST")
            return ActiveTest()
        case CommandId.ACTIVE_TEST_RESP:
            if not body:  # some peers leave Reserved out
                return ActiveTestResp()
            (reserved,) = _fixed(layout.active_test_resp, body, "ACTIVE_TEST_RESP")
            return ActiveTestResp(reserved=reserved)
        case CommandId.CONNECT:
            source_addr, auth, ver, timestamp = _fixed(layout.connect, body, "CONNECT")
            return Connect(
                source_addr=_text(source_addr),
                authenticator_source=auth,
                version=ver,
                timestamp=timestamp,
            )
        case CommandId.CONNECT_RESP:
            status, auth, ver = _by_length(
                (LAYOUT_2_0.connect_resp, LAYOUT_3_0.connect_resp), body, "CONNECT_RESP"
            )
            return ConnectResp(status=status, authenticator_ismg=auth, version=ver)
        case CommandId.TERMINATE:
            _expect_empty(body, "TERMINATE")
            return Terminate()
        case CommandId.TERMINATE_RESP:
            _expect_empty(body, "TERMINATE_RESP")
            return TerminateResp()
        case CommandId.QUERY:
            time_, query_type, query_code, _reserve = _fixed(layout.query, body, "QUERY")
            return Query(time=_text(time_), query_type=query_type, query_code=_text(query_code))
        case CommandId.QUERY_RESP:
            time_, query_type, query_code, *counters = _fixed(layout.query_resp, body, "QUERY_RESP")
            names = ("mt_tlmsg", "mt_tlusr", "mt_scs", "mt_wt", "mt_fl", "mo_scs", "mo_wt", "mo_fl")
            return QueryResp(
                time=_text(time_),
                query_type=query_type,
                query_code=_text(query_code),
                **dict(zip(names, counters, strict=True)),
            )
        case CommandId.CANCEL:
            (msg_id,) = _fixed(layout.cancel, body, "CANCEL")
            return Cancel(msg_id=msg_id)
        case CommandId.CANCEL_RESP:
            (success_id,) = _by_length(
                (LAYOUT_2_0.cancel_resp, LAYOUT_3_0.cancel_resp), body, "CANCEL_RESP"
            )
            return CancelResp(success_id=success_id)
    raise RemoteProtocolError(f"unknown Command_Id 0x{command_id:08x}")


_KNOWN_COMMANDS = frozenset(int(c) for c in CommandId)


class FrameDecoder:
    """Reassembles frames from bytes in any chunking (sans-IO).

    ``feed(data)`` then iterate (or call :meth:`next_frame`) for ``(Header, pdu)`` pairs.
    ``version`` may be changed between frames (the server learns it from CONNECT, whose
    layout is the same in both versions). A bad frame raises :class:`RemoteProtocolError`
    and the decoder stays broken: the stream can no longer be trusted to be in sync.
    """

    def __init__(self, version: int) -> None:
        layout_for(version)
        self.version = version
        self._buffer = bytearray()
        self._error: RemoteProtocolError | None = None
        self._text = _text_cache()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Add received bytes; checks the next header as soon as it is complete."""
        if self._error is not None:
            raise self._error
        self._buffer += data
        # Never hold more than one frame's worth of garbage: look at the header now.
        if len(self._buffer) >= HEADER_LENGTH:
            self._check_header()

    def _fail(self, reason: str) -> RemoteProtocolError:
        self._error = RemoteProtocolError(reason)
        self._buffer.clear()
        return self._error

    def _check_header(self) -> tuple[int, int, int]:
        total, command_id, sequence_id = HEADER.unpack_from(self._buffer)
        if total < HEADER_LENGTH or total > MAX_FRAME:
            raise self._fail(f"bad Total_Length {total} (allowed {HEADER_LENGTH}..{MAX_FRAME})")
        if command_id not in _KNOWN_COMMANDS:
            raise self._fail(f"unknown Command_Id 0x{command_id:08x}")
        return total, command_id, sequence_id

    def next_frame(self) -> tuple[Header, Pdu] | None:
        """The next complete frame, or None when more bytes are needed."""
        frame = self.next_pdu()
        if frame is None:
            return None
        total, command_id, sequence_id, pdu = frame
        return Header(total_length=total, command_id=command_id, sequence_id=sequence_id), pdu

    def next_pdu(self) -> tuple[int, int, int, Pdu] | None:
        """:meth:`next_frame` as a plain tuple ``(total_length, command_id, sequence_id, pdu)``,
        with no Header built: the per-frame path of the connection."""
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        if len(buffer) < HEADER_LENGTH:
            return None
        total, command_id, sequence_id = HEADER.unpack_from(buffer)
        if total < HEADER_LENGTH or total > MAX_FRAME or command_id not in _KNOWN_COMMANDS:
            self._check_header()  # raises, saying which
        if len(buffer) < total:
            return None
        body = bytes(buffer[HEADER_LENGTH:total])
        del buffer[:total]
        try:
            pdu = decode_body(command_id, body, self.version, text=self._text)
        except RemoteProtocolError as exc:
            raise self._fail(
                f"{CommandId(command_id).name} seq={sequence_id}: {exc.reason}"
            ) from None
        return total, command_id, sequence_id, pdu

    def __iter__(self) -> Iterator[tuple[Header, Pdu]]:
        while (frame := self.next_frame()) is not None:
            yield frame
