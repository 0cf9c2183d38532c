"""`loop.stats()`: ferroloop's own API (asyncio has none, so there is no oracle side): each
counter is checked against work whose size the test knows, on every backend of this machine."""

import asyncio
import os
import socket
import subprocess
import sys
import threading

import pytest

ferroloop = pytest.importorskip("ferroloop")

BACKENDS = ferroloop.backends()

COUNTERS = (
    "iterations",
    "callbacks",
    "timers",
    "io_events",
    "bytes_read",
    "bytes_written",
    "accepted",
)
GAUGES = ("ready", "scheduled", "fds", "transports", "servers", "longest_iteration_callbacks")
SECONDS = ("running", "io_wait", "longest_iteration")


@pytest.fixture(params=BACKENDS)
def loop(request):
    lp = ferroloop.new_event_loop(backend=request.param)
    yield lp
    if not lp.is_closed():
        lp.run_until_complete(lp.shutdown_asyncgens())
        lp.close()


def delta(before, after):
    return {k: after[k] - before[k] for k in COUNTERS}


def test_a_new_loop_has_done_nothing(loop):
    stats = loop.stats()
    assert set(stats) == set(COUNTERS) | set(GAUGES) | set(SECONDS)
    assert all(type(stats[k]) is int for k in COUNTERS + GAUGES)
    assert all(type(stats[k]) is float for k in SECONDS)
    assert {k: stats[k] for k in COUNTERS + SECONDS} == dict.fromkeys(COUNTERS + SECONDS, 0)
    assert stats["ready"] == stats["scheduled"] == stats["servers"] == stats["transports"] == 0
    assert loop.stats() is not loop.stats()  # a new snapshot each time


def test_one_iteration_runs_what_was_ready(loop):
    ran = []
    for i in range(5):
        loop.call_soon(ran.append, i)
    loop.call_soon(ran.append, "cancelled").cancel()
    loop.call_soon(loop.stop)
    assert loop.stats()["ready"] == 7
    before = loop.stats()
    loop.run_forever()
    after = loop.stats()
    assert ran == [0, 1, 2, 3, 4]
    # Five callbacks and stop(); the cancelled handle is not run.
    assert delta(before, after) | {"iterations": 1} == delta(before, after)
    assert delta(before, after)["callbacks"] == 6
    assert after["ready"] == 0
    assert after["longest_iteration_callbacks"] == 7  # taken from the queue, cancelled included
    assert 0 < after["longest_iteration"] <= after["running"]
    assert after["io_wait"] <= after["running"]


def _timers(lp):
    """Schedules four timers (one cancelled) and runs until two have fired; returns the
    lengths of the timer queue before and after."""
    lp.call_later(3600, lambda: None)
    lp.call_later(3600, lambda: None).cancel()
    lp.call_later(0.001, lambda: None)
    lp.call_later(0.002, lp.stop)

    def count():
        return lp.stats()["scheduled"] if hasattr(lp, "stats") else len(lp._scheduled)

    queued = count()
    lp.run_forever()
    return queued, count()


def test_timers_that_come_due_are_counted_and_pending_ones_are_scheduled(loop):
    # `scheduled` is what asyncio's own loop holds in `_scheduled` (a cancelled timer stays
    # until it reaches the head or cancelled ones are most of a long queue).
    oracle = asyncio.SelectorEventLoop()
    try:
        expected = _timers(oracle)
    finally:
        oracle.close()
    assert _timers(loop) == expected == (4, 2)
    stats = loop.stats()
    assert stats["timers"] == 2
    assert stats["callbacks"] == 2
    # The loop slept until the timers were due: that time is in the I/O wait.
    assert 0 < stats["io_wait"] <= stats["running"]


def test_reader_callbacks_count_and_their_fds_are_registered(loop):
    r, w = socket.socketpair()
    with r, w:
        seen = []

        def on_readable():
            seen.append(r.recv(100))
            loop.remove_reader(r)
            loop.stop()

        base = loop.stats()["fds"]
        loop.add_reader(r, on_readable)
        assert loop.stats()["fds"] == base + 1
        w.send(b"ping")
        before = loop.stats()
        loop.run_forever()
        assert seen == [b"ping"]
        assert delta(before, loop.stats())["callbacks"] == 1
        assert loop.stats()["fds"] == base
        # add_reader's own reads are the callback's: not the transports' bytes.
        assert loop.stats()["bytes_read"] == 0


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def _echo_clients(loop, connect, sizes):
    for size in sizes:
        reader, writer = await connect()
        writer.write(b"x" * size)
        got = await reader.readexactly(size)
        assert len(got) == size
        inside = loop.stats()
        writer.close()
        await writer.wait_closed()
    return inside


def test_tcp_bytes_connections_and_gauges(loop):
    sizes = [10, 1000, 100_000]

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        assert loop.stats()["servers"] == 1
        inside = await _echo_clients(
            loop, lambda: asyncio.open_connection("127.0.0.1", port), sizes
        )
        # While the last client was connected: its transport and the server's.
        assert inside["transports"] == 2
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)
        return loop.stats()

    stats = loop.run_until_complete(main())
    # Each byte crossed twice each way: the client wrote it and the server read it, the server
    # wrote it back and the client read it.
    assert stats["bytes_written"] == stats["bytes_read"] == 2 * sum(sizes)
    assert stats["accepted"] == len(sizes)
    assert stats["servers"] == 0
    assert stats["io_events"] > 0


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no UNIX sockets")
def test_unix_stream_bytes(loop, tmp_path):
    path = str(tmp_path / "s")
    sizes = [1, 5000]

    async def main():
        server = await loop.create_unix_server(Echo, path)
        await _echo_clients(loop, lambda: asyncio.open_unix_connection(path), sizes)
        server.close()
        await server.wait_closed()
        return loop.stats()

    stats = loop.run_until_complete(main())
    assert stats["bytes_written"] == stats["bytes_read"] == 2 * sum(sizes)
    assert stats["accepted"] == len(sizes)


def test_datagram_bytes(loop):
    class Back(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data, addr)

    class Client(asyncio.DatagramProtocol):
        def __init__(self):
            self.got = loop.create_future()

        def datagram_received(self, data, addr):
            self.got.set_result(data)

    async def main():
        server, _ = await loop.create_datagram_endpoint(Back, local_addr=("127.0.0.1", 0))
        addr = server.get_extra_info("sockname")
        client, proto = await loop.create_datagram_endpoint(Client, remote_addr=addr)
        client.sendto(b"y" * 300)
        assert await proto.got == b"y" * 300
        client.close()
        server.close()
        await asyncio.sleep(0)
        return loop.stats()

    stats = loop.run_until_complete(main())
    assert stats["bytes_written"] == stats["bytes_read"] == 600


def test_pipe_bytes_of_a_subprocess(loop):
    data = os.urandom(20_000)

    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        out, _ = await proc.communicate(data)
        assert out == data
        return loop.stats()

    stats = loop.run_until_complete(main())
    assert stats["bytes_written"] == stats["bytes_read"] == len(data)


def test_stats_can_be_read_from_another_thread_while_the_loop_runs(loop):
    seen = []

    async def main():
        started = threading.Event()

        def watch():
            started.set()
            seen.append(loop.stats())

        thread = threading.Thread(target=watch)
        thread.start()
        while not started.is_set() or thread.is_alive():
            await asyncio.sleep(0.001)
        thread.join()

    loop.run_until_complete(main())
    assert len(seen) == 1 and seen[0]["iterations"] >= 0
    # `running` includes the run in progress when read from inside it.
    assert seen[0]["running"] > 0


def test_running_time_keeps_the_current_run(loop):
    async def main():
        await asyncio.sleep(0)
        return loop.stats()["running"]

    inside = loop.run_until_complete(main())
    after = loop.stats()["running"]
    assert 0 < inside <= after


def test_stats_after_close(loop):
    loop.run_until_complete(asyncio.sleep(0))
    before = loop.stats()
    loop.close()
    after = loop.stats()
    assert {k: after[k] for k in COUNTERS} == {k: before[k] for k in COUNTERS}
    assert after["ready"] == after["scheduled"] == after["fds"] == 0


def test_the_export_example_prints_prometheus_text():
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "stats_export.py")
    out = subprocess.run(
        [sys.executable, example], capture_output=True, text=True, check=True
    ).stdout
    samples = dict(line.rsplit(" ", 1) for line in out.splitlines() if not line.startswith("#"))
    assert float(samples['ferroloop_accepted_connections_total{loop="main"}']) == 2
    # Two echoes of 100 and 10,000 bytes, each byte sent and received twice.
    assert float(samples['ferroloop_written_bytes_total{loop="main"}']) == 2 * 10_100
    assert 0 <= float(samples['ferroloop_utilisation_ratio{loop="main"}']) <= 1
    assert all(name.startswith("ferroloop_") for name in samples)


def test_the_export_example_feeds_opentelemetry_gauges():
    pytest.importorskip(
        "opentelemetry.sdk", reason="OpenTelemetry's SDK is optional (not installed)"
    )
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "stats_export.py")
    out = subprocess.run(
        [sys.executable, example, "--otel"], capture_output=True, text=True, check=True
    ).stdout
    gauges = dict(line.split()[1:] for line in out.splitlines() if line.startswith("otel "))
    assert float(gauges["ferroloop_accepted_connections_total"]) == 2
    assert float(gauges["ferroloop_read_bytes_total"]) == 2 * 10_100


def test_the_typed_dict_names_every_key(loop):
    assert set(ferroloop.LoopStats.__annotations__) == set(loop.stats())
    types = {"int": int, "float": float}
    stats = loop.stats()
    assert {
        k: types[getattr(t, "__name__", t)] for k, t in ferroloop.LoopStats.__annotations__.items()
    } == {k: type(v) for k, v in stats.items()}
