"""Micro-benchmarks: the loop's own cost per callback, timer, task and future, in-process.

Each case is a coroutine ``case(loop, n)`` that performs ``n`` operations. ``measure`` runs one
chunk as a warm-up, then repeats chunks until ``min_time`` has passed and reports operations per
second. The runner (``run``, below) starts one child process per case and loop:

    python -m ferroloop.bench.micro --loop ferroloop --case "sleep(0)" --min-time 0.5

which prints one JSON line ``{"ops": ..., "seconds": ..., "rate": ...}``.
"""

import argparse
import asyncio
import json
import socket
import sys
import threading
import time

from . import loops, system

#: name -> (case coroutine function, operations per chunk, unit). Chunks take ~10-30 ms on
#: asyncio's loop, so the timing overhead per chunk is negligible and a run has many chunks.
CASES = {}


def case(name, chunk, unit="ops/s"):
    def register(fn):
        CASES[name] = (fn, chunk, unit)
        return fn

    return register


def _noop():
    pass


async def _noop_coro():
    pass


@case("call_soon batch", 20_000, "callbacks/s")
async def call_soon_batch(loop, n):
    """n callbacks queued at once, run in one iteration."""
    done = loop.create_future()
    for _ in range(n - 1):
        loop.call_soon(_noop)
    loop.call_soon(done.set_result, None)  # FIFO: runs after the others
    await done


@case("call_soon chained", 20_000, "callbacks/s")
async def call_soon_chained(loop, n):
    """One callback per loop iteration: each schedules the next."""
    done = loop.create_future()
    left = n

    def step():
        nonlocal left
        left -= 1
        if left:
            loop.call_soon(step)
        else:
            done.set_result(None)

    loop.call_soon(step)
    await done


@case("call_later fire", 10_000, "timers/s")
async def call_later_fire(loop, n):
    """n timers due at once: heap push, pop and run."""
    done = loop.create_future()
    left = n

    def fire():
        nonlocal left
        left -= 1
        if not left:
            done.set_result(None)

    for _ in range(n):
        loop.call_later(0, fire)
    await done


@case("call_later+cancel", 10_000, "timers/s")
async def call_later_cancel(loop, n):
    """n timers scheduled 10 s ahead and cancelled; one iteration lets the loop drop them."""
    handles = [loop.call_later(10, _noop) for _ in range(n)]
    for handle in handles:
        handle.cancel()
    await asyncio.sleep(0)


@case("create_task+await", 5_000, "tasks/s")
async def create_task_await(loop, n):
    """One task at a time, created and awaited."""
    for _ in range(n):
        await loop.create_task(_noop_coro())


@case("gather(100)", 5_000, "tasks/s")
async def gather_100(loop, n):
    """gather() of 100 coroutines (wrapped in tasks), n / 100 times."""
    for _ in range(n // 100):
        await asyncio.gather(*[_noop_coro() for _ in range(100)])


@case("sleep(0)", 10_000, "sleeps/s")
async def sleep_0(loop, n):
    """Yield to the loop n times."""
    for _ in range(n):
        await asyncio.sleep(0)


@case("future round trip", 10_000, "futures/s")
async def future_round_trip(loop, n):
    """A future resolved by a callback and awaited, n times."""
    for _ in range(n):
        fut = loop.create_future()
        loop.call_soon(fut.set_result, None)
        await fut


@case("sock_recv wait", 10_000, "receives/s")
async def sock_recv_wait(loop, n):
    """sock_recv on a socketpair that finds nothing and waits: the peer's send is a callback
    queued before the receive, so it runs once the wait began (one wait per receive)."""
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        for _ in range(n):
            loop.call_soon(b.send, b"x")
            await loop.sock_recv(a, 100)


@case("call_soon_threadsafe", 10_000, "callbacks/s")
async def call_soon_threadsafe(loop, n):
    """n callbacks sent from another thread as fast as it can; the loop wakes up to run them."""
    done = loop.create_future()
    left = n

    def arrive():
        nonlocal left
        left -= 1
        if not left:
            done.set_result(None)

    def produce():
        for _ in range(n):
            loop.call_soon_threadsafe(arrive)

    thread = threading.Thread(target=produce)
    thread.start()
    await done
    thread.join()


@case("run_in_executor", 500, "calls/s")
async def run_in_executor(loop, n):
    """A trivial function run in the default thread pool and awaited, one at a time."""
    for _ in range(n):
        await loop.run_in_executor(None, _noop)


async def measure(fn, chunk, min_time):
    """(operations, seconds) of whole chunks of ``fn`` repeated for at least ``min_time``."""
    loop = asyncio.get_running_loop()
    await fn(loop, chunk)  # warm-up: first-use allocations, executor threads, caches
    ops = 0
    start = time.perf_counter()
    while True:
        await fn(loop, chunk)
        ops += chunk
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return ops, elapsed


async def exactly(fn, chunk, ops):
    """A warm-up chunk, then ``ops`` operations of ``fn`` (``bench.callgrind`` counts them)."""
    loop = asyncio.get_running_loop()
    await fn(loop, chunk)
    await fn(loop, ops)


# -- the runner's side: one child process per case and loop ------------------------------------

TITLE = "micro: in-process loop costs"


def units(ctx):
    """One unit per case: (case name, [case name])."""
    return [(name, [name]) for name in CASES if ctx.wanted(name)]


def run(unit, loop, ctx):
    """Measure one case on one loop in a fresh interpreter pinned to the server CPU."""
    cmd = [ctx.python, "-m", __name__, "--loop", loop, "--case", unit]
    cmd += ["--min-time", str(ctx.micro_time)]

    def measure():
        result, error = system.run_json(cmd, ctx.server_cpu, timeout=30 + 20 * ctx.micro_time)
        record = {"case": unit, "unit": CASES[unit][2]}
        if error:
            record["error"] = error
        else:
            record["value"] = result["rate"]
        return record, 0.0  # the child's CPU time counts as ours once it is reaped

    yield system.measure_quietly(measure, ctx.quiet_wait, ctx.retries)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", required=True)
    parser.add_argument("--case", required=True, choices=sorted(CASES))
    parser.add_argument("--min-time", type=float, default=0.5)
    parser.add_argument(
        "--ops", type=int, help="run exactly this many operations after the warm-up (callgrind)"
    )
    args = parser.parse_args(argv)
    fn, chunk, _unit = CASES[args.case]
    if args.ops is not None:
        loops.run(args.loop, exactly(fn, chunk, args.ops))
        print(json.dumps({"ops": args.ops}))
        return 0
    ops, seconds = loops.run(args.loop, measure(fn, chunk, args.min_time))
    print(json.dumps({"ops": ops, "seconds": seconds, "rate": ops / seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
