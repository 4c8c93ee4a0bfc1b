"""The load test's report: a JSON-ready dict with every figure, a summary table, PNG plots.

``build_report`` gathers the figures; ``summary`` renders the table a person reads;
``write_plots`` draws throughput over time and latency percentiles over time with matplotlib
(the optional ``[loadtest]`` extra), imported only when plots are asked for.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from .accounting import Accounting, GatewayCounts
from .generator import Results
from .histogram import Histogram
from .scenarios import Plan, LoadTestError

__all__ = ["PERCENTILES", "build_report", "summary", "verdict", "write_plots"]

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def latency_ms(h: Histogram) -> dict[str, float]:
    out = {name: round(h.percentile(p) / 1000, 3) for name, p in PERCENTILES}
    out["max"] = round(h.max / 1000, 3)
    out["mean"] = round(h.mean / 1000, 3)
    out["count"] = h.count
    return out


def verdict(acc: Accounting, drained: bool) -> str:
    parts = []
    if acc.lost:
        parts.append(f"LOST {acc.lost} of {acc.accepted} acknowledged messages"
                     + ("" if drained else " (still not final when the drain timed out)"))
    else:
        parts.append("no loss")
    if acc.duplicates is None:
        parts.append("duplicates not counted (no simulator of this run to see them)")
    elif acc.duplicates:
        parts.append(f"{acc.duplicates} DUPLICATES")
    else:
        parts.append("no duplicates")
    failed = [c.name for c in acc.checks if not c.ok]
    if failed:
        parts.append("MISMATCH: " + "; ".join(failed)
                     + ("" if drained else " (messages were still in flight: raise --drain-timeout)"))
    return ", ".join(parts)


def _timeline(results: Results, gateway: list[tuple[float, GatewayCounts]], end: float) -> list[dict[str, object]]:
    rows = []
    last = max([int(end)] + list(results.intervals))
    for second in range(0, last + 1):
        iv = results.intervals.get(second)
        row: dict[str, object] = {"t": second, "started": 0, "completed": 0, "accepted": 0, "errors": 0}
        if iv is not None:
            row.update(started=iv.started, completed=iv.completed, accepted=iv.accepted, errors=iv.errors)
            if iv.latency.count:
                row.update({f"{name}_ms": round(iv.latency.percentile(p) / 1000, 3) for name, p in PERCENTILES})
                row["max_ms"] = round(iv.latency.max / 1000, 3)
        rows.append(row)
    return rows


def _gateway_rates(gateway: list[tuple[float, GatewayCounts]]) -> list[dict[str, float]]:
    """Per scrape interval: the gateway's accepted, submitted, final and MO rates."""
    out = []
    for (t0, a), (t1, b) in zip(gateway, gateway[1:]):
        span = t1 - t0
        if span <= 0:
            continue
        d = b.minus(a)
        out.append({"t": round(t1, 3),
                    "accepted_per_s": round(d.accepted / span, 1),
                    "submitted_per_s": round(d.by_status.get("submitted", 0.0) / span, 1),
                    "final_per_s": round(d.final / span, 1),
                    "mo_per_s": round(d.mo_received / span, 1)})
    return out


def build_report(*, options, plan: Plan, results: Results, accounting: Accounting, before: GatewayCounts,
                 after: GatewayCounts, timeline: list[tuple[float, GatewayCounts]], t0: float,
                 send_seconds: float, drain_seconds: float, drained: bool, simulator: dict[str, int] | None,
                 handsets: dict[str, int] | None,
                 sample: dict[str, object], cpu: dict[str, float | None], started_at: dt.datetime, mode: str,
                 target: str, delivery: dict[str, dict[str, object]] | None = None) -> dict[str, object]:
    acc = accounting
    total = results.all_latency()
    accepted_messages = sum(results.accepted.values())
    delta = after.minus(before)
    gateway_rates = _gateway_rates(timeline)
    report: dict[str, object] = {
        "scenario": plan.scenario.name,
        "mode": mode,
        "target": target,
        "run_id": plan.run_id,
        "started_at": started_at.isoformat(timespec="seconds"),
        "options": {"rate": options.rate or plan.scenario.rate, "duration": options.duration or plan.scenario.duration,
                    "count": options.count if options.count is not None else plan.scenario.count,
                    "ramp": options.ramp, "connections": options.connections},
        "planned_requests": plan.requests,
        "messages_per_request": round(plan.messages_per_call, 3),
        "requests": results.requests,
        "responses_by_status": {str(k): v for k, v in sorted(results.statuses.items())},
        "errors": dict(results.errors),
        "refused": sum(results.refused.values()),
        "accepted": acc.accepted,
        "final": acc.final,
        "delivered": acc.delivered,
        "lost": acc.lost,
        "duplicates": acc.duplicates,
        "drained": drained,
        "verdict": verdict(acc, drained),
        "clean": acc.lost == 0 and not acc.duplicates and (mode == "target" or all(c.ok for c in acc.checks)),
        "checks": [{"name": c.name, "expected": c.expected, "actual": c.actual, "ok": c.ok} for c in acc.checks],
        "throughput_per_s": round(accepted_messages / send_seconds, 1) if send_seconds > 0 else 0.0,
        "final_throughput_per_s": round(acc.final / (send_seconds + drain_seconds), 1)
        if send_seconds + drain_seconds > 0 else 0.0,
        # accepted → delivered: messages delivered over the whole run, first request to last report
        "delivered_throughput_per_s": round(acc.delivered / (send_seconds + drain_seconds), 1)
        if send_seconds + drain_seconds > 0 else 0.0,
        "delivery_by_route": delivery or {},
        "peak_gateway_rates_per_s": {k: max((r[k] for r in gateway_rates), default=0.0)
                                     for k in ("accepted_per_s", "submitted_per_s", "final_per_s", "mo_per_s")},
        "send_seconds": round(send_seconds, 3),
        "drain_seconds": round(drain_seconds, 3),
        "latency_ms": latency_ms(total),
        "latency_ms_by_kind": {kind: latency_ms(h) for kind, h in sorted(results.latency.items())},
        "generator_lag_ms": latency_ms(results.start_delay),
        "gateway": {"accepted": delta.accepted, "mo_received": delta.mo_received,
                    "reports_unmatched": delta.reports_unmatched,
                    "by_status": {k: v for k, v in sorted(delta.by_status.items()) if v},
                    "by_channel": {f"{s}/{c or '-'}": v for (s, c), v in sorted(delta.by_channel.items()) if v}},
        "simulator": simulator,
        "modem_handsets": handsets,
        "persisted_sample": sample,
        "cpu_seconds": cpu,
        "timeline": _timeline(results, timeline, send_seconds),
        "gateway_timeline": gateway_rates,
    }
    return report


def summary(report: dict[str, object]) -> str:
    lat = report["latency_ms"]
    assert isinstance(lat, dict)
    rows = [
        ("scenario", f"{report['scenario']} ({report['mode']}, {report['target']})"),
        ("requests", f"{report['requests']:,} sent in {report['send_seconds']:.1f} s"
                     f" ({report['messages_per_request']} messages each)"),
        ("accepted", f"{report['accepted']:,} messages ({report['throughput_per_s']:,.0f}/s); refused "
                     f"{report['refused']:,}"),
        ("final", f"{report['final']:,} ({report['delivered']:,} delivered,"
                  f" {report.get('delivered_throughput_per_s', 0.0):,.0f}/s first request to last report),"
                  f" drained in {report['drain_seconds']:.1f} s"),
        ("lost", f"{report['lost']:,}"),
        ("duplicates", "not counted" if report["duplicates"] is None else f"{report['duplicates']:,}"),
        ("latency ms", "  ".join(f"{k} {lat[k]:.2f}" for k in ("p50", "p90", "p99", "p99.9", "max"))),
        ("generator lag ms", "  ".join(f"{k} {report['generator_lag_ms'][k]:.2f}"  # type: ignore[index]
                                       for k in ("p50", "p99", "max"))),
        ("peak gateway /s", "  ".join(f"{k.removesuffix('_per_s')} {v:,.0f}"
                                      for k, v in report["peak_gateway_rates_per_s"].items())),  # type: ignore[union-attr]
        ("cpu seconds", "  ".join(f"{k} {v}" for k, v in report["cpu_seconds"].items())),  # type: ignore[union-attr]
    ]
    for route, d in report.get("delivery_by_route", {}).items():  # type: ignore[union-attr]
        que, sub, dlv = d.get("accept_to_queued_ms", {}), d["accept_to_submitted_ms"], d["accept_to_delivered_ms"]
        rows.append((f"{route} ms", f"accept→queued p50 {que.get('p50', 0):,.0f}  "
                                    f"accept→submitted p50 {sub['p50']:,.0f} p99 {sub['p99']:,.0f}  "
                                    f"accept→delivered p50 {dlv['p50']:,.0f} p99 {dlv['p99']:,.0f}  "
                                    f"({d['sampled']} of {d['accepted']:,} sampled, offered {d['offered_per_s']}/s)"))
    for check in report["checks"]:  # type: ignore[union-attr]
        rows.append(("check", f"{'ok  ' if check['ok'] else 'FAIL'} {check['name']}: expected {check['expected']:,}"
                              f", got {check['actual']:,}"))
    if report["errors"]:
        rows.append(("errors", "; ".join(f"{k} x{v}" for k, v in report["errors"].items())))  # type: ignore[union-attr]
    if report.get("gateway_log_warnings"):
        rows.append(("gateway log", f"{report['gateway_log_warnings']} warnings or errors"))
    if report.get("kept_dir"):
        rows.append(("kept", f"{report['kept_dir']} (gateway.log, simulators.log, the database in data/)"))
    rows.append(("verdict", str(report["verdict"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def write_plots(report: dict[str, object], directory: str | Path) -> list[Path]:
    """``throughput.png`` and ``latency.png`` in ``directory``; returns their paths."""
    try:
        import matplotlib
    except ImportError:
        raise LoadTestError("--plots needs matplotlib: pip install 'smsgw[loadtest]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rows = report["timeline"]
    assert isinstance(rows, list)
    gw = report["gateway_timeline"]
    assert isinstance(gw, list)
    title = f"smsgw loadtest {report['scenario']} ({report['run_id']})"

    fig, ax = plt.subplots(figsize=(10, 5))
    ax.plot([r["t"] + 1 for r in rows], [r["accepted"] for r in rows], label="accepted (client, 202s)")
    ax.plot([r["t"] + 1 for r in rows], [r["errors"] for r in rows], label="refused or failed requests")
    for key, label in (("submitted_per_s", "submitted (gateway)"), ("final_per_s", "final (gateway)"),
                       ("mo_per_s", "MO stored (gateway)")):
        if any(r[key] for r in gw):
            ax.plot([r["t"] for r in gw], [r[key] for r in gw], label=label)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("messages per second")
    ax.set_title(title + ": throughput")
    ax.grid(True, alpha=0.3)
    ax.legend()
    throughput = out / "throughput.png"
    fig.savefig(throughput, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 5))
    timed = [r for r in rows if "p50_ms" in r]
    for key in ("p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms"):
        ax.plot([r["t"] for r in timed], [max(r[key], 0.001) for r in timed], label=key.removesuffix("_ms"))
    ax.set_yscale("log")
    ax.set_xlabel("intended start, seconds since start")
    ax.set_ylabel("latency, ms (from the intended start)")
    ax.set_title(title + ": latency percentiles")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    latency = out / "latency.png"
    fig.savefig(latency, dpi=100)
    plt.close(fig)
    return [throughput, latency]
