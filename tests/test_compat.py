"""ferroloop against the private parts of the running interpreter's asyncio.

Everything ferroloop needs from asyncio's internals is listed in ``ferroloop._compat``; these
tests check that list against the asyncio of the Python they run on, so that a new CPython that
renames a helper or adds a parameter to a hook fails here, by name, instead of dropping
connections at run time (3.12's ``Server._attach`` and 3.15's ``context=`` did exactly that).
"""

import ast
import asyncio
import inspect
import pathlib
import subprocess
import sys
import textwrap
from asyncio import base_events

import pytest

import ferroloop
from ferroloop import _compat

PACKAGE = pathlib.Path(ferroloop.__file__).parent
P = inspect.Parameter


def _accepts(ours, name, kind):
    """Whether signature ``ours`` accepts an argument that asyncio passes as ``name`` (``kind``)."""
    params = ours.parameters
    if kind == P.VAR_POSITIONAL:
        return any(p.kind == P.VAR_POSITIONAL for p in params.values())
    if kind == P.VAR_KEYWORD:
        return any(p.kind == P.VAR_KEYWORD for p in params.values())
    if name in params and params[name].kind != P.POSITIONAL_ONLY:
        return kind != P.POSITIONAL_ONLY or params[name].kind == P.POSITIONAL_OR_KEYWORD
    return any(p.kind == P.VAR_KEYWORD for p in params.values())


def _without_self(sig):
    params = list(sig.parameters.values())
    return sig.replace(parameters=params[1:])


@pytest.mark.parametrize("name", _compat.HOOKS)
def test_every_overridden_hook_accepts_what_asyncio_passes(name):
    theirs = getattr(_compat.SelectorEventLoop, name, None)
    assert theirs is not None, f"asyncio's loop has no {name}: ferroloop overrides a hook it lost"
    ours = getattr(ferroloop.Loop, name)
    assert ours is not theirs, f"ferroloop.Loop does not override {name}"
    theirs_sig = _without_self(inspect.signature(theirs))
    ours_sig = _without_self(inspect.signature(ours))
    for param in theirs_sig.parameters.values():
        assert _accepts(ours_sig, param.name, param.kind), (
            f"{name}{ours_sig} does not accept {param.name!r} from asyncio's {name}{theirs_sig}"
        )
    # Nothing asyncio may leave out is required by ferroloop.
    optional = {p.name for p in theirs_sig.parameters.values() if p.default is not P.empty}
    for param in ours_sig.parameters.values():
        if param.default is P.empty and param.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY):
            assert param.name in theirs_sig.parameters and param.name not in optional, (
                f"{name}{ours_sig} requires {param.name!r}, which asyncio's "
                f"{name}{theirs_sig} may not pass"
            )


def test_the_hook_list_covers_every_private_override():
    # A private method that ferroloop.Loop or its Rust base defines over asyncio's is a hook
    # asyncio calls: it belongs in _compat.HOOKS so the test above checks its signature.
    ours = set(vars(ferroloop.Loop)) | set(vars(ferroloop._ferroloop.LoopCore))
    for cls in ferroloop.Loop.__mro__[1:]:
        if cls.__module__.startswith("ferroloop"):
            ours |= set(vars(cls))
    overridden = {
        n
        for n in ours
        if n.startswith("_")
        and not n.startswith("__")
        and callable(getattr(_compat.SelectorEventLoop, n, None))
    }
    assert overridden - set(_compat.HOOKS) == set()


@pytest.mark.parametrize(
    ("obj", "attr"), _compat.RUST_NAMES + _compat.CALLED, ids=lambda x: getattr(x, "__name__", x)
)
def test_names_ferroloop_reads_or_calls_exist(obj, attr):
    assert hasattr(obj, attr), f"{obj!r} has no {attr!r}, which ferroloop reads or calls"


@pytest.mark.parametrize("attr", _compat.LOOP_STATE)
def test_loop_state_asyncio_reads_is_there_on_both_loops(attr):
    for loop in (asyncio.SelectorEventLoop(), ferroloop.new_event_loop()):
        try:
            assert hasattr(loop, attr), f"{type(loop).__name__} has no {attr}"
        finally:
            loop.close()


@pytest.mark.parametrize("attr", _compat.LOOP_ATTRIBUTES_READ)
def test_loop_attributes_ferroloop_reads_are_set_by_asyncio(attr):
    loop = _compat.SelectorEventLoop()
    try:
        assert hasattr(loop, attr), f"asyncio's Unix loop no longer sets {attr}"
    finally:
        loop.close()


def test_server_attach_matches_the_running_asyncio():
    params = list(inspect.signature(base_events.Server._attach).parameters)
    assert _compat.SERVER_TRACKS_TRANSPORTS == (params == ["self", "transport"])
    # asyncio 3.13 added close_clients on top of the transports it now tracks.
    assert _compat.SERVER_TRACKS_TRANSPORTS == hasattr(base_events.Server, "close_clients")


def test_version_switches_agree_with_what_asyncio_shows():
    assert _compat.HAS_RUN_FOREVER_SETUP == (sys.version_info >= (3, 13))
    assert (_compat.ThreadSafeHandle is not None) == (sys.version_info >= (3, 14))
    assert _compat.HOOKS_TAKE_CONTEXT == (sys.version_info >= (3, 15))


def test_transports_derive_from_asyncio_base_transport_with_its_layout():
    """transport_root.rs assumes ``BaseTransport``'s layout: ``__slots__ = ('_extra',)`` and
    nothing else, and builds the native root of every Rust transport on it."""
    from ferroloop import _ferroloop

    assert asyncio.BaseTransport.__slots__ == ("_extra",)
    assert asyncio.BaseTransport.__basicsize__ == object.__basicsize__ + 8
    for name in ("StreamTransport", "DatagramTransport", "ReadPipeTransport", "TlsTransport"):
        mro = getattr(_ferroloop, name).__mro__
        assert [k.__name__ for k in mro[1:]] == ["TransportRoot", "BaseTransport", "object"], name


def test_transport_bases_are_the_public_classes_of_asyncios_transports():
    for kind, bases in _compat.TRANSPORT_BASES.items():
        assert bases, kind
        for base in bases:
            assert base.__module__ == "asyncio.transports" and not base.__name__.startswith("_")
            assert getattr(asyncio, base.__name__) is base
    datagram = _compat.TRANSPORT_BASES["datagram"]
    assert (asyncio.DatagramTransport in datagram) == (sys.version_info >= (3, 12))


def _private_asyncio_uses(path):
    """``(line, name)`` of every private asyncio name a module of the package touches."""
    tree = ast.parse(path.read_text(), str(path))
    modules = set()  # local names bound to asyncio or its submodules
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "asyncio":
                    modules.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "asyncio":
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append((node.lineno, f"{node.module}.{alias.name}"))
                else:
                    modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in modules and not node.attr.startswith("__"):
                found.append((node.lineno, ast.unparse(node)))
    return found


@pytest.mark.parametrize(
    "module",
    sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "_compat.py"),
)
def test_private_asyncio_names_are_reached_only_through_compat(module):
    assert _private_asyncio_uses(PACKAGE / module) == []


def test_import_works_without_asyncio_policies():
    # Python 3.16 removes asyncio's policy classes: `import ferroloop` and `ferroloop.run` must
    # not need them; only EventLoopPolicy (built on first use) says what to use instead.
    code = textwrap.dedent(
        """
        import asyncio.unix_events, asyncio.events
        del asyncio.unix_events._UnixDefaultEventLoopPolicy
        import ferroloop

        async def main():
            await asyncio.sleep(0)
            return type(asyncio.get_running_loop()).__name__

        print(ferroloop.run(main()))
        try:
            ferroloop.EventLoopPolicy
        except AttributeError as exc:
            print("no policy:", exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    assert out[0] == "Loop"
    assert out[1].startswith("no policy: asyncio ") and "loop_factory=" in out[1]


def test_policy_is_built_on_first_use_and_installs_ferroloop():
    code = textwrap.dedent(
        """
        import asyncio, warnings
        import ferroloop
        assert "EventLoopPolicy" not in vars(ferroloop)
        ferroloop.install()
        assert isinstance(ferroloop.EventLoopPolicy(), ferroloop.EventLoopPolicy)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            print(type(asyncio.get_event_loop_policy()).__qualname__)
        print(asyncio.run(asyncio.sleep(0, type(asyncio.new_event_loop()).__name__)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["EventLoopPolicy", "Loop"]
