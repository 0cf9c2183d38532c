#!/usr/bin/env python3
"""Instructions per ``call_soon``/``call_soon_threadsafe`` callback, counted by callgrind.

A child interpreter under ``valgrind --tool=callgrind`` schedules ``--count`` callbacks with
the method named by ``--method`` from the loop's own thread (so the count does not depend on
how threads interleave), in bursts of 1000 with one loop iteration after each, and runs them.
It runs twice, for ``--count`` and for twice as many callbacks; the difference of the two totals
divided by ``--count`` is printed: start-up and shut-down cancel out. Each figure covers the
scheduling call, the handle, the run of the callback (a Python function that counts) and the
Python loop around the call. ``PYTHONHASHSEED`` is fixed so that repeated runs agree.

    python scripts/callgrind_callbacks.py --loop ferroloop --method call_soon_threadsafe
    python scripts/callgrind_callbacks.py --loop asyncio

The default build runs under valgrind (rustix finds the vDSO through libc: see ferroloop-core's
Cargo.toml).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

WORKLOAD = """
import asyncio, sys

loop_name, method, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if loop_name == "ferroloop":
    import ferroloop
    loop = ferroloop.new_event_loop()
elif loop_name == "uvloop":
    import uvloop
    loop = uvloop.new_event_loop()
else:
    loop = asyncio.SelectorEventLoop()
schedule = getattr(loop, method)
count = 0

def callback():
    global count
    count += 1

async def main():
    for _ in range(n // 1000):
        for _ in range(1000):
            schedule(callback)
        await asyncio.sleep(0)
    await asyncio.sleep(0)

loop.run_until_complete(main())
assert count == n, count
loop.close()
"""


def instructions(args, count):
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    cmd += [args.python, "-c", WORKLOAD, args.loop, args.method, str(count)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200, check=False)
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not found:
        sys.exit(f"the workload failed:\n{proc.stderr}")
    return int(found.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", default="ferroloop", help="asyncio, uvloop or ferroloop")
    parser.add_argument(
        "--method", default="call_soon_threadsafe", choices=["call_soon", "call_soon_threadsafe"]
    )
    parser.add_argument("--count", type=int, default=20_000, help="callbacks of the shorter run")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the workload")
    args = parser.parse_args()
    args.count -= args.count % 1000
    short = instructions(args, args.count)
    long = instructions(args, 2 * args.count)
    per = (long - short) / args.count
    print(f"{args.loop} {args.method}: {per:,.0f} instructions per callback")
    return 0


if __name__ == "__main__":
    sys.exit(main())
