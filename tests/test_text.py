"""Recipient numbers and message segmentation (gateway.text).

Segment sizes come from TS 23.040 §9.2.3.16 / §9.2.3.24: 140 octets of user data, 160
septets or 70 UTF-16 units single; behind a 6-octet concatenation UDH 153 septets (48 bits
+ 1 fill bit) or 67 units; behind a 7-octet one 152 septets or 66 units. Number segments are
the MIIT allocation, written out again here from the published list.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.modem_pool import gsm7
from gateway.text import (
    EmptyText,
    Encoding,
    InvalidNumber,
    Operator,
    SegmentPlan,
    TextError,
    TooLong,
    mask_msisdn,
    normalize_msisdn,
    operator_of,
    plan,
)

# --- segmentation: hand-written boundaries --------------------------------------------------


def part_lengths(p: SegmentPlan) -> list[int]:
    return [len(part) for part in p.parts]


def test_160_gsm_characters_are_one_message():
    p = plan("a" * 160)
    assert p.encoding == Encoding.GSM7 == "gsm7"
    assert p.parts == ("a" * 160,)
    assert p.units == (160,)
    assert p.unit_limit == 160
    assert p.part_count == 1
    assert not p.concatenated


def test_161_gsm_characters_are_two_parts_of_153_and_8():
    p = plan("a" * 161)
    assert p.encoding == "gsm7"
    assert part_lengths(p) == [153, 8]
    assert p.units == (153, 8)
    assert p.unit_limit == 153
    assert p.concatenated
    assert p.total_units == 161


def test_306_gsm_characters_are_two_parts_and_307_three():
    assert part_lengths(plan("b" * 306)) == [153, 153]
    assert part_lengths(plan("b" * 307)) == [153, 153, 1]


def test_16_bit_reference_leaves_152_septets_per_part():
    p = plan("a" * 161, concat_ref_bits=16)
    assert part_lengths(p) == [152, 9]
    assert p.unit_limit == 152
    # a single message has no header, so the reference size does not matter
    assert plan("a" * 160, concat_ref_bits=16).units == (160,)


def test_70_chinese_characters_are_one_ucs2_message():
    p = plan("中" * 70)
    assert p.encoding == Encoding.UCS2 == "ucs2"
    assert p.units == (70,)
    assert p.unit_limit == 70


def test_71_chinese_characters_are_two_parts_of_67_and_4():
    p = plan("中" * 71)
    assert p.encoding == "ucs2"
    assert part_lengths(p) == [67, 4]
    assert p.unit_limit == 67


def test_67_times_2_chinese_characters_fill_two_parts_exactly():
    assert part_lengths(plan("中" * 134)) == [67, 67]
    assert part_lengths(plan("中" * 135)) == [67, 67, 1]


def test_16_bit_reference_leaves_66_units_per_part():
    p = plan("中" * 71, concat_ref_bits=16)
    assert part_lengths(p) == [66, 5]
    assert p.unit_limit == 66


def test_emoji_straddling_units_67_and_68_moves_to_the_next_part():
    # 66 units, then the emoji would take units 67 and 68: it starts part two instead.
    text = "中" * 66 + "😀" + "中" * 10
    p = plan(text)
    assert p.parts == ("中" * 66, "😀" + "中" * 10)
    assert p.units == (66, 12)


def test_emoji_ending_exactly_at_unit_67_stays():
    text = "中" * 65 + "😀" + "中" * 10
    p = plan(text)
    assert p.parts == ("中" * 65 + "😀", "中" * 10)
    assert p.units == (67, 10)


def test_emoji_count_two_units_each():
    assert plan("😀" * 35).units == (70,)
    p = plan("😀" * 36)
    assert p.units == (66, 6)
    assert part_lengths(p) == [33, 3]


def test_escape_sequence_at_septets_153_and_154_moves_to_the_next_part():
    text = "a" * 152 + "€" + "b" * 10
    p = plan(text)
    assert p.encoding == "gsm7"
    assert p.parts == ("a" * 152, "€" + "b" * 10)
    assert p.units == (152, 12)


def test_escape_sequence_ending_exactly_at_septet_153_stays():
    text = "a" * 151 + "[" + "b" * 10
    p = plan(text)
    assert p.parts == ("a" * 151 + "[", "b" * 10)
    assert p.units == (153, 10)


def test_euro_counts_two_septets():
    assert plan("€").units == (2,)
    assert plan("€" * 80).units == (160,)
    p = plan("€" * 81)
    assert p.units == (152, 10)
    assert part_lengths(p) == [76, 5]


def test_every_extension_character_counts_two_septets():
    assert plan("\f^{}\\[~]|€").units == (20,)
    assert plan("a" * 150 + "{}").units == (154,)
    assert plan("a" * 158 + "{").units == (160,)
    assert plan("a" * 159 + "{").part_count == 2


def test_one_chinese_character_makes_the_text_ucs2():
    p = plan("Your code is 1234 中")
    assert p.encoding == "ucs2"
    assert p.units == (19,)
    # and the limit drops from 160 to 70
    assert plan("a" * 69 + "中").part_count == 1
    assert plan("a" * 70 + "中").part_count == 2


@pytest.mark.parametrize(
    "text", ["price $5 @ shop_1", "Ünìcödé? ¿¡§¤ Øø Åå", "ΔΦΓΛΩΠΨΣΘΞ", "line\r\nbreak"]
)
def test_gsm_alphabet_texts_stay_gsm7(text):
    p = plan(text)
    assert p.encoding == "gsm7"
    assert p.units == (len(text),)


@pytest.mark.parametrize(
    "text", ["back`tick", "ça va", "tab\there", "naïve", "“quotes”", "😀"]
)
def test_characters_outside_the_gsm_alphabet_make_ucs2(text):
    assert plan(text).encoding == "ucs2"


def test_empty_text_is_refused():
    with pytest.raises(EmptyText):
        plan("")


def test_too_many_parts_is_refused_with_the_count():
    assert plan("a" * 1530).part_count == 10
    with pytest.raises(TooLong) as info:
        plan("a" * 1531)
    assert info.value.parts == 11
    assert info.value.max_parts == 10
    assert info.value.encoding == "gsm7"
    assert isinstance(info.value, TextError)
    assert isinstance(info.value, GatewayError)


def test_max_parts_one_allows_only_single_messages():
    assert plan("中" * 70, max_parts=1).part_count == 1
    with pytest.raises(TooLong) as info:
        plan("中" * 71, max_parts=1)
    assert info.value.parts == 2
    assert info.value.encoding == "ucs2"


def test_too_many_parts_counted_after_boundary_moves():
    # 100 emoji are 200 units: at least 3 parts of 67 by size alone
    with pytest.raises(TooLong) as info:
        plan("😀" * 100, max_parts=2)
    assert info.value.parts >= 3
    # 67 emoji are 134 units, two parts by size; but a 67-unit part holds 33 emoji
    # (66 units), so the boundaries make it 33 + 33 + 1 emoji, three parts
    with pytest.raises(TooLong) as info:
        plan("😀" * 67, max_parts=2)
    assert info.value.parts == 3


def test_huge_text_is_refused_quickly():
    with pytest.raises(TooLong) as info:
        plan("😀" * 200_000)
    assert info.value.parts >= 400_000 // 67


@pytest.mark.parametrize(("kwargs"), [{"max_parts": 0}, {"max_parts": 256}, {"concat_ref_bits": 7}])
def test_bad_arguments_are_value_errors(kwargs):
    with pytest.raises(ValueError):
        plan("hello", **kwargs)


# --- segmentation: properties ---------------------------------------------------------------

GSM_BASE = [ch for code, ch in enumerate(gsm7.DEFAULT_ALPHABET) if code != 0x1B]
GSM_EXT = list("\f^{}\\[~]|€")
OTHERS = list("中文短信，。！") + ["😀", "🎉", "𠀀", "é", "`", "\t"]

gsm_texts = st.text(alphabet=st.sampled_from(GSM_BASE + GSM_EXT * 8), min_size=1, max_size=700)
mixed_texts = st.text(
    alphabet=st.sampled_from(GSM_BASE + GSM_EXT * 4 + OTHERS * 4), min_size=1, max_size=500
)
any_texts = st.one_of(gsm_texts, mixed_texts, st.text(min_size=1, max_size=300))


def units_of(part: str, encoding: Encoding) -> int:
    if encoding == Encoding.GSM7:
        return len(gsm7.encode(part))
    return len(part.encode("utf-16-le", "surrogatepass")) // 2


@settings(max_examples=300)
@given(any_texts, st.sampled_from([8, 16]))
def test_parts_join_to_the_text_and_respect_the_limits(text, ref_bits):
    p = plan(text, max_parts=255, concat_ref_bits=ref_bits)
    assert "".join(p.parts) == text
    assert (p.encoding == Encoding.GSM7) == gsm7.fits(text)
    single = 160 if p.encoding == Encoding.GSM7 else 70
    total = units_of(text, p.encoding)
    assert p.total_units == total
    assert (p.part_count == 1) == (total <= single)
    assert all(p.units[i] == units_of(part, p.encoding) for i, part in enumerate(p.parts))
    assert all(0 < u <= p.unit_limit for u in p.units)
    if p.part_count > 1:
        expected_limit = {
            (Encoding.GSM7, 8): 153,
            (Encoding.GSM7, 16): 152,
            (Encoding.UCS2, 8): 67,
            (Encoding.UCS2, 16): 66,
        }[p.encoding, ref_bits]
        assert p.unit_limit == expected_limit
        # minimal: only a boundary move (one unit) leaves a part short, except the last
        assert all(u >= p.unit_limit - 1 for u in p.units[:-1])


@settings(max_examples=200)
@given(mixed_texts, st.integers(min_value=1, max_value=5))
def test_max_parts_is_enforced(text, max_parts):
    try:
        p = plan(text, max_parts=max_parts)
    except TooLong as exc:
        assert exc.parts > max_parts
        assert exc.max_parts == max_parts
        # and the text indeed needs that many parts
        assert plan(text, max_parts=255).part_count == exc.parts
    else:
        assert 1 <= p.part_count <= max_parts


# --- numbers: hand-written vectors ----------------------------------------------------------

VALID_FORMS = [
    "13800138000",
    "+8613800138000",
    "8613800138000",
    "008613800138000",
    "+86 138 0013 8000",
    "+86-138-0013-8000",
    "138.0013.8000",
    "(+86) 138 0013 8000",
    "+86 (138) 0013-8000",
    "  13800138000  ",
    "１３８００１３８０００",
    "＋８６１３８００１３８０００",
    "＋８６ １３８ ００１３ ８０００",
    "（＋８６）１３８－００１３－８０００",
    "0086 138 0013 8000",
]


@pytest.mark.parametrize("raw", VALID_FORMS)
def test_valid_forms_normalize_to_eleven_digits(raw):
    assert normalize_msisdn(raw) == "13800138000"


REJECTED = [
    ("", "empty"),
    ("   ", "empty"),
    ("+86", None),
    ("010-12345678", "landline"),
    ("0755-12345678", "landline"),
    ("02112345678", "landline"),
    ("+1 415 555 0100", "foreign"),
    ("+44 7700 900123", "foreign"),
    ("+852 9123 4567", "foreign"),
    ("00441234567890", "foreign"),
    ("1380013800", "length"),
    ("138001380001", "length"),
    ("+86138001380001", "length"),
    ("1380013800a", None),
    ("abc", None),
    ("138 0013 8000 ext 1", None),
    ("+86+13800138000", None),
    ("23800138000", "start with 1"),
    ("10012345678", "second digit"),
    ("12012345678", "second digit"),
    ("١٣٨٠٠١٣٨٠٠٠", None),  # Arabic-Indic digits
    ("13800138000" + "0" * 40, "too long"),
]


@pytest.mark.parametrize(("raw", "reason_part"), REJECTED)
def test_invalid_numbers_are_rejected_with_a_reason(raw, reason_part):
    with pytest.raises(InvalidNumber) as info:
        normalize_msisdn(raw)
    assert info.value.number == raw
    assert info.value.reason
    if reason_part is not None:
        assert reason_part in info.value.reason
    assert isinstance(info.value, GatewayError)


@pytest.mark.parametrize(
    "raw",
    ["14012345678", "15412345678", "16012345678", "17912345678", "19412345678", "17412345678"],
)
def test_unallocated_segments_are_rejected(raw):
    with pytest.raises(InvalidNumber) as info:
        normalize_msisdn(raw)
    assert info.value.reason == "unallocated number segment"
    assert info.value.number == raw


@pytest.mark.parametrize("raw", [None, 13800138000, b"13800138000", ["13800138000"]])
def test_non_strings_are_invalid_numbers(raw):
    with pytest.raises(InvalidNumber) as info:
        normalize_msisdn(raw)  # type: ignore[arg-type]
    assert info.value.number is raw


def test_invalid_number_message_names_the_number():
    with pytest.raises(InvalidNumber) as info:
        normalize_msisdn("12345")
    assert "'12345'" in str(info.value)


SEGMENTS = {
    Operator.CMCC: [
        "1340", "1348", "135", "136", "137", "138", "139", "147", "148", "150", "151",
        "152", "157", "158", "159", "165", "172", "178", "182", "183", "184", "187",
        "188", "195", "197", "198", "1703", "1705", "1706",
    ],
    Operator.CUCC: [
        "130", "131", "132", "145", "146", "155", "156", "166", "167", "171", "175",
        "176", "185", "186", "196", "1704", "1707", "1708", "1709",
    ],
    Operator.CTCC: [
        "133", "1349", "149", "153", "162", "173", "1740", "177", "180", "181", "189",
        "190", "191", "193", "199", "1700", "1701", "1702",
    ],
    Operator.CBN: ["192"],
}
SEGMENT_CASES = [(seg, op) for op, segs in SEGMENTS.items() for seg in segs]


@pytest.mark.parametrize(("segment", "operator"), SEGMENT_CASES)
def test_operator_of_each_segment(segment, operator):
    number = segment + "0" * (11 - len(segment) - 1) + "9"
    assert operator_of(number) is operator
    assert operator_of("+86 " + number) is operator


def test_operator_values():
    assert [op.value for op in Operator] == ["cmcc", "cucc", "ctcc", "cbn"]
    assert Operator("cmcc") is Operator.CMCC
    assert Operator.CUCC == "cucc"


def test_operator_of_rejects_invalid_numbers():
    with pytest.raises(InvalidNumber):
        operator_of("17412345678")
    with pytest.raises(InvalidNumber):
        operator_of("010-12345678")


def test_mask_msisdn():
    assert mask_msisdn("13800138000") == "138****8000"
    assert mask_msisdn("8613800138000") == "861******8000"
    assert mask_msisdn("1234567") == "*******"
    assert mask_msisdn("") == ""


# --- numbers: properties --------------------------------------------------------------------

ALL_SEGMENTS = [seg for seg, _ in SEGMENT_CASES]
FULLWIDTH = str.maketrans({str(i): chr(0xFF10 + i) for i in range(10)} | {"+": "＋"})


@st.composite
def valid_numbers(draw):
    segment = draw(st.sampled_from(ALL_SEGMENTS))
    size = 11 - len(segment)
    rest = draw(st.text(alphabet="0123456789", min_size=size, max_size=size))
    return segment + rest


@st.composite
def formatted(draw, number):
    prefix = draw(st.sampled_from(["", "+86", "86", "0086", "+86 ", "(+86) ", "+86-", "0086 "]))
    digits = list(number)
    separators = draw(
        st.lists(
            st.tuples(st.integers(0, 10), st.sampled_from([" ", "-", ".", "\u3000", "－"])),
            max_size=4,
        )
    )
    for position, sep in sorted(separators, reverse=True):
        digits.insert(position + 1, sep)
    body = "".join(digits)
    if draw(st.booleans()):
        body = f"({body[:3]}){body[3:]}"
    text = prefix + body
    if draw(st.booleans()):
        text = text.translate(FULLWIDTH)
    if draw(st.booleans()):
        text = " " + text + " "
    return text


@settings(max_examples=300)
@given(st.data())
def test_every_formatting_variant_normalizes_to_the_same_digits(data):
    number = data.draw(valid_numbers())
    raw = data.draw(formatted(number))
    assert normalize_msisdn(raw) == number
    assert operator_of(raw) is operator_of(number)


@settings(max_examples=200)
@given(valid_numbers())
def test_normalization_is_idempotent(number):
    once = normalize_msisdn(number)
    assert normalize_msisdn(once) == once == number
    assert normalize_msisdn("+86" + once) == once


@settings(max_examples=300)
@given(
    st.one_of(
        st.text(max_size=50),
        st.text(alphabet="0123456789+-() .８６１＋", max_size=20),
        st.from_regex(r"\+?(86|0086)?1[0-9]{9,11}", fullmatch=True),
    )
)
def test_garbage_raises_invalid_number_and_nothing_else(raw):
    try:
        result = normalize_msisdn(raw)
    except InvalidNumber as exc:
        assert exc.number == raw
        assert exc.reason
    else:
        assert len(result) == 11 and result.isascii() and result.isdigit()
        assert result[0] == "1"
        assert normalize_msisdn(result) == result
        assert isinstance(operator_of(result), Operator)


# --- purity ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "allowed"),
    [
        ("gateway/text.py", {"__future__", "re", "dataclasses", "enum", "gateway.errors",
                             "gateway.modem_pool"}),
        ("gateway/modem_pool/gsm7.py", {"__future__", "collections.abc"}),
    ],
)
def test_cores_import_only_the_stdlib_and_each_other(module, allowed):
    source = Path(__file__).resolve().parent.parent / module
    tree = ast.parse(source.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported <= allowed
