"""The Python faces of ferroloop's Rust transports: class names, ``__del__``, ``__repr__``, the
class attributes asyncio looks for, and asyncio's transport classes as further bases (so that
``isinstance(t, asyncio.Transport)`` holds, and what asyncio's classes define, such as
``BaseTransport.get_extra_info``, is reached through them, patched or not). Everything per read
and per write is in the Rust base, which comes first in the MRO.
"""

import os
import socket
import stat
import warnings

from . import _ferroloop
from ._compat import (
    HOOKS_TAKE_CONTEXT,
    SOCKET_IO_METHODS,
    TRANSPORT_BASES,
    SelectorSocketTransport,
    SendfileMode,
    set_nodelay,
)

__all__ = (
    "DatagramTransport",
    "ReadPipeTransport",
    "TCPTransport",
    "UnixTransport",
    "WritePipeTransport",
    "make_socket_transport",
    "overrides",
)


class _TransportFace:
    """``__repr__`` and ``__del__`` as asyncio's selector transports have them."""

    __slots__ = ()

    def __repr__(self):
        info = [type(self).__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        loop = self._loop
        if self._sock is not None and loop is not None and not loop.is_closed():
            reading, writing = self._polling()
            info.append("read=polling" if reading else "read=idle")
            state = "polling" if writing else "idle"
            info.append(f"write=<{state}, bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn=warnings.warn):
        sock = self._sock
        if sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            sock.close()


class _SocketTransport(_TransportFace, _ferroloop.StreamTransport, *TRANSPORT_BASES["socket"]):
    _start_tls_compatible = True
    _sendfile_compatible = SendfileMode.TRY_NATIVE

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None, context=None):
        loop._transports[self._sock_fd] = self
        set_nodelay(sock)
        self._start(waiter)


class TCPTransport(_SocketTransport):
    """A TCP connection's transport."""


class UnixTransport(_SocketTransport):
    """A UNIX stream socket's transport."""


def make_socket_transport(
    loop, sock, protocol, waiter=None, *, extra=None, server=None, context=None
):
    if overrides(sock, SOCKET_IO_METHODS):
        # The Rust transport reads and writes the fd itself; asyncio's calls the socket's methods.
        more = {"context": context} if HOOKS_TAKE_CONTEXT else {}
        return SelectorSocketTransport(loop, sock, protocol, waiter, extra, server, **more)
    cls = UnixTransport if sock.family == socket.AF_UNIX else TCPTransport
    return cls(loop, sock, protocol, waiter, extra, server, context)


def overrides(sock, names):
    """Whether ``sock``'s class is a ``socket.socket`` subclass that overrides one of ``names``."""
    cls = type(sock)
    if cls is socket.socket:
        return False
    return any(getattr(cls, name, None) is not getattr(socket.socket, name, None) for name in names)


class DatagramTransport(_TransportFace, _ferroloop.DatagramTransport, *TRANSPORT_BASES["datagram"]):
    """A UDP or UNIX datagram socket's transport."""

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        loop._transports[self._sock_fd] = self
        self._start(waiter)


class _PipeFace:
    """``__repr__`` and ``__del__`` as asyncio's Unix pipe transports have them."""

    __slots__ = ()

    def _repr_info(self):
        info = [type(self).__name__]
        if self._pipe is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._fileno}")
        return info

    def _loop_is_open(self):
        # asyncio's pipe transports look for the loop's selector, which close() drops: on a
        # closed loop an open pipe says "open" instead of "polling"/"idle".
        return getattr(self._loop, "_selector", None) is not None

    def __del__(self, _warn=warnings.warn):
        pipe = self._pipe
        if pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            pipe.close()


def _pipe_mode(pipe):
    return os.fstat(pipe.fileno()).st_mode


class ReadPipeTransport(_PipeFace, _ferroloop.ReadPipeTransport, *TRANSPORT_BASES["read_pipe"]):
    """The read end of a pipe, FIFO, tty, character device or socket pair."""

    def __new__(cls, loop, pipe, protocol, waiter=None, extra=None):
        # Checked before the object exists, so that a refused pipe is left open and untouched.
        mode = _pipe_mode(pipe)
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            raise ValueError("Pipe transport is for pipes/sockets only.")
        return super().__new__(cls, loop, pipe, protocol, waiter, extra)

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        os.set_blocking(self._fileno, False)
        self._start(waiter)

    def __repr__(self):
        info = self._repr_info()
        if self._pipe is not None and self._loop_is_open():
            info.append("polling" if self._polling()[0] else "idle")
        elif self._pipe is not None:
            info.append("open")
        else:
            info.append("closed")
        return "<{}>".format(" ".join(info))


class WritePipeTransport(_PipeFace, _ferroloop.WritePipeTransport, *TRANSPORT_BASES["write_pipe"]):
    """The write end of a pipe, FIFO, tty, character device or socket pair."""

    def __new__(cls, loop, pipe, protocol, waiter=None, extra=None):
        mode = _pipe_mode(pipe)
        if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            raise ValueError("Pipe transport is only for pipes, sockets and character devices")
        return super().__new__(cls, loop, pipe, protocol, waiter, extra)

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        mode = _pipe_mode(pipe)
        is_fifo, is_socket = stat.S_ISFIFO(mode), stat.S_ISSOCK(mode)
        os.set_blocking(self._fileno, False)
        # On a pipe or a socket, readability of the write end means the reader went away.
        self._start(waiter, is_fifo or is_socket)

    def __repr__(self):
        info = self._repr_info()
        if self._pipe is not None and self._loop_is_open():
            info.append("polling" if self._polling()[1] else "idle")
            info.append(f"bufsize={self.get_write_buffer_size()}")
        elif self._pipe is not None:
            info.append("open")
        else:
            info.append("closed")
        return "<{}>".format(" ".join(info))
