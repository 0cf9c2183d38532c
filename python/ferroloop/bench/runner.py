"""``python -m ferroloop.bench``: every workload on every loop, repeated, paired and reported.

Each repetition runs every case on every loop, one loop right after the other, in an order that
rotates from one repetition to the next; ``stats`` then compares loops within a repetition. Every
measurement runs in a fresh child process pinned to one CPU (the load generator to the other),
so loops never share an interpreter and never compete with their load for a core.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

from . import (
    callgrind,
    conns,
    echo,
    http_hello,
    loops,
    micro,
    pipe_pingpong,
    report,
    stats,
    subprocs,
    system,
    tls_echo,
    udp_echo,
)

#: name -> module; each has TITLE, units(ctx) -> [(unit, [case names])] and
#: run(unit, loop, ctx) -> iterator of records (see ``stats``), one per case of the unit.
#: Optionally check(ctx) -> why it cannot run here (or None) and setup_note(ctx) -> a line for
#: the report.
FAMILIES = {
    "micro": micro,
    "echo": echo,
    "udp": udp_echo,
    "http": http_hello,
    "tls": tls_echo,
    "subprocess": subprocs,
    "pipe": pipe_pingpong,
    "conns": conns,
    "callgrind": callgrind,
}

#: What runs without ``--only``: every family but callgrind (minutes of valgrind), which
#: ``--callgrind`` adds.
DEFAULT_FAMILIES = tuple(name for name in FAMILIES if name != "callgrind")

#: Families whose load generator is ferroloop-echoclient.
NEED_ECHOCLIENT = ("echo", "udp", "tls", "conns")

#: The loop the report compares with the best of the others, row by row.
SUBJECT = "ferroloop"

#: Per-mode defaults: repetitions, echo warm-up and measured seconds per run, micro seconds per run.
PROFILES = {
    "full": {
        "reps": 3,
        "warmup": 0.3,
        "duration": 1.0,
        "micro_time": 0.5,
        "quiet_wait": 1.0,
        "retries": 1,
    },
    "quick": {
        "reps": 1,
        "warmup": 0.12,
        "duration": 0.35,
        "micro_time": 0.2,
        "quiet_wait": 0.5,
        "retries": 1,
    },
}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m ferroloop.bench",
        description="Run ferroloop's benchmarks on asyncio, uvloop, rloop, zuvloop and ferroloop side by side.",
    )
    parser.add_argument("--quick", action="store_true", help="one short repetition (~1.5 minutes)")
    parser.add_argument(
        "--loops",
        default="asyncio,uvloop,rloop,zuvloop,ferroloop",
        help="comma-separated: asyncio, uvloop, rloop, zuvloop, ferroloop or module:factory; one that is "
        "not installed is noted as skipped (asyncio is always the baseline)",
    )
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_FAMILIES),
        help=f"families: {','.join(FAMILIES)} (default: all but callgrind)",
    )
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="add the callgrind family: instructions per operation of the micro cases",
    )
    parser.add_argument("--filter", default="", help="only cases whose name contains this text")
    parser.add_argument(
        "--out", type=Path, help="directory for report.md, results.json, ratios.png"
    )
    parser.add_argument("--reps", type=int, help="repetitions (full: 3, quick: 1)")
    parser.add_argument("--duration", type=float, help="measured seconds per echo run (full: 1.0)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per echo run (full: 0.3)")
    parser.add_argument("--micro-time", type=float, help="seconds per micro run (full: 0.5)")
    parser.add_argument("--conns", type=int, default=10, help="echo connections (default 10)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="seconds to wait for other processes to go idle before each run (full: 1, quick: 0.5)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=-10 if os.geteuid() == 0 else 0,
        help="niceness of the benchmark and its children, so that other processes disturb it "
        "less (default -10 as root, else unchanged)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        help="repeats of a run disturbed by other processes (default 1)",
    )
    args = parser.parse_args(argv)
    for key, value in PROFILES["quick" if args.quick else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.loops = [name for name in args.loops.split(",") if name]
    args.only = [name for name in args.only.split(",") if name]
    if args.callgrind and "callgrind" not in args.only:
        args.only.append("callgrind")
    unknown = [name for name in args.only if name not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {','.join(FAMILIES)}")
    return args


def resolve_loops(names, notes):
    """(available loop names, baseline first; name -> version); unavailable ones become notes."""
    if loops.BASELINE not in names:
        names = [loops.BASELINE, *names]
    found = {}
    for name in dict.fromkeys(names):
        try:
            loops.factory(name)
            found[name] = loops.version(name)
        except (ImportError, AttributeError, ValueError) as e:
            notes.append(f"{name} skipped: not importable ({e})")
    return list(found), found


def find_echoclient(root, notes, users="echo"):
    """The load generator's path: $FERROLOOP_ECHOCLIENT, else built with cargo in the checkout.
    ``users`` names the families that need it, for the notes."""
    if os.environ.get("FERROLOOP_ECHOCLIENT"):
        return os.environ["FERROLOOP_ECHOCLIENT"]
    if root is None:
        notes.append(
            f"{users} skipped: set FERROLOOP_ECHOCLIENT (not running from a ferroloop checkout)"
        )
        return None
    target = Path(os.environ.get("CARGO_TARGET_DIR") or root / "target")
    binary = target / "release" / "ferroloop-echoclient"
    if shutil.which("cargo"):
        print("building ferroloop-echoclient (cargo build --release) ...", flush=True)
        build = subprocess.run(
            ["cargo", "build", "--release", "-q", "-p", "ferroloop-echoclient"],
            cwd=root,
            capture_output=True,
            text=True,
        )
        if build.returncode != 0:
            notes.append(
                f"cargo build of ferroloop-echoclient failed: {build.stderr.strip()[-300:]}"
            )
    if binary.is_file():
        return str(binary)
    notes.append(f"{users} skipped: no {binary} (cargo build --release -p ferroloop-echoclient)")
    return None


def progress_line(i, total, rep, family, loop, record):
    if "error" in record:
        what = "FAIL " + record["error"][:80]
    else:
        what = f"{report.si(record['value'])} {record['unit']}"
        if "cpu_us" in record:
            what += f"  cpu {record['cpu_us']:.3g} µs/req  busy {record['server_busy']:.0%}"
            what += f"  p50 {record['p50_us']:.0f} µs  p99 {record['p99_us']:.0f} µs"
        if "client_busy" in record:
            what += f"  client {record['client_busy']:.0%}"
        if record.get("lost"):
            what += f"  lost {record['lost']}"
        if record.get("other_cpu", 0) > system.MAX_OTHER:
            what += f"  [other processes used {record['other_cpu']:.2f} cores]"
    return f"[{i:>3}/{total}] rep {rep + 1}  {family:<10} {record['case']:<22} {loop:<10} {what}"


def measure_all(plan, families, loop_names, reps, total, ctx):
    """Every unit of the plan on every loop, ``reps`` times; returns (records, interrupted)."""
    records = []
    try:
        with tempfile.TemporaryDirectory(prefix="ferroloop-bench-") as tmpdir:
            ctx.tmpdir = tmpdir
            for rep in range(reps):
                shift = rep % len(loop_names)
                order = loop_names[shift:] + loop_names[:shift]
                for name, unit, _cases in plan:
                    for loop in order:
                        for record in families[name].run(unit, loop, ctx):
                            record.update(family=name, loop=loop, rep=rep)
                            records.append(record)
                            line = progress_line(len(records), total, rep, name, loop, record)
                            print(line, flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: reporting what was measured so far", flush=True)
        return records, True
    return records, False


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    root = system.repo_root()
    notes = []
    if args.nice:
        # Children inherit it: servers, micro cases and the load generator all run at this level.
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    loop_names, versions = resolve_loops(args.loops, notes)
    server_cpu, client_cpu = system.bench_cpus()
    ctx = types.SimpleNamespace(
        python=sys.executable,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        echoclient=None,
        conns=args.conns,
        warmup=args.warmup,
        duration=args.duration,
        micro_time=args.micro_time,
        quiet_wait=args.quiet_wait,
        retries=args.retries,
        wanted=lambda case: args.filter in case,
        tmpdir=None,
        root=root,
        wrk=shutil.which("wrk"),
    )
    families = {name: FAMILIES[name] for name in args.only}
    for name, family in list(families.items()):
        why = family.check(ctx) if hasattr(family, "check") else None
        if why:
            notes.append(why)
            del families[name]
    users = [name for name in NEED_ECHOCLIENT if name in families and families[name].units(ctx)]
    if users:
        ctx.echoclient = find_echoclient(root, notes, ",".join(users))
        if ctx.echoclient is None:
            for name in users:
                del families[name]
    plan = [
        (name, unit, cases)
        for name, family in families.items()
        for unit, cases in family.units(ctx)
    ]
    machine = system.machine_info(root)
    setup = {
        name: family.setup_note(ctx)
        for name, family in families.items()
        if hasattr(family, "setup_note") and family.units(ctx)
    }

    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.out is None:
        base = root / "bench" / "results" if root else Path.cwd() / "ferroloop-bench-results"
        args.out = base / stamp
    args.out.mkdir(parents=True, exist_ok=True)
    total = args.reps * len(loop_names) * sum(len(cases) for _, _, cases in plan)

    print(f"ferroloop.bench: {'quick' if args.quick else 'full'} run, {args.reps} repetition(s)")
    print(f"  {machine['cpu']}, {machine['cores']} cores, {machine['kernel']}, {machine['python']}")
    print("  loops: " + ", ".join(f"{name} {version}" for name, version in versions.items()))
    for note in notes:
        print(f"  note: {note}")
    print(f"  {total} measurements; report in {args.out}", flush=True)

    started = time.monotonic()
    records, interrupted = measure_all(plan, families, loop_names, args.reps, total, ctx)

    subject = SUBJECT if SUBJECT in loop_names else None
    rows = stats.summarize(records, loop_names, loops.BASELINE, subject, system.MAX_OTHER)
    meta = {
        "command": " ".join(
            ["python -m ferroloop.bench", *(sys.argv[1:] if argv is None else argv)]
        ),
        "mode": "quick" if args.quick else "full",
        "machine": machine,
        "loops": versions,
        "notes": notes,
        "setup": setup,
        "interrupted": interrupted,
        "seconds": round(time.monotonic() - started, 1),
        "options": {
            k: getattr(args, k)
            for k in (
                "reps",
                "warmup",
                "duration",
                "micro_time",
                "conns",
                "quiet_wait",
                "retries",
                "nice",
            )
        },
    }
    family_titles = [(name, family.TITLE) for name, family in families.items()]
    text = report.write(
        args.out,
        meta,
        records,
        rows,
        family_titles,
        loop_names,
        loops.BASELINE,
        subject,
        system.MAX_OTHER,
    )
    # The console gets the report without its reading guide, which is in the file.
    before, _, rest = text.partition("## How to read")
    print("\n" + before + rest[rest.index("\n## ") + 1 :] if rest else text)
    print(f"done in {meta['seconds']:.0f} s; wrote {args.out}/report.md and results.json", end="")
    print(
        ", ratios.png" if "](ratios.png)" in text else " (no chart: matplotlib is not importable)"
    )
    return 130 if interrupted else 0
