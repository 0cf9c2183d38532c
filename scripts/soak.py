#!/usr/bin/env python3
"""``make soak``: many connections for a long time on each backend, watching for growth.

For each backend, an echo server (a ``Protocol`` that writes back what it receives, on
``ferroloop.new_event_loop(backend=...)``) serves ``--conns`` connections of
``ferroloop-echoclient`` (each sends ``--size`` bytes, waits for the echo, sends again) for
``--minutes``. Every ``--every`` seconds the server prints the bytes it echoed so far, and this
script samples the server's RSS (``/proc/PID/status``) and open fds (``/proc/PID/fd``). It prints
one table per backend and a verdict: after the warm-up (the first ``--warmup`` seconds), RSS and
the fd count must stay within ``--tolerance`` (5 %) of their first value after warm-up, and every
sample must show echoes. With matplotlib installed it also writes ``soak.png``.

    python scripts/soak.py                         # 10,000 connections, 10 minutes per backend
    python scripts/soak.py --minutes 1 --conns 2000 --backends epoll,io_uring

Not part of CI (it takes 40 minutes); its figures go in the notes. Exit status 1 if a backend
grew beyond the tolerance or stopped echoing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SERVER = r"""
import asyncio, socket, sys, threading, time
import ferroloop

backend, every = sys.argv[1], float(sys.argv[2])
echoed = 0

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        global echoed
        echoed += len(data)
        self.transport.write(data)

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096)
    host, port = server.sockets[0].getsockname()
    print(f"READY {host}:{port}", flush=True)
    while True:
        await asyncio.sleep(every)
        print(f"ECHOED {echoed}", flush=True)

loop = ferroloop.new_event_loop(backend=backend)
loop.run_until_complete(main())
"""


def echoclient():
    found = os.environ.get("FERROLOOP_ECHOCLIENT")
    if found:
        return found
    subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "ferroloop-echoclient"], cwd=ROOT, check=True
    )
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "ferroloop-echoclient")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def soak(backend, args, client):
    server = subprocess.Popen(
        [args.python, "-c", SERVER, backend, str(args.every)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    samples = []
    try:
        ready = server.stdout.readline().split()
        if not ready or ready[0] != "READY":
            return {"backend": backend, "error": "the server did not start"}
        seconds = args.minutes * 60
        load = subprocess.Popen(
            [client, "--tcp", ready[1], "--size", str(args.size), "--conns", str(args.conns)]
            + ["--duration", str(seconds), "--no-spin"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        start = time.monotonic()
        last = 0
        while load.poll() is None:
            readable, _, _ = select.select([server.stdout], [], [], args.every * 2)
            if not readable:
                if server.poll() is not None:
                    break
                continue
            line = server.stdout.readline()
            if not line:
                break
            if line.startswith("ECHOED ") and load.poll() is None:
                echoed = int(line.split()[1])
                samples.append(
                    {
                        "t": round(time.monotonic() - start, 1),
                        "rss_kib": rss_kib(server.pid),
                        "fds": fd_count(server.pid),
                        "mib_per_s": (echoed - last) / args.every / 2**20,
                    }
                )
                last = echoed
        out, err = load.communicate(timeout=60)
        result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err}
    finally:
        server.kill()
        server.wait()
    return {"backend": backend, "samples": samples, "client": result}


def verdict(run, args):
    """Why the run fails (growth, a stall), or None."""
    if "error" in run:
        return run["error"]
    # From the warm-up to the end of the load (a sample taken while the client closes its
    # connections is not a steady state).
    end = args.minutes * 60 - args.every / 2
    after = [s for s in run["samples"] if args.warmup <= s["t"] <= end]
    if len(after) < 2:
        return "too few samples after the warm-up"
    problems = []
    for key in ("rss_kib", "fds"):
        base = after[0][key]
        worst = max(abs(s[key] - base) / base for s in after)
        if worst > args.tolerance:
            problems.append(f"{key} moved {worst:.1%} from {base} after the warm-up")
    if any(s["mib_per_s"] <= 0 for s in after):
        problems.append("a sample without echoes")
    return "; ".join(problems) or None


def table(run):
    lines = ["| t (s) | RSS (MiB) | fds | echoed (MiB/s) |", "|---:|---:|---:|---:|"]
    for s in run.get("samples", []):
        lines.append(
            f"| {s['t']:.0f} | {s['rss_kib'] / 1024:.1f} | {s['fds']} | {s['mib_per_s']:.1f} |"
        )
    return "\n".join(lines)


def chart(runs, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    for run in runs:
        t = [s["t"] for s in run.get("samples", [])]
        for ax, key in zip(axes, ("rss_kib", "fds", "mib_per_s"), strict=True):
            ax.plot(t, [s[key] for s in run["samples"]], label=run["backend"])
            ax.set_ylabel(key)
    axes[0].legend()
    axes[-1].set_xlabel("seconds")
    fig.savefig(path)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="epoll,poll,select,io_uring")
    parser.add_argument("--conns", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--every", type=float, default=10, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=60, help="seconds before the baseline")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--out", default=os.path.join(ROOT, "target", "soak"))
    args = parser.parse_args()
    need = 2 * args.conns + 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    client = echoclient()
    os.makedirs(args.out, exist_ok=True)
    runs, failed = [], False
    for backend in args.backends.split(","):
        run = soak(backend, args, client)
        runs.append(run)
        why = verdict(run, args)
        failed |= why is not None
        rps = run.get("client", {}).get("rps")
        print(f"\n## {backend}: {args.conns} connections, {args.minutes:g} min")
        print(table(run))
        print(f"\nclient: {rps and round(rps)} req/s; verdict: {why or 'flat'}", flush=True)
    with open(os.path.join(args.out, "soak.json"), "w") as f:
        json.dump({"args": vars(args), "runs": runs}, f, indent=1)
    if chart(runs, os.path.join(args.out, "soak.png")):
        print(f"\nchart: {os.path.join(args.out, 'soak.png')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
