"""UNIX stream sockets: create_unix_connection and create_unix_server (paths, pathlib paths,
stale socket files, the abstract namespace, sock=, asyncio's argument checks), the transport on
a UNIX socket, connect_accepted_socket, and asyncio's UNIX streams."""

import asyncio
import errno
import os
import pathlib
import shutil
import socket
import tempfile
import uuid

import pytest
from helpers_net import Accepted, Recorder, connected_pair, leaked_fds, open_fds, recv_until_eof


@pytest.fixture
def sock_dir():
    """A short directory for socket files (a UNIX socket path holds at most 107 bytes)."""
    path = tempfile.mkdtemp(prefix="fl-")
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("as_path", [False, True])
def test_unix_server_and_connection(run, loop, sock_dir, as_path):
    path = os.path.join(sock_dir, "s")
    where = pathlib.Path(path) if as_path else path

    async def main():
        accepted = Accepted()
        async with await loop.create_unix_server(accepted, where) as server:
            assert server.sockets[0].getsockname() == path
            assert server.sockets[0].family == socket.AF_UNIX
            transport, protocol = await loop.create_unix_connection(Recorder, where)
            peer = await accepted.get()
            assert transport.get_extra_info("peername") == path
            assert transport.get_extra_info("sockname") == ""  # an unbound client
            assert peer.transport.get_extra_info("sockname") == path
            assert transport.get_extra_info("socket").family == socket.AF_UNIX
            transport.write(b"over unix")
            assert await peer.received(9) == b"over unix"
            peer.transport.write(b"back")
            peer.transport.close()
            assert await protocol.lost is None
            assert protocol.order() == ["made", "data", "eof", "lost"]
            assert protocol.data == b"back"

    run(main())


def test_unix_server_removes_a_stale_socket_file(run, loop, sock_dir):
    path = os.path.join(sock_dir, "stale")
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(path)  # closing leaves the file behind
    assert os.path.exists(path)

    async def main():
        with pytest.raises(ConnectionRefusedError):
            await loop.create_unix_connection(Recorder, path)
        accepted = Accepted()
        async with await loop.create_unix_server(accepted, path):
            transport, _ = await loop.create_unix_connection(Recorder, path)
            peer = await accepted.get()
            transport.close()
            await peer.lost

    run(main())


def test_unix_server_keeps_a_file_that_is_not_a_socket(run, loop, sock_dir):
    path = os.path.join(sock_dir, "file")
    with open(path, "w") as f:
        f.write("precious")
    before = open_fds()
    with pytest.raises(OSError) as info:
        run(loop.create_unix_server(Recorder, path))
    assert info.value.errno == errno.EADDRINUSE
    assert info.value.strerror == f"Address {path!r} is already in use"
    with open(path) as f:
        assert f.read() == "precious"
    assert leaked_fds(before) == set()


def test_unix_connection_to_a_missing_path(run, loop, sock_dir):
    before = open_fds()
    with pytest.raises(FileNotFoundError):
        run(loop.create_unix_connection(Recorder, os.path.join(sock_dir, "missing")))
    assert leaked_fds(before) == set()


def test_unix_abstract_namespace(run, loop, sock_dir):
    name = f"\0ferroloop-{uuid.uuid4().hex}"

    async def main():
        accepted = Accepted()
        async with await loop.create_unix_server(accepted, name) as server:
            assert server.sockets[0].getsockname() == name.encode()
            transport, protocol = await loop.create_unix_connection(Recorder, name)
            peer = await accepted.get()
            assert transport.get_extra_info("peername") == name.encode()
            peer.transport.write(b"abstract")
            assert await protocol.received(8) == b"abstract"
            transport.close()
            await peer.lost
        assert os.listdir(sock_dir) == []

    run(main())


def test_unix_server_and_connection_with_sock(run, loop, sock_dir):
    path = os.path.join(sock_dir, "s")

    async def main():
        accepted = Accepted()
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        async with await loop.create_unix_server(accepted, sock=listener) as server:
            assert [s.fileno() for s in server.sockets] == [listener.fileno()]
            client = socket.socket(socket.AF_UNIX)
            client.connect(path)
            transport, protocol = await loop.create_unix_connection(Recorder, sock=client)
            peer = await accepted.get()
            assert client.getblocking() is False
            assert transport.get_extra_info("socket").fileno() == client.fileno()
            transport.write(b"sock")
            assert await peer.received(4) == b"sock"
            transport.close()
            await peer.lost

    run(main())


def test_unix_bad_arguments(run, loop, sock_dir):
    path = os.path.join(sock_dir, "s")
    with socket.socket(socket.AF_UNIX) as unix, socket.socket() as tcp:
        connection_cases = [
            ({"path": path, "sock": unix}, ValueError, "path and sock can not be specified at the same time"),
            ({}, ValueError, "no path and sock were specified"),
            ({"sock": tcp}, ValueError, f"A UNIX Domain Stream Socket was expected, got {tcp!r}"),
            ({"path": path, "server_hostname": "x"}, ValueError, "server_hostname is only meaningful with ssl"),
            ({"path": path, "ssl_handshake_timeout": 1}, ValueError, "ssl_handshake_timeout is only meaningful with ssl"),
        ]  # fmt: skip
        server_cases = [
            ({"path": path, "sock": unix}, ValueError, "path and sock can not be specified at the same time"),
            ({}, ValueError, "path was not specified, and no sock specified"),
            ({"sock": tcp}, ValueError, f"A UNIX Domain Stream Socket was expected, got {tcp!r}"),
            ({"path": path, "ssl": True}, TypeError, "ssl argument must be an SSLContext or None"),
            ({"path": path, "ssl_shutdown_timeout": 1}, ValueError, "ssl_shutdown_timeout is only meaningful with ssl"),
        ]  # fmt: skip
        for create, cases in [
            (loop.create_unix_connection, connection_cases),
            (loop.create_unix_server, server_cases),
        ]:
            for kwargs, exc_type, message in cases:
                with pytest.raises(exc_type) as info:
                    run(create(Recorder, **kwargs))
                assert str(info.value) == message
        assert unix.fileno() >= 0 and tcp.fileno() >= 0
    assert os.listdir(sock_dir) == []


def test_unix_server_start_serving_false(run, loop, sock_dir):
    path = os.path.join(sock_dir, "s")

    async def main():
        accepted = Accepted()
        server = await loop.create_unix_server(accepted, path, start_serving=False)
        async with server:
            assert not server.is_serving()
            with pytest.raises(ConnectionRefusedError):  # bound, but not listening yet
                await loop.create_unix_connection(Recorder, path)
            await server.start_serving()
            assert server.is_serving()
            transport, _ = await loop.create_unix_connection(Recorder, path)
            peer = await accepted.get()
            transport.close()
            await peer.lost

    run(main())


def test_unix_transport_half_close_and_large_writes(run, loop, sock_dir):
    async def main():
        transport, protocol, peer = await connected_pair(
            family=socket.AF_UNIX, path=os.path.join(sock_dir, "s")
        )
        payload = bytes(range(256)) * (4 << 20 >> 8)
        assert transport.can_write_eof()
        transport.write(payload)
        transport.write(b"end")
        transport.write_eof()
        assert await recv_until_eof(peer) == payload + b"end"
        with peer:  # the peer keeps sending after our EOF
            await loop.sock_sendall(peer, b"reply")
        assert await protocol.lost is None
        assert protocol.order() == ["made", "pause", "resume", "data", "eof", "lost"]
        assert protocol.data == b"reply"

    run(main())


def test_unix_write_to_a_closed_peer_is_a_broken_pipe(run, loop, sock_dir):
    async def main():
        before = open_fds()
        transport, protocol, peer = await connected_pair(
            lambda: Recorder(keep_open=True), socket.AF_UNIX, os.path.join(sock_dir, "s")
        )
        peer.close()
        await protocol.eof
        transport.write(b"nobody listens")  # does not raise
        assert isinstance(await protocol.lost, BrokenPipeError)
        assert protocol.order() == ["made", "eof", "lost"]
        transport.close()
        assert leaked_fds(before) == set()

    run(main())


def test_connect_accepted_socket_with_a_unix_socketpair(run, loop):
    async def main():
        mine, theirs = socket.socketpair()
        theirs.setblocking(False)
        with theirs:
            transport, protocol = await loop.connect_accepted_socket(Recorder, mine)
            assert transport.get_extra_info("socket").family == socket.AF_UNIX
            await loop.sock_sendall(theirs, b"pair")
            assert await protocol.received(4) == b"pair"
            transport.write(b"riap")
            assert await loop.sock_recv(theirs, 10) == b"riap"
        assert await protocol.lost is None

    run(main())


def test_unix_streams(run, loop, sock_dir):
    path = os.path.join(sock_dir, "s")

    async def handle(reader, writer):
        data = await reader.readuntil(b"\n")
        writer.write(data * 2)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        async with await asyncio.start_unix_server(handle, path) as server:
            assert server.sockets[0].getsockname() == path
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"twice\n")
            assert await reader.readexactly(12) == b"twice\ntwice\n"
            assert await reader.read() == b""
            assert reader.at_eof()
            writer.close()
            await writer.wait_closed()

    run(main())
