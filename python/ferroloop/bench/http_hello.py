"""HTTP/1.1 keep-alive hello world, in two server styles, loaded by ``wrk``.

The server (one process per loop and style, pinned to the server CPU):

    python -m ferroloop.bench.http_hello --loop ferroloop --style proto

* ``proto``: a ``Protocol`` that buffers what it receives, splits requests at the blank line,
  parses the request line and the headers it needs (``Connection``, ``Content-Length``) and
  answers each with a ``Content-Length`` response, keeping the connection open;
* ``streams``: ``asyncio.start_server`` with ``reader.readuntil(b"\\r\\n\\r\\n")``, the same
  parsing, ``writer.write`` and ``await writer.drain()``.

The load is ``wrk -t1 -c50 -d<seconds>s --latency`` (Debian's package ``wrk``) pinned to the
client CPU; its requests per second and latency percentiles are parsed from its output.
"""

import argparse
import asyncio
import re
import resource
import socket
import subprocess
import sys

from . import loops, netbench, system

STYLES = ("proto", "streams")

#: wrk's threads and connections.
WRK_THREADS = 1
WRK_CONNS = 50

BODY = b"Hello, World!"
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(BODY)
RESPONSE = _HEAD + b"\r\n" + BODY
RESPONSE_CLOSE = _HEAD + b"Connection: close\r\n\r\n" + BODY


class BadRequest(Exception):
    pass


def parse_head(head):
    """(keep the connection open?, body length) of a request head, without the blank line."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise BadRequest(lines[0][:80])
    keep_alive = parts[2] == b"HTTP/1.1"
    length = 0
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise BadRequest(line[:80])
        name = name.strip().lower()
        if name == b"connection":
            value = value.strip().lower()
            keep_alive = value == b"keep-alive" or (keep_alive and value != b"close")
        elif name == b"content-length":
            length = int(value)
    return keep_alive, length


class HttpProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        buffer = self.buffer + data if self.buffer else data
        start = 0
        while (end := buffer.find(b"\r\n\r\n", start)) >= 0:
            try:
                keep_alive, length = parse_head(buffer[start:end])
            except (BadRequest, ValueError):
                self.transport.close()
                return
            if end + 4 + length > len(buffer):
                break  # the body is not all there yet
            start = end + 4 + length
            if not keep_alive:
                self.transport.write(RESPONSE_CLOSE)
                self.transport.close()
                return
            self.transport.write(RESPONSE)
        self.buffer = buffer[start:]


async def _handle_stream(reader, writer):
    try:
        while True:
            keep_alive, length = parse_head((await reader.readuntil(b"\r\n\r\n"))[:-4])
            if length:
                await reader.readexactly(length)
            writer.write(RESPONSE if keep_alive else RESPONSE_CLOSE)
            await writer.drain()
            if not keep_alive:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, BadRequest, ValueError):
        pass
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(style, listener, lifetime):
    loop = asyncio.get_running_loop()
    if style == "streams":
        server = await asyncio.start_server(_handle_stream, sock=listener)
    else:
        server = await loop.create_server(HttpProtocol, sock=listener)
    host, port = listener.getsockname()[:2]
    print(f"READY {host}:{port}", flush=True)
    await asyncio.sleep(lifetime)  # the runner stops the server earlier; this bounds a stray one
    server.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description="HTTP server of ferroloop's benchmark")
    parser.add_argument("--loop", required=True)
    parser.add_argument("--style", required=True, choices=STYLES)
    parser.add_argument("--lifetime", type=float, default=600, help="exit after this many seconds")
    args = parser.parse_args(argv)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    listener.setblocking(False)
    netbench.prime_allocator()
    loops.run(args.loop, serve(args.style, listener, args.lifetime))
    return 0


# -- the runner's side --------------------------------------------------------------------------

TITLE = f"http: HTTP/1.1 keep-alive hello world, wrk -t{WRK_THREADS} -c{WRK_CONNS} load"

INSTALL = "apt-get install -y wrk"


def case_name(style):
    return f"http {style}"


def units(ctx):
    return [(style, [case_name(style)]) for style in STYLES if ctx.wanted(case_name(style))]


def check(ctx):
    """Why the family cannot run here, or None."""
    if not ctx.wrk:
        return f"http skipped: wrk is not installed (install it with: {INSTALL})"
    return None


def wrk_seconds(ctx):
    """wrk takes whole seconds only: the measured duration rounded, at least 1 s."""
    return max(1, round(ctx.duration))


def setup_note(ctx):
    return (
        f"{ctx.wrk} -t{WRK_THREADS} -c{WRK_CONNS} -d{wrk_seconds(ctx)}s --latency, after a "
        "warm-up of 4 connections x 100 requests that then close"
    )


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def _micros(text):
    number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", text).groups()
    return float(number) * _UNITS[unit]


def parse_wrk(out):
    """requests, seconds, rps, p50_us, p99_us and socket errors from ``wrk --latency`` output."""
    done = re.search(r"^\s*(\d+) requests in ([\d.]+)(\w+),", out, re.M)
    rps = re.search(r"^Requests/sec:\s*([\d.]+)", out, re.M)
    percentiles = dict(re.findall(r"^\s*(50|99)%\s+([\d.]+[a-z]+)\s*$", out, re.M))
    if not (done and rps and "50" in percentiles and "99" in percentiles):
        raise ValueError("unreadable wrk output: " + " / ".join(out.strip().splitlines()[-3:]))
    result = {
        "requests": int(done.group(1)),
        "seconds": _micros(done.group(2) + done.group(3)) / 1e6,
        "rps": float(rps.group(1)),
        "p50_us": _micros(percentiles["50"]),
        "p99_us": _micros(percentiles["99"]),
    }
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    notes = []
    if errors and any(int(n) for n in errors.groups()):
        notes.append(errors.group(0))
    if bad:
        notes.append(bad.group(0))
    if notes:
        result["note"] = "wrk: " + "; ".join(notes)
    return result


def run_wrk(ctx, address, seconds):
    """One wrk run pinned to the client CPU; returns (result, error). ``client_busy`` is wrk's
    CPU time (from the kernel, once it is reaped) over the run's length."""
    cmd = [ctx.wrk, f"-t{WRK_THREADS}", f"-c{WRK_CONNS}", f"-d{seconds}s", "--latency"]
    cmd.append(f"http://{address}/")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = system.spawn(cmd, ctx.client_cpu, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=30 + 2 * seconds)
    except subprocess.TimeoutExpired:
        system.stop(proc)
        return None, f"wrk timed out after {30 + 2 * seconds} s"
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = out.decode(errors="replace")
    if proc.returncode != 0:
        tail = (err.decode(errors="replace").strip() or out.strip()).splitlines()
        return None, (tail[-1] if tail else f"wrk exit status {proc.returncode}")[:300]
    try:
        result = parse_wrk(out)
    except ValueError as e:
        return None, str(e)[:300]
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["client_busy"] = used / result["seconds"]
    return result, None


def prime(address, conns=4, requests=100, timeout=10.0):
    """A few keep-alive connections, each sending ``requests`` requests one at a time, then
    closing: warms the server up and lets its allocator reach the steady state. Returns an
    error message or None."""
    host, _, port = address.rpartition(":")
    request = f"GET / HTTP/1.1\r\nHost: {address}\r\n\r\n".encode()
    try:
        for _ in range(conns):
            with socket.create_connection((host, int(port)), timeout=timeout) as sock:
                for _ in range(requests):
                    sock.sendall(request)
                    got = b""
                    while not got.endswith(BODY):
                        chunk = sock.recv(4096)
                        if not chunk:
                            return "the server closed a keep-alive connection"
                        got += chunk
    except OSError as e:
        return f"warm-up failed: {e}"
    return None


def run(unit, loop, ctx):
    style = unit
    cases = [(case_name(style), "req/s", style)]
    seconds = wrk_seconds(ctx)
    cmd = [ctx.python, "-m", __name__, "--loop", loop, "--style", style]
    cmd += ["--lifetime", str(netbench.lifetime(ctx, cases, per_run=seconds + 5))]

    def warm_up(address, _style):
        return prime(address)

    def load(address, _style, mark):
        mark()  # wrk connects as it starts: plain TCP, nothing worth leaving out
        return run_wrk(ctx, address, seconds)

    label = f"http-{style}-{loop.replace(':', '_')}"
    yield from netbench.serve_and_measure(cmd, label, cases, ctx, warm_up, load)


if __name__ == "__main__":
    sys.exit(main())
