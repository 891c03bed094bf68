"""Closing a deletion: retire the models that saw the samples, purge every copy, certify.

Two stages run after ``promote`` (in the Prefect flow and in ``dvc repro`` alike):

* ``purge``: model versions trained on deleted samples are retired once a successor that
  forgot them is champion (artifacts deleted after ``lifecycle.retirement_grace_hours``, the
  registry entry kept as a tombstone); data versions that held the samples are redacted in the
  DVC cache and remote; cached signals and candidate models are dropped; then the whole project
  is scanned for the deleted samples' bytes and the evidence is recorded per batch.
* ``certify``: one deletion certificate per request (JSON + HTML): :mod:`tasks.certify`.

Both are idempotent: a re-run after a crash finishes what is left and repeats nothing.
"""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from tasks import audit, model_files, tracking
from tasks.deregistered import entry_is_version, recorded_files, registry_identity, settle_deregistered
from tasks.project import PipelineError, Project, open_quarantines, quarantine_path, read_quarantine
from tasks.retired_weights import (
    fingerprint_keys,
    mark_weights_scanned,
    readable_key,
    record_weight_search,
    remember_weight_fingerprints,
    retired_weight_fingerprints,
    retired_weight_patterns,
    unscanned_retirements,
)
from tasks.stage.state import write_state
from unlearn.data import SampleStore, load_source
from unlearn.data.store import Arrays
from unlearn.files import utc_now, utc_timestamp
from unlearn.requests import Ledger

log = logging.getLogger("unlearn.pipeline")



def _parse(at: str) -> datetime:
    return datetime.fromisoformat(at.replace("Z", "+00:00"))


def uncovered_deletions(ledger: Ledger, version: Any) -> list[str]:
    """Completed batches that removed training samples and that ``version`` does not cover: it trained on them.

    Empty for every champion the pipeline promotes (a promotion covers its parent's batches and its own, a
    baseline or a consolidation every batch before it). Not empty after the ``champion`` alias was moved back to
    an older version inside the retirement grace window (the README's rollback): that model still holds the
    samples those batches deleted.
    """
    rank = ledger.rank()
    covers = rank.get(version.tags.get("covers_through", ""), -1)
    return [b for b in ledger.batches_with_status(Ledger.COMPLETED)
            if ledger.removed_training_samples(b) and rank[b] > covers]


def retire_models(project: Project, client: Any, ledger: Ledger, *,
                  loaded: dict[str, Any] | None = None) -> list[dict[str, Any]] | None:
    """Retire every model version that trained on samples the champion has forgotten.

    A version "covers" the batches up to its ``covers_through`` tag (the baseline: every batch
    before it was trained; an unlearned model that passed: its parent's plus its own). It is
    contaminated by a completed batch that removed training samples and that it does not cover.
    Contaminated versions other than the champion (the previous champion, failed challengers)
    are scheduled at once and retired when ``lifecycle.retirement_grace_hours`` has passed.

    ``loaded``: the live versions' weights already read this run (``tasks.retired_weights.live_weights``' memo).

    Returns:
        One entry per version acted on: version, action (retired | scheduled), reason, batches, due_at; None when
        it cannot tell which versions trained on the deleted samples: no champion, and no batch withdrew the model
        (an alias removed outside the pipeline). A registry error is raised (:func:`tasks.tracking.champion_version`).
    """
    champion = tracking.champion_version(project, client)
    rank = ledger.rank()
    completed = ledger.batches_with_status(Ledger.COMPLETED)
    withdrawn = [b for b in completed if ledger.last_note(b).get("outcome") == "model_withdrawn"]
    if champion is not None:
        covered_by_champion = rank.get(champion.tags.get("covers_through", ""), -1)
        successor = f"superseded by version {champion.version}"
    elif withdrawn:
        # No model is served any more: every version that saw a deleted sample goes, none is kept.
        covered_by_champion = max(rank[b] for b in withdrawn)
        successor = "withdrawn: too few training samples remain for a successor"
    else:
        return None
    contaminating = [b for b in completed if ledger.removed_training_samples(b) and rank[b] <= covered_by_champion]
    grace = timedelta(hours=project.params.lifecycle.retirement_grace_hours)
    now = datetime.now(UTC)
    versions = tracking.all_versions(project, client)
    live = [v for v in versions if v.tags.get("retired") != "true"]
    # Versions on the same files (one logged model registered again, or a version registered by hand from another's
    # model folder) hold the same weights, so they cover what the best-documented one covers (a copy of the
    # champion's is never offending) and retire together, once every one of them is due (reviews of 2026-12-07: a
    # copy without lineage tags was retired and the champion's or a clean version's files went with it; refusing
    # instead wedged every purge; copies keeping each other kept contaminated weights for good; a copy registered from
    # a bare path was never grouped, and its files went with the original's). The pipeline deletes only files of
    # models it logged, and never a folder above or inside one an alias serves: the rest is held, and said.
    hand = [str(v.version) for v in live if tracking.version_model_id(v) is None]
    everything = {str(v.version): v for v in versions}

    @functools.cache
    def where(version: str, any_model: bool = False) -> list[str]:  # a registry call a version, only where needed
        return model_files.model_artifact_locations(client, everything[version], any_model=any_model)

    # With a hand-registered version live, every version's folder says which it shares; without, a logged model
    # is its own group (no call to locate it)
    group_of = {version: (model_files.files_key(where(version)) if hand else
                          (f"model {tracking.version_model_id(v)}" if tracking.version_model_id(v) else None))
                or f"version {version}" for version, v in everything.items()}
    covered_by_model: dict[str, int] = {}
    sharing: dict[str, list[str]] = {}
    for v in versions:  # a tombstone's lineage still describes its files (a crash between two members' retirements)
        key = group_of[str(v.version)]
        if v.tags.get("retired") != "true":
            sharing.setdefault(key, []).append(str(v.version))
        if "covers_through" in v.tags:
            covered_by_model[key] = max(covered_by_model.get(key, -1), rank.get(v.tags["covers_through"], -1))
    due_of = {str(v.version): v.tags.get("retire_due_at") for v in live}
    by_version = {str(v.version): v for v in live}
    registered = client.get_registered_model(tracking.model_name(project)) if hand else None
    serving = {str(v) for v in registered.aliases.values()} & set(by_version) if registered else set()

    @functools.cache
    def identity() -> str:  # which registered model this is (read once, only where an entry needs it)
        return registry_identity(registered or client.get_registered_model(tracking.model_name(project)))

    # Where a live version's files were when it was scheduled (the real folders behind links included), from its
    # ledger entries in this project folder: kept with every entry written again, never replaced by what its source
    # says now (a removed link read "gone" while the folder it led to kept the weights: reviews of 2026-12-07), and
    # what shows them gone if an operator removes the version from the registry (:func:`settle_deregistered`).
    recorded: dict[str, list[str]] = {}
    for batch_id in ledger.oldest_first():
        for version, entry in ledger.batch(batch_id).get("retirement", {}).items():
            mv = by_version.get(version)
            if mv is not None and entry.get("home") == str(project.root) and entry_is_version(entry, mv, identity):
                recorded[version] = sorted({*recorded.get(version, []), *recorded_files(entry)})

    @functools.cache
    def served_by_others() -> list[tuple[str, list[str]]]:  # read once, and only when some group is due
        return model_files.served_by_other_models(client, tracking.model_name(project))

    @functools.cache
    def experiment_id() -> str | None:  # the project's experiment: the pipeline's own models were logged there
        return model_files.project_experiment_id(client, project)

    def held_because(going: list[str]) -> str | None:
        """Why a due group's files are not deleted now (said in each member's reason), or None."""
        logged = [v for v in going if v not in hand]
        for version in logged:
            problem = model_files.undeletable_reason(project, where(version)) or model_files.logged_elsewhere(
                client, tracking.version_model_id(by_version[version]), experiment_id(), tracking.model_name(project),
                by_version[version].tags.get(tracking.LOGGED_FOR))
            if problem:
                return problem
        if not logged:  # registered by hand only: shown gone once an operator removed the files, never deleted
            if not all(where(v) for v in going):
                return ("registered by hand from a source whose files cannot be located (an alias, another "
                        "registered model's version, a run that is gone): they cannot be shown deleted")
            if not all(model_files.files_gone(where(v) + recorded.get(v, [])) for v in going):  # (as above)
                local = all(model_files.is_local(location) for v in going for location in where(v))
                return model_files.NOT_LOGGED if local else model_files.NOT_LOGGED_REMOTE
        mine = [location for member in going for location in where(member)]
        elsewhere = next((label for label, locations in served_by_others() if model_files.locations_overlap(
            locations, mine)), None)
        if elsewhere:
            return f"its files are also served by {elsewhere}, another registered model's alias"
        # what an alias serves, followed through another model's version too (fourth review: a hand version on
        # `models:/other-model/N` under an alias lost its files with version 1's)
        tangled = sorted((v for v in serving - set(going) if model_files.locations_overlap(
            where(v, any_model=True), mine)), key=int)
        return (f"its files and those of version {tangled[0]}, which an alias serves, lie one inside the other "
                "(registered by hand from a folder above or inside a model's)") if tangled else None

    def offending_of(mv: Any) -> list[str]:
        covers = max(rank.get(mv.tags.get("covers_through", ""), -1),
                     covered_by_model.get(group_of[str(mv.version)], -1))
        return sorted((b for b in contaminating if rank[b] > covers), key=rank.get)

    for mv in live:  # every due time first: a group's members are weighed against each other's in the loop below
        if (champion is None or str(mv.version) != str(champion.version)) and offending_of(mv) \
                and due_of[str(mv.version)] is None:
            due_of[str(mv.version)] = utc_timestamp(now + grace)
            client.set_model_version_tag(tracking.model_name(project), str(mv.version), "retire_due_at",
                                         due_of[str(mv.version)])
    def reason_of(mv: Any, offending: list[str]) -> str:
        lineage = ("" if "covers_through" in mv.tags or group_of[str(mv.version)] in covered_by_model
                   else "no pipeline lineage (registered outside it): taken as ")
        return f"{lineage}trained on samples deleted by {len(offending)} batch(es); {successor}"

    actions: list[dict[str, Any]] = []
    retired_now: set[str] = set()
    for mv in versions:
        if mv.tags.get("retired") == "true":
            # Retired by an earlier run that may have stopped before saving the ledger or appending to
            # the audit log: the registry tombstone is the record, so the evidence is rebuilt from it.
            if not _retirement_recorded(project, mv):
                audit.record(project, "model.retired", model_version=str(mv.version),
                             reason=mv.tags.get("retired_reason", ""),
                             batch_ids=[b for b in mv.tags.get("retired_batches", "").split(",") if b],
                             artifacts_deleted=mv.tags.get("artifacts_deleted") == "true", recovered=True,
                             **tracking.model_id_field(mv))
            for batch_id in mv.tags.get("retired_batches", "").split(","):
                if batch_id in ledger.batches:
                    known = ledger.batch(batch_id).get("retirement", {}).get(str(mv.version), {})
                    if known.get("deregistered"):  # another model's closure under the number (a recreated model's)
                        known = {}
                    ledger.record_retirement(batch_id, str(mv.version), {  # what a scan recorded is kept
                        **known, "version": str(mv.version), "action": "retired",
                        "reason": mv.tags.get("retired_reason"), "due_at": mv.tags.get("retire_due_at"),
                        "retired_at": mv.tags.get("retired_at"), **tracking.model_id_field(mv)})
            continue
        if champion is not None and str(mv.version) == str(champion.version):
            continue
        if str(mv.version) in retired_now:  # with a version on the same files, earlier in this loop
            continue
        key = group_of[str(mv.version)]
        offending = offending_of(mv)
        if not offending:
            continue
        reason = reason_of(mv, offending)
        due_at = due_of[str(mv.version)]
        others = [v for v in sharing.get(key, []) if v != str(mv.version)]
        # (a copy of the champion's model covers what the champion covers: it is never offending)
        later = [v for v in others if due_of.get(v) is not None and _parse(due_of[v]) > now]
        kept = f"; kept until version {later[0]}, which has the same files, is due" if later and _parse(
            due_at) <= now else ""
        going = sorted([str(mv.version), *others], key=lambda v: v in hand)  # a logged model's files go first
        held = held_because(going) if _parse(due_at) <= now and not later else None
        if held:
            # Kept, and said so, instead of deleting what the pipeline cannot show deleted or what another version
            # serves, or failing every purge (reviews of 2026-12-07); `unlearn doctor` names it.
            kept = f"; {held}: not deleted, `unlearn doctor` names it"
        if _parse(due_at) > now or kept:
            # Where its files are (in this project folder, this registered model; the name the pipeline registered
            # it under) is kept with the entry: if an operator removes the version from the registry, that is what
            # shows its files gone and whose they are (:func:`settle_deregistered`).
            number = str(mv.version)
            now_at = model_files.with_targets(where(number)) if number in hand or number not in recorded else []
            files = {"files": sorted({*recorded.get(number, []), *now_at}), "home": str(project.root),
                     "registry": identity(), **({"logged_for": mv.tags[tracking.LOGGED_FOR]}
                                                if mv.tags.get(tracking.LOGGED_FOR) else {})}
            actions.append({"version": number, "action": "scheduled", "reason": reason + kept,
                            "batches": offending, "due_at": due_at, **({"held": held} if held else {}),
                            **files, **tracking.model_id_field(mv)})
            continue
        at = utc_now()
        for member in going:  # every member's before the shared files go (a later one could not be read)
            remember_weight_fingerprints(project, client, by_version[member], loaded=loaded, group=going)
        for member in going:  # all at once: a member left for later would find its files gone and its weights unread
            version, batches = by_version[member], offending_of(by_version[member])
            why = reason_of(version, batches)
            deleted = model_files.retire_version(project, client, version, reason=why, batches=batches, at=at,
                                                 sharing=[v for v in going if v != member])
            audit.record(project, "model.retired", model_version=member, reason=why, batch_ids=batches,
                         artifacts_deleted=deleted, **tracking.model_id_field(version))
            actions.append({"version": member, "action": "retired", "reason": why, "batches": batches,
                            "retired_at": at, "due_at": due_of[member], **tracking.model_id_field(version)})
            retired_now.add(member)
            serving.discard(member)  # its aliases went with it
    for action in actions:
        for batch_id in action["batches"]:
            entry = {k: action[k] for k in ("version", "action", "reason", "due_at")}
            entry["retired_at"] = action.get("retired_at")
            entry.update({k: action[k] for k in ("model_id", "held", "files", "home", "registry", "logged_for")
                          if k in action})
            ledger.record_retirement(batch_id, action["version"], entry)
    return actions + settle_deregistered(project, client, ledger, everything, identity)


def _retirement_recorded(project: Project, mv: Any) -> bool:
    """Whether the audit log already holds this retired version's ``model.retired`` record.

    Matched on the logged model, not the version number alone: a project moved to another registry keeps its audit
    log while its versions are numbered from 1 again, so the old registry's record of "version 1 retired" is not the
    new version 1's (its retirement would otherwise go unrecorded after a crash). A record written before records
    named the model counts when it names the first batch of the version's tombstone (batch ids are unique; the tag
    may be cut short, never at its start).
    """
    version, model = str(mv.version), tracking.model_id_field(mv)
    if model and audit.has_record(project, "model.retired", model_version=version, **model):
        return True
    first = mv.tags.get("retired_batches", "").split(",")[0]
    return any("model_id" not in r and (not model or first in (r.get("batch_ids") or []))
               for r in audit.records(project, "model.retired", model_version=version))


def _refuse_matches(project: Project, scan: Any, weights: dict[str, bytes], **record: Any) -> None:
    """A scan that found deleted bytes: a ``purge.incomplete`` record, then the error naming the files."""
    if not scan.matches:
        return
    places = sorted({str(path) for path, _ in scan.matches})
    what = "retired model weights" if all(key in weights for _, key in scan.matches) else "deleted samples' bytes"
    audit.record(project, "purge.incomplete", **record, matches=len(scan.matches))
    raise PipelineError(f"purge incomplete: {what} still found in {len(places)} file(s): {', '.join(places[:10])}")


def deleted_arrays(project: Project, sample_ids: list[str], known: Arrays | None = None) -> Arrays:
    """The deleted samples' pixels: ``known`` ones first (the quarantine: the bytes the models trained on), the rest
    from the upstream source (the store no longer has them). A sample in neither is absent from the result: callers
    that make claims from it count what is missing (:func:`run_purge`)."""
    wanted = np.asarray(sample_ids, dtype=str)
    first = None
    if known is not None and len(known.ids):
        keep = np.isin(known.ids, wanted)
        first = Arrays(known.ids[keep], known.images[keep], known.labels[keep])
        wanted = wanted[~np.isin(wanted, known.ids)]
    source = load_source(project.params.data)
    mask = np.isin(source.ids, wanted)
    rest = Arrays(source.ids[mask], source.images[mask], source.labels[mask])
    if first is None or not len(first.ids):
        return rest
    if not len(rest.ids):
        return first
    if first.images.shape[1:] != rest.images.shape[1:]:
        return max(first, rest, key=lambda a: len(a.ids))  # the source changed shape since: the larger part only
    return Arrays(np.concatenate([first.ids, rest.ids]), np.concatenate([first.images, rest.images]),
                  np.concatenate([first.labels, rest.labels]))


def _quarantined(project: Project, batch_ids: list[str]) -> Arrays | None:
    """The closing batches' quarantined training samples, read before purge removes the files (None if none)."""
    parts = []
    for batch_id in batch_ids:
        try:
            parts.append(read_quarantine(project, batch_id))
        except FileNotFoundError:  # a crash after the unlink: the source stands in
            continue
        except Exception as exc:  # noqa: BLE001 - damaged (truncated, not a zip): the source stands in, and it is said
            log.warning("purge: the quarantine of %s could not be read (%s): its samples are searched for in the "
                        "upstream source", batch_id, type(exc).__name__)
            continue
    parts = [a for a in parts if len(a.ids) and a.images.shape[1:] == parts[0].images.shape[1:]]
    if not parts:
        return None
    return Arrays(np.concatenate([a.ids for a in parts]), np.concatenate([a.images for a in parts]),
                  np.concatenate([a.labels for a in parts]))


def versions_of_batch(dvc_evidence: dict[str, Any], batch_id: str) -> dict[str, list[str]]:
    """The data versions a batch's certificate names, by what was read of each version's index.

    Why: every version a purge redacted or found redacted was listed for every batch it closed, so a certificate
    named versions made after its batch's deletion, which never held its samples (review of 2026-12-07). A version
    whose index listed one of the batch's samples is named: as redacted by this purge, or earlier. One whose index
    was read while the batch was known and listed none of its samples is not. One with no such reading (found
    redacted by hand or before readings were recorded, or read before the batch existed) is listed apart, as not
    known to have held them.
    """
    own, earlier, unknown = [], [], []
    for version in [*dvc_evidence["versions_redacted"], *dvc_evidence["versions_already_redacted"]]:
        reading = dvc_evidence["readings"].get(version) or {}
        held, checked = reading.get("held_batches"), reading.get("checked_batches")
        if held is None or checked is None or batch_id not in {*held, *checked}:
            unknown.append(version)
        elif batch_id in held:
            (own if version in dvc_evidence["versions_redacted"] else earlier).append(version)
    return {"versions_redacted": own, "versions_redacted_earlier": earlier, "versions_found_redacted": unknown}


def run_purge(project: Project) -> dict[str, Any]:
    """Retire contaminated models, redact data versions, drop derived copies, scan for the bytes.

    Runs every pipeline run: it closes completed batches not yet purged, and carries out
    retirements whose grace period has ended.

    Returns:
        Counts and evidence (never sample ids).
    """
    from tasks.purge import finish_plan, purge_deleted_data, scan_project_for_samples
    from unlearn.forensics import sample_patterns

    ledger = Ledger(project.ledger_path)
    if not ledger.batches_with_status(Ledger.COMPLETED):
        # No batch ever completed: no version can be contaminated, scheduled or retired, and nothing is
        # closed. Decided without opening the registry (MLflow's import and store: about 3 s a process).
        return write_state(project, "purge", {"retired": [], "scheduled": [], "batches_closed": [],
                                              "status": "nothing_to_purge"})
    client = tracking.setup(project)
    loaded: dict[str, Any] = {}  # each live version's weights, read once for the retirements and the scan below
    actions = retire_models(project, client, ledger, loaded=loaded)
    # Retired when every version that trained on a batch's samples is (none: no version did). Not when that could
    # not be told: marked then, a final "complete" certificate followed while the old champion stayed loadable
    # (review of 2026-12-07; a registry error read as "no champion" did it, and an alias removed by hand would).
    assessed = actions is not None
    actions = actions or []

    def retired(batch_id: str) -> bool:
        # a batch that removed no training sample needs no model retired, whatever the registry holds
        return (assessed or not ledger.removed_training_samples(batch_id)) and ledger.retirements_done(batch_id)

    waiting = [b for b in ledger.batches_with_status(Ledger.COMPLETED)
               if not retired(b) and "retired" not in ledger.steps(b)]
    if not assessed and waiting:
        log.warning("purge: the registry has no champion and no batch withdrew the model, so which versions trained "
                    "on the deleted samples of %d batch(es) cannot be told: they are not marked retired, and their "
                    "certificates stay interim, until a champion is set", len(waiting))
    for batch_id in ledger.batches_with_status(Ledger.COMPLETED):
        if retired(batch_id):
            ledger.mark_step([batch_id], "retired")
    ledger.save()
    to_close = [b for b in ledger.batches_with_status(Ledger.COMPLETED)
                if "purged" not in ledger.steps(b)]
    summary: dict[str, Any] = {"retired": [a["version"] for a in actions if a["action"] == "retired"],
                               "scheduled": [a["version"] for a in actions if a["action"] == "scheduled"],
                               "batches_closed": to_close}
    if not to_close:
        unscanned = unscanned_retirements(project)
        if unscanned:
            # A retirement that fell due after the grace period, once its batches were purged: its weights are
            # searched for across the project as a purge's are (review of 2026-12-06: only the artifact store's
            # own listing was checked, though certificates then said the artifacts were deleted). A crash before
            # the record leaves the version unscanned, and the next run scans it.
            weights = retired_weight_patterns(project, client, loaded=loaded)
            loaded.clear()  # the weights are not needed while the project's files are read
            scan = scan_project_for_samples(project, weights.patterns)
            named = [readable_key(key) for key in unscanned]  # as evidence names them
            _refuse_matches(project, scan, weights.patterns, model_versions=named)
            audit.record(project, "retirement.scanned", model_versions=named, files_scanned=scan.files,
                         **weights.evidence(), matches=0, not_scanned=scan.not_scanned)
            # the final certificates say what was searched, and what could not be
            record_weight_search(ledger, weights, set(unscanned), fingerprint_keys(project), scan.not_scanned)
            ledger.save()
            mark_weights_scanned(project, unscanned)
            summary["weight_scan"] = {"versions": named, "files": scan.files, "matches": 0, **weights.evidence(),
                                      "not_scanned": scan.not_scanned}
            if scan.not_scanned:
                log.warning("purge: %d path(s) could not be scanned for retired weights (unreadable, or links to "
                            "folders): `unlearn doctor --deep` names them", scan.not_scanned)
        return write_state(project, "purge", {**summary, "status": "nothing_to_purge"})
    closing_ids = sorted({s for b in to_close for s in ledger.batch(b)["sample_ids"]})
    dvc_evidence = purge_deleted_data(project, ledger.deleted_ids(), to_close,
                                      by_batch={b: ledger.batch(b)["sample_ids"] for b in ledger.batches})
    # Derived copies: cached logits of the samples, and candidate models of finished escalations.
    from unlearn.attacks.signals import SignalCache  # here: the module imports torch, which purge needs nowhere else

    SignalCache(project.signals_dir).drop_ids(set(closing_ids))
    if not ledger.pending():
        for path in list(project.models_dir.glob("candidate-*.pt")) + [project.models_dir / "candidate.pt"]:
            path.unlink(missing_ok=True)
    # The search patterns: the quarantined bytes the models trained on (read before the files go, or the scan would
    # find them there), the rest from the upstream source. A deleted sample in neither (the source no longer has it)
    # cannot be searched for: counted, and the certificate says so (review of 2026-12-07: "no copy found" was
    # stated when nothing had been searched for).
    # The quarantine files are left out of the scan and removed after it: a purge refused for a copy found, or
    # stopped during the scan, still has them to search with when it runs again (review of 2026-12-07).
    quarantined = _quarantined(project, to_close)
    quarantine_files = [quarantine_path(project, batch_id) for batch_id in to_close]
    live = SampleStore(project.store_dir).load().images
    deleted = deleted_arrays(project, closing_ids, known=quarantined)
    unsearched = len(set(closing_ids) - set(deleted.ids.tolist()))
    patterns, shared = sample_patterns(deleted, live)
    weights = retired_weight_patterns(project, client, loaded=loaded)
    loaded.clear()  # the weights are not needed while the project's files are read
    # Open batches' quarantines hold samples whose own deletion is not finished (a deleted sample identical to one of
    # theirs would be "found" there, refusing this purge until that batch closes): not scanned, and counted.
    others = open_quarantines(project, ledger, to_close)
    scan = scan_project_for_samples(project, {**patterns, **weights.patterns}, exclude=quarantine_files + others)
    _refuse_matches(project, scan, weights.patterns, batch_ids=to_close)
    for path in quarantine_files:  # before anything records the purge: a crash here repeats it, from the source
        path.unlink(missing_ok=True)
    evidence = {
        # The run's counts, for every batch it closes (a certificate says so when there were several)
        "closed_together": len(to_close),
        "objects_removed": dvc_evidence["objects_removed"],
        # This run's, whichever batch's samples they held (the run summary); each batch's own are below.
        "versions_redacted": dvc_evidence["versions_redacted"],
        "versions_found_redacted": dvc_evidence["versions_already_redacted"],
        "scan": {"files": scan.files, "bytes": scan.bytes, "patterns": scan.patterns, "shared_with_live": shared,
                 "samples": len(closing_ids), "sample_patterns": len(patterns), "samples_not_searched": unsearched,
                 **weights.evidence(), "matches": len(scan.matches), "open_quarantines_not_scanned": len(others),
                 # unreadable files and links to folders: the certificate says nothing is claimed about them
                 "not_scanned": scan.not_scanned},
    }
    at = utc_now(precise=True)
    fingerprinted = list(retired_weight_fingerprints(project))  # every one of them was in this scan
    record_weight_search(ledger, weights, set(fingerprinted) | set(weights.unsearchable), fingerprint_keys(project),
                         scan.not_scanned)
    for batch_id in to_close:
        ledger.record_purge(batch_id, {**evidence, **versions_of_batch(dvc_evidence, batch_id)})
        ledger.mark_step([batch_id], "purged", at)
        if retired(batch_id):
            ledger.mark_step([batch_id], "retired", at)
    # Recorded before the ledger marks the batches purged: a crash in between repeats the purge (and this
    # true record) on the next run, where the other order would leave a purge the log never mentions.
    audit.record(project, "purge.completed", batch_ids=to_close, samples=len(closing_ids),
                 objects_removed=evidence["objects_removed"], files_scanned=scan.files,
                 not_scanned=scan.not_scanned, open_quarantines_not_scanned=len(others),
                 weight_versions_unsearchable=weights.evidence()["weight_versions_unsearchable"], matches=0)
    ledger.save()
    finish_plan(project)  # the batches' evidence counts what the plan names: it is saved, so the plan goes
    mark_weights_scanned(project, fingerprinted)
    log.info("purge: %d batch(es) closed, %d files scanned, no deleted bytes found", len(to_close), scan.files)
    if scan.not_scanned:
        log.warning("purge: %d path(s) could not be scanned (unreadable, or links to folders): `unlearn doctor "
                    "--deep` names them", scan.not_scanned)
    return write_state(project, "purge", {**summary, "status": "purged", **evidence})


# --------------------------------------------------------------------------- certificates
