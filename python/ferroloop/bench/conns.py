"""Many connections at once: the TCP ``proto`` echo server of ``echo`` with 1,000 to 10,000
connections, each sending 20 messages of 1 KiB, one in flight at a time.

What it shows is how a loop scales with the number of connections: run it with
``--loops ferroloop,ferroloop-io_uring`` to see epoll and io_uring side by side. (Before the
loop restarted starved receives in order, io_uring's requests per second fell from 124,000 at
1,000 connections to 35,000 at 5,000, while epoll's stayed near 220,000.)

The server listens with a backlog of 4,096, so that opening the connections is not what is
measured (with asyncio's default of 100, SYN retransmissions add seconds); the client's
measured window starts once every connection is open.
"""

import os

from . import echo, system

TITLE = "conns: TCP proto echo of 1 KiB, 20 requests per connection, 1,000 to 10,000 connections"

COUNTS = (1000, 2500, 5000, 10000)
REQUESTS_PER_CONNECTION = 20
SIZE = 1024
BACKLOG = 4096


def case_name(count):
    return f"tcp proto 1KiB x{count}"


def units(ctx):
    cases = [case_name(n) for n in COUNTS if ctx.wanted(case_name(n))]
    return [(count, [case_name(count)]) for count in COUNTS if case_name(count) in cases]


def check(ctx):
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < max(COUNTS) + 100:
        return f"RLIMIT_NOFILE is {soft}, below {max(COUNTS) + 100}"
    return None


def run(count, loop, ctx):
    record = {"case": case_name(count), "unit": "req/s"}
    label = f"conns-{count}-{loop.replace(':', '_')}"
    cmd = [ctx.python, "-m", echo.__name__, "--loop", loop, "--style", "proto", "--tcp"]
    cmd += ["--backlog", str(BACKLOG), "--lifetime", "600"]
    try:
        server, address = echo._start_server(
            cmd, ctx.server_cpu, os.path.join(ctx.tmpdir, f"{label}.log")
        )
    except RuntimeError as e:
        yield {**record, "error": str(e)}
        return
    try:
        client = [ctx.echoclient, "--tcp", address, "--size", str(SIZE), "--conns", str(count)]
        client += ["--max-requests", str(REQUESTS_PER_CONNECTION * count), "--duration", "300"]

        yield echo.measure_server(
            ctx, server, record, lambda: system.run_json(client, ctx.client_cpu, timeout=400)
        )
    finally:
        system.stop(server)
