"""DVC operations, through the ``dvc`` command (the stable interface; one process at a time)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tasks.project import PipelineError, Project


def _dvc(project: Project, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # A wide terminal: DVC wraps table output (e.g. `remote list`) at $COLUMNS, which breaks parsing.
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "COLUMNS": "10000"}
    command = [sys.executable, "-m", "dvc", *args]
    result = subprocess.run(command, cwd=project.root, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise PipelineError(f"`dvc {' '.join(args)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def _git(project: Project, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=project.root, capture_output=True, text=True)


def ensure_repo(project: Project) -> None:
    """Initialise Git (if the root is not in a repository), DVC, and the default remote.

    The remote comes from ``params.yaml: dvc``: a local directory (created when missing) or a
    cloud URL such as ``s3://bucket/path``. A cloud remote follows the parameters on every call
    (its URL, and ``dvc.endpoint_url`` for an S3-compatible server); the project's
    ``.dvc/config`` never receives credentials, which come from the standard environment
    variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ...).

    Args:
        project: The project.

    Raises:
        PipelineError: If git is missing or a dvc command fails.
    """
    if shutil.which("git") is None:
        raise PipelineError("git is required by DVC but was not found on PATH")
    if _git(project, "rev-parse", "--show-toplevel").returncode != 0:
        _git(project, "init", "-q")
    if not (project.root / ".dvc").is_dir():
        # A project inside a larger Git repository needs DVC's --subdir mode.
        _dvc(project, "init", "-q", *(["--subdir"] if _is_subdir(project) else []))
    cfg = project.params.dvc
    remotes = dict(line.split(None, 1) for line in _dvc(project, "remote", "list").stdout.splitlines() if line.strip())
    url = cfg.remote_url
    cloud = is_cloud_url(url)
    if cfg.remote_name not in remotes:
        if not cloud:
            target = Path(url) if Path(url).is_absolute() else project.root / url
            target.mkdir(parents=True, exist_ok=True)
        _dvc(project, "remote", "add", "--default", cfg.remote_name, url)
    elif cloud and remotes[cfg.remote_name].strip() != url:
        _dvc(project, "remote", "modify", cfg.remote_name, "url", url)
    if url.startswith("s3://"):
        if cfg.endpoint_url:
            _dvc(project, "remote", "modify", cfg.remote_name, "endpointurl", cfg.endpoint_url)
        else:
            _dvc(project, "remote", "modify", "--unset", cfg.remote_name, "endpointurl")


def is_cloud_url(url: str) -> bool:
    """True for a remote URL with a scheme (``s3://``, ``gs://``, ...), False for a local path."""
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.isalnum() and len(scheme) > 1


def _is_subdir(project: Project) -> bool:
    top = _git(project, "rev-parse", "--show-toplevel").stdout.strip()
    return bool(top) and Path(top).resolve() != project.root


def commit(project: Project, *stages: str) -> None:
    """Record the current outputs of ``stages`` (all when empty) in dvc.lock and the cache."""
    _dvc(project, "commit", "--force", "--quiet", *stages)


def push(project: Project) -> None:
    """Upload cached data to the default remote."""
    _dvc(project, "push", "--quiet")


def data_version(project: Project) -> str:
    """The DVC hash of ``data/store`` recorded in dvc.lock: the data version used everywhere.

    Raises:
        PipelineError: If the store has not been recorded by DVC yet.
    """
    lock_path = project.root / "dvc.lock"
    try:
        lock = yaml.safe_load(lock_path.read_text()) or {}
        for out in lock["stages"]["prepare"]["outs"]:
            if Path(out["path"]) == Path("data/store"):
                return out["md5"]
    except (FileNotFoundError, KeyError, TypeError):
        pass
    raise PipelineError("dvc.lock has no hash for data/store; run the prepare stage first")


def git_commit(project: Project) -> str:
    """The checked-out Git commit, or "uncommitted" in a repository without commits."""
    result = _git(project, "rev-parse", "HEAD")
    return result.stdout.strip() if result.returncode == 0 else "uncommitted"
