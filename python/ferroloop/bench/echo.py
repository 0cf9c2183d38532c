"""Echo over TCP and UNIX sockets: a server in four styles, loaded by ferroloop-echoclient.

The server runs in its own process, pinned to the server CPU, one per loop, transport and style:

    python -m ferroloop.bench.echo --loop uvloop --style proto --tcp    # or --unix PATH

and prints ``READY ADDRESS`` once it listens. Styles:

* ``sock``: ``loop.sock_accept``, ``loop.sock_recv`` and ``loop.sock_sendall`` in one task per
  connection;
* ``streams``: ``asyncio.start_server`` with ``reader.read``, ``writer.write`` and ``drain``;
* ``proto``: a ``Protocol`` whose ``data_received`` calls ``transport.write``;
* ``bufproto``: a ``BufferedProtocol`` that reads into its own buffer and writes a view of it.

The load generator (crates/ferroloop-echoclient, pinned to the other CPU) keeps ``--conns``
connections each with one message in flight: send it, wait for the whole echo, send again.
"""

import argparse
import asyncio
import os
import select
import socket
import subprocess
import sys
import time

from . import loops, system

TRANSPORTS = ("tcp", "unix")
STYLES = ("sock", "streams", "proto", "bufproto")
SIZES = (1024, 10 * 1024, 100 * 1024)

#: Bytes asked of one read in every style: asyncio's transports read 256 KiB at a time too.
READ_SIZE = 256 * 1024


# -- the server ---------------------------------------------------------------------------------


async def _sock_echo(loop, conn):
    with conn:
        try:
            while data := await loop.sock_recv(conn, READ_SIZE):
                await loop.sock_sendall(conn, data)
        except ConnectionError:
            pass


async def _sock_server(listener):
    loop = asyncio.get_running_loop()
    tasks = set()  # the loop keeps only weak references to tasks
    while True:
        conn, _ = await loop.sock_accept(listener)
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setblocking(False)
        task = loop.create_task(_sock_echo(loop, conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def _stream_echo(reader, writer):
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = memoryview(bytearray(READ_SIZE))

    def get_buffer(self, sizehint):
        return self.buffer

    def buffer_updated(self, nbytes):
        self.transport.write(self.buffer[:nbytes])
        if self.transport.get_write_buffer_size():
            # The transport may keep a view of what it could not send yet (asyncio >= 3.12 and
            # uvloop do): read the next data into a new buffer instead of overwriting it.
            self.buffer = memoryview(bytearray(READ_SIZE))


async def serve(style, listener, lifetime, backlog=100):
    loop = asyncio.get_running_loop()
    unix = listener.family == socket.AF_UNIX
    if style == "sock":
        server = loop.create_task(_sock_server(listener))
    elif style == "streams":
        start = asyncio.start_unix_server if unix else asyncio.start_server
        server = await start(_stream_echo, sock=listener, backlog=backlog)
    else:
        protocol = EchoProtocol if style == "proto" else EchoBufferedProtocol
        create = loop.create_unix_server if unix else loop.create_server
        server = await create(protocol, sock=listener, backlog=backlog)
    name = listener.getsockname()
    print("READY", name if unix else f"{name[0]}:{name[1]}", flush=True)
    await asyncio.sleep(lifetime)  # the runner stops the server earlier; this bounds a stray one
    server.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description="echo server of ferroloop's benchmark")
    parser.add_argument("--loop", required=True)
    parser.add_argument("--style", required=True, choices=STYLES)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", action="store_true", help="listen on 127.0.0.1, any free port")
    where.add_argument("--unix", metavar="PATH")
    parser.add_argument("--lifetime", type=float, default=600, help="exit after this many seconds")
    parser.add_argument(
        "--backlog", type=int, default=100, help="listen backlog (asyncio's default: 100)"
    )
    args = parser.parse_args(argv)
    if args.tcp:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
    else:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(args.unix)
    listener.listen(args.backlog)
    listener.setblocking(False)
    loops.run(args.loop, serve(args.style, listener, args.lifetime, args.backlog))
    return 0


# -- the runner's side --------------------------------------------------------------------------

TITLE = "echo: TCP and UNIX sockets, ferroloop-echoclient load"


def case_name(transport, style, size):
    return f"{transport} {style} {size // 1024}KiB"


def units(ctx):
    """One unit per transport and style, whose cases are the message sizes: one server process
    serves them all."""
    found = []
    for transport in TRANSPORTS:
        for style in STYLES:
            cases = [case_name(transport, style, size) for size in SIZES]
            cases = [case for case in cases if ctx.wanted(case)]
            if cases:
                found.append(((transport, style), cases))
    return found


def _start_server(cmd, cpu, log_path, timeout=30):
    """Start a server and wait for its READY line; returns (process, address)."""
    with open(log_path, "w") as log:
        proc = system.spawn(cmd, cpu, stdout=subprocess.PIPE, stderr=log, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([proc.stdout], [], [], 0.1)
        if readable:
            line = proc.stdout.readline()
            if line.startswith("READY "):
                return proc, line.split(None, 1)[1].strip()
            if not line:
                break  # EOF: the server died
        elif proc.poll() is not None:
            break
    system.stop(proc)
    with open(log_path) as log:
        lines = log.read().strip().splitlines()
    raise RuntimeError(lines[-1] if lines else "the server did not start")


def _client(ctx, target, size, seconds):
    cmd = [ctx.echoclient, *target, "--size", str(size), "--conns", str(ctx.conns)]
    cmd += ["--duration", str(seconds)]
    return system.run_json(cmd, ctx.client_cpu, timeout=30 + 2 * seconds)


def measure_server(ctx, server, record, client):
    """One measured load of ``server``: ``client()`` runs the load generator and returns its JSON
    (or an error); the record gets the requests per second, the latencies and the server's CPU
    time per request."""

    def measure():
        before = system.cpu_seconds(server.pid)
        result, error = client()
        used = system.cpu_seconds(server.pid) - before
        if error or not result["requests"]:
            return {**record, "error": error or "no request completed"}, used
        return {
            **record,
            "value": result["rps"],
            "p50_us": result["p50_us"],
            "p99_us": result["p99_us"],
            "cpu_us": used / result["requests"] * 1e6,
            "server_busy": used / result["seconds"],
        }, used

    return system.measure_quietly(measure, ctx.quiet_wait, ctx.retries)


def run(unit, loop, ctx):
    """Start the server for ``unit`` on ``loop`` and measure each message size against it.

    Each size gets a warm-up run first. Its connections close at the end, which primes the
    server: CPython allocates a read's maximum size per read (256 KiB, above glibc's initial mmap
    threshold), so until a block that large is freed every read costs an mmap and a munmap.
    """
    transport, style = unit
    sizes = [size for size in SIZES if ctx.wanted(case_name(transport, style, size))]
    label = f"{transport}-{style}-{loop.replace(':', '_')}"
    cmd = [ctx.python, "-m", __name__, "--loop", loop, "--style", style]
    cmd += ["--lifetime", str(60 + len(sizes) * (ctx.warmup + ctx.duration) * 3)]
    if transport == "unix":
        path = os.path.join(ctx.tmpdir, f"{label}.sock")
        cmd += ["--unix", path]
    else:
        cmd += ["--tcp"]
    try:
        server, address = _start_server(
            cmd, ctx.server_cpu, os.path.join(ctx.tmpdir, f"{label}.log")
        )
    except RuntimeError as e:
        for size in sizes:
            yield {"case": case_name(transport, style, size), "unit": "req/s", "error": str(e)}
        return
    target = ["--unix", address] if transport == "unix" else ["--tcp", address]
    try:
        for size in sizes:
            record = {"case": case_name(transport, style, size), "unit": "req/s"}
            _, error = _client(ctx, target, size, ctx.warmup)
            if error:
                record["error"] = error
                yield record
                continue

            yield measure_server(
                ctx, server, record, lambda size=size: _client(ctx, target, size, ctx.duration)
            )
    finally:
        system.stop(server)
        if transport == "unix" and os.path.exists(path):
            os.unlink(path)


if __name__ == "__main__":
    sys.exit(main())
