"""ferroloop's own entry points: new_event_loop(), run(), install(), EventLoopPolicy and
`python -m ferroloop`.  These are ferroloop-only (no asyncio oracle), and this is the only
test module that imports ferroloop directly."""

import asyncio
import gc
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


def test_run_inside_a_running_loop_raises_as_asyncio_run(ferroloop):
    async def main():
        return "never run"

    async def nested(run):
        coro = main()
        with pytest.raises(RuntimeError) as info:
            run(coro)
        return type(info.value), str(info.value), coro

    expected_type, expected_message, coro = asyncio.run(nested(asyncio.run))
    coro.close()  # asyncio.run leaves it unawaited: "coroutine 'main' was never awaited"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got_type, got_message, coro = ferroloop.run(nested(ferroloop.run))
        assert coro.cr_frame is None  # closed by ferroloop.run
        del coro
        gc.collect()
    assert (got_type, got_message) == (expected_type, expected_message)
    assert got_message == "asyncio.run() cannot be called from a running event loop"
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("debug", [None, True, False])
def test_run_debug_as_asyncio_run(ferroloop, debug):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert ferroloop.run(main(), debug=debug) == asyncio.run(main(), debug=debug)


def test_run_uses_the_loop_factory(ferroloop):
    made = []

    def factory():
        made.append(ferroloop.new_event_loop())
        return made[-1]

    async def main():
        return asyncio.get_running_loop()

    assert ferroloop.run(main(), loop_factory=factory, debug=True) is made[0]
    assert made[0].is_closed() and made[0].get_debug()
    if sys.version_info >= (3, 12):  # asyncio.run has loop_factory from 3.12 on
        assert asyncio.run(main(), loop_factory=factory, debug=True) is made[1]
        assert made[1].is_closed() and made[1].get_debug()


def python_env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


NEIGHBOUR_SCRIPT = """
import asyncio, json, sys
import neighbour

async def main():
    return neighbour.VALUE

print(json.dumps({"path0": sys.path[0], "value": asyncio.run(main())}))
"""


def _last_json_lines(cwd, *argvs):
    """The JSON object each `python *argv` (run in `cwd`) prints last, in order."""
    reports = []
    for argv in argvs:
        result = subprocess.run(
            [sys.executable, *argv],
            cwd=cwd,
            env=python_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        reports.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return reports


def test_python_dash_m_script_imports_its_neighbours(ferroloop, tmp_path):
    # As `python other/script.py`: sys.path[0] is the script's folder, not the working directory.
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "script.py").write_text(NEIGHBOUR_SCRIPT)
    (folder / "neighbour.py").write_text("VALUE = 'from the neighbour'\n")
    reports = _last_json_lines(tmp_path, ["app/script.py"], ["-m", "ferroloop", "app/script.py"])
    assert reports[0] == reports[1] == {"path0": str(folder), "value": "from the neighbour"}


def test_python_dash_m_module_imports_from_the_working_directory(ferroloop, tmp_path):
    (tmp_path / "mainmod.py").write_text(NEIGHBOUR_SCRIPT)
    (tmp_path / "neighbour.py").write_text("VALUE = 'from the working directory'\n")
    reports = _last_json_lines(tmp_path, ["-m", "mainmod"], ["-m", "ferroloop", "-m", "mainmod"])
    assert (
        reports[0] == reports[1] == {"path0": str(tmp_path), "value": "from the working directory"}
    )


def test_python_dash_m_missing_script_as_python(ferroloop, tmp_path):
    results = [
        subprocess.run(
            [sys.executable, *argv, "./missing.py"],
            cwd=tmp_path,
            env=python_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        for argv in ([], ["-m", "ferroloop"])
    ]
    assert results[0].returncode == results[1].returncode == 2
    assert results[0].stdout == results[1].stdout == ""
    assert results[1].stderr == results[0].stderr
    assert results[0].stderr == (
        f"{sys.executable}: can't open file {os.path.join(tmp_path, './missing.py')!r}: "
        "[Errno 2] No such file or directory\n"
    )
