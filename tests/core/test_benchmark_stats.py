"""benchmarks/protocol.py's paired comparison: the statistics that say whether the methods table ranks."""

import importlib
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def protocol(monkeypatch):
    """benchmarks/protocol.py, imported as the scripts import it (benchmarks/ on the path for this test)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("protocol")


@pytest.fixture()
def methods(protocol):
    """benchmarks/methods.py (it imports its sibling protocol, so it needs the same path)."""
    return importlib.import_module("methods")


def test_pairing_sees_a_consistent_difference_that_per_row_intervals_hide(protocol):
    """Repetition effects move both rows; each row's own interval is wide, the paired one is not."""
    shift = np.array([0.0, 3.0, -2.0, 5.0, 1.0])  # which original / subset the repetition drew
    best, other = 1.0 + shift, 1.5 + shift + np.array([0.05, -0.05, 0.02, 0.0, -0.02])
    _, half_best = protocol.t_interval(list(best))
    assert half_best > 1.0  # unpaired, the rows overlap completely
    e = protocol.paired_difference(list(other), list(best))
    assert e["mean"] == pytest.approx(0.5)
    assert e["mean"] - e["ci95"] > 0.4
    assert e["baseline_lower"] == 5 and e["n"] == 5 and e["ties"] == 0
    assert e["p_t"] < 1e-4
    assert e["p_sign_flip"] == pytest.approx(2 / 32) == e["p_floor"]  # the test's floor at 5 repetitions


def test_the_sign_flip_p_value_is_the_exact_permutation_distribution(protocol):
    diffs = np.array([0.3, -0.1, 0.7, 0.2, -0.4, 0.9])
    observed = abs(diffs.mean())
    patterns = [abs((np.array(s) * diffs).mean()) for s in itertools.product((1, -1), repeat=len(diffs))]
    expected = np.mean([p >= observed - 1e-12 for p in patterns])
    e = protocol.paired_difference(list(diffs), [0.0] * len(diffs))
    assert e["p_sign_flip"] == pytest.approx(expected)
    assert 0.0 < e["p_sign_flip"] < 1.0


def test_a_missing_repetition_is_dropped_from_both_rows_and_no_difference_is_no_evidence(protocol):
    e = protocol.paired_difference([1.0, math.nan, 2.0], [1.0, 5.0, 2.0])
    assert e["n"] == 2 and e["mean"] == 0.0 and e["ties"] == 2
    assert e["p_sign_flip"] == 1.0 and math.isnan(e["p_t"])  # identical rows: nothing to test, no fake p
    assert math.isnan(protocol.paired_difference([math.nan], [1.0])["mean"])


def test_holm_adjusts_step_down_keeps_order_and_skips_nan(protocol):
    adjusted = protocol.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": math.nan})
    assert adjusted["a"] == pytest.approx(0.03)  # 3 x 0.01
    assert adjusted["c"] == pytest.approx(0.06)  # 2 x 0.03
    assert adjusted["b"] == pytest.approx(0.06)  # max(1 x 0.04, the previous 0.06): monotone
    assert math.isnan(adjusted["d"])
    assert protocol.holm({"a": 0.6, "b": 0.7})["b"] == 1.0  # capped at 1


def test_ties_raise_the_sign_flip_floor_and_a_constant_difference_is_not_silently_dropped(protocol):
    e = protocol.paired_difference([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 2.0, 3.0])  # one tie, three +1
    assert e["ties"] == 1 and e["p_floor"] == pytest.approx(2 / 2 ** 3)
    assert e["p_sign_flip"] == pytest.approx(2 / 8)  # only the all-+ and all-- patterns reach |mean| 0.75
    constant = protocol.paired_difference([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert constant["p_t"] == 0.0  # t is infinite, not "untestable": the row stays in the Holm family
    noisy = protocol.paired_difference([1.1, 0.6, 1.3], [1.0, 0.5, 1.2])  # -0.1 each, up to float rounding
    assert noisy["p_t"] == 0.0


def test_the_methods_table_pairs_against_its_lowest_row_and_keeps_the_retrain_out_of_holm(methods):
    gaps = {"retrain": [1.0, 1.2, 0.8, 1.1], "original": [6.0, 7.0, 5.0, 6.5],
            "good": [1.0, 1.5, 0.5, 1.2], "worse": [2.0, 2.6, 1.4, 2.3], "flaky": [1.3, None, 0.9, 1.5]}
    reps = [{"rows": {name: ({"error": "RuntimeError: boom"} if g[i] is None else {"gap": g[i]})
                      for name, g in gaps.items()}} for i in range(4)]
    results = {name: {"gap": {"mean": float(np.nanmean([v for v in g if v is not None]))}}
               for name, g in gaps.items()}
    text = "\n".join(methods.paired_section(results, reps, retrains=3))
    assert "## Paired against the lowest method (good)" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "good" not in rows  # the baseline is not compared with itself
    assert rows["worse"].split("|")[2].strip() == "+1.02 ± 0.15" and "| 4/4 |" in rows["worse"]
    assert "| 3/3 |" in rows["flaky"]  # the repetition it raised in is dropped, not counted as a loss
    assert rows["retrain (noise floor, leave-one-out target)"].split("|")[5].strip() == "-"  # outside Holm
    assert "Holm-adjusted over the 3 rows other than the retrain" in text
    assert "smallest possible sign-flip p is 0.125, so no row can reach 0.05" in text  # 2 / 2^4 (flaky: 2/2^3)
    assert "by 6% with 3 retrains" in text
    assert methods.paired_section(results, reps[:1], retrains=3) == []  # one repetition: nothing to pair


def test_a_method_is_compared_with_the_original_only_where_the_repetitions_allow(monkeypatch):
    """The label said NOT TOLD FROM THE ORIGINAL for a method measurably worse than it, and nothing for a row with
    one repetition in a table of two (reviews of 2026-12-07). With the recalibrated original in the rows, that is
    the baseline."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import methods

    def rep(gaps):
        return {"rows": {name: {"gap": g} for name, g in gaps.items()}}

    reps = [rep({"original": 5.0, "same": 5.0 + d, "worse": 8.0 + d, "better": 1.0 + d, "once": 2.0})
            for d in (0.0, 0.1, -0.1)]
    del reps[1]["rows"]["once"], reps[2]["rows"]["once"]
    labels = {name: methods._as_original(name, reps) for name in ("same", "worse", "better", "once")}
    assert labels["same"].startswith(" (NOT TOLD FROM THE ORIGINAL, paired: ")
    assert labels["worse"].startswith(" (WORSE THAN THE ORIGINAL, paired: -3.00")
    assert labels["better"] == ""
    assert labels["once"] == " (one repetition: not compared with the original)"
    assert methods._as_original("same", reps[:1]) == ""  # a one-repetition table: nothing to compare
    for r, g in zip(reps, (1.0, 1.1, 0.9), strict=True):  # the recalibrated original, when present, is the baseline
        r["rows"][methods.RECALIBRATED] = {"gap": g}
    assert methods._as_original("better", reps).startswith(" (NOT TOLD FROM THE ORIGINAL")


def test_a_confirmatory_table_says_which_repetitions_and_data_draw_it_used(monkeypatch):
    """A confirmatory run takes fresh repetition seeds (--first-repetition) and a fresh training/test draw
    (--data-seed): the table must say so, or it reads as the earlier table's seeds and test set."""
    import json

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import methods

    saved = json.loads((REPO / "benchmarks/results/methods_fashion_mnist_bnrecal.json").read_text())
    text = methods.markdown(saved["results"], saved["repetitions"], {**saved["meta"], "first_repetition": 5,
                                                                     "data_seed": 1})
    assert "3 repetitions (i = 5..7), each with its own original seed" in text
    assert "training and test subsets drawn with data seed 1." in text
    plain = methods.markdown(saved["results"], saved["repetitions"], saved["meta"])
    assert "3 repetitions, each with its own" in plain and "data seed" not in plain
