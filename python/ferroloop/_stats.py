"""The type of `loop.stats()`'s snapshot (docs/statistics.md says what each key means)."""

from typing import TypedDict


class LoopStats(TypedDict):
    """What `loop.stats()` returns: counters since the loop was made, then what it holds now."""

    iterations: int
    running: float
    io_wait: float
    callbacks: int
    timers: int
    io_events: int
    longest_iteration: float
    longest_iteration_callbacks: int
    bytes_read: int
    bytes_written: int
    accepted: int
    ready: int
    scheduled: int
    fds: int
    transports: int
    servers: int
