"""Helpers for the transport tests: a protocol that records its callbacks, connected pairs of a
transport and a raw peer socket, and the set of open file descriptors."""

import asyncio
import gc
import os
import socket
import ssl

#: Written to the sending socket's SO_SNDBUF so that a peer that does not read fills the kernel
#: buffers after a few KiB and the transport's own buffer holds the rest (the kernel doubles it).
SMALL_SNDBUF = 4096


def small_sndbuf(transport):
    """Shrink the kernel send buffer so that a peer that does not read backs writes up."""
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SNDBUF)


def nonblocking_pair():
    """A connected pair of non-blocking UNIX stream sockets."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def open_fds():
    """The set of file descriptors currently open in this process."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


def leaked_fds(before):
    """The fds open now that were not open `before`, after collecting garbage."""
    gc.collect()
    return open_fds() - before


def closed_port():
    """A TCP address on 127.0.0.1 where nothing listens (the port was just released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()


class Recorder(asyncio.Protocol):
    """Records callbacks, in order, in `calls` ("made", "data", "eof", "lost", "pause",
    "resume"); the bytes received in `data`; futures `made`, `eof` and `lost` (the exception)."""

    def __init__(self, keep_open=False):
        loop = asyncio.get_running_loop()
        self.keep_open = keep_open
        self.calls = []
        self.data = bytearray()
        self.transport = None
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self._want = None  # (nbytes, future) while someone waits in received()

    def connection_made(self, transport):
        self.calls.append("made")
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data):
        assert type(data) is bytes
        self.calls.append("data")
        self.data += data
        self._wake()

    def eof_received(self):
        self.calls.append("eof")
        self.eof.set_result(None)
        return self.keep_open

    def connection_lost(self, exc):
        self.calls.append("lost")
        self.lost.set_result(exc)
        self._wake()

    def pause_writing(self):
        self.calls.append("pause")

    def resume_writing(self):
        self.calls.append("resume")

    def _wake(self):
        if self._want is not None and (len(self.data) >= self._want[0] or self.lost.done()):
            self._want[1].set_result(None)
            self._want = None

    async def received(self, nbytes):
        """Wait until at least `nbytes` bytes have arrived in total; return them all."""
        if len(self.data) < nbytes and not self.lost.done():
            self._want = (nbytes, asyncio.get_running_loop().create_future())
            await self._want[1]
        return bytes(self.data)

    def order(self):
        """`calls` with runs of "data" collapsed into one."""
        return [c for i, c in enumerate(self.calls) if c != "data" or self.calls[i - 1 : i] != [c]]


async def connected_pair(factory=Recorder, family=socket.AF_INET, path=None):
    """(transport, protocol, peer): a transport made by create_connection (TCP on 127.0.0.1)
    or create_unix_connection (`path`), and the accepted raw peer socket, non-blocking."""
    loop = asyncio.get_running_loop()
    if family == socket.AF_UNIX:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen()
    else:
        listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        if family == socket.AF_UNIX:
            transport, protocol = await loop.create_unix_connection(factory, path)
        else:
            transport, protocol = await loop.create_connection(factory, *listener.getsockname())
        peer, _ = listener.accept()
    peer.setblocking(False)
    return transport, protocol, peer


async def stream_to_raw_peer(limit=2**16):
    """(reader, writer, peer): asyncio streams connected to a raw, non-blocking peer socket."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        reader, writer = await asyncio.open_connection(*listener.getsockname(), limit=limit)
        peer, _ = listener.accept()
    peer.setblocking(False)
    return reader, writer, peer


async def recv_until_eof(sock, limit=None):
    """All bytes from a non-blocking socket until EOF (or a reset, or `limit` bytes)."""
    loop = asyncio.get_running_loop()
    chunks, total = [], 0
    while limit is None or total < limit:
        try:
            chunk = await loop.sock_recv(sock, 1 << 20)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


async def iterations(n=5):
    """Let the loop run `n` iterations (for asserting that something did NOT happen)."""
    for _ in range(n):
        await asyncio.sleep(0)


class Accepted:
    """A server's protocol factory: `await accepted.get()` is the next server-side protocol,
    once its connection_made has run."""

    def __init__(self, factory=Recorder):
        self.factory = factory
        self.queue = asyncio.Queue()

    def __call__(self):
        protocol = self.factory()
        self.queue.put_nowait(protocol)
        return protocol

    async def get(self):
        protocol = await self.queue.get()
        await protocol.made
        return protocol


#: The test certificates (see tests/tls/README.md).
CERTS = os.path.join(os.path.dirname(__file__), "tls")


def server_context(certfile="server.pem"):
    """A TLS server context with the test certificate ``certfile``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(CERTS, certfile))
    return context


def client_context(cafile="ca.pem"):
    """A TLS client context that trusts the test CA ``cafile``."""
    return ssl.create_default_context(cafile=os.path.join(CERTS, cafile))
