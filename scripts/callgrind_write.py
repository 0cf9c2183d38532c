#!/usr/bin/env python3
"""Instructions per ``transport.write()`` of a TCP stream transport, counted by callgrind.

A client on the loop named by ``--loop`` (``ferroloop.bench.loops`` names) connects to a plain
blocking socket in the same process and calls ``transport.write(message)`` in a loop; after every
``--batch`` writes the plain socket reads what was sent, so each write finds the kernel buffer
free and goes straight to ``send()``. The program runs twice under
``valgrind --tool=callgrind``, for ``--count`` and for three times as many writes, and the
difference of the two totals divided by the difference of the counts is printed: start-up and
shut-down cancel out. Each write's share of the plain socket's reads is in the figure, the same
for every loop. Only user-space instructions are counted (callgrind does not see the kernel).

    python scripts/callgrind_write.py --loop ferroloop
    python scripts/callgrind_write.py --loop uvloop --size 1024

The default build runs under valgrind (rustix finds the vDSO through libc: see ferroloop-core's
Cargo.toml).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

CLIENT = """
import asyncio, socket, sys
from ferroloop.bench import loops

loop_name, count, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

async def main():
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    transport, _ = await loop.create_connection(asyncio.Protocol, *listener.getsockname())
    peer, _ = listener.accept()
    listener.close()
    message = b"x" * size
    done = 0
    while done < count:
        n = min(batch, count - done)
        for _ in range(n):
            transport.write(message)  # looked up each time, as protocols do
        done += n
        want = n * size
        while want:
            want -= len(peer.recv(want))
        assert transport.get_write_buffer_size() == 0
    transport.close()
    peer.close()

loops.run(loop_name, main())
"""


def instructions(args, count, out):
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    cmd += [args.python, "-c", CLIENT, args.loop, str(count), str(args.size), str(args.batch)]
    # A fixed hash seed: with a random one, dict probes (and so the count) vary from run to run.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, env=env)
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not found:
        sys.exit(f"the client failed:\n{proc.stderr}")
    return int(found.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", default="ferroloop", help="asyncio, uvloop or ferroloop")
    parser.add_argument("--count", type=int, default=20000, help="writes of the shorter run")
    parser.add_argument("--size", type=int, default=64, help="bytes per write")
    parser.add_argument("--batch", type=int, default=256, help="writes between the peer's reads")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the client")
    parser.add_argument("--label", help="name in the output (default: the loop's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        short = instructions(args, args.count, os.path.join(tmp, "callgrind.short"))
        long = instructions(args, 3 * args.count, os.path.join(tmp, "callgrind.long"))
    per = (long - short) / (2 * args.count)
    label = args.label or args.loop
    print(f"{label} tcp write {args.size} B: {per:,.0f} instructions per write")
    return 0


if __name__ == "__main__":
    sys.exit(main())
