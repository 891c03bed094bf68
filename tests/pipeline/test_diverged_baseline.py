"""A baseline that diverges is refused, not registered as the champion (review of 2026-12-05: a NaN learning
rate registered a chance-level champion; NaN is now a config error, and a finite rate that diverges lands here)."""

import pytest
from conftest import run_stages

from tasks.project import PipelineError, load_project


def test_a_diverged_baseline_is_not_registered(make_project):
    from tasks import tracking

    root = make_project({"train": {"epochs": 2, "lr": 1.0e6}})
    project = load_project(root)
    run_stages(project, "ingest", "prepare")
    with pytest.raises(PipelineError, match="baseline diverged .* Nothing was registered"):
        run_stages(project, "train")
    client = tracking.setup(project)
    assert tracking.champion_version(project, client) is None
    assert client.search_model_versions(f"name='{project.params.registry.model_name}'") == []
