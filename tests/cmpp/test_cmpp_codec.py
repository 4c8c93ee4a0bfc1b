"""CMPP codec: hand-written vectors from the spec, round trips, chunking, garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cmpp.codec import (
    MAX_FRAME,
    FrameDecoder,
    decode_status_report,
    encode,
    encode_status_report,
)
from gateway.cmpp.errors import LocalProtocolError, RemoteProtocolError
from gateway.cmpp.pdus import (
    ActiveTest,
    ActiveTestResp,
    Cancel,
    CancelResp,
    Connect,
    ConnectResp,
    Deliver,
    DeliverResp,
    Query,
    QueryResp,
    StatusReportBody,
    Submit,
    SubmitResp,
    Terminate,
    TerminateResp,
)

V2, V3 = 0x20, 0x30
H = bytes.fromhex


def pad(text: str, width: int) -> bytes:
    raw = text.encode("ascii")
    assert len(raw) <= width
    return raw + b"\x00" * (width - len(raw))


def decode_one(data: bytes, version: int):
    dec = FrameDecoder(version)
    dec.feed(data)
    frames = list(dec)
    assert len(frames) == 1
    assert dec.buffered == 0
    return frames[0]


# --- vectors written from cmpp.md ----------------------------------------------------------


def test_active_test_vector():
    wire = H("0000000c 00000008 00000001")
    assert encode(ActiveTest(), 1, V3) == wire
    header, pdu = decode_one(wire, V3)
    assert (header.total_length, header.command_id, header.sequence_id) == (12, 8, 1)
    assert pdu == ActiveTest()


def test_active_test_resp_vector_and_empty_variant():
    wire = H("0000000d 80000008 00000007 00")
    assert encode(ActiveTestResp(), 7, V2) == wire
    assert decode_one(wire, V2)[1] == ActiveTestResp(reserved=0)
    # Some peers leave the Reserved byte out; accept it.
    assert decode_one(H("0000000c 80000008 00000007"), V2)[1] == ActiveTestResp()


def test_terminate_vectors():
    assert encode(Terminate(), 2, V2) == H("0000000c 00000002 00000002")
    assert encode(TerminateResp(), 2, V3) == H("0000000c 80000002 00000002")
    assert decode_one(H("0000000c 80000002 00000002"), V3)[1] == TerminateResp()


def test_connect_vector():
    auth = bytes(range(16))
    # Total_Length 39 = 12 + 6 + 16 + 1 + 4; Timestamp 1123092000 = 0x42F10620
    wire = (
        H("00000027 00000001 00000005")
        + b"901234"
        + auth
        + H("30")
        + H("42f10620")
    )
    pdu = Connect(source_addr="901234", authenticator_source=auth, version=0x30, timestamp=1123092000)
    assert encode(pdu, 5, V3) == wire
    assert decode_one(wire, V2)[1] == pdu  # CONNECT has the same layout in both versions


def test_connect_resp_vectors_both_widths():
    auth = b"\xaa" * 16
    v2_wire = H("0000001e 80000001 00000005") + H("03") + auth + H("20")
    v3_wire = H("00000021 80000001 00000005") + H("00000003") + auth + H("30")
    assert encode(ConnectResp(status=3, authenticator_ismg=auth, version=0x20), 5, V2) == v2_wire
    assert encode(ConnectResp(status=3, authenticator_ismg=auth, version=0x30), 5, V3) == v3_wire
    # Decoded by length, whatever version we expected: an old ISMG may answer a 3.0 login in 2.0.
    assert decode_one(v2_wire, V3)[1] == ConnectResp(status=3, authenticator_ismg=auth, version=0x20)
    assert decode_one(v3_wire, V2)[1] == ConnectResp(status=3, authenticator_ismg=auth, version=0x30)


def _submit_fields() -> dict:
    return dict(
        msg_id=0,
        pk_total=1,
        pk_number=1,
        registered_delivery=1,
        msg_level=0,
        service_id="MTEST",
        fee_usertype=2,
        fee_terminal_id="",
        tp_pid=0,
        tp_udhi=0,
        msg_fmt=0,
        msg_src="901234",
        fee_type="01",
        fee_code="000000",
        valid_time="",
        at_time="",
        src_id="10658888",
        dest_terminal_ids=("13800138000",),
        msg_content=b"hi",
    )


def test_submit_2_0_vector():
    # body 117 + 21 + 1 + 2 + 8 = 149; total 161 = 0xa1
    wire = (
        H("000000a1 00000004 0000000a")
        + H("0000000000000000")  # Msg_Id
        + H("01 01 01 00")  # Pk_total Pk_number Registered_Delivery Msg_level
        + pad("MTEST", 10)
        + H("02")  # Fee_UserType
        + pad("", 21)  # Fee_terminal_Id
        + H("00 00 00")  # TP_pId TP_udhi Msg_Fmt
        + b"901234"
        + b"01"
        + b"000000"
        + pad("", 17)
        + pad("", 17)
        + pad("10658888", 21)
        + H("01")
        + pad("13800138000", 21)
        + H("02")
        + b"hi"
        + pad("", 8)
    )
    pdu = Submit(**_submit_fields())
    assert encode(pdu, 10, V2) == wire
    assert decode_one(wire, V2)[1] == pdu


def test_submit_3_0_vector():
    # body 129 + 32 + 1 + 1 + 2 + 20 = 185; total 197 = 0xc5
    wire = (
        H("000000c5 00000004 0000000a")
        + H("0000000000000000")
        + H("01 01 01 00")
        + pad("MTEST", 10)
        + H("02")
        + pad("", 32)  # Fee_terminal_Id
        + H("00")  # Fee_terminal_type
        + H("00 00 08")  # TP_pId TP_udhi Msg_Fmt (UCS2)
        + b"901234"
        + b"01"
        + b"000000"
        + pad("", 17)
        + pad("", 17)
        + pad("10658888", 21)
        + H("01")
        + pad("13800138000", 32)
        + H("00")  # Dest_terminal_type
        + H("02")
        + H("4f60")  # 你 in UCS2
        + pad("LINK1", 20)
    )
    pdu = Submit(**(_submit_fields() | {"msg_fmt": 8, "msg_content": H("4f60"), "link_id": "LINK1"}))
    assert encode(pdu, 10, V3) == wire
    assert decode_one(wire, V3)[1] == pdu


def test_submit_resp_vectors():
    v2 = H("00000015 80000004 0000000a 0123456789abcdef 08")
    v3 = H("00000018 80000004 0000000a 0123456789abcdef 00000008")
    pdu = SubmitResp(msg_id=0x0123456789ABCDEF, result=8)
    assert encode(pdu, 10, V2) == v2
    assert encode(pdu, 10, V3) == v3
    assert decode_one(v2, V2)[1] == pdu
    assert decode_one(v3, V3)[1] == pdu


def test_deliver_resp_vectors():
    v2 = H("00000015 80000005 00000003 0000000000000001 00")
    v3 = H("00000018 80000005 00000003 0000000000000001 00000000")
    assert encode(DeliverResp(msg_id=1), 3, V2) == v2
    assert encode(DeliverResp(msg_id=1), 3, V3) == v3
    assert decode_one(v3, V3)[1] == DeliverResp(msg_id=1, result=0)


REPORT_2_0 = (
    H("0123456789abcdef")
    + b"DELIVRD"
    + b"2611230920"
    + b"2611230921"
    + pad("13800138000", 21)
    + H("0000002a")
)
REPORT_3_0 = (
    H("0123456789abcdef")
    + b"DELIVRD"
    + b"2611230920"
    + b"2611230921"
    + pad("13800138000", 32)
    + H("0000002a")
)
REPORT = StatusReportBody(
    msg_id=0x0123456789ABCDEF,
    stat="DELIVRD",
    submit_time="2611230920",
    done_time="2611230921",
    dest_terminal_id="13800138000",
    smsc_sequence=42,
)


def test_status_report_bodies():
    assert len(REPORT_2_0) == 60 and len(REPORT_3_0) == 71
    assert encode_status_report(REPORT, V2) == REPORT_2_0
    assert encode_status_report(REPORT, V3) == REPORT_3_0
    assert decode_status_report(REPORT_2_0) == REPORT
    assert decode_status_report(REPORT_3_0) == REPORT
    with pytest.raises(RemoteProtocolError, match="59 bytes"):
        decode_status_report(REPORT_2_0[:-1])


def test_deliver_2_0_status_report_vector():
    # body 65 + 60 + 8 = 133; total 145 = 0x91
    wire = (
        H("00000091 00000005 00000009")
        + H("1111111111111111")
        + pad("10658888", 21)
        + pad("MTEST", 10)
        + H("00 00 00")
        + pad("13800138000", 21)
        + H("01")  # Registered_Delivery: status report
        + H("3c")  # Msg_Length 60
        + REPORT_2_0
        + pad("", 8)
    )
    header, pdu = decode_one(wire, V2)
    assert header.total_length == 145 and header.sequence_id == 9
    assert pdu.registered_delivery == 1
    assert decode_status_report(pdu.msg_content) == REPORT
    assert encode(pdu, 9, V2) == wire


def test_deliver_3_0_mo_vector_and_2_0_report_on_3_0_link():
    # body 77 + 1 + 20 = 98; total 110 = 0x6e
    wire = (
        H("0000006e 00000005 00000001")
        + H("0000000000000002")
        + pad("10658888001", 21)
        + pad("", 10)
        + H("00 00 00")
        + pad("13900000001", 32)
        + H("00")  # Src_terminal_type
        + H("00")  # Registered_Delivery: MO
        + H("01")
        + b"1"
        + pad("", 20)
    )
    pdu = Deliver(
        msg_id=2, dest_id="10658888001", src_terminal_id="13900000001", msg_content=b"1"
    )
    assert encode(pdu, 1, V3) == wire
    assert decode_one(wire, V3)[1] == pdu
    # A 60-byte (2.0 layout) report on a 3.0 link is accepted.
    report_deliver = Deliver(
        msg_id=3, dest_id="10658888", src_terminal_id="13800138000",
        registered_delivery=1, msg_content=REPORT_2_0,
    )
    _, decoded = decode_one(encode(report_deliver, 4, V3), V3)
    assert decode_status_report(decoded.msg_content) == REPORT


def test_query_and_cancel_vectors():
    q = H("00000027 00000006 00000001") + b"20261123" + H("00") + pad("", 10) + pad("", 8)
    assert encode(Query(time="20261123"), 1, V2) == q
    assert decode_one(q, V2)[1] == Query(time="20261123")
    qr = QueryResp(time="20261123", mt_tlmsg=5, mo_fl=1)
    assert len(encode(qr, 1, V3)) == 12 + 8 + 1 + 10 + 8 * 4
    assert decode_one(encode(qr, 1, V3), V3)[1] == qr
    assert encode(Cancel(msg_id=1), 1, V2) == H("00000014 00000007 00000001 0000000000000001")
    assert encode(CancelResp(success_id=1), 1, V2) == H("0000000d 80000007 00000001 01")
    assert encode(CancelResp(success_id=1), 1, V3) == H("00000010 80000007 00000001 00000001")
    assert decode_one(H("0000000d 80000007 00000001 01"), V3)[1] == CancelResp(success_id=1)


def test_version_2_1_uses_2_0_layout():
    pdu = Submit(**_submit_fields())
    assert encode(pdu, 1, 0x21) == encode(pdu, 1, V2)
    assert decode_one(encode(pdu, 1, V2), 0x21)[1] == pdu


# --- strict sending ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"dest_terminal_ids": ()}, "destinations"),
        ({"dest_terminal_ids": ("1",) * 101}, "destinations"),
        ({"msg_content": b"x" * 141}, "exceeds 140"),
        ({"service_id": "X" * 11}, "service_id"),
        ({"src_id": "号码"}, "ASCII"),
        ({"pk_number": 3, "pk_total": 2}, "Pk_number"),
        ({"msg_fmt": 256}, "msg_fmt"),
    ],
)
def test_encode_rejects_bad_submit(change, reason):
    with pytest.raises(LocalProtocolError, match=reason):
        encode(Submit(**(_submit_fields() | change)), 1, V3)


def test_encode_rejects_bad_version_and_sequence():
    with pytest.raises(LocalProtocolError, match="version"):
        encode(ActiveTest(), 1, 0x40)
    with pytest.raises(LocalProtocolError, match="sequence_id"):
        encode(ActiveTest(), 1 << 32, V3)
    with pytest.raises(LocalProtocolError, match="status"):
        encode(ConnectResp(status=256), 1, V2)


# --- decoder errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wire, reason",
    [
        (H("0000000b 00000008 00000001"), "Total_Length 11"),
        (H("00001001 00000008 00000001"), "Total_Length 4097"),
        (H("0000000c 00000009 00000001"), "unknown Command_Id 0x00000009"),
        (H("0000000d 00000008 00000001 00"), "over-long ACTIVE_TEST"),
        (H("00000014 80000004 00000001 0000000000000001"), "SUBMIT_RESP body length 8"),
        (H("0000000f 00000001 00000001 393031"), "truncated CONNECT"),
    ],
)
def test_decoder_rejects(wire, reason):
    dec = FrameDecoder(V3)
    with pytest.raises(RemoteProtocolError, match=reason):
        dec.feed(wire)
        dec.next_frame()
    # The decoder stays broken: the stream is out of sync.
    with pytest.raises(RemoteProtocolError):
        dec.feed(encode(ActiveTest(), 2, V3))


def test_bad_header_detected_before_body_arrives():
    dec = FrameDecoder(V2)
    with pytest.raises(RemoteProtocolError, match="Total_Length"):
        dec.feed(H("7fffffff 00000004 00000001"))


def test_submit_length_mismatch_truncated_and_overlong():
    good = encode(Submit(**_submit_fields()), 1, V3)
    body = good[12:]
    for cut, kind in ((body[:-1], "truncated"), (body + b"\x00", "over-long"), (body[:50], "truncated")):
        frame = (12 + len(cut)).to_bytes(4, "big") + good[4:12] + cut
        dec = FrameDecoder(V3)
        dec.feed(frame)
        with pytest.raises(RemoteProtocolError, match=kind):
            dec.next_frame()


def test_deliver_report_with_bad_length_is_rejected():
    bad = Deliver(
        msg_id=1, dest_id="1", src_terminal_id="2", registered_delivery=1, msg_content=b"x" * 59
    )
    dec = FrameDecoder(V2)
    dec.feed(encode(bad, 1, V2))
    with pytest.raises(RemoteProtocolError, match="status report of 59 bytes"):
        dec.next_frame()


def test_partial_frames_wait_for_more():
    wire = encode(ActiveTestResp(), 3, V3)
    dec = FrameDecoder(V3)
    dec.feed(wire[:5])
    assert dec.next_frame() is None
    dec.feed(wire[5:12])
    assert dec.next_frame() is None
    dec.feed(wire[12:])
    header, pdu = dec.next_frame()
    assert header.sequence_id == 3 and pdu == ActiveTestResp()


# --- properties ----------------------------------------------------------------------------

ascii_field = lambda n: st.text(  # noqa: E731
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=n
)
u8 = st.integers(0, 255)
u64 = st.integers(0, (1 << 64) - 1)


@st.composite
def submits(draw, version: int):
    width = 21 if version == V2 else 32
    total = draw(st.integers(1, 255))
    fields = dict(
        msg_id=draw(u64),
        pk_total=total,
        pk_number=draw(st.integers(1, total)),
        registered_delivery=draw(u8),
        msg_level=draw(u8),
        service_id=draw(ascii_field(10)),
        fee_usertype=draw(u8),
        fee_terminal_id=draw(ascii_field(width)),
        tp_pid=draw(u8),
        tp_udhi=draw(u8),
        msg_fmt=draw(u8),
        msg_src=draw(ascii_field(6)),
        fee_type=draw(ascii_field(2)),
        fee_code=draw(ascii_field(6)),
        valid_time=draw(ascii_field(17)),
        at_time=draw(ascii_field(17)),
        src_id=draw(ascii_field(21)),
        dest_terminal_ids=tuple(draw(st.lists(ascii_field(width), min_size=1, max_size=100))),
        msg_content=draw(st.binary(max_size=140)),
    )
    if version == V3:
        fields |= dict(
            fee_terminal_type=draw(u8),
            dest_terminal_type=draw(u8),
            link_id=draw(ascii_field(20)),
        )
    return Submit(**fields)


@st.composite
def delivers(draw, version: int):
    width = 21 if version == V2 else 32
    report = draw(st.booleans())
    if report:
        report_version = draw(st.sampled_from([V2, version]))  # 2.0 reports occur on 3.0 links
        content = encode_status_report(
            StatusReportBody(
                msg_id=draw(u64),
                stat=draw(ascii_field(7)),
                submit_time=draw(ascii_field(10)),
                done_time=draw(ascii_field(10)),
                dest_terminal_id=draw(ascii_field(21 if report_version == V2 else 32)),
                smsc_sequence=draw(st.integers(0, 2**32 - 1)),
            ),
            report_version,
        )
    else:
        content = draw(st.binary(max_size=255))
    return Deliver(
        msg_id=draw(u64),
        dest_id=draw(ascii_field(21)),
        service_id=draw(ascii_field(10)),
        tp_pid=draw(u8),
        tp_udhi=draw(u8),
        msg_fmt=draw(u8),
        src_terminal_id=draw(ascii_field(width)),
        src_terminal_type=draw(u8) if version == V3 else 0,
        registered_delivery=1 if report else 0,
        msg_content=content,
        link_id=draw(ascii_field(20)) if version == V3 else "",
    )


def any_pdu(version: int):
    status = u8 if version == V2 else st.integers(0, 2**32 - 1)
    return st.one_of(
        submits(version),
        delivers(version),
        st.builds(SubmitResp, msg_id=u64, result=status),
        st.builds(DeliverResp, msg_id=u64, result=status),
        st.builds(ActiveTest),
        st.builds(ActiveTestResp, reserved=u8),
        st.builds(Terminate),
        st.builds(TerminateResp),
        st.builds(Cancel, msg_id=u64),
        st.builds(CancelResp, success_id=status),
        st.builds(
            ConnectResp,
            status=status,
            authenticator_ismg=st.binary(min_size=16, max_size=16),
            version=u8,
        ),
        st.builds(
            Connect,
            source_addr=ascii_field(6),
            authenticator_source=st.binary(min_size=16, max_size=16),
            version=u8,
            timestamp=st.integers(0, 2**32 - 1),
        ),
        st.builds(Query, time=ascii_field(8), query_type=u8, query_code=ascii_field(10)),
    )


@pytest.mark.parametrize("version", [V2, V3])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_round_trip_any_chunking(version, data):
    pdus = data.draw(st.lists(any_pdu(version), min_size=1, max_size=5))
    seqs = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=len(pdus), max_size=len(pdus)))
    stream = b"".join(encode(p, s, version) for p, s in zip(pdus, seqs))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    dec = FrameDecoder(version)
    got = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        dec.feed(stream[prev:cut])
        prev = cut
        got.extend(dec)
    assert [p for _, p in got] == pdus
    assert [h.sequence_id for h, _ in got] == seqs
    assert dec.buffered == 0


@pytest.mark.parametrize("version", [V2, V3])
@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=400))
def test_garbage_raises_only_remote_protocol_error(version, garbage):
    dec = FrameDecoder(version)
    try:
        dec.feed(garbage)
        frames = list(dec)
    except RemoteProtocolError as exc:
        assert exc.reason
    else:
        assert all(h.total_length <= MAX_FRAME for h, _ in frames)


@pytest.mark.parametrize("version", [V2, V3])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_frames_raise_only_remote_protocol_error(version, data):
    wire = bytearray(encode(data.draw(any_pdu(version)), 1, version))
    for _ in range(data.draw(st.integers(1, 4))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(u8)
    dec = FrameDecoder(version)
    try:
        dec.feed(bytes(wire))
        list(dec)
    except RemoteProtocolError as exc:
        assert exc.reason


@pytest.mark.parametrize("version", [V2, V3])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_truncated_body_with_matching_length_raises(version, data):
    pdu = data.draw(st.one_of(submits(version), delivers(version)))
    wire = encode(pdu, 1, version)
    cut = data.draw(st.integers(1, len(wire) - 12))
    body = wire[12 : len(wire) - cut]
    frame = (12 + len(body)).to_bytes(4, "big") + wire[4:12] + body
    dec = FrameDecoder(version)
    dec.feed(frame)
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


# --- whole-frame fast paths against the general path ---------------------------------------------

from msgspec.structs import replace  # noqa: E402

from gateway.cmpp.codec import (  # noqa: E402
    encode_general,
    encode_status_report_general,
    status_report_fields,
)


@st.composite
def steady_pdus(draw, version: int):
    """The PDUs the fast paths take: SUBMIT to one number, DELIVER, and their responses."""
    status = u8 if version == V2 else st.integers(0, 2**32 - 1)
    kind = draw(st.sampled_from(["submit", "deliver", "submit_resp", "deliver_resp"]))
    if kind == "submit":
        pdu = draw(submits(version))
        return replace(pdu, dest_terminal_ids=pdu.dest_terminal_ids[:1])
    if kind == "deliver":
        return draw(delivers(version))
    cls = SubmitResp if kind == "submit_resp" else DeliverResp
    return cls(msg_id=draw(u64), result=draw(status))


@pytest.mark.parametrize("version", [V2, 0x21, V3])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_fast_encode_matches_general_and_round_trips(version, data):
    pdu = data.draw(steady_pdus(V2 if version == 0x21 else version))
    seq = data.draw(st.integers(0, 2**32 - 1))
    wire = encode(pdu, seq, version)
    assert wire == encode_general(pdu, seq, version)
    dec = FrameDecoder(version)
    dec.feed(wire)
    total, command_id, sequence_id, decoded = dec.next_pdu()
    assert (total, sequence_id, decoded) == (len(wire), seq, pdu)
    assert command_id == int.from_bytes(wire[4:8], "big")


_BAD_FIELDS = {
    "service_id": ["X" * 11, "服务"],
    "src_id": ["1" * 22, "号码"],
    "fee_code": ["0" * 7],
    "msg_src": ["9012345", "é"],
    "valid_time": ["1" * 18],
    "pk_total": [256, -1],
    "registered_delivery": [256, -1],
    "msg_fmt": [256],
    "msg_id": [1 << 64, -1],
    "msg_content": [b"x" * 141],
    "dest_terminal_ids": [("1" * 33,), ("号码",)],
}


@pytest.mark.parametrize("version", [V2, V3])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_fast_encode_errors_are_the_general_paths(version, data):
    """A bad field makes the fast path give way: the same LocalProtocolError, naming it."""
    pdu = data.draw(submits(version))
    pdu = replace(pdu, dest_terminal_ids=pdu.dest_terminal_ids[:1])
    name = data.draw(st.sampled_from(sorted(_BAD_FIELDS)))
    bad = replace(pdu, **{name: data.draw(st.sampled_from(_BAD_FIELDS[name]))})
    with pytest.raises(LocalProtocolError) as general:
        encode_general(bad, 1, version)
    with pytest.raises(LocalProtocolError) as fast:
        encode(bad, 1, version)
    assert fast.value.reason == general.value.reason


def test_fast_encode_errors_name_the_field():
    base = Submit(**_submit_fields())
    with pytest.raises(LocalProtocolError, match="registered_delivery=256"):
        encode(replace(base, registered_delivery=256), 1, V3)
    with pytest.raises(LocalProtocolError, match="sequence_id"):
        encode(base, 1 << 32, V3)
    with pytest.raises(LocalProtocolError, match="result"):
        encode(SubmitResp(msg_id=1, result=256), 1, V2)
    with pytest.raises(LocalProtocolError, match="ASCII"):
        encode(Deliver(msg_id=1, dest_id="服务", src_terminal_id="13800138000"), 1, V3)


def test_two_oh_link_id_is_not_sent_whatever_it_holds():
    """2.0 has no LinkID: a long one is ignored there as before (the general path's rule)."""
    pdu = replace(Submit(**_submit_fields()), link_id="L" * 30)
    assert encode(pdu, 5, V2) == encode_general(pdu, 5, V2)
    with pytest.raises(LocalProtocolError, match="link_id"):
        encode(pdu, 5, V3)


@settings(max_examples=100, deadline=None)
@given(
    version=st.sampled_from([V2, V3]),
    msg_id=u64,
    stat=ascii_field(7),
    dest=ascii_field(21),
    smsc=st.integers(0, 2**32 - 1),
)
def test_status_report_fields_match_decode(version, msg_id, stat, dest, smsc):
    body = StatusReportBody(msg_id=msg_id, stat=stat, submit_time="2611231400",
                            done_time="2611231401", dest_terminal_id=dest, smsc_sequence=smsc)
    content = encode_status_report(body, version)
    assert content == encode_status_report_general(body, version)
    assert status_report_fields(content) == (msg_id, stat, "2611231400", "2611231401", dest, smsc)
    assert decode_status_report(content) == body
    with pytest.raises(RemoteProtocolError, match="status report of 59 bytes"):
        status_report_fields(content[:59])


def test_decoder_text_cache_past_its_size_decodes_every_field_exactly():
    """The decoder remembers repeated fields; past TEXT_CACHE_SIZE distinct ones it starts
    afresh, and every PDU still decodes to exactly what was sent."""
    from gateway.cmpp.codec import TEXT_CACHE_SIZE, decode_body

    base = Submit(**_submit_fields())
    pdus = [replace(base, src_id=f"1065{i:06d}", service_id=f"S{i % 7}",
                    dest_terminal_ids=(f"138{i:08d}",))
            for i in range(2 * TEXT_CACHE_SIZE + 5)]
    dec = FrameDecoder(V3)
    dec.feed(b"".join(encode(p, i + 1, V3) for i, p in enumerate(pdus)))
    assert [pdu for _header, pdu in dec] == pdus
    # Junk bytes in a repeated field decode as the uncached path does, every time.
    body = encode(Deliver(msg_id=1, dest_id="10658888", src_terminal_id="13800138000"), 1, V3)[12:]
    garbled = body[:8] + b"\xff\xfe658888" + body[16:]
    for _ in range(3):
        cached = decode_body(5, garbled, V3, text=dec._text)
        assert cached == decode_body(5, garbled, V3)
        assert cached.dest_id == "\ufffd\ufffd658888"


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"stat": "DELIVRD!"}, "stat"),
        ({"dest_terminal_id": "号码"}, "ASCII"),
        ({"msg_id": 1 << 64}, "msg_id"),
        ({"smsc_sequence": -1}, "smsc_sequence"),
    ],
)
def test_status_report_encode_errors_name_the_field(change, reason):
    body = StatusReportBody(msg_id=1, stat="DELIVRD", submit_time="2611231400",
                            done_time="2611231401", dest_terminal_id="13800138000")
    with pytest.raises(LocalProtocolError, match=reason):
        encode_status_report(replace(body, **change), V3)
