"""A baseline that diverges is refused, not registered as the champion (review of 2026-12-05: a NaN learning
rate registered a chance-level champion; NaN is now a config error, and a finite rate that diverges lands here)."""

import numpy as np
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


def test_a_diverged_exact_retrain_is_refused_and_not_cached(make_project):
    """Consolidation (and the exact rung, and the gate's target) use retrained_model with train.*: a diverged
    one moved the champion alias to a chance-level model (review). It is refused before it is cached."""
    import yaml

    from tasks.stage.context import unlearning_data
    from tasks.stage.retrain import retrained_model
    from unlearn.data import SampleStore
    from unlearn.data.store import Arrays

    root = make_project({"train": {"epochs": 2}})
    run_stages(load_project(root), "ingest", "prepare")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["lr"] = 1.0e6
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    project = load_project(root)
    store = SampleStore(project.store_dir)
    nothing = Arrays(np.zeros(0, dtype=str), np.zeros((0, *store.image_shape), dtype=np.uint8),
                     np.zeros(0, dtype=np.int64))
    with pytest.raises(PipelineError, match="exact retrain diverged"):
        retrained_model(project, store, unlearning_data(project, store, nothing))
    assert not list(project.models_dir.glob("retrained-*.pt"))
