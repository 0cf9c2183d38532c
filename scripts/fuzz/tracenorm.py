"""The differential fuzzer's trace normaliser: what goes into a trace, made comparable.

Owns ``norm`` (strips addresses, fds, paths, line numbers, times and socket addresses from a
message or repr), ``exc_repr`` (an exception as class, normalised message and errno),
``outcome`` (what a done future holds), ``digest`` (received bytes as a short hash) and
``LogRecorder`` (the ``asyncio`` logger's records as trace events).  Nothing here runs a loop.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from pathlib import Path


def digest(data: bytes) -> str:
    return hashlib.sha1(bytes(data)).hexdigest()[:12]


_ADDR = re.compile(r"0x[0-9a-fA-F]+")
_FD = re.compile(r"fd=-?\d+")
_PATH = re.compile(r"(/[^\s:'\"()<>]+)+\.py")
_LINE = re.compile(r"\.py:\d+")
_WHEN = re.compile(r"when=[0-9.e+-]+")
_CUT = re.compile(r"\.\.\.[0-9.e+-]*")  # reprlib's cut of such a repr
_CUT_ADDR = re.compile(r"\.\.\.x[0-9a-fA-F]+")  # an address whose "0" reprlib cut off
_FLOAT = re.compile(r"\d+\.\d{3,}")  # times, e.g. in a TimerHandle argument's repr
_SOCKADDR = re.compile(r"laddr=\([^)]*\)|raddr=\([^)]*\)|laddr=[^,>]*|raddr=[^,>]*")


def norm(text: str) -> str:
    text = _ADDR.sub("0x?", text)
    text = _CUT_ADDR.sub("...x?", text)
    text = _FD.sub("fd=?", text)
    text = _LINE.sub(".py:?", text)
    text = _PATH.sub(lambda m: Path(m.group(0)).name, text)
    text = _SOCKADDR.sub("addr=?", text)
    text = _WHEN.sub("when=?", text)
    text = _CUT.sub("...", text)
    text = _FLOAT.sub("T", text)
    return text


def exc_repr(exc: BaseException) -> list:
    cls = type(exc)
    out = [f"{cls.__module__}.{cls.__qualname__}", norm(str(exc))]
    if isinstance(exc, OSError):
        out.append(exc.errno)
    return out


def outcome(fut) -> list:
    """What a done future holds, as user code sees it through result()."""
    if not fut.done():
        return ["pending"]
    try:
        return ["result", norm(repr(fut.result()))]
    except BaseException as exc:  # noqa: BLE001 - CancelledError included on purpose
        return ["raised", *exc_repr(exc)]


class LogRecorder(logging.Handler):
    def __init__(self, rec: Callable[..., None]):
        """``rec``: the runner's trace recorder (``RunnerCore.rec``)."""
        super().__init__(logging.DEBUG)
        self.rec = rec

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage().splitlines()[0]
        except Exception:  # noqa: BLE001
            msg = "?"
        exc = record.exc_info[1] if record.exc_info else None
        self.rec(
            "log:" + norm(msg),
            "ev",
            record.levelname,
            norm(msg),
            exc_repr(exc) if exc is not None else None,
        )
