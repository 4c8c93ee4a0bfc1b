"""GSM 7-bit default alphabet and packing (3GPP TS 23.038 §6.1.2.1, §6.2.1, §6.2.1.1).

Vectors are derived by hand from the spec tables and the packing rule (septet n occupies
bits 7n.. of the little-endian bit stream); the derivations are in the comments.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.modem_pool import gsm7

# --- the alphabet, written out again from TS 23.038 §6.2.1 ---------------------------------

SPEC_POSITIONS = {
    0x00: "@", 0x01: "£", 0x02: "$", 0x03: "¥", 0x04: "è", 0x05: "é", 0x06: "ù", 0x07: "ì",
    0x08: "ò", 0x09: "Ç", 0x0A: "\n", 0x0B: "Ø", 0x0C: "ø", 0x0D: "\r", 0x0E: "Å", 0x0F: "å",
    0x10: "Δ", 0x11: "_", 0x12: "Φ", 0x13: "Γ", 0x14: "Λ", 0x15: "Ω", 0x16: "Π", 0x17: "Ψ",
    0x18: "Σ", 0x19: "Θ", 0x1A: "Ξ", 0x1C: "Æ", 0x1D: "æ", 0x1E: "ß", 0x1F: "É",
    0x20: " ", 0x21: "!", 0x22: '"', 0x23: "#", 0x24: "¤", 0x25: "%", 0x26: "&", 0x27: "'",
    0x28: "(", 0x29: ")", 0x2A: "*", 0x2B: "+", 0x2C: ",", 0x2D: "-", 0x2E: ".", 0x2F: "/",
    0x3A: ":", 0x3B: ";", 0x3C: "<", 0x3D: "=", 0x3E: ">", 0x3F: "?",
    0x40: "¡", 0x5B: "Ä", 0x5C: "Ö", 0x5D: "Ñ", 0x5E: "Ü", 0x5F: "§",
    0x60: "¿", 0x7B: "ä", 0x7C: "ö", 0x7D: "ñ", 0x7E: "ü", 0x7F: "à",
}
SPEC_POSITIONS.update({0x30 + i: str(i) for i in range(10)})
SPEC_POSITIONS.update({0x41 + i: chr(ord("A") + i) for i in range(26)})
SPEC_POSITIONS.update({0x61 + i: chr(ord("a") + i) for i in range(26)})

SPEC_EXTENSION = {
    "\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F,
    "[": 0x3C, "~": 0x3D, "]": 0x3E, "|": 0x40, "€": 0x65,
}

BASE_CHARS = [ch for code, ch in enumerate(gsm7.DEFAULT_ALPHABET) if code != gsm7.ESC]
GSM_CHARS = BASE_CHARS + list(SPEC_EXTENSION)
gsm_text = st.text(alphabet=st.sampled_from(GSM_CHARS), max_size=400)


def test_alphabet_has_128_positions_and_127_characters():
    assert len(gsm7.DEFAULT_ALPHABET) == 128
    assert len(set(BASE_CHARS)) == 127
    assert len(SPEC_POSITIONS) == 127


@pytest.mark.parametrize("code", sorted(SPEC_POSITIONS))
def test_every_position_matches_the_spec_table(code):
    assert gsm7.DEFAULT_ALPHABET[code] == SPEC_POSITIONS[code]


def test_esc_constant():
    assert gsm7.ESC == 0x1B


def test_extension_table_matches_the_spec():
    assert {ch: code for code, ch in gsm7.EXTENSION_TABLE.items()} == SPEC_EXTENSION


@pytest.mark.parametrize("code", [c for c in range(128) if c != 0x1B])
def test_every_base_character_round_trips(code):
    ch = gsm7.DEFAULT_ALPHABET[code]
    assert gsm7.encode(ch) == [code]
    assert gsm7.decode([code]) == ch
    assert gsm7.septet_len(ch) == 1
    assert gsm7.unpack(gsm7.pack([code]), 1) == [code]


@pytest.mark.parametrize(("ch", "code"), sorted(SPEC_EXTENSION.items()))
def test_every_extension_character_takes_escape_and_code(ch, code):
    assert gsm7.encode(ch) == [0x1B, code]
    assert gsm7.decode([0x1B, code]) == ch
    assert gsm7.septet_len(ch) == 2
    assert gsm7.fits(ch)


def test_ascii_characters_that_differ_from_ascii_codes():
    assert gsm7.encode("@$_") == [0x00, 0x02, 0x11]
    assert gsm7.encode("¤¡§¿") == [0x24, 0x40, 0x5F, 0x60]
    greek = [0x10, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A]
    assert gsm7.encode("ΔΦΓΛΩΠΨΣΘΞ") == greek


# --- packing, by hand ----------------------------------------------------------------------


def test_hellohello_packs_to_the_classic_vector():
    # h e l l o = 68 65 6C 6C 6F; the 10 septets fill 70 bits, 9 octets.
    assert gsm7.pack(gsm7.encode("hellohello")) == bytes.fromhex("E8329BFD4697D9EC37")
    assert gsm7.decode(gsm7.unpack(bytes.fromhex("E8329BFD4697D9EC37"), 10)) == "hellohello"


def test_at_sign_is_a_zero_octet():
    assert gsm7.pack(gsm7.encode("@")) == b"\x00"


def test_seven_characters_take_seven_octets():
    # septets 31..37: o0 = 31 | (32&1)<<7 = 31; o1 = 32>>1 | (33&3)<<6 = 19|C0 = D9;
    # o2 = 33>>2 | (34&7)<<5 = 0C|80 = 8C; o3 = 34>>3 | (35&F)<<4 = 06|50 = 56;
    # o4 = 35>>4 | (36&1F)<<3 = 03|B0 = B3; o5 = 36>>5 | (37&3F)<<2 = 01|DC = DD;
    # o6 = 37>>6 = 00 (49 bits: the seventh octet holds one bit).
    assert gsm7.pack(gsm7.encode("1234567")) == bytes.fromhex("31D98C56B3DD00")


def test_eight_characters_take_seven_octets_the_eighth_in_the_top_bits():
    # As above, and septet 38 fills bits 49..55: o6 = 37>>6 | 38<<1 = 70.
    packed = gsm7.pack(gsm7.encode("12345678"))
    assert packed == bytes.fromhex("31D98C56B3DD70")
    assert packed[6] >> 1 == 0x38
    assert gsm7.decode(gsm7.unpack(packed, 8)) == "12345678"
    # the same octets read as seven septets lose the eighth
    assert gsm7.decode(gsm7.unpack(packed, 7)) == "1234567"


def test_nine_characters_start_an_eighth_octet():
    assert gsm7.pack(gsm7.encode("123456789")) == bytes.fromhex("31D98C56B3DD7039")


def test_extension_characters_pack_as_two_septets():
    # € = 1B 65: o0 = 1B | (65&1)<<7 = 9B; o1 = 65>>1 = 32.
    assert gsm7.pack(gsm7.encode("€")) == bytes.fromhex("9B32")
    # [ = 1B 3C: o0 = 1B | 0 = 1B; o1 = 3C>>1 = 1E.
    assert gsm7.pack(gsm7.encode("[")) == bytes.fromhex("1B1E")


def test_fill_bits_come_first():
    # one fill bit (after a 6-octet concatenation UDH): value = 68<<1 | 69<<8 = 69D0.
    assert gsm7.pack(gsm7.encode("hi"), fill_bits=1) == bytes.fromhex("D069")
    assert gsm7.decode(gsm7.unpack(bytes.fromhex("D069"), 2, fill_bits=1)) == "hi"
    # six fill bits: "A" (41) lands at bits 6..12: o0 = (41<<6)&FF = 40, o1 = 41>>2 = 10.
    assert gsm7.pack([0x41], fill_bits=6) == bytes.fromhex("4010")
    assert gsm7.unpack(bytes.fromhex("4010"), 1, fill_bits=6) == [0x41]


def test_empty_input():
    assert gsm7.encode("") == []
    assert gsm7.decode([]) == ""
    assert gsm7.pack([]) == b""
    assert gsm7.unpack(b"", 0) == []
    assert gsm7.septet_len("") == 0


def test_pack_with_fill_bits_and_no_septets_has_no_octets_of_data():
    # fill bits alone still occupy the first (partial) octet
    assert gsm7.pack([], fill_bits=3) == b"\x00"


# --- decoding fallbacks ---------------------------------------------------------------------


def test_unknown_extension_code_decodes_as_its_base_character():
    assert gsm7.decode([0x1B, 0x41]) == "A"
    assert gsm7.decode([0x1B, 0x00, 0x62]) == "@b"


def test_double_escape_decodes_as_space():
    assert gsm7.decode([0x1B, 0x1B, 0x41]) == " A"


def test_lone_trailing_escape_is_ignored():
    assert gsm7.decode([0x41, 0x1B]) == "A"
    assert gsm7.decode([0x1B]) == ""


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bad"), [("ab中", "中"), ("`", "`"), ("x\tz", "\t"), ("ç", "ç"), ("😀", "😀")]
)
def test_encode_names_the_first_unencodable_character(text, bad):
    with pytest.raises(ValueError) as info:
        gsm7.encode(text)
    assert repr(bad) in str(info.value)
    assert f"U+{ord(bad):04X}" in str(info.value)
    assert f"index {text.index(bad)}" in str(info.value)
    assert gsm7.septet_len(text) is None
    assert not gsm7.fits(text)


def test_nbsp_in_the_escape_position_is_not_encodable():
    assert gsm7.septet_len("\xa0") is None
    with pytest.raises(ValueError):
        gsm7.encode("\xa0")


@pytest.mark.parametrize("bad", [-1, 128, 255])
def test_septets_out_of_range_are_rejected(bad):
    with pytest.raises(ValueError):
        gsm7.decode([0x41, bad])
    with pytest.raises(ValueError):
        gsm7.pack([0x41, bad])


@pytest.mark.parametrize("fill", [-1, 7, 8])
def test_fill_bits_out_of_range_are_rejected(fill):
    with pytest.raises(ValueError):
        gsm7.pack([0x41], fill_bits=fill)
    with pytest.raises(ValueError):
        gsm7.unpack(b"\x41\x00", 1, fill_bits=fill)


def test_unpack_rejects_truncated_data():
    with pytest.raises(ValueError):
        gsm7.unpack(bytes.fromhex("31D98C56B3DD"), 7)  # 7 septets need 49 bits
    with pytest.raises(ValueError):
        gsm7.unpack(bytes.fromhex("D0"), 2, fill_bits=1)
    with pytest.raises(ValueError):
        gsm7.unpack(b"\x00", -1)


def test_unpack_of_zero_septets_needs_no_octets():
    assert gsm7.unpack(b"", 0, fill_bits=6) == []


# --- properties -----------------------------------------------------------------------------


@settings(max_examples=200)
@given(gsm_text)
def test_text_round_trips_through_septets(text):
    assert gsm7.decode(gsm7.encode(text)) == text


@settings(max_examples=200)
@given(gsm_text, st.integers(min_value=0, max_value=6))
def test_text_round_trips_through_packing(text, fill):
    septets = gsm7.encode(text)
    packed = gsm7.pack(septets, fill_bits=fill)
    assert len(packed) == (fill + 7 * len(septets) + 7) // 8
    assert gsm7.unpack(packed, len(septets), fill_bits=fill) == septets
    assert gsm7.decode(gsm7.unpack(packed, len(septets), fill_bits=fill)) == text


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=127), max_size=300), st.integers(0, 6))
def test_any_septets_round_trip_through_packing(septets, fill):
    packed = gsm7.pack(septets, fill_bits=fill)
    assert gsm7.unpack(packed, len(septets), fill_bits=fill) == septets
    # fill bits stay zero
    assert packed == b"" or packed[0] & ((1 << fill) - 1) == 0


@settings(max_examples=200)
@given(gsm_text)
def test_septet_len_equals_encoded_length(text):
    assert gsm7.septet_len(text) == len(gsm7.encode(text))
    assert gsm7.fits(text)


@settings(max_examples=200)
@given(st.text(max_size=60))
def test_any_text_either_encodes_or_raises_value_error(text):
    length = gsm7.septet_len(text)
    if length is None:
        with pytest.raises(ValueError):
            gsm7.encode(text)
    else:
        assert len(gsm7.encode(text)) == length


@settings(max_examples=200)
@given(st.binary(max_size=200), st.integers(0, 6))
def test_any_octets_unpack_to_septets_that_decode(data, fill):
    count = (len(data) * 8 - fill) // 7 if data else 0
    septets = gsm7.unpack(data, count, fill_bits=fill)
    assert len(septets) == count
    assert all(0 <= s <= 127 for s in septets)
    assert isinstance(gsm7.decode(septets), str)
