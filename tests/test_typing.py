"""The package's types (issue 18): `mypy --strict` accepts typed user code, examples/typed.py,
against python/ferroloop/_ferroloop.pyi and the annotations of ferroloop's Python API, on this
CPython (typeshed's asyncio stubs differ by version). `make lint` also runs mypy's stubtest."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

TYPED = pathlib.Path(__file__).resolve().parent.parent / "examples" / "typed.py"


@pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed in this venv (make venv installs it: VENV_PKGS)",
)
def test_mypy_strict_accepts_the_typed_example(tmp_path):
    cmd = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path), str(TYPED)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_typed_example_runs():
    proc = subprocess.run(
        [sys.executable, str(TYPED)], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.splitlines()[-1] == "Runner: 7"
