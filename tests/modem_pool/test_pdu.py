"""TS 23.040 PDU codec: vectors written by hand from the spec, round trips, boundaries, garbage."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.modem_pool import gsm7
from gateway.modem_pool.errors import (
    LocalProtocolError,
    PduEncodeError,
    PduError,
    RemoteProtocolError,
)
from gateway.modem_pool.pdu import (
    CONCAT_PART_SEPTETS,
    CONCAT_PART_UCS2,
    TOA_ALPHANUMERIC,
    TOA_INTERNATIONAL,
    TOA_UNKNOWN,
    Address,
    Alphabet,
    Concat,
    Deliver,
    Incomplete,
    InformationElement,
    Reassembler,
    StatusClass,
    StatusReport,
    Submit,
    TpStatus,
    UserData,
    alphabet_of,
    cmgs_length,
    decode_deliver,
    decode_incoming,
    decode_status_report,
    decode_submit,
    encode_deliver,
    encode_status_report,
    encode_submit,
    split_text,
    submit_parts,
    submits_for_parts,
    validity_from_seconds,
    validity_seconds,
)

CST = timezone(timedelta(hours=8))
MOBILE = Address.parse("+8613800138000")
# 8613800138000 as swapped semi-octets, padded with F: 68 31 08 10 83 00 F0
MOBILE_HEX = "0D91683108108300F0"
# 2024-03-15 10:20:30 +08:00 (32 quarter hours: tens 3, units 2 -> 0x23)
SCTS = datetime(2024, 3, 15, 10, 20, 30, tzinfo=CST)
SCTS_HEX = "42305101020323"


# --------------------------------------------------------------------------- SMS-SUBMIT vectors


def test_submit_hellohello_classic_vector():
    # TS 23.038 §6.1.2.1 packing: "hellohello" -> E8 32 9B FD 46 97 D9 EC 37.
    # First octet 0x11: TP-MTI 01, TP-VPF 10 (relative); TP-MR 0; TP-DA 11 digits 0x91.
    submit = Submit(
        destination=Address.parse("+46708251358"),
        user_data=UserData.from_text("hellohello"),
        validity=0xAA,
    )
    expected = bytes.fromhex("0011000B916407281553F80000AA0AE8329BFD4697D9EC37")
    assert encode_submit(submit) == expected
    assert cmgs_length(expected) == 23
    decoded = decode_submit(expected)
    assert decoded.text == "hellohello"
    assert decoded.destination == Address("46708251358", TOA_INTERNATIONAL)
    assert decoded.validity == 0xAA and decoded.mr == 0 and not decoded.status_report


def test_submit_with_udh_and_fill_bit_hand_vector():
    # UDH 05 00 03 CC 02 01 (6 octets = 48 bits) -> 7 septets, 1 fill bit.
    # "Hi" after one fill bit: 0x48 << 1 | 0x69 << 8 = 0x6990 -> 90 69. TP-UDL = 7 + 2 = 9.
    # First octet 0x71: MTI 01, VPF relative, SRR, UDHI. TP-DA "10086" type 0x81: 01 80 F6.
    submit = Submit(
        destination=Address("10086"),
        user_data=UserData(
            alphabet=Alphabet.GSM7,
            body=bytes(gsm7.encode("Hi")),
            header=(Concat(ref=0xCC, total=2, seq=1).element(),),
        ),
        status_report=True,
        mr=0,
    )
    expected = "0071000581" "0180F6" "0000A7" "09" "050003CC0201" "9069"
    assert encode_submit(submit).hex().upper() == expected
    decoded = decode_submit(expected)
    assert decoded.text == "Hi"
    assert decoded.status_report and decoded.destination == Address("10086", TOA_UNKNOWN)
    assert decoded.user_data.concat == Concat(ref=0xCC, total=2, seq=1)


def test_submit_ucs2_with_16bit_reference_hand_vector():
    # UDH 06 08 04 12 34 02 01; "你" U+4F60; TP-DCS 0x08; TP-UDL = 7 + 2 octets.
    submit = Submit(
        destination=Address("10086"),
        user_data=UserData(
            alphabet=Alphabet.UCS2,
            body="你".encode("utf-16-be"),
            header=(Concat(ref=0x1234, total=2, seq=1, ref16=True).element(),),
        ),
    )
    expected = "0051000581" "0180F6" "0008A7" "09" "06080412340201" "4F60"
    assert encode_submit(submit).hex().upper() == expected
    decoded = decode_submit(expected)
    assert decoded.text == "你"
    assert decoded.user_data.concat == Concat(ref=0x1234, total=2, seq=1, ref16=True)


def test_submit_without_validity_and_with_smsc():
    # TP-VPF 00: no TP-VP octet; first octet 0x01. SMSC +8613800100500: 08 91 68 31 08 10 00 05 F0.
    submit = Submit(
        destination=Address("10086"),
        user_data=UserData.from_text("@"),
        validity=None,
        mr=0x42,
        smsc=Address.parse("+8613800100500"),
    )
    expected = "0891683108100005F0" "0142" "05810180F6" "0000" "01" "00"
    assert encode_submit(submit).hex().upper() == expected
    assert cmgs_length(expected) == 11
    decoded = decode_submit(expected)
    assert decoded.smsc == Address("8613800100500", TOA_INTERNATIONAL)
    assert decoded.validity is None and decoded.mr == 0x42 and decoded.text == "@"


def test_decode_submit_skips_absolute_validity():
    # TP-VPF 11 (absolute, 7 octets) -> first octet 0x19.
    pdu = "0019000581" "0180F6" "0000" + SCTS_HEX + "01" "00"
    decoded = decode_submit(pdu)
    assert decoded.validity is None and decoded.text == "@"


def test_decode_submit_rejects_other_types():
    with pytest.raises(PduError):
        decode_submit("0004" "0581" "0180F6" "0000" + SCTS_HEX + "00")


# --------------------------------------------------------------------------- SMS-DELIVER vectors


def test_deliver_published_example():
    # SMSC +31624000000, first octet 04 (no more messages), TP-OA +31641600986,
    # SCTS 02-08-26 19:37:41 with TZ octet 08 (sign bit set, zero quarters), "How are you?".
    pdu = "07911326040000F0040B911346610089F60000208062917314080CC8F71D14969741F977FD07"
    deliver = decode_deliver(pdu)
    assert deliver.smsc == Address("31624000000", TOA_INTERNATIONAL)
    assert str(deliver.originator) == "+31641600986"
    assert deliver.scts == datetime(2002, 8, 26, 19, 37, 41, tzinfo=timezone.utc)
    assert deliver.text == "How are you?"
    assert not deliver.more_messages and deliver.pid == 0 and deliver.tp_dcs == 0


def test_deliver_ucs2_hand_vector():
    pdu = "00" "04" + MOBILE_HEX + "0008" + SCTS_HEX + "04" "4F60597D"
    deliver = decode_deliver(pdu)
    assert deliver.text == "你好"
    assert deliver.originator == MOBILE
    assert deliver.scts == SCTS and deliver.scts.utcoffset() == timedelta(hours=8)
    assert deliver.smsc is None
    rebuilt = Deliver(
        originator=MOBILE, user_data=UserData.from_text("你好"), scts=SCTS
    )
    assert encode_deliver(rebuilt).hex().upper() == pdu


def test_deliver_alphanumeric_originator_hand_vector():
    # "Info": I=0x49 n=0x6E f=0x66 o=0x6F packed LSB first -> 49 B7 F9 0D (28 bits, 7 semi-octets).
    pdu = "00" "04" "07D049B7F90D" "0000" + SCTS_HEX + "02" "C834"
    deliver = decode_deliver(pdu)
    assert deliver.originator == Address("Info", TOA_ALPHANUMERIC)
    assert deliver.originator.is_alphanumeric
    assert str(deliver.originator) == "Info"
    assert deliver.text == "Hi"
    assert encode_deliver(
        Deliver(
            originator=Address.alphanumeric("Info"), user_data=UserData.from_text("Hi"), scts=SCTS
        )
    ).hex().upper() == pdu


@pytest.mark.parametrize(
    ("tz_octet", "offset"),
    [
        ("23", timedelta(hours=8)),  # +32 quarters
        ("0A", timedelta(hours=-5)),  # sign bit, 20 quarters
        ("49", timedelta(hours=-3, minutes=-30)),  # sign bit, 14 quarters
        ("00", timedelta(0)),
        ("08", timedelta(0)),  # "minus zero"
        ("97", timedelta(hours=19, minutes=45)),  # 79 quarters, the largest
    ],
)
def test_time_zone_semi_octets(tz_octet, offset):
    pdu = "00" "04" + MOBILE_HEX + "0000" "12211332959" "5" + tz_octet + "00"
    deliver = decode_deliver(pdu)
    assert deliver.scts == datetime(2021, 12, 31, 23, 59, 59, tzinfo=timezone(offset))
    if tz_octet != "08":
        assert encode_deliver(deliver).hex().upper() == pdu


def test_deliver_concatenated_with_8bit_data():
    # TP-DCS 0x04 (8-bit data) with a UDH: octets kept as they are.
    pdu = "00" "44" + MOBILE_HEX + "0004" + SCTS_HEX + "08" "0500030A0201" "BEEF"
    deliver = decode_deliver(pdu)
    assert deliver.user_data.alphabet is Alphabet.DATA8
    assert deliver.user_data.body == b"\xbe\xef"
    assert deliver.user_data.concat == Concat(ref=10, total=2, seq=1)


def test_deliver_with_more_messages_and_status_report_indication():
    pdu = "00" "20" + MOBILE_HEX + "0000" + SCTS_HEX + "00"
    deliver = decode_deliver(pdu)
    assert deliver.more_messages and deliver.status_report_indication
    assert deliver.text == ""
    assert encode_deliver(deliver).hex().upper() == pdu


# --------------------------------------------------------------------------- STATUS-REPORT vectors

DT_HEX = "42305101025323"  # 2024-03-15 10:20:35 +08:00


@pytest.mark.parametrize(
    ("st_hex", "status_class"),
    [
        ("00", StatusClass.DELIVERED),
        ("01", StatusClass.DELIVERED),
        ("21", StatusClass.TEMPORARY),
        ("3F", StatusClass.TEMPORARY),
        ("46", StatusClass.PERMANENT),
        ("65", StatusClass.PERMANENT),
    ],
)
def test_status_report_hand_vector(st_hex, status_class):
    # First octet 06: TP-MTI 10, TP-MMS 1 (no more). TP-MR 0x2A.
    pdu = "00" "06" "2A" + MOBILE_HEX + SCTS_HEX + DT_HEX + st_hex
    report = decode_status_report(pdu)
    assert report.mr == 0x2A
    assert report.recipient == MOBILE
    assert report.scts == SCTS
    assert report.discharge_time == datetime(2024, 3, 15, 10, 20, 35, tzinfo=CST)
    assert report.status == int(st_hex, 16)
    assert report.status_class is status_class
    assert report.delivered == (status_class is StatusClass.DELIVERED)
    assert encode_status_report(report).hex().upper() == pdu
    assert isinstance(decode_incoming(pdu), StatusReport)


def test_status_report_with_smsc_and_parameter_indicator():
    # Trailing TP-PI 00 (no optional parameters), SMSC +8613800100500, TP-SRQ clear.
    pdu = "0891683108100005F0" "06" "07" "0581" "0180F6" + SCTS_HEX + DT_HEX + "46" "00"
    report = decode_status_report(pdu)
    assert report.smsc == Address("8613800100500", TOA_INTERNATIONAL)
    assert report.recipient == Address("10086")
    assert report.status == TpStatus.VALIDITY_PERIOD_EXPIRED
    assert report.status_class is StatusClass.PERMANENT


def test_decode_incoming_dispatches_and_refuses_submit():
    assert isinstance(decode_incoming("00" "04" + MOBILE_HEX + "0000" + SCTS_HEX + "00"), Deliver)
    with pytest.raises(PduError):
        decode_incoming("0011000B916407281553F80000AA0AE8329BFD4697D9EC37")
    with pytest.raises(PduError):
        decode_deliver("00" "06" "2A" + MOBILE_HEX + SCTS_HEX + DT_HEX + "00")
    with pytest.raises(PduError):
        decode_status_report("00" "04" + MOBILE_HEX + "0000" + SCTS_HEX + "00")


# --------------------------------------------------------------------------- small pieces


@pytest.mark.parametrize(
    ("dcs", "alphabet"),
    [
        (0x00, Alphabet.GSM7),
        (0x04, Alphabet.DATA8),
        (0x08, Alphabet.UCS2),
        (0x0C, Alphabet.GSM7),  # reserved alphabet: GSM 7-bit
        (0x10, Alphabet.GSM7),  # with message class 0
        (0x18, Alphabet.UCS2),
        (0x24, Alphabet.DATA8),  # compressed
        (0x48, Alphabet.UCS2),  # automatic deletion group
        (0xC0, Alphabet.GSM7),
        (0xE0, Alphabet.UCS2),
        (0xF0, Alphabet.GSM7),
        (0xF4, Alphabet.DATA8),
        (0x80, Alphabet.GSM7),
    ],
)
def test_alphabet_of_dcs(dcs, alphabet):
    assert alphabet_of(dcs) is alphabet


@pytest.mark.parametrize(
    ("vp", "seconds"),
    [(0, 300), (143, 12 * 3600), (144, 12 * 3600 + 1800), (167, 24 * 3600), (0xA7, 86400),
     (168, 2 * 86400), (196, 30 * 86400), (197, 5 * 7 * 86400), (255, 63 * 7 * 86400)],
)
def test_relative_validity(vp, seconds):
    assert validity_seconds(vp) == seconds
    assert validity_from_seconds(seconds) == vp


def test_validity_from_seconds_rounds_up_and_caps():
    assert validity_from_seconds(1) == 0
    assert validity_from_seconds(301) == 1
    assert validity_from_seconds(86400 * 1000) == 255


def test_address_parse_and_str():
    assert Address.parse("+8613800138000") == Address("8613800138000", TOA_INTERNATIONAL)
    assert str(Address.parse("+8613800138000")) == "+8613800138000"
    assert Address.parse("10086") == Address("10086", TOA_UNKNOWN)


def test_address_special_digits_round_trip():
    submit = Submit(destination=Address("*123#abc"), user_data=X)
    # * = A, # = B, a = C, b = D, c = E; pairs swapped: 1A 32 CB ED (TS 23.040 §9.1.2.3).
    pdu = encode_submit(submit)
    assert pdu.hex().upper() == "0011000881" "1A32CBED" "0000A7" "01" "78"
    assert decode_submit(pdu).destination == Address("*123#abc")


X = UserData.from_text("x")


@pytest.mark.parametrize(
    "make",
    [
        lambda: Submit(destination=Address(""), user_data=X),
        lambda: Submit(destination=Address("1" * 21), user_data=X),
        lambda: Submit(destination=Address("12-3"), user_data=X),
        lambda: Submit(destination=Address("123", 0x11), user_data=X),
        lambda: Submit(destination=Address.alphanumeric("Twelve char!"), user_data=X),
        lambda: Submit(destination=Address("1"), user_data=X, mr=256),
        lambda: Submit(destination=Address("1"), user_data=X, validity=300),
        lambda: Submit(destination=Address("1"), user_data=UserData.from_text("a" * 161)),
        lambda: Submit(destination=Address("1"), user_data=UserData.from_text("你" * 71)),
        lambda: Submit(destination=Address("1"), user_data=X, dcs=0x08),
        lambda: Submit(destination=Address("1"), user_data=UserData(Alphabet.GSM7, b"\x80")),
        lambda: Submit(destination=Address("1"), user_data=UserData(Alphabet.UCS2, b"\x4f")),
        lambda: Submit(destination=Address("1"), user_data=X, smsc=Address("")),
        lambda: Deliver(originator=Address("1"), user_data=X, scts=datetime(2024, 1, 1)),
        lambda: Deliver(originator=Address("1"), user_data=X,
                        scts=datetime(2024, 1, 1, tzinfo=timezone(timedelta(minutes=10)))),
        lambda: Deliver(originator=Address("1"), user_data=X,
                        scts=datetime(1999, 1, 1, tzinfo=timezone.utc)),
    ],
)
def test_unencodable_fields_raise_local_error(make):
    message = make()
    encode = encode_submit if isinstance(message, Submit) else encode_deliver
    with pytest.raises(PduEncodeError) as info:
        encode(message)
    assert isinstance(info.value, LocalProtocolError)


def test_text_outside_gsm_cannot_be_forced_to_gsm7():
    with pytest.raises(PduEncodeError):
        UserData.from_text("你", alphabet=Alphabet.GSM7)
    with pytest.raises(PduEncodeError):
        UserData.from_text("x", alphabet=Alphabet.DATA8)


# --------------------------------------------------------------------------- garbage and truncation

_VALID_PDUS = [
    ("submit", "0011000B916407281553F80000AA0AE8329BFD4697D9EC37"),
    ("submit", "0071000581" "0180F6" "0000A7" "09" "050003CC0201" "9069"),
    ("incoming", "07911326040000F0040B911346610089F60000208062917314080CC8F71D14969741F977FD07"),
    ("incoming", "00" "04" + MOBILE_HEX + "0008" + SCTS_HEX + "04" "4F60597D"),
    ("incoming", "00" "06" "2A" + MOBILE_HEX + SCTS_HEX + DT_HEX + "00"),
]


def _decoder(kind):
    return decode_submit if kind == "submit" else decode_incoming


@pytest.mark.parametrize(("kind", "pdu"), _VALID_PDUS)
def test_every_truncation_raises_pdu_error(kind, pdu):
    data = bytes.fromhex(pdu)
    for cut in range(len(data)):
        with pytest.raises(PduError):
            _decoder(kind)(data[:cut])


@pytest.mark.parametrize(
    ("kind", "pdu"),
    [
        ("incoming", "zz"),
        ("incoming", "0"),
        ("incoming", ""),
        ("incoming", "00" "04" + MOBILE_HEX + "0000" "42135101020323" "00"),  # month 31
        ("incoming", "00" "04" + MOBILE_HEX + "0000" "4A305101020323" "00"),  # non-decimal year
        ("incoming", "00" "04" + MOBILE_HEX + "0000" "423051010203A3" "00"),  # non-decimal tz
        ("incoming", "00" "04" "0D91" "6831F8108300F0" "0000" + SCTS_HEX + "00"),  # F inside
        ("incoming", "00" "04" "15" "91" + "11" * 11 + "0000" + SCTS_HEX + "00"),  # 21 digits
        ("incoming", "00" "04" + MOBILE_HEX + "0000" + SCTS_HEX + "A1" + "00" * 141),  # UDL 161
        ("incoming", "00" "04" + MOBILE_HEX + "0008" + SCTS_HEX + "8D" + "00" * 141),  # 141 octets
        ("incoming", "00" "04" + MOBILE_HEX + "0008" + SCTS_HEX + "03" "4F6059"),  # odd UCS2
        ("incoming", "00" "44" + MOBILE_HEX + "0008" + SCTS_HEX + "04" "09000301"),  # UDHL > UD
        ("incoming", "00" "44" + MOBILE_HEX + "0008" + SCTS_HEX + "04" "03000501"),  # IE overruns
        ("incoming", "00" "44" + MOBILE_HEX + "0008" + SCTS_HEX + "00"),  # UDHI, empty UD
        ("incoming", "00" "44" + MOBILE_HEX + "0000" + SCTS_HEX + "02" "0500"),  # UDH > UDL septets
        ("incoming", "0C" + "91" * 12 + "04"),  # SMSC of 12 octets
        ("incoming", "00" "01"),  # SMS-SUBMIT-REPORT direction
        ("submit", "00" "11" "00" "0B91" "6407281553F8" "0000" "AA" "0A" "E832"),
    ],
)
def test_garbage_raises_pdu_error(kind, pdu):
    with pytest.raises(PduError) as info:
        _decoder(kind)(pdu)
    assert isinstance(info.value, RemoteProtocolError)


def test_cmgs_length_of_garbage():
    with pytest.raises(PduError):
        cmgs_length(b"")
    with pytest.raises(PduError):
        cmgs_length("0791")
    with pytest.raises(PduError):
        cmgs_length("xyz")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_random_bytes_decode_or_raise_pdu_error(data, submit):
    decoder = decode_submit if submit else decode_incoming
    try:
        message = decoder(data)
    except PduError:
        return
    assert isinstance(message, (Submit, Deliver, StatusReport))
    if not isinstance(message, StatusReport):
        assert isinstance(message.text, str)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_random_hex_text_decodes_or_raises_pdu_error(text):
    try:
        message = decode_incoming(text)
    except PduError as exc:
        assert str(exc)
    else:
        assert isinstance(message, (Deliver, StatusReport))


# --------------------------------------------------------------------------- concatenation

GSM_CHARS = [c for i, c in enumerate(gsm7.DEFAULT_ALPHABET) if i != gsm7.ESC] + list(
    gsm7.EXTENSION_TABLE.values()
)
GSM_BASE_CHARS = [c for c in GSM_CHARS if c not in gsm7.EXTENSION_TABLE.values()]
gsm_text = st.text(alphabet=st.sampled_from(GSM_CHARS), max_size=700)
any_text = st.text(
    alphabet=st.one_of(
        st.characters(exclude_categories=("Cs",)),
        st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF),  # astral: surrogate pairs
        st.sampled_from("你好€"),
    ),
    max_size=400,
)


def _split_and_join(text, *, ref16=False, ref=7):
    submits = submit_parts(MOBILE, text, ref=ref, ref16=ref16)
    decoded = [decode_submit(encode_submit(s)) for s in submits]
    return submits, decoded


def test_exactly_160_septets_is_one_part():
    submits = submit_parts(MOBILE, "a" * 160)
    assert len(submits) == 1 and submits[0].user_data.header == ()
    pdu = encode_submit(submits[0])
    assert pdu[pdu.index(0xA7) + 1] == 160


def test_161_septets_is_153_plus_8():
    submits, decoded = _split_and_join("a" * 161)
    assert [len(s.user_data.body) for s in submits] == [153, 8]
    assert [d.user_data.concat for d in decoded] == [Concat(7, 2, 1), Concat(7, 2, 2)]
    # 6-octet UDH = 7 septets; 7 + 153 = 160 septets in the first part.
    first = encode_submit(submits[0])
    assert first[first.index(0xA7) + 1] == 160
    assert "".join(d.text for d in decoded) == "a" * 161


def test_16bit_reference_parts_carry_152_septets():
    submits, decoded = _split_and_join("b" * 305, ref16=True, ref=0xBEEF)
    assert [len(s.user_data.body) for s in submits] == [152, 152, 1]
    assert decoded[2].user_data.concat == Concat(0xBEEF, 3, 3, ref16=True)


def test_escape_sequence_never_split_at_part_edge():
    text = "a" * 152 + "€" + "b" * 10  # ESC would be septet 153, its code septet 154
    submits, decoded = _split_and_join(text)
    assert [len(s.user_data.body) for s in submits] == [152, 12]
    assert decoded[0].text == "a" * 152 and decoded[1].text == "€" + "b" * 10


def test_escape_sequence_ending_exactly_at_edge_stays():
    text = "a" * 151 + "€" + "b" * 10  # ESC at 152, code at 153: fits
    submits, _ = _split_and_join(text)
    assert [len(s.user_data.body) for s in submits] == [153, 10]


def test_exactly_70_ucs2_units_is_one_part():
    submits = submit_parts(MOBILE, "你" * 70)
    assert len(submits) == 1
    assert submits[0].user_data.alphabet is Alphabet.UCS2
    pdu = encode_submit(submits[0])
    assert pdu[-141] == 140  # TP-UDL in octets


def test_71_ucs2_units_is_67_plus_4():
    submits, decoded = _split_and_join("你" * 71)
    assert [len(s.user_data.body) // 2 for s in submits] == [67, 4]
    assert all(d.tp_dcs == 0x08 for d in decoded)
    assert "".join(d.text for d in decoded) == "你" * 71


def test_ucs2_16bit_reference_parts_carry_66_units():
    submits, _ = _split_and_join("你" * 133, ref16=True)
    assert [len(s.user_data.body) // 2 for s in submits] == [66, 66, 1]


def test_surrogate_pair_never_split():
    text = "你" * 66 + "😀" + "好" * 10  # the pair would straddle units 67/68
    submits, decoded = _split_and_join(text)
    assert [len(s.user_data.body) // 2 for s in submits] == [66, 12]
    assert decoded[1].text.startswith("😀")


def test_too_many_parts_and_bad_reference():
    with pytest.raises(PduEncodeError):
        split_text("a" * (153 * 255 + 1))
    assert len(split_text("a" * (153 * 255))) == 255
    with pytest.raises(PduEncodeError):
        split_text("a" * 200, ref=256)
    assert split_text("a" * 200, ref=65535, ref16=True)[0].concat.ref == 65535


def test_submit_parts_options():
    submits = submit_parts(Address("10086"), "hi", status_report=True, validity=None)
    pdu = encode_submit(submits[0])
    assert pdu.hex().upper() == "0021000581" "0180F6" "0000" "02" "E834"


@settings(max_examples=200, deadline=None)
@given(gsm_text, st.booleans())
def test_gsm_text_round_trip_through_parts(text, ref16):
    submits, decoded = _split_and_join(text, ref16=ref16)
    assert all(d.user_data.alphabet is Alphabet.GSM7 for d in decoded)
    assert "".join(d.text for d in decoded) == text
    limit = 160 if len(submits) == 1 else CONCAT_PART_SEPTETS[ref16]
    assert all(len(s.user_data.body) <= limit for s in submits)
    assert all(s.user_data.body[-1:] != bytes((gsm7.ESC,)) for s in submits)


@settings(max_examples=200, deadline=None)
@given(any_text, st.booleans())
def test_unicode_text_round_trip_through_parts(text, ref16):
    submits, decoded = _split_and_join(text, ref16=ref16)
    assert "".join(d.text for d in decoded) == text
    if not gsm7.fits(text):
        limit = 70 if len(submits) == 1 else CONCAT_PART_UCS2[ref16]
        assert all(len(s.user_data.body) // 2 <= limit for s in submits)
        for d in decoded:
            assert "\ufffd" not in d.text or "\ufffd" in text


timestamps = st.builds(
    lambda dt, q: dt.replace(tzinfo=timezone(timedelta(minutes=15 * q))),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59, 59)).map(
        lambda d: d.replace(microsecond=0)
    ),
    st.integers(min_value=-79, max_value=79),
)
numbers = st.text(alphabet="0123456789", min_size=1, max_size=20)
addresses = st.one_of(
    st.builds(Address, numbers, st.sampled_from([TOA_INTERNATIONAL, TOA_UNKNOWN])),
    st.builds(
        Address.alphanumeric,
        st.text(alphabet=st.sampled_from(GSM_BASE_CHARS), min_size=1, max_size=11),
    ),
)


@settings(max_examples=200, deadline=None)
@given(addresses, st.one_of(gsm_text, any_text).map(lambda t: t[:30]), timestamps, st.booleans())
def test_deliver_round_trip(originator, text, scts, more):
    deliver = Deliver(
        originator=originator, user_data=UserData.from_text(text), scts=scts, more_messages=more
    )
    decoded = decode_deliver(encode_deliver(deliver))
    assert decoded.originator == originator
    assert decoded.text == text
    assert decoded.scts == scts
    assert decoded.more_messages == more


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 255), addresses, timestamps, timestamps, st.integers(0, 255))
def test_status_report_round_trip(mr, recipient, scts, dt, status):
    report = StatusReport(mr=mr, recipient=recipient, scts=scts, discharge_time=dt, status=status)
    assert decode_status_report(encode_status_report(report)) == report


# --------------------------------------------------------------------------- reassembly


def _delivers(text, *, ref=5, originator=MOBILE, ref16=False):
    return [
        Deliver(originator=originator, user_data=part, scts=SCTS)
        for part in split_text(text, ref=ref, ref16=ref16)
    ]


def test_single_message_passes_straight_through():
    r = Reassembler()
    (deliver,) = _delivers("hello")
    done = r.add(deliver, now=0.0)
    assert done.text == "hello" and done.parts == (deliver,) and done.originator == MOBILE
    assert r.statistics().pending == 0


def test_parts_in_any_order_with_duplicates():
    text = "x" * 300 + "€"
    parts = _delivers(text)
    assert len(parts) == 2
    r = Reassembler()
    assert r.add(parts[1], now=0.0) is None
    assert r.add(parts[1], now=1.0) is None  # duplicate
    done = r.add(parts[0], now=2.0)
    assert done.text == text
    assert done.parts == tuple(parts)
    stats = r.statistics()
    assert (stats.duplicates, stats.completed, stats.pending) == (1, 1, 0)


def test_groups_are_kept_apart_by_originator_and_reference():
    r = Reassembler()
    a = _delivers("a" * 200, ref=1)
    b = _delivers("b" * 200, ref=1, originator=Address.parse("+8613900000001"))
    c = _delivers("c" * 200, ref=2)
    for part in (a[0], b[0], c[0]):
        assert r.add(part, now=0.0) is None
    assert r.add(c[1], now=0.0).text == "c" * 200
    assert r.add(b[1], now=0.0).text == "b" * 200
    assert r.add(a[1], now=0.0).text == "a" * 200


def test_timeout_gives_up_with_what_arrived():
    r = Reassembler(timeout=60.0)
    parts = _delivers("z" * 400)
    r.add(parts[0], now=10.0)
    r.add(parts[2], now=20.0)
    assert r.next_deadline() == 70.0
    assert r.expire(now=69.9) == []
    (incomplete,) = r.expire(now=70.0)
    assert isinstance(incomplete, Incomplete)
    assert (incomplete.ref, incomplete.total) == (5, 3)
    assert incomplete.parts == (parts[0], parts[2])
    assert incomplete.text == "z" * (153 + 94)
    assert r.statistics().expired == 1 and r.next_deadline() is None
    # A late part starts a new group rather than completing the old one.
    assert r.add(parts[1], now=80.0) is None


def test_pending_groups_are_bounded():
    r = Reassembler(max_groups=2)
    first = [_delivers("q" * 200, ref=ref)[0] for ref in range(3)]
    for i, part in enumerate(first):
        r.add(part, now=float(i))
    assert r.statistics().pending == 2 and r.statistics().evicted == 1
    (evicted,) = r.expire(now=3.0)
    assert evicted.ref == 0


def test_escape_and_surrogate_split_by_sender_are_rejoined():
    # A careless sender put ESC at the end of part 1 and the euro code at the start of part 2.
    septets = gsm7.encode("a" * 152 + "€" + "b")
    gsm_parts = [
        Deliver(
            originator=MOBILE,
            user_data=UserData(Alphabet.GSM7, bytes(chunk), (Concat(9, 2, seq).element(),)),
            scts=SCTS,
        )
        for seq, chunk in ((1, septets[:153]), (2, septets[153:]))
    ]
    r = Reassembler()
    r.add(gsm_parts[1], now=0.0)
    assert r.add(gsm_parts[0], now=0.0).text == "a" * 152 + "€" + "b"

    units = ("你" * 66 + "😀").encode("utf-16-be")
    ucs_parts = [
        Deliver(
            originator=MOBILE,
            user_data=UserData(Alphabet.UCS2, chunk, (Concat(9, 2, seq, ref16=True).element(),)),
            scts=SCTS,
        )
        for seq, chunk in ((1, units[:134]), (2, units[134:]))
    ]
    assert r.add(ucs_parts[0], now=0.0) is None
    assert r.add(ucs_parts[1], now=0.0).text == "你" * 66 + "😀"


def test_invalid_concat_ie_is_ignored():
    ud = UserData(Alphabet.GSM7, bytes(gsm7.encode("x")), (InformationElement(0, b"\x01\x02\x03"),))
    assert ud.concat is None  # seq 3 > total 2
    done = Reassembler().add(Deliver(originator=MOBILE, user_data=ud, scts=SCTS), now=0.0)
    assert done.text == "x"


def test_reassembler_rejects_nonsense_limits():
    with pytest.raises(LocalProtocolError):
        Reassembler(timeout=0)


@settings(max_examples=150, deadline=None)
@given(st.one_of(gsm_text, any_text), st.randoms(use_true_random=False), st.booleans())
def test_reassembly_of_shuffled_parts_with_duplicates(text, rnd, ref16):
    parts = _delivers(text, ref16=ref16)
    stream = parts + [rnd.choice(parts) for _ in range(len(parts) // 2)]
    rnd.shuffle(stream)
    r = Reassembler()
    results = [res for p in stream if (res := r.add(p, now=0.0)) is not None]
    assert len(results) >= 1
    assert results[0].text == text
    assert results[0].parts == tuple(parts)


# --------------------------------------------------------------------------- parts cut elsewhere


def test_submits_for_parts_adds_concat_headers():
    submits = submits_for_parts(
        Address("10086"), ["Hi", "Ho"], alphabet=Alphabet.GSM7, ref=0xCC, status_report=True
    )
    # First part: the hand vector above (UDH 050003CC0201, one fill bit, "Hi" -> 90 69).
    assert encode_submit(submits[0]).hex().upper() == (
        "0071000581" "0180F6" "0000A7" "09" "050003CC0201" "9069"
    )
    assert decode_submit(encode_submit(submits[1])).user_data.concat == Concat(0xCC, 2, 2)


def test_submits_for_a_single_part_has_no_header():
    (submit,) = submits_for_parts(Address("10086"), ["你好"], alphabet=Alphabet("ucs2"))
    assert submit.user_data.header == () and submit.tp_dcs == 0x08
    assert encode_submit(submit).hex().upper().endswith("04" "4F60597D")


@pytest.mark.parametrize(
    ("parts", "alphabet", "ref"),
    [
        ([], Alphabet.GSM7, 0),
        (["x"] * 256, Alphabet.GSM7, 0),
        (["x", "y"], Alphabet.GSM7, 256),
        (["你"], Alphabet.GSM7, 0),
    ],
)
def test_submits_for_parts_refuses_what_cannot_be_sent(parts, alphabet, ref):
    with pytest.raises(PduEncodeError):
        submits_for_parts(Address("10086"), parts, alphabet=alphabet, ref=ref)


def test_submits_for_parts_part_too_long_fails_on_encode():
    (submit, _) = submits_for_parts(Address("10086"), ["a" * 154, "b"], alphabet=Alphabet.GSM7)
    with pytest.raises(PduEncodeError):
        encode_submit(submit)
