"""Instructions per operation, counted by callgrind: the micro cases in a fresh interpreter under
``valgrind --tool=callgrind``, once for N operations and once for 2N (after one warm-up chunk
each); the difference of the two totals over N is the marginal count per operation, start-up and
shut-down cancelled out. Unlike the wall-clock rows these counts do not move with the machine's
load: the same build and input count the same (``PYTHONHASHSEED`` is fixed so that dict probes
repeat). Only user-space instructions are counted, not the kernel's.

Not in the default run (it takes a few minutes): ``python -m ferroloop.bench --callgrind`` adds
it, ``--only callgrind`` runs it alone. The cases that involve other threads
(``call_soon_threadsafe``, ``run_in_executor``) are left out: their counts depend on how the
threads interleave.
"""

import os
import re
import shutil
import subprocess

from . import micro

TITLE = "callgrind: instructions per operation (fewer is better)"

#: Micro cases whose counts depend on other threads.
SKIP = ("call_soon_threadsafe", "run_in_executor")


def case_name(micro_case):
    return f"{micro_case} (instr/op)"


def check(ctx):
    if shutil.which("valgrind") is None:
        return "valgrind is not installed (apt-get install -y valgrind)"
    return None


def units(ctx):
    return [
        (name, [case_name(name)])
        for name in micro.CASES
        if name not in SKIP and ctx.wanted(case_name(name))
    ]


def _instructions(ctx, loop, case, ops):
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    cmd += [ctx.python, "-m", micro.__name__, "--loop", loop, "--case", case, "--ops", str(ops)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, check=False)
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not found:
        lines = proc.stderr.strip().splitlines()
        return None, lines[-1] if lines else f"exit status {proc.returncode}"
    return int(found.group(1)), None


def run(unit, loop, ctx):
    record = {"case": case_name(unit), "unit": "instr/op", "lower_is_better": True}
    n = micro.CASES[unit][1]
    short, error = _instructions(ctx, loop, unit, n)
    if error is None:
        long, error = _instructions(ctx, loop, unit, 2 * n)
    if error is not None:
        yield {**record, "error": error}
        return
    yield {**record, "value": (long - short) / n}
