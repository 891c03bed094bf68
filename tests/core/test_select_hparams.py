"""benchmarks/select_hparams.py: bounded in time, rewrites its log as it goes, and writes a params copy
that device_check.py can read, with only the numeric stack installed (the lent GPU machine's)."""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
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


SETTINGS = [(d, m) for d in ("digits", "fashion_mnist", "cifar10") for m in ("small_cnn", "resnet18")]


def test_selected_values_reach_the_params_copy_and_nothing_else_changes(tmp_path):
    """amun_salun extends amun: selecting amun alone must not move amun_salun (pinned to its old values)."""
    import hashlib

    from unlearn.methods import METHODS

    grid = {"ssd": [{"selection_weighting": 1.0}, {"selection_weighting": 3.0}],
            "amun": [{"epochs": 1, "pgd_steps": 2}, {"epochs": 1, "pgd_steps": 2, "lr": 0.1}]}
    log = _run(tmp_path, "--methods", "ssd,amun", "--grid", json.dumps(grid))
    assert [p["overrides"] for p in log["points"]["ssd"]] == grid["ssd"]
    assert set(log["chosen"]) == {"ssd", "amun"}, log["chosen"]
    committed = load_params(REPO / "params.yaml").unlearn
    written = load_params(tmp_path / "params.selected.yaml").unlearn
    for name in ("ssd", "amun"):
        assert written.kwargs_for(name, "digits", "small_cnn") == log["chosen"][name]["kwargs"]
    for dataset, model in SETTINGS:  # every other method of every setting runs with the same arguments as before
        for name in METHODS.names():
            if (dataset, model) == ("digits", "small_cnn") and name in ("ssd", "amun"):
                continue
            spec = METHODS.get(name)
            assert spec.bind(written.kwargs_for(name, dataset, model)) == \
                spec.bind(committed.kwargs_for(name, dataset, model)), (dataset, model, name)
    digest = hashlib.sha256((tmp_path / "params.selected.yaml").read_bytes()).hexdigest()
    assert log["meta"]["params_written"]["sha256"] == digest  # the log vouches for this file


def test_a_budget_that_runs_out_inside_a_grid_selects_nothing_for_that_method(tmp_path, monkeypatch):
    """The best of part of a grid is no selection: the method keeps its profile values and the log says so."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import select_hparams

    clock = {"offset": 0.0}
    real_run_one, real_clock = select_hparams.run_one, select_hparams.time.perf_counter

    def run_one(*args, **kwargs):  # each point "takes" 100 s on a fake clock
        clock["offset"] += 100.0
        return real_run_one(*args, **kwargs)

    monkeypatch.setattr(select_hparams, "run_one", run_one)
    monkeypatch.setattr(select_hparams, "time", type("T", (), {"perf_counter": lambda: real_clock() + clock["offset"]}))
    grid = {"ssd": [{"selection_weighting": 1.0}, {"selection_weighting": 3.0}]}
    select_hparams.main([*SMALL, "--methods", "dlfd,ssd", "--grid", json.dumps(grid), "--budget-s", "50",
                         "--out-dir", str(tmp_path), "--write-params", str(tmp_path / "params.selected.yaml")])
    log = json.loads((tmp_path / "hparams_digits_small_cnn.json").read_text())
    assert len(log["points"]["ssd"]) == 1 and log["chosen"] == {}
    assert log["meta"]["cut_short"] == ["ssd"] and log["meta"]["not_swept"] == ["dlfd"]
    assert "Cut short by the time budget, so not selected" in (tmp_path / "hparams_digits_small_cnn.md").read_text()
    assert "**" not in (tmp_path / "hparams_digits_small_cnn.md").read_text().split("| method |")[1].split("```")[0]


@pytest.mark.parametrize("args, message", [
    (["--grid", "{bad"], "--grid is not JSON"),
    (["--grid", '{"ssd": {"selection_weighting": 2}}'], "--grid must be"),
    (["--methods", "ssd,bogus"], "unknown method(s) bogus"),
    (["--write-params", str(REPO / "params.yaml")], "must not overwrite --params"),
])
def test_bad_arguments_fail_before_any_training(args, message, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import select_hparams

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking its arguments")

    monkeypatch.setattr(select_hparams, "prepare", no_training)
    with pytest.raises(SystemExit, match=re.escape(message)):
        select_hparams.main([*SMALL, "--out-dir", str(tmp_path), *args])


@pytest.mark.parametrize("tuning, val_fraction", [(2000, 0.2), (10_000, 0.2), (1078, 0.2), (999, 0.33), (5, 0.5)])
def test_tuning_size_is_the_smallest_subset_whose_tuning_part_has_that_many_samples(tuning, val_fraction,
                                                                                     monkeypatch):
    """The sweep tunes at the size the setting trains on (l1-sparse's lr 0.1 did not carry 1,600 -> 2,000)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from protocol import validation_mask
    from select_hparams import pool_for_tuning_size

    n = pool_for_tuning_size(tuning, val_fraction)
    assert n - validation_mask(n, val_fraction, 7).sum() == tuning
    assert (n - 1) - validation_mask(n - 1, val_fraction, 7).sum() < tuning


def test_tuning_size_reaches_the_loader_and_excludes_train_size(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import select_hparams

    seen = {}

    def loader(*args, train_size=None, **kwargs):
        seen["train_size"] = train_size
        raise RuntimeError("stop after loading")

    monkeypatch.setattr(select_hparams, "load_data", loader)
    args = [a for a in SMALL if a not in ("--train-size", "400")]
    with pytest.raises(RuntimeError, match="stop after loading"):
        select_hparams.main([*args, "--tuning-size", "2000", "--out-dir", str(tmp_path)])
    assert seen["train_size"] == 2500  # 500 validation + 2,000 tuning samples
    with pytest.raises(SystemExit):
        select_hparams.main([*SMALL, "--tuning-size", "2000", "--out-dir", str(tmp_path)])
    assert "not allowed with argument --train-size" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--tuning-size must be >= 1"):
        select_hparams.main([*args, "--tuning-size", "0", "--out-dir", str(tmp_path)])


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


def test_a_method_that_extends_a_selected_one_keeps_every_argument_it_had(tmp_path):
    """amun_salun was pinned to its old resolved entry only, which names no include_forget: selecting AMUN's
    advonly point (the wide preset's) moved amun_salun through `extends: amun`, and the table said it had kept
    the profile's values (GPU-readiness review)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from select_hparams import write_selected_params

    from unlearn.methods import METHODS

    text = (REPO / "params.yaml").read_text()
    before = load_params(REPO / "params.yaml")
    amun = {**before.unlearn.kwargs_for("amun", "fashion_mnist", "resnet18"), "include_forget": False, "lr": 0.001}
    write_selected_params(text, before, tmp_path / "p.yaml", "fashion_mnist/resnet18", {"amun": amun})
    after = load_params(tmp_path / "p.yaml")
    assert after.unlearn.kwargs_for("amun", "fashion_mnist", "resnet18") == amun
    for name in METHODS.names():
        if name != "amun":
            spec = METHODS.get(name)
            assert spec.bind(after.unlearn.kwargs_for(name, "fashion_mnist", "resnet18")) == \
                spec.bind(before.unlearn.kwargs_for(name, "fashion_mnist", "resnet18")), name


def test_the_params_copy_runs_with_the_batch_norm_setting_the_selection_ran_with(tmp_path):
    """A selection made with --no-recalibrate-bn against a params.yaml that turns it on wrote a copy that
    turned it on: device_check then ran the selected values the other way (review of the recalibration)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from select_hparams import recorded_command, write_selected_params

    text = (REPO / "params.yaml").read_text()
    before = load_params(REPO / "params.yaml")
    for value in (False, True):
        write_selected_params(text, before, tmp_path / "p.yaml", "fashion_mnist/resnet18", {},
                              recalibrate_bn=value)
        assert load_params(tmp_path / "p.yaml").unlearn.recalibrate_bn is value
    assert "--no-recalibrate-bn" in recorded_command(argparse.Namespace(recalibrate_bn=False, tag=None))
    assert "recalibrate" not in recorded_command(argparse.Namespace(recalibrate_bn=None, tag=None))


def test_a_tuning_size_the_training_split_cannot_give_is_refused_not_shrunk(monkeypatch, tmp_path):
    """load_data quietly caps the subset at the split's size: the sweep must not then tune on fewer samples
    than its recorded command says."""
    import torch

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import select_hparams

    def loader(*args, train_size=None, **kwargs):
        n = min(train_size, 1347)  # digits' training split
        return torch.zeros(n, 1, 8, 8), torch.zeros(n, dtype=torch.long), None, None

    monkeypatch.setattr(select_hparams, "load_data", loader)
    monkeypatch.setattr(select_hparams, "prepare", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    args = [a for a in SMALL if a not in ("--train-size", "400")]
    with pytest.raises(SystemExit, match="--tuning-size 1347 needs 1684 training samples .* has 1347"):
        select_hparams.main([*args, "--tuning-size", "1347", "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="leaves no validation sample"):
        select_hparams.main([*args, "--tuning-size", "2", "--out-dir", str(tmp_path)])
    assert select_hparams.pool_for_tuning_size(1, 0.9) == 5  # the smallest, also at large fractions


def test_a_cuda_sweep_without_cuda_is_exit_2_before_any_work(tmp_path, monkeypatch, capsys):
    """device_run.sh's sweep on a machine without a GPU: say so and stop, not load data and fail mid-training."""
    import torch

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import select_hparams

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(select_hparams, "load_data", lambda *a, **k: pytest.fail("loaded data without CUDA"))
    with pytest.raises(SystemExit) as stopped:
        select_hparams.main([*SMALL, "--device", "cuda", "--out-dir", str(tmp_path)])
    assert stopped.value.code == 2 and "CUDA is not available" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_sweep_scores_the_untouched_original_and_marks_a_choice_not_below_it(monkeypatch, tmp_path):
    """A selected point only had to move the weights: gradient ascent at Δw 1e-4 was "selected" while it scored
    as the untouched original did (review of 2026-12-07). The original is scored like every point, and a choice
    not below it on every subset is marked."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import select_hparams
    from protocol import evaluate, gap

    def scored(offset):  # a point that moves the weights and scores the original's gap + offset
        def run_one(name, ref, kwargs, **_):
            row = evaluate(ref.original, ref, "cpu")
            return {**row, "gap": gap(row, ref.target) + offset, "time_ratio": 0.1, "weight_change": 0.01,
                    "seconds": 0.1}
        return run_one

    for offset, marked in ((0.5, True), (-0.5, False)):
        monkeypatch.setattr(select_hparams, "run_one", scored(offset))
        select_hparams.main([*SMALL, "--methods", "grad_ascent", "--grid", json.dumps({"grad_ascent": [{}]}),
                             "--subsets", "2", "--no-recalibrate-bn", "--out-dir", str(tmp_path)])
        log = json.loads((tmp_path / "hparams_digits_small_cnn.json").read_text())
        meta, chosen = log["meta"], log["chosen"]["grad_ascent"]
        assert len(meta["original_gap_per_subset"]) == chosen["subsets"] == 2
        assert abs(chosen["gap"] - meta["original_gap"] - offset) < 1e-9
        assert chosen["below_original_on"] == (0 if marked else 2)
        text = (tmp_path / "hparams_digits_small_cnn.md").read_text()
        assert ("NOT BELOW THE ORIGINAL on every subset: grad_ascent (0/2 subsets)" in text) is marked
