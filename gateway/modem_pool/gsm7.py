"""The GSM 7-bit default alphabet: character mapping and septet packing.

Implements 3GPP TS 23.038 §6.2.1 (the GSM 7 bit default alphabet table), §6.2.1.1 (the
default alphabet extension table, reached through the escape code 0x1B) and §6.1.2.1
(SMS packing: septets packed into octets, least significant bits first). The fill bits that
align 7-bit user data after a user data header are TS 23.040 §9.2.3.24.

Pure and stdlib only: text in, septets out; septets in, octets out. Every function raises
:class:`ValueError` for input outside its domain; the PDU codec that calls these translates
that into its own protocol error.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "DEFAULT_ALPHABET",
    "ESC",
    "ESC_DISPLAY",
    "EXTENSION_TABLE",
    "decode",
    "encode",
    "fits",
    "pack",
    "septet_len",
    "unpack",
]

#: Escape to the extension table (TS 23.038 §6.2.1, code 0x1B).
ESC = 0x1B

#: What ESC ESC (reserved for a further extension table) decodes to: the notes to
#: TS 23.038 §6.2.1.1 say a receiver shall "display a space".
ESC_DISPLAY = " "

#: The 128 characters of the default alphabet, indexed by septet value (TS 23.038 §6.2.1).
#: Position 0x1B is the escape code, not a character; it holds NBSP, the conventional
#: rendering of a stray escape, and is never produced by :func:`encode`.
DEFAULT_ALPHABET: tuple[str, ...] = (
    # 0x00 - 0x0F
    "@", "£", "$", "¥", "è", "é", "ù", "ì", "ò", "Ç", "\n", "Ø", "ø", "\r", "Å", "å",
    # 0x10 - 0x1F
    "Δ", "_", "Φ", "Γ", "Λ", "Ω", "Π", "Ψ", "Σ", "Θ", "Ξ", "\xa0", "Æ", "æ", "ß", "É",
    # 0x20 - 0x2F
    " ", "!", '"', "#", "¤", "%", "&", "'", "(", ")", "*", "+", ",", "-", ".", "/",
    # 0x30 - 0x3F
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", ":", ";", "<", "=", ">", "?",
    # 0x40 - 0x4F
    "¡", "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O",
    # 0x50 - 0x5F
    "P", "Q", "R", "S", "T", "U", "V", "W", "X", "Y", "Z", "Ä", "Ö", "Ñ", "Ü", "§",
    # 0x60 - 0x6F
    "¿", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o",
    # 0x70 - 0x7F
    "p", "q", "r", "s", "t", "u", "v", "w", "x", "y", "z", "ä", "ö", "ñ", "ü", "à",
)

#: The default alphabet extension table (TS 23.038 §6.2.1.1): code after ESC -> character.
EXTENSION_TABLE: dict[int, str] = {
    0x0A: "\f",  # form feed (page break)
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}

_SEPTET_MASK = 0x7F
_MAX_FILL_BITS = 6

# Character -> septet(s), built once from the tables above.
_BASE_CODE: dict[str, int] = {ch: code for code, ch in enumerate(DEFAULT_ALPHABET) if code != ESC}
_EXT_CODE: dict[str, int] = {ch: code for code, ch in EXTENSION_TABLE.items()}
_ENCODE: dict[str, tuple[int, ...]] = {ch: (code,) for ch, code in _BASE_CODE.items()}
_ENCODE.update({ch: (ESC, code) for ch, code in _EXT_CODE.items()})

if len(DEFAULT_ALPHABET) != 128 or len(_BASE_CODE) != 127:  # pragma: no cover - table sanity
    raise RuntimeError("GSM 7-bit default alphabet table is malformed")


def _unencodable(text: str, index: int) -> ValueError:
    ch = text[index]
    return ValueError(
        f"character {ch!r} (U+{ord(ch):04X}) at index {index} is not in the GSM 7-bit "
        "default alphabet or its extension table"
    )


def encode(text: str) -> list[int]:
    """Map *text* to septets (TS 23.038 §6.2.1, §6.2.1.1).

    Extension characters become two septets, ``[ESC, code]``. Raises :class:`ValueError`
    naming the first character that has no place in either table.
    """
    table = _ENCODE
    out: list[int] = []
    extend = out.extend
    for index, ch in enumerate(text):
        septets = table.get(ch)
        if septets is None:
            raise _unencodable(text, index)
        extend(septets)
    return out


def decode(septets: Sequence[int]) -> str:
    """Map septets back to text (TS 23.038 §6.2.1, §6.2.1.1).

    An escape followed by a code the extension table does not define decodes as the base
    table character of that code, and ESC ESC (reserved for a further extension table) as
    a space, both as the notes to §6.2.1.1 prescribe; a lone escape as the last septet is
    dropped. Values outside 0..127 raise :class:`ValueError`.
    """
    base = DEFAULT_ALPHABET
    ext = EXTENSION_TABLE
    out: list[str] = []
    append = out.append
    escaped = False
    for index, septet in enumerate(septets):
        if not 0 <= septet <= _SEPTET_MASK:
            raise ValueError(f"septet {septet!r} at index {index} is outside 0..127")
        if escaped:
            escaped = False
            if septet == ESC:
                append(ESC_DISPLAY)
            else:
                append(ext.get(septet) or base[septet])
        elif septet == ESC:
            escaped = True
        else:
            append(base[septet])
    return "".join(out)


def septet_len(text: str) -> int | None:
    """Number of septets *text* encodes to, or ``None`` when a character does not fit."""
    base = _BASE_CODE
    ext = _EXT_CODE
    total = 0
    for ch in text:
        if ch in base:
            total += 1
        elif ch in ext:
            total += 2
        else:
            return None
    return total


def fits(text: str) -> bool:
    """Whether every character of *text* is in the default alphabet or its extension."""
    return septet_len(text) is not None


def _check_fill_bits(fill_bits: int) -> None:
    if not 0 <= fill_bits <= _MAX_FILL_BITS:
        raise ValueError(f"fill_bits must be 0..{_MAX_FILL_BITS}, got {fill_bits!r}")


def pack(septets: Sequence[int], fill_bits: int = 0) -> bytes:
    """Pack septets into octets, least significant bit first (TS 23.038 §6.1.2.1).

    Eight septets take seven octets. *fill_bits* zero bits come first, so that septets
    following a user data header start on a septet boundary (TS 23.040 §9.2.3.24); the
    unused top bits of the last octet are zero. The septet count is not recorded: TP-UDL
    carries it.
    """
    _check_fill_bits(fill_bits)
    out = bytearray()
    acc = 0
    nbits = fill_bits
    for index, septet in enumerate(septets):
        if not 0 <= septet <= _SEPTET_MASK:
            raise ValueError(f"septet {septet!r} at index {index} is outside 0..127")
        acc |= septet << nbits
        nbits += 7
        if nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8
    if nbits > 0:
        out.append(acc & 0xFF)
    return bytes(out)


def unpack(data: bytes, count: int, fill_bits: int = 0) -> list[int]:
    """Unpack *count* septets from *data*, skipping *fill_bits* leading bits.

    The inverse of :func:`pack` (TS 23.038 §6.1.2.1). Raises :class:`ValueError` when *data*
    holds fewer than ``fill_bits + 7 * count`` bits (zero septets need no octets). Octets
    beyond those are ignored.
    """
    _check_fill_bits(fill_bits)
    if count < 0:
        raise ValueError(f"septet count must not be negative, got {count!r}")
    if count == 0:
        return []
    needed_bits = fill_bits + 7 * count
    if len(data) * 8 < needed_bits:
        raise ValueError(
            f"{count} septets after {fill_bits} fill bits need {(needed_bits + 7) // 8} octets, "
            f"got {len(data)}"
        )
    out: list[int] = []
    append = out.append
    acc = 0
    nbits = 0
    octets = iter(data)
    first = True
    while len(out) < count:
        while nbits < 7:
            acc |= next(octets) << nbits
            nbits += 8
            if first:
                acc >>= fill_bits
                nbits -= fill_bits
                first = False
        append(acc & _SEPTET_MASK)
        acc >>= 7
        nbits -= 7
    return out
