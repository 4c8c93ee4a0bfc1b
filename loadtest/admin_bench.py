"""Benchmark of the admin stream: gateway throughput with and without 50 viewers and a stalled
one, and the latency from a status change to a viewer.

Starts ``smsgw sim ismg`` and ``smsgw run`` (one CMPP link to the simulator, an admin token) on
a fresh embedded PostgreSQL in a temporary directory, all on 127.0.0.1. Then alternates
phases of ``--duration`` seconds, ``--rounds`` times each: wrk posting single-recipient
messages from 32 keep-alive connections with nobody watching, then the same with
``--viewers`` websocket viewers and one stalled viewer (a socket that completes the handshake
and never reads) connected from a separate process; first at saturation (wrk), then at a
fixed offered load (``--rate``, hey). For each phase it reports accepted requests a second,
messages delivered a second (``smsgw_messages_total``) and the gateway's CPU time; the
viewers report how many frames they got, how many events they were told they missed, and the
latency from each ``mt`` event's time (set when the status change is committed) to its
arrival. Needs Debian's ``wrk`` and ``hey``.

    python -m loadtest.admin_bench [--duration 8] [--rounds 2] [--viewers 50]
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

from loadtest.procstat import cpu_seconds

HERE = Path(__file__).parent
SMSGW = [sys.executable, "-m", "gateway.cli", "--log-level", "WARNING"]
SP_ID, SECRET = "901234", "bench"
TOKEN = "admin-bench-token-0123456789"
CONNECT_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


# --- the viewers (a child process, so that their work is not the gateway's) ---------------------


def _stalled_viewer(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Authorization: Bearer {TOKEN}\r\n\r\n").encode())
    return sock  # never read again


async def _viewers(url: str, count: int, seconds: float) -> dict:
    from trio_websocket import ConnectionClosed, open_websocket_url

    latencies: list[float] = []
    totals = {"frames": 0, "dropped": 0, "viewers": 0, "cut_off": 0}

    async def viewer() -> None:
        async with open_websocket_url(url, extra_headers=[(b"Authorization", f"Bearer {TOKEN}".encode())]) as ws:
            totals["viewers"] += 1
            while True:
                try:
                    message = await ws.get_message()
                except ConnectionClosed:  # cut off: this process got too little CPU to keep up
                    totals["cut_off"] += 1
                    return
                frame = json.loads(message)
                arrived = time.time()
                totals["frames"] += 1
                totals["dropped"] += frame.get("dropped", 0)
                if frame["type"] == "mt":
                    latencies.append(arrived - frame["at"])

    port = int(url.rsplit(":", 1)[1].strip("/"))
    stalled = _stalled_viewer(port)
    try:
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(viewer)
    finally:
        stalled.close()
    return {**totals, "mt_frames": len(latencies),
            "latency_ms": {"p50": round(_percentile(latencies, 50) * 1000, 1),
                           "p99": round(_percentile(latencies, 99) * 1000, 1),
                           "max": round(max(latencies, default=math.nan) * 1000, 1)}}


def _viewers_child(args: argparse.Namespace) -> None:
    result = trio.run(_viewers, args.url, args.viewers, args.seconds)
    result["cpu_s"] = round(time.process_time(), 2)
    Path(args.out).write_text(json.dumps(result))


# --- the phases ------------------------------------------------------------------------------------


def _delivered(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r'^smsgw_messages_total\{[^}]*status="delivered"[^}]*\} (\S+)$', text, re.M))


def _wrk(url: str, key: str, duration: float) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{int(duration)}s", "--latency", "-s", str(HERE / "wrk" / "send_single.lua"), url,
         "--", key], capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"accepted_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def _hey(url: str, key: str, duration: float, rate: float) -> dict[str, float]:
    """Open loop at ``rate`` requests a second (10 workers)."""
    out = subprocess.run(
        ["hey", "-z", f"{int(duration)}s", "-c", "10", "-q", f"{rate / 10:.2f}", "-m", "POST",
         "-H", f"Authorization: Bearer {key}", "-T", "application/json",
         "-d", '{"to":"13900000000","text":"Your code is 123456"}', f"{url}/v1/messages"],
        capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    return {"accepted_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p99_ms": float(re.search(r"99% in ([\d.]+) secs", out).group(1)) * 1000,
            "non_2xx": sum(int(n) for c, n in codes.items() if c != "202")}


def _phase(url: str, key: str, duration: float, viewers: int, admin_ws: str, tmp: Path, server: int,
           rate: float = 0.0) -> dict:
    child = None
    out = tmp / f"viewers-{time.monotonic_ns()}.json"
    if viewers:
        # The viewers stand for browsers on other machines: their process only takes what CPU
        # the gateway, its database and the load generator leave (nice 19).
        child = subprocess.Popen(["nice", "-n", "19", sys.executable, "-m", "loadtest.admin_bench", "--viewers-child",
                                  "--url", admin_ws,
                                  "--viewers", str(viewers), "--seconds", str(duration + 4), "--out", str(out)])
        with httpx.Client(base_url=url) as c:  # wait until they are all connected
            deadline = time.monotonic() + CONNECT_TIMEOUT
            while f"smsgw_admin_viewers {float(viewers + 1)}" not in c.get("/metrics").text:
                if time.monotonic() > deadline:
                    raise SystemExit("the viewers did not connect")
                time.sleep(0.2)
    before, started, cpu = _delivered(url), time.monotonic(), cpu_seconds(server)
    figures = _hey(url, key, duration, rate) if rate else _wrk(url, key, duration)
    elapsed = time.monotonic() - started
    figures["delivered_per_s"] = round((_delivered(url) - before) / elapsed, 1)
    figures["gateway_cpu_pct"] = round((cpu_seconds(server) - cpu) / elapsed * 100, 1)
    figures["gateway_cpu_ms_per_accepted"] = round(
        (cpu_seconds(server) - cpu) * 1000 / max(1.0, figures["accepted_per_s"] * duration), 3)
    if child is not None:
        child.wait(timeout=duration + 60)
        figures["viewers"] = json.loads(out.read_text())
        text = httpx.get(url + "/metrics").text
        figures["stalled_cut_off"] = 'smsgw_admin_disconnects_total{reason="stalled"}' in text
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per phase (default 8)")
    ap.add_argument("--rounds", type=int, default=2, help="phases of each kind, alternating (default 2)")
    ap.add_argument("--viewers", type=int, default=50)
    ap.add_argument("--rate", type=float, default=200.0, help="offered load of the fixed-load phases (default 200/s)")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--viewers-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.viewers_child:
        _viewers_child(args)
        return
    for tool in ("wrk", "hey"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed: apt-get install {tool}")
    tmp = Path(tempfile.mkdtemp(prefix="smsgw-admin-bench-"))
    ismg, http, admin = _free_port(), _free_port(), _free_port()
    cfg = tmp / "smsgw.toml"
    cfg.write_text(f'''data_dir = "{tmp / 'data'}"
[http]
listen = "127.0.0.1:{http}"
[admin]
listen = "127.0.0.1:{admin}"
token = "{TOKEN}"
stall_timeout = 5.0
[dispatcher]
quiet_hours = ""
[[cmpp]]
name = "cmcc-bench"
port = {ismg}
sp_id = "{SP_ID}"
secret = "{SECRET}"
service_number = "10658888"
window = 64
rate = 20000
''')
    url, admin_ws = f"http://127.0.0.1:{http}", f"ws://127.0.0.1:{admin}/"
    sim = subprocess.Popen(SMSGW + ["sim", "ismg", "--listen", f"127.0.0.1:{ismg}", "--sp-id", SP_ID, "--secret",
                                    SECRET, "--dlr-delay-ms", "100"], stdout=subprocess.PIPE)
    sim.stdout.readline()
    key = subprocess.run(SMSGW + ["apikey", "create", "--account", "bench", "--config", str(cfg)],
                         capture_output=True, text=True, check=True).stdout.strip()
    server = subprocess.Popen(SMSGW + ["run", "--config", str(cfg)])
    phases: list[dict] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the gateway did not become healthy")
            time.sleep(0.2)
        _wrk(url, key, 3)  # warm-up
        for rate in (0.0, args.rate):
            for _ in range(args.rounds):
                for viewers in (0, args.viewers):
                    phase = {"load": f"{rate:g}/s" if rate else "saturated", "viewers": viewers,
                             **_phase(url, key, args.duration, viewers, admin_ws, tmp, server.pid, rate)}
                    print(json.dumps(phase), flush=True)
                    phases.append(phase)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)

    def mean(key: str, watched: bool, load: str) -> float:
        values = [p[key] for p in phases if bool(p["viewers"]) == watched and (p["load"] == "saturated") == (load == "saturated")]
        return round(sum(values) / len(values), 3)

    summary: dict = {"phases": phases, "cpus": os.cpu_count()}
    for load, keys in (("saturated", ("accepted_per_s", "delivered_per_s", "gateway_cpu_ms_per_accepted")),
                       ("fixed", ("accepted_per_s", "gateway_cpu_pct", "gateway_cpu_ms_per_accepted", "p99_ms"))):
        for k in keys:
            base, watched = mean(k, False, load), mean(k, True, load)
            summary[f"{load}.{k}"] = {"no_viewers": base, "with_viewers": watched,
                                      "change_pct": round((watched - base) / base * 100, 1) if base else None}
    print(json.dumps({k: v for k, v in summary.items() if k != "phases"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
