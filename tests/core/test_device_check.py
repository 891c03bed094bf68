"""benchmarks/device_check.py runs with only the numeric stack: the orchestration stack is blocked."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from unlearn.data.sources import FASHION_MNIST_DIR

REPO = Path(__file__).resolve().parents[2]
BLOCKED = ("prefect", "mlflow", "dvc", "great_expectations", "pandas", "torchvision")
needs_data = pytest.mark.skipif(not (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").is_file(),
                                reason=f"real Fashion-MNIST not installed at {FASHION_MNIST_DIR} "
                                       "(scripts/install-datasets.sh)")

# Runs the script as __main__ in a fresh interpreter where the BLOCKED packages cannot be imported (as if
# not installed), then lists what got imported.
RUNNER = f"""
import runpy, sys
BLOCKED = {BLOCKED!r}
for name in BLOCKED:  # a None entry makes `import name` fail and find_spec(name) say "not installed"
    sys.modules[name] = None
# unlearn itself is not installed there either: drop this venv's editable-install finder and the checkout
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__ + repr(f)]
sys.path[:] = [p for p in sys.path if p not in ("", {str(REPO)!r})]
sys.argv = ["device_check.py"] + sys.argv[1:]
try:
    runpy.run_path({str(REPO / "benchmarks" / "device_check.py")!r}, run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
print("IMPORTED", sorted(n for n, m in sys.modules.items() if m is not None and n.split(".")[0] in BLOCKED))
"""


def _run(tmp_path, *args):
    out = subprocess.run([sys.executable, "-c", RUNNER, "--device", "cpu", "--quick", "--out-dir", str(tmp_path),
                          *args], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "IMPORTED []" in out.stdout
    def no_constants(name):  # NaN / Infinity are not JSON: strict parsers (JavaScript's, jq --strict) reject them
        raise AssertionError(f"the report contains {name}")

    return json.loads((tmp_path / "device_check_cpu_quick.json").read_text(), parse_constant=no_constants)


@needs_data
def test_quick_cpu_subset_runs_with_the_stack_blocked(tmp_path):
    report = _run(tmp_path, "--skip", "throughput,references", "--methods", "amun", "--seeds", "1")
    rows = report["amun_table"]["results"]
    assert set(rows) == {"retrain", "original", "original+bn", "amun"}
    assert "errors" not in rows["amun"]
    assert 0 <= rows["amun"]["gap"]["mean"] <= 100 and rows["amun"]["weight_change"]["mean"] > 0
    assert 0 <= rows["retrain"]["gap"]["mean"] < 100  # one retrain against the other: the noise floor
    meta = report["amun_table"]["meta"]
    # Fashion-MNIST's profile, not the shipped params.yaml's active one (digits/small_cnn)
    assert meta["profile"] == "fashion_mnist/small_cnn" and meta["retrains"] == 2
    assert report["meta"]["complete"] is True
    assert (tmp_path / "device_check_cpu_quick.md").read_text().startswith("# Device check")
    assert (tmp_path / "device_check_cpu_quick.png").stat().st_size > 0


@pytest.mark.slow
@needs_data
def test_quick_cpu_mode_end_to_end(tmp_path):
    report = _run(tmp_path)
    assert set(report["throughput"]["images_per_second"]) == {
        "old loop, batch 32", "new trainer, batch 32", "new trainer, batch 96"}
    refs = report["references"]
    assert refs["models"] == 4 and refs["batched_seconds"] > 0 and refs["sequential_fp32_seconds"] > 0
    assert refs["speedup_vs_fp32"] == pytest.approx(refs["sequential_fp32_seconds"] / refs["batched_seconds"])
    rows = report["amun_table"]["results"]
    from unlearn.methods import METHODS

    assert set(rows) == set(METHODS.names()) | {"original", "original+bn"}
    assert report["amun_table"]["meta"]["seeds"] == 2
    assert rows["original"]["TA"]["mean"] > 30  # the quick recipe learns (10 classes: chance is 10%)
    assert [name for name, row in rows.items() if "errors" in row] == []


def test_cuda_request_without_cuda_is_exit_2(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "device_check.py"), "--out-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "CUDA is not available" in out.stderr


def test_table_recipe_is_sized_from_the_measured_throughput():
    """A faster trainer buys a longer (less shortened) recipe, within the bounds; no throughput: the fewest."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from device_check import FULL, QUICK, table_recipe_epochs
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    lo, hi = FULL.table_epochs
    assert table_recipe_epochs(FULL, None, 400)[0] == lo
    assert table_recipe_epochs(FULL, 50_000, 0)[0] == lo
    for odd in (float("nan"), float("inf"), -1.0):  # a broken measurement or budget: the fewest, no crash
        assert table_recipe_epochs(FULL, odd, 400)[0] == lo
        assert table_recipe_epochs(FULL, 50_000, odd)[0] == lo
    old_speed = table_recipe_epochs(FULL, 12_600, 390)[0]  # the train_model figure
    target = table_recipe_epochs(FULL, 3.5 * 12_600, 390)[0]  # the 3.5x target
    assert lo == old_speed < target < hi
    assert table_recipe_epochs(FULL, 10**7, 390)[0] == hi
    epochs, why = table_recipe_epochs(QUICK, 5_000, 100)
    assert epochs == QUICK.recipe.epochs and "fixed" in why


def test_a_table_run_with_another_params_file_says_where_its_profile_came_from(tmp_path, monkeypatch):
    """device_check --params FILE must not claim the committed profile, and credits a selection only to the
    sweep log that recorded this very file's hash (select_hparams.py --write-params)."""
    import hashlib

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from device_check import params_provenance

    key = "fashion_mnist/resnet18"
    assert params_provenance(None, key) is None
    assert params_provenance(str(REPO / "params.yaml"), key) is None
    selected = tmp_path / "params.selected.yaml"
    selected.write_text((REPO / "params.yaml").read_text())
    text = params_provenance(str(selected), key)
    assert "not the committed params.yaml" in text and "not recorded" in text and "selected for" not in text

    def log(name, digest):
        (tmp_path / name).write_text(json.dumps({
            "meta": {"params_written": {"sha256": digest}},
            "chosen": {"ssd": {}, "grad_ascent": {}}, "points": {"ssd": [], "grad_ascent": [], "dlfd": []}}))

    log("hparams_fashion_mnist_resnet18_old.json", "0" * 64)  # a stale log next to it vouches for nothing
    assert "not recorded" in params_provenance(str(selected), key)
    log("hparams_fashion_mnist_resnet18.json", hashlib.sha256(selected.read_bytes()).hexdigest())
    text = params_provenance(str(selected), key, ["ssd", "grad_ascent", "dlfd"])
    assert "selected for grad_ascent, ssd on a validation split" in text
    assert "; dlfd kept the profile's values" in text and "amun" not in text  # only the table's methods


def test_a_repetition_starts_only_if_it_would_end_within_the_budget(monkeypatch):
    """The 2-seed table checked the clock only from its third repetition on: it never stopped (review)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from device_check import repetition_fits

    first = {"prepare_seconds": 60.0, "rows": {"retrain": {"gap": 1.0}, "original": {"gap": 2.0},
                                               "amun": {"seconds": 40.0}, "dlfd": {"seconds": 400.0}}}
    assert repetition_fits(0, elapsed=999.0, first=None, budget_s=10.0)  # the first always runs
    assert repetition_fits(1, elapsed=100.0, first=first, budget_s=200.0)  # its models and first method fit
    assert not repetition_fits(1, elapsed=100.1, first=first, budget_s=200.0)
    assert not repetition_fits(1, elapsed=0.0, first=None, budget_s=200.0)


def test_the_device_run_script_refuses_a_missing_data_copy_before_any_work(tmp_path):
    """The one GPU command: without `make device-prep`'s copy it must say so and exit 2, not start a sweep."""
    out = subprocess.run(["sh", str(REPO / "benchmarks" / "device_run.sh"), str(tmp_path / "out")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "make device-prep" in out.stderr
    assert not (tmp_path / "out").exists()


@needs_data
@pytest.mark.parametrize("killed_in", [0, 1])
def test_a_run_killed_mid_repetition_keeps_the_rows_it_finished(tmp_path, monkeypatch, killed_in):
    """The table's first repetition always runs; on a slow GPU the device's time limit can kill it. Its finished
    rows must then be on disk, marked partial (a helper's review: the table was written only per repetition).
    A kill in a later repetition leaves the whole first one and the later one's finished rows: those methods then
    have two seeds (they were dropped, and the table had one seed and no interval; review of 2026-12-07)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import device_check

    real = device_check.table_bench.run_repetition

    def killed_after_one_method(i, data, args, params, recipe, progress=None, deadline=None):
        def progress_then_die(rep):
            progress(rep)
            if i == killed_in and len(set(rep["rows"]) - set(device_check.table_bench.REFERENCE_ROWS)) == 1:
                raise KeyboardInterrupt  # what a kill looks like to the code after it: nothing more runs
        return real(i, data, args, params, recipe, progress=progress_then_die, deadline=deadline)

    monkeypatch.setattr(device_check.table_bench, "run_repetition", killed_after_one_method)
    with pytest.raises(KeyboardInterrupt):
        device_check.main(["--device", "cpu", "--quick", "--skip", "throughput,references", "--seeds", "2",
                           "--methods", "grad_ascent,ssd", "--out-dir", str(tmp_path)])
    text = (tmp_path / "device_check_cpu_quick.md").read_text()
    saved = json.loads((tmp_path / "device_check_cpu_quick.json").read_text())
    table = saved["amun_table"]
    assert saved["meta"]["complete"] is False
    if killed_in == 0:
        assert "**Partial: only repetition 0's first rows had finished (1 of 2 methods done)" in text
        assert "certified timing not yet run" not in text  # none was planned: the note must not promise one
        assert "| grad_ascent |" in text and "| ssd |" not in text
        assert table["meta"]["partial"] == "1 of 2 methods done"
        assert set(table["results"]) == {"retrain", "original", "original+bn", "grad_ascent"}
    else:
        assert "Partial" not in text and table["meta"]["partial"] is None and table["meta"]["seeds"] == 2
        assert table["meta"]["running"] == "repetition 1: 1 of 2 methods done so far"
        assert "**Still running when this was written (repetition 1: 1 of 2 methods done so far)" in text
        assert "**Incomplete: written while the check was still running" in text
        assert set(table["results"]) == {"retrain", "original", "original+bn", "grad_ascent", "ssd"}
        assert table["results"]["ssd"]["not_run"] == 1 and "not_run" not in table["results"]["grad_ascent"]
        assert "| ssd (not run in 1/2 repetition(s)" in text
        assert not np.isnan(table["results"]["grad_ascent"]["gap"]["ci95"] or float("nan"))  # two seeds: an interval


def test_the_device_run_script_stops_a_sweep_that_runs_on_and_gives_the_check_what_is_left(tmp_path):
    """Budgets only stop the scripts starting work, so device_run.sh keeps the clock (a helper's review: nothing
    bounded the run to the device's 600 s). Here a stand-in interpreter records its calls and its "sweep" hangs."""
    (tmp_path / ".device" / "fashion-mnist").mkdir(parents=True)
    (tmp_path / ".device" / "fashion-mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake-python"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\ncase "$1" in *select_hparams*) sleep 30;; esac\nexit 0\n')
    fake.chmod(0o755)
    for total, lowest, highest in ((400, 400 - 6, 400 - 1), (100, 150, 150)):  # below the floor: 150 s
        calls.unlink(missing_ok=True)
        env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "SWEEP_CAP_S": "1", "TOTAL_S": str(total)}
        out = subprocess.run(["sh", str(REPO / "benchmarks" / "device_run.sh"), str(tmp_path / "out")],
                             cwd=tmp_path, capture_output=True, text=True, timeout=25, env=env)
        assert out.returncode == 0, out.stderr
        assert "the sweep failed or was stopped" in out.stderr
        sweep, check = calls.read_text().splitlines()[1:]  # the first call prints the versions
        assert "select_hparams.py --device cuda" in sweep and "--budget-s 140" in sweep
        assert "device_check.py" in check and "--table-epochs 20" in check
        budget = int(check.split("--budget-s ")[1].split()[0])
        assert lowest <= budget <= highest, (total, budget)  # what is left after the stopped sweep's 1-2 s


def test_the_device_run_script_stops_a_device_check_that_runs_past_the_whole_runs_limit(tmp_path):
    """The check's budget only keeps it from starting a second repetition: its first always runs, estimated past the
    8 minutes the guide allows (review of 2026-12-07). The script stops it at HARD_TOTAL_S, never before its budget,
    and says so with the check's exit status."""
    (tmp_path / ".device" / "fashion-mnist").mkdir(parents=True)
    (tmp_path / ".device" / "fashion-mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    fake = tmp_path / "fake-python"
    fake.write_text('#!/bin/sh\ncase "$1" in *device_check*) sleep 30;; esac\nexit 0\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "TOTAL_S": "2", "MIN_CHECK_S": "2", "HARD_TOTAL_S": "3"}
    started = time.monotonic()
    out = subprocess.run(["sh", str(REPO / "benchmarks" / "device_run.sh"), str(tmp_path / "out")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=25, env=env)
    assert out.returncode == 124, (out.stdout, out.stderr)  # timeout's status, passed on
    assert re.search(r"is stopped after [23] s", out.stdout)
    assert "the device check failed or was stopped (exit 124)" in out.stderr
    assert time.monotonic() - started < 15


@needs_data
def test_a_later_repetition_stops_starting_methods_at_the_budget(tmp_path, monkeypatch):
    """A later repetition runs its methods until the budget, not to the end; one that reached no method is left
    out and said to be (reviews of 2026-12-07)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import device_check

    monkeypatch.setattr(device_check, "repetition_fits", lambda i, *a: True)  # start it, whatever the clock
    device_check.main(["--device", "cpu", "--quick", "--skip", "throughput,references", "--seeds", "2",
                       "--methods", "grad_ascent,ssd", "--budget-s", "0.001", "--out-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "device_check_cpu_quick.json").read_text())
    table = saved["amun_table"]
    # no method of repetition 1 started: it is left out (a 2-repetition header over 1-repetition rows misled)
    assert saved["meta"]["complete"] is True and table["meta"]["seeds"] == 1 and table["meta"]["running"] is None
    assert "repetition 1 trained its models, but no method started before the time budget: left out" in " ".join(
        saved["notes"])
    text = (tmp_path / "device_check_cpu_quick.md").read_text()
    assert "Incomplete" not in text and "## Paired" not in text
