#!/usr/bin/env python3
"""Run uvloop's test suite on ferroloop and on asyncio, and fail on any regression.

Drives the shared conformance harness (``../shared/conformance/run.py``, see its README) twice
with the same interpreter: once with ``asyncio:new_event_loop`` (the baseline) and once with
the loop under test (default ``ferroloop:new_event_loop``).  A *regression* is a test id that
passed on asyncio and did not pass on the loop under test (failed, error, crash, timeout,
skipped or never run).  Tests that do not pass on asyncio are not counted either way.

Exit status: 0 without regressions, 1 with at least one, 3 when the harness reports that
the loop under test is not importable, 2 on a usage or harness error.  The last line printed
is ``N passed, M failed`` (N = asyncio-passing tests that also pass on the loop under test,
M = regressions).

    python scripts/conformance.py                              # default modules
    python scripts/conformance.py --modules test_base test_dns
    python scripts/conformance.py --baseline-json target/conformance/baseline.json

The interpreter given by ``--python`` (default ``.venv/bin/python``, set up by ``make venv``
and ``make dev``) must import uvloop, pyOpenSSL, psutil, aiohttp and the loop under test.
``FERROLOOP_BACKEND`` and every other environment variable pass through to the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HARNESS = ROOT.parent / "shared" / "conformance" / "run.py"
# Every module of the suite that has an asyncio variant (issue 2's, then the transports',
# pipes' and subprocesses'), plus test_runner, which has none but is named by issue 2.
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
BASELINE_LOOP = "asyncio:new_event_loop"
SUITE = "uvloop"
UVLOOP_VERSION = "0.23.0"  # the harness's suite version
EXIT_NOT_IMPORTABLE = 3


def log(msg: str) -> None:
    print(f"[conformance.py] {msg}", flush=True)


def fail(msg: str, code: int = 2) -> None:
    print(f"conformance.py: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def harness_cache() -> Path:
    """The harness's default cache dir (its README: "Where it writes")."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ferroloop-tools" / "conformance"


def prefetch_suite(python: str) -> None:
    """Put uvloop's sdist where the harness looks for it, if its suite is not set up yet.

    The harness fetches it with ``pip download --no-binary :all:``, which also builds pip's
    isolated build environment (Cython, setuptools) from source: about 3 minutes on 2 cores.
    ``--no-binary uvloop`` fetches the same file with wheels for the build tools in seconds.
    """
    cache = harness_cache()
    if (cache / f"uvloop-{UVLOOP_VERSION}-tests" / "tests" / "__init__.py").exists():
        return
    dl = cache / "dl"
    if (dl / f"uvloop-{UVLOOP_VERSION}.tar.gz").exists():
        return
    dl.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "uvloop"]
    cmd += [f"uvloop=={UVLOOP_VERSION}", "-d", str(dl)]
    log("$ " + " ".join(cmd))
    if subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode != 0:
        log("prefetch failed; the harness will download the suite itself")


def run_harness(args: argparse.Namespace, loop: str, modules: list[str], label: str) -> dict:
    """Run the harness for one loop; return its summary with per-test outcomes added."""
    out_dir = args.work_dir / label
    json_path = args.work_dir / f"{label}.json"
    json_path.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(args.harness),
        "--loop",
        loop,
        "--python",
        args.python,
        "--no-setup",
        "--modules",
        *modules,
        "-j",
        str(args.jobs),
        "--test-timeout",
        str(args.test_timeout),
        "--total-timeout",
        str(args.total_timeout),
        "--json",
        str(json_path),
        "--out",
        str(out_dir),
    ]
    log("$ " + " ".join(cmd))
    t0 = time.monotonic()
    rc = subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode
    log(f"{loop}: harness exited {rc} after {time.monotonic() - t0:.0f}s")
    if rc not in (0, EXIT_NOT_IMPORTABLE) or not json_path.exists():
        fail(f"the harness failed for {loop} (exit {rc}, no summary at {json_path})")
    summary = json.loads(json_path.read_text())
    if summary.get("status") != "not_importable":
        summary["tests"] = collect_tests(summary)
        # Rewrite the summary with per-test outcomes so that it can serve as --baseline-json.
        json_path.write_text(json.dumps(summary, indent=1))
    log(f"{loop}: summary in {json_path}")
    return summary


def collect_tests(summary: dict) -> dict[str, dict[str, dict]]:
    """Per-test outcomes {module: {test_id: {"outcome", "reason"}}} of one harness run.

    The harness summary lists only failing tests; passes and skips are in the raw
    ``<work_dir>/uvloop/<module>/results.jsonl`` event stream.  Crashes and timeouts (which
    the child never reports itself) are taken from the summary's ``failing`` entries, and
    collected tests that never ended are ``not_run``, as the harness counts them.
    """
    work = Path(summary["work_dir"])
    tests: dict[str, dict[str, dict]] = {}
    for module, info in summary["suites"][SUITE]["modules"].items():
        per: dict[str, dict] = {}
        collected: list[str] = []
        results = work / SUITE / module / "results.jsonl"
        if results.exists():
            for line in results.read_text(errors="replace").splitlines():
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue  # torn last line after a kill
                if ev.get("event") == "collected" and not collected:
                    collected = list(ev.get("ids") or [])
                elif ev.get("event") == "end":
                    detail = (ev.get("detail") or "").strip().splitlines()
                    per[ev["id"]] = {
                        "outcome": ev.get("outcome"),
                        "reason": detail[-1][:300] if detail else "",
                    }
        for tid, bad in (info.get("failing") or {}).items():
            per[tid] = {"outcome": bad["outcome"], "reason": bad.get("reason", "")}
        for tid in collected:
            per.setdefault(tid, {"outcome": "not_run", "reason": "never ran"})
        if not results.exists() and info.get("status") != "ok":
            per[f"{module}::<module>"] = {
                "outcome": info.get("status") or "error",
                "reason": str(info.get("error") or "module did not run"),
            }
        tests[module] = per
    return tests


def load_baseline(path: Path, modules: list[str]) -> dict:
    if not path.exists():
        fail(f"--baseline-json {path}: no such file")
    summary = json.loads(path.read_text())
    if summary.get("status") == "not_importable":
        fail(f"--baseline-json {path}: that run's loop was not importable")
    if summary.get("loop") != BASELINE_LOOP:
        log(f"note: baseline {path} is a run of {summary.get('loop')}, not {BASELINE_LOOP}")
    if "tests" not in summary:
        try:
            summary["tests"] = collect_tests(summary)
        except (KeyError, OSError) as e:
            fail(f"--baseline-json {path}: cannot read per-test results ({e})")
    missing = [m for m in modules if m not in summary["tests"]]
    if missing:
        fail(f"--baseline-json {path} has no results for {' '.join(missing)}")
    log(f"baseline: reusing {path} ({summary.get('loop')}, {summary.get('started')})")
    return summary


def compare(
    base: dict, cand: dict | None, modules: list[str], loop: str, cand_error: str = ""
) -> tuple[int, int]:
    """Print the comparison table and the regressions; return (passed, regressions).

    ``cand`` is None when the loop under test was not importable (``cand_error`` says why):
    then every asyncio-passing test is a regression.
    """
    rows = []
    regressions: list[tuple[str, str, str]] = []
    new_passes = 0
    for m in modules:
        b = base["tests"].get(m, {})
        c = cand["tests"].get(m, {}) if cand else {}
        b_pass = {t for t, r in b.items() if r["outcome"] == "passed"}
        c_pass = {t for t, r in c.items() if r["outcome"] == "passed"}
        new_passes += len(c_pass - b_pass)
        reg = sorted(b_pass - c_pass)
        for t in reg:
            r = c.get(t)
            if r is None:
                outcome, why = "missing", "not collected"
            else:
                outcome, why = r["outcome"], r.get("reason") or ""
            regressions.append((t, outcome, why))
        rows.append((m, len(b_pass), len(c_pass), len(reg)))

    name = loop.split(":", 1)[0]
    heads = ("module", f"{BASELINE_LOOP.split(':')[0]} passed", f"{name} passed", "regressions")
    tot = ("TOTAL", *(sum(r[i] for r in rows) for i in (1, 2, 3)))
    w = [max(len(str(r[i])) for r in (heads, *rows, tot)) for i in range(4)]

    def fmt(r: tuple) -> str:
        return " | ".join(f"{r[i]:<{w[i]}}" if i == 0 else f"{r[i]:>{w[i]}}" for i in range(4))

    rule = "-+-".join("-" * n for n in w)
    print()
    print(fmt(heads))
    print(rule)
    for r in rows:
        print(fmt(r))
    print(rule)
    print(fmt(tot))
    print()
    if cand is None:
        print(f"{loop} is not importable ({cand_error}):")
        print(f"all {len(regressions)} tests that pass on {BASELINE_LOOP} count as failed")
    elif regressions:
        print(f"{len(regressions)} regression(s): passed on {BASELINE_LOOP}, not on {loop}:")
        for t, outcome, why in regressions:
            print(f"  {t}: {outcome}: {why}")
        hard = sorted({t.split(".")[1] for t, o, _ in regressions if o in ("crash", "timeout")})
        for m in hard:
            print(f"  (tracebacks of the {m} crashes/timeouts: {cand['work_dir']}/{SUITE}/{m}/)")
    else:
        print(f"no regressions: every test that passed on {BASELINE_LOOP} passed on {loop}")
    if new_passes:
        print(f"({new_passes} test(s) pass on {loop} but not on {BASELINE_LOOP})")
    baseline_total = tot[1]
    return baseline_total - len(regressions), len(regressions)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "modules_pos", nargs="*", metavar="MODULE", help="test modules (same as --modules)"
    )
    ap.add_argument(
        "--modules", nargs="+", help=f"uvloop test modules (default: {' '.join(DEFAULT_MODULES)})"
    )
    ap.add_argument("--loop", default="ferroloop:new_event_loop", help="loop under test")
    ap.add_argument(
        "--baseline-json",
        type=Path,
        help="reuse this asyncio run (a summary written by an earlier run of this script, "
        "e.g. target/conformance/baseline.json) instead of running asyncio",
    )
    ap.add_argument(
        "--python",
        default=str(ROOT / ".venv" / "bin" / "python"),
        help="interpreter that runs the tests (default: .venv/bin/python)",
    )
    ap.add_argument("--harness", type=Path, default=DEFAULT_HARNESS, help="path of run.py")
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=ROOT / "target" / "conformance",
        help="where the summaries and raw results go (default: target/conformance)",
    )
    ap.add_argument("-j", "--jobs", type=int, default=2, help="modules run in parallel")
    ap.add_argument("--test-timeout", type=float, default=30, help="per-test watchdog (s)")
    ap.add_argument(
        "--total-timeout", type=float, default=900, help="time budget of one harness run (s)"
    )
    args = ap.parse_args()
    modules = args.modules or args.modules_pos or DEFAULT_MODULES

    if not args.harness.is_file():
        fail(
            f"conformance harness not found at {args.harness}: it is expected in shared/ "
            "beside the repository (../shared/conformance/run.py); pass --harness PATH"
        )
    # Absolute but not resolved: a venv's python is a symlink that must stay one.  The
    # harness runs its children from their own folders, so a relative path would break.
    args.python = os.path.abspath(args.python)
    if not Path(args.python).exists():
        fail(f"interpreter {args.python} not found: run `make venv dev` first")
    args.work_dir = args.work_dir.resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    backend = os.environ.get("FERROLOOP_BACKEND")
    log(
        f"loop {args.loop} vs {BASELINE_LOOP}, modules: {' '.join(modules)}"
        + (f", FERROLOOP_BACKEND={backend}" if backend else "")
    )

    prefetch_suite(args.python)
    if args.baseline_json:
        base = load_baseline(args.baseline_json, modules)
    else:
        base = run_harness(args, BASELINE_LOOP, modules, "baseline")
        if base.get("status") == "not_importable":
            fail(f"{BASELINE_LOOP} is not importable by {args.python}: {base.get('error')}")

    cand = run_harness(args, args.loop, modules, "candidate")
    code = 0
    cand_error = ""
    if cand.get("status") == "not_importable":
        cand_error = str(cand.get("error") or "not importable")
        print(f"\nloop {args.loop} is NOT importable: {cand_error}")
        code = EXIT_NOT_IMPORTABLE
        cand = None

    passed, regressed = compare(base, cand, modules, args.loop, cand_error)
    if regressed and code == 0:
        code = 1
    print(f"{passed} passed, {regressed} failed")
    return code


if __name__ == "__main__":
    sys.exit(main())
