"""The load test scenarios: what each request is, at what rate, for how long.

Rates and counts are in *messages* (recipients for MTs, texts for MOs); a scenario whose
requests carry several recipients sends ``rate / messages_per_call`` requests a second.
Every MT text carries the run's id and a sequence number, so that the ISMG simulator can
recognise a message it is handed twice (a duplicate). Destinations are China Mobile
numbers, routed to the CMPP link.

Scenarios:

- ``single``: one recipient per ``POST /v1/messages``;
- ``batch``: 100 recipients per request;
- ``campaign``: a 100,000-recipient burst in requests of 1,000;
- ``mo-storm``: consumers texting commands to the service number through the simulator;
- ``dlr-storm``: MT batches whose delivery reports the simulator holds back until the sending is
  over, then sends as one wave (self-contained mode; against a target it is a batch run);
- ``mixed``: a day-shaped profile of singles, small batches and MOs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from gateway.errors import GatewayError

from .generator import Call
from .http_client import Endpoint, render_request
from .schedule import RateProfile, constant, day_shape, ramp

__all__ = ["MO_COMMANDS", "SCENARIOS", "LoadTestError", "Plan", "Scenario", "check_options", "plan"]

MAX_DURATION = 3600.0
"""Seconds a run may last at most."""
MAX_COUNT = 10_000_000
"""Messages a run may send at most."""
MO_COMMANDS = ("1", "2", "CJ", "TD", "代码1", "积分?")
"""What the consumers of an MO storm text: the default commands and one the CRM does not know."""
DEFAULT_SERVICE_NUMBER = "10658888"
ROUTE_CMPP, ROUTE_MODEM = "cmpp", "modem"
"""The routes of MT calls: China Mobile numbers go to the CMPP link, China Unicom ones to the modems."""


class LoadTestError(GatewayError):
    """A load test that cannot run as asked (bad options, a stack that does not start)."""


_encode = msgspec.json.encode


def destination(n: int) -> str:
    """The n-th test recipient: a China Mobile number (138 prefix), unique for n < 10**8."""
    return f"138{n % 100_000_000:08d}"


def modem_destination(n: int) -> str:
    """The n-th test recipient on the emulated modems: a China Unicom number (1867 prefix)."""
    return f"1867{n % 10_000_000:07d}"


def consumer(n: int) -> str:
    """The n-th consumer texting in: a China Mobile number (139 prefix)."""
    return f"139{n % 100_000_000:08d}"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    rate: float
    """Default messages per second (the peak, for shaped profiles)."""
    duration: float
    """Default seconds of sending."""
    count: int | None = None
    """Default messages in all (None: rate × duration)."""
    batch: int = 1
    """Recipients per MT request."""
    shape: str = "constant"
    """``constant`` (or a ramp when asked) or ``day``."""
    hold_reports: bool = False
    """Self-contained mode: the simulator holds every report until the sending is over."""
    uses_mo: bool = False
    uses_mt: bool = True


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("single", "single-recipient HTTP sends", rate=500, duration=10),
    Scenario("batch", "HTTP sends of 100 recipients", rate=5000, duration=10, batch=100),
    Scenario("campaign", "a 100,000-recipient burst in requests of 1,000", rate=20_000, duration=60,
             count=100_000, batch=1000),
    Scenario("mo-storm", "consumers texting commands to the service number", rate=200, duration=10,
             uses_mo=True, uses_mt=False),
    Scenario("dlr-storm", "MT batches whose delivery reports come back as one wave", rate=5000, duration=5,
             batch=100, hold_reports=True),
    Scenario("mixed", "a day-shaped mix of singles, batches of 10 and MOs", rate=1000, duration=30,
             shape="day", uses_mo=True),
)}

#: The mixed scenario's share of each call kind, in percent: singles, batches of 10, MOs.
MIXED_SINGLE, MIXED_BATCH, MIXED_BATCH_SIZE = 80, 15, 10
#: With emulated modems, this share of the mixed scenario's singles (in percent of all calls)
#: goes to China Unicom numbers, which the gateway routes to the modems.
MIXED_MODEM = 1


@dataclass(frozen=True, slots=True)
class Plan:
    """A scenario with its options resolved: the schedule of requests and how to make each."""

    scenario: Scenario
    profile: RateProfile
    requests: int
    """Requests at most (the schedule may end sooner, at its duration)."""
    messages_per_call: float
    call: Callable[[int], Call]
    run_id: str
    modem_numbers: Callable[[int], list[str]]
    """The modem recipients among the first ``sent`` requests."""


def _mixed_kind(i: int) -> int:
    return (i * 2654435761) % 100  # a fixed, well-spread permutation of the indices


def _no_modem_numbers(sent: int) -> list[str]:
    return []


def _mixed_modem_numbers(sent: int) -> list[str]:
    return [modem_destination(i) for i in range(sent) if _mixed_kind(i) < MIXED_MODEM]


def plan(name: str, *, rate: float | None, duration: float | None, count: int | None, ramp_s: float,
         endpoints: dict[str, Endpoint], run_id: str, service_number: str = DEFAULT_SERVICE_NUMBER,
         modems: bool = False) -> Plan:
    """Resolve a scenario's options; raises :class:`LoadTestError` naming the bad one. With
    ``modems``, the mixed scenario also sends to numbers the emulated modems serve."""
    scenario, rate, duration, count = check_options(name, rate=rate, duration=duration, count=count, ramp_s=ramp_s)
    return _plan(scenario, rate, duration, count, ramp_s, endpoints, run_id, service_number, modems)


def check_options(name: str, *, rate: float | None, duration: float | None, count: int | None,
                  ramp_s: float) -> tuple[Scenario, float, float, int | None]:
    """The scenario and its rate, duration and count with defaults filled in; raises
    :class:`LoadTestError` naming a bad option."""
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise LoadTestError(f"--scenario: unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
    rate = scenario.rate if rate is None else rate
    duration = scenario.duration if duration is None else duration
    if not rate > 0:
        raise LoadTestError("--rate must be a positive number of messages per second")
    if not 0 < duration <= MAX_DURATION:
        raise LoadTestError(f"--duration must be within (0, {MAX_DURATION:g}] seconds")
    if count is None:
        count = scenario.count
    if count is not None and not 0 < count <= MAX_COUNT:
        raise LoadTestError(f"--count must be within 1..{MAX_COUNT}")
    if ramp_s < 0:
        raise LoadTestError("--ramp must not be negative")
    return scenario, rate, duration, count


def _plan(scenario: Scenario, rate: float, duration: float, count: int | None, ramp_s: float,
          endpoints: dict[str, Endpoint], run_id: str, service_number: str, modems: bool) -> Plan:
    name = scenario.name
    modem_numbers = _no_modem_numbers

    mt = endpoints.get("mt")
    mo = endpoints.get("mo")
    if scenario.uses_mt and mt is None:
        raise LoadTestError(f"scenario {name} needs the gateway's HTTP API")
    if scenario.uses_mo and mo is None:
        raise LoadTestError(f"scenario {name} needs a handset simulator (/v1/sim/mo): use the self-contained "
                            "mode or a demo gateway as --target")

    def mt_call(recipients: list[str], text: str, route: str = ROUTE_CMPP) -> Call:
        assert mt is not None
        to: str | list[str] = recipients[0] if len(recipients) == 1 else recipients
        body = _encode({"to": to, "text": text})
        return Call("mt", render_request(mt, "POST", "/v1/messages", body), len(recipients), route)

    def mo_call(i: int) -> Call:
        assert mo is not None
        body = _encode({"from": consumer(i), "to": service_number, "text": MO_COMMANDS[i % len(MO_COMMANDS)]})
        return Call("mo", render_request(mo, "POST", "/v1/sim/mo", body, auth=False), 1)

    size = scenario.batch
    if scenario.name == "mo-storm":
        call, per_call = mo_call, 1.0
    elif scenario.name == "mixed":
        def call(i: int) -> Call:
            k = _mixed_kind(i)
            if modems and k < MIXED_MODEM:
                return mt_call([modem_destination(i)], f"LT{run_id} {i}", ROUTE_MODEM)
            if k < MIXED_SINGLE:
                return mt_call([destination(i * MIXED_BATCH_SIZE)], f"LT{run_id} {i}")
            if k < MIXED_SINGLE + MIXED_BATCH:
                base = i * MIXED_BATCH_SIZE
                return mt_call([destination(base + j) for j in range(MIXED_BATCH_SIZE)], f"LT{run_id} {i}")
            return mo_call(i)
        if modems:
            modem_numbers = _mixed_modem_numbers
        mo_share = (100 - MIXED_SINGLE - MIXED_BATCH) / 100
        per_call = MIXED_SINGLE / 100 + MIXED_BATCH / 100 * MIXED_BATCH_SIZE + mo_share
    else:
        def call(i: int) -> Call:
            base = i * size
            return mt_call([destination(base + j) for j in range(size)], f"LT{run_id} {i}")
        per_call = float(size)

    request_rate = rate / per_call
    if scenario.shape == "day":
        profile = day_shape(request_rate, duration)
    elif ramp_s:
        profile = ramp(request_rate, duration, ramp_s)
    else:
        profile = constant(request_rate, duration)
    planned = profile.expected()
    requests = int(planned + 0.5)
    if count is not None:
        requests = min(requests, max(1, round(count / per_call)))
    if requests < 1:
        raise LoadTestError("the options leave no request to send: raise --rate or --duration")
    return Plan(scenario, profile, requests, per_call, call, run_id, modem_numbers)
