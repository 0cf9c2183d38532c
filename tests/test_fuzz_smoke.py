"""A short fixed-seed run of the differential fuzzer (scripts/fuzz/): random loop-API programs,
each run in fresh processes on asyncio's loop and on ferroloop (under the suite's
FERROLOOP_BACKEND), must leave the same trace of what user code observed.  A divergence
fails the test with its seed, what each loop did and a shortened program.

`python scripts/fuzz/fuzz.py --programs N --seed S --backend all` runs longer campaigns.
"""

import sys
from pathlib import Path

from conftest import BACKEND

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts" / "fuzz"))

import driver  # noqa: E402
import gen  # noqa: E402

SEED = 151_000
PROGRAMS = 16


def test_generator_is_deterministic():
    assert gen.generate(SEED) == gen.generate(SEED)
    assert gen.generate(SEED) != gen.generate(SEED + 1)


def test_fuzz_smoke(tmp_path):
    stats = driver.Stats(BACKEND)
    reports = []
    for seed in range(SEED, SEED + PROGRAMS):
        report = driver.fuzz_one(
            sys.executable, BACKEND, seed, stats, reduce_budget=60.0, out_dir=tmp_path
        )
        if report:
            reports.append(report)
    harness = [r for r in stats.reports if r.startswith("seed ")]
    assert not reports, stats.summary() + "\n" + "\n\n".join(reports)
    assert not harness, "both loops failed a program:\n" + "\n".join(harness)
    assert stats.programs == PROGRAMS
