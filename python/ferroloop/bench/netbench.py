"""What the network families (udp, tls, http) share: a server process measured case by case.

A server family's child process prints ``READY ADDRESS`` once it listens (as the echo servers
do). ``serve_and_measure`` starts it pinned to the server CPU, then for each case runs a warm-up
and one measured load run, and turns the load generator's figures plus the server's CPU time
into a record.
"""

import json
import os
import select
import subprocess
import time

from . import echo, system


def prime_allocator():
    """Raise glibc's mmap threshold the way a long-running process has had it raised.

    Transports read up to 256 KiB at a time into a fresh ``bytes``; above glibc's initial
    128 KiB mmap threshold each such read costs an ``mmap`` + ``munmap`` until a block that large
    is freed, which is what raises the threshold. Stream servers get there when a warm-up
    connection closes, but a datagram socket or a pipe never closes, so every benchmark child
    frees one large block at start: all loops are then measured in the steady state.
    """
    block = bytearray(1 << 19)
    del block


#: The error of a run in which not one request completed.
NOTHING = "no request completed"

#: Load generator figures copied into the record when the generator reports them.
EXTRA_FIELDS = ("client_busy", "lost", "stale", "note")


def echoclient(ctx, target, size, seconds, extra=(), mark=None):
    """One run of ferroloop-echoclient: ``target`` is e.g. ``["--udp", "127.0.0.1:5000"]``.
    Returns (its JSON object, None) or (None, why it failed).

    With ``mark``, the client connects (and completes its TLS handshakes), then waits;
    ``mark()`` is called and only then does the measured window start, so that what ``mark``
    snapshots (the server's CPU time) leaves connection set-up out.
    """
    cmd = [ctx.echoclient, *target, "--size", str(size), "--conns", str(ctx.conns)]
    cmd += ["--duration", str(seconds), *extra]
    if mark is None:
        return system.run_json(cmd, ctx.client_cpu, timeout=30 + 2 * seconds)
    cmd.append("--wait-go")
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    proc = system.spawn(cmd, ctx.client_cpu, text=True, **pipes)
    deadline = time.monotonic() + 30 + 2 * seconds
    try:
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        if ready and proc.stdout.readline().strip() == "CONNECTED":
            mark()
            proc.stdin.write("GO\n")
            proc.stdin.flush()
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        system.stop(proc)
        return None, f"timed out after {30 + 2 * seconds:.0f} s"
    except BrokenPipeError:
        out, err = proc.communicate()
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return None, tail[:300]
    try:
        return json.loads(lines[-1]), None
    except ValueError:
        return None, f"unreadable output: {lines[-1][:200]!r}"


def lifetime(ctx, cases, per_run=None):
    """Seconds a server may live before it exits by itself: ample, but bounded."""
    per_run = per_run if per_run is not None else ctx.warmup + ctx.duration
    return 60 + len(cases) * per_run * 3


def serve_and_measure(cmd, label, cases, ctx, warm_up, load):
    """Measure each case against one server process.

    ``cases`` is ``[(case name, unit, parameter)]``; ``warm_up(address, parameter)`` returns an
    error message or None; ``load(address, parameter, mark)`` runs the measured load, calling
    ``mark()`` when its measured window starts (after connection set-up), and returns
    (result, error), the result holding ``requests``, ``seconds``, ``rps``, ``p50_us``,
    ``p99_us`` and any of ``EXTRA_FIELDS``. Yields one record per case.
    """
    try:
        server, address = echo._start_server(
            cmd, ctx.server_cpu, os.path.join(ctx.tmpdir, f"{label}.log")
        )
    except RuntimeError as e:
        for name, unit, _ in cases:
            yield {"case": name, "unit": unit, "error": str(e)}
        return
    try:
        for name, unit, param in cases:
            record = {"case": name, "unit": unit}
            error = warm_up(address, param)
            if error:
                yield {**record, "error": error}
                continue

            def measure(param=param, record=record):
                start = [system.cpu_seconds(server.pid)]

                def mark():
                    start[0] = system.cpu_seconds(server.pid)

                result, error = load(address, param, mark)
                used = system.cpu_seconds(server.pid) - start[0]
                if error or not result["requests"]:
                    return {**record, "error": error or NOTHING}, used
                out = {
                    **record,
                    "value": result["rps"],
                    "p50_us": result["p50_us"],
                    "p99_us": result["p99_us"],
                    "cpu_us": used / result["requests"] * 1e6,
                    "server_busy": used / result["seconds"],
                }
                out.update((key, result[key]) for key in EXTRA_FIELDS if key in result)
                return out, used

            result = system.measure_quietly(measure, ctx.quiet_wait, ctx.retries)
            if result.get("error") == NOTHING and result["other_cpu"] > system.MAX_OTHER:
                # Starved by other processes rather than failed: try once more.
                result = system.measure_quietly(measure, ctx.quiet_wait, ctx.retries)
            yield result
    finally:
        system.stop(server)
