"""DVC remotes: a clean clone plus `dvc pull` gives back the same data version, on a local
directory remote and on S3 (a moto server on loopback), and purging reaches the S3 remote."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks import dvc_ops
from tasks.project import load_project
from tasks.purge import purge_deleted_data
from tasks.stage.ingest import run_ingest
from tasks.stage.prepare import run_prepare
from unlearn.data import SampleStore
from unlearn.requests import Ledger

BUCKET = "unlearn-test"


def _run(root, *args, env=None):
    result = subprocess.run(list(args), cwd=root, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result.stdout


def _dvc(root, *args):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return _run(root, sys.executable, "-m", "dvc", *args, env=env)


def _digests(store: Path) -> dict[str, str]:
    return {str(p.relative_to(store)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file()}


def _commit_and_clone(project, dest: Path) -> Path:
    """Commit what Git should hold (pipeline, lock, params, DVC config, small outputs) and clone it."""
    (project.root / ".gitignore").write_text("/.dvcstore/\n/mlflow.db\n/mlartifacts/\n/data/requests/.salt\n")
    _run(project.root, "git", "add", "-A")
    _run(project.root, "git", "commit", "-q", "-m", "data version")
    _run(dest.parent, "git", "clone", "-q", str(project.root), str(dest))
    return dest


def _version(project):
    """Prepare the store from the ledger, record it in DVC and push it; returns its data version."""
    run_prepare(project)
    dvc_ops.commit(project, "ingest", "prepare")
    dvc_ops.push(project)
    return dvc_ops.data_version(project)


def _delete(project, batch_id, count, seed):
    """Record a deletion batch of ``count`` train samples."""
    train = SampleStore(project.store_dir).split_ids("train")
    ids = sorted(np.random.default_rng(seed).choice(train, size=count, replace=False).tolist())
    ledger = Ledger(project.ledger_path)
    ledger.add_batch(batch_id, [f"R-{batch_id}"], ids, created_at="2026-11-24T10:00:00Z")
    ledger.save()


def _first_version(make_project, overrides=None):
    project = load_project(make_project(overrides))
    dvc_ops.ensure_repo(project)
    run_ingest(project)
    return project, _version(project)


@pytest.fixture
def s3_server(monkeypatch):
    """A moto S3 server on 127.0.0.1 (free port) with one bucket; fake credentials in the environment."""
    pytest.importorskip("dvc_s3")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=url)
    client.create_bucket(Bucket=BUCKET)
    try:
        yield url, client
    finally:
        server.stop()


def test_a_clean_clone_pulls_the_same_data_version_from_the_local_remote(make_project, tmp_path):
    project, version = _first_version(make_project)
    origin = _digests(project.store_dir)
    clone = _commit_and_clone(project, tmp_path / "clone")
    # The default remote is a directory inside the project (not in Git): a clone names it by path,
    # in its untracked .dvc/config.local (a shared directory remote would need nothing).
    _dvc(clone, "remote", "modify", "--local", "local", "url", str(project.root / ".dvcstore"))
    assert not (clone / "data" / "store").exists()
    _dvc(clone, "pull")
    assert _digests(clone / "data" / "store") == origin
    assert dvc_ops.data_version(load_project(clone)) == version
    assert "prepare" not in _dvc(clone, "status", "prepare")  # up to date
    # Rebuilding the store from the requests in the clone gives the same bytes and hash (CPU, no RNG drift).
    _dvc(clone, "repro", "--force", "--single-item", "prepare")
    assert _digests(clone / "data" / "store") == origin
    assert _run(clone, "git", "status", "--porcelain", "dvc.lock") == ""


def test_s3_remote_push_pull_and_purge(make_project, tmp_path, s3_server):
    endpoint, s3 = s3_server
    project, v1 = _first_version(make_project, {"dvc": {"remote_name": "s3", "remote_url": f"s3://{BUCKET}/store",
                                                       "endpoint_url": endpoint}})
    config = (project.root / ".dvc" / "config").read_text()
    assert f"s3://{BUCKET}/store" in config and endpoint in config
    assert "testing" not in config and not (project.root / ".dvc" / "config.local").exists()
    dvc_ops.ensure_repo(project)  # idempotent
    assert (project.root / ".dvc" / "config").read_text() == config

    _delete(project, "batch-1", 8, seed=0)
    v2 = _version(project)
    assert v1 != v2
    keys = {obj["Key"] for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix="store/")["Contents"]}
    assert f"store/files/md5/{v1[:2]}/{v1[2:]}" in keys and f"store/files/md5/{v2[:2]}/{v2[2:]}" in keys

    origin = _digests(project.store_dir)
    clone = _commit_and_clone(project, tmp_path / "clone")
    _dvc(clone, "pull")
    assert _digests(clone / "data" / "store") == origin
    assert dvc_ops.data_version(load_project(clone)) == v2

    result = purge_deleted_data(project, Ledger(project.ledger_path).deleted_ids(), ["batch-1"])
    assert result["versions_redacted"] == [v1] and result["objects_removed"]["remote"] > 0
    after = {obj["Key"] for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix="store/")["Contents"]}
    assert len(keys - after) == result["objects_removed"]["remote"]
    assert f"store/files/md5/{v1[:2]}/{v1[2:]}" in after  # the manifest stays as lineage
    assert "in sync" in _dvc(project.root, "status", "--cloud")
    # The current version still pulls whole from S3 into another clean clone.
    again = tmp_path / "clone2"
    _run(tmp_path, "git", "clone", "-q", str(project.root), str(again))
    _dvc(again, "pull")
    assert _digests(again / "data" / "store") == origin


def test_cloud_urls_are_told_from_local_paths():
    assert dvc_ops.is_cloud_url("s3://bucket/path") and dvc_ops.is_cloud_url("gs://b")
    assert not dvc_ops.is_cloud_url(".dvcstore") and not dvc_ops.is_cloud_url("/srv/dvc")
    assert not dvc_ops.is_cloud_url("C://dvc")


def test_dvc_operations_work_in_a_subdirectory_project_from_any_working_directory(tmp_path, monkeypatch):
    """A project inside a larger Git repository gets DVC's --subdir mode; the in-process DVC calls
    (init, remote, commit, push) act on the project whatever this process's working directory is."""
    import shutil

    import yaml

    outer = tmp_path / "monorepo"
    root = outer / "services" / "unlearn"
    root.mkdir(parents=True)
    _run(outer, "git", "init", "-q")
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(Path(__file__).resolve().parents[2] / "dvc.yaml", root / "dvc.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither the project nor the outer repository
    project = load_project(root)
    dvc_ops.ensure_repo(project)
    assert (root / ".dvc").is_dir() and not (outer / ".dvc").exists()
    dvc_ops.ensure_repo(project)  # idempotent
    run_ingest(project)
    version = _version(project)
    assert Path.cwd() == elsewhere  # restored after DVC ran in the project
    assert any((root / ".dvcstore").rglob("*.dir"))  # pushed to the project's own remote
    status = _dvc(root, "status", "--cloud")
    assert "in sync" in status
    assert dvc_ops.data_version(project) == version
    assert "prepare" not in _dvc(root, "status", "prepare")  # dvc.lock matches the store
