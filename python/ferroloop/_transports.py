"""The Python faces of ferroloop's Rust transports: class names, ``__del__``, ``__repr__`` and
the class attributes asyncio looks for. Everything per read and per write is in the Rust base.
"""

import socket
import warnings
from asyncio import base_events, constants

from . import _ferroloop

__all__ = ("DatagramTransport", "TCPTransport", "UnixTransport", "make_socket_transport")


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


class _SocketTransport(_TransportFace, _ferroloop.StreamTransport):
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        loop._transports[self._sock_fd] = self
        base_events._set_nodelay(sock)
        self._start(waiter)


class TCPTransport(_SocketTransport):
    """A TCP connection's transport."""


class UnixTransport(_SocketTransport):
    """A UNIX stream socket's transport."""


def make_socket_transport(loop, sock, protocol, waiter=None, *, extra=None, server=None):
    cls = UnixTransport if sock.family == socket.AF_UNIX else TCPTransport
    return cls(loop, sock, protocol, waiter, extra, server)


class DatagramTransport(_TransportFace, _ferroloop.DatagramTransport):
    """A UDP or UNIX datagram socket's transport."""

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        loop._transports[self._sock_fd] = self
        self._start(waiter)
