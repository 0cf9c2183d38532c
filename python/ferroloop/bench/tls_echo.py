"""TLS echo over TCP: a ``Protocol`` server with ``ssl=``, loaded by ferroloop-echoclient --tls.

The server (one process per loop, pinned to the server CPU) serves both sizes:

    python -m ferroloop.bench.tls_echo --loop ferroloop --cert tests/tls/server.pem

It listens on 127.0.0.1 with ``loop.create_server(EchoProtocol, sock=..., ssl=context)``, the
context being ``ssl.create_default_context(Purpose.CLIENT_AUTH)`` with the test certificate of
``tests/tls/`` (EC P-256, for 127.0.0.1), so each loop runs its own TLS transport over Python's
``ssl`` module. The load generator speaks TLS with rustls and trusts only the test CA; its
handshakes happen before the measured window, which thus holds only encrypted echo traffic.
"""

import argparse
import asyncio
import socket
import ssl
import sys

from . import echo, loops, netbench

SIZES = (1024, 100 * 1024)

#: The test certificates, relative to the repository root (see tests/tls/README.md).
CERT = "tests/tls/server.pem"
CA = "tests/tls/ca.pem"


async def serve(listener, context, lifetime):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(echo.EchoProtocol, sock=listener, ssl=context)
    host, port = listener.getsockname()[:2]
    print(f"READY {host}:{port}", flush=True)
    await asyncio.sleep(lifetime)  # the runner stops the server earlier; this bounds a stray one
    server.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description="TLS echo server of ferroloop's benchmark")
    parser.add_argument("--loop", required=True)
    parser.add_argument("--cert", required=True, help="PEM file with certificate and key")
    parser.add_argument("--lifetime", type=float, default=600, help="exit after this many seconds")
    args = parser.parse_args(argv)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    netbench.prime_allocator()
    loops.run(args.loop, serve(listener, context, args.lifetime))
    return 0


# -- the runner's side --------------------------------------------------------------------------

TITLE = "tls: TLS echo over TCP (Protocol, ssl=), ferroloop-echoclient --tls (rustls) load"


def case_name(size):
    return f"tls proto {size // 1024}KiB"


def units(ctx):
    cases = [case_name(size) for size in SIZES if ctx.wanted(case_name(size))]
    return [("proto", cases)] if cases else []


def check(ctx):
    """Why the family cannot run here, or None."""
    if ctx.root is None or not (ctx.root / CERT).is_file():
        return f"tls skipped: the test certificates ({CERT}) are only in a ferroloop checkout"
    return None


def setup_note(ctx):
    return (
        f"{ctx.conns} TLS connections ({CERT}, trusted through {CA}), one message in flight "
        "each; handshakes before the measured window; client: rustls (ring)"
    )


def run(unit, loop, ctx):
    cases = [(case_name(s), "req/s", s) for s in SIZES if ctx.wanted(case_name(s))]
    cmd = [ctx.python, "-m", __name__, "--loop", loop, "--cert", str(ctx.root / CERT)]
    cmd += ["--lifetime", str(netbench.lifetime(ctx, cases))]
    extra = ["--ca", str(ctx.root / CA), "--server-name", "127.0.0.1"]

    def client(address, size, seconds, mark=None):
        result, error = netbench.echoclient(ctx, ["--tls", address], size, seconds, extra, mark)
        if result and "tls" in result:
            result["note"] = f"session {result['tls']}"
        return result, error

    def warm_up(address, size):
        return client(address, size, ctx.warmup)[1]

    def load(address, size, mark):
        return client(address, size, ctx.duration, mark)

    label = f"tls-{loop.replace(':', '_')}"
    yield from netbench.serve_and_measure(cmd, label, cases, ctx, warm_up, load)


if __name__ == "__main__":
    sys.exit(main())
