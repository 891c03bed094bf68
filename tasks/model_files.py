"""Where a registered version's weights lie, and deleting them with checks (retirement).

A version registered by the pipeline names its logged model, whose artifact location holds the files. One registered
by hand may name only a path (``mlflow.MlflowClient().create_model_version(name, source=...)``): a folder of its own,
another version's model folder, or a run's artifacts. Those files are located from the source as well, so that a
version sharing another's folder is retired with it and guarded like it, instead of being kept for ever while the
other's retirement deletes the files it serves (review of 2026-12-07).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tasks.project import PipelineError, Project
from tasks.tracking import LOGGED_FOR, model_name, version_model_id

# MLflow's answers that no retry changes: what a source names does not exist, or the source is malformed
_NEVER_RESOLVES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "BAD_REQUEST"})


def model_artifact_locations(client, mv: Any, *, any_model: bool = False, _depth: int = 0) -> list[str]:
    """Every artifact location that holds this version's weights; empty when none can be determined.

    A version with a logged model: that model's location (MLflow 3 keeps a registered model's files there, not in
    the run's artifacts). One registered from a source of its own: the path (local or a URI), a ``runs:/`` source
    resolved to the run's artifacts and the run's logged model of that name (where MLflow 3 loads it from), a
    ``models:/<name>/<number>`` source of its own registered model to that version's locations. An alias source
    (``models:/<name>@<alias>``) moves with the alias, and another registered model's version is that model's
    (review of 2026-12-07: its served files were deleted): they locate nothing, unless ``any_model`` (what another
    model serves: it may be one of this model's versions).
    """
    from mlflow.exceptions import MlflowException

    model_id = version_model_id(mv)
    source = str(getattr(mv, "source", "") or "")
    try:
        if model_id:
            return logged_model_locations(client, model_id)
        if source.startswith("runs:/"):
            run_id, _, path = source[len("runs:/"):].partition("/")
            run, path = client.get_run(run_id), path.strip("/")
            base = run.info.artifact_uri.rstrip("/")
            return [f"{base}/{path}" if path else base, *_run_logged_models(client, run, path)]
        if source.startswith("models:/"):
            name, _, number = source[len("models:/"):].rpartition("/")
            if not (name and number.isdigit()) or (name != getattr(mv, "name", None) and not any_model) \
                    or _depth >= 5:
                return []  # an alias moves; another registered model's files are not this one's to locate
            return model_artifact_locations(client, client.get_model_version(name, number), any_model=any_model,
                                            _depth=_depth + 1)
    except MlflowException as exc:
        if exc.error_code not in _NEVER_RESOLVES:  # a registry error is raised, never taken for "no files"
            raise
        # the logged model, run or version it names is gone (deleted by hand), or the source can never name one
        # (`runs://model`: review of 2026-12-07, every purge and doctor run raised on it): nothing located
        return []
    return [source] if source else []


def logged_model_locations(client, model_id: str) -> list[str]:
    """Where a logged model's files are, by its id; empty when this tracking store holds no such model (deleted by
    hand, or logged in another store: ids are unique, so one found here is this store's). For a version removed from
    the registry, whose ledger entry still names the logged model it was (:mod:`tasks.deregistered`).
    """
    logged = _logged_model(client, model_id)
    return [logged.artifact_location] if logged is not None else []


def _logged_model(client, model_id: str) -> Any | None:
    """The logged model of this id, or None when it is gone or can never be named (a registry error is raised,
    never taken for "no model")."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_logged_model(model_id)
    except MlflowException as exc:
        if exc.error_code not in _NEVER_RESOLVES:
            raise
        return None


def project_experiment_id(client, project: Project) -> str | None:
    """The project's experiment's id (where the pipeline logs its models); None when it does not exist."""
    experiment = client.get_experiment_by_name(project.params.registry.experiment)
    return experiment.experiment_id if experiment is not None else None


def logged_elsewhere(client, model_id: str, experiment_id: str | None, model_name: str,
                     version_tag: str | None = None) -> str | None:
    """Why a logged model's files are not the pipeline's to delete because someone else logged it (another team's
    model registered into this one by its id: deleted like the pipeline's own until a review of 2026-12-07), or None.

    The pipeline's own: tagged :data:`LOGGED_FOR` with the project's registered model name when it was logged (which
    survives renaming the experiment, or changing ``registry.experiment``: third review); tagged with another name
    that its version in this registered model carries too (``version_tag``: the pipeline registers a model under the
    name it tags it with, so this registered model had that name: the documented rename, fifth review; a version
    registered here by hand, by the model's id, carries no such tag: sixth review); or untagged (logged before the
    tag; a blank tag is none) and in the project's experiment (``experiment_id``; None: it does not exist).
    Otherwise it is held: a tagged one is another project's (its files may be that project's live version's); an
    untagged one elsewhere may be the pipeline's own from before an experiment change, and the reason says how to
    claim it.
    """
    logged = _logged_model(client, model_id)
    if logged is None:
        return None  # gone: nothing located, said where the files are looked for
    tagged = str((logged.tags or {}).get(LOGGED_FOR) or "").strip() or None
    if tagged is not None:
        if tagged == model_name or tagged == version_tag:
            return None
        return (f"its logged model ({model_id}) is tagged {LOGGED_FOR}={tagged!r}, not this project's "
                f"{model_name!r}, and was not registered here under that name by the pipeline: another project "
                "logged it, and the pipeline deletes only models it logged")
    if experiment_id is not None and str(logged.experiment_id) == str(experiment_id):
        return None
    return (f"its logged model ({model_id}) carries no {LOGGED_FOR} tag and was logged in experiment "
            f"{logged.experiment_id}, not the project's: the pipeline cannot tell that it logged it, so it does not "
            "delete its files (one it logged before the tag, in an experiment since renamed or changed: tag the "
            f"logged model {LOGGED_FOR}={model_name} and the next purge retires it)")


def with_targets(locations: list[str]) -> list[str]:
    """The locations and, for a local one reached through a link, the real folder it leads to: files recorded to be
    shown gone later are gone only when both are (review of 2026-12-07: a recorded link, removed, read "gone" while
    its target still held the weights)."""
    out = list(locations)
    for location in locations:
        local = _local_path(location)
        if local is None:
            continue
        try:
            real = str(local.resolve())
        except OSError:  # a link loop: the location alone, which then never lists as gone
            continue
        if real not in out and real != str(local):
            out.append(real)
    return out


def _run_logged_models(client, run: Any, path: str) -> list[str]:
    """Where MLflow 3 also loads ``runs:/<run>/<name>/<rest>`` from: the run's logged model called ``<name>`` (its
    files are no longer in the run's artifacts). Read as MLflow's runs: repository reads it (review of 2026-12-07:
    another model's alias on such a source lost its files with version 1's)."""
    name, _, rest = path.partition("/")
    if not name or "'" in name:
        return []
    found, token = [], None
    while True:
        page = client.search_logged_models(experiment_ids=[run.info.experiment_id], filter_string=f"name = '{name}'",
                                           page_token=token)
        found += [m.artifact_location.rstrip("/") + (f"/{rest}" if rest else "") for m in page
                  if m.source_run_id == run.info.run_id]
        token = getattr(page, "token", None)
        if not token:
            return found


def _place(location: str) -> tuple[str, tuple[str, ...]]:
    """A location as (where, path parts), so two can be compared part by part: a local one resolved."""
    local = _local_path(location)
    if local is not None:
        return "file", local.resolve().parts
    scheme, _, rest = location.partition(":")
    return scheme, tuple(part for part in rest.split("/") if part)


def served_by_other_models(client, name: str) -> list[tuple[str, list[str]]]:
    """``(model@alias, locations)`` for every alias of every other registered model in the registry: a team
    registry's models may serve one folder, and its files are never deleted while one does (review of 2026-12-07:
    another model's champion lost its files)."""
    served, token = [], None
    while True:
        page = client.search_registered_models(max_results=100, page_token=token)
        for registered in page:
            if registered.name == name:
                continue
            for alias, number in (registered.aliases or {}).items():
                version = client.get_model_version(registered.name, str(number))
                served.append((f"{registered.name}@{alias}", model_artifact_locations(client, version, any_model=True)))
        token = getattr(page, "token", None)
        if not token:
            return served


def files_key(locations: list[str]) -> str | None:
    """One key for versions on exactly the same files (locations compared resolved); None when none is located."""
    return "\n".join(sorted(f"{scheme}:/{'/'.join(parts)}" for scheme, parts in map(_place, locations))) or None


def locations_overlap(first: list[str], second: list[str]) -> bool:
    """Whether any location of ``first`` is, holds or lies in one of ``second``: deleting one deletes files of the
    other (a folder registered by hand may be another version's model folder, or a folder above or inside it)."""
    for a in map(_place, first):
        for b in map(_place, second):
            shorter = min(len(a[1]), len(b[1]))
            if a[0] == b[0] and a[1][:shorter] == b[1][:shorter]:
                return True
    return False


# Why a version registered by hand from a path keeps its files: the pipeline deletes the files of models it logged.
NOT_LOGGED = ("registered by hand from a path, with no logged model: the pipeline deletes only the files of models "
              "it logged (once they are removed, the next purge retires the version)")


# The same, for a remote source: a store lists what lies under a path, so its files can never be shown gone
NOT_LOGGED_REMOTE = ("registered by hand from a remote source, with no logged model: the pipeline deletes only the "
                     "files of models it logged, and cannot show a remote source's files gone")


def is_local(location: str) -> bool:
    """Whether a location is a path on this machine (a ``file:`` URI or a plain path), not a store's URI."""
    return _local_path(location) is not None


def undeletable_reason(project: Project, locations: list[str]) -> str | None:
    """Why the pipeline may not delete a logged model's files, or None when it may: none located, or a local one
    outside the project's artifact store (or the store itself: MLflow records absolute paths, so a moved or
    restored project's point at a folder that is not the one its weights are in)."""
    if not locations:
        return "its files cannot be located"
    root = project.artifact_root.resolve()
    for location in locations:
        local = _local_path(location)
        if local is not None and (local.resolve() == root or not local.resolve().is_relative_to(root)):
            return "its files lie outside the project's artifact store (a moved or restored project?)"
    return None


def files_gone(locations: list[str]) -> bool:
    """Whether every location is verifiably empty or absent (what a tombstone may then claim); a listing error, no
    location at all, or a remote one is not "gone": a store lists what lies under a path, so a source naming one
    object (``s3://bucket/weights.pt``) would list empty while the object is there (review of 2026-12-07)."""
    if not locations or not all(map(is_local, locations)):
        return False
    try:
        return all(artifacts_remaining(location) == 0 for location in locations)
    except PipelineError:
        return False


def _local_path(location: str) -> Path | None:
    """The filesystem path of a local artifact location (``file:`` URI or plain path); None for a remote one: any
    other scheme, ``dbfs:/...`` and ``gs:/...`` included (taken for relative paths, they "did not exist": review of
    2026-12-07)."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    if not location.startswith("file:") and re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", location):
        return None
    # as MLflow reads it when it loads the version: a plain path is un-escaped too (`my%20model` is `my model`)
    return Path(local_file_uri_to_path(location))


def _count_local(local: Path) -> int:
    """Files (and links) at a local location: a file counts as one, an absent path as none; a folder that cannot
    be read raises (``Path.rglob`` skipped it, and its files counted as none)."""
    import os

    def unreadable(exc: OSError) -> None:
        raise PipelineError(f"artifact location {local} cannot be listed ({exc}); nothing is claimed") from exc

    try:  # a folder above it that cannot be searched raises here (EACCES), not "absent"
        if not local.exists():
            return 0
        if not local.is_dir():
            return 1
    except OSError as exc:
        unreadable(exc)

    count = 0
    for folder, dirs, files in os.walk(local, onerror=unreadable):
        count += len(files) + sum(1 for name in dirs if os.path.islink(os.path.join(folder, name)))
    return count


def artifacts_remaining(location: str, root: Path | None = None) -> int:
    """How many files are still listed at an artifact location; 0 only when it is verifiably empty or absent.

    A listing error is never "no files": only a location confirmed absent counts as empty. A local location
    must lie under ``root`` (the project's artifact store) when given: MLflow records absolute paths, so in
    a moved or restored project it would point at a folder that no longer exists while the weights sit in
    the new one, and "absent" would be a false claim.

    Raises:
        PipelineError: The location is outside ``root``, or it cannot be listed.
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    local = _local_path(location)
    if local is not None:
        if root is not None and not local.resolve().is_relative_to(Path(root).resolve()):
            raise PipelineError(f"artifact location {local} lies outside the project's artifact store {root} "
                                "(moved or restored project?): its files cannot be shown deleted")
        return _count_local(local)
    pending, count = [None], 0
    while pending:
        path = pending.pop()
        try:
            entries = get_artifact_repository(location).list_artifacts(path)
        except FileNotFoundError:
            continue  # confirmed absent
        except Exception as exc:  # noqa: BLE001 - a 403/404/500 or a network error proves nothing
            raise PipelineError(f"artifact location {location} cannot be listed ({exc}); nothing is claimed") from exc
        for entry in entries:
            if entry.is_dir:
                pending.append(entry.path)
            else:
                count += 1
    return count


def retire_version(project: Project, client, mv: Any, *, reason: str, batches: list[str], at: str,
                   sharing: list[str] = ()) -> bool:
    """Delete a version's model artifacts; keep its registry entry as a tagged tombstone.

    ``artifacts_deleted=true`` is written only after the artifact store lists no file at the
    version's locations any more; ``retired=true`` comes last, so a crash at any point leaves
    either a version that is retried on the next run or a tombstone whose claims were checked.
    Aliases that point at it are removed first (an alias must never resolve to a model that cannot
    be loaded). Idempotent: a version already retired is left alone. A version registered by hand from a path (no
    logged model) is only shown gone, never deleted (:data:`NOT_LOGGED`).

    Args:
        project: The project.
        client: An MLflow client.
        mv: The ModelVersion.
        reason: Why (recorded as a tag).
        batches: The deletion batches that made it retire (recorded, truncated to fit a tag).
        at: ISO-8601 time.
        sharing: Other versions whose files overlap its own (:func:`locations_overlap`), retiring with it (their
            aliases go too).

    Returns:
        True when artifacts were deleted (and verified gone) now, False when it was already retired.

    Raises:
        PipelineError: The version's artifacts cannot be located, or files remain after deletion; nothing
            is claimed then, and the next run retries.
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    name, version = model_name(project), str(mv.version)
    if mv.tags.get("retired") == "true":
        return False
    locations = model_artifact_locations(client, mv)
    model_id = version_model_id(mv)
    logged = model_id is not None
    # Registered by hand from a path: never deleted here, only shown gone (deleted with the logged model it shares
    # its folder with, earlier in the same retirement, or removed by an operator).
    problem = undeletable_reason(project, locations) if logged else (None if files_gone(locations) else NOT_LOGGED)
    if problem:
        raise PipelineError(f"model version {name}/{version}: {problem}, so its weights cannot be deleted or shown "
                            "deleted; run `unlearn doctor`")
    # search_model_versions does not fill in aliases: read them from the registered model.
    aliases = client.get_registered_model(name).aliases
    going = {version, *map(str, sharing)}
    for alias, target in aliases.items():  # the files a live alias serves are never deleted (review of 2026-12-07)
        other = client.get_model_version(name, str(target)) if str(target) not in going else None
        if other is not None and other.tags.get("retired") != "true" and locations_overlap(
                model_artifact_locations(client, other, any_model=True), locations):
            raise PipelineError(f"model version {name}/{version} shares its weights with version {target} "
                                f"({alias}): they are not deleted; run `unlearn doctor`")
    for alias, target in aliases.items():  # checked first: a refused retirement keeps the rollback target
        if str(target) in going:
            client.delete_registered_model_alias(name, alias)
    root = project.artifact_root if logged else None
    for location in locations if logged else ():
        if artifacts_remaining(location, root):
            local = _local_path(location)  # the folder itself, never through a link to it (rmtree refuses links)
            get_artifact_repository(str(local.resolve()) if local is not None else location).delete_artifacts()
    left = sum(artifacts_remaining(location, root) for location in locations)
    if left:
        raise PipelineError(f"model version {name}/{version}: {left} artifact file(s) remain after deletion; "
                            "nothing was marked deleted")
    batch_tag = ",".join(batches)
    if len(batch_tag) > 4000:  # MLflow tag values are bounded; the ledger holds the full list
        batch_tag = f"{','.join(batches[:50])},... ({len(batches)} batches)"
    tombstone = {"retired_reason": reason, "retired_batches": batch_tag, "retired_at": at,
                 "artifacts_deleted": "true", "retired": "true"}
    # The logged model behind the version (MLflow 3 lists it on its own, READY, with the version's lineage tags)
    # says the same, before the version's `retired` that ends the retries: a crash in between redoes both.
    if logged:
        client.set_logged_model_tags(model_id, tombstone)
    for key, value in tombstone.items():
        client.set_model_version_tag(name, version, key, value)
    return True
