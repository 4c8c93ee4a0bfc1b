"""``[http] workers``: the accept path in several processes on one port (gateway/workers.py).

Real worker processes (``python -m gateway.worker``), real PostgreSQL, real sockets. The
in-process tests start the main process with :func:`~gateway.app.serve_gateway` (so that the
scripted channel of the test sends what the dispatcher claims); the life-cycle tests run
``smsgw run`` as a process of its own.
"""

from __future__ import annotations

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

from gateway.config import AccountConfig, AdminConfig, HttpConfig
from gateway.metrics_merge import merge_expositions
from gateway.worker import served_here
from loadtest.procstat import alive, children, cmdline

from tests.channels import ScriptedChannel
from tests.conftest import start_gateway

WORKER_MODULE = b"gateway.worker"


def _children(parent: int) -> list[int]:
    """Live worker processes whose parent is ``parent``."""
    return sorted(p for p in children(parent) if WORKER_MODULE in cmdline(p))


def _sample(text: str, name: str, **labels: str) -> float:
    """One sample's value in a Prometheus exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if m and m[1] == name and ",".join(sorted((m[2] or "").split(","))) == want:
            return float(m[3])
    return 0.0


async def _post_each_on_a_new_connection(url: str, key: str, count: int) -> list[httpx.Response]:
    """``count`` sends, each on a connection of its own, 16 at a time: the kernel spreads new
    connections over the processes."""
    answers: list[httpx.Response] = []
    limiter = trio.CapacityLimiter(16)
    async with _fresh_connections(url) as client:
        async def one(i: int) -> None:
            async with limiter:
                answers.append(await client.post(
                    "/v1/messages", headers={"Authorization": f"Bearer {key}"},
                    json={"to": f"1390000{i:04d}", "text": f"code {i}", "client_ref": f"ref-{i}"}))

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
    return answers


def _fresh_connections(url: str) -> httpx.AsyncClient:
    """A client that opens a new connection for every request (none is kept alive)."""
    return httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


async def test_two_processes_accept_every_message_once_and_send_it(nursery, database_url):
    channel = ScriptedChannel(room=10_000)
    gw = await start_gateway(nursery, database_url, channels=[channel],
                             http=HttpConfig(listen="127.0.0.1:0", workers=2))
    workers = _children(os.getpid())
    assert len(workers) == 1, workers

    answers = await _post_each_on_a_new_connection(gw.url, gw.key, 120)
    assert [a.status_code for a in answers] == [202] * 120, [a.text for a in answers if a.status_code != 202][:3]
    ids = {a.json()["messages"][0]["id"] for a in answers}
    assert len(ids) == 120

    # Every message stored once, and sent: claimed by the main's dispatcher, woken by NOTIFY.
    with trio.fail_after(20):
        while await gw.store.fetchval("SELECT count(*) FROM messages WHERE status = 'submitted'") < 120:
            await trio.sleep(0.05)
    assert sorted(str(m.id) for m in channel.submitted) == sorted(ids)
    rows = await gw.store.fetch("SELECT status, count(*) AS n FROM messages GROUP BY status")
    assert {r["status"]: r["n"] for r in rows} == {"submitted": 120}

    async with gw.client() as client:
        # A replay is answered from the store (whichever process takes it), never stored twice.
        again = await client.post("/v1/messages", json={"to": "13900000007", "text": "code 7", "client_ref": "ref-7"})
        assert again.status_code == 202
        assert again.json()["messages"][0]["id"] in ids
        text = (await client.get("/metrics")).text
    # Both processes took connections, and /metrics sums them: the per-process counts add up
    # to every request made, and the accepted messages to every message stored.
    main = _sample(text, "smsgw_http_process_requests_total", process="main")
    worker = _sample(text, "smsgw_http_process_requests_total", process="worker-1")
    assert main > 0 and worker > 0, (main, worker)
    assert main + worker == 122  # 120 sends, the replay, and this scrape
    assert _sample(text, "smsgw_messages_accepted_total") == 120
    assert _sample(text, "smsgw_api_requests_total", route="send", code="202") == 121
    assert _sample(text, "smsgw_http_workers_up") == 1


async def test_every_route_answers_the_same_through_any_process(nursery, database_url):
    gw = await start_gateway(nursery, database_url, channels=[ScriptedChannel()],
                             http=HttpConfig(listen="127.0.0.1:0", workers=3),
                             admin=AdminConfig(listen="127.0.0.1:0", token="t0ken"))
    assert len(_children(os.getpid())) == 2
    posted = await _post_each_on_a_new_connection(gw.url, gw.key, 3)
    mid = posted[0].json()["messages"][0]["id"]
    seen: dict[str, set[tuple[object, ...]]] = {}
    async with _fresh_connections(gw.url) as client:
        for _ in range(20):  # a new connection for each request: each process takes some
            for name, request in (
                ("healthz", client.build_request("GET", "/healthz")),
                ("admin", client.build_request("GET", "/v1/admin/blocklist",
                                               headers={"Authorization": "Bearer t0ken"})),
                ("unknown", client.build_request("GET", "/nowhere")),
                ("wrong method", client.build_request("DELETE", "/v1/messages")),
                ("no key", client.build_request("POST", "/v1/messages", json={"to": "13900000000", "text": "x"})),
                ("head", client.build_request("HEAD", "/healthz")),
                ("message", client.build_request("GET", f"/v1/messages/{mid}", headers=gw.headers)),
            ):
                r = await client.send(request)
                size, body = r.headers.get("content-length"), r.content
                if name == "message":  # its status and events move on as it is sent
                    size, body = None, r.json()["id"]
                seen.setdefault(name, set()).add((r.status_code, r.headers.get("content-type"), r.headers.get("allow"),
                                                  r.headers.get("www-authenticate"), size, body))
    # One answer per route, whichever process took the connection.
    assert {name: len(answers) for name, answers in seen.items()} == dict.fromkeys(seen, 1)
    answer = {name: next(iter(answers)) for name, answers in seen.items()}
    assert answer["healthz"][:2] == (200, "application/json")
    assert answer["admin"][:2] == (200, "application/json") and b'"numbers"' in answer["admin"][5]
    assert answer["unknown"][0] == 404 and b'"not_found"' in answer["unknown"][5]
    assert answer["wrong method"][:3] == (405, "application/json", "POST")
    assert answer["no key"][0] == 401 and answer["no key"][3] == 'Bearer realm="smsgw"'
    assert answer["head"][0] == 200 and answer["head"][4] == answer["healthz"][4] and answer["head"][5] == b""
    assert answer["message"][:2] == (200, "application/json") and answer["message"][5] == mid
    async with gw.client() as client:
        text = (await client.get("/metrics")).text
    counts = [_sample(text, "smsgw_http_process_requests_total", process=p) for p in ("main", "worker-1", "worker-2")]
    assert all(c > 0 for c in counts), counts
    # The admin route ran in the main process, whichever process took the connection.
    assert _sample(text, "smsgw_api_requests_total", route="blocklist", code="200") == 20


async def test_an_account_rate_limit_holds_across_processes(nursery, database_url):
    gw = await start_gateway(nursery, database_url, channels=[ScriptedChannel(room=1000)],
                             http=HttpConfig(listen="127.0.0.1:0", workers=2),
                             accounts=[AccountConfig(name="acme", rate=0.01, burst=5)])
    answers = await _post_each_on_a_new_connection(gw.url, gw.key, 12)
    codes = sorted(a.status_code for a in answers)
    # Exactly the burst gets through, as with one process: the main process counts them all.
    assert codes == [202] * 5 + [429] * 7
    refused = [a for a in answers if a.status_code == 429]
    assert all(a.json()["error"]["code"] == "rate_limited" and int(a.headers["retry-after"]) >= 1 for a in refused)
    async with gw.client() as client:
        text = (await client.get("/metrics")).text
        # Kannel's sendsms of that account is limited by the same bucket.
        r = await client.get("/cgi-bin/sendsms", params={"username": "acme", "password": gw.key,
                                                         "to": "13900000001", "text": "hi"})
        assert r.status_code == 429
    assert _sample(text, "smsgw_http_process_requests_total", process="worker-1") > 0
    assert _sample(text, "smsgw_api_requests_total", route="send", code="429") == 7


async def _two_processes_after_sends(nursery, database_url, count: int):
    """A gateway with one worker, after ``count`` sends spread over both processes: the
    gateway, the worker's pid and the summed metrics then."""
    gw = await start_gateway(nursery, database_url, channels=[ScriptedChannel()],
                             http=HttpConfig(listen="127.0.0.1:0", workers=2))
    [worker] = _children(os.getpid())
    await _post_each_on_a_new_connection(gw.url, gw.key, count)
    async with gw.client() as client:
        text = (await client.get("/metrics")).text
    return gw, worker, text


async def test_a_killed_worker_is_restarted(nursery, database_url):
    gw, worker, before = await _two_processes_after_sends(nursery, database_url, 30)
    counted = _sample(before, "smsgw_http_process_requests_total", process="worker-1")
    accepted = _sample(before, "smsgw_messages_accepted_total")
    assert counted > 0 and accepted == 30
    os.kill(worker, signal.SIGKILL)
    with trio.fail_after(20):
        while True:
            now = _children(os.getpid())
            if now and now != [worker]:
                break
            await trio.sleep(0.1)
    await trio.sleep(0.5)  # the new one reports ready before it is counted up
    with trio.fail_after(20):
        while True:
            async with gw.client() as client:
                text = (await client.get("/metrics")).text
            if _sample(text, "smsgw_http_workers_up") == 1:
                break
            await trio.sleep(0.2)
    assert _sample(text, "smsgw_http_worker_restarts_total") == 1
    # The dead worker's counts stay in the sum: no counter went back.
    assert _sample(text, "smsgw_http_process_requests_total", process="worker-1") >= counted
    assert _sample(text, "smsgw_messages_accepted_total") == 30
    answers = await _post_each_on_a_new_connection(gw.url, gw.key, 30)
    assert [a.status_code for a in answers] == [202] * 30
    async with gw.client() as client:
        after = (await client.get("/metrics")).text

    def served(text: str) -> float:
        return sum(_sample(text, "smsgw_http_process_requests_total", process=p) for p in ("main", "worker-1"))

    assert served(after) >= served(text) + 30  # (the same client_refs: nothing new accepted)


async def test_a_worker_commit_wakes_the_dispatcher_at_once(nursery, database_url):
    """With an idle poll of a minute, only the NOTIFY can make the dispatcher claim quickly."""
    from gateway.config import DispatcherConfig

    channel = ScriptedChannel(room=1000)
    gw = await start_gateway(nursery, database_url, channels=[channel],
                             http=HttpConfig(listen="127.0.0.1:0", workers=2),
                             dispatcher=DispatcherConfig(quiet_hours="", idle_poll=60.0))
    await trio.sleep(0.5)  # the dispatcher has looked at the empty queue and sleeps
    answers = await _post_each_on_a_new_connection(gw.url, gw.key, 40)
    assert all(a.status_code == 202 for a in answers)
    with trio.fail_after(5):
        while len(channel.submitted) < 40:
            await trio.sleep(0.05)
    async with gw.client() as client:
        text = (await client.get("/metrics")).text
    assert _sample(text, "smsgw_http_process_requests_total", process="worker-1") > 0


def test_merged_metrics_sum_sample_by_sample():
    from gateway.metrics import Metrics

    a, b = Metrics(), Metrics()
    a.api_requests.labels("send", "202").inc(3)
    b.api_requests.labels("send", "202").inc(4)
    b.api_requests.labels("send", "429").inc()
    a.api_latency.labels("send").observe(0.001)
    b.api_latency.labels("send").observe(0.3)
    a.queue_depth.set(7)
    text = merge_expositions([a.exposition().decode(), b.exposition().decode()]).decode()
    assert _sample(text, "smsgw_api_requests_total", route="send", code="202") == 7
    assert _sample(text, "smsgw_api_requests_total", route="send", code="429") == 1
    assert _sample(text, "smsgw_api_request_duration_seconds_count", route="send") == 2
    assert _sample(text, "smsgw_api_request_duration_seconds_bucket", route="send", le="0.001") == 1
    assert _sample(text, "smsgw_api_request_duration_seconds_bucket", route="send", le="0.5") == 2
    assert _sample(text, "smsgw_api_request_duration_seconds_sum", route="send") == pytest.approx(0.301)
    assert _sample(text, "smsgw_queue_depth") == 7
    assert "# TYPE smsgw_api_requests_total counter" in text


def test_an_exited_worker_s_counts_stay_in_the_sum_and_its_gauges_leave():
    from gateway.metrics import Metrics
    from gateway.metrics_merge import retire_exposition

    first, second, main = Metrics(), Metrics(), Metrics()
    first.api_requests.labels("send", "202").inc(5)
    first.api_latency.labels("send").observe(0.2)
    first.queue_depth.set(9)  # a gauge: nobody sets it once the process is gone
    retired = retire_exposition("", first.exposition().decode())
    second.api_requests.labels("send", "202").inc(2)
    retired = retire_exposition(retired, second.exposition().decode())
    main.api_requests.labels("send", "202").inc(1)
    main.queue_depth.set(3)
    # A third worker took their place and counted from zero again.
    third = Metrics()
    third.api_requests.labels("send", "202").inc(1)
    text = merge_expositions([main.exposition().decode(), third.exposition().decode(), retired]).decode()
    assert _sample(text, "smsgw_api_requests_total", route="send", code="202") == 5 + 2 + 1 + 1
    assert _sample(text, "smsgw_api_request_duration_seconds_count", route="send") == 1
    assert _sample(text, "smsgw_api_request_duration_seconds_bucket", route="send", le="0.25") == 1
    assert _sample(text, "smsgw_queue_depth") == 3
    assert "smsgw_queue_depth" not in retired


def test_routes_a_worker_serves_itself():
    assert served_here("POST", "/v1/messages")
    assert served_here("GET", "/v1/messages/123")
    assert served_here("HEAD", "/v1/messages/123")
    assert served_here("GET", "/cgi-bin/sendsms") and served_here("POST", "/cgi-bin/sendsms")
    assert not served_here("GET", "/v1/messages")  # 405 comes from the main, with its Allow
    assert not served_here("GET", "/v1/messages/")
    assert not served_here("GET", "/v1/messages/1/events")
    assert not served_here("GET", "/healthz") and not served_here("GET", "/metrics")


# --- smsgw run as a process ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_run(tmp_path: Path, database_url: str, workers: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    config = tmp_path / "smsgw.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[database]\nurl = "{database_url}"\n'
                      f'[http]\nlisten = "127.0.0.1:{port}"\nworkers = {workers}\n[crm]\nenabled = false\n')
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "--log-level", "INFO", "run", "--config",
                             str(config)], stderr=open(tmp_path / "gateway.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
        if len(_children(proc.pid)) == workers - 1:
            try:
                # Ready once /metrics counts the workers (they report ready before the main does).
                text = httpx.get(url + "/metrics", timeout=2).text
                if _sample(text, "smsgw_http_workers_up") == workers - 1:
                    return proc, url
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("smsgw run did not start:\n" + (tmp_path / "gateway.log").read_text())


def test_sigterm_stops_the_main_and_every_worker(tmp_path, database_url):
    proc, url = _start_run(tmp_path, database_url, workers=3)
    workers = _children(proc.pid)
    assert len(workers) == 2
    r = httpx.get(url + "/healthz", timeout=5)
    assert r.status_code in (200, 503) and r.json()["database"] == "ok"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not any(alive(pid) for pid in workers)
    log = (tmp_path / "gateway.log").read_text()
    assert "worker=1" in log and "worker=2" in log  # the workers' lines, named, on the main's stderr
    assert "http worker stopping reason=SIGTERM" in log


def test_sigkill_of_the_main_leaves_no_worker_behind(tmp_path, database_url):
    proc, url = _start_run(tmp_path, database_url, workers=2)
    workers = _children(proc.pid)
    assert len(workers) == 1
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)
    assert "reason=the main process is gone" in (tmp_path / "gateway.log").read_text()


async def test_a_stalled_worker_counts_with_its_last_reading(nursery, database_url):
    from gateway.workers import METRICS_SCRAPE_TIMEOUT

    gw, worker, text = await _two_processes_after_sends(nursery, database_url, 20)
    read = _sample(text, "smsgw_http_process_requests_total", process="worker-1")
    assert read > 0
    os.kill(worker, signal.SIGSTOP)
    try:
        text = None
        # New connections until one lands on the main process (the stopped worker takes the others).
        async with httpx.AsyncClient(base_url=gw.url, timeout=METRICS_SCRAPE_TIMEOUT + 3,
                                     limits=httpx.Limits(max_keepalive_connections=0)) as client:
            for _ in range(12):
                started = trio.current_time()
                try:
                    r = await client.get("/metrics")
                except httpx.TimeoutException:
                    continue
                elapsed = trio.current_time() - started
                text = r.text
                break
        assert text is not None
        assert elapsed < METRICS_SCRAPE_TIMEOUT + 2  # the scrape waited for the worker no longer than that
        # Its last reading, not 0: the sum's counters never go back.
        assert _sample(text, "smsgw_http_process_requests_total", process="worker-1") == read
        assert _sample(text, "smsgw_http_process_requests_total", process="main") > 0
        assert _sample(text, "smsgw_http_worker_scrape_misses_total") >= 1
    finally:
        os.kill(worker, signal.SIGCONT)


async def test_the_wake_up_listener_listens_again_after_losing_its_connection(nursery, store, database_url):
    from gateway.workers import WAKE_CHANNEL, serve_wakeups

    wakes = 0
    woken = trio.Event()

    def on_wake() -> None:
        nonlocal wakes
        wakes += 1
        woken.set()

    await nursery.start(serve_wakeups, store, database_url, on_wake)
    await store.notify(WAKE_CHANNEL)
    with trio.fail_after(5):
        await woken.wait()
    assert wakes == 1
    # The listening session is killed: the listener notices, listens again, and wakes once for
    # what it may have missed; notifications reach it again afterwards.
    killed = await store.fetchval("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                  " WHERE application_name = 'smsgw-listen'")
    assert killed == 1
    with trio.fail_after(10):
        while wakes < 2:
            await trio.sleep(0.05)
    with trio.fail_after(10):
        while not await store.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'smsgw-listen'"):
            await trio.sleep(0.05)
    before = wakes
    woken = trio.Event()
    await store.notify(WAKE_CHANNEL)
    with trio.fail_after(5):
        await woken.wait()
    assert wakes == before + 1


def test_the_workers_key_defaults_to_one_and_names_itself_when_bad():
    from gateway.config import parse_config
    from gateway.errors import ConfigError

    assert parse_config("").http.workers == 1
    assert parse_config("[http]\nworkers = 3\n").http.workers == 3
    for bad in ("0", "65", '"two"'):
        with pytest.raises(ConfigError, match=r"\$\.http\.workers"):
            parse_config(f"[http]\nworkers = {bad}\n")


def test_the_load_test_stack_passes_workers_on(tmp_path):
    from gateway.config import parse_config
    from loadtest.runner import Options, validate
    from loadtest.scenarios import LoadTestError
    from loadtest.stack import StackOptions, gateway_config

    text = gateway_config(tmp_path, 8080, "127.0.0.1:7890", StackOptions(workers=3))
    assert parse_config(text).http.workers == 3
    validate(Options(scenario="single", rate=10, duration=1, workers=2))
    with pytest.raises(LoadTestError, match="--workers"):
        validate(Options(scenario="single", rate=10, duration=1, workers=0))
    with pytest.raises(LoadTestError, match="--workers"):
        validate(Options(scenario="single", rate=10, duration=1, workers=2, target="http://127.0.0.1:1",
                         api_key="k"))


async def test_a_commit_in_another_process_wakes_the_idle_dispatcher_through_notify(nursery, database_url):
    """A worker's commit path (its own intake, its notifier) on its own: with an idle poll of a
    minute, the main's dispatcher claims the message only if the NOTIFY reaches it."""
    from gateway.config import DispatcherConfig, IntakeConfig
    from gateway.intake import Intake
    from gateway.metrics import Metrics
    from gateway.store import AcceptRequest, NewMessage
    from gateway.worker import Notifier

    channel = ScriptedChannel(room=100)
    gw = await start_gateway(nursery, database_url, channels=[channel],
                             http=HttpConfig(listen="127.0.0.1:0", workers=2),
                             dispatcher=DispatcherConfig(quiet_hours="", idle_poll=60.0))
    notifier = Notifier(gw.store)
    intake = Intake(gw.store, IntakeConfig(), Metrics(), on_commit=notifier.wake)
    await nursery.start(notifier.run)
    await nursery.start(intake.run)
    await trio.sleep(1.0)  # the dispatcher has found the queue empty and waits
    for n in range(3):
        result = await intake.accept(AcceptRequest(account_id=gw.account.id, messages=(
            NewMessage(dest=f"1380013800{n}", operator="cmcc", body="hi", encoding="gsm7", parts=1),)))
        with trio.fail_after(5):
            while len(channel.submitted) < n + 1:
                await trio.sleep(0.01)
        assert channel.submitted[-1].id == result.messages[0].id
    assert notifier.sent >= 3 - 1  # the second and third may share one, 10 ms apart at most


async def test_a_stopping_worker_answers_every_request_it_took(nursery, database_url):
    gw = await start_gateway(nursery, database_url, channels=[ScriptedChannel(room=100_000)],
                             http=HttpConfig(listen="127.0.0.1:0", workers=2))
    [worker] = _children(os.getpid())
    answers: list[httpx.Response] = []
    lost = 0
    stop = trio.Event()
    async with httpx.AsyncClient(base_url=gw.url, headers=gw.headers, timeout=30,
                                 limits=httpx.Limits(max_connections=16)) as client:
        async def sender(i: int) -> None:
            nonlocal lost
            j = 0
            while not stop.is_set():
                j += 1
                try:
                    answers.append(await client.post("/v1/messages", json={
                        "to": "13900000000", "text": "x", "client_ref": f"s{i}-{j}"}))
                except httpx.TransportError:  # a connection the stopping worker closed
                    lost += 1

        async with trio.open_nursery() as senders:
            for i in range(16):
                senders.start_soon(sender, i)
            await trio.sleep(1.0)
            took = _sample((await client.get("/metrics")).text, "smsgw_http_process_requests_total",
                           process="worker-1")
            assert took > 0  # the worker is serving some of the connections
            os.kill(worker, signal.SIGTERM)
            await trio.sleep(1.5)
            stop.set()
    codes = {a.status_code for a in answers}
    assert codes <= {202, 503}, codes
    refused = [a.json()["error"]["code"] for a in answers if a.status_code == 503]
    assert set(refused) <= {"shutting_down", "service_unavailable"}
    accepted = {a.json()["messages"][0]["id"] for a in answers if a.status_code == 202}
    stored = {str(r["id"]) for r in await gw.store.fetch("SELECT id FROM messages")}
    assert accepted <= stored  # every 202 was committed
    assert len(stored - accepted) <= lost  # and nothing was stored without an answer, but for lost connections
    assert len(answers) > 100
    # The worker exited by itself, and is restarted while the gateway runs.
    with trio.fail_after(20):
        while _children(os.getpid()) in ([], [worker]):
            await trio.sleep(0.1)


async def test_stop_process_terminates_then_kills_what_ignores_sigterm():
    from gateway.workers import stop_process

    script = ("import signal, sys, time\n"
              "if sys.argv[1] == 'stubborn': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "print('ready', flush=True)\n"
              "time.sleep(60)\n")

    async def started(kind: str) -> trio.Process:
        proc = await trio.lowlevel.open_process([sys.executable, "-c", script, kind], stdout=subprocess.PIPE)
        assert await proc.stdout.receive_some(16) == b"ready\n"  # its signal handling is set up
        return proc

    polite, stubborn = await started("polite"), await started("stubborn")
    assert await stop_process(polite, 5.0) is False
    assert polite.returncode == -signal.SIGTERM
    began = time.monotonic()
    assert await stop_process(stubborn, 0.3) is True
    assert stubborn.returncode == -signal.SIGKILL and time.monotonic() - began >= 0.3
    assert await stop_process(stubborn, 0.3) is False  # already gone: nothing to do
    for proc in (polite, stubborn):
        await proc.stdout.aclose()
