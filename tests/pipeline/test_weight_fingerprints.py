"""Retired weights' fingerprints against a live successor that kept most of its parent's bytes.

SSD dampens a few weights and copies the rest; SalUn with a small forget set updates few. The
fingerprints of the retired parent used to be taken from the middle of its largest tensors, which the
live champion still held, so every purge scan "found the retired weights" in the champion's own
artifacts and refused (review of 2026-12-06). Real MLflow registry (SQLite) and artifact store."""

import json

import numpy as np
import pytest
from conftest import FAST

pytestmark = pytest.mark.e2e


def _register_successor(project, client, parent_version):
    """Log an SSD-like child of ``parent_version`` (3 weights per large tensor halved) as the champion."""
    import mlflow
    import torch

    from tasks import tracking
    from tasks.stage.context import input_example
    from unlearn.data import SampleStore

    parent_mv = client.get_model_version(tracking.model_name(project), parent_version)
    model = tracking.load_model(project, client, parent_version)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point() and tensor.numel() >= 64:
                flat = tensor.view(-1)
                flat[torch.from_numpy(rng.choice(flat.numel(), size=3, replace=False))] *= 0.5
    store = SampleStore(project.store_dir)
    tags = {k: parent_mv.tags[k] for k in ("covers_through", "data_version")}
    with mlflow.start_run(run_name="successor"):
        version, _ = tracking.log_model(
            project, model, input_example(store),
            architecture={k[5:]: v for k, v in parent_mv.tags.items() if k.startswith("arch_")},
            classes=store.classes, tags={**tags, "method": "ssd", "parent_version": parent_version})
    tracking.move_champion(project, client, version)
    return version, model


def test_a_retired_parent_is_fingerprinted_apart_from_a_successor_that_kept_its_bytes(champion_project):
    from tasks import tracking
    from tasks.lifecycle import remember_weight_fingerprints, retired_weight_patterns
    from tasks.project import load_project
    from tasks.purge import scan_project_for_samples
    from unlearn.forensics import weight_patterns

    root, _ = champion_project(FAST)
    project = load_project(root)
    client = tracking.setup(project)
    parent = tracking.load_model(project, client, "1")
    parent_state = {k: v.detach().numpy().copy() for k, v in parent.state_dict().items()}
    version, _ = _register_successor(project, client, "1")
    assert version == "2"

    remember_weight_fingerprints(project, client, client.get_model_version(tracking.model_name(project), "1"))
    tracking.retire_version(project, client, client.get_model_version(tracking.model_name(project), "1"),
                            reason="test", batches=[], at="2026-12-06T00:00:00Z")
    weights, shared = retired_weight_patterns(project, client)
    assert len(weights) >= 2 and shared == 0
    assert scan_project_for_samples(project, weights).matches == ()  # the champion's own files do not match
    stray = root / "exports" / "v1-backup.bin"  # a copy of the retired weights kept somewhere in the project
    stray.parent.mkdir()
    stray.write_bytes(b"".join(np.ascontiguousarray(v).tobytes() for v in parent_state.values()))
    assert {key for _, key in scan_project_for_samples(project, weights).matches} == set(weights)
    stray.unlink()

    # fingerprints taken the old way (middle of each large tensor) are left out and counted, not searched for
    path = project.state_dir / "retired-weights.json"
    path.write_text(json.dumps({"1": {k: v.hex() for k, v in weight_patterns(parent_state).items()}}))
    weights, shared = retired_weight_patterns(project, client)
    assert shared >= 1 and len(weights) + shared == len(weight_patterns(parent_state))
    assert scan_project_for_samples(project, weights).matches == ()
    assert scan_project_for_samples(project, retired_weight_patterns(project)[0]).matches  # unfiltered: a false hit
