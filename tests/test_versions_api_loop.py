"""The loop API that asyncio added or changed since 3.11, as the running version has it (the
rest is in test_versions_api.py): Server.close_clients/abort_clients and
create_server(keep_alive=) (3.13), and smaller changes to what the loop's own methods do
(callback reprs, the exception handler's context, transports on a used fd, the sendfile
fallback, buffered data before StreamWriter.start_tls).

Each test states what asyncio does on the running interpreter, so the asyncio run checks the
statement and the ferroloop run checks ferroloop against it; where an expectation depends on the
version, it is derived from what the running asyncio shows (a parameter, an attribute, a name its
code uses), not from a version number.
"""

import asyncio
import contextvars
import inspect
import io
import re
import socket
import ssl
from asyncio import base_events, format_helpers, selector_events

import pytest
from helpers_net import (
    Accepted,
    Recorder,
    client_context,
    connected_pair,
    iterations,
    recv_until_eof,
    server_context,
    small_sndbuf,
)
from helpers_versions import var

HAS_CLOSE_CLIENTS = hasattr(asyncio.Server, "close_clients")
needs_close_clients = pytest.mark.skipif(
    not HAS_CLOSE_CLIENTS, reason="asyncio has no Server.close_clients before 3.13"
)

# --- Server.close_clients / abort_clients, create_server(keep_alive=) (3.13) ----------------------

SERVER_KINDS = ["tcp", "unix", "tls"]


async def serve(loop, kind, tmp_path, factory, **kwargs):
    """(server, connect): a server of ``kind`` and a coroutine function making a client
    connection to it (``(transport, Recorder)``)."""
    if kind == "unix":
        path = str(tmp_path / "server.sock")
        server = await loop.create_unix_server(factory, path, **kwargs)
        return server, lambda: loop.create_unix_connection(Recorder, path)
    tls = {"ssl": server_context()} if kind == "tls" else {}
    server = await loop.create_server(factory, "127.0.0.1", 0, **tls, **kwargs)
    address = server.sockets[0].getsockname()
    if kind == "tls":
        return server, lambda: loop.create_connection(
            Recorder, *address, ssl=client_context(), server_hostname="localhost"
        )
    return server, lambda: loop.create_connection(Recorder, *address)


@needs_close_clients
@pytest.mark.parametrize("kind", SERVER_KINDS)
@pytest.mark.parametrize("method", ["close_clients", "abort_clients"])
def test_close_or_abort_clients_ends_every_connection_and_wait_closed_returns(
    run, loop, kind, method, tmp_path
):
    async def main():
        accepted = Accepted()
        server, connect = await serve(loop, kind, tmp_path, accepted)
        clients = [await connect() for _ in range(2)]
        peers = [await accepted.get() for _ in range(2)]
        server.close()
        waiting = asyncio.ensure_future(server.wait_closed())
        await iterations()
        # Closed, but connections remain: wait_closed waits for them (3.12.1+).
        assert not waiting.done()
        getattr(server, method)()
        await waiting
        server_side = [(await p.lost, p.calls) for p in peers]
        client_side = [(await protocol.lost, protocol.calls) for _, protocol in clients]
        return server_side, client_side

    server_side, client_side = run(main())
    assert server_side == [(None, ["made", "lost"])] * 2
    assert client_side == [(None, ["made", "eof", "lost"])] * 2


@needs_close_clients
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_abort_clients_drops_what_the_server_still_had_to_send(run, loop, kind, tmp_path):
    async def main():
        accepted = Accepted()
        server, connect = await serve(loop, kind, tmp_path, accepted)
        transport, _ = await connect()
        transport.pause_reading()  # the client reads nothing: the server's writes back up
        peer = await accepted.get()
        small_sndbuf(peer.transport)
        peer.transport.write(b"x" * (4 << 20))
        await iterations()
        server.close()
        server.abort_clients()  # close_clients would wait for the buffer to drain
        await server.wait_closed()
        exc = await peer.lost
        transport.close()
        return exc, peer.calls[0], peer.calls[-1]

    assert run(main()) == (None, "made", "lost")


@pytest.mark.skipif(
    "close_clients" not in asyncio.Server.serve_forever.__code__.co_names,
    reason="this asyncio's serve_forever does not close the clients when cancelled (3.14 does; "
    "3.13.0 then waits for them in wait_closed, 3.11/3.12 leave them open)",
)
def test_cancelling_serve_forever_closes_the_clients(run, loop):
    async def main():
        accepted = Accepted()
        server = await loop.create_server(accepted, "127.0.0.1", 0, start_serving=False)
        serving = asyncio.ensure_future(server.serve_forever())
        await iterations()
        transport, protocol = await loop.create_connection(
            Recorder, *server.sockets[0].getsockname()
        )
        peer = await accepted.get()
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        return server.is_serving(), await peer.lost, await protocol.lost, protocol.calls

    assert run(main()) == (False, None, None, ["made", "eof", "lost"])


@pytest.mark.skipif(
    "keep_alive" not in inspect.signature(base_events.BaseEventLoop.create_server).parameters,
    reason="asyncio's create_server has no keep_alive before 3.13",
)
@pytest.mark.parametrize("keep_alive", [True, False, None])
def test_create_server_keep_alive_sets_so_keepalive_on_the_listening_socket(run, loop, keep_alive):
    def keepalive(sock):
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    async def main():
        accepted = Accepted()
        server = await loop.create_server(accepted, "127.0.0.1", 0, keep_alive=keep_alive)
        transport, _ = await loop.create_connection(Recorder, *server.sockets[0].getsockname())
        peer = await accepted.get()
        found = (
            [keepalive(s) for s in server.sockets],
            # Linux: an accepted socket inherits the option from the listening one.
            keepalive(peer.transport.get_extra_info("socket")),
            keepalive(transport.get_extra_info("socket")),
        )
        transport.close()
        server.close()
        await server.wait_closed()
        return found

    on = bool(keep_alive)
    assert run(main()) == ([on], on, False)


# --- smaller changes to the loop's own methods (3.12-3.15) ----------------------------------------

#: 3.13: callback reprs and "Exception in callback" messages show arguments only in debug mode.
ARGUMENTS_ONLY_IN_DEBUG = (
    "debug" in inspect.signature(format_helpers._format_callback_source).parameters
)


def callback_with_secret(secret):
    raise ValueError("boom")


@pytest.mark.parametrize("debug", [False, True])
def test_handle_repr_shows_arguments_as_asyncio_does(loop, debug):
    loop.set_debug(debug)
    handle = loop.call_soon(callback_with_secret, "s3cret")
    timer = loop.call_later(10, callback_with_secret, "s3cret")
    # asyncio's own Handle on the same loop formats as the running version does.
    expected = repr(asyncio.Handle(callback_with_secret, ("s3cret",), loop))

    def strip(text):
        return re.sub(r" created at \S+", "", re.sub(r" when=\S+", "", text))

    assert strip(repr(handle)) == strip(expected)
    assert strip(repr(timer)) == strip(expected).replace("<Handle", "<TimerHandle")
    assert ("s3cret" in repr(handle)) == (debug or not ARGUMENTS_ONLY_IN_DEBUG)
    handle.cancel()
    timer.cancel()


@pytest.mark.parametrize("debug", [False, True])
def test_exception_in_callback_message_shows_arguments_as_asyncio_does(loop, debug):
    loop.set_debug(debug)
    contexts = []
    loop.set_exception_handler(lambda _, context: contexts.append(context))
    handle = loop.call_soon(callback_with_secret, "s3cret")
    loop.run_until_complete(iterations())
    (context,) = contexts
    source = format_helpers._format_callback_source
    kwargs = {"debug": debug} if ARGUMENTS_ONLY_IN_DEBUG else {}
    expected = source(callback_with_secret, ("s3cret",), **kwargs)
    assert context["message"] == f"Exception in callback {expected}"
    assert context["handle"] is handle


def test_exception_handler_runs_in_the_context_of_the_failing_callback(loop):
    # 3.14: call_exception_handler runs the handler in the handle's (or task's) context.
    in_context = "get_context" in base_events.BaseEventLoop.call_exception_handler.__code__.co_names
    ctx = contextvars.copy_context()
    ctx.run(var.set, "callback's")
    seen = []
    loop.set_exception_handler(lambda _, context: seen.append(var.get()))
    loop.call_soon(callback_with_secret, "x", context=ctx)
    loop.run_until_complete(iterations())
    assert seen == ["callback's" if in_context else "default"]


@pytest.mark.skipif(
    "_ensure_fd_no_transport"
    not in selector_events.BaseSelectorEventLoop._make_socket_transport.__code__.co_names,
    reason="asyncio 3.11 makes a second transport on a socket that already has one",
)
def test_a_second_transport_on_a_socket_in_use_is_refused(run, loop):
    async def main():
        stream, stream_peer = socket.socketpair()
        dgram, dgram_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        first, _ = await loop.connect_accepted_socket(asyncio.Protocol, stream)
        expected = [f"File descriptor {stream!r} is used by transport {first!r}"]
        with pytest.raises(RuntimeError) as stream_error:
            await loop.connect_accepted_socket(asyncio.Protocol, stream)
        first_dgram, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=dgram)
        expected.append(f"File descriptor {dgram!r} is used by transport {first_dgram!r}")
        with pytest.raises(RuntimeError) as dgram_error:
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=dgram)
        messages = [str(stream_error.value), str(dgram_error.value)]
        first.close()
        first_dgram.close()
        await iterations()
        stream_peer.close()
        dgram_peer.close()
        return messages, expected

    messages, expected = run(main())
    assert messages == expected


def test_sendfile_fallback_from_offset_zero_of_a_file_read_halfway(run, loop):
    # gh-150107 (3.14.x): the fallback (a file without fileno) seeks to offset 0 too; before,
    # offset 0 meant "from where the file is".
    seeks_any_offset = (
        base_events.BaseEventLoop._sendfile_fallback.__code__.co_names[0] == "hasattr"
    )
    content = bytes(range(256)) * 64

    async def main():
        transport, _, peer = await connected_pair()
        receiving = asyncio.ensure_future(recv_until_eof(peer))
        file = io.BytesIO(content)
        file.seek(1000)
        sent = await loop.sendfile(transport, file, 0)
        transport.close()
        received = await receiving
        peer.close()
        return sent, file.tell(), received

    expected = content if seeks_any_offset else content[1000:]
    assert run(main()) == (len(expected), len(expected), expected)


class StartTlsServer:
    """A streams server that reads a plaintext line, upgrades to TLS with StreamWriter.start_tls
    and echoes one line upper-cased."""

    def __init__(self):
        self.result = asyncio.get_running_loop().create_future()

    async def __call__(self, reader, writer):
        try:
            line = await reader.readline()
            await writer.start_tls(server_context())
            data = await reader.readline()
            writer.write(data.upper())
            await writer.drain()
            writer.close()
            self.result.set_result((line, data))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            self.result.set_exception(exc)


async def tls_over_raw_socket(sock, first, send_line):
    """Client side of a TLS handshake over a non-blocking socket, by hand: the plaintext
    ``first`` goes out in the same send as the ClientHello; then ``send_line`` is sent over TLS
    and the reply line returned."""
    loop = asyncio.get_running_loop()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    pending = first
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending += outgoing.read()
            if pending:
                await loop.sock_sendall(sock, pending)
                pending = b""
            data = await loop.sock_recv(sock, 65536)
            if not data:
                raise ConnectionError("EOF during the handshake") from None
            incoming.write(data)
    tls.write(send_line)
    await loop.sock_sendall(sock, outgoing.read())
    reply = b""
    while not reply.endswith(b"\n"):
        try:
            reply += tls.read(65536)
        except ssl.SSLWantReadError:
            data = await loop.sock_recv(sock, 65536)
            if not data:
                break
            incoming.write(data)
    return reply


@pytest.mark.skipif(
    "StreamReaderProtocol" not in base_events.BaseEventLoop.start_tls.__code__.co_names,
    reason="asyncio before 3.14 (gh-142352) leaves a handshake that came with the plaintext in "
    "the StreamReader, where start_tls never sees it",
)
def test_stream_start_tls_takes_a_handshake_that_came_with_the_plaintext(run, loop):
    async def main():
        handler = StartTlsServer()
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, server.sockets[0].getsockname())
        reply = await tls_over_raw_socket(sock, b"STARTTLS\n", b"hello over tls\n")
        got = await handler.result
        sock.close()
        server.close()
        await server.wait_closed()
        return reply, got

    assert run(main()) == (b"HELLO OVER TLS\n", (b"STARTTLS\n", b"hello over tls\n"))
