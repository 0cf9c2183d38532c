"""The ``sock_recv``, ``sock_recv_into`` and ``sock_sendall`` fast path, as a mixin of ``Loop``.

Each stays an ``async def`` (so ``create_task(loop.sock_recv(...))`` works as with asyncio), with
asyncio's checks and messages; the syscalls and the wait are the Rust core's: a first try that
says "not ready" without raising ``BlockingIOError``, then one future completed by a Rust reader
or writer. Anything the fast path does not take (a closed socket, a size that is not a
non-negative int, a buffer that is not contiguous bytes, an object that is not a plain socket)
goes down asyncio's own path, which raises what asyncio raises.
"""

import socket

from ._compat import BaseSelectorEventLoop as _base
from ._compat import check_ssl_socket

__all__ = ("SocketOpsMixin",)

#: The socket methods asyncio's ``sock_*`` call, which the fast path replaces by syscalls on the fd.
_REPLACED = ("fileno", "recv", "recv_into", "send")
#: type -> whether the fast path may read and write its fd directly: a ``socket.socket`` whose
#: class overrides none of ``_REPLACED`` (a subclass that does expects them to be called).
_PLAIN = {socket.socket: True}


def _plain(sock):
    kind = type(sock)
    plain = _PLAIN.get(kind)
    if plain is None:
        plain = issubclass(kind, socket.socket) and all(
            getattr(kind, name) is getattr(socket.socket, name) for name in _REPLACED
        )
        _PLAIN[kind] = plain
    return plain


class SocketOpsMixin:
    __slots__ = ()

    async def sock_recv(self, sock, n):
        # One Rust call for the common case (a `socket.socket` outside debug mode), else
        # asyncio's checks first; either way, what is not ready now is waited for.
        data = self._sock_recv_now(sock, n)
        if data is NotImplemented:
            check_ssl_socket(sock)
            if self._debug and sock.gettimeout() != 0:
                raise ValueError("the socket must be non-blocking")
            fd = sock.fileno() if _plain(sock) else -1
            if fd < 0 or type(n) is not int or n < 0:
                return await _base.sock_recv(self, sock, n)
            data = self._sock_try_recv(fd, n)
        if data is not None:
            return data
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        return await self._sock_wait_recv(sock, fd, n)

    async def sock_recv_into(self, sock, buf):
        check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        fd = sock.fileno() if _plain(sock) else -1
        if fd >= 0:
            supported, nbytes = self._sock_try_recv_into(fd, buf)
            if supported:
                if nbytes is not None:
                    return nbytes
                self._ensure_fd_no_transport(fd)
                return await self._sock_wait_recv_into(sock, fd, buf)
        return await _base.sock_recv_into(self, sock, buf)

    async def sock_sendall(self, sock, data):
        # As sock_recv: `sent` is None once all of `data` went, else the bytes sent so far.
        sent = self._sock_send_now(sock, data)
        if sent is NotImplemented:
            check_ssl_socket(sock)
            if self._debug and sock.gettimeout() != 0:
                raise ValueError("the socket must be non-blocking")
            fd = sock.fileno() if _plain(sock) else -1
            progress = self._sock_try_send(fd, data) if fd >= 0 else None
            if progress is None:
                return await _base.sock_sendall(self, sock, data)
            sent, total = progress
            if sent == total:
                sent = None
        if sent is None:
            return
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        return await self._sock_wait_sendall(fd, data, sent)
