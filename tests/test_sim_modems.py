"""The simulated handset network over TCP (``smsgw sim modems --network-listen``)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

import pytest
import trio

from gateway.modem_pool.emulator import HandsetNetwork
from gateway.modem_pool.errors import ModemUnavailable
from gateway.modem_pool.modem import Modem
from gateway.modem_pool.at import NewMessage
from gateway.modem_pool.pdu import decode_deliver
from gateway.modem_pool.serial_stream import SerialStream
from gateway.sim_modems import (
    MAX_REQUEST_LINE,
    HandsetProtocolError,
    handle_request,
    open_handset_client,
    serve_handset_network,
    serve_sim_modems,
)

DEADLINE = 15.0
HANDSET = "13900000001"
CHINESE = "您好，这是一条很长的中文短信，用于测试长短信的拆分与重组功能是否正常。" * 3


async def start_network(nursery, count=2, **options):
    network = HandsetNetwork()
    modems = await nursery.start(lambda task_status: serve_sim_modems(
        count, network=network, task_status=task_status, **options))
    port = await nursery.start(serve_handset_network, network, "127.0.0.1", 0)
    return network, modems, port


async def test_handset_texts_a_modem_over_tcp_and_the_modem_reads_it(nursery):
    with trio.fail_after(DEADLINE):
        network, modems, port = await start_network(nursery)
        stream = SerialStream.open(modems[0].device)
        modem = Modem(stream, name="m1")
        async with open_handset_client("127.0.0.1", port) as client, trio.open_nursery() as inner:
            await inner.start(modem.run)
            await modem.initialize()
            listed = await client.modems()
            assert [m["number"] for m in listed] == sorted(m.number for m in modems)
            assert {m["device"] for m in listed} == {m.device for m in modems}

            assert await client.mo(HANDSET, modems[0].number, "1") == 1
            parts = await client.mo("+86" + HANDSET, modems[0].number, CHINESE)
            assert parts == 2  # 105 UCS2 characters: 67 + 38
            texts = []
            async for event in modem.unsolicited:
                if isinstance(event, NewMessage):
                    stored = await modem.read_message(event.index)
                    texts.append(decode_deliver(stored.pdu))
                    if len(texts) == 1 + parts:
                        break
            assert texts[0].text == "1" and texts[0].originator.number == HANDSET
            assert [t.user_data.concat.seq for t in texts[1:]] == [1, 2]

            await modem.send_text("18600000001", "your code is 4321")
            await modem.send_text(modems[1].number, "to the other modem", status_report=False)
            while (await client.stats())["status_reports"] < 1:
                await trio.sleep(0.02)
            inbox = await client.inbox("+8618600000001")
            assert inbox == [{"from": modems[0].number, "text": "your code is 4321", "parts": 1}]
            assert await client.inbox("18600000009") == []
            stats = await client.stats()
            assert {k: stats[k] for k in ("submitted", "delivered", "undeliverable", "status_reports", "mo")} == {
                "submitted": 2, "delivered": 2, "undeliverable": 0, "status_reports": 1, "mo": 3}
            sent = {m["number"]: m["sent"] for m in stats["modems"]}
            assert sent == {modems[0].number: 2, modems[1].number: 0}
            assert network.modems[modems[1].number].stored == 1  # arrived as +CMTI storage
            inner.cancel_scope.cancel()
        await stream.aclose()


async def test_errors_are_answered_and_the_connection_stays_usable(nursery):
    with trio.fail_after(DEADLINE):
        _, modems, port = await start_network(nursery, count=1)
        async with open_handset_client("127.0.0.1", port) as client:
            with pytest.raises(HandsetProtocolError) as info:
                await client.mo(HANDSET, "18699999999", "hi")
            assert info.value.code == "unknown_number"
            with pytest.raises(HandsetProtocolError) as info:
                await client.mo("not-a-number", modems[0].number, "hi")
            assert info.value.code == "bad_request" and "from" in str(info.value)
            with pytest.raises(HandsetProtocolError) as info:
                await client.request("teleport")
            assert info.value.code == "bad_request" and "op" in str(info.value)
            assert (await client.request("stats", id=7))["id"] == 7

        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b'not json\n{"op": "modems", "id": "x"}\n')
            received = b""
            while received.count(b"\n") < 2:
                received += await stream.receive_some()
            first, second = (json.loads(line) for line in received.splitlines())
            assert first["ok"] is False and first["error"]["code"] == "bad_request"
            assert second["ok"] is True and second["id"] == "x" and len(second["modems"]) == 1

        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"x" * (MAX_REQUEST_LINE + 10))
            received = b""
            while not received.endswith(b"\n"):
                data = await stream.receive_some()
                assert data, "closed without an answer"
                received += data
            assert json.loads(received)["error"]["code"] == "bad_request"
            assert await stream.receive_some() == b""  # then the server hangs up


def test_handle_request_answers_one_line():
    network = HandsetNetwork()
    answer = json.loads(handle_request(network, b'{"op": "stats"}'))
    assert answer == {"ok": True, "submitted": 0, "delivered": 0, "undeliverable": 0,
                      "status_reports": 0, "mo": 0, "modems": []}
    answer = json.loads(handle_request(network, b'{"op": "mo", "from": "139", "to": "186", "text": ""}'))
    assert answer["error"]["code"] == "bad_request" and "text" in answer["error"]["message"]


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            return proc.stdout.readline().decode()
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
    raise AssertionError("no output in time")


async def test_cli_serves_modems_and_the_network_to_another_process():
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "--log-level", "WARNING", "sim", "modems", "--count", "2",
         "--network-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = [_read_line(proc, 20).split() for _ in range(3)]
        assert [len(line) for line in lines[:2]] == [2, 2]
        assert all(line[0].startswith("/dev/") for line in lines[:2])
        assert lines[2][:3] == ["handset", "network", "listening"]
        host, port = lines[2][-1].rsplit(":", 1)
        with trio.fail_after(DEADLINE):
            async with open_handset_client(host, int(port)) as client:
                numbers = [m["number"] for m in await client.modems()]
                assert sorted(numbers) == sorted(line[1] for line in lines[:2])
                assert await client.mo(HANDSET, lines[0][1], "2") == 1
                assert (await client.stats())["mo"] == 1
    finally:
        proc.send_signal(2)
        try:
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_cli_refuses_a_bad_listen_address():
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "sim", "modems", "--count", "1", "--network-listen", "nowhere"],
        capture_output=True, timeout=30)
    assert proc.returncode == 2
    assert b"--network-listen" in proc.stderr


async def test_unplug_and_replug_from_another_process(nursery):
    with trio.fail_after(DEADLINE):
        _, modems, port = await start_network(nursery, count=1)
        number, device = modems[0].number, modems[0].device
        stream = SerialStream.open(device)
        modem = Modem(stream, name="m1")
        async with open_handset_client("127.0.0.1", port) as client:
            with pytest.raises(ExceptionGroup) as info:
                async with trio.open_nursery() as inner:
                    await inner.start(modem.run)
                    await modem.initialize()
                    await client.unplug(number)
                    await trio.sleep_forever()  # until the reader sees the device go
            assert info.group_contains(ModemUnavailable)
            await stream.aclose()
            await client.replug(number)
            await trio.sleep(0.2)
            listed = await client.modems()  # a fresh pty (the kernel may reuse the number)
            replugged = SerialStream.open(listed[0]["device"])
            modem = Modem(replugged, name="m1")
            async with trio.open_nursery() as inner:
                await inner.start(modem.run)
                status = await modem.initialize()
                assert status.own_number == number
                inner.cancel_scope.cancel()
            await replugged.aclose()
            with pytest.raises(HandsetProtocolError) as info:
                await client.unplug("18699999999")
            assert info.value.code == "unknown_number"
