"""UDP echo: a ``DatagramProtocol`` server loaded by ferroloop-echoclient's datagram mode.

The server (one process per loop, pinned to the server CPU) serves both sizes:

    python -m ferroloop.bench.udp_echo --loop ferroloop

It binds 127.0.0.1 on a free port with ``loop.create_datagram_endpoint`` and its protocol's
``datagram_received`` sends every datagram back with ``transport.sendto(data, addr)``. Its
receive buffer is ``RCVBUF`` bytes: with the default (208 KiB), ten 10 KiB datagrams queued at
once (each takes about twice its size in kernel memory) already overflow it now and then.

The load generator keeps ``--conns`` sockets with one datagram in flight each. A datagram whose
echo has not come back within ``TIMEOUT_MS`` is counted as lost and sent again, so a loss never
hangs a run; the report shows the losses per loop.
"""

import argparse
import asyncio
import socket
import sys

from . import loops, netbench

SIZES = (1024, 10 * 1024)

#: SO_RCVBUF of the server's socket (net.core.rmem_max must allow it to take effect in full).
RCVBUF = 1 << 20

#: Milliseconds the load generator waits for an echo before it re-sends and counts a loss.
TIMEOUT_MS = 100


class EchoDatagramProtocol(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def serve(sock, lifetime):
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(EchoDatagramProtocol, sock=sock)
    host, port = sock.getsockname()[:2]
    print(f"READY {host}:{port}", flush=True)
    await asyncio.sleep(lifetime)  # the runner stops the server earlier; this bounds a stray one
    transport.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description="UDP echo server of ferroloop's benchmark")
    parser.add_argument("--loop", required=True)
    parser.add_argument("--lifetime", type=float, default=600, help="exit after this many seconds")
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    netbench.prime_allocator()
    loops.run(args.loop, serve(sock, args.lifetime))
    return 0


# -- the runner's side --------------------------------------------------------------------------

TITLE = "udp: datagram echo (DatagramProtocol), ferroloop-echoclient load"


def case_name(size):
    return f"udp proto {size // 1024}KiB"


def units(ctx):
    cases = [case_name(size) for size in SIZES if ctx.wanted(case_name(size))]
    return [("proto", cases)] if cases else []


def setup_note(ctx):
    return (
        f"{ctx.conns} sockets, one datagram in flight each; a datagram without echo after "
        f"{TIMEOUT_MS} ms is re-sent and counted as lost; server SO_RCVBUF {RCVBUF >> 10} KiB"
    )


def run(unit, loop, ctx):
    cases = [(case_name(s), "req/s", s) for s in SIZES if ctx.wanted(case_name(s))]
    cmd = [ctx.python, "-m", __name__, "--loop", loop]
    cmd += ["--lifetime", str(netbench.lifetime(ctx, cases))]
    extra = ["--timeout-ms", str(TIMEOUT_MS)]

    def client(address, size, seconds, mark=None):
        return netbench.echoclient(ctx, ["--udp", address], size, seconds, extra, mark)

    def warm_up(address, size):
        return client(address, size, ctx.warmup)[1]

    def load(address, size, mark):
        return client(address, size, ctx.duration, mark)

    label = f"udp-{loop.replace(':', '_')}"
    yield from netbench.serve_and_measure(cmd, label, cases, ctx, warm_up, load)


if __name__ == "__main__":
    sys.exit(main())
