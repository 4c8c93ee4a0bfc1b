"""The CMPP connection state machine, sans-IO, for both roles (SP client and ISMG server).

Modelled on h11/wsproto: feed received bytes with :meth:`CmppConnection.receive_data`, take
events with :meth:`~CmppConnection.next_event`, turn requests and responses into bytes with
:meth:`~CmppConnection.send` / :meth:`~CmppConnection.respond`, and call
:meth:`~CmppConnection.tick` with the time for retransmissions and heartbeats. The object
owns no socket and no clock: every time is a float in seconds passed in by the caller. It
never decides policy: a received DELIVER, SUBMIT or ACTIVE_TEST is reported as an event
and the driver answers it.

Implements cmpp.md "Header" (sequence ids), "CONNECT"/"CONNECT_RESP" (login), "Timing and
flow" (window W, timeout T, retries N, heartbeat C) and TERMINATE.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway.cmpp.auth import (
    authenticator_ismg,
    authenticator_source,
    verify_authenticator_ismg,
    verify_authenticator_source,
)
from gateway.cmpp.codec import FrameDecoder, encode, layout_for
from gateway.cmpp.errors import LocalProtocolError, RemoteProtocolError
from gateway.cmpp.pdus import (
    VERSION_3_0,
    ActiveTest,
    ActiveTestResp,
    Cancel,
    CancelResp,
    CommandId,
    Connect,
    ConnectResp,
    ConnectStatus,
    Deliver,
    DeliverResp,
    Pdu,
    Query,
    QueryResp,
    Submit,
    SubmitResp,
    Terminate,
    TerminateResp,
    is_response,
    major_version,
)

__all__ = [
    "DEFAULT_WINDOW",
    "DEFAULT_RESPONSE_TIMEOUT",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_ACTIVE_TEST_INTERVAL",
    "MAX_EVENTS",
    "Role",
    "State",
    "Event",
    "LoginRequested",
    "LoginAccepted",
    "LoginRefused",
    "RequestReceived",
    "ResponseReceived",
    "StrayResponse",
    "TerminateRequested",
    "Terminated",
    "LinkDead",
    "ProtocolFailure",
    "ConnectionStatistics",
    "CmppConnection",
]

#: W: requests outstanding without response (cmpp.md "Timing and flow").
DEFAULT_WINDOW = 16
#: T: seconds before an unanswered request is resent.
DEFAULT_RESPONSE_TIMEOUT = 60.0
#: N: resends before the link is declared dead.
DEFAULT_MAX_RETRIES = 3
#: C: seconds without traffic from the peer before an ACTIVE_TEST is sent.
DEFAULT_ACTIVE_TEST_INTERVAL = 180.0
#: Events decoded but not yet taken; receive_data refuses to buffer more.
MAX_EVENTS = 4096
_MAX_SEQUENCE_ID = 0xFFFFFFFF


class Role(enum.Enum):
    CLIENT = "client"  # the SP
    SERVER = "server"  # the ISMG


class State(enum.Enum):
    IDLE = "idle"  # client, before login()
    AWAIT_CONNECT_RESP = "await_connect_resp"  # client, CONNECT sent
    AWAIT_CONNECT = "await_connect"  # server, nothing received yet
    AWAIT_LOGIN_ANSWER = "await_login_answer"  # server, CONNECT received, not yet answered
    ESTABLISHED = "established"
    TERMINATING = "terminating"  # we sent TERMINATE
    CLOSED = "closed"


# --- events ---------------------------------------------------------------------------------


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the events :meth:`CmppConnection.next_event` returns."""


class LoginRequested(Event, frozen=True, kw_only=True):
    """Server: a CONNECT arrived; ``status`` is the verdict :meth:`answer_login` will send
    unless told otherwise."""

    source_addr: str
    version: int
    timestamp: int
    status: int


class LoginAccepted(Event, frozen=True, kw_only=True):
    """Client: CONNECT_RESP with Status 0 and a valid AuthenticatorISMG."""

    version: int


class LoginRefused(Event, frozen=True, kw_only=True):
    """Client: the login failed (non-zero Status or bad AuthenticatorISMG); the link is closed."""

    status: int
    reason: str


class RequestReceived(Event, frozen=True, kw_only=True):
    """The peer sent a request (SUBMIT, DELIVER, QUERY, CANCEL, ACTIVE_TEST); answer it
    with :meth:`CmppConnection.respond` and this ``sequence_id``."""

    sequence_id: int
    pdu: Any


class ResponseReceived(Event, frozen=True, kw_only=True):
    """The peer answered one of our requests; ``context`` is what was given to send()."""

    sequence_id: int
    request: Any
    response: Any
    context: Any = None
    attempts: int = 1


class StrayResponse(Event, frozen=True, kw_only=True):
    """A response to no outstanding request (late after a resend, or a confused peer)."""

    sequence_id: int
    pdu: Any


class TerminateRequested(Event, frozen=True, kw_only=True):
    """The peer sent TERMINATE; answer with TerminateResp() to close."""

    sequence_id: int


class Terminated(Event, frozen=True, kw_only=True):
    """Our TERMINATE was answered; the link is closed."""


class LinkDead(Event, frozen=True, kw_only=True):
    """A request stayed unanswered through all retries (or the login timed out)."""

    reason: str


class ProtocolFailure(Event, frozen=True, kw_only=True):
    """The peer broke the protocol (bad frame, bad order); the link is closed."""

    reason: str


class ConnectionStatistics(msgspec.Struct, frozen=True, kw_only=True):
    state: str
    version: int
    window_size: int
    window_used: int
    outstanding: int
    requests_sent: int
    requests_received: int
    responses_sent: int
    responses_received: int
    retransmits: int
    stray_responses: int
    bytes_sent: int
    bytes_received: int


# --- internals ------------------------------------------------------------------------------

_RESPONSE_FOR: dict[type, type] = {
    Connect: ConnectResp,
    Terminate: TerminateResp,
    Submit: SubmitResp,
    Deliver: DeliverResp,
    Query: QueryResp,
    Cancel: CancelResp,
    ActiveTest: ActiveTestResp,
}
_WINDOWED = (Submit, Deliver, Query, Cancel)
_WINDOWED_TYPES = frozenset(_WINDOWED)
_RESPONSE_TYPES = frozenset(_RESPONSE_FOR.values())
#: Requests reported as RequestReceived on an established link without further checks.
_STEADY_REQUESTS = frozenset({Submit, Deliver, Query, Cancel, ActiveTest})
#: Responses respond() frames on an established link without further checks.
_STEADY_RESPONSES = frozenset({SubmitResp, DeliverResp, ActiveTestResp, QueryResp, CancelResp})


@dataclass(slots=True)
class _Pending:
    pdu: Pdu
    frame: bytes
    sent_at: float
    context: Any
    windowed: bool
    attempts: int = 1


SecretLookup = Callable[[str], "str | bytes | None"]


class CmppConnection:
    """One CMPP link's protocol state, in either role.

    Client: ``CmppConnection(Role.CLIENT, 0x30, sp_id="901234", secret="s3cret")`` then
    ``login(timestamp=..., now=...)``. Server: ``CmppConnection(Role.SERVER, 0x30,
    secrets=lookup)`` where ``lookup(sp_id)`` returns the shared secret or None; on
    :class:`LoginRequested` call :meth:`answer_login`.
    """

    def __init__(
        self,
        role: Role,
        version: int = VERSION_3_0,
        *,
        sp_id: str = "",
        secret: str | bytes = "",
        secrets: SecretLookup | None = None,
        window: int = DEFAULT_WINDOW,
        response_timeout: float = DEFAULT_RESPONSE_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        active_test_interval: float | None = DEFAULT_ACTIVE_TEST_INTERVAL,
        verify_ismg: bool = True,
        first_sequence_id: int = 1,
    ) -> None:
        layout_for(version)  # validates
        if window < 1 or response_timeout <= 0 or max_retries < 0:
            raise LocalProtocolError("window >= 1, response_timeout > 0, max_retries >= 0")
        if not 0 <= first_sequence_id <= _MAX_SEQUENCE_ID:
            raise LocalProtocolError(f"first_sequence_id {first_sequence_id} is not a u32")
        self.role = role
        self.version = version
        self.our_version = version
        self.sp_id = sp_id
        self._secret = secret
        if secrets is None and role is Role.SERVER:
            secrets = (lambda source: secret if source == sp_id else None)
        self._secrets = secrets
        self.window = window
        self.response_timeout = response_timeout
        self.max_retries = max_retries
        self.active_test_interval = active_test_interval
        self.verify_ismg = verify_ismg
        self.state = State.IDLE if role is Role.CLIENT else State.AWAIT_CONNECT
        self._decoder = FrameDecoder(version)
        self._events: deque[Event] = deque()
        self._pending: dict[int, _Pending] = {}
        self._windowed = 0  # windowed requests outstanding: the window in use, kept O(1)
        self._active_tests = 0  # ACTIVE_TESTs outstanding (a heartbeat is due only without one)
        self._next_seq = first_sequence_id
        self._last_rx: float | None = None
        self._login_seq: int | None = None
        self._login_auth = b""
        self._login_status = ConnectStatus.OK
        self._login_secret: str | bytes | None = None
        self._terminate_seq: int | None = None
        self.requests_sent = 0
        self.requests_received = 0
        self.responses_sent = 0
        self.responses_received = 0
        self.retransmits = 0
        self.stray_responses = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- introspection ----------------------------------------------------------------------

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def window_available(self) -> int:
        """How many more windowed requests (SUBMIT, DELIVER, QUERY, CANCEL) may be sent now."""
        return max(0, self.window - self._windowed)

    def unacknowledged(self) -> list[tuple[Pdu, Any]]:
        """Windowed requests still awaiting a response, oldest first, with their context."""
        return [(p.pdu, p.context) for p in self._pending.values() if p.windowed]

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            state=self.state.value,
            version=self.version,
            window_size=self.window,
            window_used=self._windowed,
            outstanding=len(self._pending),
            requests_sent=self.requests_sent,
            requests_received=self.requests_received,
            responses_sent=self.responses_sent,
            responses_received=self.responses_received,
            retransmits=self.retransmits,
            stray_responses=self.stray_responses,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
        )

    # -- login ------------------------------------------------------------------------------

    def login(self, *, timestamp: int, now: float) -> bytes:
        """Client: the CONNECT frame (AuthenticatorSource from sp_id, secret, timestamp)."""
        if self.role is not Role.CLIENT or self.state is not State.IDLE:
            raise LocalProtocolError(f"login() needs an idle client, state is {self.state.value}")
        auth = authenticator_source(self.sp_id, self._secret, timestamp)
        pdu = Connect(
            source_addr=self.sp_id, authenticator_source=auth, version=self.version,
            timestamp=timestamp,
        )
        self._login_auth = auth
        self.state = State.AWAIT_CONNECT_RESP
        self._last_rx = now
        seq = self._take_sequence_id()
        self._login_seq = seq
        return self._track(seq, pdu, now, context=None, windowed=False)

    def answer_login(self, *, now: float, status: int | None = None) -> bytes:
        """Server: the CONNECT_RESP frame, with the verdict of the LoginRequested event unless
        ``status`` overrides it. Status 0 establishes the link; any other closes it."""
        if self.role is not Role.SERVER or self.state is not State.AWAIT_LOGIN_ANSWER:
            raise LocalProtocolError(
                f"answer_login() needs a pending CONNECT, state is {self.state.value}"
            )
        status = self._login_status if status is None else status
        width = 4 if major_version(self.version) >= 3 else 1
        secret = self._login_secret
        if secret is None:
            auth = b"\x00" * 16
        else:
            auth = authenticator_ismg(status, self._login_auth, secret, status_width=width)
        resp = ConnectResp(status=status, authenticator_ismg=auth, version=self.our_version)
        assert self._login_seq is not None
        frame = encode(resp, self._login_seq, self.version)
        self.responses_sent += 1
        self.bytes_sent += len(frame)
        self.state = State.ESTABLISHED if status == ConnectStatus.OK else State.CLOSED
        self._last_rx = now
        return frame

    # -- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes, *, now: float) -> None:
        """Feed bytes from the peer; decoded frames become events. Never raises for the
        peer's faults: a bad frame becomes a :class:`ProtocolFailure` event."""
        if self.state is State.CLOSED or not data:
            return
        if len(self._events) >= MAX_EVENTS:
            raise LocalProtocolError("events not taken: call next_event() before more data")
        self.bytes_received += len(data)
        try:
            self._decoder.feed(data)
            next_pdu = self._decoder.next_pdu
            while self.state is not State.CLOSED and (frame := next_pdu()):
                self._last_rx = now
                self._handle(frame[2], frame[3])
        except RemoteProtocolError as exc:
            self._fail(exc.reason)

    def next_event(self) -> Event | None:
        """The next event, or None when more data (or time) is needed."""
        return self._events.popleft() if self._events else None

    def _fail(self, reason: str) -> None:
        self.state = State.CLOSED
        self._events.append(ProtocolFailure(reason=reason))

    def _handle(self, seq: int, pdu: Pdu) -> None:
        kind = type(pdu)
        if kind in _RESPONSE_TYPES:
            self.responses_received += 1
            self._handle_response(seq, pdu)
            return
        self.requests_received += 1
        if self.state is State.ESTABLISHED and kind in _STEADY_REQUESTS:
            self._events.append(RequestReceived(sequence_id=seq, pdu=pdu))
            return
        if self.state is State.AWAIT_CONNECT:
            if not isinstance(pdu, Connect):
                self._fail(f"CONNECT expected, got {type(pdu).__name__}")
                return
            self._handle_connect(seq, pdu)
            return
        if self.state in (State.AWAIT_CONNECT_RESP, State.AWAIT_LOGIN_ANSWER, State.IDLE):
            self._fail(f"{type(pdu).__name__} before login completed")
            return
        if isinstance(pdu, Connect):
            self._fail("CONNECT on an established link")
            return
        if isinstance(pdu, Terminate):
            self._events.append(TerminateRequested(sequence_id=seq))
            return
        self._events.append(RequestReceived(sequence_id=seq, pdu=pdu))

    def _handle_connect(self, seq: int, pdu: Connect) -> None:
        self._login_seq = seq
        self._login_auth = pdu.authenticator_source
        major = major_version(pdu.version)
        secret = self._secrets(pdu.source_addr) if self._secrets is not None else None
        self._login_secret = secret
        if major > major_version(self.our_version) or major < 2:
            status = ConnectStatus.VERSION_TOO_HIGH
        elif secret is None:
            status = ConnectStatus.BAD_SOURCE_ADDR
        elif not verify_authenticator_source(
            pdu.authenticator_source, pdu.source_addr, secret, pdu.timestamp
        ):
            status = ConnectStatus.AUTH_FAILED
        else:
            status = ConnectStatus.OK
        if status is not ConnectStatus.VERSION_TOO_HIGH:
            # Speak the client's version (0x21 is spoken as 2.0).
            self.version = pdu.version
            self._decoder.version = pdu.version
        self._login_status = status
        self.sp_id = pdu.source_addr
        self.state = State.AWAIT_LOGIN_ANSWER
        self._events.append(
            LoginRequested(
                source_addr=pdu.source_addr, version=pdu.version, timestamp=pdu.timestamp,
                status=status,
            )
        )

    def _handle_response(self, seq: int, pdu: Pdu) -> None:
        pending = self._pending.get(seq)
        if pending is None or type(pdu) is not _RESPONSE_FOR[type(pending.pdu)]:
            self.stray_responses += 1
            if self.state is State.AWAIT_CONNECT_RESP:
                self._fail(f"{type(pdu).__name__} seq={seq} while awaiting CONNECT_RESP")
                return
            self._events.append(StrayResponse(sequence_id=seq, pdu=pdu))
            return
        del self._pending[seq]
        if pending.windowed:
            self._windowed -= 1
        elif type(pdu) is ActiveTestResp:
            self._active_tests -= 1
        if isinstance(pdu, ConnectResp):
            self._handle_connect_resp(pdu)
            return
        if isinstance(pdu, TerminateResp):
            self.state = State.CLOSED
            self._events.append(Terminated())
            return
        self._events.append(
            ResponseReceived(
                sequence_id=seq, request=pending.pdu, response=pdu, context=pending.context,
                attempts=pending.attempts,
            )
        )

    def _handle_connect_resp(self, pdu: ConnectResp) -> None:
        if pdu.status != ConnectStatus.OK:
            self.state = State.CLOSED
            try:
                name = ConnectStatus(pdu.status).name
            except ValueError:
                name = "OTHER"
            self._events.append(
                LoginRefused(status=pdu.status, reason=f"CONNECT_RESP Status {pdu.status} ({name})")
            )
            return
        if self.verify_ismg and not verify_authenticator_ismg(
            pdu.authenticator_ismg, pdu.status, self._login_auth, self._secret,
            major=major_version(self.version),
        ):
            self.state = State.CLOSED
            self._events.append(LoginRefused(status=pdu.status, reason="AuthenticatorISMG mismatch"))
            return
        if major_version(pdu.version) == 2 and major_version(self.version) == 3:
            # A 2.0-only ISMG accepted a 3.0 login: speak its layouts.
            self.version = pdu.version
            self._decoder.version = pdu.version
        self.state = State.ESTABLISHED
        self._events.append(LoginAccepted(version=self.version))

    # -- sending ----------------------------------------------------------------------------

    def _take_sequence_id(self) -> int:
        seq = self._next_seq
        if seq not in self._pending and seq < _MAX_SEQUENCE_ID:  # all but a wrap or a clash
            self._next_seq = seq + 1
            return seq
        for _ in range(len(self._pending) + 1):
            seq = self._next_seq
            self._next_seq = 1 if seq >= _MAX_SEQUENCE_ID else seq + 1
            if seq not in self._pending:
                return seq
        raise LocalProtocolError("no free Sequence_Id")  # unreachable: pending is bounded

    def _track(self, seq: int, pdu: Pdu, now: float, *, context: Any, windowed: bool) -> bytes:
        frame = encode(pdu, seq, self.version)
        self._pending[seq] = _Pending(
            pdu=pdu, frame=frame, sent_at=now, context=context, windowed=windowed
        )
        if windowed:
            self._windowed += 1
        elif type(pdu) is ActiveTest:
            self._active_tests += 1
        self.requests_sent += 1
        self.bytes_sent += len(frame)
        return frame

    def send(self, pdu: Pdu, *, now: float, context: Any = None) -> bytes:
        """A request frame with the next Sequence_Id (from 1, wrapping after 0xFFFFFFFF).

        SUBMIT, DELIVER, QUERY and CANCEL take a window slot; beyond the window, or outside
        an established link, this is a LocalProtocolError. ``context`` comes back in the
        matching :class:`ResponseReceived`. TERMINATE starts a graceful close.
        """
        kind = type(pdu)
        if kind in _WINDOWED_TYPES and self.state is State.ESTABLISHED:
            # The steady state: SUBMIT (client) or DELIVER (server) within the window.
            if self._windowed >= self.window:
                raise LocalProtocolError(f"window full ({self.window} outstanding)")
            return self._track(self._take_sequence_id(), pdu, now, context=context, windowed=True)
        if is_response(pdu):
            raise LocalProtocolError(f"{type(pdu).__name__} is a response: use respond()")
        if isinstance(pdu, Connect):
            raise LocalProtocolError("CONNECT is sent by login()")
        if type(pdu) not in _RESPONSE_FOR:
            raise LocalProtocolError(f"not a CMPP request: {type(pdu).__name__}")
        allowed = (State.ESTABLISHED,) if not isinstance(pdu, ActiveTest) else (
            State.ESTABLISHED, State.TERMINATING)
        if self.state not in allowed:
            raise LocalProtocolError(f"cannot send {type(pdu).__name__} in state {self.state.value}")
        windowed = isinstance(pdu, _WINDOWED)
        if windowed and self._windowed >= self.window:
            raise LocalProtocolError(f"window full ({self.window} outstanding)")
        frame = self._track(self._take_sequence_id(), pdu, now, context=context, windowed=windowed)
        if isinstance(pdu, Terminate):
            self.state = State.TERMINATING
        return frame

    def respond(self, sequence_id: int, pdu: Pdu, *, now: float) -> bytes:
        """A response frame echoing the request's ``sequence_id``. TerminateResp closes."""
        if self.state is State.ESTABLISHED and type(pdu) in _STEADY_RESPONSES:
            frame = encode(pdu, sequence_id, self.version)
            self.responses_sent += 1
            self.bytes_sent += len(frame)
            return frame
        if not is_response(pdu) or isinstance(pdu, ConnectResp):
            raise LocalProtocolError(f"{type(pdu).__name__} cannot be sent with respond()")
        if self.state in (State.CLOSED, State.IDLE, State.AWAIT_CONNECT, State.AWAIT_CONNECT_RESP,
                          State.AWAIT_LOGIN_ANSWER):
            raise LocalProtocolError(f"cannot respond in state {self.state.value}")
        frame = encode(pdu, sequence_id, self.version)
        self.responses_sent += 1
        self.bytes_sent += len(frame)
        if isinstance(pdu, TerminateResp):
            self.state = State.CLOSED
        return frame

    # -- time -------------------------------------------------------------------------------

    def _heartbeat_due(self) -> float | None:
        if (
            self.state is not State.ESTABLISHED
            or self.active_test_interval is None
            or self._last_rx is None
            or self._active_tests
        ):
            return None
        return self._last_rx + self.active_test_interval

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work (a resend, a heartbeat, a timeout), or None."""
        if self.state is State.CLOSED:
            return None
        times = [p.sent_at + self.response_timeout for p in self._pending.values()]
        heartbeat = self._heartbeat_due()
        if heartbeat is not None:
            times.append(heartbeat)
        return min(times) if times else None

    def tick(self, now: float) -> bytes:
        """Advance time: frames to resend after T (up to N times), an ACTIVE_TEST when the
        peer has been silent for C; after N unanswered resends a :class:`LinkDead` event."""
        if self.state is State.CLOSED:
            return b""
        out: list[bytes] = []
        for seq, pending in list(self._pending.items()):
            if now - pending.sent_at < self.response_timeout:
                continue
            name = CommandId(int.from_bytes(pending.frame[4:8], "big")).name
            if isinstance(pending.pdu, Connect):
                self._die(f"CONNECT seq={seq} unanswered after {self.response_timeout:g}s")
                return b""
            if pending.attempts > self.max_retries:
                self._die(f"{name} seq={seq} unanswered after {self.max_retries} resends")
                return b""
            pending.attempts += 1
            pending.sent_at = now
            self.retransmits += 1
            self.bytes_sent += len(pending.frame)
            out.append(pending.frame)
        heartbeat = self._heartbeat_due()
        if heartbeat is not None and now >= heartbeat:
            out.append(self._track(self._take_sequence_id(), ActiveTest(), now, context=None,
                                   windowed=False))
        return b"".join(out)

    def _die(self, reason: str) -> None:
        self.state = State.CLOSED
        self._events.append(LinkDead(reason=reason))
