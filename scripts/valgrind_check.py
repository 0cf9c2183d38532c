#!/usr/bin/env python3
"""``make valgrind``: scripts/valgrind_smoke.py under valgrind's memcheck, on ferroloop's loop
(each backend given), failing on any error that the same program on asyncio's loop does not show.

CPython itself is not clean under memcheck here (the interpreter's start-up and the seeding of
``random`` read values memcheck calls uninitialised, also for ``python -c pass``), so the program
first runs on asyncio's loop with ``--gen-suppressions=all``; those suppressions, cut to their
innermost frames so that they match the same sites reached through other callers, are applied to
the ferroloop runs. Only the kinds CPython's run produced are suppressed (uninitialised values);
an invalid read or write, a bad free or a mismatched allocation is never suppressed.

    python scripts/valgrind_check.py [backend ...]
"""

import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SMOKE = os.path.join(HERE, "valgrind_smoke.py")
#: Frames kept of each generated suppression (then "..." for any callers).
KEEP_FRAMES = 4
SAFE_KINDS = {"Memcheck:Cond", "Memcheck:Value8", "Memcheck:Value4"}


def run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def suppressions(stderr):
    """The generated suppressions of `stderr`, cut to KEEP_FRAMES frames; only SAFE_KINDS."""
    found = set()
    for block in re.findall(r"^\{\n(.*?)\n\}$", stderr, re.S | re.M):
        lines = [line.strip() for line in block.splitlines()]
        if len(lines) < 3 or lines[1] not in SAFE_KINDS:
            continue
        found.add(
            "\n".join(
                [
                    "{",
                    "   baseline",
                    f"   {lines[1]}",
                    *(f"   {f}" for f in lines[2 : 2 + KEEP_FRAMES]),
                    "   ...",
                    "}",
                ]
            )
        )
    return sorted(found)


def main():
    backends = sys.argv[1:] or [""]
    env = {**os.environ, "PYTHONMALLOC": "malloc", "PYTHONHASHSEED": "0"}
    code, out, err = run(
        [
            "valgrind",
            "--num-callers=20",
            "--gen-suppressions=all",
            sys.executable,
            SMOKE,
            "asyncio",
        ],
        env,
    )
    if code != 0 or "ok" not in out:
        sys.exit(
            f"the smoke program failed on asyncio's loop under valgrind:\n{out}\n{err[-4000:]}"
        )
    supp = suppressions(err)
    os.makedirs("target/valgrind", exist_ok=True)
    supp_file = os.path.abspath("target/valgrind/cpython.supp")
    with open(supp_file, "w") as f:
        f.write("\n".join(supp) + "\n")
    print(f"asyncio's loop: {len(supp)} CPython sites suppressed ({supp_file})")
    failed = False
    for backend in backends:
        cmd = ["valgrind", "--error-exitcode=99", "--num-callers=20", f"--suppressions={supp_file}"]
        cmd += [sys.executable, SMOKE, "ferroloop", *([backend] if backend else [])]
        code, out, err = run(cmd, env)
        errors = re.search(r"ERROR SUMMARY: (\d+) errors", err)
        count = int(errors.group(1)) if errors else -1
        name = backend or "default backend"
        print(f"ferroloop ({name}): exit {code}, {count} errors, {out.strip()}")
        if code != 0 or count != 0:
            failed = True
            print(err[-6000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
