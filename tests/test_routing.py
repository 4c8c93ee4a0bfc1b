"""The routing table and the recipient limits as pure policy: no database, no channels."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.channel import OutboundMessage
from gateway.config import ConfigError, parse_config
from gateway.router import RecipientLimit, RouteRule, RouteTable, RoutingError
from gateway.router.recipients import DAY, HOUR
from gateway.router.routing import decode_rules, encode_rules

CHANNELS = {
    "cmcc-1": frozenset({"cmcc"}),
    "cmcc-2": frozenset({"cmcc"}),
    "modems": frozenset({"cucc", "ctcc"}),
    "all": frozenset({"cmcc", "cucc", "ctcc"}),
}
ACCOUNTS = {"acme": 1, "shop": 2}


def msg(dest: str = "13800138000", operator: str = "cmcc", account_id: int = 1,
        msg_class: str = "transactional", mid: int = 1) -> OutboundMessage:
    return OutboundMessage(id=mid, account_id=account_id, dest=dest, operator=operator, encoding="gsm7",
                           parts=("x",), priority=0, msg_class=msg_class, sender="",
                           expires_at=datetime(2100, 1, 1, tzinfo=timezone.utc))


def table(*rules: RouteRule) -> RouteTable:
    return RouteTable.compile(list(rules), CHANNELS, accounts=ACCOUNTS)


FULL = {name: 10 for name in CHANNELS}


def test_without_rules_the_default_route_takes_the_channel_with_most_room():
    t = table()
    assert t.choose(msg(), {"cmcc-1": 3, "cmcc-2": 7, "all": 5}) == "cmcc-2"
    assert t.choose(msg(operator="cucc", dest="18600000000"), {"cmcc-1": 9, "modems": 1}) == "modems"
    assert t.choose(msg(), {"modems": 10}) is None  # nothing up serves cmcc
    assert t.choose(msg(), {"cmcc-1": 0, "cmcc-2": 0}) is None  # saturated


def test_rules_match_by_operator_prefix_account_and_class_first_match_wins():
    t = table(
        RouteRule(name="otp", msg_class="transactional", accounts=["shop"], channels=["cmcc-2"]),
        RouteRule(name="vip", prefixes=["1390"], channels=["all"]),
        RouteRule(name="mobile", operators=["cmcc"], channels=["cmcc-1", "cmcc-2"]),
        RouteRule(name="ids", accounts=[1], msg_class="marketing", channels=["modems"]),
    )
    assert t.choose(msg(account_id=2), FULL) == "cmcc-2"
    assert t.choose(msg(dest="13900000001", account_id=2, msg_class="marketing"), FULL) == "all"
    assert t.choose(msg(account_id=2, msg_class="marketing"), FULL) == "cmcc-1"
    assert t.route_for(msg(dest="18600000000", operator="cucc", msg_class="marketing")).name == "ids"
    # No rule matches: the default route (most room among channels serving the operator).
    assert t.route_for(msg(dest="18600000000", operator="cucc")) is None
    assert t.choose(msg(dest="18600000000", operator="cucc"), {"modems": 2, "all": 5}) == "all"


def test_fallback_only_when_the_preferred_channel_cannot_take_it_and_no_spill_to_later_rules():
    t = table(RouteRule(name="mobile", operators=["cmcc"], channels=["cmcc-1", "cmcc-2"]),
              RouteRule(name="rest", channels=["all"]))
    assert t.choose(msg(), {"cmcc-1": 1, "cmcc-2": 50, "all": 50}) == "cmcc-1"
    assert t.choose(msg(), {"cmcc-1": 0, "cmcc-2": 50, "all": 50}) == "cmcc-2"
    # Both of the matching rule's channels down or full: the message waits (not "all").
    assert t.choose(msg(), {"cmcc-1": 0, "all": 50}) is None


def test_a_retry_avoids_the_channel_that_failed_it_when_another_fits():
    t = table(RouteRule(name="mobile", operators=["cmcc"], channels=["cmcc-1", "cmcc-2"]))
    assert t.choose(msg(), FULL, avoid="cmcc-1") == "cmcc-2"
    assert t.choose(msg(), {"cmcc-1": 5}, avoid="cmcc-1") == "cmcc-1"  # the only one left
    assert table().choose(msg(), {"cmcc-1": 1, "cmcc-2": 9}, avoid="cmcc-2") == "cmcc-1"
    assert table().choose(msg(), {"cmcc-2": 9}, avoid="cmcc-2") == "cmcc-2"


def test_a_channel_not_serving_the_operator_is_skipped():
    t = table(RouteRule(name="r", prefixes=["1"], channels=["modems", "all"]))
    assert t.choose(msg(), FULL) == "all"
    assert t.candidates(msg()) == ("all",)


@pytest.mark.parametrize(("rules", "field", "words"), [
    ([RouteRule(name="a", channels=["nope"])], "routes[0].channels[0]", "unknown channel 'nope'"),
    ([RouteRule(name="a", channels=["all"]), RouteRule(name="a", channels=["all"])], "routes[1].name", "twice"),
    ([RouteRule(name="a", channels=["all", "all"])], "routes[0].channels[1]", "twice"),
    ([RouteRule(name="a", accounts=["ghost"], channels=["all"])], "routes[0].accounts[0]", "unknown account"),
    ([RouteRule(name="a", accounts=[99], channels=["all"])], "routes[0].accounts[0]", "no account"),
    ([RouteRule(name="a", operators=["cucc"], channels=["cmcc-1"])], "routes[0].channels", "serves cucc"),
])
def test_bad_rules_name_the_key(rules, field, words):
    with pytest.raises(RoutingError) as info:
        table(*rules)
    assert info.value.field == field and words in str(info.value)


def test_a_table_from_another_node_tolerates_channels_this_node_lacks():
    rules = [RouteRule(name="a", channels=["elsewhere", "cmcc-1"], accounts=["ghost", "acme"]),
             RouteRule(name="b", channels=["cmcc-2"], accounts=["ghost"])]
    t = RouteTable.compile(rules, CHANNELS, accounts=ACCOUNTS, strict=False)
    assert t.candidates(msg(account_id=1)) == ("cmcc-1",)
    assert t.route_for(msg(account_id=2)) is None  # an account unknown here matches nothing


def test_rules_decode_from_json_naming_bad_fields_and_round_trip():
    rules = decode_rules(b'[{"name": "otp", "class": "transactional", "channels": ["cmcc-1"], "accounts": ["acme", 2]}]')
    assert rules[0].msg_class == "transactional" and rules[0].accounts == ["acme", 2]
    assert decode_rules(encode_rules(rules)) == rules
    for body, field in [(b'[{"name": "x"}]', "routes[0].channels"),
                        (b'[{"name": "x", "channels": ["a"], "operater": ["cmcc"]}]', "routes[0].operater"),
                        (b'[{"name": "x", "channels": ["a"], "class": "spam"}]', "routes[0].class"),
                        (b'[{"name": "x", "channels": []}]', "routes[0].channels"),
                        (b'[{"name": "x", "channels": ["a"], "prefixes": ["13a"]}]', "routes[0].prefixes[0]"),
                        (b'{"name": 1', "routes")]:
        with pytest.raises(RoutingError) as info:
            decode_rules(body)
        assert info.value.field == field, (body, str(info.value))


def test_config_routes_are_checked_at_start():
    base = """
[[cmpp]]
name = "cmcc-1"
sp_id = "901234"
secret = "s"
service_number = "10658888"

[[modems]]
name = "m1"
device = "/dev/null"
operators = ["cucc"]
"""
    config = parse_config(base + """
[limits]
recipient_per_hour = 5

[[routes]]
name = "marketing"
class = "marketing"
accounts = ["acme"]
channels = ["modems", "cmcc-1"]
""")
    assert config.routes[0].channels == ["modems", "cmcc-1"] and config.limits.recipient_per_hour == 5
    with pytest.raises(ConfigError, match=r"routes\[0\]\.channels\[0\]: unknown channel 'cmcc-2'"):
        parse_config(base + '[[routes]]\nname = "x"\nchannels = ["cmcc-2"]\n')
    with pytest.raises(ConfigError, match=r"routes\[0\]"):
        parse_config(base + '[[routes]]\nname = "x"\nchanels = ["cmcc-1"]\n')


# --- properties ---------------------------------------------------------------------------------

names = st.sampled_from(sorted(CHANNELS))
rule_st = st.builds(
    lambda i, ops, prefixes, accounts, cls, chans: RouteRule(
        name=f"r{i}", operators=ops, prefixes=prefixes, accounts=accounts, msg_class=cls, channels=chans),
    st.integers(0, 10**6),
    st.lists(st.sampled_from(["cmcc", "cucc", "ctcc"]), max_size=2, unique=True),
    st.lists(st.sampled_from(["13", "138", "1380", "139", "186", "18"]), max_size=2, unique=True),
    st.lists(st.sampled_from(["acme", "shop", 1, 2]), max_size=2, unique=True),
    st.sampled_from([None, "transactional", "marketing"]),
    st.lists(names, min_size=1, max_size=3, unique=True),
)
message_st = st.builds(
    lambda dest, op, acc, cls: msg(dest=dest, operator=op, account_id=acc, msg_class=cls),
    st.sampled_from(["13800138000", "13900000001", "18600000000", "18912345678"]),
    st.sampled_from(["cmcc", "cucc", "ctcc"]), st.sampled_from([1, 2]),
    st.sampled_from(["transactional", "marketing"]))
room_st = st.dictionaries(names, st.integers(0, 3))


def _compile_or_none(rules):
    try:
        return table(*rules)
    except RoutingError:
        return None  # e.g. a rule for cucc naming only cmcc channels: refused, not routed


@settings(max_examples=300, deadline=None)
@given(st.lists(rule_st, max_size=5), message_st, room_st, st.none() | names)
def test_the_chosen_channel_matches_the_first_matching_rule_and_can_take_the_message(rules, m, room, avoid):
    rules = [r for i, r in enumerate(rules) if r.name not in {x.name for x in rules[:i]}]
    t = _compile_or_none(rules)
    if t is None:
        return
    chosen = t.choose(m, room, avoid=avoid)
    first = next((r for r in rules if _matches(r, m)), None)
    assert (t.route_for(m) is None) == (first is None)
    allowed = [c for c in (first.channels if first else CHANNELS) if m.operator in CHANNELS[c]]
    open_ = [c for c in allowed if room.get(c, 0) > 0]
    if chosen is None:
        assert open_ == []  # waits only when nothing allowed can take it
        return
    assert chosen in open_  # up with room, serving the operator, allowed by the matched rule
    if first is not None:
        # Preference order respected: a fallback only when every channel before it is unavailable
        # (or is the channel the last attempt failed on).
        before = first.channels[:first.channels.index(chosen)]
        assert all(c not in open_ or c == avoid for c in before)
    if avoid is not None and chosen == avoid:
        assert open_ == [avoid]


def _matches(rule: RouteRule, m: OutboundMessage) -> bool:
    ids = {ACCOUNTS[a] if isinstance(a, str) else a for a in rule.accounts}
    return ((not rule.operators or m.operator in rule.operators)
            and (not rule.prefixes or any(m.dest.startswith(p) for p in rule.prefixes))
            and (not ids or m.account_id in ids)
            and (rule.msg_class is None or rule.msg_class == m.msg_class))


# --- recipient limits ----------------------------------------------------------------------------


def test_recipient_limit_admits_up_to_n_an_hour_and_says_how_long_the_rest_wait():
    lim = RecipientLimit(per_hour=2, per_day=3)
    now = 100_000.0
    a = lim.admit([(1, "A"), (2, "A"), (3, "A"), (4, "B")], {"A": [now - 3000]}, now)
    assert a.allowed == [1, 4]
    # A has sends at now-3000 and now: the first leaves the hour at now+600.
    assert a.waits == {2: pytest.approx(600), 3: pytest.approx(600)}
    # The day: three in any 24 hours.
    a = lim.admit([(5, "A")], {"A": [now - 80_000, now - 7000, now - 4000]}, now)
    assert a.allowed == [] and a.waits[5] == pytest.approx(DAY - 80_000)
    assert not RecipientLimit().enabled
    assert RecipientLimit().admit([(1, "A")] * 3, {"A": [now] * 10}, now).allowed == [1, 1, 1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 2 * HOUR), st.integers(1, 4)), min_size=1, max_size=40),
       st.integers(1, 4), st.integers(0, 8))
def test_recipient_limit_never_lets_more_than_n_into_any_hour(steps, per_hour, per_day):
    """Offer messages to one number at random times, send what is admitted, retry the held
    ones when told: no sliding hour (or day) ever holds more than the limit."""
    lim = RecipientLimit(per_hour=per_hour, per_day=per_day)
    sent: list[float] = []
    waiting: list[tuple[float, int]] = []
    now, next_id = 0.0, 0
    for dt, n in steps:
        now += dt
        for _ in range(n):
            waiting.append((now, next_id))
            next_id += 1
        due = sorted(w for w in waiting if w[0] <= now)
        a = lim.admit([(mid, "X") for _, mid in due], {"X": sent}, now)
        sent += [now] * len(a.allowed)
        waiting = [w for w in waiting if w[0] > now] + [(now + a.waits[mid], mid) for _, mid in due
                                                          if mid in a.waits]
        assert all(now + a.waits[mid] > now for mid in a.waits)
    for t in sent:
        assert sum(1 for u in sent if t <= u < t + HOUR) <= per_hour
        if per_day:
            assert sum(1 for u in sent if t <= u < t + DAY) <= per_day
