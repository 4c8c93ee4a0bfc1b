"""Long-message splitting and MO reassembly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cmpp.errors import LocalProtocolError, RemoteProtocolError
from gateway.cmpp.longsms import (
    Part,
    Reassembler,
    parse_concat_udh,
    split_long,
)
from gateway.cmpp.pdus import MsgFmt, decode_text


def test_single_part_limits():
    assert split_long("你" * 70, MsgFmt.UCS2, 7) == [Part(0, 1, 1, "你".encode("utf-16-be") * 70)]
    assert split_long("a" * 140, MsgFmt.ASCII, 7) == [Part(0, 1, 1, b"a" * 140)]
    assert split_long(b"\x01" * 140, MsgFmt.BINARY, 7) == [Part(0, 1, 1, b"\x01" * 140)]


def test_71_ucs2_chars_make_two_parts_of_67_and_4():
    parts = split_long("你" * 71, MsgFmt.UCS2, 0x2A)
    assert [(p.udhi, p.pk_total, p.pk_number) for p in parts] == [(1, 2, 1), (1, 2, 2)]
    assert parts[0].content[:6] == bytes.fromhex("0500032a0201")
    assert parts[1].content[:6] == bytes.fromhex("0500032a0202")
    assert parts[0].content[6:] == bytes.fromhex("4f60") * 67
    assert parts[1].content[6:] == bytes.fromhex("4f60") * 4
    assert all(len(p.content) <= 140 for p in parts)


def test_surrogate_pair_never_split():
    # 66 BMP chars (132 bytes) then an emoji (4 bytes): the emoji must move to part 2.
    text = "a" * 66 + "😀" + "b" * 10
    parts = split_long(text, MsgFmt.UCS2, 1)
    assert len(parts[0].content) == 6 + 132
    assert parts[1].content[6:10] == bytes.fromhex("d83dde00")


def test_gbk_and_ascii_and_binary_split_on_134_bytes():
    parts = split_long("x" * 300, MsgFmt.ASCII, 9)
    assert [len(p.content) - 6 for p in parts] == [134, 134, 32]
    parts = split_long("中" * 100, MsgFmt.GBK, 9)  # 2 bytes each, 200 bytes
    assert [len(p.content) - 6 for p in parts] == [134, 66]
    parts = split_long(bytes(range(200)), MsgFmt.BINARY, 9)
    assert b"".join(p.content[6:] for p in parts) == bytes(range(200))


def test_split_refuses_bad_input():
    with pytest.raises(LocalProtocolError, match="reference"):
        split_long("x", MsgFmt.ASCII, 256)
    with pytest.raises(LocalProtocolError, match="parts"):
        split_long("x" * (134 * 256), MsgFmt.ASCII, 0)
    with pytest.raises(LocalProtocolError):
        split_long("你", MsgFmt.ASCII, 0)


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=600), st.integers(0, 255))
def test_split_then_reassemble_round_trip(text, ref):
    parts = split_long(text, MsgFmt.UCS2, ref)
    assert all(len(p.content) <= 140 for p in parts)
    assert all(p.pk_total == len(parts) for p in parts)
    r = Reassembler(timeout=60)
    results = [r.add("139", p.content, udhi=bool(p.udhi), now=0.0) for p in reversed(parts)]
    done = [x for x in results if x is not None]
    assert len(done) == 1
    assert decode_text(done[0].content, MsgFmt.UCS2) == text
    assert len(r) == 0


def test_parse_udh_forms():
    assert parse_concat_udh(bytes.fromhex("050003010201") + b"x") == (1, 2, 1, b"x")
    # 16-bit reference form 06 08 04 ref ref total seq
    assert parse_concat_udh(bytes.fromhex("06080412340302") + b"y") == (0x1234, 3, 2, b"y")
    # a UDH holding only another element: no concatenation
    assert parse_concat_udh(bytes.fromhex("0224000a")) is None
    for bad in ("", "09000301", "0500030102", "050003010203", "050003010000", "0300"):
        with pytest.raises(RemoteProtocolError):
            parse_concat_udh(bytes.fromhex(bad))


def test_reassembler_any_order_duplicates_and_keys():
    r = Reassembler(timeout=30)
    p = lambda ref, total, seq, text: bytes((5, 0, 3, ref, total, seq)) + text  # noqa: E731
    assert r.add("A", p(1, 3, 3, b"c"), udhi=True, now=0) is None
    assert r.add("A", p(1, 3, 1, b"a"), udhi=True, now=1) is None
    assert r.add("A", p(1, 3, 1, b"a"), udhi=True, now=1) is None  # duplicate
    assert r.duplicates == 1
    assert r.add("B", p(1, 3, 2, b"X"), udhi=True, now=2) is None  # other sender, other group
    done = r.add("A", p(1, 3, 2, b"b"), udhi=True, now=3)
    assert done is not None and done.content == b"abc" and done.sender == "A"
    assert done.first_seen == 0 and done.complete
    assert len(r) == 1  # B's group is still pending
    single = r.add("C", b"plain", udhi=False, now=4)
    assert single.content == b"plain" and single.total == 1


def test_reassembler_expiry_returns_partial_groups():
    r = Reassembler(timeout=10)
    r.add("A", bytes.fromhex("050003070301") + b"one", udhi=True, now=0)
    r.add("A", bytes.fromhex("050003070303") + b"three", udhi=True, now=5)
    assert r.next_expiry() == 10
    assert r.expire(9.9) == []
    [partial] = r.expire(10)
    assert not partial.complete and partial.missing == (2,)
    assert partial.content == b"onethree"
    assert len(r) == 0 and r.expired == 1
    # A late part after expiry starts a new group rather than completing the old one.
    assert r.add("A", bytes.fromhex("050003070302") + b"two", udhi=True, now=11) is None


def test_reassembler_is_bounded():
    r = Reassembler(timeout=100, max_groups=2)
    for i in range(3):
        r.add(f"S{i}", bytes((5, 0, 3, i, 2, 1)) + b"p", udhi=True, now=float(i))
    assert len(r) == 2 and r.evicted == 1
    [evicted] = r.take_expired()
    assert evicted.sender == "S0" and evicted.missing == (2,)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=160))
def test_reassembler_garbage_raises_only_remote_protocol_error(raw):
    r = Reassembler(timeout=10)
    try:
        r.add("A", raw, udhi=True, now=0)
    except RemoteProtocolError as exc:
        assert exc.reason
