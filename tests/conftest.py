"""Shared fixtures. Environment is isolated here, before Prefect or MLflow are imported."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

_STATE = Path(tempfile.mkdtemp(prefix="unlearn-tests-"))
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

    def make(overrides: dict | None = None, name: str = "project") -> Path:
        root = tmp_path / name
        root.mkdir()
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
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        return root

    return make


FAST = {"train": {"epochs": 8}, "verify": {"bootstrap": 20, "references": {"count": 2, "batched": "auto"}},
        "unlearn": {"method": "amun", "methods": {"amun": {"epochs": 2, "batch_size": 64, "probe_size": 20}}}}


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


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server for the whole session (it takes 12-25 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


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
