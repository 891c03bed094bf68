"""Model versions an operator removed from the registry while they were scheduled for retirement.

Split from :mod:`tasks.lifecycle`, whose :func:`~tasks.lifecycle.retire_models` calls :func:`settle_deregistered` at
the end of every purge's retirements, and records what this module reads back: where each scheduled version's files
were (``files``, in the project folder ``home``, in the registered model ``registry``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from tasks import audit, model_files, tracking
from tasks.project import Project
from unlearn.files import utc_now
from unlearn.requests import Ledger

DEREGISTERED = "removed from the registry outside the pipeline before it was retired"


def registry_identity(registered: Any) -> str:
    """Which registered model a hand version was scheduled in: its creation time (one deleted and created again, or
    another registry's of the same name, was created at another time, and its version numbers start again)."""
    return str(registered.creation_timestamp)


def entry_is_version(entry: dict[str, Any], mv: Any, identity: Callable[[], str]) -> bool:
    """Whether a ledger entry is about this registry version ``mv`` of its number: the logged model it names (a hand
    version under that number is not it), or, for a hand version's entry, a hand version of the same registered model
    (``identity``: :func:`registry_identity` of the registered model now; one deleted and created again numbers its
    versions from 1: reviews of 2026-12-07). An older entry, which says neither, is taken for it, as before."""
    model_id = tracking.entry_model_id(entry)
    if model_id:
        return tracking.version_model_id(mv) == model_id
    if entry.get("registry") is not None:
        return tracking.version_model_id(mv) is None and entry["registry"] == identity()
    return True


def recorded_files(entry: dict[str, Any]) -> list[str]:
    """The file locations a ledger entry recorded, or none when it recorded nothing usable (a hand-edited ledger's
    ``files`` that is not a list of strings: taken for nothing recorded, never walked; review of 2026-12-07)."""
    files = entry.get("files")
    return list(files) if isinstance(files, list) and all(isinstance(f, str) and f for f in files) else []


def settle_deregistered(project: Project, client: Any, ledger: Ledger, versions: dict[str, Any],
                        identity: Callable[[], str] | None = None) -> list[dict[str, Any]]:
    """Close, or hold with the reason, the scheduled retirements of versions the registry no longer holds.

    An operator may delete a registry version that was scheduled or held for retirement. :func:`retire_models` never
    met it again, so its batches' entries said "scheduled" for good, and their certificates stayed interim with a
    version "kept for rollback" that could not be rolled back to (left open by the note of 2026-12-07). An entry is
    this registry's version only when the version under its number is the same model: the logged model it names, or,
    for one registered by hand, a hand version of the same registered model (one deleted and created again numbers
    its versions from 1). Its files are where the entry recorded them in this project folder (the real folders behind
    links included), and its logged model's folder when this tracking store still holds it; a logged model's must lie
    in the project's artifact store (a moved project's paths say nothing here). Shown gone, the entry is closed:
    retired, its artifacts gone (not deleted by the pipeline, which deletes files only through a registered version
    it can tombstone), its weights not searched for (no fingerprint was taken), with a ``model.retired`` audit record
    saying so. Otherwise it stays scheduled, held with the reason: where its files remain, that something still
    serves them (never "remove them" then), or that they cannot be located.

    ``versions``: every version of the registry, by number; ``identity``: :func:`registry_identity` of the
    registered model, when the caller reads it already (read here otherwise, once, only if an entry needs it).
    Returns one action per version closed or held, as :func:`retire_models`' own.
    """
    name = tracking.model_name(project)

    identity = identity or functools.cache(lambda: registry_identity(client.get_registered_model(name)))

    # (version, logged model id or "", where a hand entry was recorded) -> its batches, oldest first: two registered
    # models' hand versions under one number are two versions, each shown gone on its own files (second review)
    stale: dict[tuple[str, str, str], list[str]] = {}
    for batch_id in ledger.oldest_first():
        for version, entry in ledger.batch(batch_id).get("retirement", {}).items():
            if entry.get("action") != "scheduled":
                continue
            mv, model_id = versions.get(version), tracking.entry_model_id(entry)
            if mv is not None and entry_is_version(entry, mv, identity):
                continue
            where_recorded = "" if model_id else f"{entry.get('registry')}|{entry.get('home')}"
            stale.setdefault((version, model_id, where_recorded), []).append(batch_id)
    if not stale:
        return []
    live = sorted((v for v, mv in versions.items() if mv.tags.get("retired") != "true"), key=int)

    @functools.cache
    def where(version: str) -> list[str]:  # what a live version serves, through another model's version too
        return model_files.model_artifact_locations(client, versions[version], any_model=True)

    @functools.cache
    def served_by_others() -> list[tuple[str, list[str]]]:  # read once, only when some stale one's files remain
        return model_files.served_by_other_models(client, name)

    @functools.cache
    def experiment_id() -> str | None:
        return model_files.project_experiment_id(client, project)

    actions: list[dict[str, Any]] = []
    for (version, model_id, _), batches in stale.items():
        entries = [ledger.batch(b)["retirement"][version] for b in batches]
        mid = {"model_id": model_id} if model_id else {}
        # recorded in this project folder: else a moved project's paths, absent here, would read "gone"
        recorded = sorted({f for e in entries if e.get("home") == str(project.root) for f in recorded_files(e)})
        unusable = None
        if model_id:
            # its logged model's folder, while this store holds it (deleted by the operator too: what was recorded)
            locations = sorted({*recorded, *model_files.with_targets(
                model_files.logged_model_locations(client, model_id))})
            # a moved or restored project's logged model names the folder it was in (review of 2026-12-07)
            unusable = model_files.undeletable_reason(project, locations) if locations else None
        else:
            locations = recorded
        if locations and not unusable and model_files.files_gone(locations):
            at = utc_now()
            note = f"{DEREGISTERED}: its files were shown gone"
            if not audit.has_record(project, "model.retired", model_version=version, deregistered=True,
                                    batch_ids=batches, **mid):  # a crash before the ledger was saved: once
                audit.record(project, "model.retired", model_version=version, reason=note, batch_ids=batches,
                             artifacts_deleted=True, deregistered=True, **mid)
            for batch_id, entry in zip(batches, entries, strict=True):
                closed = {k: v for k, v in entry.items() if k != "held"}
                ledger.record_retirement(batch_id, version, {
                    **closed, "action": "retired", "reason": f"{entry.get('reason') or ''}; {note}".lstrip("; "),
                    "retired_at": at, "deregistered": True, "weights_searched": False, "files": locations,
                    "home": str(project.root)})
            actions.append({"version": version, "action": "retired", "reason": note, "batches": batches,
                            "retired_at": at, "deregistered": True, **mid})
            continue
        # Never "remove them" of files something still serves (review of 2026-12-07)
        sharing = next((v for v in live if model_files.locations_overlap(where(v), locations)), None)
        elsewhere = next((label for label, served in served_by_others()
                          if model_files.locations_overlap(served, locations)), None) if locations else None
        if sharing:  # another registration of the same files: they go, or stay, with that version's retirement
            held = (f"{DEREGISTERED}; its files are also those of version {sharing}, still registered: they are "
                    "deleted, or kept, with that version")
        elif elsewhere:
            held = f"{DEREGISTERED}; its files are also served by {elsewhere}, another registered model's alias"
        elif unusable:
            held = f"{DEREGISTERED}; {unusable}: they cannot be shown deleted"
        elif model_id and (foreign := model_files.logged_elsewhere(
                client, model_id, experiment_id(), name, next((str(e["logged_for"]) for e in entries
                                                               if isinstance(e.get("logged_for"), str)), None))):
            # another project's files are never the operator's to remove on this pipeline's word (sixth review)
            held = f"{DEREGISTERED}; {foreign}"
        elif not locations:
            held = (f"{DEREGISTERED}, and its files cannot be located (its logged model is not in this tracking "
                    "store, or it was scheduled in another project folder, or before entries kept where its files "
                    "were): they cannot be shown deleted")
        elif all(model_files.is_local(location) for location in locations):
            held = (f"{DEREGISTERED}; its files remain at {', '.join(locations)}, and the pipeline deletes files "
                    "only through a registered version: once they are removed, the next purge records it retired")
        else:
            held = (f"{DEREGISTERED}; its files are in a remote store ({', '.join(locations)}), and the pipeline "
                    "cannot show a remote source's files gone")
        for batch_id, entry in zip(batches, entries, strict=True):
            if entry.get("held") != held:
                ledger.record_retirement(batch_id, version, {**entry, "held": held})
        actions.append({"version": version, "action": "scheduled", "reason": entries[-1].get("reason") or "",
                        "batches": batches, "due_at": entries[-1].get("due_at"), "held": held, **mid})
    return actions
