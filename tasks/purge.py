"""Purge deleted samples from old data versions in the DVC cache and the default remote.

Every deletion writes a new version of ``data/store``; the old version's objects (the shards
that held the deleted samples, and the index naming them) stay in ``.dvc/cache`` and in the
remote until something removes them. :func:`purge_deleted_data` redacts every old version that
holds a deleted sample: it deletes the objects of that version which no other live version
needs, keeps the version's ``.dir`` manifest (content hashes and relative paths only: the
lineage survives, the data does not), and records the redaction in
``data/requests/redactions.json``. :func:`scan_project_for_samples` then searches every byte of
the project for the deleted samples, as evidence for deletion certificates.

DVC's in-process API is used here (the ``dvc`` command has no "delete these objects" verb):
``Repo.cache.local`` and ``Repo.cloud.get_remote_odb()`` are the same object databases that
``dvc gc`` and ``dvc gc --cloud`` remove from, so a local directory remote and S3 work alike.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

from tasks import dvc_ops
from tasks.project import PipelineError, Project
from unlearn.files import utc_now, write_json_atomic
from unlearn.forensics import ScanResult, scan_for_patterns

log = logging.getLogger("unlearn.pipeline")

DIR_SUFFIX = ".dir"  # dvc_data.hashfile.hash_info.HASH_DIR_SUFFIX
INDEX_FILE = "index.csv"  # a store manifest lists its index and meta under these relpaths
STORE_META = "meta.json"
LOCAL, REMOTE = "local", "remote"


def _inside_dvc_stage(project: Project) -> bool:
    """True when this process is a stage command of ``dvc repro`` on this project: that dvc process
    already holds the repo lock (and waits for us), so taking it again would fail."""
    root = os.environ.get("DVC_ROOT")
    return bool(os.environ.get("DVC_STAGE")) and root is not None and Path(root).resolve() == project.root


def _object_dbs(repo: Any) -> dict[str, Any]:
    """The md5 object databases: the local cache and, when one is configured, the default remote."""
    from dvc.config import NoRemoteError, RemoteConfigError

    odbs = {LOCAL: repo.cache.local}
    try:
        odbs[REMOTE] = repo.cloud.get_remote_odb(None, "purge")
    except NoRemoteError:
        log.warning("purge: no default DVC remote configured; purging the local cache only")
    except RemoteConfigError as exc:  # version-aware / worktree remotes keep no content-addressed objects
        raise PipelineError(f"cannot purge the default DVC remote: {exc}") from exc
    return odbs


def _read_object(odbs: dict[str, Any], present: dict[str, set[str]], oid: str) -> bytes | None:
    """An object's bytes from the local cache, else the remote; None when neither has it."""
    for side, odb in odbs.items():
        if oid in present[side]:
            try:
                return odb.fs.cat_file(odb.oid_to_path(oid))
            except FileNotFoundError:
                continue
    return None


def _load_manifest(odbs: dict[str, Any], present: dict[str, set[str]], version: str) -> dict[str, str]:
    """relpath -> md5 of every file of a directory version, from its ``.dir`` object."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree
    from dvc_objects.errors import ObjectFormatError

    for side, odb in odbs.items():
        if version not in present[side]:
            continue
        try:
            tree = Tree.load(odb, HashInfo("md5", version))
        except (FileNotFoundError, ObjectFormatError):
            continue
        return {"/".join(key): hash_info.value for key, _, hash_info in tree if hash_info and hash_info.value}
    raise PipelineError(
        f"data version {version} has no readable manifest in the DVC cache or remote; its objects "
        "cannot be told apart from those of redacted versions, so nothing was purged"
    )


def _sample_ids(index_bytes: bytes, version: str) -> set[str] | None:
    """Sample ids listed by a store's index.csv; None when the file is not a store index."""
    try:
        reader = csv.DictReader(io.StringIO(index_bytes.decode()))
        if "sample_id" not in (reader.fieldnames or []):
            return None
        return {row["sample_id"] for row in reader}
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PipelineError(f"the index of data version {version} is unreadable: {exc}") from None


def _remove_crash_leftovers(project: Project) -> int:
    """Delete half-written or backed-up stores left by a crashed ``SampleStore.materialize``."""
    removed = 0
    if not project.data_dir.is_dir():
        return 0
    name = project.store_dir.name
    for path in sorted(project.data_dir.glob(f".{name}.tmp-*")) + sorted(project.data_dir.glob(f".{name}.old-*")):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)) and not _reused(int(pid), path):
            log.warning("purge: left %s in place (process %s is still running)", path.name, pid)
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reused(pid: int, leftover: Path) -> bool:
    """Whether the process now numbered ``pid`` started after ``leftover`` was made, so cannot have made it.

    A leftover's name carries the number of the process that wrote it; after a crash and a restart (a container's
    low numbers, Prefect's subprocesses) another process may hold that number, and a purge that kept the leftover
    for it found the deleted samples' bytes in it and refused on every run (review of 2026-12-07). The leftover's
    inode-change time is set when it was made (mkdir, or the rename that made the backup) or later, never earlier.
    Where the process's start cannot be read it is taken as the writer.
    """
    started = _process_start(pid)
    try:
        made = leftover.lstat().st_ctime
    except OSError:
        return False
    return started is not None and started > made + 2.0  # the boot time is whole seconds: a margin


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch, to within a second), from Linux's ``/proc``."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _remove(odb: Any, oids: list[str]) -> None:
    if oids:
        odb.fs.remove([odb.oid_to_path(oid) for oid in oids])


def purge_deleted_data(project: Project, deleted_ids: set[str], batch_ids: list[str],
                       by_batch: Mapping[str, Iterable[str]] | None = None) -> dict[str, Any]:
    """Redact every old data version that holds a deleted sample, in the DVC cache and remote.

    Every ``.dir`` object in the local cache and the default remote is a data version. The
    current one (dvc.lock) is never touched. Another version whose ``index.csv`` lists a
    deleted sample is redacted: each object of its manifest that no unredacted version
    (the current one included) also lists is deleted from the cache and from the remote; the
    ``.dir`` manifest itself stays. A version whose ``index.csv`` is already gone counts as
    redacted (objects a crashed purge left behind are removed too, and the index is always
    deleted last, so a crash never hides a version that still holds data). Crash leftovers
    of the store (``data/.store.tmp-*``, ``data/.store.old-*``) are removed as well.
    Calling it again removes nothing. Sample ids are never logged or returned.

    Args:
        project: The project (a DVC repository).
        deleted_ids: Every deleted sample id.
        batch_ids: The deletion batches this purge completes, recorded with each redaction.
        by_batch: Every deletion batch's sample ids (pending ones too), to record which batches' samples each
            redacted version held, and which batches that was checked for; None attributes every deleted
            sample to ``batch_ids``.

    Returns:
        Evidence: ``versions_redacted`` (newly), ``versions_already_redacted``,
        ``readings`` (each version of either list: ``held_batches``, the batches whose samples its index listed
        when it was read, and ``checked_batches``, every batch known then; both None where no reading was
        recorded), ``objects_removed`` ({"local": n, "remote": n}), ``leftovers_removed`` and
        ``current_version``.

    Raises:
        PipelineError: If the current version still holds a deleted sample, or a version's
            manifest or index cannot be read (nothing is removed then).
    """
    from dvc_data.hashfile.db import get_index

    current = dvc_ops.data_version(project)
    deleted = set(deleted_ids)
    samples_of = {b: set(ids) for b, ids in (by_batch or dict.fromkeys(batch_ids, deleted)).items()}
    # version -> what its index said before it went: whose samples it held, of which batches (sample ids never kept)
    readings: dict[str, dict[str, list[str]]] = {}
    leftovers = _remove_crash_leftovers(project)
    now = utc_now()
    newly: list[str] = []
    already: list[str] = []
    with dvc_ops.open_repo(project, lock=not _inside_dvc_stage(project)) as repo:
        odbs = _object_dbs(repo)
        present = {side: set(odb.all()) for side, odb in odbs.items()}
        versions = sorted({oid for oids in present.values() for oid in oids if oid.endswith(DIR_SUFFIX)} | {current})
        manifests = {version: _load_manifest(odbs, present, version) for version in versions}
        redacted: set[str] = set()
        for version in versions:
            index_oid = manifests[version].get(INDEX_FILE)
            if index_oid is None or STORE_META not in manifests[version]:
                continue  # not a sample store (another tracked directory): left alone
            data = _read_object(odbs, present, index_oid)
            ids = None if data is None else _sample_ids(data, version)
            if version == current:
                if data is None:
                    raise PipelineError(f"the current data version {current} has no index in the cache or remote")
                if ids and ids & deleted:
                    raise PipelineError(
                        f"the current data version {current} still holds deleted samples; run the prepare "
                        "stage and commit it before purging"
                    )
            elif data is None:
                already.append(version)
                redacted.add(version)
            elif ids and ids & deleted:
                newly.append(version)
                redacted.add(version)
                readings[version] = {"held_batches": sorted(b for b, samples in samples_of.items() if ids & samples),
                                     "checked_batches": sorted(samples_of)}
        needed = {oid for version in versions if version not in redacted for oid in manifests[version].values()}
        doomed_by_side: dict[str, dict[str, set[str]]] = {}
        for side in odbs:  # an object two redacted versions share is counted once, with the first
            claimed: set[str] = set()
            doomed_by_side[side] = {}
            for version in sorted(redacted):
                doomed = {oid for oid in manifests[version].values()
                          if oid not in needed and oid in present[side]} - claimed
                doomed_by_side[side][version] = doomed
                claimed |= doomed
        plan = _write_plan(project, newly, readings, doomed_by_side, batch_ids, present)
        for side, odb in odbs.items():
            removed_here = 0
            last: list[str] = []  # index objects go last: while one exists, its version is not "redacted"
            for version, doomed in doomed_by_side[side].items():
                index_oid = manifests[version][INDEX_FILE]
                first = sorted(doomed - {index_oid})
                _remove(odb, first)
                last += [index_oid] if index_oid in doomed else []
                present[side] -= doomed
                removed_here += len(doomed)
            _remove(odb, sorted(set(last)))
            if side == REMOTE and removed_here:
                # As `dvc gc --cloud` does: drop DVC's cached listing of the remote, so a later
                # push re-checks instead of trusting that removed objects are still there.
                with closing(get_index(odb)) as index:
                    index.clear()
    _record(project, newly, already, doomed_by_side, batch_ids, plan, manifests, now, readings)
    # The plan holds every object the purge of these batches removed, over every run an interruption split it into
    # (it is removed by finish_plan once the batches' evidence is saved): the evidence counts it, not this run alone.
    newly = [v for v in [*newly, *already] if v in plan["newly"]]
    already = [v for v in already if v not in newly]
    recorded = load_redactions(project)
    totals = {side: len(plan["objects"].get(side, [])) for side in (LOCAL, REMOTE)}
    log.info("purge: %d version(s) redacted, %d already redacted, objects removed %s, %d leftover(s) removed",
             len(newly), len(already), totals, leftovers)
    return {"versions_redacted": newly, "versions_already_redacted": already, "objects_removed": totals,
            "readings": {v: _reading(plan["readings"].get(v) if v in newly else recorded.get(v))
                         for v in [*newly, *already]},
            "leftovers_removed": leftovers, "current_version": current}


def _plan_path(project: Project) -> Path:
    return project.data_dir / "purge_plan.json"  # not a stage's state (unlearn status lists data/state)


def _read_plan(project: Project) -> dict[str, Any] | None:
    """The plan an interrupted purge left, or None (none, or not one this code wrote: then it is not trusted)."""
    import json

    path = _plan_path(project)
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        plan = None
    sound = (isinstance(plan, dict) and isinstance(plan.get("objects"), dict)
             and all(isinstance(v, list) and all(isinstance(o, str) for o in v) for v in plan["objects"].values())
             and all(isinstance(plan.get(k), list) and all(isinstance(x, str) for x in plan[k])
                     for k in ("batch_ids", "newly"))
             # a plan an older release wrote has no readings: its versions' batches are not known
             and isinstance(plan.setdefault("readings", {}), dict))
    if not sound:
        log.warning("purge: %s is not a plan this pipeline wrote; the objects it named are not counted", path.name)
        return None
    return plan


def _write_plan(project: Project, newly: list[str], readings: dict[str, dict[str, list[str]]],
                doomed: dict[str, dict[str, set[str]]], batch_ids: list[str],
                present: dict[str, set[str]]) -> dict[str, Any]:
    """Write down what the purge of ``batch_ids`` is about to remove, before it removes anything, and return it.

    Why: a purge killed between removing objects and recording them (or cut off later, in the scan, and repeated)
    left the next run to find fewer objects, or the versions already redacted, and the batches' evidence and
    certificates said fewer objects were removed than were, down to 0 (review of 2026-12-07). The plan left by an
    interrupted purge is merged into this one: it names object ids (content hashes, no sample data), so an object
    planned twice counts once. It also keeps what each version's index said (the batches whose samples it held,
    of those known then) before the index goes; a later reading of the same index (a run cut off before
    removing it) replaces an earlier one. :func:`finish_plan` removes it once the batches' evidence is saved.
    """
    empty: dict[str, Any] = {"objects": {}, "batch_ids": [], "newly": [], "readings": {}}
    earlier = _read_plan(project) or empty
    if not set(earlier["batch_ids"]) <= set(batch_ids):
        # run_purge repeats an interrupted purge with every batch it named (they stay unpurged until their evidence
        # is saved): a plan naming another batch is left from a purge whose evidence was saved. Not counted again.
        earlier = empty
    # An object the earlier plan named counts if it is gone now (it was there when planned, so that purge removed
    # it); one still there is counted when this run removes it. A side this run cannot see is not claimed.
    objects = {side: sorted((set(earlier["objects"].get(side, [])) - present[side]).union(*doomed[side].values()))
               for side in doomed}
    plan = {"batch_ids": sorted({*earlier["batch_ids"], *batch_ids}), "newly": sorted({*earlier["newly"], *newly}),
            "objects": objects, "readings": {**earlier["readings"], **readings}}
    if any(objects.values()) or plan["newly"]:
        _plan_path(project).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(_plan_path(project), plan)
    return plan


def finish_plan(project: Project) -> None:
    """Remove the purge plan: the batches' evidence, which counts it, is saved (called by ``run_purge``)."""
    _plan_path(project).unlink(missing_ok=True)


def _reading(entry: Any) -> dict[str, list[str] | None]:
    """A version's recorded reading of its index (both fields None where none was recorded)."""
    entry = entry if isinstance(entry, dict) else {}
    return {key: entry[key] if isinstance(entry.get(key), list) and all(isinstance(b, str) for b in entry[key])
            else None for key in ("held_batches", "checked_batches")}


def _record(project: Project, newly: list[str], already: list[str], doomed: dict[str, dict[str, set[str]]],
            batch_ids: list[str], plan: dict[str, Any], manifests: dict[str, dict[str, str]], now: str,
            readings: dict[str, dict[str, list[str]]]) -> None:
    """Merge this purge into redactions.json (version -> when, which batches, objects removed).

    A version recorded before gains what this run removed of it, and the batches it removed them for. A version
    recorded now counts the plan's objects in it (not yet counted for another version): those an interrupted purge
    of these batches removed before it could record them are in the plan. A version the plan says these batches
    redacted is recorded for them, not as found redacted.
    """
    document = load_redactions(project)
    changed = False
    claimed: dict[str, set[str]] = {LOCAL: set(), REMOTE: set()}
    versions = [*newly, *already]
    for version in [v for v in versions if v in document]:
        counts = {side: len(doomed.get(side, {}).get(version, ())) for side in (LOCAL, REMOTE)}
        for side in claimed:
            claimed[side] |= doomed.get(side, {}).get(version, set())
        if counts[LOCAL] or counts[REMOTE]:
            entry = document[version]
            entry["objects_removed"] = {side: entry["objects_removed"].get(side, 0) + counts[side]
                                        for side in (LOCAL, REMOTE)}
            entry["batch_ids"] = sorted({*entry.get("batch_ids", []), *batch_ids})
            changed = True
        if version in readings:  # its index was back (a restored version) and was read again: the newer reading
            document[version].update(readings[version])
            changed = True
    for version in [v for v in versions if v not in document]:
        ours = version in newly or version in plan["newly"]
        counts = {}
        for side in (LOCAL, REMOTE):
            mine = (set(manifests[version].values()) & set(plan["objects"].get(side, []))) - claimed[side]
            claimed[side] |= mine
            counts[side] = len(mine)
        document[version] = {"redacted_at": now, "batch_ids": sorted(batch_ids) if ours else [],
                             "objects_removed": counts}
        if ours and version in plan["readings"]:  # what its index said (found redacted, or an older plan: unknown)
            document[version].update(plan["readings"][version])
        if not ours:
            document[version]["found_redacted"] = True  # its index was gone before this purge
        changed = True
    if changed:
        write_json_atomic(project.redactions_path, document)


def load_redactions(project: Project) -> dict[str, dict[str, Any]]:
    """The recorded redactions: data version -> {redacted_at, batch_ids, objects_removed, held_batches,
    checked_batches}.

    ``batch_ids``: the batches whose purges removed the version's objects; ``held_batches``: the batches whose
    samples its index listed when it was redacted, of ``checked_batches``, every batch known then (both absent
    for a version found redacted, and in older records).

    Args:
        project: The project.

    Returns:
        The mapping (empty when nothing was ever redacted).

    Raises:
        PipelineError: If the file exists but is not a JSON object.
    """
    import json

    path = project.redactions_path
    if not path.exists():
        return {}
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path} is corrupt: {exc}") from None
    if not isinstance(document, dict):
        raise PipelineError(f"{path} is corrupt: expected a JSON object")
    return document


def _is_virtualenv(path: Path) -> bool:
    return (path / "pyvenv.cfg").is_file()


def scan_project_for_samples(project: Project, patterns: dict[str, bytes],
                             exclude: Iterable[Path] = ()) -> ScanResult:
    """Search every file of the project for the given sample bytes (evidence for certificates).

    Scans the whole project root: the working data, ``.dvc/cache``, ``mlartifacts``,
    ``mlflow.db``, Git's objects, everything, plus the DVC cache and the default remote when
    they are local directories outside the root. Only Python virtual environments are skipped
    (installed packages, not data). Symbolic links are not followed.

    Args:
        project: The project.
        patterns: Pattern key -> bytes, from :func:`unlearn.forensics.sample_patterns`.
        exclude: Files not to scan: the quarantine files purge removes right after the scan (it reads its
            patterns from them, so they hold the bytes by design).

    Returns:
        The scan result; match paths start with the scanned directory's name.
    """
    roots = [project.root]
    if (project.root / ".dvc").is_dir():
        with dvc_ops.open_repo(project, lock=False) as repo:
            extra = [Path(repo.cache.local_cache_dir)]
            try:
                remote = repo.cloud.get_remote()
                if remote.fs.protocol == "local":
                    extra.append(Path(remote.path))
            except Exception:  # no remote configured: nothing more to scan
                pass
        for path in extra:
            path = path.resolve()
            if path.exists() and not any(path == r or r in path.parents for r in roots):
                roots.append(path)
    excluded = {Path(path).resolve() for path in exclude}
    names = {path.name for path in excluded}  # resolved only for a file with one of these names, not every path

    def skip(path: Path) -> bool:
        return (path.name in names and path.resolve() in excluded) or (path.is_dir() and _is_virtualenv(path))

    return scan_for_patterns(roots, patterns, skip=skip)
