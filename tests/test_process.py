"""The real ``smsgw`` command in subprocesses: demo restart, and crash durability.

These start the embedded PostgreSQL in a temporary data directory, as a user would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

SMSGW = [sys.executable, "-m", "gateway.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_ready_file(path: Path, proc: subprocess.Popen, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if proc.poll() is not None:
            raise AssertionError(f"smsgw exited early with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)
    raise AssertionError("not ready in time")


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"smsgw exited early with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            httpx.get(url + "/healthz", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("HTTP API not up in time")


def wait_for_status(url: str, auth: dict, mid: str, status: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(f"{url}/v1/messages/{mid}", headers=auth).json()
        if body["status"] == status:
            return body
        time.sleep(0.1)
    raise AssertionError(f"message {mid} is {body['status']}, not {status}")


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=timeout)


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    yield d
    pid = postmaster_pid(d)
    if pid and alive(pid):  # never leave a server behind, whatever the test did
        os.kill(pid, signal.SIGKILL)


def test_demo_serves_survives_restart_and_stops_cleanly(tmp_path, data_dir):
    ready = tmp_path / "ready.json"
    port = free_port()
    cmd = SMSGW + ["demo", "--data-dir", str(data_dir), "--http", f"127.0.0.1:{port}", "--ismg", "127.0.0.1:0",
                   "--admin-ws", "127.0.0.1:0", "--ready-file", str(ready)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        info = wait_ready_file(ready, proc)
        assert info["http"] == f"http://127.0.0.1:{port}" and info["account"] == "demo"
        assert info["api_key"].startswith("smsgw_") and len(info["webhook_secret"]) == 64
        auth = {"Authorization": f"Bearer {info['api_key']}"}
        assert re.fullmatch(r"127\.0\.0\.1:\d+", info["ismg"])
        r = httpx.post(info["http"] + "/v1/messages", json={"to": "13800138000", "text": "你好"}, headers=auth)
        assert r.status_code == 202
        mid = r.json()["messages"][0]["id"]
        wait_for_status(info["http"], auth, mid, "delivered")
        assert httpx.get(info["http"] + "/healthz").status_code == 200
    finally:
        rc = stop(proc)
    out = proc.stdout.read().decode()
    assert rc == 0 and info["api_key"] in out and "curl" in out
    assert postmaster_pid(data_dir) is None or not alive(postmaster_pid(data_dir)), "embedded PostgreSQL left running"

    ready.unlink()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        info2 = wait_ready_file(ready, proc)
        assert info2["api_key"] == info["api_key"], "the demo key survives a restart"
        r = httpx.get(f"{info2['http']}/v1/messages/{mid}", headers=auth)
        assert r.status_code == 200 and r.json()["text"] == "你好"
    finally:
        assert stop(proc, signal.SIGINT) == 0


def test_every_accepted_message_survives_sigkill(tmp_path, data_dir):
    """Durable before acknowledged: kill the gateway and its database mid-burst, restart, count."""
    port = free_port()
    config = tmp_path / "smsgw.toml"
    config.write_text(f'data_dir = "{data_dir}"\n[http]\nlisten = "127.0.0.1:{port}"\n')
    key = subprocess.run(SMSGW + ["apikey", "create", "--account", "crash", "--config", str(config)],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert key.startswith("smsgw_")
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(SMSGW + ["run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    accepted: list[str] = []
    try:
        wait_http(url, proc)

        async def burst() -> None:
            async def client(i: int) -> None:
                async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
                    for j in range(10_000):
                        try:
                            r = await c.post("/v1/messages", json={"to": f"139{i:04d}{j:04d}", "text": f"m{i}-{j}"})
                        except httpx.TransportError:
                            return  # the server is gone: whatever was not answered was not accepted
                        if r.status_code == 202:
                            accepted.extend(m["id"] for m in r.json()["messages"])

            async with trio.open_nursery() as n:
                for i in range(32):
                    n.start_soon(client, i)

                async def killer() -> None:
                    while len(accepted) < 1500:
                        await trio.sleep(0.01)
                    # Kill both, mid-flight: the gateway and its database.
                    pg = postmaster_pid(data_dir)
                    proc.kill()
                    if pg:
                        os.kill(pg, signal.SIGKILL)

                n.start_soon(killer)

        trio.run(burst)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(accepted) >= 1500

    pg = postmaster_pid(data_dir)
    deadline = time.monotonic() + 10
    while pg and alive(pg) and time.monotonic() < deadline:  # a killed postmaster's children exit too
        time.sleep(0.1)
    proc = subprocess.Popen(SMSGW + ["run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_http(url, proc)
        r = httpx.get(url + "/metrics")
        assert r.status_code == 200
        missing = []
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
            for mid in accepted:
                if c.get(f"/v1/messages/{mid}").status_code != 200:
                    missing.append(mid)
        assert missing == [], f"{len(missing)} of {len(accepted)} accepted messages lost"
    finally:
        assert stop(proc) == 0


def test_migrate_and_apikey_create_on_a_data_dir(tmp_path, data_dir):
    out = subprocess.run(SMSGW + ["migrate", "--data-dir", str(data_dir)], capture_output=True, text=True)
    assert out.returncode == 0 and "schema up to date" in out.stdout
    out = subprocess.run(SMSGW + ["migrate", "--data-dir", str(data_dir)], capture_output=True, text=True)
    assert out.returncode == 0, "migrations are safe to run twice"
    keys = {subprocess.run(SMSGW + ["apikey", "create", "--account", "shop", "--data-dir", str(data_dir)],
                           capture_output=True, text=True, check=True).stdout.strip() for _ in range(2)}
    assert len(keys) == 2 and all(k.startswith("smsgw_") for k in keys)
    assert postmaster_pid(data_dir) is None or not alive(postmaster_pid(data_dir))


def test_bad_configuration_fails_naming_the_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[http]\nlisen = "127.0.0.1:1"\n')
    out = subprocess.run(SMSGW + ["run", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "lisen" in out.stderr and "bad.toml" in out.stderr
    assert "Traceback" not in out.stderr


def test_run_with_a_cmpp_table_against_the_simulator_process(tmp_path, data_dir):
    ismg_port, http_port = free_port(), free_port()
    sim = subprocess.Popen(SMSGW + ["sim", "ismg", "--listen", f"127.0.0.1:{ismg_port}", "--version", "2.0",
                                    "--sp-id", "123456", "--secret", "pw", "--dlr-delay-ms", "50"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    config = tmp_path / "smsgw.toml"
    config.write_text(
        f'data_dir = "{data_dir}"\n[http]\nlisten = "127.0.0.1:{http_port}"\n'
        f'[[cmpp]]\nname = "cmcc-1"\nport = {ismg_port}\nversion = "2.0"\nsp_id = "123456"\nsecret = "pw"\n'
        f'service_number = "10658888"\noperators = ["cmcc"]\n')
    key = subprocess.run(SMSGW + ["apikey", "create", "--account", "shop", "--config", str(config)],
                         capture_output=True, text=True, check=True).stdout.strip()
    gw = subprocess.Popen(SMSGW + ["run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{http_port}"
    auth = {"Authorization": f"Bearer {key}"}
    try:
        wait_http(url, gw)
        r = httpx.post(url + "/v1/messages", json={"to": "+8613800138000", "text": "订单已发货" * 20}, headers=auth)
        assert r.status_code == 202
        body = wait_for_status(url, auth, r.json()["messages"][0]["id"], "delivered")
        assert body["channel"] == "cmcc-1" and body["parts"] == 2
    finally:
        assert stop(gw) == 0
        assert stop(sim) == 0
    assert b"listening on 127.0.0.1:" in sim.stdout.read()


def test_start_up_failures_are_one_clear_line(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n[database]\nurl = "postgresql://nobody@127.0.0.1:1/none"\n'
                      'connect_timeout = 2\n')
    expected = "database unreachable"
    out = subprocess.run(SMSGW + ["run", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert expected in out.stderr and "Traceback" not in out.stderr


def test_sim_modems_prints_a_pty_and_number_per_modem():
    proc = subprocess.Popen(SMSGW + ["sim", "modems", "--count", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        lines = [proc.stdout.readline().split() for _ in range(2)]
        assert all(len(parts) == 2 and parts[0].startswith("/dev/pts/") and re.fullmatch(r"1\d{10}", parts[1])
                   for parts in lines), lines
        # The pty answers AT like a modem: AT+CNUM gives the SIM's number.
        import serial

        with serial.Serial(lines[0][0], timeout=2) as port:
            port.write(b"ATE0\r")
            time.sleep(0.3)
            port.reset_input_buffer()
            port.write(b"AT+CNUM\r")
            answer = port.read_until(b"OK\r\n").decode()
        assert lines[0][1] in answer and "OK" in answer
    finally:
        assert stop(proc) == 0
