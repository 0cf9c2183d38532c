"""Pipe round trip: ping-pong of 1 KiB messages over two ``os.pipe()`` pairs in one process.

    python -m ferroloop.bench.pipe_pingpong --loop ferroloop --min-time 0.5

The pinger writes a message into the first pipe with ``connect_write_pipe``'s transport; the
ponger, reading that pipe through ``connect_read_pipe``, sends each whole message back through
the second pipe, where the pinger reads it. One round trip is one message there and back; the
next is sent only when the echo has fully arrived. As in ``micro``, one chunk of round trips is
a warm-up, then whole chunks run until the time is up, and the child prints
``{"ops": ..., "seconds": ..., "rate": ...}``.
"""

import argparse
import asyncio
import json
import os
import sys
import time

from . import loops, netbench, system

SIZE = 1024
MESSAGE = bytes(i % 251 for i in range(SIZE))

#: Round trips per chunk: some 20-50 ms on asyncio's loop.
CHUNK = 2000

CASE = "pipe 1KiB round trip"


class _Writer(asyncio.BaseProtocol):
    """The write end's protocol: nothing to do, the pipes never fill (one message in flight)."""


class Ponger(asyncio.Protocol):
    """Sends every whole message it reads back through ``self.out``."""

    def __init__(self):
        self.pending = 0
        self.out = None

    def data_received(self, data):
        self.pending += len(data)
        while self.pending >= SIZE:
            self.pending -= SIZE
            self.out.write(MESSAGE)


class Pinger(asyncio.Protocol):
    """Counts echoed messages and sends the next one until ``left`` reaches zero."""

    def __init__(self):
        self.received = 0
        self.left = 0
        self.done = None
        self.out = None

    def start(self, n):
        self.left = n
        self.done = asyncio.get_running_loop().create_future()
        self.out.write(MESSAGE)
        return self.done

    def data_received(self, data):
        self.received += len(data)
        if self.received < SIZE:
            return
        self.received -= SIZE
        self.left -= 1
        if self.left:
            self.out.write(MESSAGE)
        else:
            self.done.set_result(None)


async def connect():
    """The pinger, wired to a ponger through two pipes; returns (pinger, transports)."""
    loop = asyncio.get_running_loop()
    to_pong_r, to_pong_w = os.pipe()
    to_ping_r, to_ping_w = os.pipe()
    pinger, ponger = Pinger(), Ponger()
    transports = []
    for fd, protocol in ((to_pong_r, ponger), (to_ping_r, pinger)):
        transport, _ = await loop.connect_read_pipe(lambda p=protocol: p, os.fdopen(fd, "rb", 0))
        transports.append(transport)
    for fd, owner in ((to_pong_w, pinger), (to_ping_w, ponger)):
        transport, _ = await loop.connect_write_pipe(_Writer, os.fdopen(fd, "wb", 0))
        owner.out = transport
        transports.append(transport)
    return pinger, transports


async def measure(min_time):
    pinger, transports = await connect()
    try:
        await pinger.start(CHUNK)  # warm-up
        ops = 0
        start = time.perf_counter()
        while True:
            await pinger.start(CHUNK)
            ops += CHUNK
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                return ops, elapsed
    finally:
        for transport in transports:
            transport.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description="pipe round-trip benchmark of ferroloop")
    parser.add_argument("--loop", required=True)
    parser.add_argument("--min-time", type=float, default=0.5)
    args = parser.parse_args(argv)
    netbench.prime_allocator()
    ops, seconds = loops.run(args.loop, measure(args.min_time))
    print(json.dumps({"ops": ops, "seconds": seconds, "rate": ops / seconds}))
    return 0


# -- the runner's side --------------------------------------------------------------------------

TITLE = "pipe: round trips over two pipes in one process (connect_read_pipe/connect_write_pipe)"


def units(ctx):
    return [(CASE, [CASE])] if ctx.wanted(CASE) else []


def run(unit, loop, ctx):
    cmd = [ctx.python, "-m", __name__, "--loop", loop, "--min-time", str(ctx.micro_time)]

    def measure():
        result, error = system.run_json(cmd, ctx.server_cpu, timeout=30 + 20 * ctx.micro_time)
        record = {"case": unit, "unit": "round trips/s"}
        if error:
            record["error"] = error
        else:
            record["value"] = result["rate"]
        return record, 0.0  # the child's CPU time counts as ours once it is reaped

    yield system.measure_quietly(measure, ctx.quiet_wait, ctx.retries)


if __name__ == "__main__":
    sys.exit(main())
