"""Where a project's files live, and its parameters, resolved from one root directory."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from unlearn.config import ConfigError, Params, load_params


class PipelineError(RuntimeError):
    """A stage cannot proceed; the message says why and what to do."""


@dataclass(frozen=True)
class Project:
    """A project checkout: ``params.yaml``, ``dvc.yaml`` and ``data/`` under ``root``.

    Args:
        root: The project directory (made absolute).
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @cached_property
    def params(self) -> Params:
        """The validated parameters (read once).

        A relative ``data.source_path`` is taken relative to the project root, as ``dvc repro`` (which runs each
        stage in the root) reads it: from another working directory (``unlearn --root``) it would otherwise name
        another place, or nothing (``~`` is expanded too).
        """
        params = load_params(self.root / "params.yaml")
        if params.data.source_path:
            path = Path(params.data.source_path).expanduser()
            resolved = str(path if path.is_absolute() else self.root / path)
            if resolved != params.data.source_path:
                params = replace(params, data=replace(params.data, source_path=resolved))
        return params

    # Data and request state, all under data/.
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def requests_dir(self) -> Path:
        return self.data_dir / "requests"

    @property
    def incoming_dir(self) -> Path:
        return self.requests_dir / "incoming"

    @property
    def rejected_dir(self) -> Path:
        return self.requests_dir / "rejected"

    @property
    def acknowledged_dir(self) -> Path:
        """Per-ingest logs of requests that deleted nothing new (repeats, samples already deleted)."""
        return self.requests_dir / "acknowledged"

    @property
    def batches_dir(self) -> Path:
        return self.requests_dir / "batches"

    @property
    def ledger_path(self) -> Path:
        return self.requests_dir / "ledger.json"

    @property
    def redactions_path(self) -> Path:
        """Data versions whose deleted samples were purged from the DVC cache and remote."""
        return self.requests_dir / "redactions.json"

    @property
    def salt_path(self) -> Path:
        return self.requests_dir / ".salt"

    @property
    def quarantine_dir(self) -> Path:
        """Forget samples of open batches: kept only until a verified model is promoted."""
        return self.data_dir / "quarantine"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "state"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def references_dir(self) -> Path:
        """Cached reference models for membership inference, with their lineage."""
        return self.data_dir / "references"

    @property
    def signals_dir(self) -> Path:
        """Cached per-model logits, keyed by sample id."""
        return self.data_dir / "signals"

    @property
    def audit_path(self) -> Path:
        """The hash-chained, append-only audit log of every deletion."""
        return self.data_dir / "audit" / "audit.jsonl"

    @property
    def certificates_dir(self) -> Path:
        """Per-request deletion certificates (JSON + HTML)."""
        return self.data_dir / "certificates"

    @property
    def lock_path(self) -> Path:
        """Held by a pipeline run, so two runs serialise."""
        return self.data_dir / ".pipeline.lock"

    @property
    def plots_dir(self) -> Path:
        return self.reports_dir / "plots"

    @property
    def home(self) -> Path:
        """The project this checkout belongs to: its own root, or, for a DVC queued or ``--temp`` experiment
        (run in a temporary checkout ``<project>/.dvc/tmp/exps/<dir>/``), the project that queued it.

        Why: the registry is the project's, not the checkout's. A temporary checkout's own ``mlflow.db`` is a
        fresh, empty registry (it would train a second baseline on already-redacted data), and the registry
        pin (:func:`check_registry`) refused the project's real one as "another store". A project in a
        folder of its Git repository runs in ``<project>/.dvc/tmp/exps/<dir>/<folder>/``.
        """
        parts = self.root.resolve().parts
        for i in range(len(parts) - 4, 0, -1):  # the innermost: the checkout, or a project folder inside it
            if parts[i:i + 3] == (".dvc", "tmp", "exps"):
                home = Path(*parts[:i])
                if (home / "params.yaml").exists():
                    return home
        return self.root

    @property
    def tracking_uri(self) -> str:
        """MLFLOW_TRACKING_URI if set, else the SQLite file of the project (:attr:`home`)."""
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def registry_identity(self) -> str:
        """Which MLflow store this process would use, without credentials: the project's own SQLite file (it
        moves with the project), or the tracking URI's scheme, host, port and path."""
        from urllib.parse import urlsplit

        uri = self.tracking_uri
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if not scheme and "/" not in uri and not uri.startswith("."):  # a named store: databricks, databricks-uc
            return uri
        if scheme in ("sqlite", "file", ""):  # a file: the same file however the path is spelled
            # sqlite:///relative and sqlite:////absolute (SQLAlchemy); file:///absolute; or a plain path
            path = uri.split("?", 1)[0].removeprefix("sqlite:///") if scheme == "sqlite" else (
                parts.path if scheme else uri)
            resolved = Path(path).expanduser().resolve()
            if resolved == (self.home / "mlflow.db").resolve():
                return "the project's own mlflow.db"
            return f"sqlite:///{resolved}" if scheme == "sqlite" else f"file://{resolved}"
        host = (parts.hostname or "").lower()
        port = parts.port if parts.port not in ({"http": 80, "https": 443}.get(scheme), None) else None
        return f"{scheme}://{host}{f':{port}' if port else ''}{parts.path.rstrip('/')}"

    @property
    def registry_pin(self) -> Path:
        """Where the registry the project's models are registered in is recorded (:func:`check_registry`)."""
        return self.data_dir / ".registry"

    @property
    def artifact_root(self) -> Path:
        """The artifact store beside the registry (:attr:`home`'s): a temporary checkout's is deleted with it."""
        return self.home / "mlartifacts"


def load_project(root: str | Path = ".", *, check_registries: bool = True) -> Project:
    """Open a project and validate its params.yaml: its types, and every name against the registries.

    The registry check (:func:`tasks.stage.checks.check_params`: method, attack, model and
    source names, method keyword arguments, gate metrics) runs here so that no stage, flow or
    command can start work on a configuration that would fail halfway.

    Args:
        root: The project directory.
        check_registries: Only commands that never run a stage (submitting a request, request
            status, certificates, the audit check) turn it off: the registries import PyTorch,
            seconds such a command should not pay.

    Raises:
        ConfigError: If params.yaml is missing or invalid.
    """
    project = Project(Path(root))
    if not (project.root / "params.yaml").exists():
        raise ConfigError(f"{project.root / 'params.yaml'}: file not found (is this a project root?)")
    _ = project.params
    if check_registries:
        from tasks.stage.checks import check_params  # imports the registries (and PyTorch) only here

        check_params(project.params)
        check_registry(project)
    return project


def read_pin(path: Path) -> tuple[str, str | None]:
    """The pin's store identity (first line) and the registered model's name (``model_name: ...``; None until the
    project's first version is registered, and in a pin written before the name was recorded)."""
    lines = path.read_text().split("\n")  # "\n" only: the name is checked to hold no other line break either
    identity = lines[0].strip()
    name = next((line.split(":", 1)[1].strip() for line in lines[1:] if line.startswith("model_name:")), None)
    return identity, name


def check_registry(project: Project) -> None:
    """Refuse to run against another MLflow store, or another registered model, than the project's models use.

    Why: the tracking URI comes from the environment (team mode: ``MLFLOW_TRACKING_URI``). A shell that
    forgot it trained and registered a second champion in a new local ``mlflow.db``, and exited 0: two
    registries, two champions, and certificates that each see half of the history. The first registry
    use records the store (:func:`pin_registry`); delete ``data/.registry`` to move a project on purpose.
    The registered model's name (``registry.model_name``) is pinned with it when the first version is registered
    (:func:`pin_model_name`), for the same reason: retirement, the split check and certificates read the
    versions of that one name, so after a rename the old name's versions, trained on samples deleted later,
    would never be retired, and a changed split would not be refused.

    Raises:
        PipelineError: Naming both stores (no credentials) or both model names and the way out, before any work.
    """
    pin = project.registry_pin
    if not pin.exists():
        own = project.registry_identity == "the project's own mlflow.db"
        if own and not (project.home / "mlflow.db").exists() and (project.state_dir / "train.json").exists():
            # A baseline was trained, but not into a registry here: a project from before the pin, run from a shell
            # that forgot the team's MLFLOW_TRACKING_URI, would otherwise pin the wrong store at its first use.
            raise PipelineError("this project has trained a model, but its registry is neither named "
                                f"({pin} is missing) nor the project's own mlflow.db (absent): set MLFLOW_TRACKING_URI "
                                "to the project's registry. Nothing was changed.")
        return
    (recorded, recorded_name), now = read_pin(pin), project.registry_identity
    if recorded and recorded != now:
        unset = "unset" if not os.environ.get("MLFLOW_TRACKING_URI") else "set to another store"
        raise PipelineError(f"this project's models are registered in {recorded}, but this process would use "
                            f"{now} (MLFLOW_TRACKING_URI is {unset}): a second registry would hold a second "
                            f"champion. Point MLFLOW_TRACKING_URI at the project's registry, or, to move the project "
                            f"on purpose, delete {pin}. Nothing was changed.")
    configured = project.params.registry.model_name
    if recorded_name is not None and recorded_name != configured:
        raise PipelineError(
            f"this project's models are registered as {recorded_name!r} ({pin}), but params.yaml's "
            f"registry.model_name is {configured!r}: the versions of {recorded_name!r} would no longer be retired "
            f"when samples they trained on are deleted, nor seen by the split check. Set registry.model_name back to "
            f"{recorded_name!r}; to rename on purpose, rename the registered model in MLflow first "
            f"(MlflowClient().rename_registered_model), then delete {pin} (also if no version was ever registered as "
            f"{recorded_name!r}: the name is pinned when a registration starts). Nothing was changed.")


def pin_registry(project: Project) -> None:
    """Record the store of the project's registry at its first use (see :func:`check_registry`)."""
    from unlearn.files import write_text_atomic

    if not project.registry_pin.exists():
        project.registry_pin.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(project.registry_pin, project.registry_identity + "\n")


def pin_model_name(project: Project) -> None:
    """Add ``registry.model_name`` to the pin when a version is about to be registered under it (see
    :func:`check_registry`).

    Called just before a registration (``tasks.tracking.log_model``), so a training that failed or diverged
    before it pins nothing, and a crash after it cannot leave a version under an unpinned name. A pin that
    already names a model is left as it is.
    """
    from unlearn.files import write_text_atomic

    identity, recorded_name = read_pin(project.registry_pin) if project.registry_pin.exists() else (
        project.registry_identity, None)
    if recorded_name is None:
        project.registry_pin.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(project.registry_pin, f"{identity}\nmodel_name: {project.params.registry.model_name}\n")


def quarantine_path(project: Project, batch_id: str) -> Path:
    """Where a pending batch's forget samples are kept until a model without them is promoted.

    Here rather than in ``tasks.stage.context`` (which re-exports it), whose torch-heavy imports purge and
    certify do not otherwise need.
    """
    return project.quarantine_dir / f"{batch_id}.npz"


def open_quarantines(project: Project, ledger: Any, closing: Any = ()) -> list[Path]:
    """The quarantine files of batches not yet purged (pending, promoting, or completed with the purge still to
    come), ``closing`` ones left out.

    They hold, by design, the bytes of samples whose deletion is not finished: a byte scan for other deleted samples
    leaves them out (a deleted sample identical to one of theirs would otherwise be "found" there, and refuse a purge
    until that other batch closes), and its evidence counts them as not scanned. Only these exact files: a stale
    quarantine file of a purged or unknown batch is scanned like any other.
    """
    keep = set(closing)
    unpurged = [b for b in ledger.batches if b not in keep and "purged" not in ledger.steps(b)]
    return [path for b in unpurged if (path := quarantine_path(project, b)).is_file()]


def read_quarantine(project: Project, batch_id: str) -> Any:
    """A batch's quarantined forget samples (:class:`unlearn.data.store.Arrays`: ids, images, labels).

    Raises:
        FileNotFoundError: The batch has no quarantine file (never prepared, or purged).
    """
    import numpy as np

    from unlearn.data.store import Arrays

    with np.load(quarantine_path(project, batch_id), allow_pickle=False) as data:
        return Arrays(data["ids"], data["images"], data["labels"])
