"""Recipient numbers and message text, as every channel sees them.

Two concerns shared by the HTTP API, the router, CMPP links and modems:

* Chinese mobile numbers: :func:`normalize_msisdn` turns what people type into the
  11-digit national form (the E.164 national significant number of country code 86), and
  :func:`operator_of` names the network that owns the number segment.
* Encoding and segmentation: :func:`plan` chooses GSM 7-bit or UCS2 and cuts the text into
  the parts a handset would make (3GPP TS 23.038 §6.2.1 for the alphabet, TS 23.040
  §9.2.3.16 and §9.2.3.24.1/§9.2.3.24.8 for the user data sizes with a concatenation
  header), without splitting a surrogate pair or a GSM escape sequence.

Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from gateway.errors import GatewayError
from gateway.modem_pool import gsm7

__all__ = [
    "GSM7_PART_SEPTETS_16BIT_REF",
    "GSM7_PART_SEPTETS_8BIT_REF",
    "GSM7_SINGLE_SEPTETS",
    "MAX_CONCAT_PARTS",
    "MAX_RAW_NUMBER_LENGTH",
    "UCS2_PART_UNITS_16BIT_REF",
    "UCS2_PART_UNITS_8BIT_REF",
    "UCS2_SINGLE_UNITS",
    "EmptyText",
    "Encoding",
    "InvalidNumber",
    "Operator",
    "SegmentPlan",
    "TextError",
    "TooLong",
    "mask_msisdn",
    "normalize_msisdn",
    "operator_of",
    "plan",
]

# --- sizes (TS 23.040 §9.2.3.16: 140 octets of user data) -----------------------------------

#: Septets in a single GSM 7-bit message: 140 octets * 8 / 7.
GSM7_SINGLE_SEPTETS = 160
#: Septets per part behind a 6-octet UDH with the 8-bit reference IE (48 bits + 1 fill bit).
GSM7_PART_SEPTETS_8BIT_REF = 153
#: Septets per part behind a 7-octet UDH with the 16-bit reference IE (56 bits, no fill).
GSM7_PART_SEPTETS_16BIT_REF = 152
#: UTF-16 code units in a single UCS2 message: 140 octets / 2.
UCS2_SINGLE_UNITS = 70
#: UTF-16 code units per part behind a 6-octet UDH: 134 octets / 2.
UCS2_PART_UNITS_8BIT_REF = 67
#: UTF-16 code units per part behind a 7-octet UDH: 133 octets / 2, rounded down.
UCS2_PART_UNITS_16BIT_REF = 66
#: The concatenation IE carries the part count in one octet (TS 23.040 §9.2.3.24.1).
MAX_CONCAT_PARTS = 255

#: Raw number strings longer than this are refused before any other work.
MAX_RAW_NUMBER_LENGTH = 40


# --- errors ---------------------------------------------------------------------------------


class InvalidNumber(GatewayError):
    """A recipient is not a valid Chinese mobile number.

    ``number`` is the input as given; ``reason`` a short human explanation.
    """

    def __init__(self, number: object, reason: str) -> None:
        self.number = number
        self.reason = reason
        shown = repr(number)
        if len(shown) > MAX_RAW_NUMBER_LENGTH + 2:
            shown = shown[:MAX_RAW_NUMBER_LENGTH] + "..."
        super().__init__(f"invalid mobile number {shown}: {reason}")


class TextError(GatewayError):
    """The message text cannot be sent as it is."""


class EmptyText(TextError):
    """The message text is empty."""

    def __init__(self) -> None:
        super().__init__("message text is empty")


class TooLong(TextError):
    """The text needs more parts than allowed.

    ``parts`` is the number of parts it needs (when its units alone, divided by the part
    size, exceed the limit, that quotient rounded up, a lower bound), ``max_parts`` the
    limit, ``encoding`` the encoding it was planned in.
    """

    def __init__(self, parts: int, max_parts: int, encoding: Encoding) -> None:
        self.parts = parts
        self.max_parts = max_parts
        self.encoding = encoding
        super().__init__(
            f"message text needs {parts} parts in {encoding.value}, at most {max_parts} allowed"
        )


# --- numbers --------------------------------------------------------------------------------


class Operator(StrEnum):
    """The network that owns a number segment."""

    CMCC = "cmcc"  # China Mobile
    CUCC = "cucc"  # China Unicom
    CTCC = "ctcc"  # China Telecom
    CBN = "cbn"  # China Broadnet


_CMCC, _CUCC, _CTCC, _CBN = Operator.CMCC, Operator.CUCC, Operator.CTCC, Operator.CBN

#: Number segments (the first three digits) and their networks, after the MIIT allocation.
#: 140-144 (13-digit IoT numbers), 154, 160, 161, 163, 164, 168, 169, 179 and 194 are not
#: allocated to 11-digit public mobile service; 170 and 174 are only known by four digits.
_SEGMENTS_3: dict[str, Operator] = {
    **dict.fromkeys(
        ("134", "135", "136", "137", "138", "139", "147", "148", "150", "151", "152",
         "157", "158", "159", "165", "172", "178", "182", "183", "184", "187", "188",
         "195", "197", "198"),
        _CMCC,
    ),
    **dict.fromkeys(
        ("130", "131", "132", "145", "146", "155", "156", "166", "167", "171", "175",
         "176", "185", "186", "196"),
        _CUCC,
    ),
    **dict.fromkeys(
        ("133", "149", "153", "162", "173", "177", "180", "181", "189", "190", "191",
         "193", "199"),
        _CTCC,
    ),
    "192": _CBN,
}

#: Four-digit segments that differ from (or refine) their three-digit one: 1349 is China
#: Telecom's satellite segment; 170x are resold (MVNO) numbers identified by the host
#: network; 1740x is China Telecom's satellite segment (1741-1749 are not public mobile).
_SEGMENTS_4: dict[str, Operator] = {
    "1349": _CTCC,
    "1700": _CTCC,
    "1701": _CTCC,
    "1702": _CTCC,
    "1703": _CMCC,
    "1705": _CMCC,
    "1706": _CMCC,
    "1704": _CUCC,
    "1707": _CUCC,
    "1708": _CUCC,
    "1709": _CUCC,
    "1740": _CTCC,
}

_MSISDN_LENGTH = 11
_FULLWIDTH_DIGIT_ZERO = 0xFF10

#: Full-width digits and plus become ASCII; separators people type disappear.
_NUMBER_CLEANUP = str.maketrans(
    {
        **{chr(_FULLWIDTH_DIGIT_ZERO + i): str(i) for i in range(10)},
        "\uff0b": "+",  # FULLWIDTH PLUS SIGN
        **dict.fromkeys(
            " \t\u00a0\u3000"  # spaces: ASCII, tab, no-break, ideographic
            "-\u2010\u2011\u2012\u2013\u2014\u2015\uff0d"  # hyphens and dashes
            ".\uff0e"  # full stops
            "()\uff08\uff09",  # parentheses
            None,
        ),
    }
)


def _segment(msisdn: str) -> Operator | None:
    return _SEGMENTS_4.get(msisdn[:4]) or _SEGMENTS_3.get(msisdn[:3])


def _parse_msisdn(raw: str) -> tuple[str, Operator]:
    """The national form of *raw* and its segment's network, or :class:`InvalidNumber`."""
    if not isinstance(raw, str):
        raise InvalidNumber(raw, "not a string")
    if len(raw) > MAX_RAW_NUMBER_LENGTH:
        raise InvalidNumber(raw, "too long")
    # Nearly every number arrives as plain ASCII digits: nothing to clean up then.
    s = raw if raw.isdigit() and raw.isascii() else raw.strip().translate(_NUMBER_CLEANUP)
    if not s:
        raise InvalidNumber(raw, "empty")
    if s[0] == "+":
        if not s.startswith("+86"):
            raise InvalidNumber(raw, "foreign number (country code other than +86)")
        digits = s[3:]
    elif s.startswith("0086"):
        digits = s[4:]
    elif s.startswith("00"):
        raise InvalidNumber(raw, "foreign number (country code other than 86)")
    elif s.startswith("86") and len(s) == _MSISDN_LENGTH + 2:
        digits = s[2:]
    else:
        digits = s
    if not (digits.isascii() and digits.isdigit()):
        raise InvalidNumber(raw, "unexpected characters")
    if digits[0] == "0":
        raise InvalidNumber(raw, "landline number (starts with 0)")
    if len(digits) != _MSISDN_LENGTH:
        raise InvalidNumber(raw, f"wrong length ({len(digits)} digits, 11 expected)")
    if digits[0] != "1":
        raise InvalidNumber(raw, "not a mobile number (must start with 1)")
    if digits[1] not in "3456789":
        raise InvalidNumber(raw, "not a mobile number (second digit must be 3-9)")
    operator = _segment(digits)
    if operator is None:
        raise InvalidNumber(raw, "unallocated number segment")
    return digits, operator


def normalize_msisdn(raw: str) -> str:
    """The 11-digit national form of a Chinese mobile number, e.g. ``"13800138000"``.

    Accepts the number with or without ``+86``, ``86`` or ``0086`` in front, with spaces,
    dashes, dots and parentheses anywhere, and with full-width digits and plus. Raises
    :class:`InvalidNumber` for anything else: landlines, foreign numbers, wrong lengths,
    letters, and numbers whose segment is not allocated to a mobile network. Idempotent.
    """
    return _parse_msisdn(raw)[0]


def national_or_raw(number: str) -> str:
    """The 11-digit form when ``number`` is a valid mobile number, else ``number`` as given
    (for numbers from the network, which are kept even when they are not mobile numbers)."""
    try:
        return normalize_msisdn(number)
    except InvalidNumber:
        return number


def operator_of(msisdn: str) -> Operator:
    """The network owning the number's segment (by allocation; number portability aside).

    *msisdn* may be in any form :func:`normalize_msisdn` accepts; raises
    :class:`InvalidNumber` otherwise.
    """
    return _parse_msisdn(msisdn)[1]


def mask_msisdn(msisdn: str) -> str:
    """A number fit for logs: ``"13800138000"`` becomes ``"138****8000"``.

    Strings of fewer than 8 characters are masked entirely.
    """
    if len(msisdn) < 8:
        return "*" * len(msisdn)
    return msisdn[:3] + "*" * (len(msisdn) - 7) + msisdn[-4:]


# --- encoding and segmentation --------------------------------------------------------------


class Encoding(StrEnum):
    """The data coding a text is sent in (TS 23.038 §4: DCS 0x00 and 0x08)."""

    GSM7 = "gsm7"
    UCS2 = "ucs2"


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """How a text goes on the air.

    ``parts`` concatenated equal the text; ``units`` holds the size of each part in septets
    (GSM 7-bit, extension characters counting two) or UTF-16 code units (UCS2);
    ``unit_limit`` is the capacity of one part in those units (160/70 for a single
    message, 153/67 or 152/66 per concatenated part).
    """

    encoding: Encoding
    parts: tuple[str, ...]
    units: tuple[int, ...]
    unit_limit: int

    @property
    def part_count(self) -> int:
        return len(self.parts)

    @property
    def total_units(self) -> int:
        return sum(self.units)

    @property
    def concatenated(self) -> bool:
        return len(self.parts) > 1


_GSM_BASE_CHARS = "".join(ch for code, ch in enumerate(gsm7.DEFAULT_ALPHABET) if code != gsm7.ESC)
_GSM_EXT_CHARS = "".join(gsm7.EXTENSION_TABLE.values())

_NOT_GSM = re.compile("[^" + "".join(map(re.escape, _GSM_BASE_CHARS + _GSM_EXT_CHARS)) + "]")
_GSM_EXT = re.compile("[" + "".join(map(re.escape, _GSM_EXT_CHARS)) + "]")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")

_PART_LIMITS = {
    (Encoding.GSM7, 8): GSM7_PART_SEPTETS_8BIT_REF,
    (Encoding.GSM7, 16): GSM7_PART_SEPTETS_16BIT_REF,
    (Encoding.UCS2, 8): UCS2_PART_UNITS_8BIT_REF,
    (Encoding.UCS2, 16): UCS2_PART_UNITS_16BIT_REF,
}


def _split_uniform(text: str, limit: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Every character weighs one unit: plain slicing."""
    parts = tuple(text[i : i + limit] for i in range(0, len(text), limit))
    return parts, tuple(map(len, parts))


def _split_weighted(
    text: str, limit: int, heavy: re.Pattern[str]
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Greedy split where characters matching *heavy* weigh two units, one otherwise.

    Each part takes as many whole characters as fit; a two-unit character (an escape
    sequence, a surrogate pair) that would straddle the boundary starts the next part.
    Works a slice at a time so that the per-character work stays in C.
    """
    parts: list[str] = []
    units: list[int] = []
    n = len(text)
    pos = 0
    while pos < n:
        end = min(pos + limit, n)
        weight = end - pos + len(heavy.findall(text, pos, end))
        while weight > limit:
            # each character weighs at most two: drop at least half the excess
            drop = (weight - limit + 1) // 2
            weight -= drop + len(heavy.findall(text, end - drop, end))
            end -= drop
        while end < n:
            step = 2 if heavy.match(text, end) else 1
            if weight + step > limit:
                break
            weight += step
            end += 1
        parts.append(text[pos:end])
        units.append(weight)
        pos = end
    return tuple(parts), tuple(units)


def plan(text: str, *, max_parts: int = 10, concat_ref_bits: int = 8) -> SegmentPlan:
    """Choose the encoding of *text* and cut it into parts, as a handset counts.

    GSM 7-bit when every character is in the default alphabet or its extension table
    (TS 23.038 §6.2.1, §6.2.1.1; extension characters take two septets): 160 septets
    single, else 153 per part (152 with the 16-bit reference). UCS2 otherwise: 70 UTF-16
    code units single, else 67 per part (66 with the 16-bit reference), per TS 23.040
    §9.2.3.16 and §9.2.3.24.1/§9.2.3.24.8. A part boundary never falls inside an escape
    sequence or a surrogate pair.

    Raises :class:`EmptyText` for ``""``, :class:`TooLong` when more than *max_parts*
    parts are needed, :class:`ValueError` for *max_parts* outside 1..255 or
    *concat_ref_bits* other than 8 or 16.
    """
    if not 1 <= max_parts <= MAX_CONCAT_PARTS:
        raise ValueError(f"max_parts must be 1..{MAX_CONCAT_PARTS}, got {max_parts!r}")
    if concat_ref_bits not in (8, 16):
        raise ValueError(f"concat_ref_bits must be 8 or 16, got {concat_ref_bits!r}")
    if not text:
        raise EmptyText()

    if _NOT_GSM.search(text) is None:
        encoding = Encoding.GSM7
        single = GSM7_SINGLE_SEPTETS
        heavy = _GSM_EXT
        heavy_count = len(_GSM_EXT.findall(text))  # one scan, not one per extension character
    else:
        encoding = Encoding.UCS2
        single = UCS2_SINGLE_UNITS
        heavy = _ASTRAL
        heavy_count = (
            0
            if _ASTRAL.search(text) is None
            else len(text.encode("utf-16-le", "surrogatepass")) // 2 - len(text)
        )

    total = len(text) + heavy_count
    if total <= single:
        return SegmentPlan(encoding=encoding, parts=(text,), units=(total,), unit_limit=single)

    limit = _PART_LIMITS[encoding, concat_ref_bits]
    at_least = -(-total // limit)
    if at_least > max_parts:
        # hopeless whatever the boundaries: refuse without walking the text
        raise TooLong(at_least, max_parts, encoding)
    if heavy_count == 0:
        parts, units = _split_uniform(text, limit)
    else:
        parts, units = _split_weighted(text, limit, heavy)
        if len(parts) > max_parts:
            raise TooLong(len(parts), max_parts, encoding)
    return SegmentPlan(encoding=encoding, parts=parts, units=units, unit_limit=limit)
