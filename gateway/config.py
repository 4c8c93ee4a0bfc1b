"""Configuration: one TOML file decoded by msgspec into typed, frozen Structs.

Loaded once at start and passed down; nothing reads it from a global. Unknown keys and bad
values fail at start with a :class:`~gateway.errors.ConfigError` naming the key, e.g.
``config.toml: Object contains unknown field `lisen` - at `$.http```.
"""

from __future__ import annotations

import os
import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .errors import ConfigError
from .router.routing import RouteRule, RouteTable, RoutingError

DATABASE_URL_ENV = "SMSGW_DATABASE_URL"

_LISTEN_RE = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(?P<port>\d{1,5})$")

Listen = Annotated[str, Meta(pattern=_LISTEN_RE.pattern, description="HOST:PORT; port 0 picks a free one")]
PositiveInt = Annotated[int, Meta(ge=1)]
Seconds = Annotated[float, Meta(gt=0)]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class DatabaseConfig(_Section):
    url: str = ""
    """``postgresql://user@host/db``; empty means the embedded server in ``data_dir``."""
    pool_size: Annotated[int, Meta(ge=2, le=200)] = 8
    connect_timeout: Seconds = 10.0


class IntakeConfig(_Section):
    """Group commit of accepted messages: a batch closes at ``max_rows`` or ``max_delay``."""

    max_rows: Annotated[int, Meta(ge=1, le=10_000)] = 500
    max_delay: Annotated[float, Meta(ge=0, le=1)] = 0.002
    flushers: Annotated[int, Meta(ge=1, le=16)] = 2
    """Batches written concurrently, each on its own connection."""
    queue_size: Annotated[int, Meta(ge=1)] = 20_000
    """Requests waiting for a batch; beyond it callers wait (backpressure)."""


class HttpConfig(_Section):
    listen: Listen = "127.0.0.1:8080"
    max_recipients: Annotated[int, Meta(ge=1, le=100_000)] = 1000
    max_parts: Annotated[int, Meta(ge=1, le=255)] = 10
    max_body: Annotated[int, Meta(ge=1024)] = 4 * 1024 * 1024
    accept_timeout: Seconds = 10.0
    """How long a request may wait for its batch to be committed before a 503."""
    workers: Annotated[int, Meta(ge=1, le=64)] = 1
    """Processes serving the HTTP API on ``listen`` (SO_REUSEPORT): the gateway and N-1
    worker processes that take the accept path; 1 means the gateway process alone."""


class AdminConfig(_Section):
    """The admin websocket and page (README "Operations"): off unless a token is set."""

    listen: Listen = "127.0.0.1:8081"
    token: str = ""
    """Admin token: sees live traffic with numbers masked and texts hidden."""
    privileged_token: str = ""
    """Privileged admin token: also sees full numbers and message texts."""
    buffer: Annotated[int, Meta(ge=100, le=1_000_000)] = 10_000
    """Events a viewer may fall behind before it loses the oldest (and is told how many)."""
    viewer_rate: Annotated[float, Meta(gt=0)] = 20.0
    """Event frames a second one viewer is sent at most; beyond it events are dropped, counted."""
    total_rate: Annotated[float, Meta(gt=0)] = 200.0
    """Event frames a second all viewers together are sent at most (shared equally). A frame
    costs the gateway about a quarter of an accepted request; this keeps viewers' share small."""
    stall_timeout: Seconds = 10.0
    """A viewer that answers no ping (or whose connection takes no data) for this long is cut off."""
    max_viewers: Annotated[int, Meta(ge=1, le=10_000)] = 100

    @property
    def enabled(self) -> bool:
        return bool(self.token or self.privileged_token)


class DispatcherConfig(_Section):
    batch_size: Annotated[int, Meta(ge=1, le=10_000)] = 200
    lease: Seconds = 60.0
    """A claimed message not reported on within this time may be claimed by another node."""
    idle_poll: Seconds = 0.05
    """Pause between claims when the queue is empty."""
    node_id: str = ""
    """Names this process in leases; empty means hostname:pid."""
    quiet_hours: Annotated[str, Meta(pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9])?$")] = (
        "21:00-08:00")
    """Local time span in which marketing messages wait (transactional ones go); empty: none."""
    timezone: str = "Asia/Shanghai"
    """The zone quiet hours are read in."""


OperatorName = Literal["cmcc", "cucc", "ctcc", "cbn"]
Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]
Digits = Annotated[str, Meta(pattern=r"^[0-9]{1,21}$")]


class CmppConfig(_Section, kw_only=True):
    """One ISMG account (``[[cmpp]]``): its links share ``rate`` and serve ``operators``."""

    name: Name
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 7890
    version: Literal["2.0", "3.0"] = "3.0"
    sp_id: Annotated[str, Meta(pattern=r"^[0-9A-Za-z]{1,6}$")]
    secret: str
    service_number: Digits
    service_id: Annotated[str, Meta(max_length=10)] = ""
    connections: Annotated[int, Meta(ge=1, le=32)] = 1
    window: Annotated[int, Meta(ge=1, le=1024)] = 16
    rate: Annotated[float, Meta(gt=0)] = 200.0
    """Messages per second, all connections together."""
    operators: list[OperatorName] = msgspec.field(default_factory=lambda: ["cmcc"])


class ModemConfig(_Section, kw_only=True):
    """One GSM modem (``[[modems]]``)."""

    name: Name
    device: Annotated[str, Meta(min_length=1)]
    operators: list[OperatorName]
    rate_per_minute: Annotated[float, Meta(gt=0, le=600)] = 6.0
    daily_quota: Annotated[int, Meta(ge=1)] = 500
    pin: Annotated[str, Meta(pattern=r"^([0-9]{4,8})?$")] = ""
    baudrate: Annotated[int, Meta(ge=1200)] = 115200
    service_number: str = ""
    """The SIM's own number, reported as the service number of the messages it receives."""
    direct_routing: bool | None = None
    """Incoming messages routed straight to the gateway (``AT+CSMS=1``, ``AT+CNMI=2,2,0,1,0``:
    ``+CMT``/``+CDS`` each acknowledged with ``AT+CNMA``) instead of stored on the SIM
    (``+CMTI``); for modems whose firmware supports phase 2+ acknowledgement. Unset: false."""


class AccountConfig(_Section, kw_only=True):
    """One account (``[[accounts]]``), created at start if missing, with its limits."""

    name: Name
    rate: Annotated[float, Meta(gt=0)] | None = None
    """Recipients accepted per second; none means unlimited."""
    burst: Annotated[float, Meta(ge=1)] | None = None
    """Recipients the rate may run ahead by (default: one second's worth)."""
    daily_quota: Annotated[int, Meta(ge=1)] | None = None
    """Recipients accepted per local day (dispatcher.timezone); none means unlimited."""


class CrmConfig(_Section):
    """crm_lite: members, points, lottery and approvals for the merchants (``[crm]``)."""

    enabled: bool = True
    """Answer the CRM's SMS commands and serve ``/v1/crm/...``."""
    approval_timeout: Seconds = 86_400.0
    """Seconds an approval request waits for its approver before it escalates."""
    escalation_interval: Seconds = 30.0
    """Seconds between checks for requests past their deadline."""
    expiry_interval: Seconds = 86_400.0
    """Seconds between two rounds of the scheduled points expiry (one at start, then one a day);
    a merchant's points expire by its ``points_expire_days`` setting."""


class MerchantConfig(_Section, kw_only=True):
    """One merchant (``[[merchants]]``), created or updated at start: it sends as ``account``
    and consumers text it at ``service_number``."""

    name: Name
    account: Name
    service_number: Annotated[str, Meta(pattern=r"^[0-9]{3,21}$")]
    signature: Annotated[str, Meta(max_length=40)] = ""
    """Added to marketing texts that lack it, e.g. ``【某某商场】``."""
    accounts: list[Name] = []
    """Further accounts the merchant sends through (created at start if missing), e.g. its shop
    app's: marketing from any of them carries its signature and stops for a consumer who
    unsubscribed from the merchant."""


class ComplianceConfig(_Section):
    """Compliance guards (``[compliance]``)."""

    blocklist: list[str] = []
    """Numbers nothing is sent to (any form the API accepts), kept in the database's blocklist
    with the entries added through ``/v1/admin/blocklist``; removing one here removes it there."""


class LimitsConfig(_Section):
    """Limits applied when messages are routed (``[limits]``)."""

    recipient_per_hour: Annotated[int, Meta(ge=0)] = 0
    """Messages to one number in any 60 minutes, across every node; 0 means no limit."""
    recipient_per_day: Annotated[int, Meta(ge=0)] = 0
    """Messages to one number in any 24 hours, across every node; 0 means no limit."""
    recipient_exempt_transactional: bool = False
    """Transactional messages (one-time codes, receipts) neither wait for nor count against
    the recipient limits."""


class RetentionConfig(_Section):
    """How long finished messages are kept (README "Retention")."""

    days: Annotated[int, Meta(ge=0, le=36_500)] = 0
    """Messages in a final state are deleted, with their history, refs and callbacks, this many
    days after their validity ended; 0 keeps them for ever."""
    interval: Seconds = 60.0
    """Seconds between purges."""


class Config(_Section):
    data_dir: str = "./.smsgw"
    database: DatabaseConfig = DatabaseConfig()
    http: HttpConfig = HttpConfig()
    admin: AdminConfig = AdminConfig()
    intake: IntakeConfig = IntakeConfig()
    dispatcher: DispatcherConfig = DispatcherConfig()
    accounts: list[AccountConfig] = []
    cmpp: list[CmppConfig] = []
    modems: list[ModemConfig] = []
    merchants: list[MerchantConfig] = []
    crm: CrmConfig = CrmConfig()
    compliance: ComplianceConfig = ComplianceConfig()
    limits: LimitsConfig = LimitsConfig()
    retention: RetentionConfig = RetentionConfig()
    routes: list[RouteRule] = []
    """MT routing rules in order (``[[routes]]``); see :mod:`gateway.router.routing`."""

    @property
    def database_url(self) -> str:
        """The URL in force: ``SMSGW_DATABASE_URL`` overrides ``database.url``."""
        return os.environ.get(DATABASE_URL_ENV) or self.database.url


def split_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` → ``("127.0.0.1", 8080)``; ``[::1]:80`` → ``("::1", 80)``."""
    m = _LISTEN_RE.match(value)
    if m is None:
        raise ConfigError(f"expected HOST:PORT, got {value!r}")
    port = int(m["port"])
    if port > 65535:
        raise ConfigError(f"port out of range in {value!r}")
    return m["host"].strip("[]"), port


def _check(config: Config, source: str) -> Config:
    try:
        zoneinfo.ZoneInfo(config.dispatcher.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{source}: dispatcher.timezone: unknown time zone {config.dispatcher.timezone!r}") from None
    names = [c.name for c in config.cmpp] + [m.name for m in config.modems]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{source}: channel names must be unique; repeated: {', '.join(dupes)}")
    for key, values in (("name", [m.name for m in config.merchants]),
                        ("service_number", [m.service_number for m in config.merchants])):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"{source}: merchants.{key} must be unique; repeated: {', '.join(repeated)}")
    _check_compliance(config, source)
    if config.admin.token and config.admin.token == config.admin.privileged_token:
        raise ConfigError(f"{source}: admin.privileged_token must differ from admin.token")
    for key, value in (("http.listen", config.http.listen), ("admin.listen", config.admin.listen)):
        try:
            split_listen(value)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {key}: {exc}") from None
    _check_routes(config, source)
    return config


def channel_operators(config: Config) -> dict[str, frozenset[str]]:
    """The channels the configuration names (as :func:`gateway.app.build_channels` makes them:
    one per ``[[cmpp]]``, one called ``modems`` for the pool) and the operators each serves."""
    out = {c.name: frozenset(c.operators) for c in config.cmpp}
    if config.modems:
        out["modems"] = frozenset(op for m in config.modems for op in m.operators)
    return out


def _check_routes(config: Config, source: str) -> None:
    """``[[routes]]`` must name configured channels (accounts are checked against the database
    when the gateway starts)."""
    if not config.routes:
        return
    bare = [msgspec.structs.replace(r, accounts=[]) for r in config.routes]
    try:
        RouteTable.compile(bare, channel_operators(config), where="routes")
    except RoutingError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def parse_config(data: bytes | str, source: str = "<config>") -> Config:
    """Decode TOML text; errors name the offending key."""
    try:
        config = msgspec.toml.decode(data, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return _check(config, source)


def load_config(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {p}: {exc.strerror}") from None
    return parse_config(data, str(p))


def default_config(**overrides: object) -> Config:
    """Defaults with some top-level fields replaced (the demo's, the tests')."""
    return msgspec.structs.replace(Config(), **overrides)


def _check_compliance(config: Config, source: str) -> None:
    """``compliance.blocklist`` holds Chinese mobile numbers; a bad one is named."""
    from .compliance import configured_blocklist

    try:
        configured_blocklist(config.compliance.blocklist)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
