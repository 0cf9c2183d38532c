"""A short tour that shows ferroloop running ordinary asyncio code.

python examples/demo.py
"""

import asyncio
import time

import ferroloop


async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def main():
    loop = asyncio.get_running_loop()
    print(f"running on {type(loop).__module__}.{type(loop).__qualname__}, backend {loop.backend}")

    order = []
    loop.call_later(0.02, order.append, "timer 20 ms")
    loop.call_soon(order.append, "call_soon")
    await asyncio.sleep(0.03)
    print("callbacks ran in order:", order)

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.perf_counter()
    n = 2000
    for _ in range(n):
        writer.write(b"x" * 100)
        await reader.readexactly(100)
    dt = time.perf_counter() - t0
    print(f"TCP echo: {n} round trips of 100 bytes in {dt * 1000:.0f} ms")
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()

    result = await loop.run_in_executor(None, sum, range(1000))
    print("run_in_executor:", result)
    return "ok"


if __name__ == "__main__":
    print("demo:", ferroloop.run(main()))
