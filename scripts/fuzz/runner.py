"""Runs one fuzz program on one loop and prints its trace (what user code observed) as JSON.

    python scripts/fuzz/runner.py --loop asyncio|ferroloop --backend B (--seed S | --ops FILE)

The trace is a list of events ``[source, kind, *values]``:

* ``source`` names who observed it: ``main`` (the main coroutine, which runs the ops one after
  the other), one source per op that fires callbacks (``soon3``, ``timers5``, ``task7``,
  ``tr4`` ...), ``handler:<message>`` (the loop's exception handler, for calls that no
  op's callback raised), ``log:<message>`` (the ``asyncio`` logger),
  ``closed`` (calls on the closed loop) and ``fds`` (fds left open at the end).  Events of one
  source happen in an order that asyncio defines; events of different sources may interleave
  differently from run to run, so the driver compares the traces source by source.
* ``kind`` is ``ev`` (an event), ``data`` (received bytes, as length and digest), ``chunk``
  (a ``data_received`` call: consecutive chunks are merged before comparing, since how a
  stream is cut into reads is not defined) or ``exc`` (an exception: class and message).

Nothing in the trace holds an address, an fd number, a port or a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import gc
import hashlib
import json
import logging
import os
import re
import selectors
import signal
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen  # noqa: E402

TIMEOUT = 2.0  # the longest any single wait of a program may take (an op: twice that)
SHORT = 0.03  # how long to watch for something that must NOT happen
VAR = contextvars.ContextVar("fuzzvar", default="unset")

_ORACLE_SELECTORS = {
    "epoll": "EpollSelector",
    "poll": "PollSelector",
    "select": "SelectSelector",
    "io_uring": "PollSelector",
}


def payload(spec: dict) -> bytes:
    """The bytes of a payload spec: deterministic, not constant."""
    size, b = spec["size"], spec["b"]
    unit = bytes((b + k) % 256 for k in range(251))
    return (unit * (size // len(unit) + 1))[:size]


def digest(data: bytes) -> str:
    return hashlib.sha1(bytes(data)).hexdigest()[:12]


#: asyncio 3.12 and 3.13: the socket transport's own writelines (3.12) calls no
#: _maybe_pause_protocol until 3.14.
WRITELINES_SKIPS_FLOW_CONTROL = (3, 12) <= sys.version_info[:2] < (3, 14)

_ADDR = re.compile(r"0x[0-9a-fA-F]+")
_FD = re.compile(r"fd=-?\d+")
_PATH = re.compile(r"(/[^\s:'\"()<>]+)+\.py")
_LINE = re.compile(r"\.py:\d+")
_WHEN = re.compile(r"when=[0-9.e+-]+")
_CUT = re.compile(r"\.\.\.[0-9.e+-]*")  # reprlib's cut of such a repr
_CUT_ADDR = re.compile(r"\.\.\.x[0-9a-fA-F]+")  # an address whose "0" reprlib cut off
_FLOAT = re.compile(r"\d+\.\d{3,}")  # times, e.g. in a TimerHandle argument's repr
_SOCKADDR = re.compile(r"laddr=\([^)]*\)|raddr=\([^)]*\)|laddr=[^,>]*|raddr=[^,>]*")


def norm(text: str) -> str:
    text = _ADDR.sub("0x?", text)
    text = _CUT_ADDR.sub("...x?", text)
    text = _FD.sub("fd=?", text)
    text = _LINE.sub(".py:?", text)
    text = _PATH.sub(lambda m: Path(m.group(0)).name, text)
    text = _SOCKADDR.sub("addr=?", text)
    text = _WHEN.sub("when=?", text)
    text = _CUT.sub("...", text)
    text = _FLOAT.sub("T", text)
    return text


def exc_repr(exc: BaseException) -> list:
    cls = type(exc)
    out = [f"{cls.__module__}.{cls.__qualname__}", norm(str(exc))]
    if isinstance(exc, OSError):
        out.append(exc.errno)
    return out


def outcome(fut) -> list:
    """What a done future holds, as user code sees it through result()."""
    if not fut.done():
        return ["pending"]
    try:
        return ["result", norm(repr(fut.result()))]
    except BaseException as exc:  # noqa: BLE001 - CancelledError included on purpose
        return ["raised", *exc_repr(exc)]


class FuzzError(Exception):
    """Raised by callbacks on purpose; names the source it belongs to."""

    def __init__(self, src: str, msg: str):
        super().__init__(msg)
        self.src = src


class LogRecorder(logging.Handler):
    def __init__(self, runner: Runner):
        super().__init__(logging.DEBUG)
        self.runner = runner

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage().splitlines()[0]
        except Exception:  # noqa: BLE001
            msg = "?"
        exc = record.exc_info[1] if record.exc_info else None
        self.runner.rec(
            "log:" + norm(msg),
            "ev",
            record.levelname,
            norm(msg),
            exc_repr(exc) if exc is not None else None,
        )


class Transport:
    """A client transport under test and its peer (a raw socket or a server-side protocol)."""

    def __init__(self, src: str):
        self.src = src
        self.tr = None
        self.proto = None
        self.peer_sock = None
        self.peer_tr = None
        self.server = None
        self.peer_buf = bytearray()
        self.peer_eof = False
        self.peer_closed = False
        #: Written with writelines where asyncio's does no flow control (see op_tr_write).
        self.unpaced = False
        self.peer_task = None
        self.expected_peer = 0  # bytes the peer must eventually get
        self.expected_proto = 0  # bytes the protocol must eventually get
        self.paused = False
        self.eof_written = False
        self.closed = False  # close() or abort() called by user code
        self.changed: asyncio.Event | None = None
        self.senders: list[asyncio.Task] = []


class Runner:
    def __init__(self, loop, ops: list[dict]):
        self.loop = loop
        self.ops = ops
        self.trace: list[list] = []
        self.objs: dict[int, object] = {}
        self.executed = 0
        self.socks: list[socket.socket] = []
        self.tasks: list[asyncio.Future] = []
        self.futures: list[asyncio.Future] = []
        self.transports: list[Transport] = []
        self.timer_deadline = 0.0

    # -- recording ------------------------------------------------------------------------
    def rec(self, src: str, kind: str, *vals) -> None:
        self.trace.append([src, kind, *vals])

    def handler(self, loop, context) -> None:
        exc = context.get("exception")
        # Calls of unrelated origins (a callback, a direct call, a future collected after an
        # executor thread finished) interleave by timing: one source per origin.
        msg = norm(str(context.get("message")))
        src = getattr(exc, "src", None) or "handler:" + msg
        self.rec(
            src,
            "exc",
            "handler",
            norm(str(context.get("message"))),
            sorted(context),
            exc_repr(exc) if exc is not None else None,
        )

    def sock(self, *args) -> socket.socket:
        s = socket.socket(*args)
        self.socks.append(s)
        return s

    def pair(self) -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        self.socks += [a, b]
        return a, b

    async def wait_for_cond(self, cond, event: asyncio.Event | None, timeout=TIMEOUT) -> bool:
        """Wait until cond() holds; poll an asyncio.Event that callbacks set on change."""
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if event is None:
                await asyncio.sleep(0.005)
                continue
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), min(left, 0.2))
            except TimeoutError:
                pass
        return True

    # -- the program ----------------------------------------------------------------------
    async def main(self) -> None:
        self.loop.set_exception_handler(self.handler)
        for op in self.ops:
            if op["op"].startswith("closed_"):
                continue
            if "ref" in op and op["ref"] not in self.objs:
                self.rec("main", "ev", "skip", op["id"])
                continue
            self.executed += 1
            try:
                await asyncio.wait_for(getattr(self, "op_" + op["op"])(op), TIMEOUT * 2)
            except TimeoutError:
                self.rec("main", "ev", "timeout", op["id"], op["op"])
            except Exception as exc:  # noqa: BLE001
                self.rec("main", "exc", "op", op["id"], *exc_repr(exc))
        await self.cleanup()
        self.rec("main", "ev", "end")

    async def cleanup(self) -> None:
        left = self.timer_deadline - self.loop.time()
        if left > 0:
            await asyncio.sleep(left + 0.03)
        pending = [f for f in self.tasks + self.futures if not f.done()]
        if pending:
            done, still = await asyncio.wait(pending, timeout=TIMEOUT)
            for f in still:
                self.rec("main", "ev", "never-done", f._fuzz_src)
                f.cancel()
        await asyncio.sleep(0)
        for f in self.tasks + self.futures:
            self.rec(f._fuzz_src, "ev", "final", outcome(f))
        for t in self.transports:
            if not t.closed:
                t.tr.close()
                t.closed = True
            await self.wait_for_cond(lambda t=t: t.proto.lost, t.changed)
            # end the peer's sock_* calls before closing its socket: closing a socket under a
            # pending sock_recv/sock_sendall is a misuse whose outcome is asyncio's accident
            # (an EBADF from the selector, in a done callback, on some backends only)
            for task in [t.peer_task, *t.senders]:
                if task is not None:
                    task.cancel()
                    await asyncio.wait([task], timeout=TIMEOUT)
                    if not task.cancelled():
                        task.exception()  # retrieved: no "never retrieved" log at GC
            for _ in range(2):
                await asyncio.sleep(0)  # let the sock_* calls' done callbacks run
            if t.peer_tr is not None:
                t.peer_tr.close()
            if t.peer_sock is not None:
                t.peer_sock.close()
            if t.server is not None:
                t.server.close()
                await asyncio.wait_for(t.server.wait_closed(), TIMEOUT)
        for _ in range(3):
            await asyncio.sleep(0)

    # -- scheduling -----------------------------------------------------------------------
    def _soon_cb(self, src, k, raise_, chain):
        self.rec(src, "ev", "cb", k, chain, VAR.get())
        if chain:
            self.loop.call_soon(self._soon_cb, src, k, False, chain - 1)
        if raise_:
            raise FuzzError(src, f"boom {src} {k}")

    async def op_soon_batch(self, op):
        src = f"soon{op['id']}"
        handles = []
        for k in range(op["n"]):
            call = self.loop.call_soon_threadsafe if op["threadsafe"][k] else self.loop.call_soon
            kwargs = {}
            if op["context"]:
                ctx = contextvars.copy_context()
                ctx.run(VAR.set, f"ctx{op['id']}")
                kwargs["context"] = ctx
            handles.append(call(self._soon_cb, src, k, k in op["raise"], op["chain"][k], **kwargs))
        for k in op["cancel"]:
            handles[k].cancel()
            self.rec(src, "ev", "cancelled", k, handles[k].cancelled())
        self.objs[op["id"]] = handles

    def _timer_cb(self, src, k, raise_, cancel):
        self.rec(src, "ev", "timer", k)
        if cancel is not None:
            cancel.cancel()
        if raise_:
            raise FuzzError(src, f"timer boom {src} {k}")

    async def op_timers(self, op):
        src = f"timers{op['id']}"
        base = self.loop.time()
        order = sorted(range(len(op["delays"])), key=lambda k: -op["delays"][k])
        handles: dict[int, object] = {}
        # schedule the latest first, so that a timer can be given the handle it cancels
        for k in order:
            delay = op["delays"][k] / 1000
            cancel = None
            if op["cancel_later"] and op["cancel_later"][0] == k:
                cancel = handles[op["cancel_later"][1]]
            args = (self._timer_cb, src, k, k in op["raise"], cancel)
            if op["at"][k]:
                h = self.loop.call_at(base + delay, *args)
            else:
                h = self.loop.call_later(delay, *args)
            handles[k] = h
            self.timer_deadline = max(self.timer_deadline, base + delay + 0.01)
        for k in op["cancel"]:
            handles[k].cancel()
            self.rec(src, "ev", "cancelled", k, handles[k].cancelled())
        self.objs[op["id"]] = handles

    def _fut_cb(self, src, j, fut):
        self.rec(src, "ev", "done_cb", j, outcome(fut))

    async def op_future(self, op):
        src = f"fut{op['id']}"
        fut = self.loop.create_future()
        fut._fuzz_src = src
        cbs = []
        for j in range(op["ncb"]):
            cb = functools.partial(self._fut_cb, src, j)
            fut.add_done_callback(cb)
            cbs.append(cb)
        if op["remove_cb"] and cbs:
            self.rec(src, "ev", "removed", fut.remove_done_callback(cbs[0]))

        def resolve():
            if fut.done():
                self.rec(src, "ev", "already-done")
                return
            action = op["action"]
            if action == "result":
                fut.set_result(f"r{op['id']}")
            elif action == "exception":
                fut.set_exception(KeyError(f"k{op['id']}"))
            elif action == "cancel":
                self.rec(src, "ev", "cancel", fut.cancel())
            else:
                self.rec(src, "ev", "cancel", fut.cancel(msg=f"m{op['id']}"))

        via = op["via"]
        if via == "now":
            resolve()
        elif via == "soon":
            self.loop.call_soon(resolve)
        elif via == "later":
            self.loop.call_later(0.01, resolve)
        else:
            self.loop.call_soon_threadsafe(resolve)
        self.objs[op["id"]] = fut
        self.futures.append(fut)

    async def _task_body(self, src, op):
        self.rec(src, "ev", "start", VAR.get())
        try:
            for s in range(op["steps"]):
                await asyncio.sleep(0)
                self.rec(src, "ev", "step", s)
            out = op["outcome"]
            if out == "raise":
                raise FuzzError(src, f"task {op['id']} failed")
            if out == "cancel_self":
                self.rec(src, "ev", "self-cancel", asyncio.current_task().cancel())
                await asyncio.sleep(0)
                self.rec(src, "ev", "not-cancelled")
            if out == "await_sleep":
                await asyncio.sleep(0.02)
            return f"t{op['id']}"
        except asyncio.CancelledError as exc:
            self.rec(src, "exc", "in-body", *exc_repr(exc))
            raise

    def _cancel_hop(self, src, task, hops, msg):
        if hops:
            self.loop.call_soon(self._cancel_hop, src, task, hops - 1, msg)
            return
        self.rec(src, "ev", "cancel", task.cancel(msg) if msg else task.cancel())

    async def op_task(self, op):
        src = f"task{op['id']}"
        VAR.set(f"task-ctx{op['id']}")
        kwargs = {"name": f"fuzz-{op['id']}"} if op["name"] else {}
        task = self.loop.create_task(self._task_body(src, op), **kwargs)
        VAR.set("unset")
        task._fuzz_src = src
        if op["name"]:
            self.rec(src, "ev", "name", task.get_name())
        task.add_done_callback(functools.partial(self._fut_cb, src, "task"))
        if op["cancel"] == 0:
            self._cancel_hop(src, task, 0, op["cancel_msg"])
        elif op["cancel"] is not None:
            self.loop.call_soon(self._cancel_hop, src, task, op["cancel"] - 1, op["cancel_msg"])
        self.objs[op["id"]] = task
        self.tasks.append(task)

    async def op_yield(self, op):
        for _ in range(op["n"]):
            await asyncio.sleep(0)

    async def op_sleep(self, op):
        await asyncio.sleep(op["ms"] / 1000)

    async def op_join(self, op):
        fut = self.objs[op["ref"]]
        await asyncio.wait([fut], timeout=TIMEOUT)
        self.rec("main", "ev", "join", op["ref"], outcome(fut))

    # -- readers and writers --------------------------------------------------------------
    async def op_reader(self, op):
        src = f"rd{op['id']}"
        a, b = self.pair()
        data = b"".join(payload(c) for c in op["chunks"])
        buf = bytearray()
        tags: set[str] = set()
        done = self.loop.create_future()

        def cb(tag):
            try:
                chunk = a.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            tags.add(tag)
            if not chunk:
                self.rec(src, "ev", "eof", tag)
                self.rec(src, "ev", "remove-in-cb", self.loop.remove_reader(a))
                if not done.done():
                    done.set_result(None)
                return
            buf.extend(chunk)
            if len(buf) >= len(data) and not op["eof"] and not done.done():
                done.set_result(None)

        self.rec(src, "ev", "add", repr(self.loop.add_reader(a, cb, "first")))
        if op["replace"]:
            self.rec(src, "ev", "add2", repr(self.loop.add_reader(a, cb, "second")))
        if data:
            await self.loop.sock_sendall(b, data)
        if op["eof"]:
            b.shutdown(socket.SHUT_WR)
        elif not data:
            done.set_result(None)
        await asyncio.wait([done], timeout=TIMEOUT)
        self.rec(src, "data", len(buf), digest(buf), sorted(tags), done.done())
        self.rec(src, "ev", "remove", self.loop.remove_reader(a))
        if op["remove_twice"]:
            self.rec(src, "ev", "remove", self.loop.remove_reader(a))
        a.close()
        b.close()

    async def op_writer(self, op):
        src = f"wr{op['id']}"
        a, b = self.pair()
        done = self.loop.create_future()

        def cb():
            self.rec(src, "ev", "writable")
            self.rec(src, "ev", "remove-in-cb", self.loop.remove_writer(a))
            if not done.done():
                done.set_result(None)

        self.rec(src, "ev", "add", repr(self.loop.add_writer(a, cb)))
        await asyncio.wait([done], timeout=TIMEOUT)
        self.rec(src, "ev", "done", done.done())
        if op["remove_twice"]:
            self.rec(src, "ev", "remove", self.loop.remove_writer(a))
        a.close()
        b.close()

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

    async def op_exc_handler(self, op):
        kind = op["kind"]
        loop = self.loop
        if kind == "direct":
            loop.call_exception_handler(
                {"message": f"direct {op['id']}", "exception": KeyError(op["id"])}
            )
        elif kind == "reset_default":
            loop.set_exception_handler(None)
            self.rec("main", "ev", "handler-is-none", loop.get_exception_handler() is None)
            loop.set_exception_handler(self.handler)
            self.rec("main", "ev", "handler-back", loop.get_exception_handler() == self.handler)
        else:

            def bad_handler(loop, context):
                self.rec("handler:bad", "ev", "bad-handler", norm(str(context.get("message"))))
                raise RuntimeError("handler broke")

            loop.set_exception_handler(bad_handler)
            loop.call_exception_handler({"message": f"to bad handler {op['id']}"})
            loop.set_exception_handler(self.handler)

    # -- calls that must fail ------------------------------------------------------------
    async def op_bad(self, op):
        name = op["call"]
        src = f"bad:{name}"
        try:
            res = BAD_CALLS[name](self)
            if asyncio.iscoroutine(res):
                res = await asyncio.wait_for(res, TIMEOUT)
            self.rec("main", "ev", src, "ok", norm(repr(res)))
        except Exception as exc:  # noqa: BLE001
            self.rec("main", "exc", src, *exc_repr(exc))

    def closed_call(self, op):
        name = op["call"]
        src = f"closed:{name}"
        try:
            res = CLOSED_CALLS[name](self)
            if asyncio.iscoroutine(res):
                try:
                    res.send(None)
                    res.close()
                    res = "<suspended>"
                except StopIteration as stop:
                    res = stop.value
            self.rec("closed", "ev", src, "ok", type(res).__name__)
        except Exception as exc:  # noqa: BLE001
            self.rec("closed", "exc", src, *exc_repr(exc))


async def _coro():
    return 1


def _cb():
    pass


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _with_data(r: Runner, blocking_reader: bool):
    a, b = socket.socketpair()
    r.socks += [a, b]
    b.sendall(b"hello")
    time.sleep(0.001)
    return a


def _bad_connect(r: Runner):
    s = r.sock()
    s.setblocking(False)
    port = _closed_port()

    async def go():
        try:
            await r.loop.sock_connect(s, ("127.0.0.1", port))
        except OSError as exc:
            raise type(exc)(exc.errno, str(exc).replace(str(port), "PORT")) from None

    return go()


def _coro_closed(r: Runner, make):
    c = _coro()
    try:
        return make(c)
    finally:
        c.close()


BAD_CALLS = {
    "call_soon_noncallable": lambda r: r.loop.call_soon(1),
    "call_soon_coroutine": lambda r: r.loop.call_soon(_coro),
    "call_later_noncallable": lambda r: r.loop.call_later(0.1, "x"),
    "call_later_bad_delay": lambda r: r.loop.call_later("x", _cb),
    "call_at_bad_when": lambda r: r.loop.call_at(None, _cb),
    "call_soon_threadsafe_noncallable": lambda r: r.loop.call_soon_threadsafe(None),
    "create_task_noncoro": lambda r: r.loop.create_task(1),
    "run_in_executor_coroutine": lambda r: _coro_closed(
        r, lambda c: r.loop.run_in_executor(None, c)
    ),
    "run_in_executor_coroutine_function": lambda r: r.loop.run_in_executor(None, _coro),
    "add_reader_bad_fd": lambda r: r.loop.add_reader("x", _cb),
    "add_reader_negative_fd": lambda r: r.loop.add_reader(-1, _cb),
    "add_writer_bad_fd": lambda r: r.loop.add_writer(None, _cb),
    "remove_reader_unknown": lambda r: r.loop.remove_reader(r.pair()[0]),
    "remove_writer_unknown": lambda r: r.loop.remove_writer(r.pair()[0]),
    "remove_reader_bad_fd": lambda r: r.loop.remove_reader("x"),
    "set_default_executor_bad": lambda r: r.loop.set_default_executor(object()),
    "run_until_complete_running": lambda r: r.loop.run_until_complete(r.loop.create_future()),
    "run_forever_running": lambda r: r.loop.run_forever(),
    "close_running": lambda r: r.loop.close(),
    "add_signal_handler_not_int": lambda r: r.loop.add_signal_handler("x", _cb),
    "add_signal_handler_invalid": lambda r: r.loop.add_signal_handler(1000, _cb),
    "add_signal_handler_sigkill": lambda r: r.loop.add_signal_handler(signal.SIGKILL, _cb),
    "add_signal_handler_coroutine": lambda r: r.loop.add_signal_handler(signal.SIGUSR1, _coro),
    "remove_signal_handler_unset": lambda r: r.loop.remove_signal_handler(signal.SIGUSR2),
    "sock_recv_blocking": lambda r: r.loop.sock_recv(_with_data(r, True), 10),
    "sock_sendall_blocking": lambda r: r.loop.sock_sendall(_with_data(r, True), b"x"),
    "create_connection_host_and_sock": lambda r: r.loop.create_connection(
        asyncio.Protocol, "127.0.0.1", 1, sock=r.pair()[0]
    ),
    "create_connection_no_host": lambda r: r.loop.create_connection(asyncio.Protocol),
    "create_server_sock_and_host": lambda r: r.loop.create_server(
        asyncio.Protocol, "127.0.0.1", 0, sock=r.sock()
    ),
    "create_connection_udp_sock": lambda r: r.loop.create_connection(
        asyncio.Protocol, sock=r.sock(socket.AF_INET, socket.SOCK_DGRAM)
    ),
    "subprocess_exec_text": lambda r: r.loop.subprocess_exec(
        asyncio.SubprocessProtocol, sys.executable, "-c", "pass", text=True
    ),
    "subprocess_shell_not_str": lambda r: r.loop.subprocess_shell(
        asyncio.SubprocessProtocol, ["true"]
    ),
    "future_result_pending": lambda r: r.loop.create_future().result(),
    "future_exception_pending": lambda r: r.loop.create_future().exception(),
    "future_set_result_twice": lambda r: _twice(r),
    "future_set_exception_stopiteration": lambda r: r.loop.create_future().set_exception(
        StopIteration()
    ),
    "future_set_exception_class": lambda r: _set_exc_class(r),
    "task_result_pending": lambda r: _task_result_pending(r),
    "handle_cancel_twice": lambda r: _cancel_twice(r),
    "set_exception_handler_noncallable": lambda r: r.loop.set_exception_handler(1),
    "call_later_none": lambda r: r.loop.call_later(None, _cb),
    "sock_connect_bad_address": _bad_connect,
    "getaddrinfo_bad_port": lambda r: r.loop.getaddrinfo("127.0.0.1", "no-such-service"),
}


def _twice(r: Runner):
    f = r.loop.create_future()
    f.set_result(1)
    f.set_result(2)


def _set_exc_class(r: Runner):
    f = r.loop.create_future()
    f.set_exception(ValueError)
    return outcome(f)


def _task_result_pending(r: Runner):
    t = r.loop.create_task(asyncio.sleep(0))
    t._fuzz_src = "bad-task"
    r.tasks.append(t)
    return t.result()


def _cancel_twice(r: Runner):
    h = r.loop.call_soon(_cb)
    h.cancel()
    h.cancel()
    return h.cancelled()


CLOSED_CALLS = {
    "call_soon": lambda r: r.loop.call_soon(_cb),
    "call_later": lambda r: r.loop.call_later(0.1, _cb),
    "call_at": lambda r: r.loop.call_at(r.loop.time() + 1, _cb),
    "call_soon_threadsafe": lambda r: r.loop.call_soon_threadsafe(_cb),
    "run_until_complete": lambda r: r.loop.run_until_complete(r.loop.create_future()),
    "run_forever": lambda r: r.loop.run_forever(),
    "create_task": lambda r: _coro_closed(r, r.loop.create_task),
    "create_future": lambda r: r.loop.create_future(),
    "run_in_executor": lambda r: r.loop.run_in_executor(None, _cb),
    "add_reader": lambda r: r.loop.add_reader(r.pair()[0], _cb),
    "add_writer": lambda r: r.loop.add_writer(r.pair()[0], _cb),
    "remove_reader": lambda r: r.loop.remove_reader(r.pair()[0]),
    "add_signal_handler": lambda r: r.loop.add_signal_handler(signal.SIGUSR1, _cb),
    "remove_signal_handler": lambda r: r.loop.remove_signal_handler(signal.SIGUSR1),
    "close_again": lambda r: r.loop.close(),
    "is_closed": lambda r: r.loop.is_closed(),
    "is_running": lambda r: r.loop.is_running(),
    "stop": lambda r: r.loop.stop(),
    "time": lambda r: r.loop.time(),
    "shutdown_asyncgens": lambda r: r.loop.shutdown_asyncgens(),
    "shutdown_default_executor": lambda r: r.loop.shutdown_default_executor(),
    "sock_recv": lambda r: r.loop.sock_recv(r.pair()[0], 10),
    "create_connection": lambda r: r.loop.create_connection(asyncio.Protocol, sock=r.pair()[0]),
    "getaddrinfo": lambda r: r.loop.getaddrinfo("127.0.0.1", 80),
}


def _fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        out[int(name)] = target
    return out


def _fd_kind(target: str) -> str:
    return re.sub(r"\[\d+\]$", "", target).rstrip(":")


def make_loop(name: str, backend: str):
    if name == "asyncio":
        return asyncio.SelectorEventLoop(getattr(selectors, _ORACLE_SELECTORS[backend])())
    import ferroloop

    return ferroloop.new_event_loop(backend=backend)


def run(name: str, backend: str, ops: list[dict]) -> dict:
    before = _fds()
    logger = logging.getLogger("asyncio")
    loop = make_loop(name, backend)
    asyncio.set_event_loop(loop)
    runner = Runner(loop, ops)
    logger.addHandler(LogRecorder(runner))
    logger.propagate = False
    try:
        loop.run_until_complete(runner.main())
    except BaseException as exc:  # noqa: BLE001
        runner.rec("main", "exc", "run_until_complete", *exc_repr(exc))
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
    for op in ops:
        if op["op"].startswith("closed_"):
            runner.executed += 1
            runner.closed_call(op)
    asyncio.set_event_loop(None)
    for s in runner.socks:
        s.close()
    runner.objs.clear()
    runner.tasks.clear()
    runner.futures.clear()
    runner.transports.clear()
    del loop
    gc.collect()
    after = _fds()
    leaked = sorted(
        _fd_kind(t) for fd, t in after.items() if fd not in before and not t.startswith("/proc/")
    )
    runner.rec("fds", "ev", leaked)
    return {"trace": runner.trace, "executed": runner.executed}


assert set(BAD_CALLS) == set(gen.BAD_CALLS), set(BAD_CALLS) ^ set(gen.BAD_CALLS)
assert set(CLOSED_CALLS) == set(gen.CLOSED_CALLS), set(CLOSED_CALLS) ^ set(gen.CLOSED_CALLS)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loop", choices=["asyncio", "ferroloop"], required=True)
    p.add_argument("--backend", default="epoll")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--seed", type=int)
    g.add_argument("--ops", help="a JSON file holding the op list")
    args = p.parse_args(argv)
    ops = gen.generate(args.seed) if args.ops is None else json.loads(Path(args.ops).read_text())
    result = run(args.loop, args.backend, ops)
    sys.stdout.write("FUZZTRACE " + json.dumps(result, default=repr) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
