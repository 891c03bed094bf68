"""What every registered version tells the people who load it (tasks.tracking.contract_tags)."""

import json


def test_the_contract_names_the_input_scale_the_outputs_and_every_class():
    import torch

    from tasks.tracking import contract_tags

    tags = contract_tags(torch.zeros(2, 3, 32, 32), ["T-shirt/top", 'a "quoted"\nname', "Ünïcode"])
    assert tags["input"].startswith("float32 (N, 3, 32, 32)") and "[0, 1]" in tags["input"]
    assert tags["output"].startswith("logits (N, 3), not probabilities") and "'classes' tag" in tags["output"]
    assert json.loads(tags["classes"]) == ["T-shirt/top", 'a "quoted"\nname', "Ünïcode"]


def test_a_class_list_past_mlflows_tag_bound_is_left_to_the_artifact_and_never_written_as_non_json():
    import torch

    from tasks.tracking import contract_tags

    many = [f"class number {i:06d} with a long descriptive name" for i in range(3000)]  # ~150,000 characters
    tags = contract_tags(torch.zeros(2, 1, 8, 8), many)
    assert "classes" not in tags and "classes.json" in tags["output"] and "'classes' tag" not in tags["output"]
    some = many[:200]  # ~10,000 characters: over the 5,000 once assumed, well inside MLflow's 100,000
    assert json.loads(contract_tags(torch.zeros(2, 1, 8, 8), some)["classes"]) == some


def test_the_git_commit_tag_says_when_the_configuration_or_code_differs_from_it(make_project):
    """The tag named HEAD while the run used an uncommitted params.yaml (consumer review, 2026-12-06)."""
    import subprocess

    from tasks import dvc_ops
    from tasks.project import load_project

    root = make_project(registry=False)
    project = load_project(root)
    assert dvc_ops.git_commit(project) == "uncommitted"
    (root / "mymodels.py").write_text("NET = 1\n")
    (root / "data" / "requests").mkdir(parents=True)
    (root / "data" / "requests" / "ledger.json").write_text("{}\n")
    git = lambda *args: subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True)  # noqa: E731
    git("add", "-A")
    git("commit", "-q", "-m", "project")
    sha = git("rev-parse", "HEAD").stdout.strip()
    assert dvc_ops.git_commit(project) == sha
    (root / "data" / "requests" / "ledger.json").write_text('{"batches": {}}\n')  # the pipeline's own records
    (root / "notes.py").write_text("untracked = True\n")
    assert dvc_ops.git_commit(project) == sha
    params = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(params.replace("seed: 0", "seed: 1", 1))
    assert dvc_ops.git_commit(project) == f"{sha}+dirty"
    (root / "params.yaml").write_text(params)
    (root / "mymodels.py").write_text("NET = 2\n")  # a tracked model module
    assert dvc_ops.git_commit(project) == f"{sha}+dirty"


def test_only_the_registry_saying_so_means_no_champion_and_any_other_error_is_raised(make_project):
    """Every MLflow error read as "no champion" (review of 2026-12-07): a locked store or a server's 503 made the purge
    retire nothing and mark the batch retired, and a final "complete" certificate followed with the version that
    trained on the deleted samples still loadable."""
    import mlflow
    import pytest
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    from tasks import tracking
    from tasks.project import load_project

    project = load_project(make_project())
    client = tracking.setup(project)
    name = tracking.model_name(project)
    assert tracking.champion_version(project, client) is None  # no model registered yet
    client.create_registered_model(name)
    version = client.create_model_version(name, source=str(project.root / "model"))
    assert tracking.champion_version(project, client) is None  # registered, no champion alias
    client.set_registered_model_alias(name, tracking.CHAMPION, version.version)
    assert tracking.champion_version(project, client).version == version.version

    class Unavailable(mlflow.MlflowClient):
        def __init__(self, fail_registered_model=False):
            super().__init__(tracking_uri=project.tracking_uri, registry_uri=project.tracking_uri)
            self.fail_registered_model = fail_registered_model

        def get_model_version_by_alias(self, *args, **kwargs):
            raise MlflowException("database is locked", TEMPORARILY_UNAVAILABLE)

        def get_registered_model(self, *args, **kwargs):
            if self.fail_registered_model:
                raise MlflowException("service unavailable", TEMPORARILY_UNAVAILABLE)
            return super().get_registered_model(*args, **kwargs)

    for failing in (Unavailable(), Unavailable(fail_registered_model=True)):
        with pytest.raises(MlflowException, match="database is locked"):
            tracking.champion_version(project, failing)
    client.delete_registered_model_alias(name, tracking.CHAMPION)
    assert tracking.champion_version(project, Unavailable()) is None  # the error, but the registry has no alias
