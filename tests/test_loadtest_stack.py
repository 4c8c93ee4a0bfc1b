"""Short bounded load test runs against the real stack: gateway and simulators in processes of
their own, on the test PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from loadtest.procstat import alive, cmdline, descendants
from loadtest.report import summary, write_plots
from loadtest.runner import HOLD_MARGIN, Options, run_scenario
from loadtest.stack import StackOptions, open_stack

from tests.channels import ScriptedChannel
from tests.conftest import start_gateway

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SPEC_KEYS = {"scenario", "accepted", "final", "delivered", "lost", "duplicates", "throughput_per_s", "latency_ms"}


def _assert_clean(report: dict, *, expect_mo: bool = False) -> None:
    assert report["accepted"] > 0
    assert report["accepted"] == report["final"], report["verdict"]
    assert report["lost"] == 0 and report["duplicates"] == 0, report["verdict"]
    assert all(c["ok"] for c in report["checks"]), report["checks"]
    assert report["errors"] == {}
    assert report["verdict"] == "no loss, no duplicates" and report["clean"] is True
    assert report["persisted_sample"]["checked"] == report["persisted_sample"]["final"]
    if expect_mo:
        assert report["gateway"]["mo_received"] > 0


async def test_every_scenario_runs_clean_on_the_self_contained_stack(database_url, tmp_path):
    quiet = {"progress": False, "drain_timeout": 30.0, "connections": 16}
    with trio.fail_after(150):
        async with open_stack(StackOptions(database_url=database_url, modems=2)) as stack:
            assert stack.modems == 2
            single = await run_scenario(Options("single", rate=100, duration=1.0, **quiet), stack=stack)
            _assert_clean(single)
            assert single["accepted"] == 100 and single["delivered"] == 100
            assert single["simulator"]["accepted"] == 100 and single["simulator"]["duplicates"] == 0
            assert single["latency_ms"]["p50"] <= single["latency_ms"]["p99"] <= single["latency_ms"]["max"]
            assert single["cpu_seconds"]["gateway"] > 0

            batch = await run_scenario(Options("batch", rate=1000, duration=1.0, **quiet), stack=stack)
            _assert_clean(batch)
            assert batch["requests"] == 10 and batch["accepted"] == 1000

            campaign = await run_scenario(Options("campaign", count=2000, **quiet), stack=stack)
            _assert_clean(campaign)
            assert campaign["requests"] == 2 and campaign["accepted"] == 2000

            mo = await run_scenario(Options("mo-storm", rate=100, duration=1.0, **quiet), stack=stack)
            _assert_clean(mo, expect_mo=True)
            assert mo["gateway"]["mo_received"] == mo["accepted"] == 100

            storm = await run_scenario(Options("dlr-storm", rate=1000, duration=1.0, **quiet), stack=stack)
            _assert_clean(storm)
            # Held back until the sending was over (1 s, plus HOLD_MARGIN): no report came earlier,
            # however late the last submits were (on a busy machine the dispatcher lags the accepts).
            gw = storm["gateway_timeline"]
            first_final = min(r["t"] for r in gw if r["final_per_s"] > 0)
            assert first_final >= 1.0 + HOLD_MARGIN - 0.5
            assert storm["simulator"]["reports_acked"] == storm["delivered"] == 1000

            mixed = await run_scenario(Options("mixed", rate=100, duration=4.0, **quiet), stack=stack)
            _assert_clean(mixed, expect_mo=True)
            assert set(mixed["latency_ms_by_kind"]) == {"mt", "mo"}
            # One call in a hundred went to a China Unicom number, through an emulated modem.
            handsets = mixed["modem_handsets"]
            assert handsets["sent"] >= 1 and handsets["received"] == handsets["sent"] and handsets["duplicates"] == 0
            assert mixed["gateway"]["by_channel"]["delivered/modems"] == handsets["sent"]
            # Delivery latency per channel kind, from the sampled messages' histories.
            by_route = mixed["delivery_by_route"]
            assert by_route["modem"]["accepted"] == handsets["sent"] == by_route["modem"]["sampled"]
            assert by_route["modem"]["channels"] == {"modems": handsets["sent"]}
            assert by_route["cmpp"]["sampled"] > 0 and by_route["cmpp"]["not_delivered"] == 0
            for route in by_route.values():
                sub, dlv = route["accept_to_submitted_ms"], route["accept_to_delivered_ms"]
                assert dlv["count"] == route["sampled"] and route["unreadable"] == 0
                assert 0 <= sub["p50"] <= dlv["p50"] and sub["p99"] <= sub["max"] and dlv["p99"] <= dlv["max"]
            assert 0 < mixed["delivered_throughput_per_s"] <= mixed["throughput_per_s"] * 2

            # The same gateway as a target: no simulator of the run's own, so duplicates go uncounted.
            target = await run_scenario(Options("single", rate=50, duration=1.0, target=stack.http,
                                                api_key=stack.api_key, **quiet), stack=None)
            assert target["mode"] == "target" and target["lost"] == 0 and target["duplicates"] is None
            assert target["accepted"] == target["final"] == 50
            # A bad run keeps the stack's directory (logs, database) as evidence.
            stack.keep = True
    assert (stack.directory / "gateway.log").exists() and (stack.directory / "smsgw.toml").exists()
    shutil.rmtree(stack.directory)

    paths = write_plots(mixed, tmp_path / "plots")
    assert [p.name for p in paths] == ["throughput.png", "latency.png"]
    for p in paths:
        assert p.read_bytes().startswith(PNG_SIGNATURE) and p.stat().st_size > 10_000
    assert "no loss, no duplicates" in summary(mixed)


async def test_lost_messages_are_reported(nursery, database_url):
    # A channel that takes messages and never reports on them: nothing becomes final.
    channel = ScriptedChannel("cmcc-test")
    gw = await start_gateway(nursery, database_url, channels=[channel])
    report = await run_scenario(Options("single", rate=20, duration=1.0, target=gw.url, api_key=gw.key,
                                        progress=False, drain_timeout=1.0), stack=None)
    assert report["accepted"] == 20 and report["final"] == 0
    assert report["lost"] == 20 and report["drained"] is False
    assert report["verdict"].startswith("LOST 20 of 20 acknowledged messages") and report["clean"] is False
    assert report["persisted_sample"]["final"] == 0


def _smsgw(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "gateway.cli", "--log-level", "WARNING", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_writes_the_json_and_the_plots(database_url, tmp_path):
    out = tmp_path / "report.json"
    plots = tmp_path / "plots"
    done = _smsgw("loadtest", "--scenario", "batch", "--rate", "500", "--duration", "1", "--json", str(out),
                  "--plots", str(plots), "--database-url", database_url, "--quiet")
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert SPEC_KEYS <= set(report)
    assert set(report["latency_ms"]) >= {"p50", "p90", "p99", "max"}
    assert report["scenario"] == "batch" and report["accepted"] == report["final"] == 500
    assert report["lost"] == 0 and report["duplicates"] == 0 and report["throughput_per_s"] > 0
    assert report["kept_dir"] is None and report["gateway_log_warnings"] == 0
    assert "verdict" in done.stdout and "no loss, no duplicates" in done.stdout
    for name in ("throughput.png", "latency.png"):
        assert (plots / name).read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("args, message", [
    (["--scenario", "nope"], "unknown scenario 'nope'"),
    (["--scenario", "single", "--target", "http://127.0.0.1:1"], "--target and --api-key go together"),
    (["--scenario", "single", "--rate", "-5"], "--rate must be a positive number"),
    (["--scenario", "single", "--target", "127.0.0.1:8080", "--api-key", "k"], "expected an http://HOST:PORT URL"),
])
def test_cli_refuses_bad_options_before_starting_anything(args, message):
    done = _smsgw("loadtest", *args, "--quiet", timeout=30)
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_loadtest_stops_the_processes_it_started(database_url, signum):
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "--log-level", "WARNING", "loadtest",
                             "--scenario", "single", "--rate", "20", "--duration", "60", "--quiet",
                             "--database-url", database_url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        started: set[int] = set()
        while time.monotonic() < deadline and len(started) < 2:  # the simulators and the gateway
            started = {p for p in descendants(proc.pid)
                       if b"gateway.cli" in cmdline(p) or b"loadtest.simproc" in cmdline(p)}
            time.sleep(0.2)
        assert len(started) >= 2, proc.stderr.read() if proc.poll() is not None else "not started"
        time.sleep(2)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert not [p for p in started if alive(p)], "processes left running"
