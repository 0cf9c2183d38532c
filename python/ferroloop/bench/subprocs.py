"""Subprocesses: spawning and reaping them through the loop, in milliseconds per process.

One fresh interpreter per case and loop, pinned to the server CPU (the processes it spawns
inherit that CPU, for every loop alike):

    python -m ferroloop.bench.subprocs --loop ferroloop --case "true sequential"

prints one JSON line ``{"n": ..., "seconds": ..., "ms_per_proc": ...}``. Each case first runs
a few processes the same way as a warm-up (imports, the child watcher, first-use costs), then
times one batch:

* ``true sequential``: ``create_subprocess_exec("true")`` then ``wait()``, 200 times in turn;
* ``true 20 at a time``: the same 200 processes with at most 20 alive at once (a semaphore);
* ``echo hi communicate``: ``create_subprocess_exec("echo", "hi", stdout=PIPE)`` then
  ``communicate()``, 100 times in turn, checking the output.

Lower is better; the ratios are asyncio's time over the loop's, so above 1 is still better.
"""

import argparse
import asyncio
import json
import shutil
import sys
import time

from . import loops, netbench, system

TRUE = shutil.which("true") or "/bin/true"
ECHO = shutil.which("echo") or "/bin/echo"

#: Processes spawned in the warm-up of every case.
WARMUP = 10


async def _true_sequential(n):
    for _ in range(n):
        proc = await asyncio.create_subprocess_exec(TRUE)
        if await proc.wait() != 0:
            raise RuntimeError(f"{TRUE} exited with {proc.returncode}")


async def _true_concurrent(n, at_once=20):
    gate = asyncio.Semaphore(at_once)

    async def one():
        async with gate:
            proc = await asyncio.create_subprocess_exec(TRUE)
            if await proc.wait() != 0:
                raise RuntimeError(f"{TRUE} exited with {proc.returncode}")

    await asyncio.gather(*(one() for _ in range(n)))


async def _echo_communicate(n):
    for _ in range(n):
        proc = await asyncio.create_subprocess_exec(ECHO, "hi", stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        if out != b"hi\n" or proc.returncode != 0:
            raise RuntimeError(f"echo hi gave {out!r}, exit status {proc.returncode}")


#: case name -> (coroutine function of n, processes timed)
CASES = {
    "true sequential": (_true_sequential, 200),
    "true 20 at a time": (_true_concurrent, 200),
    "echo hi communicate": (_echo_communicate, 100),
}


async def measure(name):
    fn, n = CASES[name]
    await fn(WARMUP)
    start = time.perf_counter()
    await fn(n)
    return n, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description="subprocess benchmark of ferroloop")
    parser.add_argument("--loop", required=True)
    parser.add_argument("--case", required=True, choices=sorted(CASES))
    args = parser.parse_args(argv)
    netbench.prime_allocator()
    n, seconds = loops.run(args.loop, measure(args.case))
    print(json.dumps({"n": n, "seconds": seconds, "ms_per_proc": seconds / n * 1e3}))
    return 0


# -- the runner's side --------------------------------------------------------------------------

TITLE = "subprocess: spawn and reap through the loop (ms per process, lower is better)"


def units(ctx):
    return [(name, [name]) for name in CASES if ctx.wanted(name)]


def setup_note(ctx):
    return (
        f"{WARMUP} warm-up processes, then 200 x true (sequential; 20 at a time) and "
        "100 x echo hi with stdout=PIPE + communicate(); one process per case and loop"
    )


def run(unit, loop, ctx):
    cmd = [ctx.python, "-m", __name__, "--loop", loop, "--case", unit]

    def measure():
        result, error = system.run_json(cmd, ctx.server_cpu, timeout=120)
        record = {"case": unit, "unit": "ms/proc", "lower_is_better": True}
        if error:
            record["error"] = error
        else:
            record["value"] = result["ms_per_proc"]
        return record, 0.0  # the child's CPU time counts as ours once it is reaped

    yield system.measure_quietly(measure, ctx.quiet_wait, ctx.retries)


if __name__ == "__main__":
    sys.exit(main())
