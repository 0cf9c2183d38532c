"""``ferroloop.Loop``: the Rust core (``_ferroloop.LoopCore``) under asyncio's own API.

The class derives from ``LoopCore`` first and from asyncio's Unix selector loop second. Everything
that runs per iteration, per callback and per readiness event is ``LoopCore``'s (Rust): the loop
iteration, ``call_soon``/``call_at``/``call_later``, handles and timers, ``time()`` and the
reader/writer registrations. What runs once per call — argument checking, executors, DNS,
``create_connection``/``create_server``, the ``sock_*`` methods, signal handlers — is asyncio's own
Python code, which reaches the Rust core through the hooks it always calls (``_add_reader``,
``_add_callback``, ``_write_to_self``, ...). So the API behaves as asyncio's does, messages
included, while the hot path stays in Rust.

Rules for contributors: a method defined here must be something asyncio's code does not already
do correctly on top of ``LoopCore``; and nothing that runs per iteration or per event belongs here.
"""

import os
import selectors
import ssl
import sys
import threading
from asyncio import constants
from asyncio.protocols import BaseProtocol
from asyncio.transports import BaseTransport, Transport
from typing import Final

from . import _children, _compat, _ferroloop, _sendfile, _tls, _transports
from ._sockets import SocketOpsMixin

__all__ = ("Loop", "backends")

#: The environment variable that picks the I/O backend when ``new_event_loop`` is not told.
BACKEND_ENV: Final = "FERROLOOP_BACKEND"


def backends() -> list[str]:
    """The I/O backends this machine offers, the default first."""
    return list(_ferroloop.backends())


class _SelectorView(selectors.BaseSelector):
    """What code that peeks at ``loop._selector`` sees: ferroloop's registrations, read-only.

    asyncio's transports look at ``loop._selector`` in their ``__repr__`` to say whether they are
    polling; the registrations themselves change only through ``add_reader``/``add_writer``.
    """

    def __init__(self, core):
        self._core = core

    def register(self, fileobj, events, data=None):
        raise NotImplementedError("ferroloop registers fds through loop.add_reader/add_writer")

    def unregister(self, fileobj):
        raise NotImplementedError("ferroloop registers fds through loop.add_reader/add_writer")

    def select(self, timeout=None):
        raise NotImplementedError("ferroloop's loop waits for I/O itself")

    def _key(self, fd, fileobj):
        found = self._core._io_key(fd) if self._core is not None else None
        if found is None:
            raise KeyError(f"{fileobj!r} is not registered")
        mask, reader, writer = found
        return selectors.SelectorKey(fileobj, fd, mask, (reader, writer))

    def get_key(self, fileobj):
        fd = selectors._fileobj_to_fd(fileobj)
        return self._key(fd, fileobj)

    def get_map(self):
        if self._core is None:
            return None
        return {fd: self._key(fd, fd) for fd in self._core._io_fds()}

    def close(self):
        self._core = None


_SELECTOR_VIEWS = {}


def _selector_view(core):
    """A ``_SelectorView`` of ``core`` whose class is named after the loop's I/O backend: asyncio
    logs ``Using selector: <the selector's class name>`` when a loop is made, so ferroloop's record
    says ``Using selector: epoll`` (or ``poll``, ``select``, ``io_uring``)."""
    backend = core.backend
    cls = _SELECTOR_VIEWS.get(backend)
    if cls is None:
        cls = _SELECTOR_VIEWS[backend] = type(backend, (_SelectorView,), {"__module__": __name__})
    return cls(core)


class Loop(_ferroloop.LoopCore, SocketOpsMixin, _compat.SelectorEventLoop):
    """An asyncio event loop whose scheduler, timers and I/O dispatch are written in Rust."""

    def __init__(self, *, backend: str | None = None) -> None:
        if backend is None:
            backend = os.environ.get(BACKEND_ENV) or backends()[0]
        try:
            self._core_init(backend)
        except BaseException:
            # Nothing was set up: mark the loop closed so that __del__ has nothing to do.
            self._closed = True
            raise
        #: fd -> the Rust Listener accepting on it, for _stop_serving.
        self._listeners = {}
        self._children = _children.ChildWatcher(self)
        super().__init__(selector=_selector_view(self))
        self._watch_self_pipe(False)

    # --- the self-pipe: watched only while a signal handler can write to it -------------------

    def _watch_self_pipe(self, watch):
        """Watches asyncio's self-pipe or stops: it is watched only while a signal handler is
        installed, since nothing else writes to it (``_write_to_self`` wakes the core's eventfd
        instead). A loop that watches no fd then leaves out the look for I/O of an iteration
        that must not block (``State::quiet``). What a signal wrote before the last handler went
        is read as the watch stops, as asyncio's loop would read it (finding no handler)."""
        ssock = self._ssock
        if ssock is None:
            return
        fd = ssock.fileno()
        watched = self._io_key(fd) is not None
        if watch and not watched:
            self._add_reader(fd, self._read_from_self)
        elif not watch and watched:
            self._read_from_self()
            self._remove_reader(fd)

    def add_signal_handler(self, sig, callback, *args):
        # Watched from before the wakeup fd is set, so that no signal byte goes unseen.
        self._watch_self_pipe(True)
        try:
            super().add_signal_handler(sig, callback, *args)
        finally:
            self._watch_self_pipe(bool(self._signal_handlers))

    def remove_signal_handler(self, sig):
        try:
            return super().remove_signal_handler(sig)
        finally:
            self._watch_self_pipe(bool(self._signal_handlers))

    def _make_socket_transport(
        self, sock, protocol, waiter=None, *, extra=None, server=None, context=None
    ):
        if _compat.TRANSPORT_REFUSES_USED_FD:
            self._ensure_fd_no_transport(sock)
        return _transports.make_socket_transport(
            self, sock, protocol, waiter, extra=extra, server=server, context=context
        )

    def _make_ssl_transport(
        self,
        rawsock,
        protocol,
        sslcontext,
        waiter=None,
        *,
        server_side=False,
        server_hostname=None,
        extra=None,
        server=None,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
        context=None,
    ):
        if _compat.TRANSPORT_REFUSES_USED_FD:
            self._ensure_fd_no_transport(rawsock)
        # asyncio's TLS state machine, in Rust (ferroloop._tls), over the Rust socket transport.
        ssl_protocol = _tls.make_ssl_protocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        _transports.make_socket_transport(
            self, rawsock, ssl_protocol, extra=extra, server=server, context=context
        )
        return ssl_protocol._app_transport

    async def start_tls(
        self,
        transport: BaseTransport,
        protocol: BaseProtocol,
        sslcontext: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> Transport | None:
        """Upgrade ``transport`` to TLS; returns the transport ``protocol`` uses from now on."""
        return await _tls.start_tls(
            self,
            transport,
            protocol,
            sslcontext,
            server_side=server_side,
            server_hostname=server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return _transports.ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return _transports.WritePipeTransport(self, pipe, protocol, waiter, extra)

    async def _make_subprocess_transport(
        self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=None, **kwargs
    ):
        # asyncio's own transport (Popen, and pipes through connect_*_pipe: Rust), with the
        # child's exit watched by ferroloop instead of the policy's child watcher.
        waiter = self.create_future()
        transp = _compat.UnixSubprocessTransport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize,
            waiter=waiter, extra=extra, **kwargs,
        )  # fmt: skip
        # The exit is reported through asyncio's own watcher callback, which decides per version
        # how late: two iterations on 3.11, one on 3.12 and 3.13, at once from 3.14 (so that
        # send_signal never reaches a pid that was already reaped).
        pid = transp.get_pid()
        self._children.watch(
            pid,
            lambda returncode: self._child_watcher_callback(pid, returncode, transp),
            transp._proc,
        )
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    async def _sendfile_fallback(self, transp, file, offset, count):
        return await _sendfile.sendfile_fallback(self, transp, file, offset, count)

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        if _compat.TRANSPORT_REFUSES_USED_FD:
            self._ensure_fd_no_transport(sock)
        return _transports.DatagramTransport(self, sock, protocol, address, waiter, extra)

    def _start_serving(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
        context=None,
    ):
        if _transports.overrides(sock, _compat.SOCKET_ACCEPT_METHODS):
            # The Rust listener accepts on the fd itself; asyncio's calls the socket's accept().
            more = {"context": context} if _compat.HOOKS_TAKE_CONTEXT else {}
            return super()._start_serving(
                protocol_factory,
                sock,
                sslcontext,
                server,
                backlog,
                ssl_handshake_timeout,
                ssl_shutdown_timeout,
                **more,
            )
        tls = None
        if sslcontext is not None:
            tls = (sslcontext, ssl_handshake_timeout, ssl_shutdown_timeout)
        listener = _ferroloop.Listener(self, sock, protocol_factory, server, backlog, tls, context)
        self._listeners[sock.fileno()] = listener
        listener._start()

    def _stop_serving(self, sock):
        listener = self._listeners.pop(sock.fileno(), None)
        if listener is not None:
            listener._stop()
        super()._stop_serving(sock)

    def run_forever(self) -> None:
        """Run until stop() is called."""
        if _compat.HAS_RUN_FOREVER_SETUP:
            # 3.13+: asyncio's own set-up and clean-up, which subclasses may extend. 3.13.0 also
            # cleans up after a set-up that failed (a nested run_forever), as asyncio does there.
            if not _compat.RUN_FOREVER_CLEANS_UP_A_FAILED_SETUP:
                self._run_forever_setup()
            try:
                if _compat.RUN_FOREVER_CLEANS_UP_A_FAILED_SETUP:
                    self._run_forever_setup()
                self._run_core()
            finally:
                self._run_forever_cleanup()
            return
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        old_agen_hooks = sys.get_asyncgen_hooks()
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook,
            )
            _compat.set_running_loop(self)
            self._run_core()
        finally:
            self._stopping = False
            self._thread_id = None
            _compat.set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    def close(self) -> None:
        """Close the loop: drop pending callbacks and timers, release its fds and executor."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        super().close()
        self._children.close()
        self._close_core()
