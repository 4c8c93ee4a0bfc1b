"""The ``smsgw`` command (SPEC.md "Install and run")."""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from . import __version__, heap
from .config import Config, default_config, load_config
from .errors import GatewayError

log = logging.getLogger("gateway")
T = TypeVar("T")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


async def _until_signal(main: Callable[..., Awaitable[object]], *args: object) -> None:
    """Run ``main`` (a task_status service) until SIGINT or SIGTERM, then cancel it cleanly.

    Once ``main`` has started, what it loaded is kept out of the garbage collector's scans
    (:func:`gateway.heap.settle`)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                async for signum in signals:
                    log.info("stopping on %s", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            await nursery.start(main, *args)
            heap.settle()


async def _unless_signalled(main: Callable[..., Awaitable[T]], *args: object) -> T:
    """``await main(*args)``; SIGINT or SIGTERM cancels it (what it started is stopped by its
    own shielded clean-up) and raises KeyboardInterrupt."""
    done: list[T] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def run() -> None:
                done.append(await main(*args))
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            async for signum in signals:
                log.warning("stopping on %s", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    if not done:
        raise KeyboardInterrupt
    return done[0]


def _config_from(args: argparse.Namespace) -> Config:
    if getattr(args, "config", None):
        return load_config(args.config)
    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    return default_config(**overrides)


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import DemoOptions, serve_demo

    options = DemoOptions(data_dir=args.data_dir, http=args.http, admin_ws=args.admin_ws, ismg=args.ismg,
                          ready_file=args.ready_file)
    trio.run(_until_signal, serve_demo, options)


def cmd_run(args: argparse.Namespace) -> None:
    from .app import serve_gateway

    config = load_config(args.config)
    trio.run(_until_signal, serve_gateway, config)


async def _with_store(config: Config, fn: Callable[..., Awaitable[None]]) -> None:
    from .app import open_database

    async with open_database(config) as (store, _url):
        await fn(store)


def cmd_migrate(args: argparse.Namespace) -> None:
    async def report(store) -> None:
        print("schema up to date")

    trio.run(_with_store, _config_from(args), report)


def cmd_apikey_create(args: argparse.Namespace) -> None:
    async def create(store) -> None:
        account = await store.ensure_account(args.account)
        print(await store.create_api_key(account.id))

    trio.run(_with_store, _config_from(args), create)


def cmd_sim_ismg(args: argparse.Namespace) -> None:
    from .cmpp import IsmgSimulator
    from .cmpp.pdus import VERSION_2_0, VERSION_3_0
    from .config import split_listen

    host, port = split_listen(args.listen)
    if not 0.0 <= args.fail_rate <= 1.0:
        raise GatewayError("--fail-rate must be between 0 and 1")
    sim = IsmgSimulator(sp_id=args.sp_id, secret=args.secret,
                        version=VERSION_3_0 if args.version == "3.0" else VERSION_2_0,
                        dlr_delay=args.dlr_delay_ms / 1000, fail_rate=args.fail_rate, max_rate=args.max_rate)

    async def serve(task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(sim.serve, host, port)
            print(f"ISMG simulator (CMPP {args.version}) listening on {host}:{bound} sp_id={args.sp_id}", flush=True)
            task_status.started()

    trio.run(_until_signal, serve)


def _network_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` (host 127.0.0.1) for ``--network-listen``."""
    from .config import split_listen

    text = value.strip()
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    elif text.startswith(":"):
        text = f"127.0.0.1{text}"
    try:
        return split_listen(text)
    except GatewayError as exc:
        raise GatewayError(f"--network-listen: {exc}") from None


def cmd_sim_modems(args: argparse.Namespace) -> None:
    from .modem_pool.emulator import HandsetNetwork
    from .sim_modems import serve_handset_network, serve_sim_modems

    if args.count < 1 or args.count > 256:
        raise GatewayError("--count must be between 1 and 256")
    if args.send_delay < 0:
        raise GatewayError("--send-delay must not be negative")
    listen = _network_listen(args.network_listen) if args.network_listen else None

    async def serve(task_status=trio.TASK_STATUS_IGNORED) -> None:
        network = HandsetNetwork()
        async with trio.open_nursery() as nursery:
            modems = await nursery.start(functools.partial(
                serve_sim_modems, args.count, network=network, send_delay=args.send_delay))
            for m in modems:
                print(f"{m.device} {m.number}", flush=True)
            if listen is not None:
                host, port = listen
                bound = await nursery.start(serve_handset_network, network, host, port)
                shown = f"[{host}]" if ":" in host else host
                print(f"handset network listening on {shown}:{bound}", flush=True)
            task_status.started()

    trio.run(_until_signal, serve)


def cmd_loadtest(args: argparse.Namespace) -> None:
    from loadtest.report import summary, write_plots
    from loadtest.runner import Options, run_loadtest

    options = Options(scenario=args.scenario, rate=args.rate, duration=args.duration, count=args.count,
                      ramp=args.ramp, target=args.target, api_key=args.api_key, json_path=args.json,
                      plots_dir=args.plots, connections=args.connections, drain_timeout=args.drain_timeout,
                      database_url=args.database_url or "", service_number=args.service_number, modems=args.modems,
                      progress=not args.quiet, keep_dir=args.keep_dir, workers=args.workers)
    report = trio.run(_unless_signalled, run_loadtest, options)
    if args.plots:
        for path in write_plots(report, args.plots):
            print(f"plot written: {path}", file=sys.stderr)
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
            f.write("\n")
    print(summary(report))
    if not report["clean"]:
        raise GatewayError(f"loadtest: {report['verdict']}")


LOADTEST_DESCRIPTION = """Open-loop load test: requests start on schedule, latency counts from the schedule.
Scenarios: single (one recipient per request), batch (100 recipients), campaign (a 100,000-recipient
burst), mo-storm (consumers texting commands), dlr-storm (delivery reports in one wave), mixed (a
day-shaped mix). Without --target it starts the gateway and the ISMG simulator in processes of their
own on 127.0.0.1. Exits 2 when anything was lost or duplicated, or (self-contained) the
simulator's counts disagree with the gateway's."""


def _add_loadtest_parser(sub) -> None:
    # The loadtest package is imported only when the command runs, so its names are spelled here.
    lt = sub.add_parser("loadtest", help="open-loop load test with loss accounting, a report and plots",
                        description=LOADTEST_DESCRIPTION)
    lt.add_argument("--scenario", required=True, metavar="NAME", help="single, batch, campaign, mo-storm, "
                                                                      "dlr-storm or mixed")
    lt.add_argument("--rate", type=float, help="messages per second (the peak for the mixed day profile)")
    lt.add_argument("--duration", type=float, help="seconds of sending (at most 3600)")
    lt.add_argument("--count", type=int, help="messages in all (rounded to whole requests)")
    lt.add_argument("--ramp", type=float, default=0.0, help="seconds to ramp up from nothing to --rate")
    lt.add_argument("--target", help="an existing gateway's URL; without it the whole stack is started on 127.0.0.1")
    lt.add_argument("--api-key", help="the target's API key (with --target)")
    lt.add_argument("--json", help="write every figure to this JSON file")
    lt.add_argument("--plots", help="write throughput.png and latency.png to this directory")
    lt.add_argument("--connections", type=int, default=64, help="keep-alive connections (default 64)")
    lt.add_argument("--drain-timeout", type=float, default=120.0,
                    help="seconds to wait for accepted messages to become final (default 120)")
    lt.add_argument("--database-url", help="self-contained mode: use this PostgreSQL instead of an embedded one")
    lt.add_argument("--service-number", default="10658888", help="where MO storms text to (default 10658888)")
    lt.add_argument("--modems", type=int, default=0,
                    help="self-contained mode: also start N emulated modems; the mixed scenario sends 1%% to them")
    lt.add_argument("--workers", type=int, default=1,
                    help="self-contained mode: the gateway's [http] workers, processes serving the API (default 1)")
    lt.add_argument("--keep-dir", action="store_true", help="keep the self-contained stack's directory and logs (kept anyway after a bad run)")
    lt.add_argument("--quiet", action="store_true", help="no progress bar")
    lt.set_defaults(func=cmd_loadtest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smsgw", description="Asynchronous SMS gateway on Trio.")
    p.add_argument("--version", action="version", version=f"smsgw {__version__}")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="everything on embedded defaults, for a first look")
    d.add_argument("--data-dir", default="./.smsgw", help="embedded PostgreSQL and demo state (default ./.smsgw)")
    d.add_argument("--http", default="127.0.0.1:8080", help="HTTP API HOST:PORT (default 127.0.0.1:8080)")
    d.add_argument("--admin-ws", default="127.0.0.1:8081", help="admin websocket HOST:PORT (default 127.0.0.1:8081)")
    d.add_argument("--ismg", default="127.0.0.1:7890", help="ISMG simulator HOST:PORT (default 127.0.0.1:7890)")
    d.add_argument("--ready-file", help="write a JSON object describing the running demo here when ready")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="production mode, from a TOML configuration")
    r.add_argument("--config", required=True, help="the TOML configuration file")
    r.set_defaults(func=cmd_run)

    sim = sub.add_parser("sim", help="the simulators the gateway is tested against")
    simsub = sim.add_subparsers(dest="sim_command", required=True, metavar="SIMULATOR")
    si = simsub.add_parser("ismg", help="an operator ISMG speaking CMPP, server side")
    si.add_argument("--listen", default="127.0.0.1:7890", help="HOST:PORT (default 127.0.0.1:7890)")
    si.add_argument("--version", choices=["2.0", "3.0"], default="3.0", help="CMPP version (default 3.0)")
    si.add_argument("--sp-id", required=True, help="the SP id (Source_Addr) it accepts")
    si.add_argument("--secret", required=True, help="the shared secret of that SP")
    si.add_argument("--dlr-delay-ms", type=float, default=0.0, help="delay before each status report")
    si.add_argument("--fail-rate", type=float, default=0.0, help="share of SUBMITs answered with an error (0-1)")
    si.add_argument("--max-rate", type=float, default=None,
                    help="SUBMITs per second per connection; over it the answer is Result 8 (flow control)")
    si.set_defaults(func=cmd_sim_ismg)
    sm = simsub.add_parser("modems", help="emulated GSM modems on pseudo-terminals")
    sm.add_argument("--count", type=int, required=True, help="how many modems")
    sm.add_argument("--network-listen", metavar="HOST:PORT",
                    help="serve the simulated handset network on HOST:PORT (JSON lines; host defaults to "
                         "127.0.0.1, port 0 picks a free one) so other processes can text the modems, "
                         "read handsets' inboxes and get counts")
    sm.add_argument("--send-delay", type=float, default=0.0, metavar="SECONDS",
                    help="network time of each send, between the PDU and +CMGS (default 0; real SIMs: 2-6)")
    sm.set_defaults(func=cmd_sim_modems)

    m = sub.add_parser("migrate", help="apply database schema migrations")
    m.add_argument("--config", help="the TOML configuration file (default: embedded database in --data-dir)")
    m.add_argument("--data-dir", help="data directory when no --config is given (default ./.smsgw)")
    m.set_defaults(func=cmd_migrate)

    k = sub.add_parser("apikey", help="manage API keys")
    ksub = k.add_subparsers(dest="apikey_command", required=True, metavar="ACTION")
    kc = ksub.add_parser("create", help="create an API key for an account (printed once, stored hashed)")
    kc.add_argument("--account", required=True, help="account name (created if missing)")
    kc.add_argument("--config", help="the TOML configuration file (default: embedded database in --data-dir)")
    kc.add_argument("--data-dir", help="data directory when no --config is given (default ./.smsgw)")
    kc.set_defaults(func=cmd_apikey_create)
    _add_loadtest_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        args.func(args)
    except GatewayError as exc:
        print(f"smsgw: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        # Errors from inside trio.run come wrapped by the nurseries they crossed.
        expected, unexpected = group.split((GatewayError, KeyboardInterrupt))
        if unexpected is not None or expected is None:
            raise
        errors = list(_leaves(expected))
        for exc in errors:
            if isinstance(exc, GatewayError):
                print(f"smsgw: {exc}", file=sys.stderr)
        return 2 if any(isinstance(e, GatewayError) for e in errors) else 130
    return 0


def _leaves(group: BaseExceptionGroup):
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


if __name__ == "__main__":
    sys.exit(main())
