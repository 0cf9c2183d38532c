"""The service ops of the fuzz program interpreter (``ServiceOps``, a mixin of Runner).

Owns the ops over the loop's higher-level services: streams (start_server/open_connection),
the ``sock_*`` calls (accept/connect, recv_into, sendall, UDP), subprocesses, signal handlers
and the default executor.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time

from runner_core import TIMEOUT, payload
from tracenorm import digest, exc_repr


class ServiceOps:
    """Streams, sock_*, subprocess, signal and executor ops (a mixin of runner.Runner)."""

    # -- streams, sock_*, subprocesses, signals, executor ----------------------------------
    async def op_stream(self, op):
        src = f"st{op['id']}"

        async def handler(reader, writer):
            try:
                while True:
                    line = await reader.readline()
                    if not line:
                        break
                    writer.write(line.upper())
                    await writer.drain()
            except Exception as exc:  # noqa: BLE001
                self.rec(src, "exc", "server", *exc_repr(exc))
                # read the rest, so that closing sends a FIN (unread data would send a RST,
                # and whether any is left depends on how the reads were cut)
                await reader.read()
                writer.write(b"too long\n")
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        kind = op["kind"]
        try:
            if kind == "echo_lines":
                for k in range(op["lines"]):
                    writer.write(f"line {k} of {op['id']}\n".encode())
                    await writer.drain()
                    self.rec("main", "data", src, await reader.readline())
                writer.write_eof()
                self.rec("main", "data", src, "rest", await reader.read())
                self.rec("main", "ev", src, "at_eof", reader.at_eof())
            elif kind == "readexactly_short":
                writer.write(b"abc\n")
                writer.write_eof()
                await reader.readexactly(10)
            elif kind == "readuntil":
                writer.write(b"a;bb;ccc;\n")
                await writer.drain()
                for _ in range(3):
                    self.rec("main", "data", src, await reader.readuntil(b";"))
                writer.write_eof()
                await reader.readuntil(b";")
            else:
                # no newline at all: readline's error does not depend on how reads are cut
                writer.write(b"x" * 200_000)
                writer.write_eof()
                self.rec("main", "data", src, await reader.readline())
        except Exception as exc:  # noqa: BLE001
            self.rec("main", "exc", src, *exc_repr(exc))
        writer.close()
        try:
            await writer.wait_closed()
        except Exception as exc:  # noqa: BLE001
            self.rec("main", "exc", src, "wait_closed", *exc_repr(exc))
        server.close()
        await server.wait_closed()

    async def _recv_n(self, s, n, into=False):
        buf = bytearray()
        while len(buf) < n:
            if into:
                part = bytearray(min(65536, n - len(buf)))
                got = await self.loop.sock_recv_into(s, part)
                chunk = bytes(part[:got])
            else:
                chunk = await self.loop.sock_recv(s, 65536)
            if not chunk:
                break
            buf.extend(chunk)
        return buf

    async def op_sock(self, op):
        src = f"sk{op['id']}"
        data = payload(op["data"])
        kind = op["kind"]
        loop = self.loop
        if kind == "connect_accept":
            lsock = self.sock()
            lsock.bind(("127.0.0.1", 0))
            lsock.listen()
            lsock.setblocking(False)
            csock = self.sock()
            csock.setblocking(False)
            accept = loop.create_task(loop.sock_accept(lsock))
            await loop.sock_connect(csock, lsock.getsockname())
            conn, addr = await asyncio.wait_for(accept, TIMEOUT)
            self.socks.append(conn)
            self.rec("main", "ev", src, "accepted", conn.getblocking(), addr == csock.getsockname())
            sender = loop.create_task(loop.sock_sendall(csock, data))
            got = await asyncio.wait_for(self._recv_n(conn, len(data)), TIMEOUT)
            self.rec("main", "data", src, len(got), digest(got), await sender)
            csock.close()
            self.rec("main", "data", src, "eof", await loop.sock_recv(conn, 10))
            conn.close()
            lsock.close()
        elif kind in ("recv_into", "sendall_big"):
            a, b = self.pair()
            sender = loop.create_task(loop.sock_sendall(a, data))
            got = await asyncio.wait_for(
                self._recv_n(b, len(data), into=kind == "recv_into"), TIMEOUT
            )
            self.rec("main", "data", src, len(got), digest(got), await sender)
            a.close()
            b.close()
        elif kind == "peer_close":
            a, b = self.pair()
            a.close()
            self.rec("main", "data", src, await loop.sock_recv(b, 10))
            b.close()
        else:
            a = self.sock(socket.AF_INET, socket.SOCK_DGRAM)
            b = self.sock(socket.AF_INET, socket.SOCK_DGRAM)
            for s in (a, b):
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
            small = data[:1000]
            await loop.sock_sendto(a, small, b.getsockname())
            got, addr = await asyncio.wait_for(loop.sock_recvfrom(b, 2000), TIMEOUT)
            self.rec("main", "data", src, digest(got), addr == a.getsockname())
            a.close()
            b.close()

    async def op_subprocess(self, op):
        src = f"sp{op['id']}"
        kind = op["kind"]
        code = op["code"]
        exe = sys.executable
        PIPE, DEVNULL = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
        if kind == "echo":
            prog = f"import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d[::-1]); sys.exit({code})"
            proc = await asyncio.create_subprocess_exec(exe, "-c", prog, stdin=PIPE, stdout=PIPE)
            out, err = await proc.communicate(payload(op["input"]))
            self.rec("main", "data", src, len(out), digest(out), err, proc.returncode)
        elif kind == "exit":
            proc = await asyncio.create_subprocess_exec(exe, "-c", f"raise SystemExit({code})")
            self.rec("main", "ev", src, await proc.wait(), proc.returncode)
        elif kind == "stderr":
            prog = f"import sys; sys.stderr.write('e' * {code * 100}); print('out')"
            proc = await asyncio.create_subprocess_exec(exe, "-c", prog, stdout=PIPE, stderr=PIPE)
            out, err = await proc.communicate()
            self.rec("main", "data", src, out, len(err), proc.returncode)
        elif kind in ("kill", "terminate"):
            proc = await asyncio.create_subprocess_exec(
                exe, "-c", "import time; print('up', flush=True); time.sleep(30)", stdout=PIPE
            )
            self.rec("main", "data", src, await proc.stdout.readline())
            getattr(proc, kind)()
            self.rec("main", "ev", src, await proc.wait())
            self.rec("main", "data", src, await proc.stdout.read())
        elif kind == "shell":
            proc = await asyncio.create_subprocess_shell(f"echo hi; exit {code}", stdout=PIPE)
            out, _ = await proc.communicate()
            self.rec("main", "data", src, out, proc.returncode)
        else:
            proc = await asyncio.create_subprocess_exec(
                exe, "-c", "print('x')", stdout=DEVNULL, stderr=DEVNULL, stdin=DEVNULL
            )
            self.rec("main", "ev", src, await proc.wait(), proc.stdout, proc.stdin)

    async def op_signal(self, op):
        src = f"sig{op['id']}"
        sig = getattr(signal, op["sig"])
        fut = self.loop.create_future()

        def h(arg):
            self.rec(src, "ev", "sig", arg)
            if not fut.done():
                fut.set_result(None)

        self.rec(src, "ev", "add", repr(self.loop.add_signal_handler(sig, h, op["arg"])))
        if op["readd"]:
            self.loop.add_signal_handler(sig, h, op["arg"] + 100)
        os.kill(os.getpid(), sig)
        await asyncio.wait([fut], timeout=TIMEOUT)
        self.rec(src, "ev", "got", fut.done())
        self.rec(src, "ev", "remove", self.loop.remove_signal_handler(sig))
        self.rec(src, "ev", "remove", self.loop.remove_signal_handler(sig))

    async def op_executor(self, op):
        src = f"ex{op['id']}"
        loop = self.loop

        def work(k):
            kind = op["kind"]
            if kind == "raise":
                raise ValueError(f"exec {k}")
            if kind == "threadsafe":
                # one source per worker: the workers' calls interleave by thread timing
                loop.call_soon_threadsafe(self.rec, f"{src}.{k}", "ev", "threadsafe", k)
            if kind == "sleep":
                time.sleep(0.005)
            return k * k

        futs = [loop.run_in_executor(None, work, k) for k in range(op["n"])]
        res = await asyncio.gather(*futs, return_exceptions=True)
        self.rec(
            "main",
            "ev",
            src,
            [exc_repr(r) if isinstance(r, BaseException) else r for r in res],
        )
        if op["kind"] == "threadsafe":
            await asyncio.sleep(0)
