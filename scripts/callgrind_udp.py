#!/usr/bin/env python3
"""Instructions per datagram of a UDP echo server, counted by callgrind.

The server (``ferroloop.bench.udp_echo``'s protocol, on the loop named by ``--loop``) runs under
``valgrind --tool=callgrind``; a plain-socket client in this process keeps ``--conns`` sockets
with one ``--size``-byte datagram in flight each. The server is run twice, for ``--count`` and
for three times as many echoes, and the difference of the two totals divided by the difference
of the counts is printed: start-up and shut-down cancel out. Only user-space instructions are
counted (callgrind does not see the kernel).

    python scripts/callgrind_udp.py --loop ferroloop
    python scripts/callgrind_udp.py --loop uvloop --size 10240

The default build runs under valgrind (rustix finds the vDSO through libc: see ferroloop-core's
Cargo.toml).
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import socket
import subprocess
import sys
import tempfile

SERVER = """
import asyncio, socket, sys
from ferroloop.bench import loops, udp_echo

class Echo(asyncio.DatagramProtocol):
    # udp_echo.EchoDatagramProtocol, plus a way to stop
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if data == b"quit":
            self.transport.close()
            return
        self.transport.sendto(data, addr)

    def connection_lost(self, exc):
        self.done.set_result(None)

async def serve(sock):
    loop = asyncio.get_running_loop()
    proto = Echo()
    proto.done = loop.create_future()
    await loop.create_datagram_endpoint(lambda: proto, sock=sock)
    print(sock.getsockname()[1], flush=True)
    await proto.done

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, udp_echo.RCVBUF)
sock.bind(("127.0.0.1", 0))
sock.setblocking(False)
loops.run(sys.argv[1], serve(sock))
"""


def echo(port, count, conns, size):
    """Sends `count` datagrams to the server, `conns` in flight, and waits for as many echoes.
    After a second without any echo (a datagram was dropped), every socket sends again."""
    sel = selectors.DefaultSelector()
    socks = []
    message = b"x" * size
    for _ in range(conns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
    sent = got = 0
    for s in socks:
        s.send(message)
        sent += 1
    while got < count:
        events = sel.select(1)
        if not events:
            for s in socks:
                s.send(message)
        for key, _ in events:
            try:
                while True:
                    key.fileobj.recv(65536)
                    got += 1
                    if sent < count:
                        key.fileobj.send(message)
                        sent += 1
            except BlockingIOError:
                pass
    socks[0].send(b"quit")
    for s in socks:
        s.close()


def instructions(args, count, out):
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    cmd += [args.python, "-c", SERVER, args.loop]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            port = int(proc.stdout.readline())
            echo(port, count, args.conns, args.size)
            _, err = proc.communicate(timeout=600)
        except BaseException:
            proc.kill()
            raise
    found = re.search(r"Collected : (\d+)", err)
    if proc.returncode != 0 or not found:
        sys.exit(f"the server failed:\n{err}")
    return int(found.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", default="ferroloop", help="asyncio, uvloop or ferroloop")
    parser.add_argument("--count", type=int, default=5000, help="echoes of the shorter run")
    parser.add_argument(
        "--conns", type=int, default=10, help="sockets, one datagram in flight each"
    )
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--python", default=sys.executable, help="interpreter of the server")
    parser.add_argument("--keep", help="directory to keep the two callgrind.out files in")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or tmp
        os.makedirs(where, exist_ok=True)
        short = instructions(args, args.count, os.path.join(where, "callgrind.short"))
        long = instructions(args, 3 * args.count, os.path.join(where, "callgrind.long"))
    per = (long - short) / (2 * args.count)
    print(
        f"{args.loop} udp echo {args.size} B, {args.conns} sockets: {per:,.0f} instructions per datagram"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
