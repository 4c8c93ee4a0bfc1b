"""The simulators of a self-contained load test, in a process of their own.

An :class:`~gateway.cmpp.IsmgSimulator` counting duplicates, plus a small HTTP control
endpoint on 127.0.0.1 for the load tester:

- ``GET /stats`` → the simulator's :class:`~gateway.cmpp.simulator.SimulatorStatistics`;
- ``POST /v1/sim/mo {"from", "to", "text"}`` → the handset ``from`` texts ``to`` through the
  ISMG (a DELIVER to the gateway); answered 202 once the gateway acknowledged every part,
  the same body as the demo's endpoint, so the MO storm drives either;
- ``POST /v1/sim/hold-reports {"seconds": S}`` → every status report of a SUBMIT accepted in
  the next S seconds is held until then and all go out together: a delivery-report storm;
- ``POST /v1/sim/inbox-counts {"numbers": [...]}`` → how many messages those handsets got from
  the emulated modems, and how many of them were repeats (``--modems N`` starts N modems on
  pseudo-terminals, on a handset network of their own).

When ready it writes one JSON object to ``--ready-file``: ``{"ismg": "127.0.0.1:PORT",
"control": "http://127.0.0.1:PORT", "modems": [{"device", "number", "operator"}, ...]}``. SIGTERM or SIGINT stop it.

    python -m loadtest.simproc --sp-id 901234 --secret s --ready-file /tmp/sim.json
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
from typing import Annotated

import msgspec
import trio

from gateway import heap
from gateway.cmpp import IsmgSimulator
from gateway.cmpp.pdus import VERSION_2_0, VERSION_3_0
from gateway.config import split_listen
from gateway.http import Request, Response, Router, error_response, serve_http
from gateway.modem_pool.emulator import HandsetNetwork
from gateway.sim_modems import SimModem, serve_sim_modems
from gateway.text import InvalidNumber, normalize_msisdn

__all__ = ["MO_ACK_TIMEOUT", "ReportHold", "control_routes", "serve_simulators", "main"]

log = logging.getLogger(__name__)

MAX_HOLD = 3600.0
"""Seconds status reports may be held back at most."""
HOLD_STEP = 0.01
"""Seconds between updates of the report delay while reports are held (the wave's spread)."""
MO_ACK_TIMEOUT = 30.0
MAX_INBOX_NUMBERS = 1_000_000
"""Handsets one inbox-counts call may ask about."""
"""Seconds an MO may wait for the gateway's DELIVER_RESP before the control call gives up (503)."""


class _MoBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sender: str = msgspec.field(name="from")
    to: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,21}$")]
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
    via: str | None = None


class _InboxCountsBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    numbers: Annotated[list[str], msgspec.Meta(max_length=MAX_INBOX_NUMBERS)]


class _HoldBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    seconds: Annotated[float, msgspec.Meta(gt=0, le=MAX_HOLD)]


_mo_decoder = msgspec.json.Decoder(_MoBody)
_hold_decoder = msgspec.json.Decoder(_HoldBody)
_inbox_counts_decoder = msgspec.json.Decoder(_InboxCountsBody)
_encoder = msgspec.json.Encoder()


class ReportHold:
    """Holds status reports back until one instant, by keeping the simulator's ``dlr_delay``
    equal to the time left until then (reports are due ``dlr_delay`` after their SUBMIT)."""

    def __init__(self, sim: IsmgSimulator) -> None:
        self.sim = sim
        self.normal_delay = sim.dlr_delay
        self.release_at: float | None = None
        self._changed = trio.Event()

    def hold(self, seconds: float) -> None:
        self.release_at = trio.current_time() + seconds
        self.sim.dlr_delay = seconds
        self._changed.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if self.release_at is None:
                await self._changed.wait()
                self._changed = trio.Event()
                continue
            left = self.release_at - trio.current_time()
            if left <= 0:
                self.release_at = None
                self.sim.dlr_delay = self.normal_delay
                continue
            self.sim.dlr_delay = left
            await trio.sleep(min(HOLD_STEP, left))


def control_routes(router: Router, sim: IsmgSimulator, hold: ReportHold,
                   network: HandsetNetwork | None = None) -> None:
    async def stats(request: Request) -> Response:
        return Response(status=200, body=_encoder.encode(sim.statistics()))

    async def mo(request: Request) -> Response:
        try:
            body = _mo_decoder.decode(request.body)
            sender = normalize_msisdn(body.sender)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return error_response(400, "invalid_field", str(exc))
        except InvalidNumber as exc:
            return error_response(400, "invalid_number", f"from: {exc.reason}")
        if body.via not in (None, "cmpp"):
            return error_response(400, "invalid_field", "via: only cmpp is simulated here")
        with trio.move_on_after(MO_ACK_TIMEOUT):
            parts = await sim.inject_mo(sender, body.to, body.text)
            return Response(status=202, body=_encoder.encode(
                {"from": sender, "to": body.to, "via": "cmpp", "parts": parts}))
        return error_response(503, "link_down", "the gateway did not take the message in time")

    async def hold_reports(request: Request) -> Response:
        try:
            body = _hold_decoder.decode(request.body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return error_response(400, "invalid_field", str(exc))
        hold.hold(body.seconds)
        return Response(status=200, body=_encoder.encode({"held_for_s": body.seconds}))

    async def inbox_counts(request: Request) -> Response:
        try:
            body = _inbox_counts_decoder.decode(request.body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return error_response(400, "invalid_field", str(exc))
        received = repeats = 0
        if network is not None:
            for number in body.numbers:
                texts = [m.text for m in network.inbox(number)]
                received += len(texts)
                repeats += len(texts) - len(set(texts))
        return Response(status=200, body=_encoder.encode({"received": received, "duplicates": repeats}))

    router.add("GET", "/stats", stats)
    router.add("POST", "/v1/sim/inbox-counts", inbox_counts)
    router.add("POST", "/v1/sim/hold-reports", hold_reports)
    router.add("POST", "/v1/sim/mo", mo)


async def serve_simulators(args: argparse.Namespace, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    sim = IsmgSimulator(sp_id=args.sp_id, secret=args.secret,
                        version=VERSION_3_0 if args.version == "3.0" else VERSION_2_0,
                        dlr_delay=args.dlr_delay_ms / 1000, count_duplicates=True)
    hold = ReportHold(sim)
    network = HandsetNetwork()
    router = Router()
    control_routes(router, sim, hold, network)
    ismg_host, ismg_port = split_listen(args.ismg)
    control_host, control_port = split_listen(args.control)
    async with trio.open_nursery() as nursery:
        await nursery.start(hold.run)
        ismg_port = await nursery.start(sim.serve, ismg_host, ismg_port)
        control_port = await nursery.start(functools.partial(serve_http, router, control_host, control_port))
        modems: list[SimModem] = []
        if args.modems:
            modems = await nursery.start(functools.partial(serve_sim_modems, args.modems, network=network))
        info = {"ismg": f"{ismg_host}:{ismg_port}", "control": f"http://{control_host}:{control_port}",
                "modems": [{"device": m.device, "number": m.number, "operator": m.operator} for m in modems]}
        tmp = f"{args.ready_file}.tmp"
        with open(tmp, "w") as f:
            json.dump(info, f)
        os.replace(tmp, args.ready_file)
        log.info("load test simulators ready ismg=%s control=%s", info["ismg"], info["control"])
        task_status.started(info)


async def _until_signal(args: argparse.Namespace) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_simulators, args)
            heap.settle()
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="ISMG simulator with a control endpoint, for load tests")
    ap.add_argument("--ismg", default="127.0.0.1:0", help="CMPP listen HOST:PORT (default 127.0.0.1:0)")
    ap.add_argument("--control", default="127.0.0.1:0", help="control HTTP HOST:PORT (default 127.0.0.1:0)")
    ap.add_argument("--version", choices=["2.0", "3.0"], default="3.0")
    ap.add_argument("--sp-id", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--dlr-delay-ms", type=float, default=0.0)
    ap.add_argument("--modems", type=int, default=0, help="emulated modems on pseudo-terminals (default none)")
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    trio.run(_until_signal, args)


if __name__ == "__main__":
    main()
