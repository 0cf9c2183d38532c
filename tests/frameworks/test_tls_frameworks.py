"""Real TLS clients and servers on the loop under test: aiohttp (HTTPS server and client, a 2 MiB
upload, a streamed response), httpx against it, and websockets over wss. The certificates are the
test suite's own (tests/tls/: a CA, and a server certificate for localhost and 127.0.0.1)."""

import hashlib
import os
import random
import ssl

import aiohttp
import httpx
from aiohttp import web
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

CERTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tls")
BODY = random.Random(7).randbytes(2 * 1024 * 1024)


def server_context():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(CERTS, "server.pem"))
    return context


def client_context():
    return ssl.create_default_context(cafile=os.path.join(CERTS, "ca.pem"))


def app():
    async def hello(request):
        return web.Response(text=f"hello over {request.transport.get_extra_info('cipher')[1]}")

    async def digest(request):
        return web.Response(text=hashlib.sha256(await request.read()).hexdigest())

    async def stream(request):
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(50):
            await response.write(b"%03d " % i * 100)
        await response.write_eof()
        return response

    application = web.Application(client_max_size=8 * 1024 * 1024)
    application.add_routes(
        [web.get("/", hello), web.post("/digest", digest), web.get("/stream", stream)]
    )
    return application


async def https_server():
    runner = web.AppRunner(app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context())
    await site.start()
    return runner, f"https://127.0.0.1:{runner.addresses[0][1]}"


def test_aiohttp_https_server_and_client(arun):
    async def main():
        runner, url = await https_server()
        try:
            connector = aiohttp.TCPConnector(ssl=client_context())
            async with aiohttp.ClientSession(connector=connector) as session:
                async with session.get(url + "/") as resp:
                    assert resp.status == 200
                    assert await resp.text() == "hello over TLSv1.3"
                async with session.post(url + "/digest", data=BODY) as resp:
                    assert await resp.text() == hashlib.sha256(BODY).hexdigest()
                async with session.get(url + "/stream") as resp:
                    body = await resp.read()
                assert body == b"".join(b"%03d " % i * 100 for i in range(50))
        finally:
            await runner.cleanup()

    arun(main())


def test_httpx_against_an_https_server(arun):
    async def main():
        runner, url = await https_server()
        try:
            async with httpx.AsyncClient(verify=client_context()) as client:
                for _ in range(3):  # one kept-alive connection
                    resp = await client.get(url + "/")
                    assert resp.text == "hello over TLSv1.3"
                resp = await client.post(url + "/digest", content=BODY)
                assert resp.text == hashlib.sha256(BODY).hexdigest()
        finally:
            await runner.cleanup()

    arun(main())


def test_websockets_over_wss(arun):
    async def main():
        async def echo(ws):
            async for message in ws:
                await ws.send(message)

        async with serve(echo, "127.0.0.1", 0, ssl=server_context()) as server:
            port = server.sockets[0].getsockname()[1]
            uri = f"wss://127.0.0.1:{port}"
            async with connect(uri, ssl=client_context(), proxy=None, open_timeout=5) as ws:
                await ws.send("text frame")
                assert await ws.recv() == "text frame"
                await ws.send(BODY[: 512 * 1024])
                assert await ws.recv() == BODY[: 512 * 1024]

    arun(main())
