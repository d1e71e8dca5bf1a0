"""perf/run.py's --proxy-cpu-share: bad shares are refused with a message, and (where this
machine lets us make a cgroup) a wrapped command really runs inside a cgroup with the quota,
which is gone afterwards."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_run():
    spec = importlib.util.spec_from_file_location("perf_run", ROOT / "perf" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["perf_run"] = mod
    spec.loader.exec_module(mod)
    return mod


run = load_run()


@pytest.mark.parametrize(
    ("share", "message"),
    [
        (0, "must be in (0, 1], not 0"),
        (1.5, "must be in (0, 1], not 1.5"),
        (-0.5, "must be in (0, 1], not -0.5"),
        (0.05, "below the smallest quota the kernel takes (0.1 of a cpu"),
    ],
)
def test_a_share_out_of_range_is_refused_with_what_was_wrong(share, message):
    with pytest.raises(SystemExit) as e:
        run.CpuQuota(share)
    assert "--proxy-cpu-share" in str(e.value)
    assert message in str(e.value)


def test_the_command_line_refuses_a_share_that_is_not_a_number():
    out = subprocess.run([sys.executable, str(ROOT / "perf" / "run.py"), "--proxy-cpu-share", "half"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--proxy-cpu-share: invalid float value: 'half'" in out.stderr


def quota_or_skip(share: float):
    try:
        return run.CpuQuota(share)
    except SystemExit as e:
        pytest.skip(f"no cgroup cpu quota on this machine: {e}")


def test_a_wrapped_command_runs_in_the_cgroup_under_the_quota():
    q = quota_or_skip(0.5)
    try:
        q.for_cpus(2)
        assert q.quota_us == 10000   # 0.5 of 2 cpus per 10 ms period
        limit = ((q.dir / "cpu.max").read_text().split() if q.v2
                 else [(q.dir / "cpu.cfs_quota_us").read_text().strip(),
                       (q.dir / "cpu.cfs_period_us").read_text().strip()])
        assert limit == ["10000", "10000"]
        # The command and what it starts are in the cgroup: its procs list them while they run.
        out = subprocess.run(q.wrap(["sh", "-c", "echo $$; cat /proc/self/cgroup; cat \"$1\"", "sh",
                                     str(q.dir / "cgroup.procs")]),
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        pid, *rest = out.stdout.split()
        assert any(line.endswith("/" + q.dir.name) for line in rest), out.stdout
        assert pid in rest, out.stdout   # the wrapped shell itself is listed in cgroup.procs
        assert q.throttled() >= 0
    finally:
        q.remove()
    assert not q.dir.exists()


def test_the_report_says_the_proxies_ran_under_a_quota():
    data = {"date": "d", "machine": {"nproc": 2, "cpu_model": "cpu", "mem_mib": 2048},
            "versions": {"kernel": "k"},
            "options": {"workers": "1", "runs": 1, "duration": 1, "warmup": 1, "proxies": ["pyproxy"],
                        "cpu_quota": "every proxy held to 0.5 of each of its cpus"}}
    assert "**CPU share: every proxy held to 0.5 of each of its cpus**" in run.header_lines(data)
    data["options"]["cpu_quota"] = ""
    assert not any("CPU share" in line for line in run.header_lines(data))
