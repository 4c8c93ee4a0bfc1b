"""MT routing rules: which channel a queued message goes out on (pure policy, no I/O).

The shape is Jasmin's: *filters* with ``match(message)``, *routes* made of filters and the
channels they send to, and an ordered *table* with a default. A rule (``[[routes]]`` in the
configuration, or ``PUT /v1/admin/routes``) matches when every filter it names matches:

- ``operators``: the destination's operator (``cmcc``, ``cucc``, ``ctcc``, ``cbn``);
- ``prefixes``: the destination number starts with one of them (``"138"``, ``"1380013"``);
- ``accounts``: the sending account, by name or id;
- ``class``: ``transactional`` or ``marketing``.

A filter left out (or empty) matches anything. The first rule that matches decides; its
``channels`` are tried in order (the first is preferred, the others are fallbacks, used only
when those before them cannot take the message: down, saturated, or not serving the
destination's operator). When none of them can take it the message waits in the queue; it
is not handed to a later rule. A message that no rule matches goes by the *default route*:
any up channel serving its operator, the one with the most room (the behaviour without rules).

A message being retried after a transient failure avoids the channel that failed it
(``last_channel``) when the route offers another channel that can take it now.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Literal, Protocol

import msgspec
from msgspec import Meta

from ..errors import ConfigError

__all__ = [
    "AccountFilter",
    "ClassFilter",
    "Filter",
    "OperatorFilter",
    "PrefixFilter",
    "Route",
    "RouteRule",
    "RouteTable",
    "RoutingError",
    "decode_rules",
    "encode_rules",
]

MAX_RULES = 1000
"""Rules a table may hold."""

RuleName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
ChannelName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]
Prefix = Annotated[str, Meta(pattern=r"^[0-9]{1,11}$")]
OperatorName = Literal["cmcc", "cucc", "ctcc", "cbn"]
MessageClass = Literal["transactional", "marketing"]
AccountRef = str | Annotated[int, Meta(ge=1)]


class RouteRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One ``[[routes]]`` table, as written in the configuration and over the admin API."""

    name: RuleName
    channels: Annotated[list[ChannelName], Meta(min_length=1, max_length=32)]
    """Channel names in preference order: the first is preferred, the rest are fallbacks."""
    operators: list[OperatorName] = []
    prefixes: Annotated[list[Prefix], Meta(max_length=1000)] = []
    accounts: Annotated[list[AccountRef], Meta(max_length=1000)] = []
    """Account names or ids."""
    msg_class: MessageClass | None = msgspec.field(default=None, name="class")


class RoutingError(ConfigError):
    """A rule set that cannot be used; ``field`` names the offending key (``routes[2].channels[0]``)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class Routable(Protocol):
    """What routing looks at (``gateway.channel.OutboundMessage`` is one)."""

    @property
    def dest(self) -> str: ...
    @property
    def operator(self) -> str: ...
    @property
    def account_id(self) -> int: ...
    @property
    def msg_class(self) -> str: ...


# --- filters -------------------------------------------------------------------------------------


class OperatorFilter(msgspec.Struct, frozen=True):
    operators: frozenset[str]

    def match(self, message: Routable) -> bool:
        return message.operator in self.operators


class PrefixFilter(msgspec.Struct, frozen=True):
    prefixes: tuple[str, ...]

    def match(self, message: Routable) -> bool:
        return message.dest.startswith(self.prefixes)


class AccountFilter(msgspec.Struct, frozen=True):
    account_ids: frozenset[int]

    def match(self, message: Routable) -> bool:
        return message.account_id in self.account_ids


class ClassFilter(msgspec.Struct, frozen=True):
    msg_class: str

    def match(self, message: Routable) -> bool:
        return message.msg_class == self.msg_class


Filter = OperatorFilter | PrefixFilter | AccountFilter | ClassFilter


class Route(msgspec.Struct, frozen=True):
    """A compiled rule: all of ``filters`` must match; ``channels`` in preference order."""

    name: str
    filters: tuple[Filter, ...]
    channels: tuple[str, ...]

    def match(self, message: Routable) -> bool:
        return all(f.match(message) for f in self.filters)


# --- the table -----------------------------------------------------------------------------------


class RouteTable:
    """An ordered list of routes over known channels, with the default route after them.

    ``channels`` maps each channel name to the operators it serves, in the dispatcher's order.
    """

    def __init__(self, routes: Sequence[Route], channels: Mapping[str, frozenset[str]], *,
                 rules: Sequence[RouteRule] = (), version: int = 0) -> None:
        self.routes = tuple(routes)
        self.channels = dict(channels)
        self.rules = tuple(rules)
        """The rules as written (what ``GET /v1/admin/routes`` shows)."""
        self.version = version

    @classmethod
    def compile(cls, rules: Sequence[RouteRule], channels: Mapping[str, Iterable[str]], *,
                accounts: Mapping[str, int] | None = None, version: int = 0,
                where: str = "routes", strict: bool = True) -> RouteTable:
        """Check ``rules`` against the channels (name → operators served) and, when given, the
        accounts (name → id); raises :class:`RoutingError` naming the first bad key.

        With ``strict=False`` (a table another node stored) a channel this node does not have
        is kept as one that is never available, and an unknown account matches nothing."""
        if len(rules) > MAX_RULES:
            raise RoutingError(f"at most {MAX_RULES} rules", where)
        known = {name: frozenset(ops) for name, ops in channels.items()}
        ids = set(accounts.values()) if accounts is not None else None
        seen: set[str] = set()
        routes = []
        for i, rule in enumerate(rules):
            at = f"{where}[{i}]"
            if rule.name in seen:
                raise RoutingError(f"rule name {rule.name!r} is used twice", f"{at}.name")
            seen.add(rule.name)
            for j, name in enumerate(rule.channels):
                if name not in known and not strict:
                    continue
                if name not in known:
                    raise RoutingError(f"unknown channel {name!r} (known: {', '.join(sorted(known)) or 'none'})",
                                       f"{at}.channels[{j}]")
                if name in rule.channels[:j]:
                    raise RoutingError(f"channel {name!r} is named twice", f"{at}.channels[{j}]")
            filters: list[Filter] = []
            if rule.operators:
                filters.append(OperatorFilter(frozenset(rule.operators)))
                if strict and not any(known[c] & set(rule.operators) for c in rule.channels):
                    raise RoutingError(f"none of the rule's channels serves {', '.join(rule.operators)}",
                                       f"{at}.channels")
            if rule.prefixes:
                filters.append(PrefixFilter(tuple(rule.prefixes)))
            if rule.accounts:
                account_ids = set()
                for j, ref in enumerate(rule.accounts):
                    if isinstance(ref, int):
                        if strict and ids is not None and ref not in ids:
                            raise RoutingError(f"no account with id {ref}", f"{at}.accounts[{j}]")
                        account_ids.add(ref)
                    elif accounts is None:
                        raise RoutingError("account names need the account list to resolve", f"{at}.accounts[{j}]")
                    elif ref not in accounts and not strict:
                        continue
                    elif ref not in accounts:
                        raise RoutingError(f"unknown account {ref!r}", f"{at}.accounts[{j}]")
                    else:
                        account_ids.add(accounts[ref])
                filters.append(AccountFilter(frozenset(account_ids)))
            if rule.msg_class is not None:
                filters.append(ClassFilter(rule.msg_class))
            routes.append(Route(rule.name, tuple(filters), tuple(rule.channels)))
        return cls(routes, known, rules=rules, version=version)

    def route_for(self, message: Routable) -> Route | None:
        """The first route that matches, or None (the default route)."""
        for route in self.routes:
            if route.match(message):
                return route
        return None

    def candidates(self, message: Routable) -> tuple[str, ...]:
        """Channels that may carry ``message``, in preference order (before looking at room)."""
        route = self.route_for(message)
        names = route.channels if route is not None else tuple(self.channels)
        return tuple(n for n in names if message.operator in self.channels.get(n, ()))

    def choose(self, message: Routable, room: Mapping[str, int], *, avoid: str | None = None) -> str | None:
        """The channel to send ``message`` on now, or None when it must wait.

        ``room`` is how many more messages each channel takes now (a channel that is down is
        absent or 0). By the matched route's order; by most room on the default route. The
        channel named ``avoid`` (the one that failed the last attempt) is taken only when no
        other can be.
        """
        route = self.route_for(message)
        if route is None:
            open_ = [(room.get(n, 0), n) for n, ops in self.channels.items()
                     if message.operator in ops and room.get(n, 0) > 0]
            preferred = [c for c in open_ if c[1] != avoid] or open_
            # Most room first; among equals, the first in the dispatcher's order.
            return max(preferred, key=lambda c: c[0])[1] if preferred else None
        fallback = None
        for name in route.channels:
            if room.get(name, 0) > 0 and message.operator in self.channels.get(name, ()):
                if name != avoid:
                    return name
                fallback = name
        return fallback


def decode_rules(data: bytes | str, *, where: str = "routes") -> list[RouteRule]:
    """A JSON array of rules (the admin API's body); raises :class:`RoutingError` naming the field."""
    try:
        return msgspec.json.decode(data, type=list[RouteRule])
    except msgspec.ValidationError as exc:
        text = str(exc)
        path = text.rsplit("- at `$", 1)
        field = where + path[1].rstrip("`") if len(path) == 2 else where
        missing = re.search(r"(?:missing required field|unknown field) `([^`]+)`", text)
        if missing:
            field = f"{field}.{missing.group(1)}"
        raise RoutingError(path[0].strip().rstrip("-").strip(), field) from None
    except msgspec.DecodeError as exc:
        raise RoutingError(f"malformed JSON: {exc}", where) from None


def encode_rules(rules: Sequence[RouteRule]) -> bytes:
    return msgspec.json.encode(list(rules))
