"""What the registered models trained on stays what the pipeline works with (break-it review, 2026-12-06).

Replaced source files rebuilt the store with other bytes under the same ids; a changed ``model.name`` reached
the references and an attempt before a state-dict mismatch crashed verification; a relative
``data.source_path`` named another place from another working directory.
"""

import gzip
import struct

import numpy as np
import pytest
import yaml
from conftest import FAST, drop_request, run_stages

from tasks.project import PipelineError, load_project
from unlearn.config import ConfigError


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def _write_fashion(root, seed=0, n_train=300, n_test=60):
    """A Fashion-MNIST-format directory of 8x8 images (ids are positions: fmnist-train-00000...)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = (rng.random((n, 8, 8)) * 60 + labels[:, None, None] * 19).astype(np.uint8)
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))


def _set(root, section, key, value):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_replaced_source_files_are_refused_under_trained_models_and_a_relative_path_is_the_projects(
        make_project, tmp_path, monkeypatch):
    from flows.cli import main

    root = make_project({**FAST, "data": {"source": "fashion_mnist", "source_path": "fmdata"}})
    _write_fashion(root / "fmdata")
    monkeypatch.chdir(tmp_path)  # not the project root: the relative path must still name root/fmdata
    project = load_project(root)
    assert project.params.data.source_path == str(root / "fmdata")
    run_stages(project, "ingest", "prepare")
    run_stages(load_project(root), "prepare")  # no model yet: the source may change freely
    assert run_stages(load_project(root), "train")["train"]["version"] == "1"  # a model trained on the store
    index = (project.store_dir / "index.csv").read_bytes()
    shards = {p.name: p.read_bytes() for p in (project.store_dir / "shards").iterdir()}
    run_stages(load_project(root), "prepare")  # the same files: accepted
    _write_fashion(root / "fmdata", seed=1)  # same counts and labels, other pixels
    with pytest.raises(PipelineError, match=r"content changed under trained models: of the store's \d+ samples, "
                                            r"\d+ have other pixels and 0 another label"):
        run_stages(load_project(root), "prepare")
    assert main(["--root", str(root), "stage", "prepare"]) == 2
    assert (project.store_dir / "index.csv").read_bytes() == index  # nothing was changed
    assert {p.name: p.read_bytes() for p in (project.store_dir / "shards").iterdir()} == shards
    _write_fashion(root / "fmdata", seed=0)  # the files the store was built from: accepted again
    assert main(["--root", str(root), "stage", "prepare"]) == 0


def test_a_changed_model_name_is_refused_once_a_champion_exists(make_project):
    from flows.cli import main
    from unlearn.data import SampleStore

    root = make_project(FAST)
    project = load_project(root)
    run_stages(project, "ingest", "prepare", "train")
    _set(root, "model", "name", "tests.core.byo_models:tiny_net")  # fits the data: only the champion differs
    refused = (r"model.name is 'tests.core.byo_models:tiny_net' but the champion \(version 1\) was trained as "
               "'tiny_cnn'")
    with pytest.raises(PipelineError, match=refused):
        run_stages(load_project(root), "train")
    drop_request(project, "R-ARCH", SampleStore(project.store_dir).split_ids("train")[:5].tolist())
    run_stages(load_project(root), "ingest", "prepare")
    with pytest.raises(PipelineError, match=refused):  # before any attempt, model or MLflow run
        run_stages(load_project(root), "unlearn")
    assert not (project.root / "data" / "state" / "unlearn.json").exists()
    assert main(["--root", str(root), "stage", "unlearn"]) == 2
    _set(root, "model", "name", "tiny_cnn")
    run_stages(load_project(root), "train", "references", "unlearn")


def test_a_model_that_does_not_fit_the_store_fails_before_training(make_project):
    import mlflow

    root = make_project(FAST)
    run_stages(load_project(root), "ingest", "prepare")
    _set(root, "model", "name", "torchvision:vit_b_16")  # DVC would not re-run prepare for a model change
    with pytest.raises(ConfigError, match="model.name"):
        run_stages(load_project(root), "train")
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])] == []


def test_a_model_the_registry_cannot_save_fails_before_training(make_project):
    """A forward that branches on tensor values trained the whole baseline, then failed at registration
    (torch.export, behind MLflow's pt2 format) with exit 1 and a long traceback (consumer review, 2026-12-06)."""
    import mlflow

    from flows.cli import main

    root = make_project({**FAST, "model": {"name": "tests.core.byo_models:rescaling"}})
    run_stages(load_project(root), "ingest", "prepare")
    with pytest.raises(PipelineError, match=r"tests.core.byo_models:rescaling.*torch.export cannot export.*"
                                            r"Nothing was trained or registered"):
        run_stages(load_project(root), "train")
    assert main(["--root", str(root), "stage", "train"]) == 2  # the command: exit 2, the message, no traceback
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])] == []
    assert client.search_registered_models() == []
