"""Stream transports under load and under pauses: many connections receiving at once (on io_uring
more data than the loop's provided buffers hold, so receives run out and start again), reading
paused and resumed in the middle of what one receive brought, and a loop closed with connections
still receiving. asyncio is the oracle for what the protocols see."""

import asyncio
import hashlib
import socket
import warnings

import pytest
from helpers_net import Recorder, connected_pair, iterations, leaked_fds, open_fds


class Collect(asyncio.Protocol):
    def __init__(self):
        self.data = bytearray()
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        self.done.set_result(bytes(self.data))


def test_many_connections_receiving_at_once(run, loop):
    count, size = 80, 256 * 1024  # 20 MiB in flight: more than every provided buffer

    async def main():
        pairs = [await connected_pair(Collect) for _ in range(count)]
        payloads = [bytes([i]) * size for i in range(count)]
        senders = []
        for (_, _, peer), payload in zip(pairs, payloads, strict=True):

            async def send(peer=peer, payload=payload):
                await loop.sock_sendall(peer, payload)
                peer.shutdown(socket.SHUT_WR)

            senders.append(asyncio.ensure_future(send()))
        received = await asyncio.gather(*(protocol.done for _, protocol, _ in pairs))
        await asyncio.gather(*senders)
        assert [hashlib.sha256(r).digest() for r in received] == [
            hashlib.sha256(p).digest() for p in payloads
        ]
        for transport, _, peer in pairs:
            transport.close()
            peer.close()

    run(main())


class PausingBuffered(asyncio.BufferedProtocol):
    """A 1000-byte buffer; pauses reading after every buffer_updated."""

    def __init__(self):
        self.buffer = bytearray(1000)
        self.data = bytearray()
        self.updates = 0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buffer

    def buffer_updated(self, nbytes):
        self.data += self.buffer[:nbytes]
        self.updates += 1
        self.transport.pause_reading()

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_pausing_in_the_middle_of_one_receive_keeps_the_rest_in_order(run, loop):
    async def main():
        transport, protocol, peer = await connected_pair(PausingBuffered)
        message = bytes(range(256)) * 40  # 10240 bytes: several buffers' worth, one send
        peer.sendall(message)
        peer.shutdown(socket.SHUT_WR)
        while not protocol.lost.done():
            updates = protocol.updates
            for _ in range(200):  # until the next buffer_updated (or the end)
                if protocol.updates > updates or protocol.lost.done():
                    break
                await asyncio.sleep(0.001)
            updates = protocol.updates
            await iterations(3)
            # Paused inside buffer_updated: nothing more arrives until resume_reading.
            assert protocol.updates == updates
            if not protocol.lost.done():
                assert not transport.is_reading()
                transport.resume_reading()
        assert bytes(protocol.data) == message
        peer.close()

    run(main())


def test_closing_the_loop_with_connections_receiving_releases_them(loop_factory):
    before = open_fds()
    loop = loop_factory()
    try:

        async def main():
            pairs = [await connected_pair(Recorder) for _ in range(5)]
            for _, protocol, peer in pairs:
                peer.send(b"x" * 100)
                await protocol.received(100)
            return pairs

        pairs = loop.run_until_complete(main())
    finally:
        loop.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the transports were never closed
        for pair in pairs:
            pair[2].close()
        del pairs, pair
        assert leaked_fds(before) == set()


@pytest.mark.parametrize("size", [1, 65536, 65537, 300_000])
def test_one_write_arrives_whole_at_buffer_boundaries(run, loop, size):
    """Sizes around one provided buffer (64 KiB) and beyond one delivery (256 KiB)."""

    async def main():
        transport, protocol, peer = await connected_pair(Recorder)
        message = bytes(i % 253 for i in range(size))
        await loop.sock_sendall(peer, message)
        assert await protocol.received(size) == message
        # No delivery is larger than asyncio's 256 KiB read.
        transport.close()
        peer.close()
        await protocol.lost

    run(main())
