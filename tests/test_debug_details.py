"""Debug-mode details (issue 14, point 7): slow protocol callbacks are reported, the "Using
selector" record, and transport reprs in asyncio's words (class names aside)."""

import asyncio
import gc
import logging
import os
import re
import socket
import time
import warnings

import pytest
from helpers_net import small_sndbuf

SLOW = re.compile(r"Executing <Handle \w+\._read_ready\(\)[^>]*> took (\d+\.\d{3}) seconds")


class _SlowProtocol(asyncio.Protocol):
    """Sleeps 150 ms in each data_received / datagram_received."""

    def __init__(self, loop):
        self.got = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def _slow(self):
        time.sleep(0.15)
        if not self.got.done():
            self.got.set_result(None)

    def data_received(self, data):
        self._slow()

    def datagram_received(self, data, addr):
        self._slow()

    def eof_received(self):
        return None


async def _slow_socket(loop, kind, create):
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    with b:
        transport, proto = await create(lambda: _SlowProtocol(loop), sock=a)
        b.send(b"x")
        await proto.got
        transport.close()
        await asyncio.sleep(0)


async def _slow_stream(loop):
    await _slow_socket(loop, socket.SOCK_STREAM, loop.create_connection)


async def _slow_datagram(loop):
    await _slow_socket(loop, socket.SOCK_DGRAM, loop.create_datagram_endpoint)


async def _slow_pipe(loop):
    r, w = os.pipe()
    try:
        transport, proto = await loop.connect_read_pipe(
            lambda: _SlowProtocol(loop), os.fdopen(r, "rb", buffering=0)
        )
        os.write(w, b"x")
        await proto.got
        transport.close()
        await asyncio.sleep(0)
    finally:
        os.close(w)


SLOW_CASES = {"stream": _slow_stream, "datagram": _slow_datagram, "read_pipe": _slow_pipe}


def _slow_records(caplog):
    return [r for r in caplog.records if r.name == "asyncio" and "Executing" in r.getMessage()]


@pytest.mark.parametrize("case", sorted(SLOW_CASES))
def test_slow_protocol_callback_is_logged_in_debug_mode(loop, caplog, case):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.1
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_until_complete(SLOW_CASES[case](loop))
    records = [r for r in _slow_records(caplog) if SLOW.search(r.getMessage())]
    assert len(records) == 1, [r.getMessage() for r in _slow_records(caplog)]
    record = records[0]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert message.startswith("Executing <Handle "), message
    assert float(SLOW.search(message).group(1)) >= 0.15


@pytest.mark.parametrize("case", sorted(SLOW_CASES))
def test_slow_protocol_callback_is_not_logged_outside_debug_mode(loop, caplog, case):
    loop.slow_callback_duration = 0.1
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        loop.run_until_complete(SLOW_CASES[case](loop))
    assert not _slow_records(caplog)


def test_fast_protocol_callback_is_not_logged_in_debug_mode(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 10.0
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        loop.run_until_complete(_slow_stream(loop))
    assert not _slow_records(caplog)


def test_using_selector_is_logged_at_creation(loop_factory, loop_name, caplog):
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        new_loop = loop_factory()
    try:
        records = [
            r
            for r in caplog.records
            if r.name == "asyncio" and r.getMessage().startswith("Using selector: ")
        ]
        assert len(records) == 1
        assert records[0].levelno == logging.DEBUG
        name = records[0].getMessage().removeprefix("Using selector: ")
        if loop_name == "asyncio":
            assert name.endswith("Selector")
        else:
            assert name == new_loop.backend
    finally:
        new_loop.close()


# --- transport reprs ------------------------------------------------------------------------


def _shape(transport):
    """The repr without the class name, which differs by design."""
    text = repr(transport)
    match = re.fullmatch(r"<(\w+)(.*)>", text, re.DOTALL)
    assert match, text
    return match.group(2)


def _forget(*objs):
    """Drops transports left open on a closed loop (their __del__ warns, as asyncio's do)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del objs
        gc.collect()


class _Quiet(asyncio.Protocol):
    def datagram_received(self, data, addr):
        pass

    def error_received(self, exc):
        pass


async def _stream(loop):
    a, b = socket.socketpair()
    transport, _ = await loop.create_connection(_Quiet, sock=a)
    return transport, b


async def _datagram(loop):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    transport, _ = await loop.create_datagram_endpoint(_Quiet, sock=a)
    return transport, b


@pytest.mark.parametrize("make", [_stream, _datagram], ids=["stream", "datagram"])
def test_socket_transport_repr(loop, make):
    transport, peer = loop.run_until_complete(make(loop))
    with peer:
        fd = transport.get_extra_info("socket").fileno()
        assert _shape(transport) == f" fd={fd} read=polling write=<idle, bufsize=0>"
        if make is _stream:
            transport.pause_reading()
            assert _shape(transport) == f" fd={fd} read=idle write=<idle, bufsize=0>"
            transport.resume_reading()
        transport.close()
        assert _shape(transport) == f" closing fd={fd} read=idle write=<idle, bufsize=0>"
        loop.run_until_complete(asyncio.sleep(0))
        assert _shape(transport) == f" closed fd={fd}"


@pytest.mark.parametrize("make", [_stream, _datagram], ids=["stream", "datagram"])
def test_socket_transport_repr_on_a_closed_loop(loop, make):
    transport, peer = loop.run_until_complete(make(loop))
    with peer:
        fd = transport.get_extra_info("socket").fileno()
        loop.close()
        assert _shape(transport) == f" fd={fd}"
        _forget(transport)


async def _read_pipe(loop):
    r, w = os.pipe()
    transport, _ = await loop.connect_read_pipe(asyncio.Protocol, os.fdopen(r, "rb", buffering=0))
    return transport, r, w


async def _write_pipe(loop):
    r, w = os.pipe()
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(w, "wb", buffering=0))
    return transport, w, r


def test_read_pipe_transport_repr(loop):
    transport, fd, other = loop.run_until_complete(_read_pipe(loop))
    try:
        assert _shape(transport) == f" fd={fd} polling"
        transport.pause_reading()
        assert _shape(transport) == f" fd={fd} idle"
        transport.resume_reading()
        transport.close()
        assert _shape(transport) == f" closing fd={fd} idle"
        loop.run_until_complete(asyncio.sleep(0))
        assert _shape(transport) == f" closed fd={fd} closed"
    finally:
        os.close(other)


def test_write_pipe_transport_repr(loop):
    transport, fd, other = loop.run_until_complete(_write_pipe(loop))
    try:
        assert _shape(transport) == f" fd={fd} idle bufsize=0"
        transport.close()
        assert _shape(transport) == f" closing fd={fd} idle bufsize=0"
        loop.run_until_complete(asyncio.sleep(0))
        assert _shape(transport) == f" closed fd={fd} closed"
    finally:
        os.close(other)


@pytest.mark.parametrize("make", [_read_pipe, _write_pipe], ids=["read", "write"])
def test_pipe_transport_repr_on_a_closed_loop(loop, make):
    transport, fd, other = loop.run_until_complete(make(loop))
    try:
        loop.close()
        assert _shape(transport) == f" fd={fd} open"
        _forget(transport)
    finally:
        os.close(other)


def test_stream_transport_repr_with_a_backed_up_write(loop):
    transport, peer = loop.run_until_complete(_stream(loop))
    with peer:
        fd = transport.get_extra_info("socket").fileno()
        small_sndbuf(transport)
        transport.write(b"x" * 1_000_000)
        size = transport.get_write_buffer_size()
        assert size > 0
        assert _shape(transport) == f" fd={fd} read=polling write=<polling, bufsize={size}>"
        transport.close()
        assert _shape(transport) == f" closing fd={fd} read=idle write=<polling, bufsize={size}>"
        transport.abort()
        loop.run_until_complete(asyncio.sleep(0))
        assert _shape(transport) == f" closed fd={fd}"


def test_write_pipe_transport_repr_with_a_backed_up_write(loop):
    transport, fd, other = loop.run_until_complete(_write_pipe(loop))
    try:
        transport.write(b"x" * 1_000_000)
        size = transport.get_write_buffer_size()
        assert size > 0
        assert _shape(transport) == f" fd={fd} polling bufsize={size}"
        transport.close()
        assert _shape(transport) == f" closing fd={fd} polling bufsize={size}"
        transport.abort()
        loop.run_until_complete(asyncio.sleep(0))
        assert _shape(transport) == f" closed fd={fd} closed"
    finally:
        os.close(other)
