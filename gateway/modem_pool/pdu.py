"""Sans-IO TS 23.040 PDU codec: SMS-SUBMIT, SMS-DELIVER, SMS-STATUS-REPORT, concatenation.

PDUs are handled as a modem shows them in PDU mode (TS 27.005 §3.1): an SMSC address
(RP-layer, a length octet counting octets, zero for the SIM's default) followed by the TPDU.
Every decoding function takes ``bytes`` or hex text and raises :class:`PduError` (a
:class:`RemoteProtocolError`) for anything truncated or malformed; encoding raises
:class:`PduEncodeError` (a :class:`LocalProtocolError`) for fields that cannot be expressed.

User data is kept as a :class:`UserData` value: the alphabet from TP-DCS (TS 23.038 §4), the
user data header information elements (TS 23.040 §9.2.3.24) and the body, which is one
septet per byte for GSM 7-bit and octets otherwise. Keeping septets (not text) lets the
:class:`Reassembler` join parts before decoding, so that an escape sequence or a surrogate
pair split across parts by a careless sender still decodes.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from gateway.modem_pool import gsm7
from gateway.modem_pool.errors import LocalProtocolError, PduEncodeError, PduError

__all__ = [
    "CONCAT_PART_SEPTETS",
    "CONCAT_PART_UCS2",
    "MAX_PARTS",
    "MAX_PENDING_GROUPS",
    "REASSEMBLY_TIMEOUT",
    "SINGLE_SEPTETS",
    "SINGLE_UCS2",
    "TOA_ALPHANUMERIC",
    "TOA_INTERNATIONAL",
    "TOA_UNKNOWN",
    "Address",
    "Alphabet",
    "Concat",
    "Deliver",
    "Incomplete",
    "InformationElement",
    "Reassembled",
    "Reassembler",
    "ReassemblerStatistics",
    "StatusClass",
    "StatusReport",
    "Submit",
    "TpStatus",
    "UserData",
    "alphabet_of",
    "classify_status",
    "cmgs_length",
    "decode_deliver",
    "decode_incoming",
    "decode_status_report",
    "decode_submit",
    "encode_deliver",
    "encode_status_report",
    "encode_submit",
    "split_text",
    "submit_parts",
    "submits_for_parts",
    "validity_from_seconds",
    "validity_seconds",
]

TOA_INTERNATIONAL = 0x91
TOA_UNKNOWN = 0x81
TOA_ALPHANUMERIC = 0xD0

#: A single message holds 160 septets or 140 octets (70 UCS2 code units).
SINGLE_SEPTETS = 160
SINGLE_OCTETS = 140
SINGLE_UCS2 = 70
#: Per concatenated part: 8-bit reference IE, then 16-bit reference IE (TS 23.040 §9.2.3.24.1).
CONCAT_PART_SEPTETS = {False: 153, True: 152}
CONCAT_PART_UCS2 = {False: 67, True: 66}
#: At most 255 parts (the total is one octet).
MAX_PARTS = 255
#: Reassembly gives up on a group after this many seconds without completion.
REASSEMBLY_TIMEOUT = 300.0
#: At most this many incomplete groups are held; the oldest is evicted beyond it.
MAX_PENDING_GROUPS = 1024

_MAX_ADDRESS_DIGITS = 20
_MAX_ALPHANUMERIC_SEPTETS = 11
_IEI_CONCAT8 = 0x00
_IEI_CONCAT16 = 0x08
_DIGITS = "0123456789*#abc"
_DIGIT_VALUE = {ch: i for i, ch in enumerate(_DIGITS)} | {"A": 12, "B": 13, "C": 14}


# --------------------------------------------------------------------------- basic types


class Alphabet(enum.Enum):
    """The character set of the user data (TS 23.038 §4)."""

    GSM7 = "gsm7"
    DATA8 = "8bit"
    UCS2 = "ucs2"

    @property
    def dcs(self) -> int:
        """TP-DCS of the general data coding group with no message class."""
        return {Alphabet.GSM7: 0x00, Alphabet.DATA8: 0x04, Alphabet.UCS2: 0x08}[self]


def alphabet_of(dcs: int) -> Alphabet:
    """The alphabet a TP-DCS value selects (TS 23.038 §4); reserved codings mean GSM 7-bit."""
    group = dcs & 0xF0
    if dcs & 0xC0 in (0x00, 0x40):  # general data coding, automatic deletion groups
        if dcs & 0x20:  # compressed: not decompressed here, kept as octets
            return Alphabet.DATA8
        return (Alphabet.GSM7, Alphabet.DATA8, Alphabet.UCS2, Alphabet.GSM7)[(dcs >> 2) & 3]
    if group in (0xC0, 0xD0):  # message waiting indication, GSM 7-bit
        return Alphabet.GSM7
    if group == 0xE0:  # message waiting indication, UCS2
        return Alphabet.UCS2
    if group == 0xF0:  # data coding / message class
        return Alphabet.DATA8 if dcs & 0x04 else Alphabet.GSM7
    return Alphabet.GSM7



def mask_number(number: str) -> str:
    """A phone number fit for logs: ``186****0001``."""
    return number[:3] + "****" + number[-4:] if len(number) > 7 else "****"

@dataclass(frozen=True, slots=True)
class Address:
    """A TP address (TS 23.040 §9.1.2.5): digits or alphanumeric text, and its type.

    ``number`` holds the digits without ``+`` (for ``0x91``) or the text (for ``0xD0``).
    """

    number: str
    toa: int = TOA_UNKNOWN

    @classmethod
    def parse(cls, text: str) -> Address:
        """``+8613800138000`` becomes international, ``10086`` unknown type."""
        if text.startswith("+"):
            return cls(text[1:], TOA_INTERNATIONAL)
        return cls(text, TOA_UNKNOWN)

    @classmethod
    def alphanumeric(cls, text: str) -> Address:
        return cls(text, TOA_ALPHANUMERIC)

    @property
    def is_alphanumeric(self) -> bool:
        return (self.toa >> 4) & 0x07 == 0b101

    @property
    def is_international(self) -> bool:
        return (self.toa >> 4) & 0x07 == 0b001

    def __str__(self) -> str:
        return f"+{self.number}" if self.is_international else self.number


@dataclass(frozen=True, slots=True)
class InformationElement:
    """One user data header information element (TS 23.040 §9.2.3.24)."""

    iei: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Concat:
    """Concatenated short message IE (TS 23.040 §9.2.3.24.1 and .8)."""

    ref: int
    total: int
    seq: int
    ref16: bool = False

    def element(self) -> InformationElement:
        if self.ref16:
            return InformationElement(
                _IEI_CONCAT16, bytes((self.ref >> 8, self.ref & 0xFF, self.total, self.seq))
            )
        return InformationElement(_IEI_CONCAT8, bytes((self.ref, self.total, self.seq)))


@dataclass(frozen=True, slots=True)
class UserData:
    """TP-UD: header IEs and body (septets one per byte for GSM 7-bit, octets otherwise)."""

    alphabet: Alphabet
    body: bytes = b""
    header: tuple[InformationElement, ...] = ()

    @classmethod
    def from_text(
        cls,
        text: str,
        *,
        alphabet: Alphabet | None = None,
        header: tuple[InformationElement, ...] = (),
    ) -> UserData:
        """GSM 7-bit when every character fits (or as asked), UCS2 otherwise."""
        if alphabet is None:
            alphabet = Alphabet.GSM7 if gsm7.fits(text) else Alphabet.UCS2
        if alphabet is Alphabet.GSM7:
            try:
                body = bytes(gsm7.encode(text))
            except ValueError as exc:
                raise PduEncodeError(str(exc)) from None
        elif alphabet is Alphabet.UCS2:
            body = text.encode("utf-16-be", "surrogatepass")
        else:
            raise PduEncodeError("8-bit user data takes bytes, not text")
        return cls(alphabet=alphabet, body=body, header=header)

    @property
    def text(self) -> str:
        """The body as text (8-bit data decodes as Latin-1)."""
        return _body_text(self.alphabet, self.body)

    @property
    def concat(self) -> Concat | None:
        """The concatenation IE, if present and valid (TS 23.040 §9.2.3.24.1)."""
        for ie in self.header:
            if ie.iei == _IEI_CONCAT8 and len(ie.data) == 3:
                ref, total, seq = ie.data
                ref16 = False
            elif ie.iei == _IEI_CONCAT16 and len(ie.data) == 4:
                ref, total, seq = (ie.data[0] << 8) | ie.data[1], ie.data[2], ie.data[3]
                ref16 = True
            else:
                continue
            if total == 0 or seq == 0 or seq > total:
                return None  # the receiving entity ignores the IE
            return Concat(ref=ref, total=total, seq=seq, ref16=ref16)
        return None


def _body_text(alphabet: Alphabet, body: bytes) -> str:
    if alphabet is Alphabet.GSM7:
        return gsm7.decode(body)
    if alphabet is Alphabet.UCS2:
        return body[: len(body) & ~1].decode("utf-16-be", "replace")
    return body.decode("latin-1")


# --------------------------------------------------------------------------- TP-ST


class StatusClass(enum.Enum):
    """What a TP-ST value means for the message (TS 23.040 §9.2.3.15)."""

    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


class TpStatus(enum.IntEnum):
    """Named TP-ST values (TS 23.040 §9.2.3.15); reports keep the plain int."""

    DELIVERED = 0x00
    FORWARDED_UNCONFIRMED = 0x01
    REPLACED = 0x02
    CONGESTION = 0x20
    SME_BUSY = 0x21
    NO_RESPONSE_FROM_SME = 0x22
    SERVICE_REJECTED = 0x23
    QUALITY_OF_SERVICE_NOT_AVAILABLE = 0x24
    ERROR_IN_SME = 0x25
    REMOTE_PROCEDURE_ERROR = 0x40
    INCOMPATIBLE_DESTINATION = 0x41
    CONNECTION_REJECTED_BY_SME = 0x42
    NOT_OBTAINABLE = 0x43
    NO_INTERWORKING_AVAILABLE = 0x45
    VALIDITY_PERIOD_EXPIRED = 0x46
    DELETED_BY_ORIGINATING_SME = 0x47
    DELETED_BY_SC_ADMINISTRATION = 0x48
    MESSAGE_DOES_NOT_EXIST = 0x49
    GAVE_UP_CONGESTION = 0x60
    GAVE_UP_SME_BUSY = 0x61
    GAVE_UP_NO_RESPONSE_FROM_SME = 0x62
    GAVE_UP_SERVICE_REJECTED = 0x63
    GAVE_UP_QUALITY_OF_SERVICE_NOT_AVAILABLE = 0x64
    GAVE_UP_ERROR_IN_SME = 0x65


def classify_status(status: int) -> StatusClass:
    """0x00-0x1F completed, 0x20-0x3F still trying, 0x40 and above given up.

    0x60-0x7F ("temporary error, SC is not making any more transfer attempts") is final and
    so counts as permanent; reserved values above 0x7F too (TS 23.040 §9.2.3.15).
    """
    if status < 0x20:
        return StatusClass.DELIVERED
    if status < 0x40:
        return StatusClass.TEMPORARY
    return StatusClass.PERMANENT


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True, kw_only=True)
class Submit:
    """SMS-SUBMIT (TS 23.040 §9.2.2.2). ``validity`` is the relative TP-VP octet or None.

    On decoding, absolute and enhanced validity formats are skipped (``validity`` None).
    """

    destination: Address
    user_data: UserData
    mr: int = 0
    status_report: bool = False
    validity: int | None = 0xA7
    reject_duplicates: bool = False
    reply_path: bool = False
    pid: int = 0
    dcs: int | None = None
    smsc: Address | None = None

    @property
    def text(self) -> str:
        return self.user_data.text

    @property
    def tp_dcs(self) -> int:
        return self.user_data.alphabet.dcs if self.dcs is None else self.dcs


@dataclass(frozen=True, slots=True, kw_only=True)
class Deliver:
    """SMS-DELIVER (TS 23.040 §9.2.2.1). ``more_messages`` is TP-MMS inverted (true = waiting)."""

    originator: Address
    user_data: UserData
    scts: datetime
    pid: int = 0
    dcs: int | None = None
    more_messages: bool = False
    status_report_indication: bool = False
    reply_path: bool = False
    smsc: Address | None = None

    @property
    def text(self) -> str:
        return self.user_data.text

    @property
    def tp_dcs(self) -> int:
        return self.user_data.alphabet.dcs if self.dcs is None else self.dcs


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReport:
    """SMS-STATUS-REPORT (TS 23.040 §9.2.2.3). Optional TP-PI parameters are not kept."""

    mr: int
    recipient: Address
    scts: datetime
    discharge_time: datetime
    status: int
    more_messages: bool = False
    qualifier_command: bool = False
    smsc: Address | None = None

    @property
    def status_class(self) -> StatusClass:
        return classify_status(self.status)

    @property
    def delivered(self) -> bool:
        return self.status_class is StatusClass.DELIVERED


# --------------------------------------------------------------------------- reading


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise PduError(f"truncated PDU: {what} needs {n} octets at offset {self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def octet(self, what: str) -> int:
        return self.take(1, what)[0]

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk


def _as_bytes(pdu: bytes | str) -> bytes:
    if isinstance(pdu, str):
        try:
            return bytes.fromhex(pdu)
        except ValueError:
            raise PduError("PDU is not valid hex") from None
    return bytes(pdu)


def _decode_digits(raw: bytes, count: int) -> str:
    out = []
    for i in range(count):
        nibble = (raw[i // 2] >> (4 * (i % 2))) & 0x0F
        if nibble == 0x0F:
            raise PduError("filler semi-octet inside an address")
        out.append(_DIGITS[nibble])
    return "".join(out)


def _encode_digits(digits: str) -> bytes:
    values = []
    for ch in digits:
        value = _DIGIT_VALUE.get(ch)
        if value is None:
            raise PduEncodeError(f"address character {ch!r} is not a digit, *, #, a, b or c")
        values.append(value)
    if len(values) % 2:
        values.append(0x0F)
    return bytes(values[i] | (values[i + 1] << 4) for i in range(0, len(values), 2))


def _read_tp_address(r: _Reader, what: str) -> Address:
    """TP-OA/TP-DA/TP-RA: length in semi-octets (TS 23.040 §9.1.2.5)."""
    length = r.octet(what)
    toa = r.octet(what)
    if length > _MAX_ADDRESS_DIGITS:
        raise PduError(f"{what} of {length} semi-octets exceeds {_MAX_ADDRESS_DIGITS}")
    raw = r.take((length + 1) // 2, what)
    if (toa >> 4) & 0x07 == 0b101:
        count = length * 4 // 7
        try:
            return Address(gsm7.decode(gsm7.unpack(raw, count)), toa)
        except ValueError as exc:
            raise PduError(f"{what}: {exc}") from None
    return Address(_decode_digits(raw, length), toa)


def _write_tp_address(address: Address, what: str) -> bytes:
    if not 0x80 <= address.toa <= 0xFF:
        raise PduEncodeError(f"{what} type of address {address.toa:#x} lacks bit 7")
    if address.is_alphanumeric:
        try:
            septets = gsm7.encode(address.number)
        except ValueError as exc:
            raise PduEncodeError(f"{what}: {exc}") from None
        if not septets or len(septets) > _MAX_ALPHANUMERIC_SEPTETS:
            raise PduEncodeError(f"{what} alphanumeric address needs 1..11 septets")
        packed = gsm7.pack(septets)
        semi_octets = math.ceil(len(septets) * 7 / 4)
        return bytes((semi_octets, address.toa)) + packed
    if not address.number or len(address.number) > _MAX_ADDRESS_DIGITS:
        raise PduEncodeError(f"{what} needs 1..{_MAX_ADDRESS_DIGITS} digits")
    return bytes((len(address.number), address.toa)) + _encode_digits(address.number)


def _read_smsc(r: _Reader) -> Address | None:
    """RP SMSC address as in PDU mode: length in octets incl. type (TS 24.011 §8.2.5.1)."""
    length = r.octet("SMSC length")
    if length == 0:
        return None
    if length > 11:
        raise PduError(f"SMSC address of {length} octets exceeds 11")
    toa = r.octet("SMSC type")
    raw = r.take(length - 1, "SMSC address")
    digits = 2 * len(raw)
    if raw and raw[-1] >> 4 == 0x0F:
        digits -= 1
    return Address(_decode_digits(raw, digits), toa)


def _write_smsc(smsc: Address | None) -> bytes:
    if smsc is None:
        return b"\x00"
    if smsc.is_alphanumeric or not smsc.number or len(smsc.number) > 20:
        raise PduEncodeError("SMSC address needs 1..20 digits")
    digits = _encode_digits(smsc.number)
    return bytes((len(digits) + 1, smsc.toa)) + digits


def _read_bcd(octet: int, what: str) -> int:
    lo, hi = octet & 0x0F, octet >> 4
    if lo > 9 or hi > 9:
        raise PduError(f"{what}: {octet:02X} is not two decimal semi-octets")
    return lo * 10 + hi


def _read_timestamp(r: _Reader, what: str) -> datetime:
    """TP-SCTS/TP-DT (TS 23.040 §9.2.3.11): YY MM DD hh mm ss TZ, semi-octets swapped."""
    raw = r.take(7, what)
    year, month, day, hour, minute, second = (_read_bcd(b, what) for b in raw[:6])
    tz = raw[6]
    tens, units = tz & 0x07, tz >> 4
    if units > 9:
        raise PduError(f"{what}: time zone {tz:02X} is not decimal")
    quarters = tens * 10 + units
    if tz & 0x08:
        quarters = -quarters
    try:
        return datetime(
            2000 + year, month, day, hour, minute, second,
            tzinfo=timezone(timedelta(minutes=15 * quarters)),
        )
    except ValueError as exc:
        raise PduError(f"{what}: {exc}") from None


def _write_timestamp(when: datetime, what: str) -> bytes:
    offset = when.utcoffset()
    if offset is None:
        raise PduEncodeError(f"{what} needs a time zone")
    minutes, rest = divmod(offset, timedelta(minutes=15))
    if rest:
        raise PduEncodeError(f"{what} time zone must be whole quarter hours")
    if not 2000 <= when.year <= 2099:
        raise PduEncodeError(f"{what} year must be 2000..2099")
    quarters = int(minutes)
    if abs(quarters) > 79:
        raise PduEncodeError(f"{what} time zone beyond 79 quarter hours")

    def bcd(value: int) -> int:
        return (value // 10) | ((value % 10) << 4)

    fields = (when.year - 2000, when.month, when.day, when.hour, when.minute, when.second)
    tz = bcd(abs(quarters)) | (0x08 if quarters < 0 else 0)
    return bytes(bcd(v) for v in fields) + bytes((tz,))


def _read_header(ud: bytes) -> tuple[tuple[InformationElement, ...], int]:
    """Parse the UDH at the start of ``ud``; returns the IEs and the header octets incl. UDHL."""
    if not ud:
        raise PduError("TP-UDHI set but user data is empty")
    udhl = ud[0]
    if 1 + udhl > len(ud):
        raise PduError(f"UDHL {udhl} exceeds the user data")
    header = ud[1 : 1 + udhl]
    ies = []
    i = 0
    while i < len(header):
        if i + 2 > len(header):
            raise PduError("truncated information element in the UDH")
        iei, length = header[i], header[i + 1]
        if i + 2 + length > len(header):
            raise PduError(f"information element {iei:#04x} overruns the UDH")
        ies.append(InformationElement(iei, header[i + 2 : i + 2 + length]))
        i += 2 + length
    return tuple(ies), 1 + udhl


def _write_header(header: tuple[InformationElement, ...]) -> bytes:
    if not header:
        return b""
    body = bytearray()
    for ie in header:
        if not 0 <= ie.iei <= 0xFF or len(ie.data) > 0xFF:
            raise PduEncodeError(f"information element {ie.iei} does not fit")
        body += bytes((ie.iei, len(ie.data))) + ie.data
    if len(body) > SINGLE_OCTETS - 1:
        raise PduEncodeError("user data header too long")
    return bytes((len(body),)) + bytes(body)


def _read_user_data(r: _Reader, dcs: int, udhi: bool) -> UserData:
    """TP-UDL and TP-UD (TS 23.040 §9.2.3.16, §9.2.3.24)."""
    alphabet = alphabet_of(dcs)
    udl = r.octet("TP-UDL")
    if alphabet is Alphabet.GSM7:
        if udl > SINGLE_SEPTETS:
            raise PduError(f"TP-UDL {udl} septets exceeds {SINGLE_SEPTETS}")
        ud = r.take(math.ceil(udl * 7 / 8), "TP-UD")
        header: tuple[InformationElement, ...] = ()
        skip_septets, fill = 0, 0
        if udhi:
            header, header_octets = _read_header(ud)
            skip_septets = math.ceil(header_octets * 8 / 7)
            fill = skip_septets * 7 - header_octets * 8
            if skip_septets > udl:
                raise PduError("user data header is longer than TP-UDL")
            ud = ud[header_octets:]
        try:
            septets = gsm7.unpack(ud, udl - skip_septets, fill)
        except ValueError as exc:
            raise PduError(f"TP-UD: {exc}") from None
        return UserData(alphabet=alphabet, body=bytes(septets), header=header)
    if udl > SINGLE_OCTETS:
        raise PduError(f"TP-UDL {udl} octets exceeds {SINGLE_OCTETS}")
    ud = r.take(udl, "TP-UD")
    header = ()
    if udhi:
        header, header_octets = _read_header(ud)
        ud = ud[header_octets:]
    if alphabet is Alphabet.UCS2 and len(ud) % 2:
        raise PduError("UCS2 user data has an odd number of octets")
    return UserData(alphabet=alphabet, body=ud, header=header)


def _write_user_data(user_data: UserData, dcs: int) -> tuple[bytes, bool]:
    """TP-UDL + TP-UD; returns them and whether TP-UDHI must be set."""
    if alphabet_of(dcs) is not user_data.alphabet:
        raise PduEncodeError(f"TP-DCS {dcs:#04x} does not select {user_data.alphabet.name}")
    header = _write_header(user_data.header)
    if user_data.alphabet is Alphabet.GSM7:
        header_septets = math.ceil(len(header) * 8 / 7)
        fill = header_septets * 7 - len(header) * 8
        udl = header_septets + len(user_data.body)
        if udl > SINGLE_SEPTETS:
            raise PduEncodeError(f"{udl} septets exceed {SINGLE_SEPTETS}")
        try:
            packed = gsm7.pack(user_data.body, fill)
        except ValueError as exc:
            raise PduEncodeError(str(exc)) from None
        return bytes((udl,)) + header + packed, bool(header)
    udl = len(header) + len(user_data.body)
    if udl > SINGLE_OCTETS:
        raise PduEncodeError(f"{udl} octets exceed {SINGLE_OCTETS}")
    if user_data.alphabet is Alphabet.UCS2 and len(user_data.body) % 2:
        raise PduEncodeError("UCS2 body has an odd number of octets")
    return bytes((udl,)) + header + user_data.body, bool(header)


def _octet(value: int, what: str) -> int:
    if not 0 <= value <= 0xFF:
        raise PduEncodeError(f"{what} {value} is not an octet")
    return value


# --------------------------------------------------------------------------- SMS-SUBMIT


def encode_submit(submit: Submit) -> bytes:
    """SMSC address then the SMS-SUBMIT TPDU (TS 23.040 §9.2.2.2), as AT+CMGS takes it."""
    ud, udhi = _write_user_data(submit.user_data, submit.tp_dcs)
    vpf = 0b10 if submit.validity is not None else 0b00
    first = (
        0b01
        | (submit.reject_duplicates << 2)
        | (vpf << 3)
        | (submit.status_report << 5)
        | (udhi << 6)
        | (submit.reply_path << 7)
    )
    out = bytearray(_write_smsc(submit.smsc))
    out += bytes((first, _octet(submit.mr, "TP-MR")))
    out += _write_tp_address(submit.destination, "TP-DA")
    out += bytes((_octet(submit.pid, "TP-PID"), _octet(submit.tp_dcs, "TP-DCS")))
    if submit.validity is not None:
        out.append(_octet(submit.validity, "TP-VP"))
    out += ud
    return bytes(out)


def decode_submit(pdu: bytes | str, *, smsc: bool = True) -> Submit:
    """Decode an SMS-SUBMIT (TS 23.040 §9.2.2.2), with the SMSC prefix unless ``smsc=False``."""
    r = _Reader(_as_bytes(pdu))
    sc = _read_smsc(r) if smsc else None
    first = r.octet("first octet")
    if first & 0x03 != 0b01:
        raise PduError(f"TP-MTI {first & 0x03} is not SMS-SUBMIT")
    mr = r.octet("TP-MR")
    destination = _read_tp_address(r, "TP-DA")
    pid = r.octet("TP-PID")
    dcs = r.octet("TP-DCS")
    vpf = (first >> 3) & 0x03
    validity = None
    if vpf == 0b10:
        validity = r.octet("TP-VP")
    elif vpf:
        r.take(7, "TP-VP")
    user_data = _read_user_data(r, dcs, bool(first & 0x40))
    return Submit(
        destination=destination,
        user_data=user_data,
        mr=mr,
        status_report=bool(first & 0x20),
        validity=validity,
        reject_duplicates=bool(first & 0x04),
        reply_path=bool(first & 0x80),
        pid=pid,
        dcs=dcs,
        smsc=sc,
    )


def cmgs_length(pdu: bytes | str) -> int:
    """``<length>`` of ``AT+CMGS``: TPDU octets, the SMSC part not counted (TS 27.005 §3.5.1)."""
    data = _as_bytes(pdu)
    if not data or data[0] + 1 > len(data) - 1:
        raise PduError("PDU shorter than its SMSC address")
    return len(data) - 1 - data[0]


# --------------------------------------------------------------------------- SMS-DELIVER


def encode_deliver(deliver: Deliver) -> bytes:
    """SMSC address then the SMS-DELIVER TPDU (TS 23.040 §9.2.2.1)."""
    ud, udhi = _write_user_data(deliver.user_data, deliver.tp_dcs)
    first = (
        0b00
        | ((not deliver.more_messages) << 2)
        | (deliver.status_report_indication << 5)
        | (udhi << 6)
        | (deliver.reply_path << 7)
    )
    out = bytearray(_write_smsc(deliver.smsc))
    out.append(first)
    out += _write_tp_address(deliver.originator, "TP-OA")
    out += bytes((_octet(deliver.pid, "TP-PID"), _octet(deliver.tp_dcs, "TP-DCS")))
    out += _write_timestamp(deliver.scts, "TP-SCTS")
    out += ud
    return bytes(out)


def _decode_deliver(r: _Reader, sc: Address | None, first: int) -> Deliver:
    originator = _read_tp_address(r, "TP-OA")
    pid = r.octet("TP-PID")
    dcs = r.octet("TP-DCS")
    scts = _read_timestamp(r, "TP-SCTS")
    user_data = _read_user_data(r, dcs, bool(first & 0x40))
    return Deliver(
        originator=originator,
        user_data=user_data,
        scts=scts,
        pid=pid,
        dcs=dcs,
        more_messages=not first & 0x04,
        status_report_indication=bool(first & 0x20),
        reply_path=bool(first & 0x80),
        smsc=sc,
    )


def decode_deliver(pdu: bytes | str, *, smsc: bool = True) -> Deliver:
    """Decode an SMS-DELIVER (TS 23.040 §9.2.2.1)."""
    message = decode_incoming(pdu, smsc=smsc)
    if not isinstance(message, Deliver):
        raise PduError("PDU is not an SMS-DELIVER")
    return message


# --------------------------------------------------------------------------- SMS-STATUS-REPORT


def encode_status_report(report: StatusReport) -> bytes:
    """SMSC address then the SMS-STATUS-REPORT TPDU (TS 23.040 §9.2.2.3), no TP-PI."""
    first = 0b10 | ((not report.more_messages) << 2) | (report.qualifier_command << 5)
    out = bytearray(_write_smsc(report.smsc))
    out += bytes((first, _octet(report.mr, "TP-MR")))
    out += _write_tp_address(report.recipient, "TP-RA")
    out += _write_timestamp(report.scts, "TP-SCTS")
    out += _write_timestamp(report.discharge_time, "TP-DT")
    out.append(_octet(report.status, "TP-ST"))
    return bytes(out)


def _decode_status_report(r: _Reader, sc: Address | None, first: int) -> StatusReport:
    mr = r.octet("TP-MR")
    recipient = _read_tp_address(r, "TP-RA")
    scts = _read_timestamp(r, "TP-SCTS")
    discharge_time = _read_timestamp(r, "TP-DT")
    status = r.octet("TP-ST")
    r.rest()  # optional TP-PI, TP-PID, TP-DCS, TP-UDL, TP-UD
    return StatusReport(
        mr=mr,
        recipient=recipient,
        scts=scts,
        discharge_time=discharge_time,
        status=status,
        more_messages=not first & 0x04,
        qualifier_command=bool(first & 0x20),
        smsc=sc,
    )


def decode_status_report(pdu: bytes | str, *, smsc: bool = True) -> StatusReport:
    """Decode an SMS-STATUS-REPORT (TS 23.040 §9.2.2.3)."""
    message = decode_incoming(pdu, smsc=smsc)
    if not isinstance(message, StatusReport):
        raise PduError("PDU is not an SMS-STATUS-REPORT")
    return message


def decode_incoming(pdu: bytes | str, *, smsc: bool = True) -> Deliver | StatusReport:
    """Decode a PDU sent SC to MS: an SMS-DELIVER or an SMS-STATUS-REPORT (TS 23.040 §9.2.3.1)."""
    r = _Reader(_as_bytes(pdu))
    sc = _read_smsc(r) if smsc else None
    first = r.octet("first octet")
    mti = first & 0x03
    if mti == 0b00:
        return _decode_deliver(r, sc, first)
    if mti == 0b10:
        return _decode_status_report(r, sc, first)
    raise PduError(f"TP-MTI {mti} is not an SMS-DELIVER or SMS-STATUS-REPORT")


# --------------------------------------------------------------------------- TP-VP


def validity_seconds(vp: int) -> int:
    """Seconds a relative TP-VP octet stands for (TS 23.040 §9.2.3.12.1)."""
    if not 0 <= vp <= 255:
        raise PduEncodeError(f"TP-VP {vp} is not an octet")
    if vp <= 143:
        return (vp + 1) * 5 * 60
    if vp <= 167:
        return 12 * 3600 + (vp - 143) * 30 * 60
    if vp <= 196:
        return (vp - 166) * 86400
    return (vp - 192) * 7 * 86400


def validity_from_seconds(seconds: float) -> int:
    """The smallest relative TP-VP covering ``seconds`` (capped at 255, 63 weeks)."""
    for vp in range(256):
        if validity_seconds(vp) >= seconds:
            return vp
    return 255


# --------------------------------------------------------------------------- concatenation


def split_text(
    text: str, *, ref: int = 0, ref16: bool = False, alphabet: Alphabet | None = None
) -> list[UserData]:
    """User data for ``text``: one part, or concatenated parts with reference ``ref``.

    GSM 7-bit parts carry 153 septets (152 with the 16-bit reference), UCS2 parts 67 code
    units (66); an escape sequence or a surrogate pair is never split (TS 23.040 §9.2.3.24.1).
    """
    if alphabet is None:
        alphabet = Alphabet.GSM7 if gsm7.fits(text) else Alphabet.UCS2
    if not 0 <= ref <= (0xFFFF if ref16 else 0xFF):
        raise PduEncodeError(f"concatenation reference {ref} out of range")
    whole = UserData.from_text(text, alphabet=alphabet)
    body = whole.body
    if alphabet is Alphabet.GSM7:
        if len(body) <= SINGLE_SEPTETS:
            return [whole]
        step, unit = CONCAT_PART_SEPTETS[ref16], 1
    else:
        if len(body) <= 2 * SINGLE_UCS2:
            return [whole]
        step, unit = CONCAT_PART_UCS2[ref16], 2
    chunks = []
    start = 0
    while start < len(body):
        end = min(start + step * unit, len(body))
        if end < len(body):
            if alphabet is Alphabet.GSM7 and body[end - 1] == gsm7.ESC:
                end -= 1
            elif alphabet is Alphabet.UCS2 and 0xD8 <= body[end - 2] <= 0xDB:
                end -= 2
        chunks.append(body[start:end])
        start = end
    if len(chunks) > MAX_PARTS:
        raise PduEncodeError(f"text needs {len(chunks)} parts, more than {MAX_PARTS}")
    total = len(chunks)
    return [
        UserData(
            alphabet=alphabet,
            body=chunk,
            header=(Concat(ref=ref, total=total, seq=i, ref16=ref16).element(),),
        )
        for i, chunk in enumerate(chunks, start=1)
    ]


def submit_parts(
    destination: Address,
    text: str,
    *,
    ref: int = 0,
    ref16: bool = False,
    status_report: bool = False,
    validity: int | None = 0xA7,
    alphabet: Alphabet | None = None,
) -> list[Submit]:
    """SMS-SUBMITs carrying ``text`` to ``destination`` (TP-MR 0: the modem assigns it)."""
    return [
        Submit(
            destination=destination,
            user_data=part,
            status_report=status_report,
            validity=validity,
        )
        for part in split_text(text, ref=ref, ref16=ref16, alphabet=alphabet)
    ]


def submits_for_parts(
    destination: Address,
    parts: Sequence[str],
    *,
    alphabet: Alphabet,
    ref: int = 0,
    ref16: bool = False,
    status_report: bool = False,
    validity: int | None = 0xA7,
) -> list[Submit]:
    """SMS-SUBMITs for texts already cut into parts (one per part, concatenated if several).

    ``alphabet`` is GSM 7-bit or UCS2 (``Alphabet("gsm7")``/``Alphabet("ucs2")``); a part
    too long for one SMS-SUBMIT raises :class:`PduEncodeError` when encoded.
    """
    if not parts:
        raise PduEncodeError("no parts to send")
    if len(parts) > MAX_PARTS:
        raise PduEncodeError(f"{len(parts)} parts, more than {MAX_PARTS}")
    if not 0 <= ref <= (0xFFFF if ref16 else 0xFF):
        raise PduEncodeError(f"concatenation reference {ref} out of range")
    total = len(parts)
    submits = []
    for seq, text in enumerate(parts, start=1):
        header: tuple[InformationElement, ...] = ()
        if total > 1:
            header = (Concat(ref=ref, total=total, seq=seq, ref16=ref16).element(),)
        submits.append(
            Submit(
                destination=destination,
                user_data=UserData.from_text(text, alphabet=alphabet, header=header),
                status_report=status_report,
                validity=validity,
            )
        )
    return submits


@dataclass(frozen=True, slots=True)
class Reassembled:
    """A complete message: one SMS-DELIVER or all parts of a concatenated one, in order."""

    originator: Address
    text: str
    parts: tuple[Deliver, ...]


@dataclass(frozen=True, slots=True)
class Incomplete:
    """A concatenated message given up (timeout or eviction): the parts that did arrive."""

    originator: Address
    ref: int
    total: int
    parts: tuple[Deliver, ...]
    text: str


@dataclass(slots=True)
class ReassemblerStatistics:
    pending: int = 0
    completed: int = 0
    duplicates: int = 0
    expired: int = 0
    evicted: int = 0


@dataclass(slots=True)
class _Group:
    originator: Address
    ref: int
    total: int
    first_seen: float
    parts: dict[int, Deliver] = field(default_factory=dict)


def _join_text(parts: Iterable[Deliver]) -> str:
    parts = list(parts)
    alphabets = {p.user_data.alphabet for p in parts}
    if len(alphabets) == 1:
        (alphabet,) = alphabets
        return _body_text(alphabet, b"".join(p.user_data.body for p in parts))
    return "".join(p.text for p in parts)


class Reassembler:
    """Joins concatenated SMS-DELIVER parts (TS 23.040 §9.2.3.24.1), sans-IO.

    Parts are grouped by (originator, reference, total); they may arrive in any order,
    duplicates are ignored, a group not completed within ``timeout`` seconds is given up,
    and at most ``max_groups`` groups are held (the oldest is given up first).
    ``now`` is the caller's clock, in seconds.
    """

    def __init__(
        self, *, timeout: float = REASSEMBLY_TIMEOUT, max_groups: int = MAX_PENDING_GROUPS
    ) -> None:
        if timeout <= 0 or max_groups < 1:
            raise LocalProtocolError("timeout and max_groups must be positive")
        self._timeout = timeout
        self._max_groups = max_groups
        self._groups: dict[tuple[str, int, int, int, bool], _Group] = {}
        self._given_up: list[Incomplete] = []
        self._stats = ReassemblerStatistics()

    def add(self, deliver: Deliver, now: float) -> Reassembled | None:
        """Take one SMS-DELIVER; returns the whole message once every part has arrived."""
        concat = deliver.user_data.concat
        if concat is None or concat.total == 1:
            self._stats.completed += 1
            return Reassembled(deliver.originator, deliver.text, (deliver,))
        key = (
            deliver.originator.number,
            deliver.originator.toa,
            concat.ref,
            concat.total,
            concat.ref16,
        )
        group = self._groups.get(key)
        if group is None:
            self._expire(now)
            if len(self._groups) >= self._max_groups:
                oldest_key = next(iter(self._groups))
                self._give_up(self._groups.pop(oldest_key))
                self._stats.evicted += 1
            group = _Group(deliver.originator, concat.ref, concat.total, now)
            self._groups[key] = group
        if concat.seq in group.parts:
            self._stats.duplicates += 1
            return None
        group.parts[concat.seq] = deliver
        if len(group.parts) < group.total:
            return None
        del self._groups[key]
        parts = tuple(group.parts[i] for i in range(1, group.total + 1))
        self._stats.completed += 1
        return Reassembled(group.originator, _join_text(parts), parts)

    def expire(self, now: float) -> list[Incomplete]:
        """Give up groups older than the timeout; returns those and any evicted since last call."""
        self._expire(now)
        given_up, self._given_up = self._given_up, []
        return given_up

    def next_deadline(self) -> float | None:
        """When the oldest pending group times out, for the caller's cancel scope."""
        if not self._groups:
            return None
        return min(g.first_seen for g in self._groups.values()) + self._timeout

    def statistics(self) -> ReassemblerStatistics:
        return replace(self._stats, pending=len(self._groups))

    def _expire(self, now: float) -> None:
        for key in [k for k, g in self._groups.items() if now - g.first_seen >= self._timeout]:
            self._give_up(self._groups.pop(key))
            self._stats.expired += 1

    def _give_up(self, group: _Group) -> None:
        parts = tuple(group.parts[i] for i in sorted(group.parts))
        if len(self._given_up) >= self._max_groups:
            del self._given_up[0]  # expire() not called for long: keep the newest
        self._given_up.append(
            Incomplete(group.originator, group.ref, group.total, parts, _join_text(parts))
        )
