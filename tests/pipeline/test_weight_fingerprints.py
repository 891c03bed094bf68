"""Retired weights' fingerprints against a live successor that kept most of its parent's bytes.

SSD dampens a few weights and copies the rest; SalUn with a small forget set updates few. The
fingerprints of the retired parent used to be taken from the middle of its largest tensors, which the
live champion still held, so every purge scan "found the retired weights" in the champion's own
artifacts and refused (review of 2026-12-06). Real MLflow registry (SQLite) and artifact store."""

import json

import numpy as np
import pytest
from conftest import FAST

pytestmark = pytest.mark.e2e


def _register_successor(project, client, parent_version):
    """Log an SSD-like child of ``parent_version`` (3 weights per large tensor halved) as the champion."""
    import mlflow
    import torch

    from tasks import tracking
    from tasks.stage.context import input_example
    from unlearn.data import SampleStore

    parent_mv = client.get_model_version(tracking.model_name(project), parent_version)
    model = tracking.load_model(project, client, parent_version)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point() and tensor.numel() >= 64:
                flat = tensor.view(-1)
                flat[torch.from_numpy(rng.choice(flat.numel(), size=3, replace=False))] *= 0.5
    store = SampleStore(project.store_dir)
    tags = {k: parent_mv.tags[k] for k in ("covers_through", "data_version")}
    with mlflow.start_run(run_name="successor"):
        version, _ = tracking.log_model(
            project, model, input_example(store),
            architecture={k[5:]: v for k, v in parent_mv.tags.items() if k.startswith("arch_")},
            classes=store.classes, tags={**tags, "method": "ssd", "parent_version": parent_version})
    tracking.move_champion(project, client, version)
    return version, model


def test_a_retired_parent_is_fingerprinted_apart_from_a_successor_that_kept_its_bytes(champion_project, monkeypatch):
    from tasks import model_files, tracking
    from tasks.doctor import diagnose
    from tasks.project import load_project
    from tasks.purge import scan_project_for_samples
    from tasks.retired_weights import remember_weight_fingerprints, retired_weight_patterns
    from unlearn.forensics import shared_patterns, weight_patterns

    root, _ = champion_project(FAST)
    project = load_project(root)
    client = tracking.setup(project)
    parent = tracking.load_model(project, client, "1")
    parent_state = {k: v.detach().numpy().copy() for k, v in parent.state_dict().items()}
    version, child = _register_successor(project, client, "1")
    assert version == "2"
    parent_mv_arch = client.get_model_version(tracking.model_name(project), "2").tags["arch_model"]

    reads, read_state = [], tracking.load_state
    monkeypatch.setattr(tracking, "load_state", lambda *a, **k: reads.append(a[2]) or read_state(*a, **k))
    loaded = {}  # as one purge run shares it between its retirements and its scan
    remember_weight_fingerprints(project, client, client.get_model_version(tracking.model_name(project), "1"),
                                 loaded=loaded)
    model_files.retire_version(project, client, client.get_model_version(tracking.model_name(project), "1"),
                            reason="test", batches=[], at="2026-12-06T00:00:00Z")
    weights = retired_weight_patterns(project, client, loaded=loaded)
    # the retired version read once to fingerprint it, the live champion once for both uses (it was twice)
    assert sorted(reads) == ["1", "2"]
    monkeypatch.undo()
    assert len(weights.patterns) >= 2 and weights.shared == 0 and weights.unsearchable == ()
    assert scan_project_for_samples(project, weights.patterns).matches == ()  # the champion's own files do not match
    stray = root / "exports" / "v1-backup.bin"  # a copy of the retired weights kept somewhere in the project
    stray.parent.mkdir()
    stray.write_bytes(b"".join(np.ascontiguousarray(v).tobytes() for v in parent_state.values()))
    assert {key for _, key in scan_project_for_samples(project, weights.patterns).matches} == set(weights.patterns)
    assert {f.subject for f in diagnose(project) if f.check == "weights"} == {f"{root.name}/exports/v1-backup.bin"}
    stray.unlink()
    assert diagnose(project) == []

    # a live version whose architecture no longer builds is left out of the comparison, not a crash
    name = tracking.model_name(project)
    client.set_model_version_tag(name, "2", "arch_model", "gone_pkg.models:factory")
    assert retired_weight_patterns(project, client).patterns == weights.patterns
    client.set_model_version_tag(name, "2", "arch_model", parent_mv_arch)

    # fingerprints taken the old way (the middle of each large tensor), which the SSD child still holds: not
    # searched for, counted, and the version is named as unsearchable (the evidence, the doctor), never clean
    path = project.state_dir / "retired-weights.json"
    # (the review measured 4 of 4 held by a real SSD child; this synthetic one may have edited one of the windows)
    old_style = weight_patterns(parent_state)
    kept = shared_patterns(old_style, [{k: v.detach().numpy() for k, v in child.state_dict().items()}])
    assert len(kept) >= 2
    path.write_text(json.dumps({"1": {k: old_style[k].hex() for k in kept}}))
    legacy = retired_weight_patterns(project, client)
    assert legacy.patterns == {} and legacy.shared == len(kept) and legacy.unsearchable == ("1",)
    assert retired_weight_patterns(project).patterns  # unfiltered, they would match the champion's own files
    assert scan_project_for_samples(project, retired_weight_patterns(project).patterns).matches
    (finding,) = diagnose(project)
    assert (finding.check, finding.subject) == ("weights", "version 1") and "cannot be found" in finding.problem
    assert legacy.evidence() == {"weight_fingerprints": 0, "weight_fingerprints_shared_with_live": legacy.shared,
                                 "weight_versions_unsearchable": ["1"]}

    # retired before any fingerprint was taken (no entry at all): the registry's tombstone names it unsearchable
    path.write_text("{}")
    assert retired_weight_patterns(project, client).unsearchable == ("1",)
    assert retired_weight_patterns(project).unsearchable == ()  # without the registry nothing says it was retired


def test_a_version_number_fingerprinted_in_another_registry_gets_fingerprints_of_its_own(champion_project):
    """A project moved to another registry on purpose (``data/.registry`` deleted) numbers its versions from 1
    again. The fingerprints kept for the old registry's version 1 are not the new version 1's: they were taken for
    it, as already fingerprinted and scanned, so its weights were never searched for while the evidence said
    version 1's had been. The old entry is kept under a name of its own and still searched for."""
    from tasks import tracking
    from tasks.project import PipelineError, load_project
    from tasks.retired_weights import (
        mark_weights_scanned,
        remember_weight_fingerprints,
        retired_weight_fingerprints,
        retired_weight_patterns,
        unscanned_retirements,
    )

    root, _ = champion_project(FAST)
    project = load_project(root)
    client = tracking.setup(project)
    mv = client.get_model_version(tracking.model_name(project), "1")
    path, scanned = project.state_dir / "retired-weights.json", project.state_dir / "retired-weights-scanned.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    other = {"w0": bytes(range(256)).hex()}  # another model's weights: not in this version 1's
    path.write_text(json.dumps({"1": other, "_models": {"1": "m-0ld"}}))  # left by the other registry, scanned
    mark_weights_scanned(project, ["1"])
    assert unscanned_retirements(project) == []

    remember_weight_fingerprints(project, client, mv)
    known = retired_weight_fingerprints(project)
    assert known["1~m-0ld"] == other and known["1"] and known["1"] != other and "_models" not in known
    assert json.loads(path.read_text())["_models"] == {"1~m-0ld": "m-0ld", "1": tracking.version_model_id(mv)}
    assert unscanned_retirements(project) == ["1"] and json.loads(scanned.read_text()) == ["1~m-0ld"]
    unfiltered = retired_weight_patterns(project)  # (the registry's live version 1 holds its own fingerprints)
    assert unfiltered.searched == {"1", "1~m-0ld"} and bytes(range(256)) in unfiltered.patterns.values()
    before = path.read_text()
    remember_weight_fingerprints(project, client, mv)  # its own entry now: nothing changes
    assert path.read_text() == before

    # an entry from an earlier release (no model recorded): this version's only when every fingerprint is in its
    # weights; one cut from another model, none at all, or weights that cannot be read: kept apart, this version anew
    own = known["1"]
    mixed = {"w0": own[next(iter(own))], "w1": other["w0"]}  # one run a successor may share, one another model's
    read_state = tracking.load_state
    for entry, kept, readable in ((own, None, True), (other, "1~another-registry", True),
                                  (mixed, "1~another-registry", True), ({}, "1~another-registry", True),
                                  (own, "1~another-registry", False)):
        path.write_text(json.dumps({"1": entry}))
        scanned.write_text(json.dumps(["1"]))
        with pytest.MonkeyPatch.context() as patch:
            if not readable:
                def unreadable(*args, **kwargs):
                    raise PipelineError("artifact store unreachable")

                patch.setattr(tracking, "load_state", unreadable)
            remember_weight_fingerprints(project, client, mv)
        assert tracking.load_state is read_state
        after = retired_weight_fingerprints(project)
        if kept is None:
            assert after == {"1": own} and unscanned_retirements(project) == []
            assert json.loads(path.read_text())["_models"] == {"1": tracking.version_model_id(mv)}  # now recorded
        else:
            assert after[kept] == entry and unscanned_retirements(project) == ["1"]
            assert after["1"] == (own if readable else {})  # unreadable: named unsearchable, never "searched"
            assert json.loads(scanned.read_text()) == [kept]


def test_a_batch_is_told_about_the_model_it_retired_not_the_version_that_took_its_number_later(tmp_path):
    """After such a move, a batch of the old registry still waiting for its version 1's weight search must get the
    old model's status (kept as 1~m-0ld, here with nothing to search for), not the new version 1's; a batch recorded
    before model ids were (no model_id) is matched by its number, as before."""
    from tasks.retired_weights import RetiredWeights, entry_key, record_weight_search

    class Ledger:
        def __init__(self, batches):
            self.batches = batches

        def oldest_first(self):
            return list(self.batches)

        def batch(self, batch_id):
            return self.batches[batch_id]

        def record_retirement(self, batch_id, version, entry):
            self.batches[batch_id]["retirement"][version] = entry

    retired = {"action": "retired", "version": "1"}
    ledger = Ledger({"old": {"retirement": {"1": {**retired, "model_id": "m-0ld"}}},
                     "new": {"retirement": {"1": {**retired, "model_id": "m-new"}}},
                     "legacy": {"retirement": {"1": dict(retired)}},
                     # retired by an earlier release (fingerprints without a model id), model id added later
                     "older": {"retirement": {"1": {**retired, "model_id": "m-older"}}}})
    keys = {"m-0ld": "1~m-0ld", "m-new": "1"}
    assert entry_key("1", ledger.batch("old")["retirement"]["1"], keys) == "1~m-0ld"
    assert entry_key("1", ledger.batch("legacy")["retirement"]["1"], keys) == "1"
    assert entry_key("1", ledger.batch("older")["retirement"]["1"], keys) == "1~m-older"  # not the new version 1
    assert entry_key("2", {**retired, "model_id": "m-two"}, keys) == "2"  # its number is nobody else's
    weights = RetiredWeights({"v1-w0": b"x" * 256}, 0, ("1~m-0ld",))  # the new version 1 searched, the old one not
    record_weight_search(ledger, weights, {"1", "1~m-0ld"}, keys)
    assert [ledger.batch(b)["retirement"]["1"]["weights_searched"] for b in ("old", "new", "legacy")] == [
        False, True, True]
    assert "weights_searched" not in ledger.batch("older")["retirement"]["1"]  # unknown stays unrecorded
    assert not any("weights_paths_not_scanned" in ledger.batch(b)["retirement"]["1"] for b in ledger.batches)
    # paths the scan could not read stay with the entries it searched (review of 2026-12-07: "searched: yes" alone)
    ledger.batches["later"] = {"retirement": {"2": {"action": "retired", "version": "2"}}}
    ledger.batches["empty"] = {"retirement": {"3": {"action": "retired", "version": "3"}}}
    weights = RetiredWeights({"v2-w0": b"y" * 256}, 0, ("3",))
    record_weight_search(ledger, weights, {"2", "3"}, keys, not_scanned=4)
    assert ledger.batch("later")["retirement"]["2"]["weights_paths_not_scanned"] == 4
    assert "weights_paths_not_scanned" not in ledger.batch("empty")["retirement"]["3"]  # nothing searched: "no"
