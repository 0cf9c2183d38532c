"""Tables, the Markdown report and the chart of the ratios, from ``stats.summarize`` rows."""

import json

HOW_TO_READ = """\
* The baseline column is asyncio's absolute figure: the median over repetitions, then ±(max-min)/median.
* The other columns are **paired ratios to asyncio**: in each repetition the loop's figure is divided
  by asyncio's from the same repetition; the table shows the median of those ratios, with their
  range in parentheses when there were several repetitions. **Above 1 is better** everywhere:
  throughput is loop/asyncio, CPU per request is asyncio/loop.
* `ferroloop/best peer` is the same paired ratio between ferroloop and the best of the other loops
  in that row (asyncio aside, and only among those that ran it), named after the ratio: the loop
  ferroloop fares worst against, metric by metric.
* *CPU µs/req* is the echo server's CPU time (user + system, all threads) per request, from the
  kernel's accounting of the server process over the measured run. At small messages one server
  core plus one client core saturate loopback, so this is the fairer figure there.
* *p50/p99 µs* is the latency the load generator saw, from a message's first byte written to its
  echo's last byte read (median over repetitions). *server busy* is the server's CPU seconds per
  second: well below 100% means the server was not the bottleneck and the throughput ratio
  understates the difference.
* *client busy* is the load generator's share of the run spent working: for
  ferroloop-echoclient the time it spent handling events (it spins while idle), for wrk its CPU
  time. Near 100% means the client, not the server, limited throughput: compare CPU per request.
* *lost* (UDP) is the number of datagrams per measured run that got no echo within the timeout
  and were sent again (median over repetitions).
* Rows in *ms/proc* (subprocesses) are times, lower is better; their ratios are asyncio's time
  over the loop's, so above 1 is better there too.
"""


def si(x):
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= limit:
            return f"{x / limit:.3g}{suffix}"
    return f"{x:.3g}"


def _ratio(r, reps, digits=2):
    if r is None:
        return "-"
    text = f"{r['median']:.{digits}f}x"
    if reps > 1 and r["max"] - r["min"] >= 0.005:
        text += f" ({r['min']:.2f}-{r['max']:.2f})"
    return text


def _versus(r, reps):
    """A ratio to the best peer, with the peer's name."""
    return "-" if r is None else f"{_ratio(r, reps)} {r['peer']}"


def _fail(cell):
    return "FAIL: " + cell["error"][:60].replace("|", "/")


def family_table(rows, loops, baseline, subject, reps):
    """(header, lines) of one family's table; every cell a short string."""
    has_cpu = any("cpu_us" in c for row in rows for c in row["cells"].values())
    has_latency = any("p50_us" in c for row in rows for c in row["cells"].values())
    has_client = any("client_busy" in c for row in rows for c in row["cells"].values())
    has_lost = any("lost" in c for row in rows for c in row["cells"].values())
    units = {row["unit"] for row in rows}
    versus = subject and any("versus" in row for row in rows)
    vs_name = f"{subject}/best peer" if versus else None
    others = [loop for loop in loops if loop != baseline]

    unit_column = len(units) > 1
    base_head = baseline if unit_column else f"{baseline} {next(iter(units))}"
    header = ["case", *(["unit"] if unit_column else []), base_head, *others]
    if versus:
        header.append(vs_name)
    if has_cpu:
        header += [f"{baseline} CPU µs/req", *(f"{loop} CPU" for loop in others)]
        if versus:
            header.append(f"{vs_name} CPU")
    if has_latency:
        header += [f"p50/p99 µs {loop}" for loop in loops]
        header.append("server busy " + "/".join(loops))
    if has_client:
        header.append("client busy " + "/".join(loops))
    if has_lost:
        header.append("lost " + "/".join(loops))

    lines = []
    for row in rows:
        cells = row["cells"]
        base = cells.get(baseline, {})
        line = [row["case"], *([row["unit"]] if unit_column else [])]
        if "value" in base:
            spread = f" ±{base['value_spread']:.0%}" if reps > 1 else ""
            line.append(si(base["value"]) + spread)
        else:
            line.append(_fail(base) if "error" in base else "-")
        for loop in others:
            cell = cells.get(loop, {})
            line.append(_fail(cell) if "error" in cell else _ratio(cell.get("ratio"), reps))
        if versus:
            line.append(_versus(row.get("versus", {}).get("value"), reps))
        if has_cpu:
            line.append(f"{base['cpu_us']:.3g}" if "cpu_us" in base else "-")
            for loop in others:
                line.append(_ratio(cells.get(loop, {}).get("cpu_ratio"), reps))
            if versus:
                line.append(_versus(row.get("versus", {}).get("cpu_us"), reps))
        if has_latency:
            for loop in loops:
                cell = cells.get(loop, {})
                ok = "p50_us" in cell
                line.append(f"{cell['p50_us']:.0f}/{cell['p99_us']:.0f}" if ok else "-")
            busy = [cells.get(loop, {}).get("server_busy") for loop in loops]
            line.append("/".join("-" if b is None else f"{b:.0%}" for b in busy))
        if has_client:
            busy = [cells.get(loop, {}).get("client_busy") for loop in loops]
            line.append("/".join("-" if b is None else f"{b:.0%}" for b in busy))
        if has_lost:
            lost = [cells.get(loop, {}).get("lost") for loop in loops]
            line.append("/".join("-" if n is None else f"{n:.0f}" for n in lost))
        lines.append(line)
    return header, lines


def markdown_table(header, lines):
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]

    def fmt(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), rule, *(fmt(line) for line in lines)])


def behind(rows, subject, reps):
    """Lines naming the rows where ``subject`` is behind the best peer."""
    found = []
    for row in rows:
        versus = row.get("versus") or {}
        worse = []
        for metric in ("value", "cpu_us"):
            r = versus.get(metric)
            if not r or r["median"] >= 1:
                continue
            peer = r["peer"]
            note = " (its range reaches 1)" if reps > 1 and r["max"] >= 1 else ""
            if metric == "cpu_us":
                label = "CPU per request"
            elif row.get("lower_is_better"):
                # Said as measured (ms/proc, instr/op): the subject's figure over the peer's.
                label = row["unit"]
                r = {"median": 1 / r["median"], "min": 1 / r["max"], "max": 1 / r["min"]}
            else:
                label = "throughput"
            digits = 3 if 0.995 <= r["median"] <= 1.005 else 2
            worse.append(f"{label} {_ratio(r, reps, digits)} of {peer}'s{note}")
        if worse:
            found.append(f"- {row['family']} / {row['case']}: {subject} {', '.join(worse)}")
    return found


#: A load generator busy this much of a run limited the throughput itself.
CLIENT_BOUND = 0.9


def family_notes(rows, records, name):
    """Lines under a family's table: what the load generator reported (deduplicated), and the
    rows where it, not the server, was the bottleneck."""
    lines = []
    ok = [r for r in records if r["family"] == name and "error" not in r]
    by_note = {}
    for r in ok:
        if r.get("note"):
            by_note.setdefault(r["note"], []).append(f"{r['case']} on {r['loop']}")
    for note, runs in by_note.items():
        runs = list(dict.fromkeys(runs))
        where = "every run" if len(runs) == len({(r["case"], r["loop"]) for r in ok}) else None
        if where is None:
            where = ", ".join(runs[:4]) + (f" and {len(runs) - 4} more" if len(runs) > 4 else "")
        lines.append(f"- {note} ({where})")
    bound = []
    for row in rows:
        loops = [
            loop
            for loop, cell in row["cells"].items()
            if cell.get("client_busy", 0) >= CLIENT_BOUND
        ]
        if loops:
            bound.append(f"{row['case']} ({', '.join(loops)})")
    if bound:
        lines.append(
            f"- The load generator was busy at least {CLIENT_BOUND:.0%} of the run in "
            f"{'; '.join(bound)}: there it limited throughput, so the throughput ratios understate "
            "the differences between loops and CPU per request is the fair comparison."
        )
    return lines


def failures(records):
    """One line per distinct error: how many runs failed with it, and which."""
    by_error = {}
    for r in records:
        if "error" in r:
            by_error.setdefault(r["error"], []).append(
                f"{r['case']} on {r['loop']} (rep {r['rep'] + 1})"
            )
    lines = []
    for error, runs in by_error.items():
        shown = ", ".join(runs[:4]) + (f" and {len(runs) - 4} more" if len(runs) > 4 else "")
        lines.append(f"- {len(runs)} run(s): `{error}`: {shown}")
    return lines


def disturbed(records, max_other):
    return [
        f"- {r['family']} / {r['case']} on {r['loop']}, repetition {r['rep'] + 1}: "
        f"{r['other_cpu']:.2f} cores"
        for r in records
        if r.get("other_cpu", 0) > max_other
    ]


def chart(rows, loops, baseline, path):
    """Write a PNG of every row's ratios to the baseline; returns None, or why there is none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no chart: matplotlib is not importable (pip install matplotlib to get ratios.png)"
    others = [loop for loop in loops if loop != baseline]
    if not others or not rows:
        return "no chart: there is no loop to compare with the baseline"
    labels = [f"{row['family']}: {row['case']}" for row in rows][::-1]
    panels = [("ratio", "throughput (for subprocesses: speed) vs asyncio")]
    if any(c.get("cpu_ratio") for row in rows for c in row["cells"].values()):
        panels.append(("cpu_ratio", "server CPU per request vs asyncio (asyncio/loop)"))
    fig, axes = plt.subplots(
        1,
        len(panels),
        sharey=True,
        squeeze=False,
        figsize=(6 * len(panels) + 2.5, 0.26 * len(rows) + 1.6),
    )
    height = 0.8 / len(others)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        low, high = 0.8, 1.25
        for i, loop in enumerate(others):
            ratios = [(row["cells"].get(loop, {}).get(key) or {}).get("median", 1) for row in rows]
            low, high = min(low, *ratios), max(high, *ratios)
            ys = [y + (i - (len(others) - 1) / 2) * height for y in range(len(rows))]
            # Bars grow from 1 on a log scale: 2x better and 2x worse are equally long.
            ax.barh(ys, [r - 1 for r in ratios[::-1]], left=1, height=height, label=loop)
        ax.set_xscale("log")
        ax.set_xlim(low / 1.1, high * 1.1)
        steps = (0.25, 0.5, 1, 2, 4, 8) if high / low > 4 else (0.5, 0.67, 0.8, 1, 1.25, 1.5, 2)
        ticks = [t for t in steps if low / 1.1 <= t <= high * 1.1]
        ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
        ax.minorticks_off()
        ax.axvline(1, color="black", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("ratio to asyncio, log scale (right of 1x is better)")
    axes[0][0].set_yticks(range(len(rows)), labels, fontsize=8)
    axes[0][0].set_ylim(-0.6, len(rows) - 0.4)
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write(out_dir, meta, records, rows, families, loops, baseline, subject, max_other):
    """Write results.json, report.md and ratios.png into ``out_dir``; returns the Markdown."""
    reps = meta["options"]["reps"]
    (out_dir / "results.json").write_text(
        json.dumps({"meta": meta, "records": records, "table": rows}, indent=1) + "\n"
    )
    chart_note = chart(rows, loops, baseline, out_dir / "ratios.png")

    m = meta["machine"]
    md = ["# ferroloop benchmarks", ""]
    md.append(f"`{meta['command']}`: {meta['mode']} run, {reps} repetition(s), {m['date']}.")
    if meta.get("interrupted"):
        md.append("\n**Interrupted**: the tables hold what was measured before the interruption.")
    md += ["", "## Machine and versions", "", "| | |", "|---|---|"]
    md.append(f"| CPU | {m['cpu']}, {m['cores']} cores ({m['usable_cpus']} usable) |")
    md.append(f"| memory | {m['memory']} |")
    md.append(f"| kernel | {m['kernel']} |")
    md.append(f"| Python | {m['python']} |")
    for loop, version in meta["loops"].items():
        extra = (
            f" (commit {m['ferroloop_commit']})"
            if loop == "ferroloop" and m["ferroloop_commit"]
            else ""
        )
        md.append(f"| {loop} | {version}{extra} |")
    for note in meta["notes"]:
        md.append(f"| note | {note} |")
    md.append(f"| pinning | {m['pinning']}; niceness {meta['options']['nice']} |")
    md.append(f"| load average at start | {m['load_average']} |")
    opts = meta["options"]
    md.append(
        f"| options | echo, udp, tls: {opts['conns']} connections, {opts['warmup']} s warm-up + "
        f"{opts['duration']} s per run; micro, pipe: {opts['micro_time']} s per run; up to "
        f"{opts['quiet_wait']} s wait for other processes to go idle before each run and "
        f"{opts['retries']} retry of a disturbed run |"
    )
    for name, text in meta.get("setup", {}).items():
        md.append(f"| {name} | {text} |")
    md += ["", "## How to read", "", HOW_TO_READ]

    for name, title in families:
        family_rows = [row for row in rows if row["family"] == name]
        if family_rows:
            header, lines = family_table(family_rows, loops, baseline, subject, reps)
            md += [f"## {title}", "", markdown_table(header, lines), ""]
            notes = family_notes(family_rows, records, name)
            if notes:
                md += [*notes, ""]

    if any("versus" in row for row in rows):
        md += [f"## Rows where {subject} is behind the best peer", ""]
        md += behind(rows, subject, reps) or ["None."]
        md.append("")
    failed = failures(records)
    if failed:
        md += ["## Failures", "", *failed, ""]
    noisy = disturbed(records, max_other)
    if noisy:
        md += ["## Runs disturbed by other processes", ""]
        md.append(
            f"Processes outside the benchmark used more than {max_other} cores during these runs, "
            "even after retries (the least disturbed attempt is kept). Medians and ratios leave "
            "them out wherever an undisturbed repetition of the same case remains:"
        )
        md += ["", *noisy, ""]
    md += ["## Chart", ""]
    md.append(chart_note or "![ratios to asyncio](ratios.png)")
    md += ["", "Method and workloads: bench/README.md in the ferroloop repository.", ""]
    text = "\n".join(md)
    (out_dir / "report.md").write_text(text)
    return text
