"""Evidence that a retired model's weights are gone from disk, not only from the artifact store's listing.

Before a version's artifacts are deleted, byte fingerprints of its weights are kept in local state
(:func:`remember_weight_fingerprints`); every purge scan and ``unlearn doctor`` then search the whole
project for them (:func:`retired_weight_patterns`). A fingerprint must be the retired version's own:
successors that keep most of their parent's bytes (SSD dampens a few weights, SalUn updates its salient
ones) hold the rest legitimately, so fingerprints are taken where the bytes differ from every live
version's, and any that a live version holds anyway (taken by an older release, or a version promoted
since) are left out of the search and counted. A retired version left with nothing to search for is
named in the evidence as unsearchable, never passed over as clean.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks import tracking
from tasks.project import PipelineError, Project
from unlearn.files import write_json_atomic

log = logging.getLogger("unlearn.pipeline")


@dataclass(frozen=True)
class RetiredWeights:
    """What a scan can search for of the retired versions' weights.

    Attributes:
        patterns: Scan patterns, keyed ``v<version>-w<rank>`` (no parameter names).
        shared: Fingerprints left out because a live version's weights hold the same bytes.
        unsearchable: Retired versions with no fingerprint left to search for (none taken, or every one
            shared with a live version): a scan says nothing about copies of their weights.
    """

    patterns: dict[str, bytes] = field(default_factory=dict)
    shared: int = 0
    unsearchable: tuple[str, ...] = ()

    @property
    def searched(self) -> set[str]:
        """Retired versions with at least one fingerprint to search for."""
        return {_version_of(key) for key in self.patterns}

    def evidence(self) -> dict[str, Any]:
        """The counts a purge record and certificate carry (fingerprint bytes never leave local state)."""
        return {"weight_fingerprints": len(self.patterns), "weight_fingerprints_shared_with_live": self.shared,
                "weight_versions_unsearchable": [readable_key(key) for key in self.unsearchable]}


def readable_key(key: str) -> str:
    """A fingerprint key as evidence names it: ``1`` stays ``1``; an entry kept apart when the number was taken by
    another model (``1~<model id>``, ``1~another-registry``: :func:`remember_weight_fingerprints`) does not read as
    this registry's version 1, and says only what is known of it."""
    number, _, model = key.partition("~")
    model = model.rstrip("+")  # a second entry kept under the same name
    if not model:
        return key
    if model == _ANOTHER:
        return f"{number} (an earlier version {number}, not provably this registry's)"
    return f"{number} (logged model {model}, not this registry's version {number})"


def _version_of(key: str) -> str:
    """The version a scan pattern key ``v<version>-w<rank>`` belongs to (``<version>`` may hold dashes: an entry
    kept from another registry is ``<number>~<model id>``, and MLflow's model ids are ``m-<hex>``)."""
    return key.rsplit("-", 1)[0][1:]


def _order(version: str) -> tuple[int, str]:
    """Sort key of a fingerprinted version: by number, an entry kept from another registry beside its number."""
    number, _, rest = version.partition("~")
    return (int(number) if number.isdigit() else -1, rest)


# Reserved key of retired-weights.json: version -> the logged model (MLflow model id) its fingerprints were taken
# from. Version numbers restart in another registry (a project moved on purpose: data/.registry deleted), so the
# number alone does not say whose weights an entry holds.
_MODELS = "_models"
_ANOTHER = "another-registry"  # the model an earlier release's entry was taken from, when it cannot be told


def _fingerprints_path(project: Project) -> Path:
    return project.state_dir / "retired-weights.json"


def _read_fingerprints(project: Project) -> dict[str, Any]:
    """``retired-weights.json`` as stored: version -> fingerprints, and :data:`_MODELS`."""
    path = _fingerprints_path(project)
    return json.loads(path.read_text()) if path.exists() else {}


def live_weights(project: Project, client: Any, *, besides: str | Collection[str] | None = None,
                 loaded: dict[str, dict[str, np.ndarray]] | None = None) -> list[dict[str, np.ndarray]]:
    """The weights of every version whose artifacts legitimately stay (not retired), except ``besides``.

    ``loaded``: a memo (version -> weights) shared by one purge run's retirements and its scan, so each live
    version is read from the artifact store once per run, not once per use (a version's weights never change;
    which versions are live is read afresh from the registry every call). A read that failed is not
    remembered: the next use tries again.

    Their files are part of the project, so no retired fingerprint may be searched for where they would
    match: a successor that kept most of its parent's bytes (SSD, SalUn) would otherwise make every scan
    "find" the retired weights. A version that cannot be read is left out (with a warning): its files
    then still trip any fingerprint it shares, which errs towards a failed scan, never a false clean one.
    """
    memo = {} if loaded is None else loaded
    left_out = {besides} if isinstance(besides, str) else set(besides or ())
    states = []
    for mv in tracking.all_versions(project, client):
        version = str(mv.version)
        if mv.tags.get("retired") == "true" or version in left_out:
            continue
        if version not in memo:
            try:  # the stored state dict, not a rebuilt model: a factory that no longer imports must not hide it
                state, _ = tracking.load_state(project, client, version)
            except PipelineError as exc:
                log.warning("weights of version %s cannot be read to tell its bytes apart (%s)", version, exc)
                continue
            memo[version] = {k: v.detach().cpu().numpy() for k, v in state.items()}
        states.append(memo[version])
    return states


def remember_weight_fingerprints(project: Project, client: Any, mv: Any, *,
                                 loaded: dict[str, dict[str, np.ndarray]] | None = None,
                                 group: Collection[str] = ()) -> None:
    """Keep byte fingerprints of a version's weights before they are deleted (hex, in local state).

    Fingerprints are taken where the version's bytes differ from every live version's
    (:func:`unlearn.forensics.weight_patterns`' ``avoid``), so a successor that kept most of them does
    not match. Hex never matches the raw bytes it encodes, so this file does not trip the scan. A
    version whose weights cannot be read any more gets none (and says so). ``loaded``: :func:`live_weights`' memo.

    An entry under the same version number taken from another model (the project moved to another registry,
    whose numbers start again at 1) is not this version's: it is kept under ``<number>~<its model id>``, still
    searched for, and this version gets fingerprints of its own. Without that, the new version's weights would never
    be fingerprinted, and the evidence would say "version N's weights were searched for" about the old ones. An
    entry recorded without its model (an earlier release) is this version's only if every one of its fingerprints
    occurs in this version's weights; otherwise (another model, no fingerprint, weights unreadable) it is kept under a
    name of its own too, which errs safely: its fingerprints are still searched for, and this version is at worst named
    unsearchable, never taken as searched for.

    ``group``: the versions of the same logged model retiring with it: their bytes are this version's, so they are
    not live weights to tell it apart from (every fingerprint was dropped as "shared with a live version", and the
    copies were never searched for; review of 2026-12-07).
    """
    from unlearn.forensics import weight_patterns, weights_blob

    path = _fingerprints_path(project)
    raw = _read_fingerprints(project)
    models: dict[str, str] = dict(raw.get(_MODELS, {}))
    # A version registered by hand from a path has no logged model: its source names its files instead, so a run
    # after a crash between a group's retirements finds its entry its own (it was kept apart as another registry's)
    source = str(getattr(mv, "source", "") or "")
    version, model_id = str(mv.version), tracking.version_model_id(mv) or (f"source:{source}" if source else None)
    state = None
    if version in raw:
        taken_from = models.get(version)
        if taken_from is not None and model_id is not None:
            if taken_from == model_id:
                return
        else:  # recorded by an earlier release, without its model: this version's only if provably so
            state = _state(project, client, version)
            found = [bytes.fromhex(h) for h in raw[version].values()]
            if state is not None and found:
                blob = weights_blob(state)
                if all(pattern in blob for pattern in found):  # every fingerprint was cut from its weights
                    if model_id is not None:  # recorded from now on, so batches reach this entry through it
                        raw[_MODELS] = {**models, version: model_id}
                        write_json_atomic(path, raw)
                    return
        kept = f"{version}~{taken_from or _ANOTHER}"
        while kept in raw:
            kept += "+"
        log.warning("retire: the fingerprints kept for version %s are not provably this version's (taken from model "
                    "%s; a project moved to another registry numbers its versions from 1 again): kept as %r, still "
                    "searched for, and version %s is fingerprinted anew", version, taken_from or "not recorded", kept,
                    version)
        _rename_scanned(project, version, kept)  # first: a crash before the next write leaves the old entry unscanned
        raw[kept] = raw.pop(version)
        if taken_from is not None:
            models[kept] = models.pop(version)
    if state is None:
        state = _state(project, client, version)
    if state is None:
        raw[version] = {}
    else:
        patterns = weight_patterns(state, avoid=live_weights(project, client, besides={version, *group},
                                                              loaded=loaded))
        raw[version] = {k: v.hex() for k, v in patterns.items()}
        if not patterns:
            log.warning("retire: version %s has no weights of its own to fingerprint (no run of bytes apart "
                        "from the live versions', or tensors too small)", mv.version)
    if model_id is not None:
        models[version] = model_id
    raw[_MODELS] = models
    write_json_atomic(path, raw)


def _state(project: Project, client: Any, version: str) -> dict[str, np.ndarray] | None:
    """A version's weights as arrays; None (with a warning) when they cannot be read."""
    try:
        state, _ = tracking.load_state(project, client, version)
    except PipelineError as exc:
        log.warning("retire: weights of version %s cannot be fingerprinted (%s)", version, exc)
        return None
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _rename_scanned(project: Project, version: str, kept: str) -> None:
    """The scan record of ``version`` moves to the entry kept under ``kept``: the new version is not scanned yet."""
    scanned = _weights_scanned(project)
    if version in scanned:
        write_json_atomic(_scanned_path(project), sorted((scanned - {version}) | {kept}, key=_order))


def retired_weight_fingerprints(project: Project) -> dict[str, dict[str, str]]:
    """Version -> fingerprint key -> hex, as taken before each retirement (empty for a version that had none)."""
    known = _read_fingerprints(project)
    known.pop(_MODELS, None)
    return known


def _scanned_path(project: Project) -> Path:
    return project.state_dir / "retired-weights-scanned.json"


def _weights_scanned(project: Project) -> set[str]:
    path = _scanned_path(project)
    return set(json.loads(path.read_text())) if path.exists() else set()


def unscanned_retirements(project: Project) -> list[str]:
    """Retired versions no purge scan has dealt with yet (oldest first).

    A scan deals with a version by searching for its fingerprints, or by naming it unsearchable in its
    record and evidence (nothing of its own to search for): either way, it is not scanned again.
    """
    scanned = _weights_scanned(project)
    return sorted((v for v in retired_weight_fingerprints(project) if v not in scanned), key=_order)


def mark_weights_scanned(project: Project, versions: list[str]) -> None:
    scanned = _weights_scanned(project)
    if not set(versions) <= scanned:
        write_json_atomic(_scanned_path(project), sorted(scanned | set(versions), key=_order))


def retired_weight_patterns(project: Project, client: Any | None = None, *,
                            loaded: dict[str, dict[str, np.ndarray]] | None = None) -> RetiredWeights:
    """What can be searched for of every retired version's weights (:class:`RetiredWeights`).

    With a registry ``client``, fingerprints that occur in a live version's weights are left out and
    counted: those bytes are in the project by right (a successor kept them), so they cannot tell a stray
    copy of the retired weights from the live model's own files. Each retired version left with no
    fingerprint to search for is named: fingerprints taken by an older release from the middle of the
    largest tensors, where an SSD or SalUn successor still holds the same bytes, are the usual case.
    ``loaded``: :func:`live_weights`' memo.
    """
    from unlearn.forensics import shared_patterns

    known = retired_weight_fingerprints(project)
    patterns = {f"v{version}-{key}": bytes.fromhex(value) for version, found in known.items()
                for key, value in found.items()}
    shared = (shared_patterns(patterns, live_weights(project, client, loaded=loaded))
              if patterns and client is not None else set())
    usable = {k: v for k, v in patterns.items() if k not in shared}
    retired = set(known)
    if client is not None:  # retired before fingerprints were taken at all: never searched for either
        retired |= {str(mv.version) for mv in tracking.all_versions(project, client)
                    if mv.tags.get("retired") == "true"}
    searched = {_version_of(key) for key in usable}
    return RetiredWeights(usable, len(shared), tuple(sorted(retired - searched, key=_order)))


def fingerprint_keys(project: Project) -> dict[str, str]:
    """Logged model id -> the key its fingerprints are kept under: its version number, or ``<number>~<model id>``
    once a version of another registry took the number (:func:`remember_weight_fingerprints`)."""
    return {model_id: key for key, model_id in _read_fingerprints(project).get(_MODELS, {}).items()}


def entry_key(version: str, entry: dict[str, Any], keys: dict[str, str]) -> str:
    """The fingerprint key of a batch's retirement entry: through the model id it recorded, else its version number
    (entries written before the model id was recorded).

    An entry whose model has no recorded fingerprints while its number now belongs to another model's (a version
    fingerprinted by an earlier release, or retired before fingerprints were taken, then the project moved) gets a key
    no fingerprint entry has: it is never counted as searched for on the other model's behalf; its status stays
    unrecorded ("not recorded" in the certificate), which is what is known.
    """
    model_id = tracking.entry_model_id(entry)
    if model_id in keys:
        return keys[model_id]
    if model_id and version in keys.values():
        return f"{version}~{model_id}"
    return version


def record_weight_search(ledger: Any, weights: RetiredWeights, versions: set[str] | list[str],
                         keys: dict[str, str], not_scanned: int = 0) -> None:
    """Note, on each batch's retirement of ``versions``, whether a scan searched the project for its weights.

    The certificate's retirement table shows it beside "artifacts deleted" (which only the artifact store's
    listing backs). Written once per version and batch: the first scan that dealt with the version decides.
    ``keys``: :func:`fingerprint_keys`: a batch's entry is matched to the fingerprints of the model it retired, not
    to whatever version holds its number now. ``not_scanned``: the scan's paths it could not read (unreadable, links
    to folders), kept with the entry so that "searched" is never said of them (review of 2026-12-07).
    """
    for batch_id in ledger.oldest_first():
        for version, entry in ledger.batch(batch_id).get("retirement", {}).items():
            key = entry_key(version, entry, keys)
            if key in versions and entry.get("action") == "retired" and "weights_searched" not in entry:
                searched = key in weights.searched
                ledger.record_retirement(batch_id, version, {
                    **entry, "weights_searched": searched,
                    **({"weights_paths_not_scanned": not_scanned} if searched and not_scanned else {})})
