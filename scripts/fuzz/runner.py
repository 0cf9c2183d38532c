"""Runs one fuzz program on one loop and prints its trace (what user code observed) as JSON.

    python scripts/fuzz/runner.py --loop asyncio|ferroloop --backend B (--seed S | --ops FILE)

The trace is a list of events ``[source, kind, *values]``:

* ``source`` names who observed it: ``main`` (the main coroutine, which runs the ops one after
  the other), one source per op that fires callbacks (``soon3``, ``timers5``, ``task7``,
  ``tr4`` ...), ``handler:<message>`` (the loop's exception handler, for calls that no
  op's callback raised), ``log:<message>`` (the ``asyncio`` logger),
  ``closed`` (calls on the closed loop) and ``fds`` (fds left open at the end).  Events of one
  source happen in an order that asyncio defines; events of different sources may interleave
  differently from run to run, so the driver compares the traces source by source.
* ``kind`` is ``ev`` (an event), ``data`` (received bytes, as length and digest), ``chunk``
  (a ``data_received`` call: consecutive chunks are merged before comparing, since how a
  stream is cut into reads is not defined) or ``exc`` (an exception: class and message).

Nothing in the trace holds an address, an fd number, a port or a time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import re
import selectors
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen  # noqa: E402
from bad_calls import BAD_CALLS, CLOSED_CALLS, MisuseOps  # noqa: E402
from ops_services import ServiceOps  # noqa: E402
from ops_transport import TransportOps  # noqa: E402
from runner_core import RunnerCore  # noqa: E402
from tracenorm import LogRecorder, exc_repr  # noqa: E402

_ORACLE_SELECTORS = {
    "epoll": "EpollSelector",
    "poll": "PollSelector",
    "select": "SelectSelector",
    "io_uring": "PollSelector",
}


class Runner(RunnerCore, TransportOps, ServiceOps, MisuseOps):
    """Interprets one program on one loop (the op families: runner_core and the mixins)."""


def _fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        out[int(name)] = target
    return out


def _fd_kind(target: str) -> str:
    return re.sub(r"\[\d+\]$", "", target).rstrip(":")


def make_loop(name: str, backend: str):
    if name == "asyncio":
        return asyncio.SelectorEventLoop(getattr(selectors, _ORACLE_SELECTORS[backend])())
    import ferroloop

    return ferroloop.new_event_loop(backend=backend)


def run(name: str, backend: str, ops: list[dict]) -> dict:
    before = _fds()
    logger = logging.getLogger("asyncio")
    loop = make_loop(name, backend)
    asyncio.set_event_loop(loop)
    runner = Runner(loop, ops)
    logger.addHandler(LogRecorder(runner.rec))
    logger.propagate = False
    try:
        loop.run_until_complete(runner.main())
    except BaseException as exc:  # noqa: BLE001
        runner.rec("main", "exc", "run_until_complete", *exc_repr(exc))
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
    for op in ops:
        if op["op"].startswith("closed_"):
            runner.executed += 1
            runner.closed_call(op)
    asyncio.set_event_loop(None)
    for s in runner.socks:
        s.close()
    runner.objs.clear()
    runner.tasks.clear()
    runner.futures.clear()
    runner.transports.clear()
    del loop
    gc.collect()
    after = _fds()
    leaked = sorted(
        _fd_kind(t) for fd, t in after.items() if fd not in before and not t.startswith("/proc/")
    )
    runner.rec("fds", "ev", leaked)
    return {"trace": runner.trace, "executed": runner.executed}


assert set(BAD_CALLS) == set(gen.BAD_CALLS), set(BAD_CALLS) ^ set(gen.BAD_CALLS)
assert set(CLOSED_CALLS) == set(gen.CLOSED_CALLS), set(CLOSED_CALLS) ^ set(gen.CLOSED_CALLS)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loop", choices=["asyncio", "ferroloop"], required=True)
    p.add_argument("--backend", default="epoll")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--seed", type=int)
    g.add_argument("--ops", help="a JSON file holding the op list")
    args = p.parse_args(argv)
    ops = gen.generate(args.seed) if args.ops is None else json.loads(Path(args.ops).read_text())
    result = run(args.loop, args.backend, ops)
    sys.stdout.write("FUZZTRACE " + json.dumps(result, default=repr) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
