"""CmppConnection: the sans-IO state machine in both roles, driven by hand with explicit times."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cmpp.codec import FrameDecoder, encode
from gateway.cmpp.connection import (
    CmppConnection,
    LinkDead,
    LoginAccepted,
    LoginRefused,
    LoginRequested,
    ProtocolFailure,
    RequestReceived,
    ResponseReceived,
    Role,
    State,
    StrayResponse,
    TerminateRequested,
    Terminated,
)
from gateway.cmpp.errors import LocalProtocolError
from gateway.cmpp.pdus import (
    ActiveTest,
    ActiveTestResp,
    ConnectResp,
    ConnectStatus,
    Deliver,
    DeliverResp,
    Submit,
    SubmitResp,
    Terminate,
    TerminateResp,
)

TS = 1123092000
H = bytes.fromhex


def events(conn: CmppConnection) -> list:
    out = []
    while (ev := conn.next_event()) is not None:
        out.append(ev)
    return out


def submit(n: int = 0) -> Submit:
    return Submit(msg_src="901234", src_id="10658888", dest_terminal_ids=("13800138000",),
                  msg_content=b"m%d" % n)


def logged_in_pair(version: int = 0x30, **kw):
    client = CmppConnection(Role.CLIENT, version, sp_id="901234", secret="s3cret", **kw)
    server = CmppConnection(Role.SERVER, 0x30, sp_id="901234", secret="s3cret", **kw)
    server.receive_data(client.login(timestamp=TS, now=0.0), now=0.0)
    [req] = events(server)
    assert isinstance(req, LoginRequested) and req.status == ConnectStatus.OK
    client.receive_data(server.answer_login(now=0.0), now=0.0)
    assert events(client) == [LoginAccepted(version=version)]
    return client, server


def test_login_connect_frame_matches_the_spec():
    client = CmppConnection(Role.CLIENT, 0x30, sp_id="901234", secret="s3cret")
    frame = client.login(timestamp=TS, now=0.0)
    auth = hashlib.md5(b"901234" + bytes(9) + b"s3cret" + b"1123092000").digest()
    assert frame == H("00000027 00000001 00000001") + b"901234" + auth + H("30 42f10620")
    assert client.state is State.AWAIT_CONNECT_RESP


@pytest.mark.parametrize("version", [0x20, 0x21, 0x30])
def test_login_both_versions(version):
    client, server = logged_in_pair(version)
    assert client.established and server.established
    assert server.version == version and server.sp_id == "901234"


def test_server_answer_follows_the_spec_hash_and_layout():
    client = CmppConnection(Role.CLIENT, 0x30, sp_id="901234", secret="s3cret")
    server = CmppConnection(Role.SERVER, 0x30, secrets={"901234": "s3cret"}.get)
    server.receive_data(client.login(timestamp=TS, now=0.0), now=0.0)
    events(server)
    resp = server.answer_login(now=0.0)
    auth_src = hashlib.md5(b"901234" + bytes(9) + b"s3cret" + b"1123092000").digest()
    auth_ismg = hashlib.md5(bytes(4) + auth_src + b"s3cret").digest()
    assert resp == H("00000021 80000001 00000001 00000000") + auth_ismg + H("30")


def test_client_accepts_one_byte_status_hash_on_3_0():
    client = CmppConnection(Role.CLIENT, 0x30, sp_id="901234", secret="s3cret")
    client.login(timestamp=TS, now=0.0)
    auth_src = hashlib.md5(b"901234" + bytes(9) + b"s3cret" + b"1123092000").digest()
    auth_ismg = hashlib.md5(b"\x00" + auth_src + b"s3cret").digest()
    client.receive_data(H("00000021 80000001 00000001 00000000") + auth_ismg + H("30"), now=1.0)
    assert events(client) == [LoginAccepted(version=0x30)]


def test_client_rejects_bad_authenticator_ismg():
    client = CmppConnection(Role.CLIENT, 0x30, sp_id="901234", secret="s3cret")
    client.login(timestamp=TS, now=0.0)
    client.receive_data(H("00000021 80000001 00000001 00000000") + bytes(16) + H("30"), now=1.0)
    [ev] = events(client)
    assert isinstance(ev, LoginRefused) and "AuthenticatorISMG" in ev.reason
    assert client.closed


def test_bad_secret_refused_with_status_3():
    client = CmppConnection(Role.CLIENT, 0x30, sp_id="901234", secret="wrong")
    server = CmppConnection(Role.SERVER, 0x30, sp_id="901234", secret="s3cret")
    server.receive_data(client.login(timestamp=TS, now=0.0), now=0.0)
    [req] = events(server)
    assert req.status == ConnectStatus.AUTH_FAILED
    client.receive_data(server.answer_login(now=0.0), now=0.0)
    [ev] = events(client)
    assert isinstance(ev, LoginRefused) and ev.status == 3
    assert client.closed and server.closed


def test_unknown_sp_and_version_too_high():
    server = CmppConnection(Role.SERVER, 0x20, sp_id="901234", secret="s")
    client = CmppConnection(Role.CLIENT, 0x30, sp_id="901234", secret="s")
    server.receive_data(client.login(timestamp=TS, now=0), now=0)
    assert events(server)[0].status == ConnectStatus.VERSION_TOO_HIGH
    resp = server.answer_login(now=0)
    assert resp[12] == 4 and len(resp) == 30  # answered in the 2.0 layout
    client.receive_data(resp, now=0)
    assert events(client)[0].status == 4

    server = CmppConnection(Role.SERVER, 0x30, sp_id="901234", secret="s")
    other = CmppConnection(Role.CLIENT, 0x30, sp_id="999999", secret="s")
    server.receive_data(other.login(timestamp=TS, now=0), now=0)
    assert events(server)[0].status == ConnectStatus.BAD_SOURCE_ADDR


def test_server_override_refuses_a_good_login():
    client = CmppConnection(Role.CLIENT, 0x30, sp_id="901234", secret="s3cret")
    server = CmppConnection(Role.SERVER, 0x30, sp_id="901234", secret="s3cret")
    server.receive_data(client.login(timestamp=TS, now=0), now=0)
    events(server)
    client.receive_data(server.answer_login(now=0, status=ConnectStatus.OTHER), now=0)
    assert events(client)[0].status == 5


def test_request_before_login_is_a_protocol_failure():
    server = CmppConnection(Role.SERVER, 0x30)
    server.receive_data(encode(submit(), 1, 0x30), now=0)
    [ev] = events(server)
    assert isinstance(ev, ProtocolFailure) and "CONNECT expected" in ev.reason
    assert server.closed


def test_submit_and_response_round_trip_with_context():
    client, server = logged_in_pair()
    frame = client.send(submit(), now=1.0, context="ref-1")
    assert client.window_available() == 15
    server.receive_data(frame, now=1.0)
    [req] = events(server)
    assert isinstance(req, RequestReceived) and req.pdu == submit()
    client.receive_data(server.respond(req.sequence_id, SubmitResp(msg_id=77, result=0), now=1.1),
                        now=1.1)
    [resp] = events(client)
    assert isinstance(resp, ResponseReceived)
    assert resp.context == "ref-1" and resp.response.msg_id == 77 and resp.request == submit()
    assert client.window_available() == 16
    stats = client.statistics()
    assert stats.requests_sent == 2 and stats.responses_received == 2 and stats.window_used == 0


def test_server_sends_deliver_and_client_answers():
    client, server = logged_in_pair(0x20)
    mo = Deliver(msg_id=5, dest_id="10658888", src_terminal_id="13900000001", msg_content=b"1")
    client.receive_data(server.send(mo, now=2.0), now=2.0)
    [req] = events(client)
    assert req.pdu == mo
    server.receive_data(client.respond(req.sequence_id, DeliverResp(msg_id=5), now=2.0), now=2.0)
    [resp] = events(server)
    assert isinstance(resp, ResponseReceived) and resp.response == DeliverResp(msg_id=5, result=0)


def test_window_limit_is_a_local_error():
    client, _ = logged_in_pair(window=3)
    for i in range(3):
        client.send(submit(i), now=0)
    assert client.window_available() == 0
    with pytest.raises(LocalProtocolError, match="window full"):
        client.send(submit(), now=0)
    client.send(ActiveTest(), now=0)  # heartbeats are outside the window
    assert [p.msg_content for p, _ in client.unacknowledged()] == [b"m0", b"m1", b"m2"]


def test_sequence_ids_increment_and_wrap():
    client, _ = logged_in_pair(first_sequence_id=0xFFFFFFFE)
    # login took 0xFFFFFFFE
    seqs = [FrameDecoder(0x30) for _ in range(3)]
    frames = [client.send(ActiveTest(), now=0) for _ in range(3)]
    got = []
    for dec, f in zip(seqs, frames):
        dec.feed(f)
        got.append(dec.next_frame()[0].sequence_id)
    assert got == [0xFFFFFFFF, 1, 2]


def test_resend_after_t_then_link_dead_after_n():
    client, _ = logged_in_pair(response_timeout=60, max_retries=3, active_test_interval=None)
    frame = client.send(submit(), now=0, context="r")
    assert client.tick(59.9) == b""
    assert client.next_deadline() == 60
    assert client.tick(60) == frame  # resend 1, same Sequence_Id
    assert client.tick(120) == frame  # 2
    assert client.tick(180) == frame  # 3
    assert events(client) == []
    assert client.tick(240) == b""
    [ev] = events(client)
    assert isinstance(ev, LinkDead) and "SUBMIT" in ev.reason and "3 resends" in ev.reason
    assert client.closed and client.statistics().retransmits == 3
    assert client.unacknowledged() == [(submit(), "r")]


def test_heartbeat_when_idle_and_dead_when_unanswered():
    client, server = logged_in_pair(response_timeout=10, max_retries=1, active_test_interval=180)
    assert client.tick(179) == b""
    assert client.next_deadline() == 180
    hb = client.tick(180)
    assert hb[4:8] == H("00000008")
    assert client.tick(185) == b""  # not a second one while one is outstanding
    server.receive_data(hb, now=181)
    [req] = events(server)
    assert req.pdu == ActiveTest()
    client.receive_data(server.respond(req.sequence_id, ActiveTestResp(), now=181), now=181)
    assert isinstance(events(client)[0], ResponseReceived)
    assert client.tick(360) == b""  # traffic at 181 restarted the idle timer
    hb2 = client.tick(361)
    assert hb2[4:8] == H("00000008")
    assert client.tick(371) == hb2  # one resend
    client.tick(381)
    assert isinstance(events(client)[0], LinkDead)


def test_login_timeout_is_link_dead():
    client = CmppConnection(Role.CLIENT, 0x30, sp_id="1", secret="s", response_timeout=5)
    client.login(timestamp=TS, now=0)
    assert client.tick(5) == b""
    [ev] = events(client)
    assert isinstance(ev, LinkDead) and "CONNECT" in ev.reason


def test_graceful_terminate_both_directions():
    client, server = logged_in_pair()
    server.receive_data(client.send(Terminate(), now=0), now=0)
    assert client.state is State.TERMINATING
    with pytest.raises(LocalProtocolError):
        client.send(submit(), now=0)
    [req] = events(server)
    assert isinstance(req, TerminateRequested)
    client.receive_data(server.respond(req.sequence_id, TerminateResp(), now=0), now=0)
    assert server.closed
    assert events(client) == [Terminated()] and client.closed


def test_stray_and_mismatched_responses():
    client, _ = logged_in_pair()
    client.receive_data(encode(SubmitResp(msg_id=1, result=0), 999, 0x30), now=0)
    seq_frame = client.send(submit(), now=0)
    seq = int.from_bytes(seq_frame[8:12], "big")
    client.receive_data(encode(DeliverResp(msg_id=1), seq, 0x30), now=0)
    evs = events(client)
    assert all(isinstance(e, StrayResponse) for e in evs) and len(evs) == 2
    assert client.window_available() == 15 and client.statistics().stray_responses == 2


def test_garbage_becomes_protocol_failure_event():
    client, _ = logged_in_pair()
    client.receive_data(H("00000005 00000004 00000001"), now=0)
    [ev] = events(client)
    assert isinstance(ev, ProtocolFailure) and "Total_Length 5" in ev.reason
    assert client.closed
    client.receive_data(b"more", now=0)  # ignored once closed
    assert events(client) == []


def test_misuse_is_local_protocol_error():
    client = CmppConnection(Role.CLIENT, 0x30, sp_id="1", secret="s")
    with pytest.raises(LocalProtocolError):
        client.send(submit(), now=0)
    with pytest.raises(LocalProtocolError):
        client.answer_login(now=0)
    client, _ = logged_in_pair()
    with pytest.raises(LocalProtocolError, match="respond"):
        client.send(SubmitResp(msg_id=1, result=0), now=0)
    with pytest.raises(LocalProtocolError):
        client.respond(1, submit(), now=0)
    with pytest.raises(LocalProtocolError):
        client.respond(1, ConnectResp(status=0), now=0)


@settings(max_examples=150, deadline=None)
@given(garbage=st.binary(max_size=300), chunk=st.integers(1, 50))
def test_connection_never_raises_on_garbage(garbage, chunk):
    client, _ = logged_in_pair()
    for i in range(0, len(garbage), chunk):
        client.receive_data(garbage[i : i + chunk], now=0)
    for ev in events(client):
        assert not isinstance(ev, (LoginAccepted, LoginRequested))


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.sampled_from(["send", "ack", "tick"]), max_size=60))
def test_window_accounting_invariant(ops):
    client, server = logged_in_pair(window=4, response_timeout=10, max_retries=100,
                                    active_test_interval=None)
    now = 0.0
    outstanding = 0
    for op in ops:
        now += 1
        if op == "send" and client.window_available():
            server.receive_data(client.send(submit(), now=now), now=now)
            outstanding += 1
        elif op == "ack":
            reqs = [e for e in events(server) if isinstance(e, RequestReceived)]
            for r in reqs:
                client.receive_data(server.respond(r.sequence_id, SubmitResp(msg_id=1, result=0),
                                                   now=now), now=now)
            outstanding -= len([e for e in events(client) if isinstance(e, ResponseReceived)])
        else:
            client.tick(now)
        assert client.window_available() == 4 - outstanding
        assert len(client.unacknowledged()) == outstanding
