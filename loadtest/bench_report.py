"""Turns one run of loadtest/bench into its results: medians over rounds,
each figure beside its target and beside Centrifugo's, the machine and the
versions, as Markdown and JSON, and a plot of latency against delivered
throughput (PNG).

Usage: bench_report.py RUNS_DIR RESULTS_DIR
"""

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KIB = 1024

# The durable part's systems, in the order the results list them, and
# their names there.
DURABLE_SYSTEMS = {
    "natter-single": "embedded (redb), `natter dev`",
    "natter-cql": "CQL (Cassandra 5.0), `natter dev --cql`",
    "natter-services-cql": "CQL (Cassandra 5.0), the four services on NATS",
}

# The desk part's systems: the services on NATS (embedded stores) without
# and with the desk process.
DESK_SYSTEMS = {
    "natter-services-no-desk": "without the desk: storage, sync, fanout, gateway",
    "natter-services-desk": "with the desk: the same and the desk, a team and 3 agents set up",
}
DESK_BUDGET = 0.10


def load_runs(runs):
    lines = (runs / "runs.jsonl").read_text().splitlines() if (runs / "runs.jsonl").exists() else []
    records = []
    for line in lines:
        record = json.loads(line)
        path = runs / record["file"]
        record["report"] = None
        if path.suffix == ".json" and path.exists():
            try:
                record["report"] = json.loads(path.read_text())
            except json.JSONDecodeError:
                pass
        records.append(record)
    return records


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# What a message cost, per message acked in a run's measured window: the
# fields bench's record() copies from a traffic report's counters.
COSTS = ("nats_msgs_per_message", "cql_statements_per_message", "lwt_per_message")


def costs(records):
    """The median of each cost over RECORDS; only the costs counted."""
    out = {}
    for key in COSTS:
        value = median([r.get(key) for r in records])
        if value is not None:
            out[key] = value
    return out


def load_note(records):
    """The machine's load over the runs behind a figure."""
    loads = [r["load1"] for r in records if r.get("load1") is not None]
    psis = [r["cpu_pressure_avg10"] for r in records if r.get("cpu_pressure_avg10") is not None]
    if not loads:
        return ""
    note = f"load {min(loads):.1f}–{max(loads):.1f}"
    if psis:
        note += f", CPU pressure {min(psis):.0f}–{max(psis):.0f} %"
    steals = [r["cpu_steal_pct"] for r in records if r.get("cpu_steal_pct") is not None]
    if steals:
        note += f", CPU stolen by the host {min(steals):.0f}–{max(steals):.0f} %"
    return note


def fanout(records):
    """Per system: the peak (median over rounds) and the half-rate latencies."""
    out = {}
    systems = sorted({r["system"] for r in records if r["part"] == "fanout"})
    for system in systems:
        mine = [r for r in records if r["part"] == "fanout" and r["system"] == system]
        peaks = []
        for round_ in sorted({r["round"] for r in mine}):
            passing = [
                r for r in mine
                if r["round"] == round_ and r["kind"] == "ladder" and r["rc"] == 0 and r["report"]
            ]
            if passing:
                best = max(passing, key=lambda r: r["value"])
                peaks.append({
                    "round": round_,
                    "offered_per_s": best["value"],
                    "delivered_per_s": best["report"]["delivered_per_s"],
                    "p99_ms": best["report"]["deliver_latency"]["p99_ms"],
                    "server_cores": (best["report"].get("server") or {}).get("cores"),
                    "client_cores": (best["report"].get("client") or {}).get("cores"),
                })
            else:
                peaks.append({"round": round_, "offered_per_s": 0, "delivered_per_s": 0.0})
        half = [r for r in mine if r["kind"] == "half" and r["report"]]
        out[system] = {
            "peak_delivered_per_s": median([p["delivered_per_s"] for p in peaks]),
            "peak_offered_per_s": median([p["offered_per_s"] for p in peaks]),
            "peaks": peaks,
            "half_offered_per_s": median([r["value"] for r in half]),
            "half_delivered_per_s": median([r["report"]["delivered_per_s"] for r in half]),
            "half_p50_ms": median([r["report"]["deliver_latency"]["p50_ms"] for r in half]),
            "half_p99_ms": median([r["report"]["deliver_latency"]["p99_ms"] for r in half]),
            "half_lost": sum(r["report"]["lost"] for r in half),
            "half_costs": costs(half),
            "load": load_note(mine),
            "ladder": [
                {
                    "round": r["round"],
                    "offered_per_s": r["value"],
                    "passed": r["rc"] == 0,
                    "delivered_per_s": r["report"]["delivered_per_s"],
                    "p50_ms": r["report"]["deliver_latency"]["p50_ms"],
                    "p99_ms": r["report"]["deliver_latency"]["p99_ms"],
                    "lost": r["report"]["lost"],
                    "server_cores": (r["report"].get("server") or {}).get("cores"),
                    "client_cores": (r["report"].get("client") or {}).get("cores"),
                    **costs([r]),
                }
                for r in mine if r["kind"] in ("ladder", "half") and r["report"]
            ],
        }
    return out


def idle(records):
    out = {}
    for r in records:
        if r["part"] != "idle" or not r["report"]:
            continue
        report = r["report"]
        out[r["system"]] = {
            "opened": report["opened"],
            "failed": report["failed"],
            "dropped": report["dropped"],
            "dropped_reasons": report.get("dropped_reasons", {}),
            "opened_per_s": report["opened_per_s"],
            "rss_before_bytes": (report.get("server") or {}).get("rss_before_bytes"),
            "checkpoints": report.get("checkpoints", []),
            "load": load_note([r]),
        }
    return out


def ceiling(records):
    mine = [r for r in records if r["part"] == "ceiling"]
    natter = [r for r in mine if r["system"] == "natter-services" and r["report"]]
    out = {
        "natter_acked_per_s": median([r["report"]["acked_per_s"] for r in natter]),
        "natter_delivered_per_s": median([r["report"]["delivered_per_s"] for r in natter]),
        "natter_costs": costs(natter),
        "load": load_note(mine),
    }
    for system in ("nats-js-sync", "nats-js-async", "nats-core-pub"):
        out[system.replace("-", "_") + "_per_s"] = median(
            [r["value"] for r in mine if r["system"] == system and r["value"]]
        )
    return out


def durable(records):
    out = {}
    for system in DURABLE_SYSTEMS:
        mine = [r for r in records if r["part"] == "durable" and r["system"] == system and r["report"]]
        if not mine:
            continue
        saturated = [r for r in mine if r["kind"] == "saturated"]
        half = [r for r in mine if r["kind"] == "half"]
        out[system] = {
            "stored_per_s": median([r["report"]["acked_per_s"] for r in saturated]),
            "offered_per_s": median([r["value"] for r in saturated]),
            "half_offered_per_s": median([r["value"] for r in half]),
            "ack_p50_ms": median([r["report"]["ack_latency"]["p50_ms"] for r in half]),
            "ack_p99_ms": median([r["report"]["ack_latency"]["p99_ms"] for r in half]),
            "saturated_costs": costs(saturated),
            "half_costs": costs(half),
            "load": load_note(mine),
        }
    return out


def desk(records):
    """The desk's cost: per system the saturated stored/s (median over
    rounds, and each round's), send → ack at half the baseline's rate, and
    the CPU seconds over the runs; then with ÷ without, per round and of
    the medians."""
    systems = {}
    for system in DESK_SYSTEMS:
        mine = [r for r in records if r["part"] == "desk" and r["system"] == system]
        saturated = sorted((r for r in mine if r["kind"] == "saturated" and r["report"]), key=lambda r: r["round"])
        if not saturated:
            continue
        half = [r for r in mine if r["kind"] == "half" and r["report"]]

        def figure(kind, rs=mine):
            return median([r["value"] for r in rs if r["kind"] == kind])

        systems[system] = {
            "stored_per_s": median([r["report"]["acked_per_s"] for r in saturated]),
            "rounds_stored_per_s": {r["round"]: r["report"]["acked_per_s"] for r in saturated},
            "delivered_per_s": median([r["report"]["delivered_per_s"] for r in saturated]),
            "offered_per_s": median([r["value"] for r in saturated]),
            "lost": sum(r["report"]["lost"] for r in saturated),
            "half_offered_per_s": median([r["value"] for r in half]),
            "ack_p50_ms": median([r["report"]["ack_latency"]["p50_ms"] for r in half]),
            "ack_p99_ms": median([r["report"]["ack_latency"]["p99_ms"] for r in half]),
            "half_lost": sum(r["report"]["lost"] for r in half),
            "saturated_services_cpu_s": figure("saturated_services_cpu_s"),
            "saturated_desk_cpu_s": figure("saturated_desk_cpu_s"),
            "saturated_nats_cpu_s": figure("saturated_nats_cpu_s"),
            "half_services_cpu_s": figure("half_services_cpu_s"),
            "half_desk_cpu_s": figure("half_desk_cpu_s"),
            "half_nats_cpu_s": figure("half_nats_cpu_s"),
            "desk_behind": max([r["value"] for r in mine if r["kind"].endswith("_desk_behind")
                                and r["value"] is not None], default=None),
            "saturated_costs": costs(saturated),
            "half_costs": costs(half),
            "load": load_note(saturated + half),
        }
    a = systems.get("natter-services-no-desk")
    b = systems.get("natter-services-desk")
    out = {"systems": systems, "budget": DESK_BUDGET}
    if a and b and a["stored_per_s"]:
        out["ratio"] = b["stored_per_s"] / a["stored_per_s"]
        out["cost"] = 1 - out["ratio"]
        out["rounds_ratio"] = {
            round_: b["rounds_stored_per_s"][round_] / stored
            for round_, stored in a["rounds_stored_per_s"].items()
            if stored and round_ in b["rounds_stored_per_s"]
        }
    return out


def sync(records):
    mine = [r for r in records if r["part"] == "sync" and r["report"]]
    catch = [r for r in mine if r["kind"] == "catch_up"]
    storms = {}
    for system in sorted({r["system"] for r in mine if r["kind"] == "storm"}, key=lambda s: s != "natter-single"):
        storm = [r for r in mine if r["kind"] == "storm" and r["system"] == system]
        storms[system] = {
            "devices": storm[0]["value"],
            "storm_s": median([r["report"]["storm_s"] for r in storm]),
            "never_back": sum(r["report"]["never_back"] for r in storm),
            "retries": median([r["report"]["retries"] for r in storm]),
            "p50_ms": median([r["report"]["reconnect_latency"]["p50_ms"] for r in storm]),
            "p99_ms": median([r["report"]["reconnect_latency"]["p99_ms"] for r in storm]),
            "server_cores": median([(r["report"].get("server") or {}).get("cores") for r in storm]),
            "load": load_note(storm),
        }
    return {
        "catch_up_messages": catch[0]["value"] if catch else None,
        "catch_up_s": median([r["report"]["catch_up_s"] for r in catch]),
        "catch_up_missing": sum(r["report"]["missing"] for r in catch),
        "catch_up_stored_per_s": median([r["report"]["stored_per_s"] for r in catch]),
        "storms": storms,
        "load": load_note([r for r in records if r["part"] == "sync"]),
    }


def scale(records):
    """The sessions held at once over several gateways, and each gateway's memory."""
    mine = [r for r in records if r["part"] == "scale"]
    if not mine:
        return {}
    gateways = []
    starts, ends = [], []
    for r in sorted(mine, key=lambda r: int(r["system"].rsplit("-", 1)[1])):
        report = r["report"] or {}
        server = report.get("server") or {}
        gateways.append({
            "gateway": r["system"],
            "sessions": r["value"],
            "held": report.get("held", 0),
            "failed": report.get("failed"),
            "dropped": report.get("dropped"),
            "opened_per_s": report.get("opened_per_s"),
            "open_p99_ms": (report.get("open_latency") or {}).get("p99_ms"),
            "rss_before_bytes": server.get("rss_before_bytes"),
            "rss_holding_bytes": server.get("rss_holding_bytes"),
            "per_connection_bytes": server.get("per_connection_bytes"),
            "client_per_connection_bytes": (report.get("client") or {}).get("per_connection_bytes"),
        })
        if report:
            # Each load generator holds from the end of its opening for
            # hold_s; the sessions were all open at once where these meet.
            start = report["run"]["started_unix_s"] + report["open_s"]
            starts.append(start)
            ends.append(start + report["hold_s"])
    together = min(ends) - max(starts) if starts and len(starts) == len(mine) else None
    return {
        "sessions": sum(g["sessions"] for g in gateways),
        "held": sum(g["held"] for g in gateways),
        "failed": sum(g["failed"] or 0 for g in gateways),
        "dropped": sum(g["dropped"] or 0 for g in gateways),
        # Start times are whole seconds: within a second.
        "held_together_s": together,
        "per_connection_bytes": median([g["per_connection_bytes"] for g in gateways]),
        "gateways": gateways,
        "load": load_note(mine),
    }


def fmt(value, digits=0, unit=""):
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{unit}"


def ratio(a, b):
    return a / b if a is not None and b else None


def verdict(ok):
    return "–" if ok is None else ("met" if ok else "**missed**")


def reasons(counts):
    if not counts:
        return ""
    return " (" + ", ".join(f"{reason}: {n:,}" for reason, n in counts.items()) + ")"


def lowest_tried(system):
    tried = [p["offered_per_s"] for p in system["ladder"]]
    return min(tried) if tried else None


def targets(results):
    """Each target of the message-path redesign: the measured figure,
    Centrifugo's from the same run, and met or missed."""
    rows = []
    f = results["fanout"]
    cf_mem = f.get("centrifugo-memory", {})
    cf_nats = f.get("centrifugo-nats", {})
    for natter, cf, label, want in (
            ("natter-single", cf_mem, "natter dev ÷ Centrifugo memory engine", 1.0),
            ("natter-services", cf_nats, "four services on NATS, embedded stores ÷ Centrifugo NATS broker", None),
            ("natter-services-cql", cf_nats, "four services on NATS + Cassandra ÷ Centrifugo NATS broker", 0.35)):
        if natter not in f:
            continue
        r = ratio(f[natter]["peak_delivered_per_s"], cf.get("peak_delivered_per_s"))
        peak = f[natter]["peak_delivered_per_s"]
        shown = (f"{fmt(peak)}/s ({fmt(r, 3)}×)" if peak else
                 f"none: p99 > 10 ms even at {fmt(lowest_tried(f[natter]))} msg/s")
        rows.append((f"delivered msgs/s at p99 ≤ 10 ms, {label}", f"≥ {want}×" if want else "–", shown,
                     f"{fmt(cf.get('peak_delivered_per_s'))}/s",
                     verdict(None if r is None or want is None else r >= want)))
        if want is None:
            continue
        p99 = f[natter]["half_p99_ms"]
        at = "" if peak else f" (no peak: at {fmt(f[natter]['half_offered_per_s'])} msgs/s)"
        rows.append((f"p99 send → deliver at 50 % of peak, {natter}", "< 5 ms",
                     fmt(p99, 2, " ms") + at, fmt(cf.get("half_p99_ms"), 2, " ms"),
                     verdict(None if p99 is None else p99 < 5)))
    d = results["durable"]
    for system, want in (("natter-single", 20_000), ("natter-cql", 5_000)):
        if system in d:
            stored = d[system]["stored_per_s"]
            rows.append((f"stored msgs/s, acked only when durable: {DURABLE_SYSTEMS[system]}", f"≥ {want:,}",
                         fmt(stored), "–", verdict(None if stored is None else stored >= want)))
    dk = results["desk"]
    if dk.get("ratio") is not None:
        a, b = (dk["systems"][s]["stored_per_s"] for s in DESK_SYSTEMS)
        rows.append(("routing's cost to the message path: 1 − stored msgs/s with the desk ÷ without "
                     "(50 pairs saturated, services on NATS, embedded stores)", f"< {DESK_BUDGET * 100:.0f} %",
                     f"{dk['cost'] * 100:.1f} % ({fmt(b)}/s ÷ {fmt(a)}/s = {dk['ratio']:.3f})", "–",
                     verdict(dk["cost"] < DESK_BUDGET)))
    paid = d.get("natter-services-cql", {})
    for key, label, want, digits in (("lwt_per_message", "LWTs per message in the steady state", 0, 2),
                                     ("nats_msgs_per_message", "NATS messages per 1:1 message", 6, 1)):
        counted = [c[key] for c in (paid.get("saturated_costs", {}), paid.get("half_costs", {})) if key in c]
        if counted:
            worst = max(counted)
            rows.append((f"{label} (50 pairs on the four services + Cassandra, saturated and at half)",
                         f"≤ {want}", " / ".join(fmt(c, digits) for c in counted), "–", verdict(worst <= want)))
    s = results["sync"]
    storms = s.get("storms", {})
    n, c = storms.get("natter-single"), storms.get("centrifugo-memory")
    if n:
        ok = n["never_back"] == 0 and n["storm_s"] is not None and n["storm_s"] <= 5 and (
            c is None or c["storm_s"] is None or n["storm_s"] < c["storm_s"])
        rows.append((f"reconnect storm, {n['devices']:,} devices, until all are back",
                     "≤ 5 s, faster than Centrifugo", fmt(n["storm_s"], 2, " s"),
                     fmt(c["storm_s"], 2, " s") if c else "–", verdict(ok)))
    i = results["idle"]
    n, c = i.get("natter-single"), i.get("centrifugo-memory")
    if n:
        last = n["checkpoints"][-1] if n["checkpoints"] else None
        cf_last = c["checkpoints"][-1] if c and c["checkpoints"] else None
        if last:
            per = last["per_connection_bytes"] / KIB
            rows.append((f"server memory per idle connection at {last['open']:,}, natter dev", "≤ 8 KiB",
                         fmt(per, 1, " KiB"),
                         fmt(cf_last["per_connection_bytes"] / KIB, 1, " KiB") if cf_last else "–",
                         verdict(per <= 8)))
    sc = results["scale"]
    if sc:
        per = sc["per_connection_bytes"]
        if per is not None:
            rows.append(("gateway memory per idle connection, four services on NATS (median of the gateways)",
                         "≤ 8 KiB", fmt(per / KIB, 1, " KiB"), "–", verdict(per / KIB <= 8)))
        together = sc["held_together_s"]
        held = sc["held"] >= 100_000 and not sc["failed"] and not sc["dropped"] and together and together > 0
        rows.append((f"concurrent idle connections held, {len(sc['gateways'])} gateways on one NATS",
                     "100,000, 0 failed",
                     f"{sc['held']:,} held ({sc['failed']:,} failed, {sc['dropped']:,} ended by a gateway), "
                     f"all at once for {fmt(together, 0, ' s')}",
                     "–", verdict(held)))
    if s.get("catch_up_s") is not None:
        rows.append((f"catch-up of {s['catch_up_messages']:,} missed messages", "< 0.1 s",
                     fmt(s["catch_up_s"], 3, " s"), "–",
                     verdict(s["catch_up_s"] < 0.1 and not s["catch_up_missing"])))
    ce = results["ceiling"]
    if ce.get("natter_acked_per_s") and ce.get("nats_js_async_per_s"):
        r = ce["nats_js_async_per_s"] / ce["natter_acked_per_s"]
        rows.append(("NATS path against nats bench (JetStream async publish)", "–",
                     f"{fmt(ce['natter_acked_per_s'])}/s vs {fmt(ce['nats_js_async_per_s'])}/s: {r:,.0f}× slower",
                     "–", verdict(None)))
    return rows


def markdown(results):
    m = results["meta"]
    mach, v = m["machine"], m["versions"]
    lines = [
        f"# Benchmark results, {m['date']}",
        "",
        f"Run `{m['stamp']}` of `loadtest/bench`{' --quick' if m['settings']['quick'] else ''}: "
        f"{m['settings']['rounds']} round(s) per comparison, systems alternating, medians reported; "
        f"{m['settings']['measured']} measured per run. Machine: {mach['nproc']} cores "
        f"({mach['cpu_model']}), {mach['memory_gib']} GiB, Linux {mach['kernel']}, open files limited to "
        f"{mach.get('open_files_limit', '?'):,} per process (hard limit); server and load "
        "generator share it. Versions: Natter " + v["natter"]
        + (f", Centrifugo {v['centrifugo']}" if v["centrifugo"] else "") + ", "
        f"{v['nats_server']}, natscli {v['natscli']}, {v['rustc']}.",
        "",
        "## Targets",
        "",
        "| figure | target | Natter | Centrifugo | |",
        "|---|---|---:|---:|---|",
    ]
    for row in targets(results):
        lines.append("| " + " | ".join(row) + " |")
    f = results["fanout"]
    if f:
        lines += [
            "",
            "## Fan-out: 1:1 conversations and groups of 10, 100-byte messages, WebSocket",
            "",
            "Systems: `natter-single` is `natter dev` (in-process bus, embedded store); `natter-services` "
            "the four services as four processes on NATS JetStream (storage and sync each with an embedded "
            "store); `natter-services-cql` the same with storage and sync on Cassandra (one keyspace per "
            "run), the production path; CPU and memory figures of both are the gateway's; "
            "`centrifugo-memory` and `centrifugo-nats` Centrifugo with its memory engine and with its NATS "
            "broker.",
            "",
            "Each device publishes its own messages and receives the other members'; delivered "
            "counts every receiving device (5 per offered message on average). Peak: the highest "
            "offered rate with p99 ≤ 10 ms, nothing lost or refused; then p50/p99 at half that rate.",
            "",
            "| system | peak delivered/s (rounds) | offered msgs/s | at 50 %: delivered/s | p50 | p99 | load |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for system, r in f.items():
            rounds = " · ".join(fmt(p["delivered_per_s"]) for p in r["peaks"])
            lines.append(
                f"| {system} | **{fmt(r['peak_delivered_per_s'])}** ({rounds}) | {fmt(r['peak_offered_per_s'])} | "
                f"{fmt(r['half_delivered_per_s'])} | {fmt(r['half_p50_ms'], 2, ' ms')} | "
                f"{fmt(r['half_p99_ms'], 2, ' ms')} | {r['load']} |"
            )
        lines += ["", "![latency against delivered throughput](" + results["plot"] + ")"]
    i = results["idle"]
    if i:
        lines += [
            "",
            "## Idle connections: server resident memory (from /proc)",
            "",
            "| system | connections | server RSS | per connection | opened/s | failed | ended by the server | load |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for system, r in i.items():
            for c in r["checkpoints"]:
                lines.append(
                    f"| {system} | {c['open']:,} | {c['rss_bytes'] / 2**20:,.0f} MiB | "
                    f"{c['per_connection_bytes'] / KIB:,.1f} KiB | {fmt(r['opened_per_s'])} | {r['failed']:,} | "
                    f"{r['dropped']:,}{reasons(r['dropped_reasons'])} | {r['load']} |"
                )
    sc = results["scale"]
    if sc:
        lines += [
            "",
            "## Horizontal scale: idle sessions over several gateways",
            "",
            f"{sc['sessions']:,} device sessions, each its own user, over {len(sc['gateways'])} gateway processes "
            "(`natter gateway`, each with ports of its own) on one NATS, beside one storage, sync and fanout "
            "(embedded stores); one load generator per gateway, all opening at once (no process here may hold "
            "more than the open-files limit). "
            f"**{sc['held']:,} held**, {sc['failed']:,} failed, {sc['dropped']:,} ended by a gateway; all open at "
            f"once for {fmt(sc['held_together_s'], 0, ' s')}. Memory from /proc: each gateway's resident memory "
            f"before its sessions and while holding them. Load: {sc['load']}.",
            "",
            "| gateway | sessions held | failed | opened/s | open p99 | RSS before → holding | per connection | "
            "load generator per connection |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for g in sc["gateways"]:
            rss = (f"{g['rss_before_bytes'] / 2**20:,.0f} → {g['rss_holding_bytes'] / 2**20:,.0f} MiB"
                   if g["rss_before_bytes"] is not None and g["rss_holding_bytes"] is not None else "–")
            per = g["per_connection_bytes"]
            client = g["client_per_connection_bytes"]
            lines.append(
                f"| {g['gateway']} | {g['held']:,} | {fmt(g['failed'])} | {fmt(g['opened_per_s'])} | "
                f"{fmt(g['open_p99_ms'], 0, ' ms')} | {rss} | {fmt(None if per is None else per / KIB, 1, ' KiB')} | "
                f"{fmt(None if client is None else client / KIB, 1, ' KiB')} |"
            )
    ce = results["ceiling"]
    if ce.get("natter_acked_per_s") is not None:
        lines += [
            "",
            "## Ceiling: Natter's NATS path against the raw broker",
            "",
            "| | msgs/s |",
            "|---|---:|",
            f"| Natter's four services on NATS, 50 pairs, sends acked, offered 2,000/s | {fmt(ce['natter_acked_per_s'])} |",
            f"| `nats bench js pub sync` (each publish acked before the next) | {fmt(ce.get('nats_js_sync_per_s'))} |",
            f"| `nats bench js pub async` (100 in flight) | {fmt(ce.get('nats_js_async_per_s'))} |",
            f"| `nats bench pub` (core NATS, no subscriber) | {fmt(ce.get('nats_core_pub_per_s'))} |",
            "",
            f"Load: {ce['load']}.",
        ]
    d = results["durable"]
    if d:
        lines += [
            "",
            "## Durable path: 50 pairs, sends acked only once stored",
            "",
            f"| store | stored msgs/s (offered {fmt(max(r.get('offered_per_s') or 0 for r in d.values()))}/s) "
            "| at 50 %: send → ack p50 | p99 | load |",
            "|---|---:|---:|---:|---|",
        ]
        for system, r in d.items():
            name = DURABLE_SYSTEMS[system]
            lines.append(
                f"| {name} | {fmt(r['stored_per_s'])} | {fmt(r['ack_p50_ms'], 2, ' ms')} | "
                f"{fmt(r['ack_p99_ms'], 2, ' ms')} | {r['load']} |"
            )
    dk = results["desk"]
    if dk.get("systems"):
        lines += [
            "",
            "## The desk's cost: 50 pairs on the services on NATS, without and with the desk",
            "",
            "The durable part's workload on the services as processes on NATS with embedded stores, "
            "alternating without the desk process and with it. With it, the traffic's tenant is first "
            "given a desk (`natter-load desk-setup`: one team and three agents, answered by the desk's "
            "holder), so the holder routes and consumes EVENTS through its own durable consumer while "
            "the messages flow. Saturated: offered more than it stores; then send → ack at half the "
            "baseline's saturated rate of the round, for both. CPU: seconds of CPU time over each run "
            "(set-up, ramp, warmup, measured window and drain), medians; behind: EVENTS deliveries "
            "the desk's consumers had not acknowledged after the drain, the most of any run.",
            "",
            "| system | stored msgs/s (rounds) | delivered/s | at 50 %: send → ack p50 | p99 "
            "| CPU s, saturated: services (desk) · NATS | desk behind | load |",
            "|---|---|---:|---:|---:|---|---:|---|",
        ]
        for system, r in dk["systems"].items():
            rounds = " · ".join(fmt(v) for _, v in sorted(r["rounds_stored_per_s"].items()))
            cpu = fmt(r["saturated_services_cpu_s"], 1)
            if r["saturated_desk_cpu_s"] is not None:
                cpu += f" ({fmt(r['saturated_desk_cpu_s'], 1)})"
            cpu += f" · {fmt(r['saturated_nats_cpu_s'], 1)}"
            lines.append(
                f"| {system}: {DESK_SYSTEMS[system]} | **{fmt(r['stored_per_s'])}** ({rounds}) | "
                f"{fmt(r['delivered_per_s'])} | {fmt(r['ack_p50_ms'], 2, ' ms')} | {fmt(r['ack_p99_ms'], 2, ' ms')} | "
                f"{cpu} | {fmt(r['desk_behind'])} | {r['load']} |"
            )
        if dk.get("ratio") is not None:
            per_round = " · ".join(f"{v:.3f}" for _, v in sorted(dk["rounds_ratio"].items()))
            lines += [
                "",
                f"With the desk ÷ without: **{dk['ratio']:.3f}** (medians; per round {per_round}), a cost of "
                f"{dk['cost'] * 100:.1f} % against a budget of {DESK_BUDGET * 100:.0f} %: {verdict(dk['cost'] < DESK_BUDGET)}.",
            ]
    rows = cost_rows(results)
    if rows:
        lines += [
            "",
            "## What a message costs",
            "",
            "Counted over each run's measured window and divided by the messages acked in it: NATS "
            "messages into the server (`in_msgs` of its `/varz`: publishes, acks, pulls, requests and "
            "replies), and the CQL statements and LWTs clients asked of the Cassandra node (its `CQL` "
            "and `Batch` metrics, a batch counting once; LWTs from `ClientRequest` `CASWrite` and "
            "`CASRead`, also counted among the statements). Medians over rounds; fan-out at half the "
            "peak rate.",
            "",
            "| part | system | offered msgs/s | NATS msgs | CQL statements | LWTs |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for part, system, rate, c in rows:
            lines.append(
                f"| {part} | {system} | {rate} | {fmt(c.get('nats_msgs_per_message'), 1)} | "
                f"{fmt(c.get('cql_statements_per_message'), 1)} | {fmt(c.get('lwt_per_message'), 2)} |"
            )
    s = results["sync"]
    if s.get("catch_up_s") is not None or s.get("storms"):
        lines += ["", "## Sync"]
    if s.get("catch_up_s") is not None:
        lines += [
            "",
            f"Catch-up (`natter dev`): a device returns after {fmt(s['catch_up_messages'])} missed messages and "
            f"has them all after **{fmt(s['catch_up_s'], 3, ' s')}** ({s['catch_up_missing']} missing); they were "
            f"stored at {fmt(s['catch_up_stored_per_s'])} msgs/s into the one conversation.",
        ]
    if s.get("storms"):
        lines += [
            "",
            "Reconnect storm: every device dropped at once, all reconnecting (retries with backoff and "
            "jitter). A Natter device is back at its `welcome`, having said `hello` with its cursor; a "
            "Centrifugo device once connected and subscribed to a channel of its own (no cursor, nothing "
            "to catch up).",
            "",
            "| system | devices | all back after | drop → back p50 | p99 | retries | never back | server cores | load |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for system, r in s["storms"].items():
            lines.append(
                f"| {system} | {fmt(r['devices'])} | **{fmt(r['storm_s'], 2, ' s')}** | {fmt(r['p50_ms'], 0, ' ms')} | "
                f"{fmt(r['p99_ms'], 0, ' ms')} | {fmt(r['retries'])} | {r['never_back']:,} | "
                f"{fmt(r['server_cores'], 2)} | {r['load']} |"
            )
    return "\n".join(lines) + "\n"


def cost_rows(results):
    """(part, system, offered rate, costs) for every figure with a cost counted."""
    rows = []
    for system, r in results["fanout"].items():
        if r.get("half_costs"):
            rows.append(("fan-out, mix:10", system, fmt(r["half_offered_per_s"]), r["half_costs"]))
    ce = results["ceiling"]
    if ce.get("natter_costs"):
        rows.append(("ceiling, 50 pairs", "natter-services", "2,000 (saturated)", ce["natter_costs"]))
    for system, r in results["durable"].items():
        if r.get("saturated_costs"):
            rows.append(("durable, 50 pairs", system, "1,500 (saturated)", r["saturated_costs"]))
        if r.get("half_costs"):
            rows.append(("durable, 50 pairs", system, fmt(r["half_offered_per_s"]), r["half_costs"]))
    for system, r in results["desk"].get("systems", {}).items():
        if r.get("saturated_costs"):
            rows.append(("desk, 50 pairs", system, f"{fmt(r['offered_per_s'])} (saturated)", r["saturated_costs"]))
        if r.get("half_costs"):
            rows.append(("desk, 50 pairs", system, fmt(r["half_offered_per_s"]), r["half_costs"]))
    return rows


def plot(results, path):
    f = results["fanout"]
    if not f:
        return False
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    colors = {"natter-single": "#3b5bdb", "natter-services": "#0ca678", "natter-nats": "#0ca678",
              "natter-services-cql": "#2b8a3e",
              "centrifugo-memory": "#e8590c", "centrifugo-nats": "#ae3ec9"}
    for system, r in f.items():
        # One point per offered rate: the medians of its runs.
        by_rate = {}
        for p in r["ladder"]:
            by_rate.setdefault(p["offered_per_s"], []).append(p)
        points = sorted(
            (
                {k: median([p[k] for p in runs]) for k in ("delivered_per_s", "p50_ms", "p99_ms")}
                for runs in by_rate.values()
            ),
            key=lambda p: p["delivered_per_s"],
        )
        points = [p for p in points if p["delivered_per_s"]]
        if not points:
            continue
        x = [p["delivered_per_s"] for p in points]
        color = colors.get(system, None)
        ax.plot(x, [p["p99_ms"] for p in points], "o-", color=color, label=f"{system} p99", alpha=0.85)
        ax.plot(x, [p["p50_ms"] for p in points], "s--", color=color, label=f"{system} p50", alpha=0.5)
    ax.axhline(10, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("delivered messages per second")
    ax.set_ylabel("send → deliver latency (ms), median of rounds")
    ax.set_title("Fan-out, 1:1 and groups of 10, 100 B, WebSocket: Natter vs Centrifugo")
    ax.grid(True, which="both", alpha=0.2)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    return True


def main():
    runs, out = Path(sys.argv[1]), Path(sys.argv[2])
    records = load_runs(runs)
    meta = json.loads((runs / "machine.json").read_text())
    # Named by the run's stamp, so a second run on one day keeps the first.
    name = meta["stamp"] + ("-quick" if meta["settings"]["quick"] else "")
    results = {
        "meta": meta,
        "fanout": fanout(records),
        "idle": idle(records),
        "ceiling": ceiling(records),
        "durable": durable(records),
        "desk": desk(records),
        "sync": sync(records),
        "scale": scale(records),
        "plot": f"{name}.png",
    }
    out.mkdir(parents=True, exist_ok=True)
    if not plot(results, out / f"{name}.png"):
        results["plot"] = None
    results["targets"] = [dict(zip(("figure", "target", "natter", "centrifugo", "verdict"), row))
                          for row in targets(results)]
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(results))
    print(out / f"{name}.md")


if __name__ == "__main__":
    main()
