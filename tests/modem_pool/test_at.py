"""AT engine core: hand-written modem byte streams (TS 27.007 / TS 27.005 PDU mode)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.modem_pool.at import (
    MAX_INFO_LINES,
    MAX_LINE_LENGTH,
    MAX_PENDING_EVENTS,
    AckMessage,
    AtConnection,
    Attention,
    CmsError,
    CommandCompleted,
    CommandFailed,
    DeleteMessage,
    Done,
    EnterPin,
    FinalResult,
    Garbage,
    IncomingDeliver,
    IncomingStatusReport,
    ListMessages,
    MessageList,
    MessageStat,
    NewMessage,
    NewStatusReport,
    OwnNumber,
    OwnNumbers,
    PinState,
    Prompt,
    QueryOwnNumber,
    QueryPin,
    QueryRegistration,
    QuerySignal,
    QueryStorage,
    RawCommand,
    RawResponse,
    ReadMessage,
    Registration,
    ReportErrors,
    ResponseMalformed,
    Ring,
    SelectPduMode,
    SelectStorage,
    SendMessage,
    SetEcho,
    SetIndications,
    SignalQuality,
    StorageArea,
    StorageStatus,
    StoredMessage,
    SubmitResult,
    Unsolicited,
    VendorNotice,
)
from gateway.modem_pool.errors import LocalProtocolError, ProtocolError

# An SMS-SUBMIT as a modem takes it: SMSC length 0, then a 23-octet TPDU
# ("hellohello" to +46708251358, TS 23.040 §9.2.2.2).
SUBMIT_PDU = bytes.fromhex("0011000B916407281553F80000AA0AE8329BFD4697D9EC37")
DELIVER_HEX = "07911326040000F0040B911346610089F60000208062917314080CC8F71D14969741F977FD07"


def feed(conn: AtConnection, data: bytes, chunk: int | None = None) -> list:
    """Feed ``data`` in chunks of ``chunk`` bytes (all at once when None) and drain."""
    events = []
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        conn.receive_data(data[i : i + step])
        events.extend(conn.events())
    return events


def run(command, stream: bytes, chunk: int | None = None) -> list:
    conn = AtConnection()
    conn.send(command)
    return feed(conn, stream, chunk)


CHUNKS = [None, 1, 2, 3, 7]


# --------------------------------------------------------------------------- command lines


@pytest.mark.parametrize(
    ("command", "line"),
    [
        (Attention(), b"AT\r"),
        (SetEcho(), b"ATE0\r"),
        (SetEcho(on=True), b"ATE1\r"),
        (ReportErrors(), b"AT+CMEE=1\r"),
        (SelectPduMode(), b"AT+CMGF=0\r"),
        (QueryPin(), b"AT+CPIN?\r"),
        (EnterPin("1234"), b'AT+CPIN="1234"\r'),
        (QuerySignal(), b"AT+CSQ\r"),
        (QueryRegistration(), b"AT+CREG?\r"),
        (SetIndications(), b"AT+CNMI=2,1,0,1,0\r"),
        (SetIndications(ds=2), b"AT+CNMI=2,1,0,2,0\r"),
        (SelectStorage(), b'AT+CPMS="SM","SM","SM"\r'),
        (QueryStorage(), b"AT+CPMS?\r"),
        (QueryOwnNumber(), b"AT+CNUM\r"),
        (SendMessage(SUBMIT_PDU), b"AT+CMGS=23\r"),
        (ReadMessage(3), b"AT+CMGR=3\r"),
        (ListMessages(), b"AT+CMGL=4\r"),
        (ListMessages(MessageStat.REC_UNREAD), b"AT+CMGL=0\r"),
        (DeleteMessage(2), b"AT+CMGD=2\r"),
        (DeleteMessage(1, 4), b"AT+CMGD=1,4\r"),
        (AckMessage(), b"AT+CNMA\r"),
        (RawCommand("AT+CGSN"), b"AT+CGSN\r"),
    ],
)
def test_command_lines(command, line):
    assert AtConnection().send(command) == line


def test_cmgs_length_excludes_smsc_address():
    # SMSC +8613800100500 (7 octets incl. type) before the same 23-octet TPDU.
    with_smsc = bytes.fromhex("0891683108100005F0") + SUBMIT_PDU[1:]
    assert SendMessage(with_smsc).tpdu_length == 23
    assert SendMessage(with_smsc).text == "AT+CMGS=23"


def test_pin_is_not_in_repr():
    assert "1234" not in repr(EnterPin("1234"))
    assert "1234" not in EnterPin("1234").label


@pytest.mark.parametrize(
    "make",
    [
        lambda: EnterPin("12"),
        lambda: EnterPin("12a4"),
        lambda: ReportErrors(3),
        lambda: SetIndications(mode=4),
        lambda: SelectStorage("XX"),
        lambda: ReadMessage(-1),
        lambda: ListMessages(5),
        lambda: DeleteMessage(1, 5),
        lambda: SendMessage(b""),
        lambda: SendMessage(b"\x00"),
        lambda: SendMessage(b"\x0c" + b"\x91" * 12 + b"\x11"),
        lambda: RawCommand("ATD123;\r"),
        lambda: RawCommand("+CSQ"),
        lambda: RawCommand("AT+CPBW=1,\"\u4f60\""),
    ],
)
def test_invalid_commands_raise_local_error(make):
    with pytest.raises(LocalProtocolError):
        make()


def test_one_command_in_flight():
    conn = AtConnection()
    conn.send(Attention())
    with pytest.raises(LocalProtocolError):
        conn.send(QuerySignal())
    conn.receive_data(b"\r\nOK\r\n")
    assert list(conn.events()) == [CommandCompleted(Attention(), Done())]
    assert conn.send(QuerySignal()) == b"AT+CSQ\r"


def test_body_without_prompt_is_refused():
    conn = AtConnection()
    with pytest.raises(LocalProtocolError):
        conn.send_body()
    conn.send(SendMessage(SUBMIT_PDU))
    with pytest.raises(LocalProtocolError):
        conn.send_body()


def test_errors_share_the_gateway_base():
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(ProtocolError, GatewayError)


# --------------------------------------------------------------------------- final results


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(
    ("stream", "result", "code", "text"),
    [
        (b"\r\nERROR\r\n", FinalResult.ERROR, None, ""),
        (b"\r\n+CME ERROR: 10\r\n", FinalResult.CME_ERROR, 10, "10"),
        (b"\r\n+CMS ERROR: 500\r\n", FinalResult.CMS_ERROR, 500, "500"),
        (b"\r\n+CME ERROR: SIM not inserted\r\n", FinalResult.CME_ERROR, 10, "SIM not inserted"),
        (b"\r\n+CME ERROR: SIM busy\r\n", FinalResult.CME_ERROR, 14, "SIM busy"),
        (b"\r\n+CMS ERROR: (U)SIM busy\r\n", FinalResult.CMS_ERROR, 314, "(U)SIM busy"),
        (b"\r\n+CMS ERROR: Invalid PDU mode parameter\r\n", FinalResult.CMS_ERROR, 304,
         "Invalid PDU mode parameter"),
        (b"\r\n+CMS ERROR: unknown error\r\n", FinalResult.CMS_ERROR, 500, "unknown error"),
        (b"\r\n+CME ERROR: vendor says no\r\n", FinalResult.CME_ERROR, None, "vendor says no"),
        (b"\r\nNO CARRIER\r\n", FinalResult.NO_CARRIER, None, ""),
        (b"\r\nCOMMAND NOT SUPPORT\r\n", FinalResult.COMMAND_NOT_SUPPORT, None, ""),
    ],
)
def test_error_results(stream, result, code, text, chunk):
    events = run(QuerySignal(), stream, chunk)
    assert events == [CommandFailed(QuerySignal(), result, code, text)]


def test_cms_error_code_matches_named_values():
    (event,) = run(SendMessage(SUBMIT_PDU), b"\r\n+CMS ERROR: 322\r\n")
    assert event.code == CmsError.MEMORY_FULL == 322
    assert type(event.code) is int


def test_results_are_case_insensitive_and_accept_bare_cr():
    # Some modems end lines with CR only; some answer in lower case in verbose mode.
    assert run(Attention(), b"ok\r") == [CommandCompleted(Attention(), Done())]
    assert run(Attention(), b"\nOK\n") == [CommandCompleted(Attention(), Done())]


def test_result_with_nothing_in_flight_is_garbage():
    conn = AtConnection()
    events = feed(conn, b"\r\nOK\r\n\r\n+CMS ERROR: 500\r\n")
    assert [type(e) for e in events] == [Garbage, Garbage]
    assert events[0].data == b"OK"
    assert conn.command is None


# --------------------------------------------------------------------------- typed responses


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(
    ("command", "stream", "response"),
    [
        (QueryPin(), b"\r\n+CPIN: READY\r\n\r\nOK\r\n", PinState("READY")),
        (QueryPin(), b"\r\n+CPIN: SIM PIN\r\n\r\nOK\r\n", PinState("SIM PIN")),
        (QuerySignal(), b"\r\n+CSQ: 20,99\r\n\r\nOK\r\n", SignalQuality(20, 99)),
        (QuerySignal(), b"\r\n+CSQ: 99,99\r\n\r\nOK\r\n", SignalQuality(99, 99)),
        (QueryRegistration(), b"\r\n+CREG: 0,1\r\n\r\nOK\r\n", Registration(0, 1)),
        (
            QueryRegistration(),
            b'\r\n+CREG: 2,5,"A1B2","00C3"\r\n\r\nOK\r\n',
            Registration(2, 5, "A1B2", "00C3"),
        ),
        (
            QueryStorage(),
            b'\r\n+CPMS: "SM",3,20,"SM",3,20,"SM",3,20\r\n\r\nOK\r\n',
            StorageStatus((StorageArea("SM", 3, 20),) * 3),
        ),
        (
            SelectStorage(),
            b"\r\n+CPMS: 20,20,20,20,20,20\r\n\r\nOK\r\n",
            StorageStatus((StorageArea(None, 20, 20),) * 3),
        ),
        (
            QueryOwnNumber(),
            b'\r\n+CNUM: "Own number","+8613800138000",145\r\n\r\nOK\r\n',
            OwnNumbers((OwnNumber("Own number", "+8613800138000", 145),)),
        ),
        (
            QueryOwnNumber(),
            b'\r\n+CNUM: ,"13800138000",129\r\n+CNUM: "Fax","13800138001",129\r\n\r\nOK\r\n',
            OwnNumbers(
                (OwnNumber("", "13800138000", 129), OwnNumber("Fax", "13800138001", 129))
            ),
        ),
        (QueryOwnNumber(), b"\r\nOK\r\n", OwnNumbers(())),
        (
            ReadMessage(1),
            b"\r\n+CMGR: 0,,30\r\n" + DELIVER_HEX.encode() + b"\r\n\r\nOK\r\n",
            StoredMessage(1, MessageStat.REC_UNREAD, "", 30, DELIVER_HEX),
        ),
        (ReadMessage(9), b"\r\n+CMGR: 0,,0\r\n\r\nOK\r\n", StoredMessage(9, 0, "", 0, "")),
        (
            ListMessages(),
            b"\r\n+CMGL: 1,0,,30\r\n"
            + DELIVER_HEX.encode()
            + b"\r\n+CMGL: 4,1,,30\r\n"
            + DELIVER_HEX.lower().encode()
            + b"\r\n\r\nOK\r\n",
            MessageList(
                (
                    StoredMessage(1, 0, "", 30, DELIVER_HEX),
                    StoredMessage(4, 1, "", 30, DELIVER_HEX),
                )
            ),
        ),
        (ListMessages(), b"\r\nOK\r\n", MessageList(())),
        (
            RawCommand("AT+CGSN"),
            b"\r\n861234567890123\r\n\r\nOK\r\n",
            RawResponse(("861234567890123",)),
        ),
        (
            RawCommand("AT^SYSINFO", info_prefix="^SYSINFO"),
            b"\r\n^SYSINFO:2,3,0,5,1\r\n\r\nOK\r\n",
            RawResponse(("^SYSINFO:2,3,0,5,1",)),
        ),
    ],
)
def test_typed_responses(command, stream, response, chunk):
    assert run(command, stream, chunk) == [CommandCompleted(command, response)]


def test_signal_in_dbm():
    assert SignalQuality(20, 99).dbm == -73
    assert SignalQuality(0, 0).dbm == -113
    assert SignalQuality(31, 0).dbm == -51
    assert SignalQuality(99, 99).dbm is None


def test_registration_and_storage_helpers():
    assert Registration(0, 1).registered and Registration(0, 5).registered
    assert not any(Registration(0, s).registered for s in (0, 2, 3, 4))
    assert StorageArea("SM", 20, 20).full and not StorageArea("SM", 3, 20).full
    assert PinState("READY").ready and not PinState("SIM PIN").ready


@pytest.mark.parametrize(
    ("command", "stream"),
    [
        (QuerySignal(), b"\r\n+CSQ: x,99\r\n\r\nOK\r\n"),
        (QuerySignal(), b"\r\n+CSQ: 40,99\r\n\r\nOK\r\n"),
        (QuerySignal(), b"\r\n+CSQ: 20\r\n\r\nOK\r\n"),
        (QuerySignal(), b"\r\nOK\r\n"),
        (QueryPin(), b"\r\n+CPIN: \r\n\r\nOK\r\n"),
        (QueryStorage(), b'\r\n+CPMS: "SM",3\r\n\r\nOK\r\n'),
        (QueryRegistration(), b"\r\n+CREG: 1\r\n\r\nOK\r\n"),
        (QueryOwnNumber(), b'\r\n+CNUM: "x\r\n\r\nOK\r\n'),
        (SendMessage(SUBMIT_PDU), b"\r\n> \r\n+CMGS: 256\r\n\r\nOK\r\n"),
        (ReadMessage(1), b"\r\n+CMGR: 0,,30\r\n\r\nOK\r\n"),
        (ReadMessage(1), b"\r\n+CMGR: 0,,30\r\nNOT HEX\r\n\r\nOK\r\n"),
        (ListMessages(), b"\r\n+CMGL: 1,0,,30\r\n0\r\n\r\nOK\r\n"),
    ],
)
def test_malformed_information_text(command, stream):
    events = [e for e in run(command, stream) if not isinstance(e, (Prompt, Unsolicited))]
    assert len(events) == 1 and isinstance(events[0], ResponseMalformed)
    assert events[0].command == command and events[0].reason


def test_attention_ignores_unrelated_lines_as_unsolicited():
    events = run(Attention(), b"\r\n+CSQ: 1,1\r\n\r\nOK\r\n")
    assert events == [Unsolicited("+CSQ", "1,1"), CommandCompleted(Attention(), Done())]


# --------------------------------------------------------------------------- echo


@pytest.mark.parametrize("chunk", CHUNKS)
def test_power_up_echo_is_dropped(chunk):
    conn = AtConnection()
    events = []
    for command, stream in [
        (Attention(), b"AT\r\r\nOK\r\n"),
        (SetEcho(), b"ATE0\r\r\nOK\r\n"),
        (QuerySignal(), b"\r\n+CSQ: 17,99\r\n\r\nOK\r\n"),
    ]:
        conn.send(command)
        events += feed(conn, stream, chunk)
    assert events == [
        CommandCompleted(Attention(), Done()),
        CommandCompleted(SetEcho(), Done()),
        CommandCompleted(QuerySignal(), SignalQuality(17, 99)),
    ]


def test_echo_in_other_case_and_after_noise_is_dropped():
    events = run(QuerySignal(), b"\x00\xffat+csq\r\r\n+CSQ: 5,0\r\n\r\nOK\r\n")
    assert events[-1] == CommandCompleted(QuerySignal(), SignalQuality(5, 0))
    assert [type(e) for e in events[:-1]] == [Garbage]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_cmgs_with_echo_on_drops_command_and_body_echo(chunk):
    command = SendMessage(SUBMIT_PDU)
    conn = AtConnection()
    assert conn.send(command) == b"AT+CMGS=23\r"
    events = feed(conn, b"AT+CMGS=23\r\r\n> ", chunk)
    assert events == [Prompt(command)]
    assert conn.awaiting_body
    body = conn.send_body()
    assert body == b"0011000B916407281553F80000AA0AE8329BFD4697D9EC37\x1a"
    events = feed(conn, body + b"\r\n+CMGS: 12\r\n\r\nOK\r\n", chunk)
    assert events == [CommandCompleted(command, SubmitResult(12))]


# --------------------------------------------------------------------------- prompt


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("prompt", [b"\r\n> ", b"> ", b"\r\n>", b"\n> "])
def test_prompt_without_line_end(prompt, chunk):
    command = SendMessage(SUBMIT_PDU)
    conn = AtConnection()
    conn.send(command)
    assert feed(conn, prompt, chunk) == [Prompt(command)]
    conn.send_body()
    events = feed(conn, b"\r\n+CMGS: 0\r\n\r\nOK\r\n", chunk)
    assert events == [CommandCompleted(command, SubmitResult(0))]


def test_cms_error_instead_of_prompt():
    command = SendMessage(SUBMIT_PDU)
    events = run(command, b"\r\n+CMS ERROR: 304\r\n")
    assert events == [CommandFailed(command, FinalResult.CMS_ERROR, 304, "304")]


def test_cms_error_after_body():
    command = SendMessage(SUBMIT_PDU)
    conn = AtConnection()
    conn.send(command)
    assert feed(conn, b"\r\n> ") == [Prompt(command)]
    conn.send_body()
    events = feed(conn, b"\r\n+CMS ERROR: 332\r\n")
    assert events == [CommandFailed(command, FinalResult.CMS_ERROR, 332, "332")]
    assert conn.command is None


def test_urc_before_prompt():
    command = SendMessage(SUBMIT_PDU)
    events = run(command, b'\r\n+CMTI: "SM",2\r\n\r\n> ')
    assert events == [NewMessage("SM", 2), Prompt(command)]


def test_greater_than_is_not_a_prompt_for_other_commands():
    events = run(RawCommand("ATI"), b"\r\n> hello\r\n\r\nOK\r\n")
    assert events == [CommandCompleted(RawCommand("ATI"), RawResponse(("> hello",)))]


# --------------------------------------------------------------------------- abandon


def test_abandon_at_prompt_sends_escape_and_late_answers_are_garbage():
    command = SendMessage(SUBMIT_PDU)
    conn = AtConnection()
    conn.send(command)
    feed(conn, b"\r\n> ")
    assert conn.abandon() == b"\x1b"
    assert conn.command is None
    events = feed(conn, b"\r\nOK\r\n")
    assert [type(e) for e in events] == [Garbage]
    assert conn.send(Attention()) == b"AT\r"
    assert feed(conn, b"\r\nOK\r\n") == [CommandCompleted(Attention(), Done())]
    assert conn.statistics().commands_abandoned == 1


def test_abandon_plain_command_sends_nothing():
    conn = AtConnection()
    assert conn.abandon() == b""
    conn.send(QuerySignal())
    assert conn.abandon() == b""
    assert conn.command is None


# --------------------------------------------------------------------------- unsolicited codes


@pytest.mark.parametrize("chunk", CHUNKS)
def test_unsolicited_codes_between_command_and_answer(chunk):
    stream = (
        b"\r\n+CMTI: \"SM\",5\r\n"
        b"\r\n^RSSI:14\r\n"
        b"\r\nRING\r\n"
        b"\r\n+CSQ: 23,99\r\n"
        b"\r\n+CDSI: \"SR\",1\r\n"
        b"\r\n^BOOT:12345678,0,0,0,72\r\n"
        b"\r\nOK\r\n"
    )
    events = run(QuerySignal(), stream, chunk)
    assert events == [
        NewMessage("SM", 5),
        VendorNotice("^RSSI", "14"),
        Ring(),
        NewStatusReport("SR", 1),
        VendorNotice("^BOOT", "12345678,0,0,0,72"),
        CommandCompleted(QuerySignal(), SignalQuality(23, 99)),
    ]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_cmt_and_cds_with_pdu_lines_inside_a_cmgl_answer(chunk):
    status_hex = "0006D60B911326880736F4111011719551401110117195714000"
    stream = (
        b"\r\n+CMGL: 1,1,,30\r\n"
        + DELIVER_HEX.encode()
        + b"\r\n\r\n+CMT: ,30\r\n"
        + DELIVER_HEX.encode()
        + b"\r\n\r\n+CDS: 25\r\n"
        + status_hex.encode()
        + b"\r\n\r\n^MODE:5,4\r\n\r\nOK\r\n"
    )
    events = run(ListMessages(), stream, chunk)
    assert events == [
        IncomingDeliver("", 30, DELIVER_HEX),
        IncomingStatusReport(25, status_hex),
        VendorNotice("^MODE", "5,4"),
        CommandCompleted(
            ListMessages(), MessageList((StoredMessage(1, 1, "", 30, DELIVER_HEX),))
        ),
    ]


def test_cmt_with_alpha_field():
    events = feed(AtConnection(), b'\r\n+CMT: "Alice",30\r\n' + DELIVER_HEX.encode() + b"\r\n")
    assert events == [IncomingDeliver("Alice", 30, DELIVER_HEX)]


def test_cmt_header_without_pdu_line_does_not_eat_the_next_line():
    events = feed(AtConnection(), b"\r\n+CMT: ,30\r\nRING\r\n")
    assert [type(e) for e in events] == [Garbage, Ring]


@pytest.mark.parametrize(
    "line", [b"+CMTI: SM", b'+CMTI: "SM",x', b"+CDS: 1,2", b"+CMT: 35", b'+CMTI: "SM'],
)
def test_malformed_urc_is_garbage(line):
    conn = AtConnection()
    events = feed(conn, b"\r\n" + line + b"\r\n\r\nRING\r\n")
    assert [type(e) for e in events] == [Garbage, Ring]


def test_power_up_noise_with_nothing_in_flight():
    stream = b"\x00\x00\xff\r\nRDY\r\n\r\n+CPIN: READY\r\n\r\nCall Ready\r\n\r\nSMS Ready\r\n"
    events = feed(AtConnection(), stream)
    assert events == [
        Garbage(b"\xff", "non-printable bytes"),
        Unsolicited("RDY", ""),
        Unsolicited("+CPIN", "READY"),
        Unsolicited("Call Ready", ""),
        Unsolicited("SMS Ready", ""),
    ]


# --------------------------------------------------------------------------- garbage and bounds


def test_garbage_does_not_break_the_next_lines():
    conn = AtConnection()
    conn.send(QuerySignal())
    events = feed(conn, b"\xfe\xfd\x80\x81junk\x82\r\n+CSQ: 9,99\r\n\r\nOK\r\n")
    assert isinstance(events[0], Garbage)
    assert events[-1] == CommandCompleted(QuerySignal(), SignalQuality(9, 99))


def test_overlong_line_is_discarded_and_parsing_resumes():
    conn = AtConnection()
    conn.send(QuerySignal())
    events = feed(conn, b"X" * (MAX_LINE_LENGTH * 3), chunk=100)
    events += feed(conn, b"YYY\r\n+CSQ: 9,99\r\nOK\r\n", chunk=5)
    assert [type(e) for e in events] == [Garbage, CommandCompleted]
    assert "longer" in events[0].reason
    assert len(conn._buffer) == 0


def test_overlong_line_in_one_chunk():
    conn = AtConnection()
    events = feed(conn, b"\r\n" + b"Z" * (MAX_LINE_LENGTH + 1) + b"\r\nRING\r\n")
    assert [type(e) for e in events] == [Garbage, Ring]


def test_buffer_never_exceeds_bound():
    conn = AtConnection()
    for _ in range(50):
        conn.receive_data(b"A" * 300)
        list(conn.events())
        assert len(conn._buffer) <= MAX_LINE_LENGTH


def test_too_many_information_lines_is_malformed():
    conn = AtConnection()
    conn.send(RawCommand("AT+CPBR=1,999"))
    events = feed(conn, b"+CPBR: 1\r\n" * (MAX_INFO_LINES + 5) + b"OK\r\n")
    assert len(events) == 1 and isinstance(events[0], ResponseMalformed)
    assert len(events[0].lines) == MAX_INFO_LINES


def test_statistics_count_what_happened():
    conn = AtConnection()
    conn.send(QuerySignal())
    feed(conn, b"\xff\r\nRING\r\n+CSQ: 1,1\r\nOK\r\n")
    conn.send(Attention())
    feed(conn, b"ERROR\r\n")
    stats = conn.statistics()
    assert (stats.commands_sent, stats.commands_completed, stats.commands_failed) == (2, 1, 1)
    assert (stats.unsolicited, stats.garbage) == (1, 1)


# --------------------------------------------------------------------------- properties


_SESSION = [
    (Attention(), b"AT\r\r\nOK\r\n"),
    (SetEcho(), b"ATE0\r\r\nOK\r\n"),
    (ReportErrors(), b"\r\n+CMTI: \"SM\",1\r\n\r\nOK\r\n"),
    (QueryPin(), b"\r\n+CPIN: READY\r\n\r\nOK\r\n"),
    (QuerySignal(), b"\r\n^RSSI:9\r\n+CSQ: 20,99\r\n\r\nOK\r\n"),
    (ReadMessage(1), b"\r\n+CMGR: 0,,30\r\n" + DELIVER_HEX.encode() + b"\r\n\r\nOK\r\n"),
    (DeleteMessage(1), b"\r\n+CMS ERROR: 321\r\n"),
]


def _run_session(cuts: list[int]) -> list:
    conn = AtConnection()
    events = []
    for command, stream in _SESSION:
        conn.send(command)
        points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
        for a, b in zip(points, points[1:]):
            conn.receive_data(stream[a:b])
            events.extend(conn.events())
    return events


_EXPECTED_SESSION = _run_session([])


def test_session_reference():
    assert _EXPECTED_SESSION == [
        CommandCompleted(Attention(), Done()),
        CommandCompleted(SetEcho(), Done()),
        NewMessage("SM", 1),
        CommandCompleted(ReportErrors(), Done()),
        CommandCompleted(QueryPin(), PinState("READY")),
        VendorNotice("^RSSI", "9"),
        CommandCompleted(QuerySignal(), SignalQuality(20, 99)),
        CommandCompleted(
            ReadMessage(1), StoredMessage(1, 0, "", 30, DELIVER_HEX)
        ),
        CommandFailed(DeleteMessage(1), FinalResult.CMS_ERROR, 321, "321"),
    ]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=200), max_size=20))
def test_any_chunking_gives_the_same_events(cuts):
    assert _run_session(cuts) == _EXPECTED_SESSION


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise_and_parsing_recovers(noise):
    conn = AtConnection()
    conn.send(QuerySignal())
    conn.receive_data(noise)
    events = list(conn.events())
    assert all(not isinstance(e, Prompt) for e in events)
    # Whatever the noise did, after a line break and a fresh command things parse again.
    conn.abandon()
    conn.receive_data(b"\r\n")
    list(conn.events())
    conn.send(QuerySignal())
    conn.receive_data(b"\r\n+CSQ: 3,99\r\n\r\nOK\r\n")
    assert list(conn.events())[-1] == CommandCompleted(QuerySignal(), SignalQuality(3, 99))


def test_pin_is_masked_in_the_label():
    assert EnterPin("1234").label == 'AT+CPIN="****"'
    assert QuerySignal().label == "AT+CSQ"


def test_message_content_stays_out_of_repr():
    assert SUBMIT_PDU.hex() not in repr(SendMessage(SUBMIT_PDU)).lower()


def test_undrained_events_are_bounded():
    conn = AtConnection()
    conn.receive_data(b"RING\r\n" * MAX_PENDING_EVENTS)
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"RING\r\n")
    assert len(list(conn.events())) == MAX_PENDING_EVENTS
    conn.receive_data(b"RING\r\n")  # drained: accepted again
    assert list(conn.events()) == [Ring()]


def test_many_lines_in_one_chunk():
    conn = AtConnection()
    conn.receive_data(b"RING\r" * 1000 + b"RING\n" * 1000)
    assert sum(isinstance(e, Ring) for e in conn.events()) == 2000


def test_registration_answer_found_among_unsolicited_creg_lines():
    stream = b'\r\n+CREG: 5\r\n+CREG: 2,1,"A1B2","00C3"\r\n+CREG: 1,"A1B2","00C4"\r\n\r\nOK\r\n'
    (event,) = run(QueryRegistration(), stream)
    assert event == CommandCompleted(QueryRegistration(), Registration(2, 1, "A1B2", "00C3"))


# --------------------------------------------------------------------------- noise between header and PDU


@pytest.mark.parametrize("chunk", CHUNKS)
def test_vendor_noise_between_cmgr_header_and_its_pdu_line(chunk):
    stream = (
        b"\r\n+CMGR: 0,,30\r\n\r\n^RSSI:17\r\n\r\n+CREG: 1\r\n\r\n"
        + DELIVER_HEX.encode()
        + b"\r\n\r\nOK\r\n"
    )
    events = run(ReadMessage(3), stream, chunk)
    assert events == [
        VendorNotice("^RSSI", "17"),
        Unsolicited("+CREG", "1"),
        CommandCompleted(ReadMessage(3), StoredMessage(3, 0, "", 30, DELIVER_HEX)),
    ]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_noise_inside_a_cmgl_answer_between_header_and_pdu(chunk):
    stream = (
        b"\r\n+CMGL: 1,1,,30\r\n^MODE:5,4\r\n" + DELIVER_HEX.encode()
        + b"\r\n\r\nRING\r\n+CMGL: 2,0,,30\r\n\r\n" + DELIVER_HEX.encode()
        + b"\r\n\r\nOK\r\n"
    )
    events = run(ListMessages(), stream, chunk)
    assert events[:2] == [VendorNotice("^MODE", "5,4"), Ring()]
    assert events[2] == CommandCompleted(ListMessages(), MessageList((
        StoredMessage(1, 1, "", 30, DELIVER_HEX), StoredMessage(2, 0, "", 30, DELIVER_HEX),
    )))


def test_cmgr_header_then_ok_without_pdu_is_malformed_not_hung():
    events = run(ReadMessage(3), b"\r\n+CMGR: 0,,30\r\n^RSSI:3\r\n\r\nOK\r\n")
    assert isinstance(events[-1], ResponseMalformed)
    assert "PDU line" in events[-1].reason


def test_vendor_noise_between_cmt_header_and_its_pdu_line():
    stream = b'\r\n+CMT: ,30\r\n^RSSI:9\r\n' + DELIVER_HEX.encode() + b"\r\n"
    events = feed(AtConnection(), stream)
    assert events == [VendorNotice("^RSSI", "9"), IncomingDeliver("", 30, DELIVER_HEX)]


_INTERJECTIONS = [
    (b"^RSSI:17", VendorNotice("^RSSI", "17")),
    (b"^BOOT:12345678,0,0,0,6", VendorNotice("^BOOT", "12345678,0,0,0,6")),
    (b"^MODE:5,4", VendorNotice("^MODE", "5,4")),
    (b"RING", Ring()),
    (b"+CREG: 1", Unsolicited("+CREG", "1")),
    (b'+CMTI: "SM",9', NewMessage("SM", 9)),
    (b'+CDSI: "SR",2', NewStatusReport("SR", 2)),
    (b"", None),
]


@settings(max_examples=80, deadline=None)
@given(
    noise=st.lists(
        st.tuples(st.integers(0, 4), st.sampled_from(range(len(_INTERJECTIONS)))), max_size=6
    ),
    chunk=st.integers(1, 40),
)
def test_property_interjections_anywhere_in_a_cmgl_answer(noise, chunk):
    """Unsolicited codes at any line boundary of a listing, in any chunking, are routed and
    the listing is whole (TS 27.005 §3.4.2; the codes per §3.4.1 and vendor ``^``)."""
    lines = [b"+CMGL: 1,1,,30", DELIVER_HEX.encode(), b"+CMGL: 4,0,,30", DELIVER_HEX.encode()]
    slots: dict[int, list[int]] = {}
    for position, which in noise:
        slots.setdefault(position, []).append(which)
    stream = b"\r\n"
    expected = []
    for position in range(len(lines) + 1):
        for which in slots.get(position, []):
            raw, event = _INTERJECTIONS[which]
            stream += raw + b"\r\n"
            if event is not None:
                expected.append(event)
        if position < len(lines):
            stream += lines[position] + b"\r\n"
    stream += b"\r\nOK\r\n"
    events = run(ListMessages(), stream, chunk)
    assert events[:-1] == expected
    assert events[-1] == CommandCompleted(ListMessages(), MessageList((
        StoredMessage(1, 1, "", 30, DELIVER_HEX), StoredMessage(4, 0, "", 30, DELIVER_HEX),
    )))
