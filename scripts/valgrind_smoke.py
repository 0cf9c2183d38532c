"""A short program over ferroloop's main paths, to run under valgrind's memcheck (``make
valgrind``): callbacks, timers, a task, handles and contexts parked out of the GC's walk (some
cancelled, some held outside, collections between), ``sock_recv`` waits on a kept registration,
TCP and UNIX streams, UDP, a pipe, a subprocess and TLS.
It exits 0 when every step gave the expected result; valgrind's ``--error-exitcode`` turns any
invalid read or write, use of uninitialised memory or bad free into a failure."""

import asyncio
import contextvars
import gc
import os
import socket
import ssl
import sys

import ferroloop
from ferroloop.bench.echo import EchoProtocol as Echo
from ferroloop.bench.udp_echo import EchoDatagramProtocol as UdpEcho

HERE = os.path.dirname(os.path.abspath(__file__))
CERTS = os.path.join(HERE, "..", "tests", "tls")


async def echo_through(reader, writer, payload):
    writer.write(payload)
    await writer.drain()
    got = await reader.readexactly(len(payload))
    writer.close()
    await writer.wait_closed()
    return got


async def parked_handles(loop):
    """Bursts of handles (parked behind 16 others, timers always), with their contexts: some
    cancelled, some contexts held outside the handle, collections while they wait."""
    var = contextvars.ContextVar("smoke")
    ran = []
    handles = [loop.call_soon(ran.append, i) for i in range(64)]
    handles += [loop.call_later(0, ran.append, 100 + i) for i in range(64)]
    token = var.set("set")
    handles += [loop.call_soon(ran.append, 200 + i) for i in range(32)]
    var.reset(token)
    held = [h._context for h in handles[::5]]
    for h in handles[::3]:
        h.cancel()
    gc.collect()
    cancelled = {i for i, h in enumerate(handles) if h.cancelled()}
    del handles
    await asyncio.sleep(0.01)
    del held
    gc.collect()
    assert len(ran) == 160 - len(cancelled), (len(ran), len(cancelled))


async def kept_sock_waits(loop):
    """``sock_recv`` waits on a socket whose registration the loop keeps between waits (epoll):
    waits, a cancelled one, the socket closed while kept with a dup holding its file, and a new
    socket on its number, whose waits the old file's reports must not disturb."""

    async def waited(sock, peer, data):
        pending = asyncio.ensure_future(loop.sock_recv(sock, 100))
        await asyncio.sleep(0)
        peer.send(data)
        return await pending

    a, a_peer = socket.socketpair()
    for s in (a, a_peer):
        s.setblocking(False)
    for i in range(20):
        assert await waited(a, a_peer, b"%d" % i) == b"%d" % i
    cancelled = asyncio.ensure_future(loop.sock_recv(a, 100))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    number, kept = a.fileno(), a.dup()
    a.close()
    b, b_peer = socket.socketpair()
    if b.fileno() != number:
        os.dup2(b.fileno(), number)
        b.close()
        b = socket.socket(fileno=number)
    b.setblocking(False)
    pending = asyncio.ensure_future(loop.sock_recv(b, 100))
    await asyncio.sleep(0)
    a_peer.send(b"to the old file")
    await asyncio.sleep(0)
    b_peer.send(b"new")
    assert await pending == b"new"
    assert kept.recv(100) == b"to the old file"
    for s in (b, b_peer, kept, a_peer):
        s.close()


async def main():
    loop = asyncio.get_running_loop()
    order = []
    loop.call_soon(order.append, 1)
    loop.call_later(0.001, order.append, 3)
    loop.call_soon(order.append, 2)
    await asyncio.sleep(0.01)
    assert order == [1, 2, 3], order
    assert await asyncio.gather(*(asyncio.sleep(0, i) for i in range(10))) == list(range(10))
    await parked_handles(loop)
    if getattr(loop, "backend", "epoll") == "epoll":
        # NOTE: only where registrations are kept. On io_uring under memcheck the close-and-reuse
        # step once hung in CI (a removal and a re-add of one fd number before the ring was
        # submitted; not reproduced outside valgrind): left to its own investigation.
        await kept_sock_waits(loop)

    payload = os.urandom(200_000)
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
    assert await echo_through(reader, writer, payload) == payload
    server.close()
    await server.wait_closed()

    path = f"/tmp/ferroloop-valgrind-{os.getpid()}.sock"  # noqa: S108 (tempfile seeds random)
    server = await loop.create_unix_server(Echo, path)
    reader, writer = await asyncio.open_unix_connection(path)
    assert await echo_through(reader, writer, b"unix") == b"unix"
    server.close()
    await server.wait_closed()
    if os.path.exists(path):
        os.unlink(path)

    transport, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setblocking(False)
    await loop.sock_connect(client, transport.get_extra_info("sockname"))
    await loop.sock_sendall(client, b"datagram")
    assert await loop.sock_recv(client, 100) == b"datagram"
    client.close()
    transport.close()

    r, w = os.pipe()
    reader = asyncio.StreamReader()
    rtransport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb", 0)
    )
    os.write(w, b"pipe")
    os.close(w)
    assert await reader.read() == b"pipe"
    rtransport.close()

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "print('child')", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert out == b"child\n" and proc.returncode == 0

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(os.path.join(CERTS, "server.pem"))
    client_ctx = ssl.create_default_context(cafile=os.path.join(CERTS, "ca.pem"))
    server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=server_ctx)
    host, port = server.sockets[0].getsockname()
    reader, writer = await asyncio.open_connection(
        host, port, ssl=client_ctx, server_hostname="localhost"
    )
    assert await echo_through(reader, writer, b"tls" * 1000) == b"tls" * 1000
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    # python valgrind_smoke.py [asyncio|ferroloop] [backend]
    which = sys.argv[1] if len(sys.argv) > 1 else "ferroloop"
    backend = sys.argv[2] if len(sys.argv) > 2 else None
    if which == "asyncio":
        loop = asyncio.SelectorEventLoop()
    else:
        loop = ferroloop.new_event_loop(backend=backend) if backend else ferroloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    print(f"valgrind smoke on {which}: ok")
