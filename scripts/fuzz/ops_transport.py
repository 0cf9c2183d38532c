"""The transport ops of the fuzz program interpreter (``TransportOps``, a mixin of Runner).

Owns ``Transport`` (a client transport under test, its protocol and its peer: a raw socket or a
server-side protocol) and the ``tr_*`` ops: open (over a socketpair or a TCP server), write and
writelines, sends from the peer, pause/resume reading, write_eof, close, abort and the peer's
close, each waiting until the other end saw its effect.
"""

from __future__ import annotations

import asyncio
import sys

from runner_core import SHORT, TIMEOUT, Transport, payload
from tracenorm import digest, exc_repr

#: asyncio 3.12 and 3.13: the socket transport's own writelines (3.12) calls no
#: _maybe_pause_protocol until 3.14.
WRITELINES_SKIPS_FLOW_CONTROL = (3, 12) <= sys.version_info[:2] < (3, 14)


class TransportOps:
    """The ``tr_*`` ops (a mixin of runner.Runner: uses its loop, rec, pair and wait_for_cond)."""

    # -- transports -----------------------------------------------------------------------
    def _proto(self, t: Transport):
        runner = self

        class Proto(asyncio.Protocol):
            def __init__(self):
                self.buf = bytearray()
                self.eof = False
                self.lost = False

            def _changed(self):
                if t.changed is not None:
                    t.changed.set()

            def connection_made(self, transport):
                runner.rec(t.src, "ev", "made", type(transport).__mro__[-2].__name__)

            def data_received(self, data):
                self.buf.extend(data)
                runner.rec(t.src, "chunk", len(data))
                self._changed()

            def eof_received(self):
                self.eof = True
                runner.rec(t.src, "ev", "eof")
                self._changed()

            def connection_lost(self, exc):
                self.lost = True
                runner.rec(t.src, "ev", "lost", exc_repr(exc) if exc else None)
                self._changed()

            def pause_writing(self):
                if not t.unpaced:
                    runner.rec(t.src, "ev", "pause_writing")

            def resume_writing(self):
                if not t.unpaced:
                    runner.rec(t.src, "ev", "resume_writing")

        return Proto()

    def _peer_proto(self, t: Transport):
        class Peer(asyncio.Protocol):
            def connection_made(self, transport):
                t.peer_tr = transport
                t.changed.set()

            def data_received(self, data):
                t.peer_buf.extend(data)
                t.changed.set()

            def eof_received(self):
                t.peer_eof = True
                t.changed.set()
                return True  # stay half-open: the peer may still send

            def connection_lost(self, exc):
                t.peer_eof = True
                t.peer_closed = True
                t.changed.set()

        return Peer()

    async def _peer_reader(self, t: Transport):
        try:
            while True:
                chunk = await self.loop.sock_recv(t.peer_sock, 65536)
                if not chunk:
                    break
                t.peer_buf.extend(chunk)
                t.changed.set()
        except OSError:
            pass
        t.peer_eof = True
        t.changed.set()

    async def op_tr_open(self, op):
        t = Transport(f"tr{op['id']}")
        t.changed = asyncio.Event()
        if op["mode"] == "pair":
            a, b = self.pair()
            t.peer_sock = b
            t.tr, t.proto = await self.loop.create_connection(lambda: self._proto(t), sock=a)
            t.peer_task = self.loop.create_task(self._peer_reader(t))
        else:
            t.server = await self.loop.create_server(lambda: self._peer_proto(t), "127.0.0.1", 0)
            port = t.server.sockets[0].getsockname()[1]
            t.tr, t.proto = await self.loop.create_connection(
                lambda: self._proto(t), "127.0.0.1", port
            )
            await self.wait_for_cond(lambda: t.peer_tr is not None, t.changed)
        self.rec(
            t.src,
            "ev",
            "open",
            t.tr.is_closing(),
            t.tr.is_reading(),
            t.tr.get_extra_info("socket") is not None,
            t.tr.get_write_buffer_limits(),
        )
        self.objs[op["id"]] = t
        self.transports.append(t)

    def _writable(self, t: Transport) -> bool:
        return not (t.closed or t.eof_written or t.proto.lost or t.peer_closed)

    async def _sync_peer(self, t: Transport, label: str):
        if t.peer_closed or (t.peer_sock is not None and t.peer_sock.fileno() < 0):
            return
        ok = await self.wait_for_cond(
            lambda: len(t.peer_buf) >= t.expected_peer or t.peer_eof, t.changed
        )
        self.rec(t.src, "data", label, ok, len(t.peer_buf), digest(t.peer_buf))

    async def _sync_proto(self, t: Transport, label: str):
        if t.paused or t.proto.lost:
            await asyncio.sleep(SHORT)
        else:
            await self.wait_for_cond(
                lambda: len(t.proto.buf) >= t.expected_proto or t.proto.eof, t.changed
            )
        self.rec(t.src, "data", label, len(t.proto.buf), digest(t.proto.buf))

    async def op_tr_write(self, op):
        t = self.objs[op["ref"]]
        chunks = [payload(p) for p in op["data"]]
        writable = self._writable(t)
        try:
            if op.get("lines"):
                # asyncio 3.12 and 3.13's socket transport writelines never pauses the protocol
                # (3.14 does, as write does; ferroloop does on every version): flow control of a
                # transport written with writelines is left out of the trace there.
                t.unpaced |= WRITELINES_SKIPS_FLOW_CONTROL
                t.tr.writelines(chunks)
            else:
                for c in chunks:
                    t.tr.write(c)
        except Exception as exc:  # noqa: BLE001
            self.rec(t.src, "exc", "write", *exc_repr(exc))
            return
        if writable:
            t.expected_peer += sum(map(len, chunks))
            await self._sync_peer(t, "peer-got")

    async def op_tr_peer_send(self, op):
        t = self.objs[op["ref"]]
        if t.peer_closed or (t.peer_sock is not None and t.peer_sock.fileno() < 0):
            self.rec(t.src, "ev", "peer-gone")
            return
        data = b"".join(payload(p) for p in op["data"])
        if t.peer_sock is not None:
            # a send that the paused transport does not read may block: do not wait for it
            sender = self.loop.create_task(self.loop.sock_sendall(t.peer_sock, data))
            t.senders.append(sender)
            await asyncio.wait([sender], timeout=SHORT)
            if sender.done() and sender.exception() is not None:
                self.rec(t.src, "exc", "peer-send", *exc_repr(sender.exception()))
                return
        else:
            t.peer_tr.write(data)
        if not t.proto.lost and not t.proto.eof:
            t.expected_proto += len(data)
        await self._sync_proto(t, "proto-got")

    async def op_tr_pause(self, op):
        t = self.objs[op["ref"]]
        t.tr.pause_reading()
        t.paused = not t.proto.lost and not t.closed
        self.rec(t.src, "ev", "paused", t.tr.is_reading())

    async def op_tr_resume(self, op):
        t = self.objs[op["ref"]]
        t.tr.resume_reading()
        t.paused = False
        self.rec(t.src, "ev", "resumed", t.tr.is_reading())
        await self._sync_proto(t, "after-resume")

    async def op_tr_write_eof(self, op):
        t = self.objs[op["ref"]]
        self.rec(t.src, "ev", "can_write_eof", t.tr.can_write_eof())
        was = self._writable(t)
        try:
            t.tr.write_eof()
        except Exception as exc:  # noqa: BLE001
            self.rec(t.src, "exc", "write_eof", *exc_repr(exc))
        t.eof_written = True
        if was and not t.peer_closed:
            ok = await self.wait_for_cond(lambda: t.peer_eof, t.changed)
            self.rec(t.src, "ev", "peer-eof", ok, len(t.peer_buf))

    async def _end(self, t: Transport, how: str):
        was = self._writable(t) or (t.eof_written and not t.closed and not t.proto.lost)
        getattr(t.tr, how)()
        t.closed = True
        self.rec(t.src, "ev", how, t.tr.is_closing())
        ok = await self.wait_for_cond(lambda: t.proto.lost, t.changed)
        self.rec(t.src, "ev", "lost-seen", ok)
        if was and not t.peer_closed:
            ok = await self.wait_for_cond(lambda: t.peer_eof, t.changed)
            self.rec(t.src, "ev", "peer-eof", ok)

    async def op_tr_close(self, op):
        await self._end(self.objs[op["ref"]], "close")

    async def op_tr_abort(self, op):
        await self._end(self.objs[op["ref"]], "abort")

    async def op_tr_peer_close(self, op):
        t = self.objs[op["ref"]]
        if t.peer_closed:
            return
        if t.peer_sock is not None:
            for task in [t.peer_task, *t.senders]:
                if task is not None:
                    task.cancel()
                    await asyncio.wait([task], timeout=TIMEOUT)
                    if not task.cancelled():
                        task.exception()
            for _ in range(2):
                await asyncio.sleep(0)
            t.peer_sock.close()
        else:
            t.peer_tr.close()
        t.peer_closed = True
        if t.paused or t.proto.lost:
            await asyncio.sleep(SHORT)
            self.rec(t.src, "ev", "after-peer-close", t.proto.eof, t.proto.lost)
        else:
            ok = await self.wait_for_cond(lambda: t.proto.lost, t.changed)
            self.rec(t.src, "ev", "after-peer-close", ok, t.proto.eof)
