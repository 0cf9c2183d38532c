"""From raw records to table rows: medians over repetitions and paired ratios.

A record is one measurement: ``family``, ``case``, ``loop``, ``rep`` and either ``error`` or
``value`` (throughput, higher is better) with, for network cases, ``cpu_us`` (server CPU time per
request, lower is better), ``p50_us``, ``p99_us`` and ``server_busy`` (server CPU seconds per
second), and possibly ``client_busy`` (the load generator's busy fraction) and ``lost``
(datagrams lost and re-sent). A record with ``lower_is_better`` has a ``value`` where lower is
better (e.g. milliseconds per process); its ratios are then inverted like CPU per request's, so
that above 1 is better everywhere.

A ratio compares two loops **within one repetition** (every repetition runs every loop on every
case, one right after the other), and a row shows the median of those per-repetition ratios
with their range. A drift of the machine between repetitions thus cancels out of the ratios,
while it stays in the absolute figures. Runs that other processes disturbed (``other_cpu`` above
``max_other`` cores) are left out whenever an undisturbed repetition of the same case remains.
"""

import statistics

#: metric -> True when a higher figure is better. Ratios are oriented so that above 1 is better.
METRICS = {
    "value": True,
    "cpu_us": False,
    "p50_us": False,
    "p99_us": False,
    "server_busy": True,
    "client_busy": True,
    "lost": False,
}


def _paired(mine, theirs, metric, higher=None):
    """Median, min and max over repetitions of mine/theirs (theirs/mine for lower-is-better)."""
    higher = METRICS[metric] if higher is None else higher
    ratios = []
    for rep, record in mine.items():
        other = theirs.get(rep)
        a, b = record.get(metric), other and other.get(metric)
        if a and b:
            ratios.append(a / b if higher else b / a)
    if not ratios:
        return None
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def _pair(ok, clean, a, b, metric, higher=None):
    """Paired a/b over the repetitions where neither was disturbed, else over all of them."""
    return _paired(clean[a], clean[b], metric, higher) or _paired(ok[a], ok[b], metric, higher)


def _versus_best(ok, clean, subject, peers, higher):
    """metric -> the paired ``subject``/peer ratio against the peer it fares worst against (the
    best peer on that metric in that row), with that peer's name as ``peer``; None where no peer
    has a figure."""
    versus = {}
    for metric in ("value", "cpu_us"):
        best = None
        for peer in peers:
            if not ok.get(peer):
                continue
            r = _pair(ok, clean, subject, peer, metric, higher.get(metric))
            if r and (best is None or r["median"] < best["median"]):
                best = {**r, "peer": peer}
        versus[metric] = best
    return versus


def summarize(records, loops, baseline, subject=None, max_other=float("inf")):
    """Table rows, in the order cases were first measured. Each row has ``family``, ``case``,
    ``unit`` and ``cells``: loop -> {metric: median, metric_spread: (max-min)/median,
    ``ratio``/``cpu_ratio``: paired ratio to the baseline, ``reps`` used, ``error`` when no
    repetition succeeded}, and ``lower_is_better`` when its values are times. With a
    ``subject`` (ferroloop) a row also has ``versus``: metric -> the paired subject/peer ratio
    against the best of the other loops but the baseline (see ``_versus_best``)."""
    grouped = {}
    for record in records:
        key = (record["family"], record["case"])
        grouped.setdefault(key, {}).setdefault(record["loop"], {})[record["rep"]] = record
    rows = []
    for (family, case), by_loop in grouped.items():
        ok = {
            loop: {rep: rec for rep, rec in reps.items() if "error" not in rec}
            for loop, reps in by_loop.items()
        }
        clean = {
            loop: {rep: rec for rep, rec in reps.items() if rec.get("other_cpu", 0) <= max_other}
            for loop, reps in ok.items()
        }
        unit = next(rec["unit"] for reps in by_loop.values() for rec in reps.values())
        lower = any(
            rec.get("lower_is_better") for reps in by_loop.values() for rec in reps.values()
        )
        higher = {"value": not lower}
        cells = {}
        for loop in loops:
            if loop not in by_loop:
                continue
            used = clean[loop] or ok[loop]
            cell = {"reps": len(used)}
            if not ok[loop]:
                cell["error"] = next(iter(by_loop[loop].values()))["error"]
            for metric in METRICS:
                values = [rec[metric] for rec in used.values() if rec.get(metric) is not None]
                if values:
                    middle = statistics.median(values)
                    cell[metric] = middle
                    cell[metric + "_spread"] = (max(values) - min(values)) / middle if middle else 0
            if loop != baseline and baseline in ok:
                cell["ratio"] = _pair(ok, clean, loop, baseline, "value", not lower)
                cell["cpu_ratio"] = _pair(ok, clean, loop, baseline, "cpu_us")
            cells[loop] = cell
        row = {"family": family, "case": case, "unit": unit, "cells": cells}
        if lower:
            row["lower_is_better"] = True
        peers = [loop for loop in loops if loop not in (baseline, subject) and loop in ok]
        if subject and ok.get(subject) and peers:
            row["versus"] = _versus_best(ok, clean, subject, peers, higher)
        rows.append(row)
    return rows
