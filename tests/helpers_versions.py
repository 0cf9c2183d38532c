"""Helpers shared by the test_versions_api*.py files: comparing an outcome with asyncio's, and
the context variable that their context tests set."""

import asyncio
import contextvars

__all__ = ("on_asyncio", "outcome", "var")

var = contextvars.ContextVar("var", default="default")


def on_asyncio(call):
    """What ``call(loop)`` gives on a fresh asyncio loop, for comparing messages that differ
    from version to version (even between patch releases): ``(exception type, message)``, or
    ``("ok", value)``."""
    oracle = asyncio.SelectorEventLoop()
    try:
        return ("ok", call(oracle))
    except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
        return (type(exc), str(exc))
    finally:
        oracle.close()


def outcome(call, loop):
    try:
        return ("ok", call(loop))
    except Exception as exc:  # noqa: BLE001
        return (type(exc), str(exc))
