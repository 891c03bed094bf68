"""Method sweeps (`unlearn sweep`, the `method-sweep` flow, tasks/sweep.py): planning and its errors,
a sweep fanned out over a 2-worker local Dask cluster that reproduces sequential in-process results
exactly, its MLflow runs, and that it promotes nothing and leaves the ledger alone."""

import json

import pytest
from conftest import FAST

# Two cheap candidates: finetune (1 epoch on the retain set) and AMUN (1 epoch, small probe).
SWEEP = {**FAST, "unlearn": {"method": "finetune", "escalation": ["amun", "retrain"], "methods": {
    "finetune": {"epochs": 1, "batch_size": 64}, "amun": {"epochs": 2, "batch_size": 64, "probe_size": 20}}},
    "gate": {"min_samples": 10}}  # the sweep's 10 forget samples are tested (not refused up front)
# Everything that must match between the Dask run and the sequential one (timings and run ids may not).
COMPARED = ("method", "kwargs", "label", "verdict", "error", "failures", "metrics", "checks", "max_abs_gap",
            "max_gap_metric", "model_digest")


def _submit(root, request_id, ids, subject="alice@example.com"):
    from flows.cli import submit_request

    submit_request(root, {"request_id": request_id, "sample_ids": ids,
                          "received_at": "2026-11-24T10:00:00Z", "reason": "gdpr_erasure",
                          "subject_ref": subject})


def _plan(root, methods=None, overrides=None):
    from tasks.project import load_project
    from tasks.sweep import plan_sweep

    return plan_sweep(load_project(root), methods, overrides)


def test_default_plan_is_the_ladder_without_retrain_and_grids_cross_per_method(make_project):
    root = make_project(SWEEP)
    plan = _plan(root)
    assert [(c["method"], c["kwargs"]) for c in plan] == [
        ("finetune", {"epochs": 1, "batch_size": 64}), ("amun", {"epochs": 2, "batch_size": 64, "probe_size": 20})]
    plan = _plan(root, ["amun", "scrub", "amun"],
                 ["amun.epochs=3,5", "amun.lr=1e-3,0.02", "scrub.lr_decay_epochs=[3,4],[2]"])
    assert [c["label"] for c in plan] == [
        "amun(epochs=3, lr=0.001)", "amun(epochs=3, lr=0.02)", "amun(epochs=5, lr=0.001)", "amun(epochs=5, lr=0.02)",
        "scrub(lr_decay_epochs=[3, 4])", "scrub(lr_decay_epochs=[2])"]
    assert plan[0]["kwargs"] == {"epochs": 3, "lr": 0.001, "batch_size": 64, "probe_size": 20}  # 1e-3: a float
    assert [c["index"] for c in plan] == [1, 2, 3, 4, 5, 6]
    assert len(_plan(root, ["amun"], ["amun.epochs=3,3"])) == 1  # duplicates run once


@pytest.mark.parametrize(("methods", "overrides", "message"), [
    (["forgetful"], None, "unknown unlearning method 'forgetful'; valid names: amun, amun_salun"),
    (["retrain"], None, "'retrain' is the gate's target"),
    (["amun"], ["amun.epoch=3"], "method 'amun' has no parameter(s) epoch; valid:"),
    (["amun"], ["amun.epochs"], "expected METHOD.KEY=V1,V2"),
    (["amun"], ["epochs=3"], "expected METHOD.KEY=V1,V2"),
    (["amun"], ["amun.epochs=3,"], "empty value"),
    (["amun"], ["amun.epochs=[3"], "is not a YAML value"),
    (["amun"], ["amun.epochs=3", "amun.epochs=5"], "amun.epochs is given twice"),
    (["amun"], ["finetune.epochs=3"], "'finetune' is not among the swept methods (amun); add --method finetune"),
])
def test_plan_errors_name_the_problem(make_project, methods, overrides, message):
    from unlearn.config import ConfigError

    with pytest.raises(ConfigError) as info:
        _plan(make_project(SWEEP), methods, overrides)
    assert message in str(info.value)


def test_a_sweep_needs_a_pending_deletion(make_project):
    from tasks.project import PipelineError, load_project
    from tasks.sweep import plan_sweep, prepare_sweep

    project = load_project(make_project(SWEEP))
    with pytest.raises(PipelineError, match="no deletion request is pending"):
        prepare_sweep(project, plan_sweep(project))
    assert not project.models_dir.exists() and not project.reports_dir.exists()


def test_a_sweep_with_nothing_pending_is_refused_before_the_stages_run(make_project, capsys):
    """The refusal came after ingest, prepare, the baseline and the reference models: minutes of training and a
    registered baseline on a fresh project (review of 2026-12-07)."""
    from flows.cli import main
    from tasks.project import PipelineError, load_project
    from tasks.sweep import require_something_to_sweep

    root = make_project(SWEEP)
    assert main(["--root", str(root), "sweep"]) == 2
    assert "nothing to sweep: no deletion request is pending" in capsys.readouterr().err
    assert not (root / "data" / "store").exists() and not (root / "data" / "models").exists()  # nothing ran
    project = load_project(root)
    project.incoming_dir.mkdir(parents=True)
    (project.incoming_dir / ".gitkeep").write_text("")
    (project.incoming_dir / "upload.json.part").write_text("{")  # an upload in progress is not a request yet
    with pytest.raises(PipelineError, match="nothing to sweep"):
        require_something_to_sweep(project)
    (project.incoming_dir / "r.json").write_text("{}")  # ingest decides what it is: the stages run
    require_something_to_sweep(project)


def test_cli_bad_sweep_input_exits_2_with_the_reason(make_project, capsys):
    from flows.cli import main

    root = make_project(SWEEP)
    for args, message in [(["--method", "nope"], "unknown unlearning method 'nope'"),
                          (["--set", "amun.epoch=1"], "no parameter(s) epoch"),
                          (["--set", "amun"], "expected METHOD.KEY=V1,V2")]:
        assert main(["--root", str(root), "sweep", *args]) == 2
        assert message in capsys.readouterr().err
    assert not (root / "data").exists()  # refused before anything ran


@pytest.mark.e2e
def test_sweep_on_a_dask_cluster_matches_sequential_and_promotes_nothing(prefect_server, champion_project, capsys):
    """The sweep through `unlearn sweep` on a 2-worker local Dask cluster gives exactly the
    candidates' results that sequential, in-process runs give; it logs a parent MLflow run with a
    nested run per candidate (no sample ids), and leaves the champion, the registry and the ledger as
    they were."""
    import mlflow
    import torch
    from threadpoolctl import threadpool_limits

    from flows.cli import main
    from tasks.project import load_project
    from tasks.stage.ingest import run_ingest
    from tasks.stage.prepare import run_prepare
    from tasks.sweep import cleanup_sweep, plan_sweep, prepare_sweep, run_candidate
    from unlearn.data import SampleStore

    root, _ = champion_project({**SWEEP, "orchestration": {"task_runner": "dask", "max_workers": 2,
                                                           "dask_address": None}})  # champion v1; nothing pending
    project = load_project(root)
    forget = sorted(SampleStore(project.store_dir).split_ids("train")[:10].tolist())
    _submit(root, "R-1", forget)
    run_ingest(project)
    run_prepare(project)
    ledger_before = project.ledger_path.read_bytes()
    states_before = {name: (project.state_dir / name).read_bytes() for name in ("unlearn.json", "promote.json")}

    # CPU results are bit-identical only at the same thread counts: Dask workers run torch and BLAS
    # single-threaded (their nanny sets OMP_NUM_THREADS=1), so this process does too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            code = main(["--root", str(root), "sweep", "--set", "amun.epochs=1"])
            out = capsys.readouterr().out
            assert code == 0, out
            prepared = prepare_sweep(project, plan_sweep(project, None, ["amun.epochs=1"]))
            expected = {c["index"]: run_candidate(project, c) for c in prepared["candidates"]}
            # a method that raises (here on a bad value) is that candidate's error, not the sweep's
            broken = run_candidate(project, {**prepared["candidates"][0], "kwargs": {"epochs": "x"}})
            cleanup_sweep(project)
    finally:
        torch.set_num_threads(threads)

    assert broken["verdict"] == "error" and broken["metrics"] == {}
    assert broken["error"].startswith("MethodArgumentError: method 'finetune': epochs expects int")  # a TypeError
    report = json.loads((project.reports_dir / "sweep.json").read_text())
    assert [c["label"] for c in prepared["candidates"]] == ["finetune", "amun(epochs=1)"]
    assert sorted(c["index"] for c in report["candidates"]) == [1, 2]
    for got in report["candidates"]:
        want = expected[got["index"]]
        assert got["verdict"] in ("pass", "fail", "inconclusive") and got["metrics"] and got["checks"], got
        assert json.dumps({k: got[k] for k in COMPARED}, sort_keys=True) == json.dumps(
            {k: want[k] for k in COMPARED}, sort_keys=True), got["label"]
    assert report["original"] == prepared["original"] and report["retrain"] == prepared["retrain"]
    assert report["n_forget"] == 10 and len(report["reference_models"]) == 2
    # ranked: passing first, then the smallest worst gap
    ranks = [(c["verdict"] != "pass", c["max_abs_gap"]) for c in report["candidates"]]
    assert ranks == sorted(ranks)
    table = (project.reports_dir / "sweep.md").read_text()
    assert "| 1 | " in table and "amun(epochs=1)" in table and "retrain (the gate target)" in table
    assert table in out and "report: " in out and str(project.reports_dir / "sweep.json") in out

    # MLflow: one parent run (stage=sweep) and one nested run per candidate; no sample or subject ids
    mlflow.set_tracking_uri(project.tracking_uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(project.params.registry.experiment)
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'sweep'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == report["run_id"]]
    assert [r.info.run_id for r in parents] == [report["run_id"]] and len(children) == 2
    assert {(r.data.params["method"], r.data.tags["verdict"]) for r in children} == {
        (c["method"], c["verdict"]) for c in report["candidates"]}
    amun_run = next(r for r in children if r.data.params["method"] == "amun")
    assert amun_run.data.params["method_epochs"] == "1" and "gap.forget_acc" in amun_run.data.metrics
    assert parents[0].data.tags["forget_ids_digest"].startswith("hmac-sha256:")
    logged = json.dumps([[r.data.params, r.data.tags] for r in runs]) + json.dumps(report) + table
    assert "digits-" not in logged and "alice" not in logged

    # nothing promoted or registered; the ledger, the unlearn state and the models are as they were
    name = project.params.registry.model_name
    assert client.get_registered_model(name).aliases == {"champion": 1}
    assert [str(mv.version) for mv in client.search_model_versions(f"name = '{name}'")] == ["1"]
    assert project.ledger_path.read_bytes() == ledger_before
    assert {name: (project.state_dir / name).read_bytes() for name in states_before} == states_before
    assert not list(project.models_dir.glob("candidate-*.pt"))  # the champion copy is gone
    # no candidate's signals were cached: original, retrain and the 2 references only
    assert len(list(project.signals_dir.glob("*.npz"))) == 4
