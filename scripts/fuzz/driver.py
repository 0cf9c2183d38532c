"""Driver of the differential fuzzer: runs a program on both loops, compares, reduces.

Each program runs in two fresh processes of the same interpreter (``runner.py``), one on
asyncio's selector loop and one on ferroloop, at the same time.  The traces are compared
source by source (see runner.py): the events of one source must be the same, in the same
order; consecutive ``chunk`` events are merged first.  A program whose traces differ is run
again (``retries`` times): it counts as a divergence only when every run differs, so that a
race (a timing that the program does not control) does not count.  A divergence is then
shortened by dropping ops (delta debugging) while it keeps diverging with the same kind.

Divergence kinds: ``order`` (events of a source missing, extra or in another order),
``data`` (received bytes differ), ``exception`` (an exception's class or message differs),
``fds`` (different fds left open at the end), ``hang`` (one loop's process timed out),
``crash`` (one loop's process died or printed no trace).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gen  # noqa: E402

RUNNER = HERE / "runner.py"
LOOPS = ("asyncio", "ferroloop")
KINDS = ("order", "data", "exception", "fds", "hang", "crash")
CHILD_TIMEOUT = 20.0


@dataclass
class Result:
    status: str  # "ok", "hang" or "crash"
    trace: list = field(default_factory=list)
    executed: int = 0
    stderr: str = ""


@dataclass
class Divergence:
    kind: str
    source: str
    asyncio: list
    ferroloop: list

    def describe(self, limit: int = 12) -> str:
        def fmt(events):
            lines = [json.dumps(e) for e in events[:limit]]
            if len(events) > limit:
                lines.append(f"... {len(events) - limit} more")
            return "\n".join("      " + ln for ln in lines) or "      (nothing)"

        return (
            f"  kind {self.kind}, source {self.source!r}\n"
            f"    asyncio:\n{fmt(self.asyncio)}\n    ferroloop:\n{fmt(self.ferroloop)}"
        )


def run_child(python: str, loop: str, backend: str, ops_file: str) -> subprocess.Popen:
    env = dict(os.environ, FERROLOOP_BACKEND=backend, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.Popen(
        [python, str(RUNNER), "--loop", loop, "--backend", backend, "--ops", ops_file],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
        start_new_session=True,
    )


def collect(proc: subprocess.Popen, deadline: float) -> Result:
    try:
        out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, 9)
        except OSError:
            proc.kill()
        out, err = proc.communicate()
        return Result("hang", stderr=err[-2000:])
    for line in out.splitlines():
        if line.startswith("FUZZTRACE "):
            data = json.loads(line[len("FUZZTRACE ") :])
            if proc.returncode == 0:
                return Result("ok", data["trace"], data["executed"], err[-2000:])
    return Result("crash", stderr=f"exit {proc.returncode}\n{err[-2000:]}")


def run_pair(python: str, backend: str, ops: list[dict]) -> dict[str, Result]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="fuzzops-", delete=False) as f:
        json.dump(ops, f)
    try:
        procs = {name: run_child(python, name, backend, f.name) for name in LOOPS}
        deadline = time.monotonic() + CHILD_TIMEOUT
        return {name: collect(p, deadline) for name, p in procs.items()}
    finally:
        os.unlink(f.name)


def by_source(trace: list) -> dict[str, list]:
    out: dict[str, list] = {}
    for src, kind, *vals in trace:
        events = out.setdefault(src, [])
        if kind == "chunk" and events and events[-1][0] == "chunk":
            events[-1] = ["chunk", events[-1][1] + vals[0]]
        else:
            events.append([kind, *vals])
    return out


def _kind_of(src: str, a: list, b: list) -> str:
    if src == "fds":
        return "fds"
    for x, y in zip(a, b, strict=False):
        if x != y:
            kinds = {x[0], y[0]}
            if "exc" in kinds:
                return "exception"
            if kinds & {"data", "chunk"}:
                return "data"
            return "order"
    extra = a[len(b) :] + b[len(a) :]
    if any(e[0] == "exc" for e in extra):
        return "exception"
    return "order"


def compare(results: dict[str, Result]) -> Divergence | None:
    """The first divergence between the two results (None when they agree)."""
    ra, rf = results["asyncio"], results["ferroloop"]
    if ra.status != rf.status:
        bad = rf.status if rf.status != "ok" else ra.status
        return Divergence(bad, "process", [ra.status, ra.stderr], [rf.status, rf.stderr])
    if ra.status != "ok":  # both hung or crashed: nothing to compare (a harness problem)
        return None
    sa, sf = by_source(ra.trace), by_source(rf.trace)
    # the main source first (it is the most telling), then the others in first-seen order
    order = ["main"] + [s for s in dict.fromkeys(list(sa) + list(sf)) if s != "main"]
    for src in order:
        a, b = sa.get(src, []), sf.get(src, [])
        if a != b:
            return Divergence(_kind_of(src, a, b), src, a, b)
    return None


@dataclass
class Outcome:
    divergence: Divergence | None
    executed: int
    flaky: int  # runs that differed before a re-run agreed
    harness: str | None  # both loops hung or crashed
    raced: Divergence | None = None  # the divergence that a re-run did not repeat


def check(python: str, backend: str, ops: list[dict], retries: int = 3) -> Outcome:
    """Run ops on both loops; re-run a divergence up to ``retries`` times before it counts."""
    div = first = None
    executed = 0
    for _ in range(1 + retries):
        results = run_pair(python, backend, ops)
        executed = results["ferroloop"].executed or results["asyncio"].executed
        if results["asyncio"].status != "ok" and results["ferroloop"].status != "ok":
            err = results["asyncio"].status + "\n" + results["asyncio"].stderr
            return Outcome(None, executed, 0, err)
        div = compare(results)
        if div is None:
            return Outcome(None, executed, int(first is not None), None, first)
        first = first or div
    return Outcome(div, executed, 0, None)


def reduce(
    python: str, backend: str, ops: list[dict], kind: str, budget: float = 120.0
) -> list[dict]:
    """Drop ops (ddmin over chunks, then one at a time) while the divergence's kind stays."""
    deadline = time.monotonic() + budget

    def still(candidate: list[dict]) -> bool:
        # one run that diverges the same way is enough to keep the smaller program; a
        # re-run confirms it so that a race does not steer the reduction
        for _ in range(2):
            div = compare(run_pair(python, backend, candidate))
            if div is None or div.kind != kind:
                return False
        return True

    n = 2
    while len(ops) >= 2 and time.monotonic() < deadline:
        size = -(-len(ops) // n)
        chunks = [ops[i : i + size] for i in range(0, len(ops), size)]
        for i in range(len(chunks)):
            candidate = [op for j, c in enumerate(chunks) if j != i for op in c]
            if candidate and still(candidate):
                ops = candidate
                n = max(n - 1, 2)
                break
            if time.monotonic() >= deadline:
                break
        else:
            if n >= len(ops):
                break
            n = min(2 * n, len(ops))
    return ops


def format_program(ops: list[dict]) -> str:
    return "\n".join("    " + json.dumps(op, sort_keys=False) for op in ops)


@dataclass
class Stats:
    backend: str
    programs: int = 0
    operations: int = 0
    flaky: int = 0
    harness: int = 0
    divergences: dict = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    reports: list = field(default_factory=list)
    raced: list = field(default_factory=list)

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in self.divergences.items())
        return (
            f"backend {self.backend}: programs {self.programs}, operations {self.operations}, "
            f"divergences {sum(self.divergences.values())} ({kinds}); "
            f"races re-run away {self.flaky}, harness failures {self.harness}"
        )


def fuzz_one(
    python: str,
    backend: str,
    seed: int,
    stats: Stats,
    shorten: bool = True,
    reduce_budget: float = 120.0,
    out_dir: Path | None = None,
) -> str | None:
    """Run the program of ``seed``; on a divergence return (and keep) its report."""
    ops = gen.generate(seed)
    res = check(python, backend, ops)
    stats.programs += 1
    stats.operations += res.executed
    stats.flaky += res.flaky
    if res.raced is not None:
        stats.raced.append(f"seed {seed}: {res.raced.kind} in {res.raced.source}")
    if res.harness is not None:
        stats.harness += 1
        stats.reports.append(f"seed {seed} ({backend}): both loops failed\n{res.harness}")
        return None
    if res.divergence is None:
        return None
    div = res.divergence
    stats.divergences[div.kind] += 1
    short = reduce(python, backend, ops, div.kind, reduce_budget) if shorten else ops
    final = compare(run_pair(python, backend, short)) or div
    report = (
        f"DIVERGENCE seed {seed} backend {backend} kind {div.kind} "
        f"({len(ops)} ops, shortened to {len(short)}):\n"
        f"{final.describe()}\n  shortened program:\n{format_program(short)}"
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"seed-{seed}-{backend}.json"
        path.write_text(json.dumps(short, indent=1))
        report += f"\n  replay: {python} {RUNNER} --loop ferroloop --backend {backend} --ops {path}"
    stats.reports.append(report)
    return report
