"""Purging deleted samples from old data versions, against a real DVC repository and remote."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tasks import dvc_ops
from tasks.project import PipelineError, load_project
from tasks.purge import finish_plan, load_redactions, purge_deleted_data, scan_project_for_samples
from tasks.stage.ingest import run_ingest
from tasks.stage.prepare import run_prepare
from unlearn.data import SampleStore
from unlearn.forensics import sample_patterns
from unlearn.requests import Ledger


def _dvc(project, *args):
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project.root, capture_output=True, text=True)


def _version(project):
    """Prepare the store from the ledger, record it in DVC and push it; returns its data version."""
    run_prepare(project)
    dvc_ops.commit(project, "ingest", "prepare")
    dvc_ops.push(project)
    return dvc_ops.data_version(project)


def _first_version(make_project):
    project = load_project(make_project())
    dvc_ops.ensure_repo(project)
    run_ingest(project)  # empty inbox: creates the ledger
    return project, _version(project)


def _delete(project, batch_id, count, seed):
    """Record a deletion batch of ``count`` train samples spread over the shards."""
    store = SampleStore(project.store_dir)
    train = store.split_ids("train")
    ids = sorted(np.random.default_rng(seed).choice(train, size=count, replace=False).tolist())
    ledger = Ledger(project.ledger_path)
    ledger.add_batch(batch_id, [f"R-{batch_id}"], ids, created_at="2026-11-24T10:00:00Z")
    ledger.save()
    return store.load(ids)  # the exact bytes the old version holds


def _objects(root):
    return {p.parent.name + p.name for p in (root / "files" / "md5").glob("*/*")}


def _manifest(project, version):
    path = project.root / ".dvc" / "cache" / "files" / "md5" / version[:2] / version[2:]
    return {entry["relpath"]: entry["md5"] for entry in json.loads(path.read_text())}


def test_purge_removes_deleted_samples_everywhere_and_keeps_the_current_version(make_project):
    project, v1 = _first_version(make_project)
    deleted = _delete(project, "batch-1", 12, seed=0)
    v2 = _version(project)
    assert v1 != v2
    live = SampleStore(project.store_dir).load()
    patterns, dropped = sample_patterns(deleted, live.images)
    assert len(patterns) + dropped == 12 and len(patterns) >= 10

    # Before: the scan finds the deleted bytes in the old version's cache and remote objects.
    before = scan_project_for_samples(project, patterns)
    where = {path.split("/", 1)[1].split("/")[0] for path, _ in before.matches}
    assert {".dvc", ".dvcstore", "data"} <= where
    assert not any("/data/store/" in path for path, _ in before.matches)
    assert {key for _, key in before.matches} == set(patterns)

    shutil.rmtree(project.quarantine_dir)  # the pipeline deletes it when a verified model is promoted
    result = purge_deleted_data(project, Ledger(project.ledger_path).deleted_ids(), ["batch-1"])
    assert result["versions_redacted"] == [v1] and result["versions_already_redacted"] == []
    assert result["current_version"] == v2
    assert result["objects_removed"]["local"] > 0 and result["objects_removed"]["remote"] > 0
    assert result["objects_removed"]["local"] == result["objects_removed"]["remote"]

    # After: not one deleted sample's bytes anywhere in the project (cache, remote, working copy).
    after = scan_project_for_samples(project, patterns)
    assert after.matches == () and after.clean and after.files > 0 and after.patterns == len(patterns)

    # The old manifest stays (lineage); its index and the shards that held deleted samples are gone.
    old, new = _manifest(project, v1), _manifest(project, v2)
    cache, remote = project.root / ".dvc" / "cache", project.root / ".dvcstore"
    for objects in (_objects(cache), _objects(remote)):
        assert v1 in objects and v2 in objects
        assert old["index.csv"] not in objects and set(new.values()) <= objects
        assert {oid for oid in old.values() if oid not in set(new.values())}.isdisjoint(objects)

    redactions = load_redactions(project)
    assert list(redactions) == [v1]
    assert redactions[v1]["batch_ids"] == ["batch-1"]
    assert redactions[v1]["objects_removed"] == result["objects_removed"]
    text = json.dumps(result) + project.redactions_path.read_text()
    assert not any(sample_id in text for sample_id in deleted.ids)

    # The current version is complete: in sync with the remote, restorable from cache and remote.
    assert "in sync" in _dvc(project, "status", "--cloud").stdout
    shutil.rmtree(project.store_dir)
    assert _dvc(project, "checkout", "--force", "data/store").returncode == 0
    assert np.array_equal(SampleStore(project.store_dir).load().images, live.images)
    shutil.rmtree(project.store_dir)
    shutil.rmtree(cache)
    pulled = _dvc(project, "pull", "data/store")
    assert pulled.returncode == 0, pulled.stderr
    restored = SampleStore(project.store_dir).load()
    assert np.array_equal(restored.ids, live.ids) and np.array_equal(restored.images, live.images)
    assert dvc_ops.data_version(project) == v2

    # A second purge of the batch (a run cut off after the first one's record repeats it) removes nothing and
    # reports what the batch's purge removed, as recorded; the record is not counted twice.
    again = purge_deleted_data(project, Ledger(project.ledger_path).deleted_ids(), ["batch-1"])
    assert again["versions_redacted"] == [v1] and again["versions_already_redacted"] == []
    assert again["objects_removed"] == result["objects_removed"]
    assert load_redactions(project) == redactions
    finish_plan(project)  # the batch's evidence is saved: another batch's purge counts only its own
    other = purge_deleted_data(project, Ledger(project.ledger_path).deleted_ids(), ["batch-other"])
    assert other["versions_already_redacted"] == [v1] and other["objects_removed"] == {"local": 0, "remote": 0}


def test_versions_without_deleted_samples_stay_intact_and_leftovers_go(make_project):
    project, v1 = _first_version(make_project)
    deleted = _delete(project, "batch-1", 5, seed=1)
    v2 = _version(project)
    # A parameter change makes a third version with the same samples (none of them deleted).
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    params["data"]["shard_size"] = 64
    (project.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    project = load_project(project.root)
    v3 = _version(project)
    assert len({v1, v2, v3}) == 3
    # Crash leftovers of the store writer hold deleted samples too.
    for name in (".store.tmp-999999999", ".store.old-999999999"):
        shutil.copytree(project.quarantine_dir, project.data_dir / name)
    shutil.rmtree(project.quarantine_dir)
    v2_objects = set(_manifest(project, v2).values())

    result = purge_deleted_data(project, set(deleted.ids.tolist()), ["batch-1"])
    assert result["versions_redacted"] == [v1] and result["leftovers_removed"] == 2
    assert not list(project.data_dir.glob(".store.*"))
    for root in (project.root / ".dvc" / "cache", project.root / ".dvcstore"):
        assert v2_objects <= _objects(root)  # the older version without deleted samples is whole
    patterns, _ = sample_patterns(deleted, SampleStore(project.store_dir).load().images)
    assert scan_project_for_samples(project, patterns).matches == ()


def test_a_crashed_purge_is_finished_and_the_current_version_is_checked(make_project):
    project, v1 = _first_version(make_project)
    store_ids = set(SampleStore(project.store_dir).ids.tolist())
    with pytest.raises(PipelineError, match="still holds deleted samples"):
        purge_deleted_data(project, {sorted(store_ids)[0]}, ["batch-x"])
    deleted = _delete(project, "batch-1", 3, seed=2)
    _version(project)
    # Simulate a purge that crashed after removing v1's index but before its other objects.
    index_oid = _manifest(project, v1)["index.csv"]
    for root in (project.root / ".dvc" / "cache", project.root / ".dvcstore"):
        path = root / "files" / "md5" / index_oid[:2] / index_oid[2:]
        path.chmod(0o644)
        path.unlink()
    shutil.rmtree(project.quarantine_dir)
    result = purge_deleted_data(project, set(deleted.ids.tolist()), ["batch-1"])
    assert result["versions_redacted"] == [] and result["versions_already_redacted"] == [v1]
    assert result["objects_removed"]["local"] > 0  # the shards the crash left behind
    assert load_redactions(project)[v1]["found_redacted"] is True
    patterns, _ = sample_patterns(deleted, SampleStore(project.store_dir).load().images)
    assert scan_project_for_samples(project, patterns).matches == ()


def test_a_purge_killed_while_removing_records_what_it_removed_when_it_is_finished(make_project, monkeypatch):
    """Killed after removing the local objects (index included) and before its record, the next purge found fewer
    objects and recorded those: the evidence said fewer objects were removed than were (review of 2026-12-07). What
    is about to be removed is written down first; the purge that finishes it records that."""
    from tasks import purge

    project, v1 = _first_version(make_project)
    deleted = _delete(project, "batch-1", 5, seed=1)
    _version(project)
    ids = set(deleted.ids.tolist())
    real_remove, calls = purge._remove, []

    def killed(odb, oids):
        real_remove(odb, oids)
        calls.append(len(oids))
        if len(calls) == 2:  # the local side is done, index last; the remote side untouched
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(purge, "_remove", killed)
    with pytest.raises(KeyboardInterrupt):
        purge_deleted_data(project, ids, ["batch-1"])
    plan = json.loads((project.data_dir / "purge_plan.json").read_text())
    planned = {side: len(plan["objects"][side]) for side in ("local", "remote")}
    assert planned["local"] == sum(calls) > 0 and plan["batch_ids"] == ["batch-1"] and plan["newly"] == [v1]
    # read from the index before it went: the rerun cannot read it
    assert plan["readings"] == {v1: {"held_batches": ["batch-1"], "checked_batches": ["batch-1"]}}
    assert load_redactions(project) == {}
    monkeypatch.setattr(purge, "_remove", real_remove)
    result = purge_deleted_data(project, ids, ["batch-1"])
    entry = load_redactions(project)[v1]
    assert entry["objects_removed"] == planned == result["objects_removed"] and planned["remote"] > 0
    assert entry["batch_ids"] == ["batch-1"] and "found_redacted" not in entry  # not 0, not "found redacted"
    assert result["versions_redacted"] == [v1] and result["readings"][v1]["held_batches"] == ["batch-1"]
    assert entry["held_batches"] == entry["checked_batches"] == ["batch-1"]
    again = purge_deleted_data(project, ids, ["batch-1"])  # repeated before the evidence was saved: the same
    assert again["objects_removed"] == planned and load_redactions(project)[v1]["objects_removed"] == planned
    purge.finish_plan(project)  # run_purge, once the batches' evidence is saved
    assert not (project.data_dir / "purge_plan.json").exists()


def test_objects_two_redacted_versions_share_are_counted_once(make_project):
    """The plan worked out every version's objects before removing any: an object two redacted versions share was
    counted twice (second review of 2026-12-07: 28 reported, 17 removed)."""
    from unlearn.requests import Ledger

    project, v1 = _first_version(make_project)
    _delete(project, "batch-1", 1, seed=1)
    v2 = _version(project)
    _delete(project, "batch-2", 30, seed=7)
    v3 = _version(project)
    m1, m2, m3 = (set(_manifest(project, v).values()) for v in (v1, v2, v3))
    assert (m1 & m2) - m3  # shared objects that both redactions remove
    cache, remote = project.root / ".dvc" / "cache", project.root / ".dvcstore"
    before = {side: _objects(root) for side, root in (("local", cache), ("remote", remote))}
    result = purge_deleted_data(project, Ledger(project.ledger_path).deleted_ids(), ["batch-1", "batch-2"])
    removed = {side: len(before[side] - _objects(root)) for side, root in (("local", cache), ("remote", remote))}
    assert result["objects_removed"] == removed and removed["local"] == len((m1 | m2) - m3)
    recorded = load_redactions(project)
    assert sum(recorded[v]["objects_removed"]["local"] for v in (v1, v2)) == removed["local"]


def test_a_purge_cut_off_after_its_record_reports_what_was_removed_when_repeated(make_project, monkeypatch):
    """Cut off after its record (in the scan, or refused), the purge is repeated; the repeat found the version
    redacted and nothing left, and the batch's evidence said 0 objects removed. A plan this pipeline did not write
    is not trusted (nothing it names is counted) and does not stop later purges."""
    from tasks import purge

    project, v1 = _first_version(make_project)
    deleted = _delete(project, "batch-1", 5, seed=1)
    _version(project)
    ids = set(deleted.ids.tolist())
    real = purge._record

    def record_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt("killed after the record")

    monkeypatch.setattr(purge, "_record", record_then_die)
    with pytest.raises(KeyboardInterrupt):
        purge_deleted_data(project, ids, ["batch-1"])
    monkeypatch.setattr(purge, "_record", real)
    counted = load_redactions(project)[v1]["objects_removed"]
    assert counted["local"] > 0
    result = purge_deleted_data(project, ids, ["batch-1"])
    assert result["objects_removed"] == counted and result["versions_redacted"] == [v1]
    assert load_redactions(project)[v1]["objects_removed"] == counted  # and not counted twice
    (project.data_dir / "purge_plan.json").write_text(json.dumps({"id": "x", "versions": {v1: {"local": 3}}}))
    assert purge_deleted_data(project, ids, ["batch-1"])["objects_removed"] == {"local": 0, "remote": 0}


def test_purges_without_a_remote_count_the_local_cache_and_an_interrupted_batch_set_is_counted_whole(
        make_project, monkeypatch):
    """Without a default remote (the local cache only) a later purge raised KeyError on every run (third review of
    2026-12-07). A purge killed before removing anything, then repeated for more batches, counts everything the
    batches' purge removed, the objects the new batch freed included."""
    from tasks import purge
    from unlearn.requests import Ledger

    project, v1 = _first_version(make_project)
    assert _dvc(project, "remote", "default", "--unset").returncode == 0
    cache = project.root / ".dvc" / "cache"
    _delete(project, "A", 1, seed=1)
    run_prepare(project)
    dvc_ops.commit(project, "ingest", "prepare")
    monkeypatch.setattr(purge, "_remove", lambda odb, oids: (_ for _ in ()).throw(KeyboardInterrupt("killed")))
    with pytest.raises(KeyboardInterrupt):  # killed after its plan, before removing anything
        purge_deleted_data(project, Ledger(project.ledger_path).deleted_ids(), ["A"])
    monkeypatch.undo()
    _delete(project, "B", 30, seed=7)
    run_prepare(project)
    dvc_ops.commit(project, "ingest", "prepare")
    before = _objects(cache)
    both = purge_deleted_data(project, Ledger(project.ledger_path).deleted_ids(), ["A", "B"])
    removed = len(before - _objects(cache))
    assert both["objects_removed"] == {"local": removed, "remote": 0} and removed > 0
    finish_plan(project)
    _delete(project, "C", 2, seed=3)
    run_prepare(project)
    dvc_ops.commit(project, "ingest", "prepare")
    before = _objects(cache)
    later = purge_deleted_data(project, Ledger(project.ledger_path).deleted_ids(), ["C"])  # KeyError before
    assert later["objects_removed"] == {"local": len(before - _objects(cache)), "remote": 0}


def test_a_plan_left_after_its_evidence_was_saved_or_on_a_side_now_unseen_is_not_counted(make_project, monkeypatch):
    """Fifth review of 2026-12-07: a plan left by a crash between saving the batches' evidence and removing it was
    counted again for the next, unrelated batch; and the remote objects a plan named were counted as removed after
    the remote was unset, though they were still there."""
    from tasks import purge
    from unlearn.requests import Ledger

    project, v1 = _first_version(make_project)
    _delete(project, "A", 1, seed=1)
    _version(project)
    first = purge_deleted_data(project, Ledger(project.ledger_path).deleted_ids(), ["A"])
    assert first["objects_removed"]["local"] > 0  # A's evidence saved; killed before finish_plan: the plan stays
    assert (project.data_dir / "purge_plan.json").exists()
    _delete(project, "C", 30, seed=7)
    _version(project)
    cache = project.root / ".dvc" / "cache"
    before = _objects(cache)
    later = purge_deleted_data(project, Ledger(project.ledger_path).deleted_ids(), ["C"])
    assert later["objects_removed"]["local"] == len(before - _objects(cache))  # C's own, not A's again
    assert v1 not in later["versions_redacted"]
    finish_plan(project)

    _delete(project, "D", 2, seed=3)
    _version(project)
    real_remove = purge._remove

    def remote_refuses(odb, oids):
        if oids and ".dvcstore" in str(odb.path):
            raise PermissionError("the remote refused")
        real_remove(odb, oids)

    monkeypatch.setattr(purge, "_remove", remote_refuses)
    with pytest.raises(PermissionError):
        purge_deleted_data(project, Ledger(project.ledger_path).deleted_ids(), ["D"])
    monkeypatch.undo()
    assert _dvc(project, "remote", "default", "--unset").returncode == 0  # to get past it: the remote is not seen
    again = purge_deleted_data(project, Ledger(project.ledger_path).deleted_ids(), ["D"])
    assert again["objects_removed"]["remote"] == 0 and again["objects_removed"]["local"] > 0


def test_a_leftover_whose_process_number_was_reused_goes(tmp_path, monkeypatch):
    """A leftover is kept while the process that wrote it may still run; its number reused by a process started
    after the leftover was made (a restart) kept it for good, and every purge then found the deleted samples' bytes
    in it and refused (review of 2026-12-07)."""
    import os
    import time
    from types import SimpleNamespace

    from tasks import purge

    data = tmp_path / "data"
    (data / ".store.old-1").mkdir(parents=True)  # process 1 started long before: it may be the writer
    project = SimpleNamespace(data_dir=data, store_dir=data / "store")
    assert purge._process_start(1) < time.time() - 2 and purge._process_start(2**22 + 7) is None
    assert abs(purge._process_start(os.getpid()) - time.time()) < 24 * 3600  # a real reading, not a default
    assert purge._remove_crash_leftovers(project) == 0 and (data / ".store.old-1").is_dir()
    made = (data / ".store.old-1").lstat().st_ctime
    monkeypatch.setattr(purge, "_process_start", lambda pid: made + 60)  # number 1 now names a later process
    assert purge._remove_crash_leftovers(project) == 1 and not (data / ".store.old-1").exists()



def test_each_batch_is_credited_only_with_the_versions_that_held_its_samples(make_project):
    """Every version a purge redacted or found redacted was listed on the certificate of every batch it closed:
    a batch closed alone named the version made after its deletion (holding only a pending batch's samples), and
    batches closed together named each other's (review of 2026-12-07). A version whose index was read before a
    batch existed is listed apart for it, not left out (second review)."""
    from tasks.lifecycle import versions_of_batch

    project, v0 = _first_version(make_project)
    _delete(project, "A", 6, seed=1)
    v1 = _version(project)
    _delete(project, "B", 6, seed=2)  # pending while A is purged alone (held, or its verification failed)
    v2 = _version(project)

    def purge(closing):
        ledger = Ledger(project.ledger_path)
        by_batch = {b: ledger.batch(b)["sample_ids"] for b in ledger.batches}
        result = purge_deleted_data(project, ledger.deleted_ids(), closing, by_batch=by_batch)
        finish_plan(project)
        return result, {b: {k: sorted(v) for k, v in versions_of_batch(result, b).items()} for b in closing}

    def held(result):
        return {v: r["held_batches"] for v, r in result["readings"].items()}

    result, own = purge(["A"])
    assert held(result) == {v0: ["A", "B"], v1: ["B"]}  # v1 was made after A's deletion
    assert own["A"] == {"versions_redacted": [v0], "versions_redacted_earlier": [], "versions_found_redacted": []}
    assert {v: (e["held_batches"], e["checked_batches"]) for v, e in load_redactions(project).items()} == {
        v0: (["A", "B"], ["A", "B"]), v1: (["B"], ["A", "B"])}
    result, own = purge(["B"])  # both found redacted: recorded then as holding B's samples
    assert own["B"] == {"versions_redacted": [], "versions_redacted_earlier": sorted([v0, v1]),
                        "versions_found_redacted": []}

    _delete(project, "C", 6, seed=3)
    v3 = _version(project)
    _delete(project, "D", 6, seed=4)
    _version(project)
    result, own = purge(["C", "D"])  # closed together
    assert {v: held(result)[v] for v in (v2, v3)} == {v2: ["C", "D"], v3: ["D"]}
    assert own["C"]["versions_redacted"] == [v2] and own["D"]["versions_redacted"] == sorted([v2, v3])
    # v0 and v1 were read before C and D existed (v0 did hold their samples): not known, listed apart
    assert own["C"]["versions_found_redacted"] == own["D"]["versions_found_redacted"] == sorted([v0, v1])
    assert own["C"]["versions_redacted_earlier"] == []


def test_a_plan_without_readings_claims_no_batch_for_its_versions(make_project, monkeypatch):
    """A plan an older release wrote names no batches per version: the versions it redacted were recorded as
    holding no batch's samples and left off every certificate (second review of 2026-12-07)."""
    from tasks import purge
    from tasks.lifecycle import versions_of_batch

    project, v1 = _first_version(make_project)
    deleted = _delete(project, "batch-1", 5, seed=1)
    _version(project)
    real_remove, calls = purge._remove, []

    def killed(odb, oids):
        real_remove(odb, oids)
        calls.append(len(oids))
        if len(calls) == 4:  # both sides done, indexes included; nothing recorded
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(purge, "_remove", killed)
    with pytest.raises(KeyboardInterrupt):
        purge_deleted_data(project, set(deleted.ids.tolist()), ["batch-1"])
    path = project.data_dir / "purge_plan.json"
    plan = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in plan.items() if k != "readings"}))  # as an older release wrote it
    monkeypatch.setattr(purge, "_remove", real_remove)
    result = purge_deleted_data(project, set(deleted.ids.tolist()), ["batch-1"])
    assert result["versions_redacted"] == [v1] and result["readings"][v1]["held_batches"] is None
    assert "held_batches" not in load_redactions(project)[v1]
    assert versions_of_batch(result, "batch-1") == {"versions_redacted": [], "versions_redacted_earlier": [],
                                                     "versions_found_redacted": [v1]}
