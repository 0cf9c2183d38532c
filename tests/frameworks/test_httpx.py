"""httpx's AsyncClient (httpcore over anyio's asyncio backend) against the aiohttp server."""

import asyncio
import hashlib
import random

import httpx
import pytest

from frameworks.framework_apps import CONCURRENCY, STREAMED, MiB, aiohttp_server

BLOB = random.Random(7).randbytes(5 * MiB)

#: Bounds every request, so that a hang fails at the request that hangs.
HANG_GUARD = httpx.Timeout(5.0)


def client_for(served, **kwargs):
    # trust_env=False: no proxy from the environment between the client and 127.0.0.1.
    kwargs.setdefault("timeout", HANG_GUARD)
    return httpx.AsyncClient(base_url=served.url, trust_env=False, **kwargs)


def test_json_statuses_and_headers(arun, tmp_path):
    async def main():
        async with aiohttp_server(tmp_path) as served, client_for(served) as client:
            resp = await client.get("/json", params={"name": "httpx"}, headers={"X-Client": "h"})
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("application/json")
            assert resp.headers["x-served-by"] == "aiohttp"
            assert resp.json() == {"hello": "httpx", "client": "h", "method": "GET"}
            assert resp.http_version == "HTTP/1.1"

            resp = await client.post("/json", json={"numbers": [1, 2, 3]})
            assert (resp.status_code, resp.json()["sum"]) == (201, 6)

            assert (await client.get("/nowhere")).status_code == 404
            with pytest.raises(httpx.HTTPStatusError) as info:
                (await client.put("/json")).raise_for_status()
            assert info.value.response.status_code == 405

    arun(main())


def test_streamed_response(arun, tmp_path):
    async def main():
        async with aiohttp_server(tmp_path) as served, client_for(served) as client:
            async with client.stream("GET", "/stream") as resp:
                assert resp.headers["transfer-encoding"] == "chunked"
                parts = [part async for part in resp.aiter_bytes()]
            assert b"".join(parts) == STREAMED
            async with client.stream("GET", "/stream") as resp:
                words = [word async for word in resp.aiter_text()]
            assert "".join(words) == STREAMED.decode()

    arun(main())


def test_5_mib_uploads_and_download(arun, tmp_path):
    async def chunks():
        for start in range(0, len(BLOB), 100_000):
            yield BLOB[start : start + 100_000]

    async def main():
        digest = hashlib.sha256(BLOB).hexdigest()
        async with aiohttp_server(tmp_path) as served, client_for(served) as client:
            files = {"file": ("httpx.bin", BLOB, "application/octet-stream")}
            resp = await client.post("/upload", data={"note": "from httpx"}, files=files)
            assert resp.status_code == 200
            assert resp.json() == {
                "note": "from httpx",
                "field": "file",
                "filename": "httpx.bin",
                "size": len(BLOB),
                "sha256": digest,
            }

            resp = await client.post("/upload-raw", content=chunks())
            assert resp.json() == {"size": len(BLOB), "sha256": digest, "chunked": "chunked"}

            resp = await client.get("/files/httpx.bin")
            assert resp.status_code == 200
            assert resp.content == BLOB

    arun(main())


def test_50_concurrent_requests(arun, tmp_path):
    async def main():
        async with aiohttp_server(tmp_path) as served, client_for(served) as client:
            # The server answers none until all CONCURRENCY requests are in flight.
            responses = await asyncio.gather(
                *(client.get(f"/gather/httpx/{i}") for i in range(CONCURRENCY))
            )
            assert [r.status_code for r in responses] == [200] * CONCURRENCY
            assert [r.json()["i"] for r in responses] == list(range(CONCURRENCY))
            assert len({r.json()["client_port"] for r in responses}) == CONCURRENCY

    arun(main())


def test_read_timeout_and_connect_error(arun, tmp_path):
    async def main():
        async with aiohttp_server(tmp_path) as served:
            async with client_for(served, timeout=httpx.Timeout(5.0, read=0.2)) as client:
                with pytest.raises(httpx.ReadTimeout):
                    await client.get("/slow")
                assert (await client.get("/json")).status_code == 200
            port = served.port
        async with httpx.AsyncClient(trust_env=False, timeout=HANG_GUARD) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/json")

    arun(main())
