"""ferroloop's own entry points: new_event_loop(), run(), install(), EventLoopPolicy and
`python -m ferroloop`.  These are ferroloop-only (no asyncio oracle), and this is the only
test module that imports ferroloop directly."""

import asyncio
import json
import os
import subprocess
import sys
import warnings

import pytest


@pytest.fixture
def ferroloop():
    import ferroloop  # inside the fixture: a broken build fails these tests, never skips

    return ferroloop


def is_ferroloop_loop(loop):
    return type(loop).__module__.startswith("ferroloop")


def test_new_event_loop_is_an_abstract_event_loop(ferroloop):
    loop = ferroloop.new_event_loop()
    try:
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert is_ferroloop_loop(loop)
        assert not loop.is_running()
        assert not loop.is_closed()
    finally:
        loop.close()


def test_run_returns_the_result_with_debug(ferroloop):
    async def main():
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.001)
        return "result", loop.get_debug(), is_ferroloop_loop(loop)

    assert ferroloop.run(main(), debug=True) == ("result", True, True)


def test_run_propagates_exceptions(ferroloop):
    async def main():
        raise LookupError("from main")

    with pytest.raises(LookupError, match="from main"):
        ferroloop.run(main())


def test_install_replaces_the_default_loop_factory(ferroloop):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # policy API, 3.12+
        previous = asyncio.get_event_loop_policy()
        try:
            ferroloop.install()
            loop = asyncio.new_event_loop()
            try:
                assert is_ferroloop_loop(loop)
            finally:
                loop.close()
        finally:
            asyncio.set_event_loop_policy(previous)


def test_event_loop_policy_creates_ferroloop_loops(ferroloop):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = ferroloop.EventLoopPolicy()
        assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
        loop = policy.new_event_loop()
    try:
        assert is_ferroloop_loop(loop)
    finally:
        loop.close()


SCRIPT = """
import asyncio, json, sys

async def main():
    return type(asyncio.get_running_loop()).__module__

print(json.dumps({"name": __name__, "argv": sys.argv, "module": asyncio.run(main())}))
"""


def test_python_dash_m_runs_a_script_on_ferroloop(ferroloop, tmp_path):
    (tmp_path / "script.py").write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    result = subprocess.run(
        [sys.executable, "-m", "ferroloop", "script.py", "arg1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["name"] == "__main__"
    assert os.path.basename(report["argv"][0]) == "script.py"
    assert report["argv"][1:] == ["arg1"]
    assert report["module"].startswith("ferroloop")
