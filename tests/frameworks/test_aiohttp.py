"""aiohttp: a web.Application server and a ClientSession, both on the loop under test."""

import asyncio
import hashlib
import io
import random

import aiohttp
import pytest

from frameworks.framework_apps import CHUNKS, CONCURRENCY, STREAMED, MiB, aiohttp_server

#: 5 MiB of reproducible, incompressible bytes for the upload tests.
BLOB = random.Random(5).randbytes(5 * MiB)


#: Bounds every request, so that a hang fails at the request that hangs.
HANG_GUARD = aiohttp.ClientTimeout(total=5)


def session(served, timeout=HANG_GUARD):
    return aiohttp.ClientSession(served.url, timeout=timeout)


def test_json_routes_statuses_and_headers(arun, tmp_path):
    async def main():
        async with aiohttp_server(tmp_path) as served, session(served) as client:
            params, headers = {"name": "ferro"}, {"X-Client": "pytest"}
            async with client.get("/json", params=params, headers=headers) as resp:
                assert resp.status == 200
                assert resp.content_type == "application/json"
                assert resp.headers["X-Served-By"] == "aiohttp"
                assert await resp.json() == {"hello": "ferro", "client": "pytest", "method": "GET"}

            payload = {"numbers": list(range(100)), "text": "héllo"}
            async with client.post("/json", json=payload) as resp:
                assert resp.status == 201
                assert await resp.json() == {"sum": 4950, "echo": payload}

            async with client.get("/missing") as resp:
                assert resp.status == 404
            async with client.delete("/json") as resp:
                assert resp.status == 405
                assert set(resp.headers["Allow"].split(",")) >= {"GET", "POST"}
            async with client.head("/json") as resp:
                assert resp.status == 200
                assert await resp.read() == b""

    arun(main())


def test_streaming_response_arrives_whole_and_in_order(arun, tmp_path):
    async def main():
        async with aiohttp_server(tmp_path) as served, session(served) as client:
            async with client.get("/stream") as resp:
                assert resp.status == 200
                assert resp.headers["Transfer-Encoding"] == "chunked"
                assert "Content-Length" not in resp.headers
                received = [chunk async for chunk in resp.content.iter_any()]
            assert b"".join(received) == STREAMED
            # Again, split at the HTTP chunk boundaries: one per write() of the server.
            async with client.get("/stream") as resp:
                http_chunks, current = [], b""
                async for data, end_of_http_chunk in resp.content.iter_chunks():
                    current += data
                    if end_of_http_chunk:
                        http_chunks.append(current)
                        current = b""
            # The zero-size last chunk shows as an empty one when it arrives in a read of its
            # own, which depends on how TCP segments reach the loop (io_uring delivers each).
            assert [c for c in http_chunks if c] == CHUNKS and current == b""

    arun(main())


def test_websocket_echo_and_close_codes(arun, tmp_path):
    async def main():
        async with aiohttp_server(tmp_path) as served, session(served) as client:
            async with client.ws_connect("/ws") as ws:
                await ws.send_str("hello")
                assert await ws.receive_str() == "HELLO"
                await ws.send_bytes(b"\x00\x01\x02")
                assert await ws.receive_bytes() == b"\x02\x01\x00"
                big = random.Random(1).randbytes(MiB)
                await ws.send_bytes(big)
                assert await ws.receive_bytes() == big[::-1]
                for i in range(20):
                    await ws.send_str(f"message {i}")
                assert [await ws.receive_str() for _ in range(20)] == [
                    f"MESSAGE {i}" for i in range(20)
                ]
                # Server-initiated close: 4001 "bye".
                await ws.send_str("close")
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.CLOSE
                assert (msg.data, msg.extra) == (4001, "bye")
                assert ws.closed and ws.close_code == 4001
            assert await served.state.ws_closes.get() == "closed by the server"

            # Client-initiated close: the server sees the client's code.
            async with client.ws_connect("/ws") as ws:
                await ws.send_str("x")
                assert await ws.receive_str() == "X"
                assert await ws.close(code=4100, message=b"client bye")
            assert await served.state.ws_closes.get() == 4100

    arun(main())


def test_multipart_upload_of_5_mib(arun, tmp_path):
    async def main():
        async with aiohttp_server(tmp_path) as served, session(served) as client:
            form = aiohttp.FormData()
            form.add_field("note", "five mebibytes")
            form.add_field(
                "file",
                io.BytesIO(BLOB),
                filename="blob.bin",
                content_type="application/octet-stream",
            )
            async with client.post("/upload", data=form) as resp:
                assert resp.status == 200
                assert await resp.json() == {
                    "note": "five mebibytes",
                    "field": "file",
                    "filename": "blob.bin",
                    "size": len(BLOB),
                    "sha256": hashlib.sha256(BLOB).hexdigest(),
                }
            assert (tmp_path / "blob.bin").read_bytes() == BLOB
            # The connection stays usable for the next request.
            async with client.get("/json") as resp:
                assert resp.status == 200

    arun(main())


def test_file_response_then_more_requests_on_the_same_connection(arun, tmp_path):
    (tmp_path / "blob.bin").write_bytes(BLOB)

    async def main():
        # One pooled connection: every request below reuses it (HTTP keep-alive).
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp_server(tmp_path) as served:
            async with aiohttp.ClientSession(
                served.url, connector=connector, timeout=HANG_GUARD
            ) as client:
                # FileResponse sends the file with loop.sendfile().
                async with client.get("/files/blob.bin") as resp:
                    assert resp.status == 200
                    assert int(resp.headers["Content-Length"]) == len(BLOB)
                    port = resp.connection.transport.get_extra_info("sockname")[1]
                    assert await resp.read() == BLOB
                headers = {"Range": "bytes=100-199"}
                async with client.get("/files/blob.bin", headers=headers) as resp:
                    assert resp.status == 206
                    assert await resp.read() == BLOB[100:200]
                async with client.get("/peer") as resp:
                    assert await resp.json() == {"client_port": port}  # still the same connection

    arun(main())


def test_chunked_upload_from_an_async_generator(arun, tmp_path):
    async def body():
        view = memoryview(BLOB)
        for start in range(0, len(BLOB), 64 * 1024):
            yield bytes(view[start : start + 64 * 1024])

    async def main():
        async with aiohttp_server(tmp_path) as served, session(served) as client:
            async with client.post("/upload-raw", data=body()) as resp:
                assert resp.status == 200
                assert await resp.json() == {
                    "size": len(BLOB),
                    "sha256": hashlib.sha256(BLOB).hexdigest(),
                    "chunked": "chunked",
                }

    arun(main())


def test_50_concurrent_requests_then_keep_alive_reuse(arun, tmp_path):
    async def fetch(client, group, i):
        async with client.get(f"/gather/{group}/{i}") as resp:
            assert resp.status == 200
            return await resp.json()

    async def main():
        async with aiohttp_server(tmp_path) as served, session(served) as client:
            # The server answers none of a group until all CONCURRENCY requests are in flight.
            first = await asyncio.gather(*(fetch(client, "a", i) for i in range(CONCURRENCY)))
            assert [r["i"] for r in first] == list(range(CONCURRENCY))
            ports = {r["client_port"] for r in first}
            assert len(ports) == CONCURRENCY  # one connection each
            second = await asyncio.gather(*(fetch(client, "b", i) for i in range(CONCURRENCY)))
            assert [r["i"] for r in second] == list(range(CONCURRENCY))
            assert {r["client_port"] for r in second} <= ports  # pooled connections reused

    arun(main())


def test_client_timeout_and_refused_connection(arun, tmp_path):
    async def main():
        async with aiohttp_server(tmp_path) as served:
            timeout = aiohttp.ClientTimeout(total=0.2)
            async with session(served, timeout=timeout) as client:
                with pytest.raises(asyncio.TimeoutError):
                    async with client.get("/slow") as resp:
                        await resp.read()
                # The session is still usable after a timed-out request.
                async with client.get("/json") as resp:
                    assert (await resp.json())["hello"] == "world"
            port = served.port
        # The server is gone: its port now refuses connections.
        async with aiohttp.ClientSession() as client:
            with pytest.raises(aiohttp.ClientConnectorError) as info:
                await client.get(f"http://127.0.0.1:{port}/json")
            assert isinstance(info.value.os_error, ConnectionRefusedError)

    arun(main())
