"""Where a registered version's files lie (tasks.model_files), for versions registered by hand from a source of their
own: located, compared and refused without a registry (a fake client answers what MLflow's would)."""

from types import SimpleNamespace

import pytest


class _Client:
    """What MLflow's client answers about logged models, runs and versions; unknown ones raise its not-found."""

    def __init__(self, runs=(), versions=()):
        self.runs, self.versions = dict(runs), dict(versions)

    def get_logged_model(self, model_id):
        return SimpleNamespace(artifact_location=f"file:///store/models/{model_id}/artifacts")

    def search_logged_models(self, experiment_ids, filter_string=None, page_token=None):
        from mlflow.store.entities.paged_list import PagedList

        name = filter_string.split("'")[1]
        return PagedList([SimpleNamespace(name=name, source_run_id="r1", artifact_location=f"file:///store/m-{name}/")]
                         if name == "model" else [], None)

    def get_run(self, run_id):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

        if run_id not in self.runs:
            raise MlflowException(f"Run '{run_id}' not found", RESOURCE_DOES_NOT_EXIST)
        return SimpleNamespace(info=SimpleNamespace(artifact_uri=self.runs[run_id], run_id=run_id, experiment_id="0"))

    def get_model_version(self, name, number):
        return self.versions[(name, number)]


def _version(source, model_id=None, name="m"):
    return SimpleNamespace(version="9", name=name, source=source, model_id=model_id, tags={})


def test_a_version_s_files_are_located_from_its_logged_model_or_its_own_source():
    from tasks.model_files import model_artifact_locations

    client = _Client(runs={"r1": "file:///store/1/r1/artifacts/"},
                     versions={("m", "2"): _version("models:/m-abc")})
    assert model_artifact_locations(client, _version("models:/m-abc")) == ["file:///store/models/m-abc/artifacts"]
    assert model_artifact_locations(client, _version("/hand/copy")) == ["/hand/copy"]
    # MLflow 3 loads runs:/<run>/<name> from the run's logged model of that name too (sixth review)
    assert model_artifact_locations(client, _version("runs:/r1/model")) == ["file:///store/1/r1/artifacts/model",
                                                                           "file:///store/m-model"]
    assert model_artifact_locations(client, _version("runs:/r1/model/MLmodel"))[1] == "file:///store/m-model/MLmodel"
    assert model_artifact_locations(client, _version("runs:/r1")) == ["file:///store/1/r1/artifacts"]
    assert model_artifact_locations(client, _version("models:/m/2")) == ["file:///store/models/m-abc/artifacts"]
    assert model_artifact_locations(client, _version("models:/m@champion")) == []  # moves with the alias
    assert model_artifact_locations(client, _version("models:/m/2", name="ours")) == []  # another model's files
    # ... unless what another model serves is asked: it may be one of this model's versions (third review)
    assert model_artifact_locations(client, _version("models:/m/2", name="ours"), any_model=True) == [
        "file:///store/models/m-abc/artifacts"]
    assert model_artifact_locations(client, _version("runs:/gone/model")) == []  # the run was deleted
    assert model_artifact_locations(client, _version("")) == []


def test_a_registry_error_while_locating_is_raised_never_taken_for_no_files():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    from tasks.model_files import model_artifact_locations

    class Down(_Client):
        def get_run(self, run_id):
            raise MlflowException("database is locked", TEMPORARILY_UNAVAILABLE)

    with pytest.raises(MlflowException, match="locked"):
        model_artifact_locations(Down(), _version("runs:/r1/model"))


def test_the_same_files_share_a_key_and_folders_inside_each_other_overlap(tmp_path):
    from tasks.model_files import files_key, locations_overlap

    folder = tmp_path / "models" / "m-abc" / "artifacts"
    assert files_key([str(folder)]) == files_key([folder.as_uri()]) == files_key([f"{folder}/"])
    assert files_key([str(folder)]) != files_key([str(folder.parent)])
    assert files_key([]) is None
    assert locations_overlap([str(folder)], [folder.as_uri()])
    assert locations_overlap([str(folder.parent)], [str(folder)])  # above it
    assert locations_overlap([str(folder / "extra_files")], [str(folder)])  # inside it
    assert not locations_overlap([str(folder)], [str(tmp_path / "models" / "m-abcd" / "artifacts")])  # a prefix only
    assert not locations_overlap([str(folder)], [])
    assert locations_overlap(["s3://bucket/models/m-1"], ["s3://bucket/models/m-1/artifacts"])
    assert not locations_overlap(["s3://bucket/models/m-1"], ["s3://bucket/models/m-10"])


def test_files_outside_the_artifact_store_or_nowhere_are_not_the_pipeline_s_to_delete(tmp_path):
    from tasks.model_files import undeletable_reason

    project = SimpleNamespace(artifact_root=tmp_path / "mlartifacts")
    inside = project.artifact_root / "models" / "m-1" / "artifacts"
    assert undeletable_reason(project, [str(inside), inside.as_uri()]) is None
    assert undeletable_reason(project, ["s3://bucket/models/m-1"]) is None  # remote: the store's own
    assert "cannot be located" in undeletable_reason(project, [])
    for location in (str(tmp_path / "elsewhere"), str(project.artifact_root), f"{inside}/../../../.."):
        assert "outside the project's artifact store" in undeletable_reason(project, [location]), location


def test_files_are_gone_only_when_every_location_is_seen_empty_or_absent(tmp_path):
    from tasks.model_files import files_gone

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "MLmodel").write_text("x")
    (tmp_path / "empty").mkdir()
    assert files_gone([str(tmp_path / "empty"), str(tmp_path / "absent")])
    assert not files_gone([str(tmp_path / "empty"), str(tmp_path / "full")])
    assert not files_gone([])  # nothing located is not "gone"
    # a single file is one file (rglob counted none under it); a scheme it does not know is not a relative path
    # that "does not exist" (review of 2026-12-07: both were tombstoned as deleted with the weights on disk)
    assert not files_gone([str(tmp_path / "full" / "MLmodel")])
    assert not files_gone(["dbfs:/databricks/mlflow-registry/abc/models/model", "gs:/bucket/model"])
    # a store lists what lies under a path: one object would list empty while it is there (third review)
    assert not files_gone(["s3://bucket/weights.pt"])
    # a plain path is un-escaped as MLflow un-escapes it when it loads the version (third review: `my%20model` was
    # "absent" while MLflow loaded `my model`)
    (tmp_path / "my model").mkdir()
    (tmp_path / "my model" / "MLmodel").write_text("x")
    assert not files_gone([f"{tmp_path}/my%20model"])


def test_a_folder_that_cannot_be_searched_is_not_gone_and_raises_no_os_error(tmp_path, monkeypatch):
    """Third review of 2026-12-07: EACCES on a folder above the source raised PermissionError out of the purge (every
    run) and out of `unlearn doctor` (root cannot be denied, so it is simulated)."""
    from pathlib import Path

    from tasks.model_files import files_gone

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", denied)
    assert not files_gone([str(tmp_path / "locked" / "inner")])
