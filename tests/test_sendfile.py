"""loop.sendfile(transport, file) and loop.sock_sendfile(sock, file): the os.sendfile path, the
read-and-send fallback for files that are not regular, offset/count, the file position left
behind, writes around and during a sendfile, and asyncio's errors for bad arguments."""

import asyncio
import io
import os
import random
import socket
import ssl

import pytest
from helpers_compat import SENDFILE_DRAINS_AFTER_WRITE, WRITE_QUEUES_THE_CALLERS_OBJECT
from helpers_net import (
    connected_pair,
    iterations,
    leaked_fds,
    open_fds,
    recv_until_eof,
    small_sndbuf,
)

SIZE = 5 << 20
CERTS = os.path.join(os.path.dirname(__file__), "tls")


@pytest.fixture(scope="module")
def content_file(tmp_path_factory):
    """(path, content): a 5 MiB file of pseudo-random bytes."""
    content = random.Random(3).randbytes(SIZE)
    path = tmp_path_factory.mktemp("sendfile") / "data.bin"
    path.write_bytes(content)
    return path, content


async def stream_socket_pair():
    """(sock, peer): two connected non-blocking TCP sockets."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sock = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
    sock.setblocking(False)
    peer.setblocking(False)
    return sock, peer


@pytest.mark.parametrize(
    ("offset", "count", "start", "end"),
    [
        (0, None, 0, SIZE),
        (1000, 3 << 20, 1000, 1000 + (3 << 20)),
        (SIZE - 10, 100, SIZE - 10, SIZE),
    ],
)
def test_loop_sendfile(run, loop, content_file, offset, count, start, end):
    path, content = content_file

    async def main():
        transport, protocol, peer = await connected_pair()
        receiving = asyncio.ensure_future(recv_until_eof(peer))
        transport.write(b"head")
        with open(path, "rb") as f:
            assert await loop.sendfile(transport, f, offset, count) == end - start
            assert f.tell() == end
        assert transport.is_reading()
        transport.write(b"tail")
        transport.close()
        with peer:
            assert await receiving == b"head" + content[start:end] + b"tail"
        assert await protocol.lost is None

    run(main(), timeout=30)


def test_transport_reads_again_after_sendfile(run, loop, content_file):
    # Regression test: with the transport paused for sendfile, removing sendfile's writer made
    # ferroloop forget the fd, so data the peer sent afterwards never reached the protocol
    # (found by aiohttp serving a file on a kept-alive connection).
    path, content = content_file

    async def main():
        transport, protocol, peer = await connected_pair()
        with peer:
            with open(path, "rb") as f:
                assert await loop.sendfile(transport, f, 0, 1000) == 1000
            assert await loop.sock_recv(peer, 1000) == content[:1000]
            await loop.sock_sendall(peer, b"next request")
            await protocol.received(len(b"next request"))
            assert bytes(protocol.data) == b"next request"
            transport.close()
            assert await protocol.lost is None

    run(main())


@pytest.mark.parametrize("fallback", [True, False])
def test_loop_sendfile_of_a_file_that_is_not_regular(run, loop, fallback):
    async def main():
        transport, protocol, peer = await connected_pair()
        receiving = asyncio.ensure_future(recv_until_eof(peer))
        data = io.BytesIO(b"in memory" * 1000)
        if fallback:  # read and written by asyncio's fallback
            assert await loop.sendfile(transport, data, 9) == 8991
            assert data.tell() == 9000
        else:
            with pytest.raises(asyncio.SendfileNotAvailableError, match="^not a regular file$"):
                await loop.sendfile(transport, data, 9, fallback=False)
        assert transport.is_reading()
        transport.write(b"end")
        transport.close()
        with peer:
            assert await receiving == (b"in memory" * 1000)[9:] * fallback + b"end"
        await protocol.lost

    run(main())


def test_write_during_sendfile_raises(run, loop, content_file):
    path, content = content_file

    async def main():
        transport, protocol, peer = await connected_pair()
        small_sndbuf(transport)
        with open(path, "rb") as f:
            sending = asyncio.ensure_future(loop.sendfile(transport, f))
            await iterations(2)
            assert not sending.done()  # the peer does not read: 5 MiB do not fit the buffers
            with pytest.raises(RuntimeError, match=r"^unable to write; sendfile is in progress$"):
                transport.write(b"interleaved")
            assert not transport.is_reading()  # reading is paused during a sendfile
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)  # finish quickly
            receiving = asyncio.ensure_future(recv_until_eof(peer))
            assert await sending == SIZE
        assert transport.is_reading()
        transport.close()
        with peer:
            assert await receiving == content
        await protocol.lost

    run(main(), timeout=30)


def test_loop_sendfile_unsupported_transports(run, loop, content_file):
    async def main():
        transport, protocol, peer = await connected_pair()
        peer.close()
        transport.close()
        with open(content_file[0], "rb") as f:
            with pytest.raises(RuntimeError, match="^Transport is closing$"):
                await loop.sendfile(transport, f)
            udp, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
            )
            with pytest.raises(RuntimeError) as info:
                await loop.sendfile(udp, f)
            assert str(info.value) == f"sendfile is not supported for transport {udp!r}"
            udp.close()
        await protocol.lost

    run(main())


@pytest.mark.parametrize("fallback", [True, False])
def test_sock_sendfile(run, loop, content_file, fallback):
    path, content = content_file

    async def main():
        sock, peer = await stream_socket_pair()
        with sock, peer:
            receiving = asyncio.ensure_future(recv_until_eof(peer, limit=SIZE - 1 + 100))
            with open(path, "rb") as f:
                assert await loop.sock_sendfile(sock, f, 1, fallback=fallback) == SIZE - 1
                assert f.tell() == SIZE
            data = io.BytesIO(b"abcdefgh" * 100)
            if fallback:
                assert await loop.sock_sendfile(sock, data, 700, 100) == 100
                assert data.tell() == 800
            else:
                with pytest.raises(asyncio.SendfileNotAvailableError, match="^not a regular file$"):
                    await loop.sock_sendfile(sock, data, 700, 100, fallback=False)
                await loop.sock_sendall(sock, (b"abcdefgh" * 100)[700:800])
            assert await receiving == content[1:] + (b"abcdefgh" * 100)[700:800]

    run(main(), timeout=30)


def test_sock_sendfile_of_an_empty_file(run, loop, tmp_path):
    (tmp_path / "empty").write_bytes(b"")

    async def main():
        sock, peer = await stream_socket_pair()
        with sock, peer, open(tmp_path / "empty", "rb") as f:
            assert await loop.sock_sendfile(sock, f) == 0
            assert f.tell() == 0

    run(main())


BAD_ARGUMENTS = [
    ({"mode": "r"}, ValueError, "file should be opened in binary mode"),
    ({"offset": -1}, ValueError, "offset must be a non-negative integer (got -1)"),
    ({"offset": "1"}, TypeError, "offset must be a non-negative integer (got '1')"),
    ({"offset": 1.0}, TypeError, "offset must be a non-negative integer (got 1.0)"),
    ({"count": 0}, ValueError, "count must be a positive integer (got 0)"),
    ({"count": -5}, ValueError, "count must be a positive integer (got -5)"),
    ({"count": 1.5}, TypeError, "count must be a positive integer (got 1.5)"),
]


@pytest.mark.parametrize(("kwargs", "exc_type", "message"), BAD_ARGUMENTS)
def test_sendfile_bad_arguments(run, loop, content_file, kwargs, exc_type, message):
    kwargs = dict(kwargs)

    async def main():
        before = open_fds()
        transport, protocol, peer = await connected_pair()
        sock, sock_peer = await stream_socket_pair()
        with open(content_file[0], kwargs.pop("mode", "rb")) as f, peer, sock, sock_peer:
            with pytest.raises(exc_type) as info:
                await loop.sendfile(transport, f, **kwargs)
            assert str(info.value) == message
            with pytest.raises(exc_type) as info:
                await loop.sock_sendfile(sock, f, **kwargs)
            assert str(info.value) == message
            assert f.tell() == 0
            assert transport.is_reading()  # the failed sendfile left the transport usable
            transport.write(b"still fine")
            assert await loop.sock_recv(peer, 100) == b"still fine"
            transport.close()
            await protocol.lost
        assert leaked_fds(before) == set()

    run(main())


def test_sock_sendfile_socket_checks(run, loop, content_file):
    async def main():
        with open(content_file[0], "rb") as f:
            with socket.socket(type=socket.SOCK_DGRAM) as udp:
                udp.setblocking(False)
                with pytest.raises(
                    ValueError, match="^only SOCK_STREAM type sockets are supported$"
                ):
                    await loop.sock_sendfile(udp, f)
            loop.set_debug(True)  # asyncio checks for a blocking socket in debug mode only
            sock, peer = await stream_socket_pair()
            with sock, peer:
                sock.setblocking(True)
                with pytest.raises(ValueError, match="^the socket must be non-blocking$"):
                    await loop.sock_sendfile(sock, f)

    run(main())


class _SendfileServer(asyncio.Protocol):
    """The server of asyncio's own sendfile tests: keeps every byte, records connection_lost."""

    def __init__(self):
        self.data = bytearray()
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        self.data += data

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class _SendfileClient(asyncio.Protocol):
    """Records the flow-control calls the application's protocol sees."""

    def __init__(self):
        self.calls = []
        self.lost = asyncio.get_running_loop().create_future()

    def pause_writing(self):
        self.calls.append("pause")

    def resume_writing(self):
        self.calls.append("resume")

    def connection_lost(self, exc):
        self.calls.append("lost")
        self.lost.set_result(exc)


FALLBACK_SIZE = 160 * 1024


def tls_contexts():
    """(server, client) SSL contexts for the test certificates in tests/tls."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(os.path.join(CERTS, "server.pem"))
    return server, ssl.create_default_context(cafile=os.path.join(CERTS, "ca.pem"))


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("head_size", [4, 256 * 1024])
def test_sendfile_fallback_with_small_buffers(run, loop, tmp_path, monkeypatch, head_size, tls):
    # asyncio's own sendfile scenario (test_asyncio/test_sendfile.py): small kernel buffers on
    # both ends, data written before and after the file, the native path unavailable, then close
    # and wait for the server to see the connection lost. Regression test: ferroloop's fallback
    # missed the transport's resume_writing and never finished. A head past the high-water mark
    # leaves the application's protocol paused when the fallback starts. A TLS transport has no
    # native path: always the fallback.
    content = random.Random(5).randbytes(FALLBACK_SIZE)
    head = b"h" * head_size
    path = tmp_path / "data.bin"
    path.write_bytes(content)

    async def unavailable(*args, **kwargs):
        raise asyncio.SendfileNotAvailableError("sendfile is not available")

    if not tls:
        monkeypatch.setattr(loop, "_sendfile_native", unavailable)
    sctx, cctx = tls_contexts() if tls else (None, None)

    async def main():
        server_protocol = None

        def server_factory():
            nonlocal server_protocol
            server_protocol = _SendfileServer()
            return server_protocol

        listener = socket.create_server(("127.0.0.1", 0))
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # inherited on accept
        server = await loop.create_server(server_factory, sock=listener, ssl=sctx)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024)
        sock.setblocking(False)
        await loop.sock_connect(sock, listener.getsockname())
        transport, client = await loop.create_connection(
            _SendfileClient, sock=sock, ssl=cctx, server_hostname="localhost" if tls else None
        )
        transport.write(head)
        paused_before = list(client.calls)
        with open(path, "rb") as f:
            assert await asyncio.wait_for(loop.sendfile(transport, f), 30) == FALLBACK_SIZE
            assert f.tell() == FALLBACK_SIZE
        assert transport.is_reading()
        transport.write(b"tail")
        transport.close()
        assert await asyncio.wait_for(client.lost, 30) is None
        assert await asyncio.wait_for(server_protocol.lost, 30) is None
        received = bytes(server_protocol.data)
        if WRITE_QUEUES_THE_CALLERS_OBJECT:
            # asyncio's fallback reads the next block into the buffer whose view the transport
            # still queues: what arrives of the file may be mixed up, its length may not.
            assert len(received) == head_size + FALLBACK_SIZE + 4
            assert received.startswith(head) and received.endswith(b"tail")
        else:
            assert received == head + content + b"tail"
        server.close()
        await server.wait_closed()
        return paused_before, client.calls

    paused_before, calls = run(main(), timeout=60)
    # The application's protocol sees no flow control of the fallback's own writes; one that was
    # paused when the fallback started is resumed when it ends. Before 3.14 the last block can
    # leave the transport paused, and its resume then reaches the application's protocol. (A TLS
    # transport hands the head at once to the TCP transport below it: not paused by it.)
    expected = ["pause", "resume"] if head_size > 64 * 1024 and not tls else []
    assert paused_before == expected[:1]
    if SENDFILE_DRAINS_AFTER_WRITE:
        assert calls == [*expected, "lost"]
    else:
        assert calls in ([*expected, "lost"], [*expected, "resume", "lost"])
