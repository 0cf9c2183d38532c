"""uvicorn serving a Starlette application: in process (`uvicorn.Config(loop="none")` inside
the loop under test) and as the `uvicorn --loop ...` command, stopped by SIGINT or SIGTERM."""

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from frameworks.framework_apps import STREAMED, MiB, starlette_app

HERE = Path(__file__).resolve().parent

#: The `--loop` option that selects each loop on uvicorn's command line.
CLI_LOOP = {"asyncio": "asyncio", "ferroloop": "ferroloop:new_event_loop"}

#: Bounds every request, so that a hang fails at the request that hangs.
HANG_GUARD = httpx.Timeout(5.0)


@contextlib.asynccontextmanager
async def uvicorn_server(app):
    """Run uvicorn.Server.serve() as a task of the running loop; yields the base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, loop="none", lifespan="on", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # startup failed: raise its error
            raise AssertionError("uvicorn stopped during startup")
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def http_client(address):
    return httpx.AsyncClient(base_url=f"http://{address}", trust_env=False, timeout=HANG_GUARD)


def test_http_in_process(arun, loop_name):
    events = []
    body = os.urandom(MiB)

    async def main():
        async with uvicorn_server(starlette_app(events.append)) as address:
            assert events == [f"startup on {loop_name}"]
            async with http_client(address) as client:
                resp = await client.get("/")
                assert resp.status_code == 200
                assert resp.text == "hello from starlette"
                assert resp.headers["x-loop"] == loop_name
                assert resp.headers["server"] == "uvicorn"

                resp = await client.get("/squares", params={"n": 12})
                assert resp.json() == {"n": 12, "squares": [i * i for i in range(12)]}

                resp = await client.post(
                    "/echo", content=body, headers={"content-type": "application/x-test"}
                )
                assert resp.status_code == 200
                assert resp.headers["content-type"] == "application/x-test"
                assert resp.headers["x-length"] == str(MiB)
                assert resp.headers["x-sha256"] == hashlib.sha256(body).hexdigest()
                assert resp.content == body

                async with client.stream("GET", "/stream") as resp:
                    assert resp.headers["transfer-encoding"] == "chunked"
                    parts = [part async for part in resp.aiter_raw()]
                assert b"".join(parts) == STREAMED

                resp = await client.get("/thread")  # a sync endpoint: run in a worker thread
                assert resp.json()["thread"] != "MainThread"

                assert (await client.get("/missing")).status_code == 404
                assert (await client.delete("/")).status_code == 405

                responses = await asyncio.gather(
                    *(client.get("/squares", params={"n": i}) for i in range(20))
                )
                assert [len(r.json()["squares"]) for r in responses] == list(range(20))
            assert events == [f"startup on {loop_name}"]
        assert events == [f"startup on {loop_name}", "shutdown"]

    arun(main())


def test_websocket_in_process(arun):
    events = []

    async def main():
        async with uvicorn_server(starlette_app(events.append)) as address:
            url = f"ws://{address}/ws"
            async with connect(url, proxy=None, open_timeout=5, close_timeout=5) as ws:
                for text in ("hello", "ferroloop", "x" * 100_000):
                    await ws.send(text)
                    assert await ws.recv() == text[::-1]
                await ws.send("close")
                with pytest.raises(ConnectionClosedError) as info:
                    await ws.recv()
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (4002, "done")

            async with connect(url, proxy=None, open_timeout=5, close_timeout=5) as ws:
                await ws.send("abc")
                assert await ws.recv() == "cba"
            # The client closed with 1000: the endpoint saw WebSocketDisconnect(1000).
            for _ in range(200):
                if "websocket closed by client: 1000" in events:
                    break
                await asyncio.sleep(0.01)
            assert "websocket closed by client: 1000" in events
        assert events[-1] == "shutdown"

    arun(main())


def wait_for_port(proc, log):
    """The port of the `Uvicorn running on ...` line `proc` writes to `log` (10 s at most)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        match = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", log.read_text())
        if match:
            return int(match.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise AssertionError(f"uvicorn did not start (exit {proc.returncode}):\n{log.read_text()}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_uvicorn_command_line_loop_option(arun, loop_name, tmp_path, sig):
    argv = [
        *(sys.executable, "-m", "uvicorn", "framework_apps:app"),
        *("--app-dir", str(HERE), "--host", "127.0.0.1", "--port", "0"),
        *("--loop", CLI_LOOP[loop_name], "--lifespan", "on"),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env, cwd=tmp_path)
    try:
        port = wait_for_port(proc, err)

        async def main():
            async with http_client(f"127.0.0.1:{port}") as client:
                resp = await client.get("/")
                assert (resp.status_code, resp.text) == (200, "hello from starlette")
                assert resp.headers["x-loop"] == loop_name  # the child runs the loop asked for
                resp = await client.get("/stream")
                assert resp.content == STREAMED

        arun(main())
        proc.send_signal(sig)
        returncode = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    log = err.read_text()
    assert "Application shutdown complete." in log, log
    assert f"Finished server process [{proc.pid}]" in log, log
    assert "Traceback" not in log, log
    assert out.read_text().splitlines()[0] == f"startup on {loop_name}"
    assert out.read_text().splitlines()[-1] == "shutdown"
    # uvicorn re-raises the signal once shut down: SIGINT then ends quietly, SIGTERM kills.
    assert returncode == (0 if sig == signal.SIGINT else -signal.SIGTERM)
