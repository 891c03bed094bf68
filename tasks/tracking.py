"""MLflow: runs, the model registry, aliases and lineage tags.

Models are logged with ``mlflow.pytorch.log_model`` (MLflow 3's pt2 format, servable) and carry
their ``state_dict`` as an extra file; the pipeline reloads models from that state dict with
``torch.load(weights_only=True)`` into the architecture named in the version's tags, so a
tampered or truncated artifact fails cleanly instead of executing code.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.project import PipelineError, Project, check_registry, pin_model_name, pin_registry, read_pin

if TYPE_CHECKING:  # PyTorch is imported where models are logged or loaded: `unlearn status` never needs it
    import torch
    from torch import nn

CHAMPION, PREVIOUS = "champion", "previous"
_STATE_FILE = "state_dict.pt"
# torch.export (behind MLflow's pt2 format) keeps module-level state during an export, so two
# exports in threads of one process corrupt each other ("_EXPORT_MODULE_HIERARCHY must not be
# None"): pipelines sharing a process log their models one at a time.
_EXPORT_LOCK = threading.Lock()
_MAX_TAG_VALUE = 100_000  # MLflow 3.17's MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH (a model-version tag's value)

# The tag the pipeline puts on every model it logs (and its version): the registered model it was logged for
LOGGED_FOR = "logged_for"


def setup(project: Project):
    """Point MLflow at the project's tracking URI and experiment; return a client.

    Args:
        project: The project.

    Returns:
        An ``mlflow.MlflowClient``.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    check_registry(project)  # a project opened without load_project's check (or the environment changed since)
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(project.tracking_uri)
    # MLflow exports the URI to MLFLOW_TRACKING_URI; undo that, or the next project opened in
    # this process would take this project's registry for a user-configured one.
    if user_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_uri
    name = project.params.registry.experiment
    client = mlflow.MlflowClient()
    if client.get_experiment_by_name(name) is None:
        _create_experiment(project, client, name)
    mlflow.set_experiment(name)
    pin_registry(project)
    adopt_model_name(project, client)
    return client


def adopt_model_name(project: Project, client) -> None:
    """A pin that names no model (new, rewritten after a deliberate move or rename, or written before the name was
    recorded): pin ``registry.model_name`` as soon as versions are registered under it, so a rename from then on is
    refused (:func:`tasks.project.check_registry`).

    Why not more: such a pin cannot tell a renamed name from a project moved to a new registry on purpose, or from
    a second project in a shared experiment, and the project's own ``data/state/train.json`` is removed by DVC
    before each train (it is not persisted); every inference from them refused legitimate users or let the rename
    through (reviews). A rename made before this first adoption is not detected (README, "Team setup").
    """
    if read_pin(project.registry_pin)[1] is None and client.search_model_versions(
            f"name='{model_name(project)}'", max_results=1):
        pin_model_name(project)


def has_registry(project: Project) -> bool:
    """True when there is an MLflow store to read (a server URI, or the project's SQLite file or folder)."""
    uri = project.tracking_uri
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).exists()
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file://").removeprefix("file:")).exists()
    return True


def reader(project: Project):
    """A client for reading the project's runs and registry, without :func:`setup`'s side effects.

    It sets no global tracking URI and creates no experiment (``unlearn status`` is read-only);
    with the SQLite store, open it only when :func:`has_registry` says the file exists, or
    MLflow creates it.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    return mlflow.MlflowClient(tracking_uri=project.tracking_uri, registry_uri=project.tracking_uri)


def recent_runs(project: Project, client, limit: int) -> list[Any]:
    """The project experiment's latest ``limit`` runs, newest first (none when the experiment does not exist)."""
    if limit <= 0:
        return []
    experiment = client.get_experiment_by_name(project.params.registry.experiment)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                              max_results=limit)


def uses_tracking_server(uri: str) -> bool:
    """True when ``uri`` names a tracking server rather than a store this process writes itself.

    A server (``http(s)://``, Databricks, ...) chooses the artifact location of new experiments;
    with ``--serve-artifacts`` that is ``mlflow-artifacts:/<experiment id>`` and every artifact
    upload, download and delete goes through the server. A database or file store URI is written
    directly by this process, so its artifacts go to the project's own ``mlartifacts/``.

    Args:
        uri: A tracking URI.
    """
    from urllib.parse import urlparse

    scheme = urlparse(uri).scheme.lower().split("+", 1)[0]
    return scheme not in {"", "file", "sqlite", "postgresql", "postgres", "mysql", "mssql"}


def _create_experiment(project: Project, client, name: str) -> None:
    """Create the experiment; another pipeline creating it at the same moment is not an error."""
    from mlflow.exceptions import MlflowException

    try:
        if uses_tracking_server(project.tracking_uri):
            client.create_experiment(name)
        else:
            project.artifact_root.mkdir(parents=True, exist_ok=True)
            client.create_experiment(name, artifact_location=project.artifact_root.as_uri())
    except MlflowException:
        if client.get_experiment_by_name(name) is None:  # not a lost race: a real failure
            raise


def log_dataset_input(dataset: Any, context: str) -> None:
    """``mlflow.log_input`` for a dataset, safe when another pipeline logs the same one at once.

    MLflow's SQL store looks a dataset up by (experiment, name, digest) and inserts it when it
    is missing; two runs of one experiment logging the same dataset at the same moment can both
    miss it, and the second insert fails on the unique key. The row then exists, so one retry
    links it to this run.

    Args:
        dataset: An ``mlflow.data`` dataset.
        context: The input's context tag (``training``, ``forget``, ...).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.log_input(dataset, context=context)
    except MlflowException as exc:
        text = str(exc).lower()
        if not any(marker in text for marker in ("unique", "duplicate key", "already exists")):
            raise
        mlflow.log_input(dataset, context=context)


def model_name(project: Project) -> str:
    """The registered model's name."""
    return project.params.registry.model_name


def champion_version(project: Project, client) -> Any | None:
    """The ModelVersion holding the ``champion`` alias, or None if there is none yet.

    None only when the registry says so: the model is not registered, or it has no such alias. Any other error (a
    locked SQLite store, a tracking server that answers 503) is raised: read as "no champion" it made the purge
    retire nothing and mark the batch retired, so a final "complete" certificate was issued while the version that
    trained on the deleted samples stayed loadable (review of 2026-12-07), and ``train`` would start a new baseline.
    MLflow reports a missing alias as an invalid parameter, not as a missing resource, so that case is confirmed on
    the registered model's aliases rather than read from the message.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    name = model_name(project)
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        try:
            aliases = client.get_registered_model(name).aliases
        except MlflowException as again:
            if again.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                return None
            raise exc from again
        if CHAMPION not in aliases:
            return None
        raise


def _export(model: nn.Module, example: torch.Tensor):
    """``torch.export`` as MLflow's pt2 format runs it: the batch dimension left to the exporter (``Dim.AUTO``)."""
    import torch
    from torch.export import Dim

    return torch.export.export(model, (example,), dynamic_shapes=[{0: Dim.AUTO}])


def check_exportable(model: nn.Module, example: torch.Tensor, name: str) -> None:
    """Refuse, before any training, a model that MLflow's pt2 format cannot save.

    Why: registration exports the trained model with ``torch.export``; a ``forward`` that branches on tensor
    values (``if x.max() > 1: ...``) passed every start-up check, trained the whole baseline and then failed
    at registration with a long traceback, exit 1. The export is tried on a copy of the untrained model (the
    caller's model and random state are untouched); it costs about 1.8 s in a fresh process (torch.export's
    first use), which is why the train stage runs it only for models the test suite does not export.

    Raises:
        PipelineError: Naming the model and the exporter's complaint.
    """
    import copy

    import torch

    with torch.random.fork_rng(devices=[]), _EXPORT_LOCK:
        try:
            _export(copy.deepcopy(model).cpu().eval(), example.cpu())
        except Exception as exc:  # noqa: BLE001 - torch.export raises many types; each one means "cannot register"
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise PipelineError(
                f"model.name {name!r}: torch.export cannot export this model, and MLflow's pt2 format (how every "
                f"model version is registered) needs it: {type(exc).__name__}: {first}. A forward pass must not "
                f"branch on tensor values or convert them to Python numbers. Nothing was trained or "
                f"registered") from None


def contract_tags(example: torch.Tensor, classes: list[str]) -> dict[str, str]:
    """What a consumer of a registered version needs to call it: the input it expects and what it returns.

    The signature alone says ``float32 (-1, C, H, W) -> float32 (-1, K)``: raw 0..255 pixels were accepted
    silently and gave a fifth of the accuracy, and nothing said the outputs are logits or which class each
    index is. The class names are also the version's artifact ``classes.json``; the ``classes`` tag is always
    a JSON list, left out (``output`` says so) only past MLflow's bound on a model-version tag (100,000
    characters in MLflow 3.17: tens of thousands of names).
    """
    import json

    shape = ", ".join(str(d) for d in example.shape[1:])
    names = json.dumps(list(classes))
    fits = len(names) <= _MAX_TAG_VALUE
    return {
        "input": f"float32 (N, {shape}): pixel values scaled to [0, 1] (8-bit pixels / 255), channels first",
        "output": f"logits (N, {len(classes)}), not probabilities: the class is the argmax; index -> name in "
                  + ("the 'classes' tag (a JSON list) and " if fits else "") + "the artifact classes.json",
        **({"classes": names} if fits else {}),
    }


def log_model(
    project: Project,
    model: nn.Module,
    example: torch.Tensor,
    *,
    architecture: dict[str, Any],
    classes: list[str],
    tags: dict[str, str],
) -> tuple[str, str]:
    """Log ``model`` in the active run and register it as a new version.

    Args:
        project: The project.
        model: The model (moved to the CPU for export).
        example: An input example, shape (2, C, H, W): a batch of 1 would be exported as a fixed batch size.
        architecture: ``model``, ``in_channels``, ``num_classes``: how to rebuild it.
        classes: Class names by label index (the version's input/output contract, :func:`contract_tags`).
        tags: Version tags (lineage, verdict, ...).

    Returns:
        (registered version, logged model id).
    """
    import json

    import mlflow
    import mlflow.pytorch
    import torch

    model = model.cpu().eval()
    # Version tags go in with the registration (one create_model_version call, not one call per tag);
    # MLflow puts the same tags on the logged model, which keeps the lineage there too.
    version_tags = {f"arch_{k}": str(v) for k, v in architecture.items()}
    version_tags.update(contract_tags(example, classes))
    version_tags.update({k: str(v) for k, v in tags.items()})
    # who logged it, on the logged model too: the purge deletes only the files of models the pipeline logged, and this
    # survives a renamed experiment (tasks.model_files.logged_elsewhere)
    version_tags[LOGGED_FOR] = model_name(project)
    # Pinned before the registration, not after: a crash in between would leave a version under a name no pin
    # holds, and a rename then would orphan it (a registration that fails leaves the name pinned; the refusal says
    # how to clear it).
    pin_model_name(project)
    with tempfile.TemporaryDirectory() as tmp, _EXPORT_LOCK:
        state_path = Path(tmp) / _STATE_FILE
        torch.save(model.state_dict(), state_path)
        classes_path = Path(tmp) / "classes.json"
        classes_path.write_text(json.dumps(list(classes)) + "\n")
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=example.numpy(),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            registered_model_name=model_name(project),
            extra_files=[str(state_path), str(classes_path)],
            tags=version_tags,
        )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_model_version_tag(model_name(project), version, "model_id", info.model_id)
    return version, info.model_id


def load_state(project: Project, client, version: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A registered version's state dict (no pickle execution) and its tags, without building the model.

    What byte-level evidence needs (:mod:`tasks.retired_weights`): the weights as stored, even when the
    version's model factory no longer imports.

    Raises:
        PipelineError: If the version is unknown, retired, or its artifact is missing or corrupt.
    """
    import mlflow
    import torch
    from mlflow.exceptions import MlflowException

    name = model_name(project)
    try:
        mv = client.get_model_version(name, version)
        if mv.tags.get("retired") == "true":
            raise PipelineError(f"model version {name}/{version} is retired ({mv.tags.get('retired_reason', '')}); "
                                "its artifacts were deleted")
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp)
            state = torch.load(Path(local) / "extra_files" / _STATE_FILE, map_location="cpu",
                               weights_only=True)
    except MlflowException as exc:
        raise PipelineError(f"model version {name}/{version} cannot be read: {exc}") from None
    except (FileNotFoundError, RuntimeError, EOFError, ValueError) as exc:
        raise PipelineError(f"model version {name}/{version} has a missing or corrupt artifact: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a store this machine cannot reach (a hand-registered s3:// source
        # without credentials): unreadable, said, never a purge that fails on every run (review of 2026-12-07)
        raise PipelineError(f"model version {name}/{version} cannot be read from its store: "
                            f"{type(exc).__name__}: {exc}") from None
    return state, dict(mv.tags)


def load_model(project: Project, client, version: str) -> nn.Module:
    """Rebuild a registered version from its state dict (no pickle execution).

    Raises:
        PipelineError: If the version is unknown or its artifact is missing or corrupt.
    """
    from unlearn.models import build_model

    state, arch = load_state(project, client, version)
    name = model_name(project)
    try:
        model = build_model(arch["arch_model"], int(arch["arch_in_channels"]), int(arch["arch_num_classes"]))
        model.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError) as exc:  # ValueError: a factory that no longer imports (ConfigError)
        raise PipelineError(f"model version {name}/{version} does not match its architecture tags: {exc}") from None
    return model.eval()


def previous_version(project: Project, client) -> Any | None:
    """The ModelVersion holding the ``previous`` alias (the champion before the last promotion), or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name(project), PREVIOUS)
    except MlflowException:
        return None


def move_champion(project: Project, client, new_version: str) -> str | None:
    """Give ``new_version`` the champion alias and the old champion the previous alias.

    Returns:
        The previous champion's version, if there was one.
    """
    name = model_name(project)
    old = champion_version(project, client)
    if old is not None and str(old.version) != str(new_version):
        client.set_registered_model_alias(name, PREVIOUS, str(old.version))
    client.set_registered_model_alias(name, CHAMPION, str(new_version))
    return None if old is None else str(old.version)


def withdraw_champion(project: Project, client, *, reason: str, at: str) -> str | None:
    """Stop serving any model: remove the ``champion`` and ``previous`` aliases, tag the versions why.

    Used when a deletion leaves too little data to train a successor: the served model holds the
    deleted samples and nothing may replace it. Retirement (artifact deletion) follows in purge.

    Returns:
        The version that was champion, if any.
    """
    name = model_name(project)
    aliases = client.get_registered_model(name).aliases
    for alias in (PREVIOUS, CHAMPION):
        if alias in aliases:
            client.set_model_version_tag(name, str(aliases[alias]), "withdrawn_reason", reason)
            client.set_model_version_tag(name, str(aliases[alias]), "withdrawn_at", at)
            client.delete_registered_model_alias(name, alias)
    return str(aliases[CHAMPION]) if CHAMPION in aliases else None


def all_versions(project: Project, client) -> list[Any]:
    """Every registered version of the project's model, oldest first."""
    found = client.search_model_versions(f"name='{model_name(project)}'")
    return sorted(found, key=lambda mv: int(mv.version))


def version_model_id(mv: Any) -> str | None:
    """The logged model behind a registered version, from MLflow's own registration fields.

    MLflow writes ``model_id`` and ``source`` (``models:/<model id>``) in the same call that creates
    the version, so they exist even when a crash came before the pipeline's own ``model_id`` tag; the
    tag is only the last resort (versions registered by older code).
    """
    if getattr(mv, "model_id", None):
        return str(mv.model_id)
    source = str(getattr(mv, "source", "") or "")
    if source.startswith("models:/m-") and "/" not in source[len("models:/"):]:
        return source[len("models:/"):]
    return mv.tags.get("model_id") or None


def entry_model_id(record: Any) -> str:
    """The logged model a ledger entry, certificate entry or audit record names; "" when it names none usable (a
    hand-edited value that is not a string was a dict key, and raised out of every purge and doctor run: review of
    2026-12-07)."""
    model_id = record.get("model_id") if isinstance(record, dict) else None
    return model_id if isinstance(model_id, str) else ""


def model_id_field(mv: Any) -> dict[str, str]:
    """``{"model_id": ...}`` to record with a version (empty when it names none): which logged model it was, since
    version numbers start again in another registry."""
    model_id = version_model_id(mv)
    return {"model_id": model_id} if model_id else {}


def registered_promotion(project: Project, client, version: str, run_id: str | None, batch_id: str) -> Any | None:
    """The registry's entry for the version a batch was promoted to, or None when this registry does not hold it.

    Found by the promoted attempt's run (MLflow's own field), never by the number alone: a project moved to another
    registry on purpose keeps its ledger while its versions are numbered from 1 again, so the number may now be
    another model's. A batch whose note names no run (written before notes carried it) is matched by the number and
    the version's ``request_batches`` tag, which must name the batch (or be cut short to fit: it cannot tell then).
    """
    if run_id:
        mv = find_version_by_run(project, client, run_id)
        return mv if mv is not None and str(mv.version) == str(version) else None
    found = client.search_model_versions(f"name='{model_name(project)}'")
    mv = next((mv for mv in found if str(mv.version) == str(version)), None)
    return mv if mv is not None and _names_batch(mv, batch_id) else None


def record_names_version(record: dict[str, Any], mv: Any) -> bool:
    """Whether an audit record about ``model_version`` N is about this registry's version N.

    A record names the model it is about (``model_id``) or the run that registered it (``run_id``); one written
    before records did is taken by its number, when what else it says agrees with the version: its ``batch_id``
    among the version's ``request_batches`` (a promotion), its ``data_version`` the version's (a consolidation).
    """
    if str(record.get("model_version")) != str(mv.version):
        return False
    if record.get("model_id"):
        return record["model_id"] == version_model_id(mv)
    if record.get("run_id"):
        return record["run_id"] == getattr(mv, "run_id", None)
    if record.get("data_version") and mv.tags.get("data_version") not in (None, record["data_version"]):
        return False
    batch = record.get("batch_id")
    return batch is None or _names_batch(mv, batch)


def _names_batch(mv: Any, batch_id: str) -> bool:
    """Whether the version's ``request_batches`` tag names the batch, or was cut short (``..., (N in all)``)."""
    listed = mv.tags.get("request_batches", "").split(",")
    return batch_id in listed or listed[-1].startswith("...")


def find_version_by_run(project: Project, client, run_id: str) -> Any | None:
    """The registered version created from ``run_id`` (MLflow's own field, set at registration,
    so a crash while the lineage tags were being written cannot lead to a second version)."""
    found = client.search_model_versions(f"name='{model_name(project)}' and run_id='{run_id}'")
    return sorted(found, key=lambda mv: int(mv.version))[0] if found else None
