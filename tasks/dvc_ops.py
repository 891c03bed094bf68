"""DVC operations: DVC's Python API (``dvc.repo.Repo``) in this process, the ``dvc`` command for set-up.

The recurring operations of every flow run (reading the remote configuration, ``commit``,
``push``) call ``Repo`` in-process: a ``dvc`` subprocess costs about 0.7 s of interpreter
start-up and imports each time, four times per flow run, which was most of the pipeline's DVC
overhead (benchmarks/orchestration/overhead.py). ``Repo.commit`` and ``Repo.push`` take DVC's
repository lock themselves, as the commands do; calls from this process are serialised by a
lock of ours because a ``Repo`` object is not thread-safe. One-off set-up (``dvc init``,
adding or changing a remote) still goes through the command.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.project import PipelineError, Project
from unlearn.yaml_io import load_yaml

_REPO_LOCK = threading.Lock()  # one in-process DVC operation at a time (threads task runner)


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


def _quiet_dvc_logger() -> None:
    # DVC's logger prints INFO lines ("Initialized DVC repository.", "Updating lock file ...") to
    # stdout; a pipeline run shows only DVC's warnings and errors, in its own log.
    dvc_logger = logging.getLogger("dvc")
    if dvc_logger.getEffectiveLevel() < logging.WARNING:
        dvc_logger.setLevel(logging.WARNING)


@contextmanager
def open_repo(project: Project, *, lock: bool = False) -> Iterator[Any]:
    """The project's DVC repository, closed on exit.

    Args:
        project: The project.
        lock: Hold DVC's repository lock for the whole block, as a ``dvc`` command does (needed
            around direct object-database access; ``Repo.commit``/``push`` lock by themselves).

    Yields:
        A ``dvc.repo.Repo``.

    Raises:
        PipelineError: If the repository cannot be opened, or its lock is held by another process.
    """
    from dvc.lock import LockError
    from dvc.repo import Repo, lock_repo

    _quiet_dvc_logger()
    try:
        repo = Repo(str(project.root))
    except Exception as exc:  # NotDvcRepoError, config errors
        raise PipelineError(f"cannot open the DVC repository at {project.root}: {exc}") from exc
    try:
        if lock:
            try:
                with lock_repo(repo):
                    yield repo
            except LockError as exc:
                raise PipelineError(f"the DVC repository is busy (another dvc command holds its lock): {exc}") from exc
        else:
            yield repo
    finally:
        repo.close()


@contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """Run DVC with the repository root as the working directory, as the ``dvc`` command does.

    DVC's run cache builds a throw-away stage from the relative path "dvc.yaml" and checks that
    it lies inside the repository, so ``Repo.commit`` fails from any other working directory.
    Held only under ``_REPO_LOCK``; this codebase opens files by absolute path, so other threads
    are unaffected by the change.
    """
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _remotes(project: Project) -> dict[str, dict[str, Any]]:
    """The remotes in the project's DVC configuration (all levels merged), by name."""
    with _REPO_LOCK, open_repo(project) as repo:
        return {name: dict(section) for name, section in repo.config.get("remote", {}).items()}


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
        from dvc.exceptions import InitError
        from dvc.repo import Repo

        _quiet_dvc_logger()
        try:  # what `dvc init` does; a project inside a larger Git repository needs --subdir mode
            with _REPO_LOCK, Repo.init(str(project.root), subdir=_is_subdir(project)):
                pass
        except InitError as exc:
            raise PipelineError(f"`dvc init` failed: {exc}") from exc
    cfg = project.params.dvc
    remote = _remotes(project).get(cfg.remote_name)
    url = cfg.remote_url
    cloud = is_cloud_url(url)
    if remote is None:
        if not cloud:
            target = Path(url) if Path(url).is_absolute() else project.root / url
            target.mkdir(parents=True, exist_ok=True)
        # What `dvc remote add --default` does. The working directory matters: DVC stores a relative
        # local path relative to .dvc/config, taking it as relative to the working directory.
        with _REPO_LOCK, open_repo(project) as repo, _working_directory(project.root), repo.config.edit() as conf:
            conf["remote"][cfg.remote_name] = {"url": url}
            conf["core"]["remote"] = cfg.remote_name
        remote = {"url": url}
    elif cloud and str(remote.get("url", "")).strip() != url:
        _dvc(project, "remote", "modify", cfg.remote_name, "url", url)
    # Only a change is written: most runs find the configuration as the parameters want it.
    if url.startswith("s3://") and (remote.get("endpointurl") or None) != (cfg.endpoint_url or None):
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
    """Record the current outputs of ``stages`` (all when empty) in dvc.lock and the cache (``dvc commit -f``).

    Raises:
        PipelineError: If DVC refuses (an output is missing, the repository is locked, ...).
    """
    from dvc.exceptions import DvcException

    # DVC resolves targets (and "no target") against the process's working directory, not the
    # repository's root: name the project's dvc.yaml, or one of its stages, by absolute path.
    dvcfile = project.root / "dvc.yaml"
    targets = [f"{dvcfile}:{stage}" for stage in stages] or [str(dvcfile)]
    with _REPO_LOCK, open_repo(project) as repo, _working_directory(project.root):
        for stage, target in zip(stages or ("",), targets, strict=True):
            try:
                repo.commit(target, force=True)
            except DvcException as exc:
                raise PipelineError(f"`dvc commit {stage}` failed: {exc}") from exc


def push(project: Project) -> None:
    """Upload cached data to the default remote (``dvc push``).

    Raises:
        PipelineError: If DVC refuses (no remote, the repository is locked, ...). A transfer
            failure (network, credentials) propagates as raised, so a task retry can try again.
    """
    from dvc.exceptions import DvcException

    with _REPO_LOCK, open_repo(project) as repo:
        try:
            repo.push()
        except DvcException as exc:
            raise PipelineError(f"`dvc push` failed: {exc}") from exc


def data_version(project: Project) -> str:
    """The DVC hash of ``data/store`` recorded in dvc.lock: the data version used everywhere.

    Raises:
        PipelineError: If the store has not been recorded by DVC yet.
    """
    lock_path = project.root / "dvc.lock"
    try:
        lock = load_yaml(lock_path.read_text()) or {}
        for out in lock["stages"]["prepare"]["outs"]:
            if Path(out["path"]) == Path("data/store"):
                return out["md5"]
    except (FileNotFoundError, KeyError, TypeError):
        pass
    raise PipelineError("dvc.lock has no hash for data/store; run the prepare stage first")


# What a run's Git commit should pin: its configuration and the project's Python code (a user's model module).
# Files the pipeline itself writes (the ledger, state files, dvc.lock) differ from HEAD during every run.
_PINNED_PATHS = ("params.yaml", "dvc.yaml", ":(glob)**/*.py")


def git_commit(project: Project) -> str:
    """The checked-out Git commit; ``<sha>+dirty`` when params.yaml, dvc.yaml or a tracked Python file of the
    project differs from it; "uncommitted" in a repository without commits.

    Why the suffix: the lineage tag said the HEAD commit while the run used an uncommitted params.yaml (a
    review changed ``train.lr`` without committing: the tag named the commit with the old rate), so the
    commit alone would not reproduce the version. The run's params hold the values actually used.
    """
    result = _git(project, "rev-parse", "HEAD")
    if result.returncode != 0:
        return "uncommitted"
    sha = result.stdout.strip()
    changed = _git(project, "status", "--porcelain", "--untracked-files=no", "--", *_PINNED_PATHS)
    if changed.returncode != 0:
        return f"{sha}+unknown"  # the commit, without a claim either way about the working tree
    return f"{sha}+dirty" if changed.stdout.strip() else sha
