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
    # the real last line wins, whatever outcome it names; ANSI colours are ignored
    assert suite_time.summary_counts("=== 1 passed in 0.2s ===\n=== 3 xpassed, 1 warning in 0.5s ===") == {"xpassed": 3}
    assert suite_time.summary_counts("\x1b[32m=== 2 passed, 5 deselected in 1.1s ===\x1b[0m") == {
        "passed": 2, "deselected": 5}
    assert suite_time.summary_counts("=== 1 passed in 0.2s ===\n=== no tests ran in 0.01s ===") == {}


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
    assert clock["workers"]["gw1"]["last_test_end_s"] == 32.0 and clock["unfinished"] == []


def test_the_controllers_replay_is_not_counted_and_a_test_a_worker_died_in_is_named(suite_time, tmp_path):
    (tmp_path / "controller.log").write_text("1.0 session -\n2.0 start tests/a.py::t\n12.0 end tests/a.py::t\n")
    (tmp_path / "gw0.log").write_text("1.0 session -\n2.0 start tests/a.py::t\n12.0 end tests/a.py::t\n")
    (tmp_path / "gw1.log").write_text("1.0 session -\n3.0 start tests/b.py::dies\n")
    workers = suite_time.read_clock(tmp_path)
    assert sorted(workers) == ["gw0", "gw1"]
    clock = suite_time.clock_summary(workers, started=0.0)
    assert clock["files"] == {"tests/a.py": 10.0} and clock["unfinished"] == ["tests/b.py::dies"]
    assert clock["workers"]["gw1"] == {"first_test_s": 3.0, "last_test_end_s": None, "tests": 0}
    (tmp_path / "gw0.log").unlink()
    (tmp_path / "gw1.log").unlink()
    assert sorted(suite_time.read_clock(tmp_path)) == ["controller"]  # no xdist: the only process


def _run(suite_time, wall, returncode=0, passed=5):
    return {"returncode": returncode, "wall_s": wall, "cpu_s": 2 * wall, "cores_busy": 2.0,
            "counts": {"passed": passed} if passed else {}, "files": {"tests/a.py": wall / 2},
            "workers": {"gw0": {"first_test_s": 1.0, "last_test_end_s": wall - 1, "tests": passed}},
            "unfinished": [], "slowest_tests": {"tests/a.py::t": wall / 2}}


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
    nothing_ran = suite_time.summarise([_run(suite_time, 5.0, passed=0)], 360.0)  # exit 0, but no test passed
    assert not nothing_ran["all_passed"] and not nothing_ran["every_run_within_budget"]


@pytest.mark.parametrize(("walls", "code", "words"), [
    ((340.0, 370.0), 0, "over the budget: the slowest run took 370.0 s"),  # the mean is under: still a miss
    ((300.0, 310.0), 0, "within the budget in every run"),
    ((200.0,), 1, "a run failed or ran no test: the time does not count"),
])
def test_the_markdown_verdict_says_what_the_runs_showed(suite_time, tmp_path, monkeypatch, walls, code, words):
    monkeypatch.setattr(suite_time, "RESULTS", tmp_path)
    runs = [_run(suite_time, w, returncode=code) for w in walls]
    report = {"command": "python benchmarks/suite_time.py", "workers": 2, "commit": "abc", "date": "today",
              "machine": "test", "summary": suite_time.summarise(runs, 360.0), "runs": runs}
    text = suite_time.write(report, "t").read_text()
    assert words in text
    assert "within the budget" not in text or words == "within the budget in every run"


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


def test_processes_the_suite_starts_run_full_collections_as_the_command_does():
    """conftest's sitecustomize reaches a child interpreter (as it reaches DVC, the servers and Dask workers)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import gc; print(gc.get_threshold()[2])"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "100"
