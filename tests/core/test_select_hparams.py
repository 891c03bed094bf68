"""benchmarks/select_hparams.py: bounded in time, rewrites its log as it goes, and writes a params copy
that device_check.py can read, with only the numeric stack installed (the lent GPU machine's)."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from unlearn.config import load_params

REPO = Path(__file__).resolve().parents[2]
BLOCKED = ("prefect", "mlflow", "dvc", "great_expectations", "pandas", "torchvision")
# As on the lent GPU machine: nothing installed but the numeric stack, so neither the orchestration stack nor
# `unlearn` itself (this venv's editable-install finder is removed and the checkout is not on sys.path).
RUNNER = f"""
import runpy, sys
for name in {BLOCKED!r}:
    sys.modules[name] = None
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__ + repr(f)]
sys.path[:] = [p for p in sys.path if p not in ("", {str(REPO)!r})]
sys.argv = ["select_hparams.py"] + sys.argv[1:]
runpy.run_path({str(REPO / "benchmarks" / "select_hparams.py")!r}, run_name="__main__")
print("IMPORTED", sorted(n for n, m in sys.modules.items() if m is not None and n.split(".")[0] in {BLOCKED!r}))
"""
# digits, a one-epoch recipe: the point is the script's bookkeeping, not the selection.
SMALL = ["--dataset", "digits", "--model", "small_cnn", "--train-size", "400", "--epochs", "1", "--retrains", "1",
         "--references", "2"]


def _run(tmp_path, *args):
    out = subprocess.run([sys.executable, "-c", RUNNER, *SMALL, "--out-dir", str(tmp_path),
                          "--write-params", str(tmp_path / "params.selected.yaml"), *args],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "IMPORTED []" in out.stdout
    return json.loads((tmp_path / "hparams_digits_small_cnn.json").read_text())


def test_selected_values_reach_the_params_copy_and_nothing_else_changes(tmp_path):
    grid = {"ssd": [{"selection_weighting": 1.0}, {"selection_weighting": 3.0}]}
    log = _run(tmp_path, "--methods", "ssd", "--grid", json.dumps(grid))
    assert [p["overrides"] for p in log["points"]["ssd"]] == grid["ssd"]
    chosen = log["chosen"]["ssd"]["kwargs"]
    assert chosen["selection_weighting"] in (1.0, 3.0)
    committed = load_params(REPO / "params.yaml").unlearn
    written = load_params(tmp_path / "params.selected.yaml").unlearn
    assert written.kwargs_for("ssd", "digits", "small_cnn") == chosen
    for name in ("amun", "scrub", "grad_ascent"):  # not swept: the committed values
        assert written.kwargs_for(name, "digits", "small_cnn") == committed.kwargs_for(name, "digits", "small_cnn")
    assert written.kwargs_for("ssd", "fashion_mnist", "resnet18") == \
        committed.kwargs_for("ssd", "fashion_mnist", "resnet18")  # other settings untouched


def test_a_spent_budget_starts_no_point_and_says_so(tmp_path):
    log = _run(tmp_path, "--methods", "ssd,grad_ascent", "--grid-preset", "wide", "--budget-s", "0")
    assert log["points"] == {} and log["chosen"] == {}
    assert sorted(log["meta"]["not_swept"]) == ["grad_ascent", "ssd"]
    assert "Not swept (time budget spent" in (tmp_path / "hparams_digits_small_cnn.md").read_text()
    written = yaml.safe_load((tmp_path / "params.selected.yaml").read_text())
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    assert written == committed  # nothing selected: the copy says what params.yaml says
    assert not list(tmp_path.glob("*.tmp"))


def test_the_wide_preset_runs_the_methods_issue_13_flagged_first():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from select_hparams import WIDE_GRIDS

    from unlearn.methods import METHODS

    assert list(WIDE_GRIDS)[:3] == ["grad_ascent", "boundary_shrink", "ssd"]
    assert set(WIDE_GRIDS) == set(METHODS.names()) - {"retrain"}  # every method has a first-selection grid
    for name, grid in WIDE_GRIDS.items():
        METHODS.get(name).bind({k: v for point in grid for k, v in point.items()})  # only real parameters
