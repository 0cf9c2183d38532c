"""Instructions per operation, counted by callgrind: the micro cases in a fresh interpreter under
``valgrind --tool=callgrind``, once for N operations and once for 2N (after one warm-up chunk
each); the difference of the two totals over N is the marginal count per operation, start-up and
shut-down cancelled out. Unlike the wall-clock rows these counts do not move with the machine's
load: the same build and input count the same (``PYTHONHASHSEED`` is fixed so that dict probes
repeat). Only user-space instructions are counted, not the kernel's.

Echo rows: a TCP echo server (``proto``: a ``Protocol``; ``sock``: ``sock_recv``/``sock_sendall``
in a task) runs under callgrind and serves one connection of this process, which sends 1 KiB and
waits for its echo, N and then 3N times; the difference over 2N is the server's instructions
per request.

Not in the default run (it takes a few minutes): ``python -m ferroloop.bench --callgrind`` adds
it, ``--only callgrind`` runs it alone. The cases that involve other threads
(``call_soon_threadsafe``, ``run_in_executor``) are left out: their counts depend on how the
threads interleave.
"""

import os
import re
import shutil
import socket
import subprocess

from . import micro

TITLE = "callgrind: instructions per operation (fewer is better)"

#: Micro cases whose counts depend on other threads.
SKIP = ("call_soon_threadsafe", "run_in_executor")


#: Echo rows: style -> requests of the shorter run.
ECHO = {"proto": 2000, "sock": 2000}
ECHO_SIZE = 1024

ECHO_SERVER = """
import asyncio, socket, sys
from ferroloop.bench import loops

loop_name, style = sys.argv[1], sys.argv[2]

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.done.set_result(None)

async def main():
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    print(listener.getsockname()[1], flush=True)
    if style == "proto":
        done = loop.create_future()
        Echo.done = done
        server = await loop.create_server(Echo, sock=listener)
        await done
        server.close()
        return
    conn, _ = await loop.sock_accept(listener)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        while data := await loop.sock_recv(conn, 262144):
            await loop.sock_sendall(conn, data)
    listener.close()

loops.run(loop_name, main())
"""


def case_name(micro_case):
    return f"{micro_case} (instr/op)"


def echo_case(style):
    return f"tcp {style} 1KiB echo (instr/req)"


def check(ctx):
    if shutil.which("valgrind") is None:
        return "valgrind is not installed (apt-get install -y valgrind)"
    return None


def units(ctx):
    found = [
        (name, [case_name(name)])
        for name in micro.CASES
        if name not in SKIP and ctx.wanted(case_name(name))
    ]
    found += [(("echo", s), [echo_case(s)]) for s in ECHO if ctx.wanted(echo_case(s))]
    return found


def _instructions(ctx, loop, case, ops):
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    cmd += [ctx.python, "-m", micro.__name__, "--loop", loop, "--case", case, "--ops", str(ops)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, check=False)
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not found:
        lines = proc.stderr.strip().splitlines()
        return None, lines[-1] if lines else f"exit status {proc.returncode}"
    return int(found.group(1)), None


def _echo_instructions(ctx, loop, style, requests):
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    cmd += [ctx.python, "-c", ECHO_SERVER, loop, style]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            port = int(proc.stdout.readline())
            message = b"e" * ECHO_SIZE
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for _ in range(requests):
                    sock.sendall(message)
                    want = ECHO_SIZE
                    while want:
                        got = sock.recv(want)
                        if not got:
                            raise ConnectionError("the server closed the connection")
                        want -= len(got)
            _, err = proc.communicate(timeout=600)
        except (OSError, ValueError, subprocess.TimeoutExpired) as e:
            proc.kill()
            return None, f"{type(e).__name__}: {e}"
    found = re.search(r"Collected : (\d+)", err)
    if proc.returncode != 0 or not found:
        lines = err.strip().splitlines()
        return None, lines[-1] if lines else f"exit status {proc.returncode}"
    return int(found.group(1)), None


def run(unit, loop, ctx):
    if isinstance(unit, tuple):
        yield from _run_echo(unit[1], loop, ctx)
        return
    record = {"case": case_name(unit), "unit": "instr/op", "lower_is_better": True}
    n = micro.CASES[unit][1]
    short, error = _instructions(ctx, loop, unit, n)
    if error is None:
        long, error = _instructions(ctx, loop, unit, 2 * n)
    if error is not None:
        yield {**record, "error": error}
        return
    yield {**record, "value": (long - short) / n}


def _run_echo(style, loop, ctx):
    record = {"case": echo_case(style), "unit": "instr/req", "lower_is_better": True}
    n = ECHO[style]
    short, error = _echo_instructions(ctx, loop, style, n)
    if error is None:
        long, error = _echo_instructions(ctx, loop, style, 3 * n)
    if error is not None:
        yield {**record, "error": error}
        return
    yield {**record, "value": (long - short) / (2 * n)}
