"""Exporting `loop.stats()`: as Prometheus text, and as OpenTelemetry observable gauges when
the OpenTelemetry SDK is installed (it is optional: nothing here needs it).

    python examples/stats_export.py            # runs a small echo workload, prints the text
    python examples/stats_export.py --otel     # also reads the gauges through OpenTelemetry

In a real service, serve `prometheus_text(loop.stats())` from a `/metrics` handler, or call
`observe_with_opentelemetry(loop)` once at start-up.
"""

import asyncio
import sys

import ferroloop

#: (stats key, metric name, Prometheus type, help)
METRICS = (
    ("iterations", "ferroloop_iterations_total", "counter", "Loop iterations."),
    ("running", "ferroloop_running_seconds_total", "counter", "Seconds in run_forever."),
    ("io_wait", "ferroloop_io_wait_seconds_total", "counter", "Seconds blocked waiting for I/O."),
    ("callbacks", "ferroloop_callbacks_total", "counter", "Handles run."),
    ("timers", "ferroloop_timers_total", "counter", "Timers that came due."),
    ("io_events", "ferroloop_io_events_total", "counter", "Transport and server I/O events."),
    (
        "longest_iteration",
        "ferroloop_longest_iteration_seconds",
        "gauge",
        "Longest callback run of one iteration.",
    ),
    ("bytes_read", "ferroloop_read_bytes_total", "counter", "Bytes received by transports."),
    ("bytes_written", "ferroloop_written_bytes_total", "counter", "Bytes sent by transports."),
    ("accepted", "ferroloop_accepted_connections_total", "counter", "Connections accepted."),
    ("ready", "ferroloop_ready_callbacks", "gauge", "Callbacks waiting to run."),
    ("scheduled", "ferroloop_scheduled_timers", "gauge", "Timers waiting."),
    ("fds", "ferroloop_registered_fds", "gauge", "File descriptors registered."),
    ("transports", "ferroloop_transports", "gauge", "Open transports."),
    ("servers", "ferroloop_servers", "gauge", "Listening sockets accepting."),
)


def prometheus_text(stats: dict, labels: str = "") -> str:
    """The Prometheus text exposition of one `loop.stats()` snapshot, plus the utilisation
    (the share of the running time not spent waiting for I/O)."""
    lines = []
    sel = "{" + labels + "}" if labels else ""
    for key, name, kind, text in METRICS:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name}{sel} {stats[key]}"]
    busy = 1 - stats["io_wait"] / stats["running"] if stats["running"] else 0.0
    name = "ferroloop_utilisation_ratio"
    lines += [
        f"# HELP {name} Share of the running time not waiting for I/O.",
        f"# TYPE {name} gauge",
    ]
    lines.append(f"{name}{sel} {busy:.6f}")
    return "\n".join(lines) + "\n"


def observe_with_opentelemetry(loop, meter_provider=None):
    """Registers one observable gauge per statistic on OpenTelemetry's meter; returns them."""
    from opentelemetry import metrics  # optional dependency

    meter = (meter_provider or metrics.get_meter_provider()).get_meter("ferroloop")

    def gauge(key, name, text):
        def observe(_options):
            return [metrics.Observation(loop.stats()[key])]

        return meter.create_observable_gauge(name, callbacks=[observe], description=text)

    return [gauge(key, name, text) for key, name, _, text in METRICS]


async def workload():
    """A few echo connections, so that every counter has something in it."""

    async def echo(reader, writer):
        writer.write(await reader.read(65536))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for size in (100, 10_000):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x" * size)
        await reader.readexactly(size)
        writer.close()
        await writer.wait_closed()
    await asyncio.sleep(0.01)
    server.close()
    await server.wait_closed()


async def main(otel: bool) -> None:
    loop = asyncio.get_running_loop()
    await workload()
    print(prometheus_text(loop.stats(), 'loop="main"'), end="")
    if otel:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        reader = InMemoryMetricReader()
        observe_with_opentelemetry(loop, MeterProvider(metric_readers=[reader]))
        data = reader.get_metrics_data()
        for metric in data.resource_metrics[0].scope_metrics[0].metrics:
            print("otel", metric.name, metric.data.data_points[0].value)


if __name__ == "__main__":
    ferroloop.run(main("--otel" in sys.argv[1:]))
