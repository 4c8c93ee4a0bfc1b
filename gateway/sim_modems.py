"""Emulated modems on pseudo-terminals, for trials and the demo (SPEC: simulators).

``serve_sim_modems`` starts N :class:`ModemEmulator` on one :class:`HandsetNetwork` and
reports one :class:`SimModem` (pty path, SIM number, operator) per modem.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import trio

from gateway.modem_pool.emulator import HandsetNetwork, ModemEmulator

__all__ = ["DEMO_NUMBERS", "SimModem", "serve_sim_modems"]

#: Two China Unicom and two China Telecom SIMs, as the demo uses them.
DEMO_NUMBERS = (
    ("18600000001", "cucc"),
    ("18600000002", "cucc"),
    ("18900000001", "ctcc"),
    ("18900000002", "ctcc"),
)


@dataclass(frozen=True, slots=True)
class SimModem:
    device: str
    number: str
    operator: str


def _default(count: int) -> list[tuple[str, str]]:
    out = []
    for i in range(count):
        prefix, operator = ("186", "cucc") if i % 2 == 0 else ("189", "ctcc")
        out.append((f"{prefix}{10000000 + i // 2:08d}", operator))
    return out


async def serve_sim_modems(
    count: int,
    *,
    numbers: Sequence[str] | None = None,
    operators: Sequence[str] | None = None,
    network: HandsetNetwork | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
    **emulator_options,
) -> None:
    """Serve ``count`` emulated modems until cancelled; reports ``list[SimModem]``."""
    if count < 1:
        raise ValueError("count must be positive")
    plan = _default(count)
    if numbers is not None:
        if len(numbers) != count:
            raise ValueError("one number per modem")
        plan = [(n, op) for n, (_, op) in zip(numbers, plan)]
    if operators is not None:
        if len(operators) != count:
            raise ValueError("one operator per modem")
        plan = [(n, op) for (n, _), op in zip(plan, operators)]
    network = network if network is not None else HandsetNetwork()
    async with trio.open_nursery() as nursery:
        modems = []
        for i, (number, operator) in enumerate(plan):
            emulator = ModemEmulator(
                network, number, name=f"sim{i + 1}", imei=f"8600000{i + 1:08d}", **emulator_options
            )
            device = await nursery.start(emulator.run)
            modems.append(SimModem(device=device, number=number, operator=operator))
        task_status.started(modems)
