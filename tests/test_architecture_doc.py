"""docs/architecture.md's table of loop methods stays true (issue 17, point 4).

Each row reads ``| `method` | kind | where | hooks | notes |``; kind is ``Rust`` (``LoopCore``, in
the extension), ``Python`` (a class of the ``ferroloop`` package) or ``asyncio`` (asyncio's own
method, over the hooks named). A method that only some CPython versions have carries ``(3.N+)``
or ``(until 3.N)`` after its name; such a row is checked only where it applies.
"""

import asyncio
import inspect
import re
import sys
from pathlib import Path

import ferroloop
from ferroloop import _ferroloop

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
KINDS = ("Rust", "Python", "asyncio")
#: The asyncio class ``ferroloop.Loop`` derives from (``_UnixSelectorEventLoop`` on Linux).
ASYNCIO_LOOP = asyncio.SelectorEventLoop

ROW = re.compile(r"^\|\s*`(?P<name>\w+)`\s*(?P<marker>\([^)]*\))?\s*\|(?P<rest>.*)\|\s*$")
SINCE = re.compile(r"^\((\d+)\.(\d+)\+\)$")
UNTIL = re.compile(r"^\(until (\d+)\.(\d+)\)$")


def _ticked(cell):
    return re.findall(r"`([^`]+)`", cell)


def _applies(marker):
    """Whether a row with this version marker (or none) applies to the running interpreter."""
    if not marker:
        return True
    if m := SINCE.match(marker):
        return sys.version_info[:2] >= (int(m[1]), int(m[2]))
    if m := UNTIL.match(marker):
        return sys.version_info[:2] < (int(m[1]), int(m[2]))
    raise AssertionError(f"unknown version marker {marker!r} (use '(3.N+)' or '(until 3.N)')")


def _rows():
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = ROW.match(line)
        if m is None:
            continue
        cells = [c.strip() for c in m["rest"].split("|")]
        if len(cells) < 3 or cells[0] not in KINDS:
            continue  # a row of another table (the layers' table has no kind column)
        rows.append(
            {
                "name": m["name"],
                "marker": m["marker"],
                "kind": cells[0],
                "files": _ticked(cells[1]),
                "hooks": _ticked(cells[2]),
            }
        )
    return rows


ROWS = _rows()
APPLICABLE = [row for row in ROWS if _applies(row["marker"])]


def _public_methods():
    return sorted(n for n in dir(asyncio.AbstractEventLoop) if not n.startswith("_"))


def _check(rows, problem):
    """Runs ``problem(row)`` (a message, or None) on every row; fails with all the messages."""
    found = [f"{row['name']}: {msg}" for row in rows if (msg := problem(row))]
    assert not found, f"docs/{DOC.name}:\n" + "\n".join(found)


def test_the_table_is_found():
    # asyncio 3.11-3.15 have 54 public loop methods; the parser must see about that many.
    assert len(ROWS) >= 50, f"only {len(ROWS)} rows parsed from {DOC}"


def test_each_method_has_one_row():
    names = [row["name"] for row in ROWS]
    assert sorted(set(names)) == sorted(names), "a method has two rows"


def test_every_public_loop_method_has_a_row():
    documented = {row["name"] for row in APPLICABLE}
    missing = [name for name in _public_methods() if name not in documented]
    assert not missing, f"no row in {DOC.name} for {missing}"


def test_each_row_names_a_method_of_the_loop():
    def problem(row):
        if not callable(getattr(ferroloop.Loop, row["name"], None)):
            return "ferroloop.Loop has no such method"

    _check(APPLICABLE, problem)


def test_the_files_named_exist():
    def problem(row):
        if row["kind"] != "asyncio" and not row["files"]:
            return f"a {row['kind']} row names no file"
        gone = [name for name in row["files"] if not (ROOT / name).is_file()]
        if gone:
            return f"no such file: {gone}"

    _check(ROWS, problem)


def test_the_kind_is_where_loop_gets_the_method():
    def problem(row):
        name = row["name"]
        found = getattr(ferroloop.Loop, name, None)
        if found is None:
            return "ferroloop.Loop has no such method"
        from_asyncio = found is getattr(ASYNCIO_LOOP, name, None)
        if row["kind"] == "asyncio":
            return None if from_asyncio else "said asyncio's, but Loop's method is not asyncio's"
        if from_asyncio:
            return f"said {row['kind']}, but Loop's method is asyncio's own"
        if row["kind"] == "Rust":
            # A method of the extension type: PyO3's, or fastcall.rs's descriptor.
            if inspect.isfunction(found) or name not in vars(_ferroloop.LoopCore):
                return "said Rust, but LoopCore does not define it"
        elif not (inspect.isfunction(found) and found.__module__.startswith("ferroloop.")):
            return f"said Python, but it comes from {getattr(found, '__module__', found)!r}"

    _check(APPLICABLE, problem)


def test_the_hooks_named_are_ferroloops():
    def problem(row):
        if row["kind"] != "asyncio":
            return "only asyncio rows name hooks" if row["hooks"] else None
        if row["hooks"] and not row["files"]:
            return "hooks named without the files that hold them"
        for hook in row["hooks"]:
            if not hasattr(ferroloop.Loop, hook):
                return f"Loop has no {hook}"
            if getattr(ferroloop.Loop, hook) is getattr(ASYNCIO_LOOP, hook, None):
                return f"{hook} is asyncio's own, not ferroloop's"

    _check(APPLICABLE, problem)


def test_the_files_named_hold_the_method_or_hook():
    def problem(row):
        files = [ROOT / f for f in row["files"] if (ROOT / f).is_file()]
        if not files:
            return None
        text = "\n".join(f.read_text(encoding="utf-8") for f in files)
        wanted = row["hooks"] if row["kind"] == "asyncio" else [row["name"]]
        patterns = {
            "Python": r"\bdef {}\(",
            "Rust": r'\bfn {0}\b|"{0}"',
            "asyncio": r"\b{}\b",
        }
        absent = [n for n in wanted if not re.search(patterns[row["kind"]].format(n), text)]
        if absent:
            return f"{absent} not found in {row['files']}"

    _check(ROWS, problem)
