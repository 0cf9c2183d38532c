"""The core of the fuzz program interpreter: ``RunnerCore``.

Owns the interpreter's state (the objects that ops made, the sockets, tasks, futures and
transports to clean up), the trace recording (``rec`` and the loop's exception handler), the
main coroutine that runs the ops one after the other, the cleanup at the end, and the ops of
scheduling (call_soon, timers, futures, tasks, sleeps, joins), of add_reader/add_writer and of
the exception handler.  The other op families are mixins (ops_transport, ops_services,
bad_calls); runner.py puts them together as ``Runner``.  Also owns the constants that every op
shares: ``TIMEOUT``, ``SHORT``, the context variable ``VAR`` and ``payload``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import socket
import time

from tracenorm import digest, exc_repr, norm, outcome

TIMEOUT = 2.0  # the longest any single wait of a program may take (an op: twice that)
SHORT = 0.03  # how long to watch for something that must NOT happen
VAR = contextvars.ContextVar("fuzzvar", default="unset")


def payload(spec: dict) -> bytes:
    """The bytes of a payload spec: deterministic, not constant."""
    size, b = spec["size"], spec["b"]
    unit = bytes((b + k) % 256 for k in range(251))
    return (unit * (size // len(unit) + 1))[:size]


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


class FuzzError(Exception):
    """Raised by callbacks on purpose; names the source it belongs to."""

    def __init__(self, src: str, msg: str):
        super().__init__(msg)
        self.src = src


class RunnerCore:
    """State, recording, the main coroutine and the scheduling/reader/writer ops of Runner."""

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

    # -- the exception handler ------------------------------------------------------------
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
