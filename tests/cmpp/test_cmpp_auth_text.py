"""CMPP authenticators, Msg_Id packing and Msg_Fmt text functions."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cmpp.auth import (
    authenticator_ismg,
    authenticator_source,
    timestamp,
    timestamp_text,
    verify_authenticator_ismg,
    verify_authenticator_source,
)
from gateway.cmpp.errors import LocalProtocolError
from gateway.cmpp.pdus import MsgFmt, MsgId, decode_text, encode_text


def test_authenticator_source_follows_the_spec_formula():
    # MD5("901234" + 9 x 00 + "s3cret" + "1123092000")
    data = b"901234" + bytes(9) + b"s3cret" + b"1123092000"
    expected = hashlib.md5(data).digest()
    assert authenticator_source("901234", "s3cret", 1123092000) == expected
    assert authenticator_source("901234", b"s3cret", 1123092000) == expected
    assert verify_authenticator_source(expected, "901234", "s3cret", 1123092000)
    assert not verify_authenticator_source(expected, "901234", "wrong", 1123092000)
    assert not verify_authenticator_source(expected, "901234", "s3cret", 1123092001)


def test_timestamp_is_zero_padded_to_ten_digits():
    # January: MMDDHHMMSS = 0102030405 -> the number 102030405
    assert timestamp(1, 2, 3, 4, 5) == 102030405
    assert timestamp_text(102030405) == "0102030405"
    data = b"901234" + bytes(9) + b"k" + b"0102030405"
    assert authenticator_source("901234", "k", 102030405) == hashlib.md5(data).digest()
    with pytest.raises(LocalProtocolError, match="month"):
        timestamp(13, 1, 0, 0, 0)


def test_authenticator_ismg_widths():
    src = bytes(range(16))
    one = hashlib.md5(b"\x00" + src + b"s3cret").digest()
    four = hashlib.md5(b"\x00\x00\x00\x00" + src + b"s3cret").digest()
    assert authenticator_ismg(0, src, "s3cret") == one
    assert authenticator_ismg(0, src, "s3cret", status_width=4) == four
    # 3.0: accept the spec's 4-byte hashing and the 1-byte variant
    assert verify_authenticator_ismg(four, 0, src, "s3cret", major=3)
    assert verify_authenticator_ismg(one, 0, src, "s3cret", major=3)
    # 2.0: 1 byte only
    assert verify_authenticator_ismg(one, 0, src, "s3cret", major=2)
    assert not verify_authenticator_ismg(four, 0, src, "s3cret", major=2)
    assert not verify_authenticator_ismg(one, 0, src, "other", major=3)
    assert not verify_authenticator_ismg(one, 3, src, "s3cret", major=3)


def test_msg_id_layout_by_hand():
    # month 11, day 23, hour 9, minute 20, second 5, gateway 901234, sequence 1
    value = (
        (11 << 60) | (23 << 55) | (9 << 50) | (20 << 44) | (5 << 38) | (901234 << 16) | 1
    )
    parts = MsgId(month=11, day=23, hour=9, minute=20, second=5, gateway=901234, sequence=1)
    assert parts.to_int() == value
    assert MsgId.from_int(value) == parts
    assert str(parts) == "1123092005-0901234-00001"
    assert MsgId.from_int((1 << 64) - 1).sequence == 0xFFFF
    with pytest.raises(LocalProtocolError, match="gateway"):
        MsgId(month=1, day=1, hour=0, minute=0, second=0, gateway=1 << 22, sequence=0).to_int()
    with pytest.raises(LocalProtocolError):
        MsgId.from_int(1 << 64)


@settings(max_examples=200)
@given(st.integers(0, (1 << 64) - 1))
def test_msg_id_round_trip(value):
    assert MsgId.from_int(value).to_int() == value


def test_text_helpers_vectors():
    assert encode_text("hi", MsgFmt.ASCII) == b"hi"
    assert encode_text("你好", MsgFmt.UCS2) == bytes.fromhex("4f60597d")
    assert encode_text("你好", MsgFmt.GBK) == bytes.fromhex("c4e3bac3")
    assert encode_text("😀", MsgFmt.UCS2) == bytes.fromhex("d83dde00")
    assert decode_text(bytes.fromhex("d83dde00"), MsgFmt.UCS2) == "😀"
    assert decode_text(bytes.fromhex("c4e3bac3"), MsgFmt.GBK) == "你好"
    assert decode_text(b"\x00\xff", MsgFmt.BINARY) == "\x00\xff"
    assert decode_text(bytes.fromhex("4f6059"), MsgFmt.UCS2) == "你\ufffd"
    assert decode_text(b"a\xffb", MsgFmt.ASCII) == "a\ufffdb"
    assert decode_text(b"ab", 99) == "ab"
    with pytest.raises(LocalProtocolError, match="not encodable"):
        encode_text("你", MsgFmt.ASCII)
    with pytest.raises(LocalProtocolError, match="does not carry text"):
        encode_text("x", MsgFmt.BINARY)


@settings(max_examples=200)
@given(st.text(), st.sampled_from([MsgFmt.UCS2, MsgFmt.GBK]))
def test_text_round_trip(text, fmt):
    try:
        raw = encode_text(text, fmt)
    except LocalProtocolError:
        # lone surrogates cannot be encoded
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in text)
        return
    assert decode_text(raw, fmt) == text


@settings(max_examples=200)
@given(st.binary(max_size=200), st.integers(0, 255))
def test_decode_text_never_raises(raw, fmt):
    assert isinstance(decode_text(raw, fmt), str)


@settings(max_examples=100)
@given(
    st.integers(0, 15), st.integers(0, 31), st.integers(0, 31), st.integers(0, 63),
    st.integers(0, 63), st.integers(0, (1 << 22) - 1), st.integers(0, 0xFFFF),
)
def test_msg_id_packing_matches_the_field_table(month, day, hour, minute, second, gateway, sequence):
    """to_int() and from_int() as one integer expression each agree with the spec's field
    table walked bit by bit (cmpp.md "Msg_Id")."""
    from gateway.cmpp.pdus import _MSG_ID_FIELDS

    parts = MsgId(month=month, day=day, hour=hour, minute=minute, second=second,
                  gateway=gateway, sequence=sequence)
    expected = 0
    for name, bits in _MSG_ID_FIELDS:
        expected = (expected << bits) | getattr(parts, name)
    assert parts.to_int() == expected
    assert MsgId.from_int(expected) == parts
