"""websockets (its asyncio implementation): a server and clients, echo and close codes."""

import asyncio
import contextlib
import random

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus

BIG = random.Random(3).randbytes(512 * 1024)


@contextlib.asynccontextmanager
async def echo_server():
    """Yields (base URI, queue of the close codes the server received, per connection).

    /echo echoes every message; /close answers its first message by closing with 4000;
    /forbidden is refused with HTTP 403 during the handshake.
    """
    closes = asyncio.Queue()

    async def handler(ws):
        try:
            if ws.request.path == "/close":
                text = await ws.recv()
                await ws.close(code=4000, reason=f"bye {text}")
            else:
                async for message in ws:
                    await ws.send(message)
        finally:
            closes.put_nowait(ws.close_code)

    def process_request(connection, request):
        if request.path == "/forbidden":
            return connection.respond(403, "no entry\n")
        return None

    async with serve(handler, "127.0.0.1", 0, process_request=process_request) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}", closes


def client(uri, **kwargs):
    return connect(uri, proxy=None, open_timeout=5, close_timeout=5, **kwargs)


def test_echo_text_binary_fragments_and_ping(arun):
    async def main():
        async with echo_server() as (base, closes):
            async with client(f"{base}/echo", max_size=2**20) as ws:
                await ws.send("héllo")
                assert await ws.recv() == "héllo"
                await ws.send(b"\x00\xff")
                assert await ws.recv() == b"\x00\xff"
                await ws.send(BIG)
                assert await ws.recv() == BIG
                await ws.send(["frag", "ment", "ed"])  # one message in three frames
                assert await ws.recv() == "fragmented"
                for i in range(30):
                    await ws.send(f"m{i}")
                assert [await ws.recv() for _ in range(30)] == [f"m{i}" for i in range(30)]
                pong = await ws.ping(b"are you there")
                assert await pong >= 0  # the latency, once the pong came back
                assert ws.remote_address[0] == "127.0.0.1"
            assert ws.close_code == 1000
            assert await closes.get() == 1000

    arun(main())


def test_close_codes_both_ways(arun):
    async def main():
        async with echo_server() as (base, closes):
            # The server closes with 4000: the client's recv raises with the server's frame.
            async with client(f"{base}/close") as ws:
                await ws.send("alice")
                with pytest.raises(ConnectionClosedError) as info:
                    await ws.recv()
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "bye alice")
            assert await closes.get() == 4000

            # The client closes with 1001 "going away": a clean close for both sides.
            async with client(f"{base}/echo") as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
                await ws.close(code=1001, reason="going away")
                with pytest.raises(ConnectionClosedOK):
                    await ws.recv()
            assert await closes.get() == 1001

            # Refused during the handshake.
            with pytest.raises(InvalidStatus) as info:
                async with client(f"{base}/forbidden"):
                    pass
            assert info.value.response.status_code == 403
            assert closes.empty()

    arun(main())


def test_twenty_concurrent_clients(arun):
    async def talk(base, n):
        async with client(f"{base}/echo") as ws:
            for i in range(10):
                await ws.send(f"{n}:{i}")
            return [await ws.recv() for _ in range(10)]

    async def main():
        async with echo_server() as (base, closes):
            replies = await asyncio.gather(*(talk(base, n) for n in range(20)))
            assert replies == [[f"{n}:{i}" for i in range(10)] for n in range(20)]
            assert [await closes.get() for _ in range(20)] == [1000] * 20

    arun(main())
