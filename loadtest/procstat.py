"""Processes as Linux's ``/proc`` shows them: CPU time, liveness and descendants.

The benchmarks measure CPU per message of processes they started (the gateway, its HTTP
workers, PostgreSQL, the simulators); the tests check what a command left running.
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
"""Clock ticks a second, the unit of ``/proc/<pid>/stat``'s times."""


def _stat(pid: int | str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state is [0], ppid [1],
    utime [11], stime [12]). Raises OSError once the process is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` so far; (0, 0) once it is gone."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of ``pid`` so far; 0 once it is gone."""
    return sum(cpu_times(pid))


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie, exited but not yet reaped, does not count)."""
    try:
        return _stat(pid)[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> bytes:
    """``pid``'s command line, NUL-separated; empty once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def children(pid: int) -> list[int]:
    """The live children of ``pid``."""
    return [p for p, parent in _parents().items() if parent == pid and alive(p)]


def descendants(pid: int) -> set[int]:
    """The processes below ``pid``: its children, theirs, and so on."""
    below: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        below.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in below.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _parents() -> dict[int, int]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = int(_stat(entry.name)[1])
            except (OSError, IndexError, ValueError):
                continue
    return out
