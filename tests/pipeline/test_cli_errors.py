"""Bad input through the `unlearn` command: a clear message and a nonzero exit."""

import subprocess
import sys

import pytest
import yaml
from conftest import run_stages


def _unlearn(root, *args):
    return subprocess.run([sys.executable, "-m", "flows.cli", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=300)


def _edit(root, mutate):
    params = yaml.safe_load((root / "params.yaml").read_text())
    mutate(params)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def test_unknown_params_key_is_named(make_project):
    root = make_project()
    _edit(root, lambda p: p["train"].update({"epoch": 3}))
    result = _unlearn(root, "stage", "prepare")
    assert result.returncode == 2
    assert "unknown key(s) in train: epoch" in result.stderr
    assert not (root / "data" / "store").exists()  # nothing written


def test_unknown_method_lists_valid_names(make_project):
    root = make_project()
    _edit(root, lambda p: p["unlearn"].update({"method": "forgetful"}))
    result = _unlearn(root, "stage", "prepare")
    assert result.returncode == 2
    assert "unknown unlearning method 'forgetful'" in result.stderr and "amun" in result.stderr


def test_bad_method_argument_is_named(make_project):
    root = make_project()
    _edit(root, lambda p: p["unlearn"]["methods"].setdefault("amun", {}).update({"epoch": 3}))
    result = _unlearn(root, "stage", "ingest")
    assert result.returncode == 2 and "no parameter(s) epoch" in result.stderr


def test_unlearn_without_a_baseline_is_a_clear_error(make_project):
    from tasks.project import load_project
    from unlearn.config import load_params
    from unlearn.data import load_source
    from unlearn.references import reference_pool_mask

    root = make_project()
    # a production training sample (not in the reference pool: deleting a pool sample needs no unlearning)
    params = load_params(root / "params.yaml")
    source = load_source(params.data)
    train = source.ids[source.splits == "train"]
    sample = str(train[~reference_pool_mask(train, params.verify.references.pool_fraction, params.seed)][0])
    from flows.submit import submit_request

    submit_request(root, {"request_id": "R-1", "sample_ids": [sample], "subject_ref": "x",
                          "received_at": "2026-11-24T10:00:00Z", "reason": "gdpr_erasure"})
    # submit, ingest and prepare in-process (what the commands run); the command under test in its own process
    run_stages(load_project(root), "ingest", "prepare")
    result = _unlearn(root, "stage", "unlearn")
    assert result.returncode == 2 and "no champion" in result.stderr


def test_loading_a_project_checks_its_names_against_the_registries(make_project):
    """Every stage, flow and command opens the project through load_project: the check cannot be forgotten."""
    from tasks.project import load_project
    from unlearn.config import ConfigError

    root = make_project()
    _edit(root, lambda p: p["unlearn"].update({"method": "forgetful"}))
    with pytest.raises(ConfigError, match="unknown unlearning method 'forgetful'"):
        load_project(root)
    # Commands that run no stage (request submit, status, certificates) opt out explicitly.
    assert load_project(root, check_registries=False).params.unlearn.method == "forgetful"


def test_refused_metric_names_keep_the_fpr():
    from flows.summary import refused_metric_name

    assert refused_metric_name("mia.lira_offline.tpr_at_fpr_0.001") == "tpr_at_fpr_0.001"
    assert refused_metric_name("mia.rmia_offline.tpr_at_fpr_0.01") == "tpr_at_fpr_0.01"
    assert refused_metric_name("test_acc") == "test_acc"


def test_a_model_that_does_not_fit_the_data_fails_before_prepare_writes_anything(make_project, tmp_path,
                                                                                 monkeypatch):
    """The shape check ran after the store was written: a wrong factory left 4.8 MB that DVC does not track
    (README review)."""
    from conftest import run_stages

    from tasks.project import load_project
    from unlearn.config import ConfigError

    (tmp_path / "wrong_head_models.py").write_text(
        "from torch import nn\n\n\ndef three(in_channels, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    project = load_project(make_project({"model": {"name": "wrong_head_models:three"}}))
    with pytest.raises(ConfigError, match=r"outputs of shape \(3,\).*expected \(10,\)"):
        run_stages(project, "ingest", "prepare")
    assert not project.store_dir.exists() and not (project.root / "data" / "quarantine").exists()


def test_the_registry_pin_knows_a_file_by_any_spelling_and_status_says_when_it_is_another(make_project, tmp_path,
                                                                                           monkeypatch, capsys):
    """The pin compared URIs as text: the project's own mlflow.db through a symlinked path was refused, and the
    message mangled sqlite:////abs into sqlite://abs; `unlearn status` in the wrong shell said 'no champion' and
    exited 0 (fourth review)."""
    from flows.cli import main
    from tasks.project import PipelineError, check_registry, load_project, pin_registry

    project = load_project(make_project())
    pin_registry(project)
    assert project.registry_pin.read_text().splitlines()[0] == "the project's own mlflow.db"
    link = tmp_path / "link"
    link.symlink_to(project.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{link}/mlflow.db")
    check_registry(project)  # the same file
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/other.db")
    with pytest.raises(PipelineError, match=f"would use sqlite:///{tmp_path}/other.db "):
        check_registry(project)
    capsys.readouterr()
    assert main(["--root", str(project.root), "status"]) == 2
    out = capsys.readouterr().out
    assert "registered in the project's own mlflow.db" in out and "champion:\n  not read" in out


def test_a_dvc_temporary_checkout_uses_the_registry_of_the_project_that_queued_it(make_project, monkeypatch):
    """`dvc exp run --queue` runs in <project>/.dvc/tmp/exps/<dir>/, a copy holding the project's registry pin:
    the README's MLFLOW_TRACKING_URI (the project's mlflow.db) was refused as "another store", so every queued
    sweep failed at ingest; without it the copy would have opened a fresh, empty registry of its own."""
    import shutil

    from tasks.project import PipelineError, check_registry, load_project, pin_registry

    home = load_project(make_project())
    pin_registry(home)
    copy = home.root / ".dvc" / "tmp" / "exps" / "tmpabc123"
    shutil.copytree(home.root, copy, ignore=shutil.ignore_patterns(".dvc", ".git"))
    checkout = load_project(copy, check_registries=False)
    assert checkout.home == home.root.resolve() and home.home == home.root
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert checkout.tracking_uri == f"sqlite:///{home.root.resolve() / 'mlflow.db'}"
    check_registry(checkout)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home.root}/mlflow.db")  # the README's sweep recipe
    check_registry(checkout)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{copy}/mlflow.db")  # the copy's own file: a new store
    with pytest.raises(PipelineError, match="a second registry"):
        check_registry(checkout)
    assert checkout.artifact_root == home.root.resolve() / "mlartifacts"  # not deleted with the checkout (review)
    # a project in a folder of its Git repository: DVC runs it in <project>/.dvc/tmp/exps/<dir>/<folder>
    nested = copy / "sub"
    shutil.copytree(home.root, nested, ignore=shutil.ignore_patterns(".dvc", ".git"))
    assert load_project(nested, check_registries=False).home == home.root.resolve()
    # a folder that merely sits under .dvc/tmp/exps of something that is not a project stays its own home
    stray = home.root.parent / "elsewhere" / ".dvc" / "tmp" / "exps" / "x"
    shutil.copytree(home.root, stray, ignore=shutil.ignore_patterns(".dvc", ".git"))
    assert load_project(stray, check_registries=False).home == stray


def _rename(root, name):
    import yaml

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["registry"]["model_name"] = name
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_a_renamed_registered_model_is_refused_before_any_stage_runs(champion_project, capsys):
    """Retirement, the split check and certificates read the versions of registry.model_name only: renaming it
    left the old name's versions, trained on samples deleted later, unretired (left alone in four notes)."""
    from conftest import FAST

    from flows.cli import main
    from tasks.project import load_project

    root, _ = champion_project(FAST)
    project = load_project(root)
    assert project.registry_pin.read_text().splitlines()[1:] == ["model_name: unlearn-classifier"]
    pin = project.registry_pin.read_text()
    _rename(root, "renamed-classifier")
    capsys.readouterr()
    assert main(["--root", str(root), "stage", "prepare"]) == 2
    err = capsys.readouterr().err
    assert "registered as 'unlearn-classifier'" in err and "'renamed-classifier'" in err
    assert "rename_registered_model" in err and "Nothing was changed" in err
    assert main(["--root", str(root), "status"]) == 2
    assert "another store, or another model name" in capsys.readouterr().out
    # A pin from before the name was recorded takes the configured name at the next stage that opens the registry,
    # when versions are registered under it; from then on a rename is refused. (It cannot tell a rename made before
    # that from a move to a new registry or a second project in a shared experiment: README, left alone.)
    project.registry_pin.write_text(pin.splitlines()[0] + "\n")
    _rename(root, "unlearn-classifier")
    assert main(["--root", str(root), "stage", "train"]) == 0  # the champion exists: skipped
    assert project.registry_pin.read_text() == pin
    _rename(root, "renamed-classifier")
    assert main(["--root", str(root), "stage", "train"]) == 2


def test_no_name_is_pinned_before_a_version_is_registered_and_mlflow_refused_names_are_config_errors(make_project,
                                                                                                       capsys):
    """The name was pinned at the first registry use: a first training that failed (here: a name MLflow refuses)
    pinned a name nothing was registered under, and correcting it was refused (review). It is pinned when a
    registration starts."""
    from flows.cli import main
    from tasks import tracking
    from tasks.project import load_project

    root = make_project()
    tracking.setup(load_project(root))  # the registry opened, nothing registered
    assert load_project(root).registry_pin.read_text().splitlines() == ["the project's own mlflow.db"]
    _rename(root, "corrected-classifier")
    load_project(root)  # no name pinned: nothing refused
    for bad in ("team/classifier", "team:classifier", "it's", "back\\", "unlearn\x85classifier",
                "unlearn\u2028classifier"):
        _rename(root, bad)
        capsys.readouterr()
        assert main(["--root", str(root), "stage", "prepare"]) == 2
        assert "registry.model_name" in capsys.readouterr().err


def test_a_second_project_in_a_shared_experiment_trains_under_its_own_name(champion_project, make_project,
                                                                          monkeypatch):
    """Team mode: one registry and one experiment, a model name per project. The adoption of an older pin's name
    read every baseline run of the shared experiment, so the second project was refused, told to take the first
    one's name (and so its champion) (second review)."""
    from conftest import FAST

    from tasks.project import load_project

    first, _ = champion_project(FAST)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{first}/mlflow.db")
    second = load_project(make_project({**FAST, "registry": {"experiment": "unlearn",
                                                               "model_name": "second-classifier"}}, name="second"))
    result = run_stages(second, "ingest", "prepare", "train")
    assert not result["train"]["skipped"] and result["train"]["version"] == "1"
    assert second.registry_pin.read_text().splitlines()[1] == "model_name: second-classifier"
    assert load_project(first).registry_pin.read_text().splitlines()[1] == "model_name: unlearn-classifier"


def test_a_damaged_salt_and_a_bad_override_are_named_with_exit_2(make_project, capsys):
    """A truncated salt gave a traceback and exit 1; a bad key in unlearn.overrides was blamed on amun_salun in
    unlearn.methods (fourth review)."""
    import yaml

    from flows.cli import main

    root = make_project()
    (root / "data" / "requests").mkdir(parents=True, exist_ok=True)
    (root / "data" / "requests" / ".salt").write_text("")
    assert main(["--root", str(root), "request", "submit", "--request-id", "R-1", "--sample-ids", "digits-0001",
                 "--reason", "gdpr_erasure", "--subject-ref", "s"]) == 2
    assert "hashing salt" in capsys.readouterr().err
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["unlearn"]["overrides"] = {"amun": {"nope": 1}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert main(["--root", str(root), "stage", "prepare"]) == 2
    assert "unlearn.overrides.amun" in capsys.readouterr().err


@pytest.mark.parametrize("one, other", [
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000/"), ("https://MLflow.internal", "https://mlflow.internal:443/"),
    ("http://user:secret@h:8080/api", "http://h:8080/api/"), ("databricks", "databricks"),
])
def test_one_server_spelled_two_ways_is_one_store(tmp_path, monkeypatch, one, other):
    """A trailing '/', a default port or credentials made the same server 'another store' (fifth review)."""
    from tasks.project import Project

    project = Project(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", one)
    first = project.registry_identity
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    assert project.registry_identity == first and "secret" not in first
    monkeypatch.chdir(tmp_path.parent)  # a named store does not depend on the working directory
    assert project.registry_identity == first


def test_a_bad_key_is_blamed_where_it_is_written(make_project, capsys):
    import yaml

    from flows.cli import main

    root = make_project()
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["unlearn"]["methods"]["finetune"] = {"bogus": 1}
    params["unlearn"]["overrides"] = {"finetune": {"epochs": 1}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert main(["--root", str(root), "stage", "prepare"]) == 2
    err = capsys.readouterr().err
    assert "unlearn.methods" in err and "unlearn.overrides" not in err and "bogus" in err


def test_a_method_default_the_profile_shadows_is_logged_once_before_any_work(make_project, caplog, monkeypatch):
    import logging

    from tasks.project import load_project
    from tasks.stage import checks

    monkeypatch.setattr(checks, "_WARNED", set())
    root = make_project()
    _edit(root, lambda p: p["unlearn"]["methods"].update({"finetune": {"lr": 1e-7}}))
    with caplog.at_level(logging.WARNING, logger="unlearn.pipeline"):
        load_project(root, check_registries=True)
        load_project(root, check_registries=True)  # every Prefect task loads the project: one warning, not many
    message = ("params.yaml: unlearn.methods.finetune.lr (1e-07) is shadowed by the 'digits/small_cnn' profile "
               "(0.6); set it in unlearn.overrides to win")
    assert caplog.messages.count(message) == 1


def test_the_command_exits_with_mains_status_and_freezes_the_collector_only_there(monkeypatch):
    """The installed ``unlearn`` is :func:`flows.cli.console`: main's exit status, then the live objects frozen out
    of the interpreter's final collections (benchmarks/results/cli_exit.md). ``main`` itself leaves the collector
    alone, so a process that calls it and goes on (these tests) never freezes its heap."""
    import gc
    import importlib.metadata

    from flows import cli

    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "unlearn"]
    assert script.value == "flows.cli:console"
    calls = []
    monkeypatch.setattr(cli, "main", lambda: calls.append("main") or 3)
    monkeypatch.setattr(gc, "collect", lambda *args: calls.append("collect"))  # (this process's heap left as it is)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    threshold = gc.get_threshold()
    gc.set_threshold(700, 10, 10)  # CPython's defaults (this suite's conftest raised the last)
    try:
        with pytest.raises(SystemExit) as exited:
            cli.console()
        assert exited.value.code == 3 and calls == ["main", "collect", "freeze"]
        assert gc.get_threshold() == (700, 10, 100)
    finally:
        gc.set_threshold(*threshold)


def test_demo_timings_into_a_missing_folder_are_refused_before_the_runs(tmp_path, capsys):
    """The file was written after both pipeline runs: a missing folder lost them with a traceback and replaced the
    demo's verdict exit (review of 2026-12-07)."""
    from flows.cli import main

    for out in (tmp_path / "no" / "t.json", tmp_path):
        assert main(["--root", str(tmp_path / "demo"), "demo", "--timings-out", str(out)]) == 2
        assert "--timings-out: " in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()  # nothing ran
