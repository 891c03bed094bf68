"""Stages with nothing to do decide so from the ledger and the state files, without opening the registry.

`dvc repro` starts one process per stage, and most runs find no request: a promote or purge that imported MLflow
and opened its store to learn that cost about 3 s a process. These tests fail if either opens it again: a
project without a registry file would get one.
"""

from __future__ import annotations

import pytest


def test_promote_with_no_finished_escalation_leaves_the_registry_closed(make_project):
    from tasks.project import load_project
    from tasks.stage.promote import run_promote
    from tasks.stage.state import NOTHING_PENDING, Escalation, write_escalation

    project = load_project(make_project(registry=False))
    write_escalation(project, Escalation(NOTHING_PENDING))

    assert run_promote(project) == {"status": "nothing_to_promote"}
    assert not (project.home / "mlflow.db").exists()


def test_purge_with_no_completed_batch_leaves_the_registry_closed(make_project):
    from tasks.lifecycle import run_purge
    from tasks.project import load_project

    project = load_project(make_project(registry=False))

    result = run_purge(project)
    assert result["status"] == "nothing_to_purge" and result["retired"] == result["batches_closed"] == []
    assert not (project.home / "mlflow.db").exists()


def test_promote_still_finishes_a_promotion_a_crash_interrupted(make_project, monkeypatch):
    """The shortcut never skips recovery: a batch left ``promoting`` opens the registry to move the alias."""
    import pytest

    from tasks import tracking
    from tasks.project import load_project
    from tasks.stage.promote import run_promote
    from tasks.stage.state import NOTHING_PENDING, Escalation, write_escalation
    from unlearn.requests import Ledger

    class Opened(Exception):
        pass

    def setup(project):
        raise Opened

    project = load_project(make_project(registry=False))
    write_escalation(project, Escalation(NOTHING_PENDING))
    monkeypatch.setattr(Ledger, "batches_with_status",
                        lambda self, status: ["B-1"] if status == Ledger.PROMOTING else [])
    monkeypatch.setattr(tracking, "setup", setup)
    with pytest.raises(Opened):
        run_promote(project)


def test_looking_up_a_stage_imports_only_its_own_module():
    """The catalog resolves names lazily: ingest, purge and certify need no model, and their processes under
    `dvc repro` no longer load torch (about 1 s each) because the catalog imported every stage."""
    import subprocess
    import sys

    from tasks.stage.catalog import STAGE_FUNCTIONS, STAGES

    assert set(STAGES) < set(STAGE_FUNCTIONS) and all(callable(STAGE_FUNCTIONS[name]) for name in STAGE_FUNCTIONS)
    probe = ("import sys; from tasks.stage.catalog import STAGE_FUNCTIONS as S; "
             "[S[n] for n in ('ingest', 'purge', 'certify')]; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_catalog_behaves_as_a_mapping_of_every_stage(monkeypatch):
    from tasks.stage import catalog
    from tasks.stage.ingest import run_ingest

    functions = catalog.STAGE_FUNCTIONS
    assert "ingest" in functions and "nope" not in functions and len(functions) == len(list(functions))
    monkeypatch.setitem(functions, "ingest", print)
    assert functions["ingest"] is print
    monkeypatch.undo()
    assert functions["ingest"] is run_ingest and not functions._set  # undone: looked up afresh again
    with pytest.raises(TypeError, match="cannot be removed"):
        functions.clear()
    with pytest.raises(KeyError):
        functions["nope"] = print
