#!/usr/bin/env python3
"""Run uvloop's test suite on ferroloop and on asyncio, and fail on any regression.

uvloop 0.23.0 ships a test suite whose ``AIOTestCase`` classes check asyncio's own loop.
This script runs those classes twice with the interpreter under test: once on
``asyncio:new_event_loop`` (the baseline) and once on the loop under test (default
``ferroloop:new_event_loop``).  A *regression* is a test that passed on asyncio and did not
pass on the loop under test (failed, error, crash, timeout, skipped or never ran), or an
error in a class or module fixture that asyncio did not have.  Tests that do not pass on
asyncio are not counted either way.

It needs nothing beside the repository and PyPI:

* The suite is the ``tests/`` folder of uvloop's sdist, fetched with the stdlib from PyPI's
  JSON API, checked against its sha256 (PyPI's and the one pinned here) and extracted once
  into ``${XDG_CACHE_HOME:-~/.cache}/ferroloop/uvloop-0.23.0-tests`` (``--cache DIR``).
* ``scripts/conformance_child.py`` runs one module in one subprocess of the interpreter under
  test, points the suite's ``AIOTestCase`` at the loop (its docstring says how) and streams
  per-test outcomes.  A test that hangs past ``--test-timeout`` is killed (``timeout``); a
  process that dies (``crash``) is restarted on the module's remaining tests.
* ``--jobs`` modules run at a time, the baseline's and the candidate's in one queue.

Exit status: 0 without regressions, 1 with at least one, 3 when the loop under test is not
importable (then every asyncio-passing test counts as failed), 2 on a usage or harness
error.  The last line printed is ``N passed, M failed`` (N = asyncio-passing tests that also
pass on the loop under test, M = regressions).

    python scripts/conformance.py                              # default modules
    python scripts/conformance.py --modules test_base test_dns
    python scripts/conformance.py --baseline-json target/conformance/baseline.json

``--baseline-json FILE`` reuses the asyncio results stored in FILE (e.g. by ``make conformance``
for the runs on other backends): asyncio runs only on the modules that FILE lacks, and their
results are added to it.  A FILE made by another Python minor version or uvloop version is
ignored and rewritten.  A run that runs asyncio leaves its results in
``<work-dir>/baseline.json`` too, and the candidate's in ``<work-dir>/candidate.json``.

The interpreter given by ``--python`` (default ``.venv/bin/python``, set up by ``make venv``
and ``make dev``) must import uvloop==0.23.0, pyOpenSSL, psutil, aiohttp and the loop under
test.  ``FERROLOOP_BACKEND`` and every other environment variable pass through to the tests.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "conformance_child.py"
UVLOOP_VERSION = "0.23.0"
SDIST = f"uvloop-{UVLOOP_VERSION}.tar.gz"
SDIST_SHA256 = "28d160f51ab4da3b187063652e643dea6831072add4adc1e6d62afbe73b6be27"
PYPI_JSON = [  # the release's own page, then the project's (some mirrors lack the first)
    f"https://pypi.org/pypi/uvloop/{UVLOOP_VERSION}/json",
    "https://pypi.org/pypi/uvloop/json",
]
# Every module of the suite that has an asyncio variant, plus test_runner, which has none
# (it tests uvloop.run) but is named by issue 2.  test_libuv_api, test_cython,
# test_sourcecode, test_fs_event, test_dealloc, test_regr1, test_process_spawning and
# test_testbase test uvloop itself.
DEFAULT_MODULES = [
    "test_base",
    "test_context",
    "test_executors",
    "test_sockets",
    "test_dns",
    "test_runner",
    "test_signals",
    "test_tcp",
    "test_unix",
    "test_udp",
    "test_pipes",
    "test_process",
    "test_aiohttp",
]
# Rough seconds per module and loop (3.11, 2 jobs on 2 cores; 1 for the others): the
# longest start first, so that the workers end together.  Only the order depends on it.
EXPECTED_SECONDS = {
    "test_base": 8,
    "test_tcp": 4,
    "test_signals": 3,
    "test_process": 3,
    "test_context": 2,
    "test_sockets": 2,
    "test_unix": 2,
}
# Modules that must not run at the same time, on whichever loops: both bind UDP
# 127.0.0.1:8888 (test_context's test_datagram_protocol, test_udp's test_create_datagram_1).
EXCLUSIVE = {"test_context": "udp-8888", "test_udp": "udp-8888"}
BASELINE_LOOP = "asyncio:new_event_loop"
FORMAT = "ferroloop-conformance/1"
EXIT_REGRESSIONS, EXIT_HARNESS, EXIT_NOT_IMPORTABLE = 1, 2, 3
PASSED = "passed"

LIVE: set[subprocess.Popen] = set()  # the running children, killed if we are interrupted
LIVE_LOCK = threading.Lock()
STOP = threading.Event()  # set when interrupted: start no more children


class HarnessError(Exception):
    """Something other than the tests went wrong: exit status 2."""


def log(msg: str) -> None:
    print(f"[conformance] {msg}", flush=True)


# ----------------------------------------------------------------------------------------
# The suite: uvloop's sdist from PyPI, only its tests/ kept


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ferroloop"


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as resp:
        return resp.read()


def sdist_location() -> tuple[str, str]:
    """(url, sha256) of the sdist, as PyPI's JSON API gives them."""
    for i, meta_url in enumerate(PYPI_JSON):
        try:
            meta = json.loads(fetch(meta_url))
        except urllib.error.HTTPError as e:
            if e.code == 404 and i + 1 < len(PYPI_JSON):
                continue
            raise
        files = meta["urls"] if i == 0 else meta["releases"].get(UVLOOP_VERSION, [])
        for f in files:
            if f.get("packagetype") == "sdist" and f.get("filename") == SDIST:
                return urllib.parse.urljoin(meta_url, f["url"]), f["digests"]["sha256"]
        raise HarnessError(f"{meta_url} lists no {SDIST}")
    raise AssertionError("unreachable")


def download_sdist() -> bytes:
    url, sha256 = sdist_location()
    if sha256 != SDIST_SHA256:
        raise HarnessError(f"PyPI gives sha256 {sha256} for {SDIST}, not {SDIST_SHA256}")
    log(f"downloading {url}")
    data = fetch(url)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise HarnessError(f"{url}: sha256 mismatch, the download is corrupt")
    return data


def extract_tests(data: bytes, dest: Path) -> None:
    """Write the sdist's ``tests/`` (and nothing else, not uvloop/) into ``dest/tests``."""
    prefix = f"uvloop-{UVLOOP_VERSION}/"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            rel = member.name[len(prefix) :] if member.name.startswith(prefix) else ""
            parts = Path(rel).parts
            if not parts or parts[0] != "tests" or ".." in parts or not member.isfile():
                continue
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())


def ensure_suite(cache: Path) -> Path:
    """The folder that holds uvloop's ``tests/``; downloaded and extracted on first use.

    The extraction goes to a temporary folder beside it and is renamed into place at the end,
    so an interrupted or concurrent run never leaves a half-extracted suite behind.
    """
    suite = cache / f"uvloop-{UVLOOP_VERSION}-tests"
    stamp = suite / "SHA256"
    if stamp.is_file() and stamp.read_text().strip() == SDIST_SHA256:
        return suite
    cache.mkdir(parents=True, exist_ok=True)
    data = download_sdist()
    tmp = Path(tempfile.mkdtemp(prefix=f".{suite.name}.", dir=cache))
    try:
        extract_tests(data, tmp)
        if not (tmp / "tests" / "__init__.py").is_file():
            raise HarnessError(f"{SDIST} has no tests/__init__.py")
        (tmp / "SHA256").write_text(SDIST_SHA256 + "\n")
        if suite.exists():
            shutil.rmtree(suite)  # an older or broken copy
        try:
            os.rename(tmp, suite)
        except OSError:
            if not stamp.is_file():  # not another run that got there first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"uvloop {UVLOOP_VERSION}'s tests/ extracted into {suite}")
    return suite


# ----------------------------------------------------------------------------------------
# Running one module on one loop


@dataclass
class Job:
    """One module on one loop; ``role`` is "baseline" or "candidate"."""

    role: str
    loop: str
    module: str


@dataclass
class ModuleResult:
    tests: dict[str, dict] = field(default_factory=dict)  # id -> {"outcome", "reason"}
    fixtures: dict[str, dict] = field(default_factory=dict)  # errors outside any test
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class Attempt:
    """What one child process reported."""

    collected: list[str] | None = None
    ended: dict[str, dict] = field(default_factory=dict)
    fixtures: dict[str, dict] = field(default_factory=dict)
    running: str | None = None
    finished: bool = False


def read_events(path: Path) -> Attempt:
    att = Attempt()
    if not path.exists():
        return att
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        kind = ev.get("event")
        if kind == "collected":
            att.collected = ev["ids"]
        elif kind == "start":
            att.running = ev["id"]
        elif kind == "end":
            rec = {"outcome": ev["outcome"], "reason": ev.get("reason", "")}
            (att.fixtures if ev.get("fixture") else att.ended)[ev["id"]] = rec
            if att.running == ev["id"]:
                att.running = None
        elif kind == "finished":
            att.finished = True
    return att


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_child(cmd: list[str], cwd: Path, log_path: Path, limit: float) -> tuple[int, bool]:
    """Run the child in its own process group; (exit status, killed at ``limit``)."""
    with open(log_path, "w") as log_file, LIVE_LOCK:
        if STOP.is_set():
            raise HarnessError("interrupted")
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        LIVE.add(proc)
    try:
        rc, killed = proc.wait(timeout=max(limit, 0.1)), False
    except subprocess.TimeoutExpired:
        kill_group(proc)
        rc, killed = proc.wait(), True
    finally:
        kill_group(proc)  # whatever the tests left behind in the group
        with LIVE_LOCK:
            LIVE.discard(proc)
    return rc, killed


def why_it_died(rc: int, killed: bool, timeout_file: Path, log_path: Path) -> tuple[str, str]:
    """(outcome, one-line reason) for a child that did not finish."""
    if killed:
        return "timeout", "total time budget (--total-timeout) exhausted"
    if timeout_file.exists() and "Timeout (" in timeout_file.read_text(errors="replace"):
        return "timeout", f"no progress for --test-timeout seconds; stacks in {timeout_file}"
    try:
        status = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
    except ValueError:
        status = f"signal {-rc}"
    fatal = [ln for ln in log_path.read_text(errors="replace").splitlines() if "Fatal" in ln]
    return "crash", f"process died ({status}{', ' + fatal[0] if fatal else ''}); log {log_path}"


def run_attempt(job: Job, opts, out: Path, n: int, skip, deadline: float) -> tuple:
    """Start the child on the module's tests not in ``skip``: (Attempt, None or why it died)."""
    results, timeout_file, log_path = (
        out / f"{stem}.{n}.{ext}"
        for stem, ext in (("results", "jsonl"), ("timeout", "txt"), ("log", "txt"))
    )
    cmd = [opts.python, str(CHILD), "--loop", job.loop, "--suite", str(opts.suite)]
    cmd += ["--module", job.module, "--results", str(results), "--timeout-file", str(timeout_file)]
    cmd += ["--test-timeout", str(opts.test_timeout), "--skip", *skip]
    rc, killed = run_child(cmd, out, log_path, deadline - time.monotonic())
    att = read_events(results)
    if att.finished and rc == 0:
        return att, None
    return att, why_it_died(rc, killed, timeout_file, log_path)


def run_module(job: Job, opts: argparse.Namespace, deadline: float) -> ModuleResult:
    """Run one module, restarting it on its remaining tests after a crash or a timeout.

    Tests that never ran get the outcome of the last death (crash or timeout) when the
    module stopped making progress, ran out of time or restarts; "error" when the module
    finished without them (a class or module fixture failed).
    """
    out = opts.work_dir / job.role / job.module
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    res = ModuleResult()
    t0 = time.monotonic()
    collected: list[str] | None = None
    death = None
    for n in range(1, opts.max_restarts + 2):
        att, death = run_attempt(job, opts, out, n, list(res.tests), deadline)
        collected = collected if collected is not None else att.collected
        res.tests.update(att.ended)
        res.fixtures.update(att.fixtures)
        if death is None:
            break
        res.notes.append(f"attempt {n}: {death[0]} in {att.running or 'no test'}: {death[1]}")
        if att.running:
            res.tests[att.running] = {"outcome": death[0], "reason": death[1]}
        elif not att.ended or time.monotonic() >= deadline:
            break  # no progress, or out of time: restarting would not help
    else:
        death = (death[0], f"gave up after {opts.max_restarts} restarts; last: {death[1]}")
    fixture_error = next((f["reason"] for f in res.fixtures.values()), "")
    never_ran = death or ("error", f"never ran: {fixture_error or 'not reported'}")
    for tid in collected or []:
        res.tests.setdefault(tid, {"outcome": never_ran[0], "reason": never_ran[1]})
    if collected is None and not res.fixtures:
        res.fixtures[f"tests.{job.module}"] = {"outcome": never_ran[0], "reason": never_ran[1]}
    res.seconds = round(time.monotonic() - t0, 1)
    return res


def summary_line(res: ModuleResult) -> str:
    counts = count_outcomes(res)
    text = ", ".join(f"{n} {o}" for o, n in counts.items()) or "no tests"
    return text + (f", {len(res.fixtures)} fixture error(s)" if res.fixtures else "")


def count_outcomes(res: ModuleResult) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rec in res.tests.values():
        counts[rec["outcome"]] = counts.get(rec["outcome"], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: kv[0] != PASSED))


# ----------------------------------------------------------------------------------------
# Running many: --jobs workers on one queue


def run_jobs(jobs: list[Job], opts: argparse.Namespace) -> dict[tuple[str, str], ModuleResult]:
    """Run the jobs, longest first, ``opts.jobs`` at a time, never two EXCLUSIVE at once."""
    pending = sorted(jobs, key=lambda j: -EXPECTED_SECONDS.get(j.module, 1))
    busy: set[str] = set()
    cond = threading.Condition()
    results: dict[tuple[str, str], ModuleResult] = {}
    errors: list[BaseException] = []
    deadline = time.monotonic() + opts.total_timeout

    def take() -> Job | None:
        with cond:
            while pending and not STOP.is_set():
                for i, job in enumerate(pending):
                    group = EXCLUSIVE.get(job.module)
                    if group not in busy:  # None never is
                        if group:
                            busy.add(group)
                        return pending.pop(i)
                cond.wait()
            return None

    def worker() -> None:
        while (job := take()) is not None:
            try:
                res = results[job.role, job.module] = run_module(job, opts, deadline)
                log(f"{job.role} {job.module}: {summary_line(res)} ({res.seconds:.1f}s)")
            except BaseException as e:
                errors.append(e)
            finally:
                with cond:
                    busy.discard(EXCLUSIVE.get(job.module))
                    cond.notify_all()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, opts.jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise HarnessError(f"the runner failed: {errors[0]!r}") from errors[0]
    return results


# ----------------------------------------------------------------------------------------
# The interpreter, the baseline file and the report


def probe(python: str, loop: str) -> tuple[int, dict]:
    """Ask the interpreter under test for its versions and whether it can make ``loop``."""
    try:
        r = subprocess.run(
            [python, str(CHILD), "--probe", "--loop", loop],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HarnessError(f"cannot run {python}: {e}") from e
    lines = r.stdout.strip().splitlines()
    try:
        return r.returncode, json.loads(lines[-1])
    except (IndexError, ValueError):
        raise HarnessError(f"{python} {CHILD.name} --probe failed: {r.stderr.strip()}") from None


def load_baseline(path: Path, info: dict) -> dict[str, ModuleResult]:
    """The modules of a stored asyncio run; none when it is missing or from another setup."""
    if not path.exists():
        log(f"baseline: {path} does not exist yet")
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise HarnessError(f"--baseline-json {path}: not JSON ({e})") from e
    mine = (FORMAT, info["python"].rsplit(".", 1)[0], info["uvloop"])
    theirs = tuple(data.get(k) for k in ("format", "python_version", "uvloop"))
    theirs = (theirs[0], str(theirs[1]).rsplit(".", 1)[0], theirs[2])
    if theirs != mine:
        log(f"baseline: {path} is from {theirs}, not {mine}: not reused")
        return {}
    return {m: ModuleResult(**r) for m, r in data["modules"].items()}


def save_run(path: Path, results: dict[str, ModuleResult], loop: str, info: dict) -> None:
    data = {
        "format": FORMAT,
        "loop": loop,
        "python_version": info["python"],
        "uvloop": info["uvloop"],
        "backend": os.environ.get("FERROLOOP_BACKEND"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "modules": {m: vars(r) for m, r in results.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


@dataclass
class Regression:
    test: str
    outcome: str
    reason: str
    fixture: bool = False  # an error outside any test, that asyncio did not have


def regressions_of(base: ModuleResult, cand: ModuleResult | None, why_missing: str) -> list:
    """What passed (or had no fixture error) on asyncio and not on the loop under test."""
    found = []
    cand = cand or ModuleResult()
    missing = why_missing or next((f["reason"] for f in cand.fixtures.values()), "never ran")
    for tid in sorted(t for t, r in base.tests.items() if r["outcome"] == PASSED):
        got = cand.tests.get(tid, {"outcome": "missing", "reason": missing})
        if got["outcome"] != PASSED:
            found.append(Regression(tid, got["outcome"], got["reason"]))
    for fid, got in sorted(cand.fixtures.items()):
        if fid not in base.fixtures:
            found.append(Regression(fid, got["outcome"], got["reason"], fixture=True))
    return found


def passed(res: ModuleResult | None) -> int:
    return sum(r["outcome"] == PASSED for r in res.tests.values()) if res else 0


def compare(base: dict, cand: dict | None, modules: list[str], why_not: str) -> tuple:
    """Per-module rows (module, asyncio passed, loop passed, regressions) and the regressions."""
    rows, regs = [], []
    for m in modules:
        found = regressions_of(base[m], cand.get(m) if cand else None, why_not)
        rows.append((m, passed(base[m]), passed(cand.get(m) if cand else None), len(found)))
        regs += found
    return rows, regs


def print_table(rows: list[tuple], loop: str) -> None:
    heads = ("module", "asyncio passed", f"{loop.split(':')[0]} passed", "regressions")
    total = ("TOTAL", *(sum(r[i] for r in rows) for i in (1, 2, 3)))
    widths = [max(len(str(r[i])) for r in (heads, *rows, total)) for i in range(4)]

    def fmt(r: tuple) -> str:
        cells = (f"{r[i]:<{w}}" if i == 0 else f"{r[i]:>{w}}" for i, w in enumerate(widths))
        return " | ".join(cells)

    rule = "-+-".join("-" * w for w in widths)
    print("\n" + "\n".join([fmt(heads), rule, *map(fmt, rows), rule, fmt(total)]) + "\n")


def print_regressions(regs: list[Regression], loop: str, why_not: str) -> None:
    if why_not:
        print(f"{loop} is not importable ({why_not}): every test that passes on asyncio fails")
    elif regs:
        print(f"{len(regs)} regression(s): passed on {BASELINE_LOOP}, not on {loop}:")
        for r in regs:
            print(f"  {r.test}: {r.outcome}: {r.reason}")
    else:
        print(f"no regressions: every test that passed on {BASELINE_LOOP} passed on {loop}")


def write_summary(path: Path, opts, info: dict, base: dict, cand: dict | None, score) -> None:
    """The --json file: versions, per-module outcome counts of both runs, the regressions."""
    rows, regs, n_passed, code, seconds = score
    data = {
        "format": FORMAT,
        "python": opts.python,
        "python_version": info["python"],
        "uvloop": info["uvloop"],
        "backend": os.environ.get("FERROLOOP_BACKEND"),
        "baseline_loop": BASELINE_LOOP,
        "loop": opts.loop,
        "loop_type": info.get("loop_type"),
        "exit_status": code,
        "seconds": round(seconds, 1),
        "passed": n_passed,
        "failed": len(regs),
        "modules": {
            m: {
                "baseline": count_outcomes(base[m]),
                "candidate": count_outcomes(cand[m]) if cand else {},
                "regressions": n,
            }
            for m, _, _, n in rows
        },
        "regressions": [vars(r) for r in regs],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


# ----------------------------------------------------------------------------------------
# Command line


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("modules_pos", nargs="*", metavar="MODULE", help="same as --modules")
    ap.add_argument(
        "--modules", nargs="+", help=f"uvloop test modules (default: {' '.join(DEFAULT_MODULES)})"
    )
    ap.add_argument("--loop", default="ferroloop:new_event_loop", help="loop under test")
    ap.add_argument(
        "--python",
        default=str(ROOT / ".venv" / "bin" / "python"),
        help="interpreter that runs the tests (default: .venv/bin/python)",
    )
    ap.add_argument(
        "--baseline-json",
        type=Path,
        help="reuse the asyncio results in this file; asyncio runs (and is added) only for "
        "the modules it lacks",
    )
    ap.add_argument("--json", type=Path, help="write a summary of the comparison here")
    ap.add_argument(
        "--cache",
        type=Path,
        default=default_cache(),
        help="where uvloop's tests/ is kept (default: ${XDG_CACHE_HOME:-~/.cache}/ferroloop)",
    )
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=ROOT / "target" / "conformance",
        help="per-test results, logs and baseline.json (default: target/conformance)",
    )
    ap.add_argument("-j", "--jobs", type=int, default=2, help="modules run at a time (default 2)")
    ap.add_argument(
        "--test-timeout", type=float, default=30, help="per-test watchdog, seconds (default 30)"
    )
    ap.add_argument(
        "--total-timeout",
        type=float,
        default=900,
        help="budget of the whole run, seconds (default 900)",
    )
    ap.add_argument(
        "--max-restarts",
        type=int,
        default=20,
        help="restarts of a module after crashes (default 20)",
    )
    opts = ap.parse_args()
    opts.modules = opts.modules or opts.modules_pos or DEFAULT_MODULES
    # Absolute but not resolved: a venv's python is a symlink that must stay one.
    opts.python = os.path.abspath(opts.python)
    opts.work_dir = opts.work_dir.resolve()
    return opts


def check_interpreter(opts: argparse.Namespace) -> tuple[dict, str]:
    """Versions of the interpreter under test, and why the loop is not usable ("" if it is)."""
    if not os.path.exists(opts.python):
        raise HarnessError(f"interpreter {opts.python} not found: run `make venv dev` first")
    rc, info = probe(opts.python, BASELINE_LOOP)
    if rc != 0:
        need = f"pip install uvloop=={UVLOOP_VERSION} pyOpenSSL psutil aiohttp"
        raise HarnessError(f"{opts.python}: {info.get('error')} (it needs `{need}`)")
    if info["uvloop"] != UVLOOP_VERSION:
        log(f"warning: {opts.python} has uvloop {info['uvloop']}, not {UVLOOP_VERSION}")
    rc, cand = probe(opts.python, opts.loop)
    if rc not in (0, EXIT_NOT_IMPORTABLE):
        raise HarnessError(f"{opts.python} --probe {opts.loop}: {cand.get('error')}")
    info["loop_type"] = cand.get("loop_type")
    return info, cand.get("error", "") if rc else ""


def check_modules(opts: argparse.Namespace) -> None:
    unknown = [m for m in opts.modules if not (opts.suite / "tests" / f"{m}.py").is_file()]
    if unknown:
        raise HarnessError(f"no such module in uvloop's tests/: {' '.join(unknown)}")


def run(opts: argparse.Namespace) -> int:
    t0 = time.monotonic()
    info, why_not = check_interpreter(opts)
    backend = os.environ.get("FERROLOOP_BACKEND")
    log(
        f"{opts.loop} ({info['loop_type'] or 'not importable'}) vs {BASELINE_LOOP} on Python "
        f"{info['python']}" + (f", FERROLOOP_BACKEND={backend}" if backend else "")
    )
    opts.suite = ensure_suite(opts.cache.expanduser().resolve())
    check_modules(opts)
    stored = load_baseline(opts.baseline_json, info) if opts.baseline_json else {}
    base = {m: stored[m] for m in opts.modules if m in stored}
    if base:
        rest = " ".join(m for m in opts.modules if m not in base) or "none"
        log(f"baseline: reusing {opts.baseline_json} for {len(base)} modules; to run: {rest}")
    jobs = [Job("baseline", BASELINE_LOOP, m) for m in opts.modules if m not in base]
    if not why_not:
        jobs += [Job("candidate", opts.loop, m) for m in opts.modules]
    results = run_jobs(jobs, opts)
    fresh = {m: r for (role, m), r in results.items() if role == "baseline"}
    if fresh:
        base.update(fresh)
        save_run(opts.work_dir / "baseline.json", base, BASELINE_LOOP, info)
        if opts.baseline_json:
            save_run(opts.baseline_json, {**stored, **fresh}, BASELINE_LOOP, info)
    cand = None if why_not else {m: results["candidate", m] for m in opts.modules}
    if cand:
        save_run(opts.work_dir / "candidate.json", cand, opts.loop, info)
    seconds = time.monotonic() - t0
    log(f"done in {seconds:.0f}s; per-test results and logs in {opts.work_dir}")

    rows, regs = compare(base, cand, opts.modules, why_not)
    print_table(rows, opts.loop)
    print_regressions(regs, opts.loop, why_not)
    n_passed = sum(r[1] for r in rows) - sum(not r.fixture for r in regs)
    code = EXIT_NOT_IMPORTABLE if why_not else EXIT_REGRESSIONS if regs else 0
    if opts.json:
        write_summary(opts.json, opts, info, base, cand, (rows, regs, n_passed, code, seconds))
    print(f"{n_passed} passed, {len(regs)} failed")
    return code


def main() -> int:
    opts = parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    try:
        return run(opts)
    except HarnessError as e:
        print(f"conformance.py: error: {e}", file=sys.stderr, flush=True)
        return EXIT_HARNESS
    except (OSError, urllib.error.URLError) as e:
        print(f"conformance.py: error: {e!r}", file=sys.stderr, flush=True)
        return EXIT_HARNESS
    except KeyboardInterrupt:
        with LIVE_LOCK:
            STOP.set()
            for proc in LIVE:
                kill_group(proc)
        print("conformance.py: interrupted", file=sys.stderr, flush=True)
        return 130


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM too must stop the children (they have their own sessions)


if __name__ == "__main__":
    sys.exit(main())
