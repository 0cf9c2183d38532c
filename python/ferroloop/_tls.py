"""TLS on ferroloop: the Python faces of the Rust TLS protocol and transport, and the once-per-
connection set-up (argument checks, the default context, ``SSLContext.wrap_bio``).

The per-record work (feeding the incoming BIO, reading plaintext, encrypting writes) is the Rust
``TlsProtocol``'s; the state machine is asyncio's ``sslproto.SSLProtocol``, so the callbacks, the
errors and the messages are asyncio's.
"""

import ssl
import warnings
from asyncio import constants, protocols

from . import _compat, _ferroloop
from ._compat import SendfileMode, create_transport_context

__all__ = ("SSLProtocol", "SSLTransport", "accept", "make_ssl_protocol", "start_tls")


class SSLProtocol(_ferroloop.TlsProtocol, protocols.BufferedProtocol):
    """The protocol of the socket transport under a TLS connection."""


class SSLTransport(_ferroloop.TlsTransport, *_compat.TRANSPORT_BASES["tls"]):
    """The transport the application of a TLS connection uses."""

    _start_tls_compatible = True
    _sendfile_compatible = SendfileMode.FALLBACK

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {state}>"

    def __del__(self, _warn=warnings.warn):
        if not self._closed:
            self._closed = True
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)


def _timeout(value, name):
    if value is None:
        return getattr(constants, name.upper())
    if value <= 0:
        raise ValueError(f"{name} should be a positive number, got {value}")
    return value


def make_ssl_protocol(
    loop,
    app_protocol,
    sslcontext,
    waiter,
    server_side=False,
    server_hostname=None,
    call_connection_made=True,
    ssl_handshake_timeout=None,
    ssl_shutdown_timeout=None,
    incoming=None,
):
    """What ``sslproto.SSLProtocol(...)`` makes in asyncio, with the same checks and defaults.
    ``incoming``: the BIO that the TLS object reads ciphertext from (a new one by default)."""
    handshake_timeout = _timeout(ssl_handshake_timeout, "ssl_handshake_timeout")
    shutdown_timeout = _timeout(ssl_shutdown_timeout, "ssl_shutdown_timeout")
    if not sslcontext:
        sslcontext = create_transport_context(server_side, server_hostname)
    if not server_hostname or server_side:
        server_hostname = None
    if incoming is None:
        incoming = ssl.MemoryBIO()
    outgoing = ssl.MemoryBIO()
    sslobj = sslcontext.wrap_bio(
        incoming, outgoing, server_side=server_side, server_hostname=server_hostname
    )
    protocol = SSLProtocol(
        loop,
        app_protocol,
        sslobj,
        incoming,
        outgoing,
        sslcontext,
        waiter,
        call_connection_made,
        handshake_timeout,
        shutdown_timeout,
    )
    # asyncio's SSLProtocol attribute, which aiohttp's connector reads (transport._ssl_protocol).
    protocol._sslcontext = sslcontext
    protocol._set_app_transport(SSLTransport(protocol))
    return protocol


async def start_tls(
    loop,
    transport,
    protocol,
    sslcontext,
    *,
    server_side=False,
    server_hostname=None,
    ssl_handshake_timeout=None,
    ssl_shutdown_timeout=None,
):
    """``loop.start_tls``: asyncio's checks and steps, with ferroloop's TLS protocol."""
    if not isinstance(sslcontext, ssl.SSLContext):
        raise TypeError(
            f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}"
        )
    if not getattr(transport, "_start_tls_compatible", False):
        raise TypeError(f"transport {transport!r} is not supported by start_tls()")
    waiter = loop.create_future()
    incoming = ssl.MemoryBIO()
    ssl_protocol = make_ssl_protocol(
        loop,
        protocol,
        sslcontext,
        waiter,
        server_side,
        server_hostname,
        call_connection_made=False,
        ssl_handshake_timeout=ssl_handshake_timeout,
        ssl_shutdown_timeout=ssl_shutdown_timeout,
        incoming=incoming,
    )
    # Reading stays paused until connection_made has run, so no record arrives before it.
    transport.pause_reading()
    if server_side and _compat.START_TLS_TAKES_STREAM_BUFFER:
        # What the stream reader already read past the plaintext is the start of the handshake.
        buffered = _compat.take_stream_buffer(protocol)
        if buffered:
            incoming.write(buffered)
    transport.set_protocol(ssl_protocol)
    made = loop.call_soon(ssl_protocol.connection_made, transport)
    resumed = loop.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        transport.close()
        made.cancel()
        resumed.cancel()
        raise
    return ssl_protocol._app_transport


def accept(loop, conn, protocol_factory, extra, server, tls, context=None):
    """A connection the Rust listener accepted on a TLS server: asyncio's ``_accept_connection2``
    without its task. ``tls`` is ``(sslcontext, ssl_handshake_timeout, ssl_shutdown_timeout)``.

    A failed handshake closes the connection on its own (the TLS protocol's fatal error); asyncio
    also reports it when the loop is in debug mode, which needs a waiter, made only then.
    """
    sslcontext, handshake_timeout, shutdown_timeout = tls
    protocol = protocol_factory()
    waiter = loop.create_future() if loop.get_debug() else None
    transport = loop._make_ssl_transport(
        conn,
        protocol,
        sslcontext,
        waiter,
        server_side=True,
        extra=extra,
        server=server,
        ssl_handshake_timeout=handshake_timeout,
        ssl_shutdown_timeout=shutdown_timeout,
        context=context,
    )
    if waiter is not None:
        waiter.add_done_callback(lambda w: _handshake_done(loop, w, protocol, transport))


def _handshake_done(loop, waiter, protocol, transport):
    exc = None if waiter.cancelled() else waiter.exception()
    if exc is None:
        return
    transport.close()
    if isinstance(exc, (SystemExit, KeyboardInterrupt)):
        raise exc
    loop.call_exception_handler(
        {
            "message": "Error on transport creation for incoming connection",
            "exception": exc,
            "protocol": protocol,
            "transport": transport,
        }
    )
