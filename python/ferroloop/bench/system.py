"""What the benchmarks need from the machine: CPUs to pin to, child processes pinned to one of
them, a process's CPU time, and the facts a report records (CPU, kernel, Python, git commit)."""

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def bench_cpus():
    """(cpu for servers and in-process cases, cpu for load generators), or (None, None) when
    fewer than two CPUs are usable and nothing is pinned."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


def spawn(cmd, cpu, **kwargs):
    """Start ``cmd`` pinned to ``cpu`` (None: not pinned). The child is pinned before it execs,
    so none of its work runs on another core."""
    pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
    return subprocess.Popen(cmd, preexec_fn=pin, **kwargs)


def stop(proc):
    """End a child this package started, by its PID: SIGTERM, then SIGKILL after 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_json(cmd, cpu, timeout):
    """Run a child pinned to ``cpu`` that prints one JSON object as its last line of output.
    Returns (that object, None) or (None, why it failed)."""
    proc = spawn(cmd, cpu, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        return None, f"timed out after {timeout:.0f} s"
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return None, tail[:300]
    try:
        return json.loads(lines[-1]), None
    except ValueError:
        return None, f"unreadable output: {lines[-1][:200]!r}"


def cpu_seconds(pid):
    """User + system CPU time of a process, all its threads. /proc/PID/task/*/schedstat counts
    nanoseconds; /proc/PID/stat (clock ticks, 10 ms) is the fallback."""
    try:
        total = 0
        for task in os.scandir(f"/proc/{pid}/task"):
            with open(f"{task.path}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: Other processes may use this many cores during a measured run before it is repeated.
MAX_OTHER = 0.25


def _busy_seconds():
    """CPU seconds all CPUs have spent running processes since boot (user, nice, system and
    steal). Interrupt time is left out: loopback traffic's softirqs would count our own load."""
    with open("/proc/stat") as f:
        user, nice, sys_, _idle, _iowait, _irq, _softirq, steal = map(
            int, f.readline().split()[1:9]
        )
    return (user + nice + sys_ + steal) / os.sysconf("SC_CLK_TCK")


def _children_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_quiet(max_wait, window=0.1):
    """Wait up to ``max_wait`` seconds for the other processes to use less than MAX_OTHER cores;
    call it while none of ours is busy. Returns the cores the last window saw busy."""
    deadline = time.monotonic() + max_wait
    while True:
        before = _busy_seconds()
        time.sleep(window)
        busy = (_busy_seconds() - before) / window
        if busy < MAX_OTHER or time.monotonic() >= deadline:
            return busy


def measure_quietly(measure, quiet_wait, retries=1):
    """Run ``measure() -> (record, cpu seconds of our processes not yet reaped)`` and set the
    record's ``other_cpu``: the cores that processes outside the benchmark used meanwhile (this
    machine's total busy time, less ours). A run disturbed by more than MAX_OTHER cores is
    repeated ``retries`` times at most, and the least disturbed one is kept."""
    best = None
    for _ in range(1 + retries):
        wait_quiet(quiet_wait)
        start, busy, children = time.monotonic(), _busy_seconds(), _children_seconds()
        record, own = measure()
        wall = time.monotonic() - start
        others = _busy_seconds() - busy - (_children_seconds() - children) - own
        record["other_cpu"] = max(0.0, others / wall)
        if "error" in record:
            return record
        if best is None or record["other_cpu"] < best["other_cpu"]:
            best = record
        if record["other_cpu"] <= MAX_OTHER:
            break
    return best


def repo_root():
    """The ferroloop checkout this package runs from (an editable install), else None."""
    root = Path(__file__).resolve().parents[3]
    if (root / "Cargo.toml").is_file() and (root / "crates" / "ferroloop-echoclient").is_dir():
        return root
    return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total():
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        return f"{kib / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def _git_commit(root):
    if root is None:
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine_info(root):
    server_cpu, client_cpu = bench_cpus()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory": _mem_total(),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "ferroloop_commit": _git_commit(root),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "pinning": (
            "none (fewer than 2 CPUs)"
            if server_cpu is None
            else f"servers and in-process cases on CPU {server_cpu}, load generator on CPU {client_cpu}"
        ),
    }
