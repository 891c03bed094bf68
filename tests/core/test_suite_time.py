"""benchmarks/suite_time.py (the `make test` budget) and its pytest plugin benchmarks/suite_clock.py, without
running the suite: the summary parsing, the per-file clock, and the verdict on failing runs."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def suite_time(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("suite_time")


def test_summary_counts_read_the_last_summary_line(suite_time):
    out = ("tests/a.py::test_x PASSED in 3s (noise)\n"
           "==== 3 failed, 968 passed, 19 skipped, 2 errors, 110 warnings in 366.28s (0:06:06) ====\n")
    assert suite_time.summary_counts(out) == {"failed": 3, "passed": 968, "skipped": 19, "errors": 2}
    assert suite_time.summary_counts("==== 1 error in 2.00s ====") == {"errors": 1}
    assert suite_time.summary_counts("make: *** [Makefile:27: test] Error 1") == {}


def test_the_clock_gives_each_file_its_tests_time_and_each_worker_its_tail(suite_time):
    workers = {
        "gw0": [(100.0, "session", "-"), (101.0, "start", "tests/a.py::t1"), (111.0, "end", "tests/a.py::t1"),
                (111.0, "start", "tests/a.py::t2"), (113.0, "end", "tests/a.py::t2")],
        "gw1": [(100.5, "session", "-"), (101.0, "start", "tests/b.py::t[1]"), (131.0, "end", "tests/b.py::t[1]")],
    }
    clock = suite_time.clock_summary(workers, started=99.0)
    assert clock["files"] == {"tests/a.py": 12.0, "tests/b.py": 30.0}
    assert clock["tests"]["tests/b.py::t[1]"] == 30.0
    assert clock["workers"]["gw0"] == {"first_test_s": 2.0, "last_test_end_s": 14.0, "tests": 2}
    assert clock["workers"]["gw1"]["last_test_end_s"] == 32.0


def _run(suite_time, wall, returncode=0):
    return {"returncode": returncode, "wall_s": wall, "cpu_s": 2 * wall, "files": {"tests/a.py": wall / 2}}


def test_a_failing_run_never_meets_the_budget_and_one_run_has_no_interval(suite_time):
    fast_but_failing = suite_time.summarise([_run(suite_time, 200.0, returncode=1)], 360.0)
    assert not fast_but_failing["all_passed"] and not fast_but_failing["every_run_within_budget"]
    assert fast_but_failing["interval_95_s"] is None
    two = suite_time.summarise([_run(suite_time, 350.0), _run(suite_time, 370.0)], 360.0)
    assert two["mean_wall_s"] == 360.0 and two["over_budget_s"] == 0.0
    assert not two["every_run_within_budget"]  # one run over is a miss, whatever the mean
    low, high = two["interval_95_s"]
    assert low < 350.0 and high > 370.0  # two runs 20 s apart: t(1) = 12.7 makes the interval wide
    assert suite_time.summarise([_run(suite_time, 300.0), _run(suite_time, 310.0)], 360.0)["every_run_within_budget"]


def test_the_plugin_logs_start_and_end_per_worker(tmp_path):
    (tmp_path / "test_tiny.py").write_text("def test_one():\n    pass\n\ndef test_two():\n    pass\n")
    clock = tmp_path / "clock"
    clock.mkdir()
    env = {**os.environ, "UNLEARN_SUITE_CLOCK_DIR": str(clock),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "benchmarks"), os.environ.get("PYTHONPATH")]))}
    env.pop("PYTEST_XDIST_WORKER", None)  # this test may itself run on an xdist worker
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "suite_clock", "-p", "no:cacheprovider",
                             str(tmp_path / "test_tiny.py")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    events = [line.split(" ", 2)[1:] for line in (clock / "controller.log").read_text().splitlines()]
    assert events == [["session", "-"], ["start", "test_tiny.py::test_one"], ["end", "test_tiny.py::test_one"],
                      ["start", "test_tiny.py::test_two"], ["end", "test_tiny.py::test_two"]]
