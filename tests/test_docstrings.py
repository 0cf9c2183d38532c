"""Every public method of the loop, its handles and the Rust transports says what it does (issue 18,
point 3)."""

import pytest

from ferroloop import _ferroloop

METHODS = {
    _ferroloop.LoopCore: (
        "time call_soon call_soon_threadsafe call_later call_at get_debug create_future "
        "create_task stop is_closed"
    ),
    _ferroloop.Handle: "cancel cancelled get_context",
    _ferroloop.TimerHandle: "when cancel",
}


@pytest.mark.parametrize(
    ("cls", "name"), [(cls, name) for cls, names in METHODS.items() for name in names.split()]
)
def test_public_method_has_a_docstring(cls, name):
    doc = getattr(cls, name).__doc__ or ""
    # The signature line that CPython strips from __doc__ leaves the text only.
    assert doc.strip(), f"{cls.__name__}.{name} has no docstring"


TRANSPORTS = (
    _ferroloop.StreamTransport,
    _ferroloop.DatagramTransport,
    _ferroloop.ReadPipeTransport,
    _ferroloop.WritePipeTransport,
    _ferroloop.TlsTransport,
    _ferroloop.TlsProtocol,
)


@pytest.mark.parametrize("cls", TRANSPORTS, ids=lambda cls: cls.__name__)
def test_every_public_method_of_a_transport_has_a_docstring(cls):
    methods = [n for n, v in vars(cls).items() if not n.startswith("_") and callable(v)]
    assert methods, cls
    missing = [n for n in methods if not (getattr(cls, n).__doc__ or "").strip()]
    assert missing == []
