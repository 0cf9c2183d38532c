"""Random program generator of the differential fuzzer.

A *program* is a list of *ops* (JSON-able dicts) made by ``generate(seed)`` from
``random.Random(seed)`` alone, so a seed names a program on every machine and interpreter.
``runner.py`` interprets the ops inside one ``async def main()``.

Every op has ``"op"`` (its kind) and ``"id"`` (its index in the original program, kept through
reduction so that the trace's source names stay stable).  Ops that act on something another op
made name it with ``"ref"``; when the reducer drops the op that made it, the runner skips them
(identically on both loops).  Ops whose kind starts with ``closed_`` run after the loop is
closed.
"""

from __future__ import annotations

import random

# Relative weights of the op kinds (the "fire" kinds schedule work and return at once; the
# others await their own effects, with timeouts, while the fired work runs around them).
WEIGHTS = {
    "soon_batch": 8,
    "timers": 6,
    "future": 6,
    "task": 7,
    "yield": 6,
    "sleep": 3,
    "join": 5,
    "reader": 4,
    "writer": 2,
    "tr_open": 5,
    "tr_write": 5,
    "tr_peer_send": 5,
    "tr_pause": 3,
    "tr_resume": 3,
    "tr_write_eof": 2,
    "tr_close": 2,
    "tr_abort": 1,
    "tr_peer_close": 1,
    "stream": 3,
    "sock": 3,
    "subprocess": 2,
    "signal": 2,
    "executor": 3,
    "exc_handler": 2,
    "bad": 8,
    "closed": 3,
}

# Names of the bad calls that bad_calls.BAD_CALLS knows (kept here so that the generator does
# not import the runner).
BAD_CALLS = [
    "call_soon_noncallable",
    "call_soon_coroutine",
    "call_later_noncallable",
    "call_later_bad_delay",
    "call_at_bad_when",
    "call_soon_threadsafe_noncallable",
    "create_task_noncoro",
    "run_in_executor_coroutine",
    "run_in_executor_coroutine_function",
    "add_reader_bad_fd",
    "add_reader_negative_fd",
    "add_writer_bad_fd",
    "remove_reader_unknown",
    "remove_writer_unknown",
    "remove_reader_bad_fd",
    "set_default_executor_bad",
    "run_until_complete_running",
    "run_forever_running",
    "close_running",
    "add_signal_handler_not_int",
    "add_signal_handler_invalid",
    "add_signal_handler_sigkill",
    "add_signal_handler_coroutine",
    "remove_signal_handler_unset",
    "sock_recv_blocking",
    "sock_sendall_blocking",
    "create_connection_host_and_sock",
    "create_connection_no_host",
    "create_server_sock_and_host",
    "create_connection_udp_sock",
    "subprocess_exec_text",
    "subprocess_shell_not_str",
    "future_result_pending",
    "future_exception_pending",
    "future_set_result_twice",
    "future_set_exception_stopiteration",
    "future_set_exception_class",
    "task_result_pending",
    "handle_cancel_twice",
    "set_exception_handler_noncallable",
    "call_later_none",
    "sock_connect_bad_address",
    "getaddrinfo_bad_port",
]

CLOSED_CALLS = [
    "call_soon",
    "call_later",
    "call_at",
    "call_soon_threadsafe",
    "run_until_complete",
    "run_forever",
    "create_task",
    "create_future",
    "run_in_executor",
    "add_reader",
    "add_writer",
    "remove_reader",
    "add_signal_handler",
    "remove_signal_handler",
    "close_again",
    "is_closed",
    "is_running",
    "stop",
    "time",
    "shutdown_asyncgens",
    "shutdown_default_executor",
    "sock_recv",
    "create_connection",
    "getaddrinfo",
]

SUBPROCESS_KINDS = ["echo", "exit", "stderr", "kill", "terminate", "shell", "no_pipes"]
EXECUTOR_KINDS = ["value", "raise", "threadsafe", "sleep"]
SOCK_KINDS = ["connect_accept", "recv_into", "sendall_big", "peer_close", "udp"]
STREAM_KINDS = ["echo_lines", "readexactly_short", "readuntil", "big"]
FUTURE_ACTIONS = ["result", "exception", "cancel", "cancel_msg"]
TASK_OUTCOMES = ["return", "raise", "cancel_self", "await_sleep"]


def _payload(rng: random.Random, big: bool = False) -> dict:
    """A payload spec: the runner builds the bytes from (size, byte seed)."""
    if big and rng.random() < 0.3:
        size = rng.choice([70_000, 200_000, 400_000])
    else:
        size = rng.choice([1, 2, 5, 17, 100, 1000, 4096, 10_000])
    return {"size": size, "b": rng.randrange(256)}


def _make_op(rng: random.Random, kind: str, i: int, made: dict) -> dict | None:
    op: dict = {"op": kind, "id": i}
    if kind == "soon_batch":
        n = rng.randint(1, 6)
        op["n"] = n
        op["threadsafe"] = [rng.random() < 0.25 for _ in range(n)]
        op["raise"] = [k for k in range(n) if rng.random() < 0.15]
        op["cancel"] = [k for k in range(n) if rng.random() < 0.15]
        op["chain"] = [rng.choice([0, 0, 0, 1, 2]) for _ in range(n)]
        op["context"] = rng.random() < 0.2
    elif kind == "timers":
        n = rng.randint(1, 5)
        slots = rng.sample(range(0, 12), n)  # distinct delays, 25 ms apart
        op["delays"] = [s * 25 for s in slots]
        op["at"] = [rng.random() < 0.4 for _ in range(n)]
        op["cancel"] = [k for k in range(n) if rng.random() < 0.2]
        op["raise"] = [k for k in range(n) if rng.random() < 0.1]
        # timer a (earlier) cancels timer b (later), when both exist
        op["cancel_later"] = (
            sorted(rng.sample(range(n), 2), key=lambda k: op["delays"][k])
            if n >= 2 and rng.random() < 0.3
            else None
        )
    elif kind == "future":
        op["action"] = rng.choice(FUTURE_ACTIONS)
        op["via"] = rng.choice(["now", "soon", "later", "threadsafe"])
        op["ncb"] = rng.randint(0, 3)
        op["remove_cb"] = rng.random() < 0.2
        made.setdefault("awaitable", []).append(i)
    elif kind == "task":
        op["steps"] = rng.randint(0, 4)
        op["outcome"] = rng.choice(TASK_OUTCOMES)
        op["cancel"] = rng.choice([None, None, None, 0, 1, 3])
        op["cancel_msg"] = rng.choice([None, "stop it"])
        op["name"] = rng.random() < 0.3
        made.setdefault("awaitable", []).append(i)
    elif kind == "yield":
        op["n"] = rng.randint(1, 5)
    elif kind == "sleep":
        op["ms"] = rng.choice([0, 1, 10, 30, 60])
    elif kind == "join":
        if not made.get("awaitable"):
            return None
        op["ref"] = rng.choice(made["awaitable"])
        op["timeout"] = rng.choice([None, None, 0.0])
    elif kind == "reader":
        op["chunks"] = [_payload(rng) for _ in range(rng.randint(0, 3))]
        op["eof"] = rng.random() < 0.5
        op["replace"] = rng.random() < 0.2
        op["remove_twice"] = rng.random() < 0.3
    elif kind == "writer":
        op["remove_twice"] = rng.random() < 0.3
    elif kind == "tr_open":
        op["mode"] = rng.choice(["pair", "pair", "server"])
        made.setdefault("transport", []).append(i)
    elif kind.startswith("tr_"):
        if not made.get("transport"):
            return None
        op["ref"] = rng.choice(made["transport"])
        if kind in ("tr_write", "tr_peer_send"):
            op["data"] = [_payload(rng, big=True) for _ in range(rng.randint(1, 3))]
            op["lines"] = rng.random() < 0.2 and kind == "tr_write"
    elif kind == "stream":
        op["kind"] = rng.choice(STREAM_KINDS)
        op["lines"] = rng.randint(1, 4)
    elif kind == "sock":
        op["kind"] = rng.choice(SOCK_KINDS)
        op["data"] = _payload(rng, big=True)
    elif kind == "subprocess":
        op["kind"] = rng.choice(SUBPROCESS_KINDS)
        op["input"] = _payload(rng)
        op["code"] = rng.randint(0, 5)
    elif kind == "signal":
        op["sig"] = rng.choice(["SIGUSR1", "SIGUSR2", "SIGHUP"])
        op["arg"] = rng.randint(0, 9)
        op["readd"] = rng.random() < 0.3
    elif kind == "executor":
        op["kind"] = rng.choice(EXECUTOR_KINDS)
        op["n"] = rng.randint(1, 3)
    elif kind == "exc_handler":
        op["kind"] = rng.choice(["direct", "reset_default", "handler_raises"])
    elif kind == "bad":
        op["call"] = rng.choice(BAD_CALLS)
    elif kind == "closed":
        op["op"] = "closed_call"
        op["call"] = rng.choice(CLOSED_CALLS)
    return op


def generate(seed: int, min_ops: int = 10, max_ops: int = 40) -> list[dict]:
    """The program of ``seed``: a list of ops."""
    rng = random.Random(seed)
    kinds = list(WEIGHTS)
    weights = [WEIGHTS[k] for k in kinds]
    # Each program favours a few kinds, so that interactions within a family get exercised.
    favoured = set(rng.sample(kinds, 4))
    weights = [w * (4 if k in favoured else 1) for k, w in zip(kinds, weights, strict=True)]
    n = rng.randint(min_ops, max_ops)
    ops: list[dict] = []
    made: dict = {}
    while len(ops) < n:
        kind = rng.choices(kinds, weights)[0]
        op = _make_op(rng, kind, len(ops), made)
        if op is not None:
            ops.append(op)
    return ops
