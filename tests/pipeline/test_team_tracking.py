"""Team tracking: two pipelines at once against one `mlflow server` (PostgreSQL backend store,
proxied artifact store) started by scripts/mlflow-server.sh, through MLFLOW_TRACKING_URI.

Needs PostgreSQL on 127.0.0.1:5432 that the current user can create databases on (trust auth, as
in CI); the test creates its own uniquely named database and drops it afterwards.
"""

from __future__ import annotations

import contextvars
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import FAST, REPO

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, os.environ.get("UNLEARN_PG_USER", "postgres")


def _postgres_reachable() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=2):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not _postgres_reachable(), reason=f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture
def mlflow_server(tmp_path):
    """A fresh database and an `mlflow server` on a free port, both gone afterwards.

    Yields:
        (tracking URI, artifacts destination directory).
    """
    db = f"unlearn_test_{uuid.uuid4().hex[:12]}"
    port = _free_port()
    artifacts = tmp_path / "server-artifacts"
    log, out = tmp_path / "mlflow-server.log", tmp_path / "mlflow-server.out"
    env = {**os.environ, "UNLEARN_PG_DB": db, "UNLEARN_PG_HOST": PG_HOST, "UNLEARN_PG_PORT": str(PG_PORT),
           "UNLEARN_PG_USER": PG_USER, "UNLEARN_MLFLOW_WORKERS": "2", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_BACKEND_STORE_URI", None)
    # Files, not pipes: the server writes its access log to stdout and would block on a full pipe.
    with log.open("w") as err, out.open("w") as stdout:
        proc = subprocess.Popen(["bash", str(REPO / "scripts" / "mlflow-server.sh"), "--port", str(port),
                                 "--artifacts", str(artifacts)], env=env, cwd=tmp_path, stdout=stdout,
                                stderr=err, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow-server.sh exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer /health in 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        # the script tells the user what to export
        assert out.read_text().splitlines()[0] == f"export MLFLOW_TRACKING_URI={uri}"
        yield uri, artifacts
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the script's own session: mlflow and its workers
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        _admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _lifecycle(root: Path) -> tuple[dict, dict]:
    """Baseline run, one deletion request, second run: what one team member's pipeline does."""
    from flows.cli import submit_request
    from flows.pipeline import pipeline_flow
    from tasks.project import load_project
    from unlearn.data import SampleStore

    first = pipeline_flow(root=str(root))
    train_ids = SampleStore(load_project(root).store_dir).split_ids("train")
    submit_request(root, {"request_id": "R-1", "sample_ids": sorted(train_ids[:5].tolist()),
                          "received_at": "2026-11-24T10:00:00Z", "reason": "gdpr_erasure", "subject_ref": "x"})
    second = pipeline_flow(root=str(root))
    return first, second


def _files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []


def test_team(prefect_server, make_project, mlflow_server, monkeypatch):
    """Two pipelines share one tracking server at once, and lose nothing."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from tasks import tracking
    from tasks.project import PipelineError, load_project

    uri, server_artifacts = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    teams = {}
    for team in ("a", "b"):
        # one shared experiment (both pipelines create it at the same moment), one model each
        root = make_project({**FAST, "unlearn": {**FAST["unlearn"], "method": "retrain", "escalation": []},
                             "registry": {"experiment": "team-unlearn", "model_name": f"team-{team}-classifier"}},
                            name=team, registry=False)  # the team's registry is the server's
        teams[team] = load_project(root)

    with ThreadPoolExecutor(max_workers=2) as pool:  # each thread gets its own copy of the Prefect test settings
        futures = {team: pool.submit(contextvars.copy_context().run, _lifecycle, project.root)
                   for team, project in teams.items()}
        results = {team: future.result() for team, future in futures.items()}

    client = tracking.setup(teams["a"])
    experiment = client.get_experiment_by_name("team-unlearn")
    assert experiment.artifact_location == f"mlflow-artifacts:/{experiment.experiment_id}"
    exp_dir = server_artifacts / experiment.experiment_id
    runs = {}
    for team, project in teams.items():
        first, second = results[team]
        assert first["train"]["version"] == "1", (team, first)
        assert second["ingest"]["accepted"] == 1 and second["promote"]["status"] == "promoted", (team, second)
        name = project.params.registry.model_name
        assert [mv.version for mv in tracking.all_versions(project, client)] == ["1", "2"]
        # (the REST store gives alias targets as strings, the SQLite store as ints)
        assert {k: str(v) for k, v in client.get_registered_model(name).aliases.items()} == {"champion": "2"}
        # the new champion: registered with its lineage, its artifacts on the server, loadable through it
        tags = client.get_model_version(name, "2").tags
        assert tags["parent_version"] == "1" and tags["method"] == "retrain" and tags["verdict"] == "pass"
        champion = client.get_logged_model(tags["model_id"])
        assert champion.artifact_location.startswith(f"mlflow-artifacts:/{experiment.experiment_id}/models/")
        assert any(p.name == "state_dict.pt" for p in _files(exp_dir / "models" / tags["model_id"]))
        model = tracking.load_model(project, client, "2")
        assert sum(p.numel() for p in model.parameters()) > 0
        # the baseline trained on the deleted samples: retired, its artifacts deleted through the server
        tombstone = client.get_model_version(name, "1").tags
        assert tombstone["retired"] == "true" and tombstone["artifacts_deleted"] == "true"
        retired = client.get_logged_model(tombstone["model_id"])
        assert get_artifact_repository(retired.artifact_location).list_artifacts() == []
        assert _files(exp_dir / "models" / tombstone["model_id"]) == []
        with pytest.raises(PipelineError, match="retired"):
            tracking.load_model(project, client, "1")
        # nothing went to the project's local artifact root: the server holds it all
        assert not project.artifact_root.exists()
        runs[team] = [client.get_run(client.get_model_version(name, v).run_id) for v in ("1", "2")]
        for run in runs[team]:
            assert run.info.experiment_id == experiment.experiment_id and run.info.status == "FINISHED"
            assert run.data.metrics and run.data.params

    # Nothing lost to the concurrency: the two pipelines did the same work, so each of their runs
    # holds the same metric, param and artifact names as its twin from the other pipeline.
    for run_a, run_b in zip(runs["a"], runs["b"], strict=True):
        assert set(run_a.data.metrics) == set(run_b.data.metrics)
        assert set(run_a.data.params) == set(run_b.data.params)
        listed = [sorted(f.path for f in client.list_artifacts(r.info.run_id)) for r in (run_a, run_b)]
        assert listed[0] == listed[1]
    all_runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert len(all_runs) % 2 == 0 and all(r.info.status == "FINISHED" for r in all_runs), \
        [(r.info.run_name, r.info.status) for r in all_runs]

    # A shell that forgot MLFLOW_TRACKING_URI trained and registered a second champion in a new local mlflow.db and
    # exited 0 (review of 2026-12-05): the project now names its registry, and refuses any other before any work.
    from flows.cli import main

    root = teams["a"].root
    assert (root / "data" / ".registry").read_text().strip().startswith("http://127.0.0.1:")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(PipelineError, match="registered in http://127.0.0.1:.*MLFLOW_TRACKING_URI is unset"):
        load_project(root)
    assert main(["--root", str(root), "run"]) == 2
    assert not (root / "mlflow.db").exists()
