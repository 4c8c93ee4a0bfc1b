"""CMPP 2.0 / 3.0: sans-IO codec and state machine, the SP link driver, the ISMG simulator.

The codec (:mod:`.codec`, :mod:`.pdus`, :mod:`.auth`, :mod:`.longsms`) and the connection
state machine (:mod:`.connection`) are pure; :mod:`.client` (the SP side) and
:mod:`.simulator` (the ISMG side) are the Trio drivers. Reference: cmpp.md.
"""

from gateway.cmpp.auth import (
    authenticator_ismg,
    authenticator_source,
    timestamp,
    verify_authenticator_ismg,
    verify_authenticator_source,
)
from gateway.cmpp.client import (
    CmppLink,
    CmppLinkConfig,
    LinkDown,
    LinkEvent,
    LinkStatistics,
    LinkUp,
    MoReceived,
    StatusReport,
    SubmitAcked,
    SubmitRejected,
    SubmitRequest,
    is_transient,
    mask_number,
)
from gateway.cmpp.codec import (
    MAX_FRAME,
    FrameDecoder,
    decode_status_report,
    encode,
    encode_status_report,
)
from gateway.cmpp.connection import (
    CmppConnection,
    ConnectionStatistics,
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
from gateway.cmpp.errors import LinkError, LocalProtocolError, ProtocolError, RemoteProtocolError
from gateway.cmpp.longsms import Part, Reassembled, Reassembler, split_long
from gateway.cmpp.pdus import (
    VERSION_2_0,
    VERSION_2_1,
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
    DeliverResult,
    Header,
    MsgFmt,
    MsgId,
    Query,
    QueryResp,
    Stat,
    StatusReportBody,
    Submit,
    SubmitResp,
    SubmitResult,
    Terminate,
    TerminateResp,
    decode_text,
    encode_text,
)
from gateway.cmpp.ratelimit import TokenBucket
from gateway.cmpp.simulator import (
    FlakyIsmg,
    HappyIsmg,
    IsmgSimulator,
    SimulatorStatistics,
    ThrottlingIsmg,
)

__all__ = [
    "VERSION_2_0", "VERSION_2_1", "VERSION_3_0", "MAX_FRAME",
    "ProtocolError", "LocalProtocolError", "RemoteProtocolError", "LinkError",
    "CommandId", "ConnectStatus", "SubmitResult", "DeliverResult", "MsgFmt", "Stat",
    "Header", "Connect", "ConnectResp", "Terminate", "TerminateResp", "Submit", "SubmitResp",
    "Deliver", "DeliverResp", "StatusReportBody", "Query", "QueryResp", "Cancel",
    "CancelResp", "ActiveTest", "ActiveTestResp", "MsgId", "encode_text", "decode_text",
    "encode", "FrameDecoder", "encode_status_report", "decode_status_report",
    "timestamp", "authenticator_source", "authenticator_ismg", "verify_authenticator_source",
    "verify_authenticator_ismg",
    "Part", "split_long", "Reassembler", "Reassembled", "TokenBucket",
    "CmppConnection", "Role", "State", "ConnectionStatistics", "LoginRequested",
    "LoginAccepted", "LoginRefused", "RequestReceived", "ResponseReceived", "StrayResponse",
    "TerminateRequested", "Terminated", "LinkDead", "ProtocolFailure",
    "CmppLink", "CmppLinkConfig", "SubmitRequest", "LinkEvent", "LinkUp", "LinkDown",
    "SubmitAcked", "SubmitRejected", "StatusReport", "MoReceived", "LinkStatistics",
    "is_transient", "mask_number",
    "IsmgSimulator", "SimulatorStatistics", "HappyIsmg", "ThrottlingIsmg", "FlakyIsmg",
]
