"""The servers the framework tests talk to: an aiohttp web.Application and a Starlette (ASGI)
application.  This module is also imported by the `uvicorn` child process of test_uvicorn
(`--app-dir tests/frameworks framework_apps:app`), so it must import without pytest."""

import asyncio
import contextlib
import hashlib
import threading
import types

from aiohttp import WSMsgType, web
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

#: What the streaming endpoints send, one write (or ASGI body message) per item.
CHUNKS = [f"chunk {i:02d} ".encode() * (i + 1) for i in range(25)]
STREAMED = b"".join(CHUNKS)

#: Requests that /gather/{group}/{i} holds until all of them are in flight at once.
CONCURRENCY = 50

MiB = 1 << 20


def loop_kind():
    """'asyncio' or 'ferroloop': the implementation of the running loop."""
    module = type(asyncio.get_running_loop()).__module__
    return module.split(".")[0]


def _digest(data):
    return hashlib.sha256(data).hexdigest()


# --- aiohttp ---------------------------------------------------------------------------------


def aiohttp_app(upload_dir):
    """An aiohttp application; `state` (returned too) lets tests observe the server side."""
    state = types.SimpleNamespace(ws_closes=asyncio.Queue(), groups={})
    routes = web.RouteTableDef()

    @routes.get("/json")
    async def get_json(request):
        body = {
            "hello": request.query.get("name", "world"),
            "client": request.headers.get("X-Client"),
            "method": request.method,
        }
        return web.json_response(body, headers={"X-Served-By": "aiohttp"})

    @routes.post("/json")
    async def post_json(request):
        data = await request.json()
        return web.json_response({"sum": sum(data["numbers"]), "echo": data}, status=201)

    @routes.get("/stream")
    async def stream(request):
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for chunk in CHUNKS:
            await response.write(chunk)
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    @routes.get("/ws")
    async def websocket(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if msg.data == "close":
                    await ws.close(code=4001, message=b"bye")
                    state.ws_closes.put_nowait("closed by the server")
                    return ws
                else:
                    await ws.send_str(msg.data.upper())
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        state.ws_closes.put_nowait(ws.close_code)
        return ws

    @routes.post("/upload")
    async def upload(request):
        """Multipart: a "note" text field, then a "file" field saved under upload_dir."""
        reader = await request.multipart()
        note = await (await reader.next()).text()
        part = await reader.next()
        digest, size = hashlib.sha256(), 0
        with open(upload_dir / part.filename, "wb") as out:
            while chunk := await part.read_chunk(256 * 1024):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        body = {"note": note, "field": part.name, "filename": part.filename}
        return web.json_response({**body, "size": size, "sha256": digest.hexdigest()})

    @routes.post("/upload-raw")
    async def upload_raw(request):
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response(
            {
                "size": size,
                "sha256": digest.hexdigest(),
                "chunked": request.headers.get("Transfer-Encoding"),
            }
        )

    @routes.get("/files/{name}")
    async def download(request):
        return web.FileResponse(upload_dir / request.match_info["name"])

    @routes.get("/gather/{group}/{i}")
    async def gather(request):
        """Answers only once CONCURRENCY requests of the same group are being handled."""
        name = request.match_info["group"]
        group = state.groups.setdefault(
            name, types.SimpleNamespace(count=0, all_in=asyncio.Event())
        )
        group.count += 1
        if group.count == CONCURRENCY:
            group.all_in.set()
        await group.all_in.wait()
        port = request.transport.get_extra_info("peername")[1]
        return web.json_response({"i": int(request.match_info["i"]), "client_port": port})

    @routes.get("/peer")
    async def peer(request):
        return web.json_response({"client_port": request.transport.get_extra_info("peername")[1]})

    @routes.get("/slow")
    async def slow(request):
        await asyncio.sleep(3600)
        return web.Response(text="too late")

    app = web.Application(client_max_size=8 * MiB)
    app.add_routes(routes)
    return app, state


@contextlib.asynccontextmanager
async def aiohttp_server(upload_dir):
    """Serve aiohttp_app on 127.0.0.1; yields a namespace with `url`, `port` and `state`."""
    app, state = aiohttp_app(upload_dir)
    # handler_cancellation: /slow's handler is cancelled when its client goes away, so that
    # cleanup() does not wait for it.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield types.SimpleNamespace(url=f"http://127.0.0.1:{port}", port=port, state=state)
    finally:
        await runner.cleanup()


# --- Starlette (ASGI, served by uvicorn) -----------------------------------------------------


def starlette_app(on_event=print):
    """A Starlette application; `on_event(text)` is told about lifespan and websocket closes."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        on_event(f"startup on {loop_kind()}")
        yield
        on_event("shutdown")

    async def index(request: Request):
        return PlainTextResponse("hello from starlette", headers={"X-Loop": loop_kind()})

    async def squares(request: Request):
        n = int(request.query_params["n"])
        return JSONResponse({"n": n, "squares": [i * i for i in range(n)]})

    async def echo(request: Request):
        body = await request.body()
        headers = {"X-Length": str(len(body)), "X-Sha256": _digest(body)}
        return Response(body, media_type=request.headers.get("content-type"), headers=headers)

    async def stream(request: Request):
        async def chunks():
            for chunk in CHUNKS:
                yield chunk
                await asyncio.sleep(0)

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    def sync_endpoint(request: Request):
        # Starlette runs plain functions in anyio's worker threads.
        return JSONResponse({"thread": threading.current_thread().name})

    async def websocket(ws: WebSocket):
        await ws.accept()
        try:
            while True:
                text = await ws.receive_text()
                if text == "close":
                    await ws.close(code=4002, reason="done")
                    return
                await ws.send_text(text[::-1])
        except WebSocketDisconnect as exc:
            on_event(f"websocket closed by client: {exc.code}")

    routes = [
        Route("/", index),
        Route("/squares", squares),
        Route("/echo", echo, methods=["POST"]),
        Route("/stream", stream),
        Route("/thread", sync_endpoint),
        WebSocketRoute("/ws", websocket),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _print_flushed(text):
    print(text, flush=True)


#: For `uvicorn framework_apps:app` in a child process: events go to its stdout.
app = starlette_app(on_event=_print_flushed)
