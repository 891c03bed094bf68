"""Shared fixtures. Environment is isolated here, before Prefect or MLflow are imported."""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import gc
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One pytest-xdist worker per core: each worker's torch (and the subprocesses it starts) gets one
    # thread, so two workers on two cores do not oversubscribe them. Set before numpy or torch load.
    for _threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_threads, "1")

# Full garbage collections after 100 middle-generation ones, not 10 (the young generations as CPython's defaults):
# each full collection traverses every object the stack's imports left behind (1.5 million in a test process),
# and importing the stack alone triggered about 15 of them. What the suite measured: ``pytest_runtest_logfinish``.
_T0, _T1, _ = gc.get_threshold()
gc.set_threshold(_T0, _T1, 100)

_STATE = Path(tempfile.mkdtemp(prefix="unlearn-tests-"))
# Removed when this process exits (after the session's Prefect server has stopped): each pytest process, xdist
# workers included, made one of these and left it behind, about 1 MB a process, run after run.
atexit.register(shutil.rmtree, _STATE, ignore_errors=True)
# Every Python process the suite starts (DVC, the Prefect and MLflow servers, Dask workers, `unlearn` stages, the
# crash driver; a test that sets PYTHONPATH itself adds to it) runs its full garbage collections as this one does
# (above) and as the `unlearn` command does (flows.cli.console), through a sitecustomize on PYTHONPATH. A threshold
# changes when cyclic garbage is collected, not what any process does. It shadows a sitecustomize of the Python
# itself (Debian's only installs a crash-report hook; none in this project's venv).
(_STATE / "site").mkdir()
(_STATE / "site" / "sitecustomize.py").write_text(
    "import gc\n\n_young, _middle, _ = gc.get_threshold()\ngc.set_threshold(_young, _middle, 100)\n")
os.environ["PYTHONPATH"] = os.pathsep.join([str(_STATE / "site"), *filter(None, [os.environ.get("PYTHONPATH")])])
for key, value in {
    "PREFECT_HOME": str(_STATE / "prefect"),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "GIT_AUTHOR_NAME": "tests", "GIT_AUTHOR_EMAIL": "tests@example.invalid",
    "GIT_COMMITTER_NAME": "tests", "GIT_COMMITTER_EMAIL": "tests@example.invalid",
}.items():
    os.environ[key] = value
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_tracking_uri():
    """``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` in the environment: without this reset a
    test that opened one project's registry would make the next test's fresh project read that registry."""
    import sys

    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None:
        utils._tracking_uri = None


@pytest.fixture
def make_project(tmp_path):
    """Create a project directory (params.yaml, dvc.yaml, git repo) with param overrides.

    Returns a function ``make(overrides: dict | None = None) -> Path``; overrides are merged
    into params.yaml section by section.
    """

    def make(overrides: dict | None = None, name: str = "project", *, registry: bool = True) -> Path:
        root = tmp_path / name
        root.mkdir()
        return _init_project(root, overrides, registry=registry)

    return make


def project_params(overrides: dict | None = None) -> dict:
    """The shipped params.yaml with ``overrides`` merged in section by section."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(params.get(key), dict):
            params[key].update(value)
        else:
            params[key] = value
    unlearn = (overrides or {}).get("unlearn")
    if isinstance(unlearn, dict) and "methods" in unlearn and "profiles" not in unlearn:
        # A test that pins method kwargs pins them fully: the repository's per-setting
        # profiles would otherwise win over them key by key.
        params["unlearn"]["profiles"] = {}
    return params


@functools.cache
def _registry_template() -> Path:
    """An empty MLflow SQLite registry, created once per test process by MLflow itself.

    Why: MLflow builds a new SQLite store by replaying its schema migrations, about 1.1 s of CPU on this
    project's test machines, and most end-to-end tests start a fresh project. MLflow's own test suite
    copies a migrated database for the same reason; the copy is the file MLflow would have written.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = _STATE / "registry-template" / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    SqlAlchemyStore(f"sqlite:///{path}", str(path.parent / "mlruns")).engine.dispose()
    return path


def _init_project(root: Path, overrides: dict | None, *, registry: bool = True) -> Path:
    """Write params.yaml and dvc.yaml, ``git init``; with ``registry``, start from an empty MLflow registry
    (:func:`_registry_template`) as if MLflow had created it in ``root``. Tests about a project that has no
    registry file yet (read-only commands must not create one) pass ``registry=False``."""
    (root / "params.yaml").write_text(yaml.safe_dump(project_params(overrides), sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    if registry:
        import sqlite3

        shutil.copy(_registry_template(), root / "mlflow.db")
        with contextlib.closing(sqlite3.connect(root / "mlflow.db")) as db, db:  # MLflow's default experiment
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                       (str(root.resolve() / "mlruns" / "0"),))
    return root


# The end-to-end tests check what the pipeline does, not how well the model learns: 4 epochs on digits is enough
# for a model well above chance (utility is gated against its parent), and every retrain and baseline in the suite
# pays for each epoch (8 epochs cost the suite about a minute more on two cores). tiny_cnn (small_cnn at half the
# width, about 94% test accuracy, trained in about a third of the time): training was the largest share of the
# suite's CPU (py-spy).
FAST = {"model": {"name": "tiny_cnn"}, "train": {"epochs": 4},
        "verify": {"bootstrap": 20, "references": {"count": 2, "batched": "auto"}},
        "unlearn": {"method": "amun", "methods": {"amun": {"epochs": 2, "batch_size": 64, "probe_size": 20}}}}
# FAST with the exact retrain as the only rung: the most common end-to-end configuration.
RETRAIN = {**FAST, "unlearn": {**FAST["unlearn"], "method": "retrain", "escalation": []}}


def quadrant_images(noise: float = 0.3, signal: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """A tiny 4-class problem: 160 images (1, 8, 8), uniform noise plus a class-dependent
    bright quadrant. Returns (images float32 in [0, 1], labels int64)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 40)
    images = rng.uniform(0, noise, size=(160, 1, 8, 8))
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 2)
        images[i, 0, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] += signal
    return images.clip(0, 1).astype(np.float32), labels.astype(np.int64)


@pytest.fixture
def tiny_images():
    """The easy version of the tiny problem (strong class signal)."""
    return quadrant_images()


def _cuda_branches_on_cpu(monkeypatch, autocast_dtype=None):
    import contextlib

    import torch

    from unlearn import accel

    def autocast(device, enabled=True):
        if enabled and autocast_dtype is not None:
            return torch.autocast("cpu", dtype=autocast_dtype)
        return contextlib.nullcontext()

    monkeypatch.setattr(accel, "is_cuda", lambda device: True)
    monkeypatch.setattr(accel, "fits_on_device", lambda *args, **kwargs: True)
    monkeypatch.setattr(accel, "to_device_async", lambda tensor, device: tensor.to(device))
    monkeypatch.setattr(accel, "autocast", autocast)


@pytest.fixture
def cuda_branches_on_cpu(monkeypatch):
    """Take the core's CUDA branches (channels_last, resident data, one-copy transfers, masked loops) on the CPU.

    Autocast stays off (CUDA autocast does nothing to CPU tensors) and copies are plain ``.to``: what is
    checked here is the control flow and the layouts, which tests on a CPU-only machine never reach otherwise.
    """
    _cuda_branches_on_cpu(monkeypatch)


@pytest.fixture
def cuda_branches_on_cpu_bf16(monkeypatch):
    """As ``cuda_branches_on_cpu``, with the CUDA path's bf16 autocast played by the CPU's bf16 autocast."""
    import torch

    _cuda_branches_on_cpu(monkeypatch, torch.bfloat16)


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server for the whole session (it takes 12-25 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def drop_request(project, request_id: str, ids: list[str]) -> None:
    """Drop one well-formed sample-deletion request into the project's inbox (as a client's file drop would)."""
    project.incoming_dir.mkdir(parents=True, exist_ok=True)
    (project.incoming_dir / f"{request_id}.json").write_text(json.dumps(
        {"request_id": request_id, "received_at": "2026-11-24T10:00:00Z", "reason": "gdpr_erasure",
         "subject_ref": f"subject-{request_id}", "sample_ids": ids}))


def location_path(location: str) -> Path:
    """The local path of an artifact location: a ``file:`` URI un-escaped, or a plain path as it is."""
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(location).path)) if location.startswith("file:") else Path(location)


def run_stages(project, *names: str) -> dict:
    """Run pipeline stages in-process, in order, without Prefect (what ``dvc repro`` amounts to).

    After ``prepare`` the ingest/prepare outputs are committed to DVC (the data version every later
    stage reads) and pushed, as the flow does. Returns each stage's summary by name.
    """
    from tasks import dvc_ops
    from tasks.stage.catalog import STAGE_FUNCTIONS

    dvc_ops.ensure_repo(project)
    results = {}
    for name in names:
        results[name] = STAGE_FUNCTIONS[name](project)
        if name == "prepare":
            dvc_ops.commit(project, "ingest", "prepare")
            dvc_ops.push(project)
    return results


def restore_tree(root: Path, saved: Path) -> None:
    """Put the saved project back at the same path, rewriting files in place.

    At the same path, because MLflow stores absolute artifact paths in ``mlflow.db`` (and DVC its
    remote's). In place, because this process keeps MLflow's SQLite engine open on ``mlflow.db``: a
    replaced file would leave it holding the deleted inode (read-only), a rewritten one is simply re-read.
    """
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        twin = saved / path.relative_to(root)
        if path.is_symlink() or (path.is_file() and not twin.is_file()):
            path.unlink()
        elif path.is_dir() and not twin.is_dir():
            shutil.rmtree(path)
    for path in sorted(saved.rglob("*")):
        target = root / path.relative_to(saved)
        if path.is_symlink():
            target.symlink_to(os.readlink(path))
        elif path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            with open(path, "rb") as src, open(target, "r+b" if target.exists() else "wb") as dst:
                shutil.copyfileobj(src, dst)
                dst.truncate()


# What a baseline run (nothing pending) reads: ingest, prepare and train's params (dvc.yaml), and the
# registry's names. A test that reuses the session's champion may change any other section; note that the
# baseline also trained the pool's references with the session's `verify` settings (FAST): a test that
# changes `verify.references` or the attacks starts from those and gets more only if it asks for more.
BASELINE_SECTIONS = ("seed", "data", "model", "train", "requests", "registry")


@dataclass(frozen=True)
class Champion:
    """The session's baseline project: built once by the Prefect flow, restored for each test."""

    root: Path
    saved: Path
    first: dict  # what the baseline pipeline_flow returned
    stderr: str  # what it wrote to stderr (UNLEARN_PROGRESS=1: the progress bars)


@pytest.fixture(scope="session")
def _session_champion(prefect_server, tmp_path_factory) -> Champion:
    """One baseline ``pipeline_flow`` run (champion v1, nothing pending) for the whole session.

    It is the first run of every end-to-end test that starts from a trained project; building it
    once saves a full flow run (ingest, prepare, train, DVC commit and push) per test.
    """
    from flows.pipeline import pipeline_flow

    base = tmp_path_factory.mktemp("champion")
    root = base / "project"
    root.mkdir()
    _init_project(root, RETRAIN)
    previous = os.environ.get("UNLEARN_PROGRESS")
    os.environ["UNLEARN_PROGRESS"] = "1"  # draw bars although stderr is captured (test_status checks them)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            first = pipeline_flow(root=str(root))
    finally:
        if previous is None:
            os.environ.pop("UNLEARN_PROGRESS")
        else:
            os.environ["UNLEARN_PROGRESS"] = previous
    saved = base / "saved"
    shutil.copytree(root, saved, symlinks=True)
    return Champion(root, saved, first, err.getvalue())


def _restorer(root: Path, saved: Path):
    """``make(overrides) -> root``: restore the saved project at ``root`` with params.yaml from ``overrides``."""
    built = yaml.safe_load((saved / "params.yaml").read_text())

    def make(overrides: dict | None = None) -> Path:
        params = project_params(overrides)
        changed = [key for key in BASELINE_SECTIONS if params.get(key) != built.get(key)]
        if changed:
            raise ValueError(f"the session's baseline was trained with other {changed}: use make_project")
        restore_tree(root, saved)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return root

    return make


def dvc_repro(root: Path) -> str:
    """``dvc repro`` in ``root`` (this interpreter's scripts first on PATH); asserts it succeeded, returns stdout."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="session")
def _session_repro_baseline(tmp_path_factory) -> tuple[Path, Path]:
    """A fresh project's first ``dvc repro`` (the baseline through ``unlearn stage NAME``), run once."""
    from tasks import dvc_ops
    from tasks.project import load_project

    base = tmp_path_factory.mktemp("repro")
    root = base / "project"
    root.mkdir()
    _init_project(root, RETRAIN)
    dvc_ops.ensure_repo(load_project(root))
    dvc_repro(root)
    saved = base / "saved"
    shutil.copytree(root, saved, symlinks=True)
    return root, saved


@pytest.fixture
def repro_baseline(_session_repro_baseline):
    """The session's ``dvc repro`` baseline restored at its path: ``make(overrides) -> root``.

    Overrides may not change what the baseline read (:data:`BASELINE_SECTIONS`).
    """
    return _restorer(*_session_repro_baseline)


@pytest.fixture
def champion_project(_session_champion):
    """The session's baseline project restored at its path with params.yaml from ``overrides``.

    Returns a function ``make(overrides: dict | None = None) -> (root, first)``: ``first`` is what
    the baseline ``pipeline_flow(root)`` returned, so a test reads as if it had run it itself.
    Overrides may not change what the baseline read (:data:`BASELINE_SECTIONS`).
    """
    champion = _session_champion
    restore = _restorer(champion.root, champion.saved)

    def make(overrides: dict | None = None) -> tuple[Path, dict]:
        return restore(overrides), copy.deepcopy(champion.first)

    return make


# The longest test files, longest first (from `make test`'s --durations): scheduled before everything
# else so that two xdist workers finish together instead of one waiting on a long file started last.
LONGEST_FILES = ("test_dvc_repro.py", "test_lifecycle.py", "test_team_tracking.py", "test_gate_pipeline.py",
                 "test_serve.py", "test_crash_points.py", "test_interrupted_records.py", "test_sweep.py")


def pytest_collection_modifyitems(config, items):
    """Longest files first, then the other end-to-end files, then the rest (order within a file kept)."""

    def rank(item) -> tuple[int, int]:
        name = item.path.name
        if name in LONGEST_FILES:
            return 0, LONGEST_FILES.index(name)
        return (1 if item.get_closest_marker("e2e") else 2), 0

    items.sort(key=rank)  # stable: each file's own order is kept


# Libraries whose import leaves hundreds of thousands of long-lived objects behind (PyTorch, MLflow, Prefect, ...).
_HEAVY_MODULES = ("torch", "mlflow", "prefect", "great_expectations", "dvc.repo", "sklearn", "scipy.stats", "sympy",
                  "distributed", "matplotlib.pyplot", "sqlalchemy")
_FROZEN_AFTER: set[str] = set()


def pytest_runtest_logfinish(nodeid, location):
    """After the test in which a heavy library was first imported, collect the garbage there is and freeze what
    is left out of later collections.

    Why: a test process holds 1.5 million objects once the stack is imported, and every full collection the
    tests' allocations trigger traverses all of them (0.1-0.5 s each). Measured with ``gc.callbacks`` on
    ``test_gate_pipeline.py`` alone (one process, 9 tests): 17 full collections, 5.3 s in the collector and 84.5 s
    of CPU with CPython's defaults; 7 and 3.0 s (80.9 s) with the threshold above; 8 and 2.5 s (79.4 s) with this
    too. What is frozen is what was live after a collection: the libraries' modules, their caches, the session
    fixtures; the tests' own garbage is still collected as before. A few freezes per process (one per library
    first seen), not one per test.
    """
    loaded = {name for name in _HEAVY_MODULES if name in sys.modules} - _FROZEN_AFTER
    if loaded:
        _FROZEN_AFTER.update(loaded)
        gc.collect()
        gc.freeze()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """A test process ends holding every module the suite imported: its final garbage collections at exit would
    traverse all of it (seconds of CPU per xdist worker, in the tail where the other worker may already wait).
    Collect the garbage there is now, freeze the rest out of those collections (as the ``unlearn`` command does,
    :func:`flows.cli.console`); atexit handlers and module teardown still run."""
    gc.collect()
    gc.freeze()
