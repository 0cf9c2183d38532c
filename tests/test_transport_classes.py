"""Transports are instances of asyncio's transport classes (issue 14, point 1): each kind of
transport is an instance of the same public classes as asyncio's own transport of that kind on
the running CPython, and what those classes define is reached through them (websockets' tests
patch ``asyncio.Transport.get_extra_info`` and expect a connection's transport to answer with the
patch)."""

import asyncio
import gc
import os
import socket
import weakref
from unittest import mock

import pytest
from helpers_compat import DATAGRAM_IS_A_DATAGRAM_TRANSPORT
from helpers_net import Recorder, client_context, connected_pair, server_context

PUBLIC = (
    asyncio.BaseTransport,
    asyncio.ReadTransport,
    asyncio.WriteTransport,
    asyncio.Transport,
    asyncio.DatagramTransport,
    asyncio.SubprocessTransport,
)

STREAM = {"BaseTransport", "ReadTransport", "WriteTransport", "Transport"}
DATAGRAM = STREAM | ({"DatagramTransport"} if DATAGRAM_IS_A_DATAGRAM_TRANSPORT else set())


def classes(transport):
    """The names of the public asyncio transport classes `transport` is an instance of."""
    return {cls.__name__ for cls in PUBLIC if isinstance(transport, cls)}


class Datagrams(asyncio.DatagramProtocol):
    pass


def test_tcp_and_unix_transports_are_asyncio_transports(run, loop, tmp_path):
    async def main():
        for family, path in ((socket.AF_INET, None), (socket.AF_UNIX, str(tmp_path / "s"))):
            transport, _, peer = await connected_pair(family=family, path=path)
            assert classes(transport) == STREAM
            assert issubclass(type(transport), asyncio.Transport)
            transport.close()
            peer.close()

    run(main())


def test_server_side_transports_are_asyncio_transports(run, loop):
    async def main():
        made = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport):
                made.set_result(transport)

        server = await loop.create_server(Server, "127.0.0.1", 0)
        with socket.create_connection(server.sockets[0].getsockname()):
            transport = await made
            assert classes(transport) == STREAM
            transport.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_datagram_transports_are_what_asyncio_makes_them_on_this_version(run, loop, tmp_path):
    async def main():
        transport, _ = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        assert classes(transport) == DATAGRAM
        transport.close()
        unix, _ = await loop.create_datagram_endpoint(
            Datagrams, local_addr=str(tmp_path / "d"), family=socket.AF_UNIX
        )
        assert classes(unix) == DATAGRAM
        unix.close()

    run(main())


def test_pipe_transports_are_read_and_write_transports(run, loop):
    r, w = os.pipe()
    reader, writer = open(r, "rb", buffering=0), open(w, "wb", buffering=0)

    async def main():
        rtransport, _ = await loop.connect_read_pipe(Recorder, reader)
        wtransport, _ = await loop.connect_write_pipe(Recorder, writer)
        # asyncio's read pipe transport is a ReadTransport only; its write pipe transport is a
        # whole Transport (through _FlowControlMixin), whose read side raises.
        assert classes(rtransport) == {"BaseTransport", "ReadTransport"}
        assert classes(wtransport) == STREAM
        with pytest.raises(NotImplementedError):
            wtransport.pause_reading()
        rtransport.close()
        wtransport.close()

    run(main())


def test_tls_transports_are_asyncio_transports(run, loop):
    async def main():
        made = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport):
                made.set_result(transport)

        server = await loop.create_server(Server, "127.0.0.1", 0, ssl=server_context())
        host, port = server.sockets[0].getsockname()
        client, _ = await loop.create_connection(
            Recorder, host, port, ssl=client_context(), server_hostname="localhost"
        )
        assert classes(client) == STREAM
        assert classes(await made) == STREAM
        client.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_subprocess_transports_are_subprocess_transports(run, loop):
    async def main():
        transport, _ = await loop.subprocess_exec(asyncio.SubprocessProtocol, "true")
        assert classes(transport) == {"BaseTransport", "SubprocessTransport"}
        assert classes(transport.get_pipe_transport(0)) == STREAM
        assert classes(transport.get_pipe_transport(1)) == {"BaseTransport", "ReadTransport"}
        transport.close()

    run(main())


@pytest.mark.parametrize("patched", [asyncio.Transport, asyncio.BaseTransport])
def test_a_patched_get_extra_info_of_asyncios_class_answers(run, loop, patched):
    """websockets' tests: ``patch("asyncio.Transport.get_extra_info")`` on a live connection."""

    async def main():
        transport, _, peer = await connected_pair()
        udp, _ = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        with mock.patch.object(patched, "get_extra_info", return_value="patched") as fake:
            assert transport.get_extra_info("peername") == "patched"
            assert udp.get_extra_info("sockname") == "patched"
        assert fake.call_count == 2
        assert transport.get_extra_info("peername") == peer.getsockname()
        transport.close()
        udp.close()
        peer.close()

    run(main())


def test_the_extra_slot_asyncio_declares_holds_references_the_gc_sees(run, loop):
    """``BaseTransport.__slots__ = ('_extra',)``: a cycle through that slot is collected."""

    async def main():
        transport, _, peer = await connected_pair()
        transport.close()
        peer.close()
        await asyncio.sleep(0)
        asyncio.BaseTransport._extra.__set__(transport, {"self": transport})
        return weakref.ref(transport)

    ref = run(main())
    gc.collect()
    assert ref() is None
