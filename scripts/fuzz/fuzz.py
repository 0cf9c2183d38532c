#!/usr/bin/env python3
"""Differential fuzzer: random loop-API programs on asyncio's loop and on ferroloop.

    python scripts/fuzz/fuzz.py --programs N --seed S [--backend epoll|poll|select|io_uring|all]
                                [--python PATH] [--time-budget SECONDS] [--no-reduce]

Program k is ``gen.generate(S + k)``.  Each runs in fresh processes of ``--python`` on both
loops (runner.py) and the traces are compared (driver.py).  Per backend it prints the
programs run, the operations executed and the divergences by kind; each divergence comes
with its seed, what each loop observed and a shortened program (also saved as JSON under
``--out``, replayable with runner.py's ``--ops``).  Exit status 1 on any divergence, 2 when
both loops failed the same program (a harness problem), else 0.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import driver  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def default_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def backends_of(python: str) -> list[str]:
    out = subprocess.run(
        [python, "-c", "import ferroloop; print(' '.join(ferroloop.backends()))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--programs", type=int, default=100, help="programs per backend")
    p.add_argument("--seed", type=int, default=0, help="seed of the first program")
    p.add_argument("--backend", default="epoll", help="epoll, poll, select, io_uring or all")
    p.add_argument("--python", default=None, help="interpreter (default .venv/bin/python)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="stop a backend's run after this many seconds, whatever --programs says",
    )
    p.add_argument("--no-reduce", action="store_true", help="do not shorten divergences")
    p.add_argument("--reduce-budget", type=float, default=120.0, help="seconds per reduction")
    p.add_argument("--out", default="/tmp/ferroloop-fuzz", help="where shortened programs go")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)

    python = args.python or default_python()
    backends = backends_of(python) if args.backend == "all" else [args.backend]
    all_stats = []
    for backend in backends:
        stats = driver.Stats(backend)
        start = time.monotonic()
        for k in range(args.programs):
            if args.time_budget is not None and time.monotonic() - start > args.time_budget:
                break
            seed = args.seed + k
            report = driver.fuzz_one(
                python,
                backend,
                seed,
                stats,
                shorten=not args.no_reduce,
                reduce_budget=args.reduce_budget,
                out_dir=Path(args.out),
            )
            if report:
                print(report, flush=True)
            if not args.quiet and (k + 1) % 50 == 0:
                print(f"  [{backend}] {k + 1} programs, {stats.summary()}", flush=True)
        for r in stats.reports:
            if r.startswith("seed "):  # harness failures (divergences are printed above)
                print(r)
        if stats.raced:
            print(f"  [{backend}] races that a re-run did not repeat: " + "; ".join(stats.raced))
        print(f"{stats.summary()} in {time.monotonic() - start:.0f} s", flush=True)
        all_stats.append(stats)
    if any(sum(s.divergences.values()) for s in all_stats):
        return 1
    if any(s.harness for s in all_stats):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
