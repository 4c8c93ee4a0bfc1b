"""Benchmark of the accept path: ``POST /v1/messages`` into a durable store.

Starts ``smsgw run`` on an embedded PostgreSQL in a temporary directory, creates an API key,
then measures with wrk (closed loop, peak throughput) and hey (rate-limited, latency):

1. single-recipient requests from 64 keep-alive connections;
2. requests of 100 recipients from 16 connections;
3. single-recipient requests at half the rate of (1), for the latency percentiles;

and reads the server's peak resident memory (VmHWM). Every request goes to 127.0.0.1 and
each run is bounded in time. Needs Debian's ``wrk`` and ``hey``.

    python -m loadtest.accept_bench [--duration 15] [--workers N]

``--workers N`` sets the gateway's ``[http] workers``; the CPU figures then cover the main
process and its workers together.
"""

from __future__ import annotations

import argparse
import json
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

from loadtest.procstat import cpu_seconds, descendants

HERE = Path(__file__).parent
SMSGW = [sys.executable, "-m", "gateway.cli", "--log-level", "WARNING"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postmaster(data: Path) -> int | None:
    pid_file = next(data.rglob("postmaster.pid"), None)
    return int(pid_file.read_text().split()[0]) if pid_file is not None else None


class CpuMeter:
    """CPU seconds used by the gateway (its process and its children), PostgreSQL
    (the postmaster and its backends) and the load generator between :meth:`start` and
    :meth:`stop`. Backends that exit in between are not counted (connections are pooled)."""

    def __init__(self, server: int, data: Path) -> None:
        self._server = server
        self._data = data

    def _sample(self) -> dict[int, float]:
        pm = _postmaster(self._data)
        gateway = [p for p in [self._server, *descendants(self._server)] if p != pm]
        postgres = [pm, *descendants(pm)] if pm is not None else []
        return {"gateway": {p: cpu_seconds(p) for p in gateway}, "postgres": {p: cpu_seconds(p) for p in postgres}}

    def start(self) -> None:
        self._before = self._sample()

    def stop(self) -> dict[str, float]:
        after = self._sample()
        return {name: round(sum(v - self._before[name].get(p, 0.0) for p, v in after[name].items()), 3)
                for name in after}


def _wrk(url: str, script: str, key: str, connections: int, duration: int,
         meter: CpuMeter | None = None) -> dict[str, float]:
    if meter is not None:
        meter.start()
    proc = subprocess.Popen(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(HERE / "wrk" / script), url,
         "--", key],
        stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, out)
    cpu = meter.stop() if meter is not None else {}
    cpu["wrk"] = round(usage.ru_utime + usage.ru_stime, 3)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for p in ("50", "90", "99"):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        v = float(m.group(1))
        lat[f"p{p}_ms"] = v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, **lat, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1) if errors else "",
            "cpu_s": cpu, "cpu_us_per_request": {k: round(v / requests * 1e6, 1) for k, v in cpu.items()}}


def _hey(url: str, key: str, rate: float, connections: int, duration: int) -> dict[str, float]:
    per_worker = max(1.0, rate / connections)
    out = subprocess.run(
        ["hey", "-z", f"{duration}s", "-c", str(connections), "-q", f"{per_worker:.2f}", "-m", "POST",
         "-H", f"Authorization: Bearer {key}", "-T", "application/json",
         "-d", '{"to":"13900000000","text":"Your code is 123456"}', f"{url}/v1/messages"],
        capture_output=True, text=True, check=True).stdout
    res = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for p in ("50", "90", "99"):
        res[f"p{p}_ms"] = float(re.search(rf"{p}%% in ([\d.]+) secs".replace("%%", "%"), out).group(1)) * 1000
    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    res["non_202"] = sum(int(n) for c, n in codes.items() if c != "202")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=15, help="seconds per run (default 15)")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--only", choices=("single", "batch"), help="run only this wrk measurement (no hey)")
    ap.add_argument("--workers", type=int, default=1, help="the gateway's [http] workers (default 1)")
    args = ap.parse_args()
    for tool in ("wrk", "hey"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed: apt-get install {tool}")
    tmp = Path(tempfile.mkdtemp(prefix="smsgw-bench-"))
    data = tmp / "data"
    port = _free_port()
    cfg = tmp / "smsgw.toml"
    cfg.write_text(f'data_dir = "{data}"\n[http]\nlisten = "127.0.0.1:{port}"\nworkers = {args.workers}\n')
    url = f"http://127.0.0.1:{port}"
    key = subprocess.run(SMSGW + ["apikey", "create", "--account", "bench", "--config", str(cfg)],
                         capture_output=True, text=True, check=True).stdout.strip()
    server = subprocess.Popen(SMSGW + ["run", "--config", str(cfg)])
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        for _ in range(300 if args.workers > 1 else 0):  # the main process answers before its workers are up
            text = httpx.get(url + "/metrics", timeout=5).text
            if re.search(rf"^smsgw_http_workers_up {args.workers - 1}\.0$", text, re.M):
                break
            time.sleep(0.1)
        meter = CpuMeter(server.pid, data)
        _wrk(url, "send_single.lua", key, 16, 3)  # warm-up
        single = batch = half = None
        if args.only in (None, "single"):
            single = _wrk(url, "send_single.lua", key, 64, args.duration, meter)
        if args.only in (None, "batch"):
            batch = _wrk(url, "send_batch.lua", key, 16, args.duration, meter)
        if args.only is None:
            half = _hey(url, key, single["rps"] / 2, 50, args.duration)
        status = Path(f"/proc/{server.pid}/status").read_text()
        peak_rss_mb = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
        stored = None
        with httpx.Client(base_url=url) as c:
            m = re.search(r"^smsgw_messages_accepted_total ([\d.e+]+)$", c.get("/metrics").text, re.M)
            stored = float(m.group(1)) if m else None
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
    figures = {
        "single_recipient_64c": single,
        "batch_100_recipients_16c": {**batch, "recipients_per_s": batch["rps"] * 100} if batch else None,
        "single_at_half_rate_50c": half,
        "server_peak_rss_mb": round(peak_rss_mb, 1),
        "messages_accepted_total": stored,
        "cpus": os.cpu_count(),
        "workers": args.workers,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
