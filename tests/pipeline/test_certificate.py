"""Deletion certificates: SLA durations, digest-sealed JSON, and a self-contained, escaped HTML report."""

from __future__ import annotations

import base64
import copy
import json
import re

import pytest

from tasks.certificate import certificate_stem, verify_certificate_digest, write_certificate
from tasks.certificate_sla import sla_durations, sla_start

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert(1)</script>"
ATTRIBUTE_BREAKER = '"><img src=x onerror=alert(2)>'
STEPS = ["received", "validated", "data_version", "unlearned", "verified", "promoted", "retired", "purged",
         "certified"]


def _timeline(*times):
    return [{"step": step, "at": at} for step, at in zip(STEPS, times, strict=False)]


def _certificate(**overrides):
    certificate = {
        "certificate_version": 1, "request_id": "req-2026-11-24:0001",
        "subject_hash": "hmac-sha256:" + "ab" * 32, "batch_id": "batch-7", "status": "complete",
        "issued_at": "2026-11-24T11:30:02Z",
        "request": {"reason": "GDPR Art. 17 erasure", "n_samples": 12, "forget_class": None,
                    "sample_ids_digest": "sha256:" + "cd" * 32},
        "timeline": _timeline("2026-11-24T10:00:00Z", "2026-11-24T10:00:01.500000Z", "2026-11-24T10:00:05Z",
                              "2026-11-24T10:20:05Z", "2026-11-24T10:25:00Z", "2026-11-24T10:26:00Z",
                              "2026-11-24T10:27:00Z", "2026-11-24T10:28:00Z", "2026-11-24T11:30:00Z"),
        "data": {"version_before": "v12", "version_after": "v13", "redacted_versions": ["v11", "v12"]},
        "model": {"version": "7", "parent_version": "6", "method": "scrub",
                  "attempts": [{"method": "finetune", "run_id": "run-a", "verdict": "fail",
                                "failures": ["mia.loss_threshold.auc gap 0.08 > 0.05"], "seconds": 41.5},
                               {"method": "scrub", "run_id": "run-b", "verdict": "pass", "failures": [],
                                "seconds": 73.25}]},
        "verification": {
            "verdict": "pass", "evidence": "conclusive", "statement": "verified: equivalent to never trained",
            "reason": "equivalent on all 2 gated metrics", "mode": "equivalence", "parent_detected": True,
            "interval_level": 0.9, "n_forget": 12, "n_test": 1000, "checks": [
                {"metric": "mia.lira_offline.auc", "verdict": "pass", "parent_excess": 0.11, "parent_ci_low": 0.07,
                 "parent_ci_high": 0.15, "parent_detected": True, "estimate": 0.009, "ci_low": -0.02,
                 "ci_high": 0.04, "margin": 0.055, "reason": "equivalent to never trained"},
                {"metric": "forget_acc", "verdict": "pass", "parent_excess": 0.1, "parent_ci_low": 0.05,
                 "parent_ci_high": 0.15, "parent_detected": True, "estimate": 0.01, "ci_low": -0.03,
                 "ci_high": 0.04, "margin": 0.05, "reason": "equivalent to never trained"}]},
        "purge": {"objects_removed": {"local": 3, "remote": 2},
                  "scan": {"files": 140, "bytes": 5_242_880, "patterns": 12, "shared_with_live": 0, "matches": 0}},
        "retirement": {"versions": [{"version": "6", "reason": "trained on deleted data", "artifacts_deleted": True,
                                     "retired_at": "2026-11-24T10:27:00Z", "due_at": None}],
                       "references_retired": 4},
        "audit": {"head_seq": 42, "head_hash": "ef" * 32},
    }
    certificate.update(overrides)
    return certificate


@pytest.fixture
def png(tmp_path):
    """A real PNG on disk, as the verification plots are."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 2))
    FigureCanvasAgg(figure)
    figure.subplots().plot([0, 1], [0, 1])
    path = tmp_path / "roc.png"
    figure.savefig(path, format="png")
    return path


def _images(page):
    return re.findall(r'<img [^>]*src="([^"]*)"', page)


# --- sla_durations -------------------------------------------------------------------------------------------


def test_durations_of_a_full_timeline():
    sla = sla_durations(_certificate()["timeline"])
    assert [row["step"] for row in sla] == STEPS
    # the clock starts at validation (1.5 s after the requester's received time): the later of the two
    assert sla[0] == {"step": "received", "at": "2026-11-24T10:00:00Z", "seconds_since_previous": None,
                      "seconds_since_received": 0.0, "seconds_since_start": -1.5}
    assert [row["seconds_since_previous"] for row in sla[1:]] == [1.5, 3.5, 1200.0, 295.0, 60.0, 60.0, 60.0,
                                                                     3720.0]
    assert sla[-1]["seconds_since_received"] == 5400.0 and sla[-1]["seconds_since_start"] == 5398.5


def test_sla_clock_starts_at_the_later_of_received_and_validated():
    early = [{"step": "received", "at": "2020-01-01T00:00:00Z"}, {"step": "validated", "at": "2026-11-24T10:00:00Z"},
             {"step": "certified", "at": "2026-11-24T10:00:30Z"}]
    assert sla_start(early) == {"basis": "validated", "at": "2026-11-24T10:00:00Z"}
    assert sla_durations(early)[-1]["seconds_since_start"] == 30.0  # a backdated request cannot look slow
    skewed = [{"step": "received", "at": "2026-11-24T10:02:00Z"}, {"step": "validated", "at": "2026-11-24T10:00:00Z"},
              {"step": "certified", "at": "2026-11-24T10:03:00Z"}]
    assert sla_start(skewed)["basis"] == "received"  # within the allowed clock skew
    assert sla_durations(skewed)[-1]["seconds_since_start"] == 60.0
    assert sla_start([]) == {"basis": None, "at": None}


def test_microsecond_timestamps_and_offsets():
    sla = sla_durations([{"step": "received", "at": "2026-11-24T10:00:00Z"},
                         {"step": "validated", "at": "2026-11-24T10:00:00.123456Z"},
                         {"step": "data_version", "at": "2026-11-24T11:00:00.200000+01:00"}])
    assert sla[1]["seconds_since_previous"] == 0.123456
    assert sla[2]["seconds_since_previous"] == 0.076544  # +01:00 is the same instant as 10:00:00.2Z
    assert sla[2]["seconds_since_received"] == 0.2


def test_missing_steps_are_skipped_without_hiding_elapsed_time():
    timeline = _timeline("2026-11-24T10:00:00Z", "2026-11-24T10:00:10Z", None, "2026-11-24T10:01:10Z")
    timeline.insert(2, {"step": "garbled", "at": "not a time"})
    timeline.append({"step": "odd"})  # no "at" key at all
    sla = sla_durations(timeline)
    assert [row["step"] for row in sla] == ["received", "validated", "garbled", "data_version", "unlearned", "odd"]
    for row in (sla[2], sla[3], sla[5]):
        assert row["seconds_since_previous"] is None and row["seconds_since_received"] is None
    assert sla[3]["at"] is None and sla[2]["at"] == "not a time"
    # measured from "validated", the last step that happened, not from the skipped one
    assert sla[4]["seconds_since_previous"] == 60.0 and sla[4]["seconds_since_received"] == 70.0


def test_no_received_step_means_no_time_since_received():
    sla = sla_durations([{"step": "received", "at": None}, {"step": "validated", "at": "2026-11-24T10:00:00Z"},
                         {"step": "verified", "at": "2026-11-24T10:00:30Z"}])
    assert [row["seconds_since_received"] for row in sla] == [None, None, None]
    assert [row["seconds_since_previous"] for row in sla] == [None, None, 30.0]
    assert sla_durations([]) == [] and sla_durations(None) == []


# --- files, JSON and digest ----------------------------------------------------------------------------------


def test_files_are_written_and_the_json_round_trips(tmp_path, png):
    certificate = _certificate()
    json_path, html_path = write_certificate(certificate, {"ROC": png}, tmp_path / "certs")
    assert json_path.parent == html_path.parent == tmp_path / "certs"
    assert json_path.suffix == ".json" and html_path.suffix == ".html" and json_path.stem == html_path.stem
    assert json_path.stem == certificate_stem(certificate["request_id"])
    document = json.loads(json_path.read_text())
    assert document["sla"] == sla_durations(certificate["timeline"])
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", document["digest"])
    assert {k: v for k, v in document.items() if k not in ("sla", "digest")} == certificate
    assert verify_certificate_digest(json_path)
    assert sorted(p.name for p in json_path.parent.iterdir()) == sorted([json_path.name, html_path.name])  # no temps


def _edit_value(document):
    document["request"]["n_samples"] = 11


def _edit_verdict(document):
    document["verification"]["checks"][0]["passed"] = False


def _drop_key(document):
    del document["purge"]


def _add_key(document):
    document["note"] = "added later"


def _edit_sla_and_reseal(document):
    # a forger who recomputes the digest still cannot make the SLA disagree with the timeline
    from tasks.certificate import certificate_digest

    document["sla"][3]["seconds_since_previous"] = 1.0
    document["digest"] = certificate_digest(document)


def _drop_digest(document):
    del document["digest"]


@pytest.mark.parametrize("edit", [_edit_value, _edit_verdict, _drop_key, _add_key, _edit_sla_and_reseal,
                                  _drop_digest])
def test_any_edit_fails_digest_verification(tmp_path, edit):
    json_path, _ = write_certificate(_certificate(), {}, tmp_path)
    document = json.loads(json_path.read_text())
    edit(document)
    json_path.write_text(json.dumps(document, indent=2, sort_keys=True))
    assert not verify_certificate_digest(json_path)


def test_reformatting_keeps_the_digest_valid_and_garbage_does_not(tmp_path):
    json_path, _ = write_certificate(_certificate(), {}, tmp_path)
    document = json.loads(json_path.read_text())
    json_path.write_text(json.dumps(dict(reversed(list(document.items())))))  # canonical form ignores layout
    assert verify_certificate_digest(json_path)
    json_path.write_text(json_path.read_text()[:-10])
    assert not verify_certificate_digest(json_path)


def test_numpy_and_non_finite_values_become_strict_json(tmp_path):
    import numpy as np

    certificate = _certificate()
    certificate["request"]["n_samples"] = np.int64(12)
    certificate["verification"]["checks"][0]["estimate"] = float("nan")
    json_path, _ = write_certificate(certificate, {}, tmp_path)
    text = json_path.read_text()
    assert "NaN" not in text
    document = json.loads(text)
    assert document["request"]["n_samples"] == 12 and document["verification"]["checks"][0]["estimate"] is None
    assert verify_certificate_digest(json_path)


# --- HTML ----------------------------------------------------------------------------------------------------


def test_hostile_strings_are_escaped_everywhere(tmp_path, png):
    certificate = _certificate(request_id="r1", status=HOSTILE, batch_id=ATTRIBUTE_BREAKER)
    certificate["request"]["reason"] = HOSTILE
    certificate["model"]["method"] = HOSTILE
    certificate["model"]["attempts"][0]["method"] = ATTRIBUTE_BREAKER
    certificate["model"]["attempts"][0]["failures"] = [HOSTILE, ATTRIBUTE_BREAKER]
    certificate["verification"]["checks"][0]["metric"] = HOSTILE
    certificate["retirement"]["versions"][0]["reason"] = ATTRIBUTE_BREAKER
    certificate["timeline"][1]["step"] = "$\\frac{" + HOSTILE  # also must not break the chart's mathtext
    certificate["audit"]["head_hash"] = HOSTILE
    _, html_path = write_certificate(certificate, {HOSTILE: png, ATTRIBUTE_BREAKER: tmp_path / "nope.png"}, tmp_path)
    page = html_path.read_text()
    assert "<script" not in page.lower()
    assert "onerror=alert(2)>" not in page and "<img src=x" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 7
    assert page.count("&quot;&gt;&lt;img src=x onerror=alert(2)&gt;") >= 4
    assert len(_images(page)) == 2  # the plot and the SLA chart, nothing injected


def test_a_hostile_request_id_is_escaped_and_still_gets_a_safe_file(tmp_path):
    json_path, html_path = write_certificate(_certificate(request_id=HOSTILE), {}, tmp_path)
    page = html_path.read_text()
    assert "<script" not in page.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert json_path.parent == tmp_path and re.fullmatch(r"[A-Za-z0-9_-]+\.json", json_path.name)
    assert json.loads(json_path.read_text())["request_id"] == HOSTILE


def test_plots_and_sla_chart_are_embedded_and_nothing_is_external(tmp_path, png):
    _, html_path = write_certificate(_certificate(), {"Forget vs test ROC": png}, tmp_path)
    page = html_path.read_text()
    sources = _images(page)
    assert len(sources) == 2 and all(src.startswith("data:image/png;base64,") for src in sources)
    payloads = [base64.b64decode(src.split(",", 1)[1], validate=True) for src in sources]
    assert png.read_bytes() in payloads
    assert all(payload.startswith(PNG_SIGNATURE) for payload in payloads)
    assert "Forget vs test ROC" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", page)
    assert "<link" not in page and "<script" not in page and "@import" not in page and "url(" not in page


def test_missing_or_invalid_plot_files_are_listed_as_not_available(tmp_path, png):
    not_png = tmp_path / "notes.png"
    not_png.write_text("this is not an image")
    plots = {"ROC": png, "Loss histograms": tmp_path / "gone.png", "Broken": not_png}
    _, html_path = write_certificate(_certificate(), plots, tmp_path / "out")
    page = html_path.read_text()
    assert re.search(r"<li>Loss histograms: <span[^>]*>not available</span></li>", page)
    assert re.search(r"<li>Broken: <span[^>]*>not available</span></li>", page)
    assert not re.search(r"<li>ROC: ", page)
    assert len(_images(page)) == 2  # ROC and the SLA chart


def test_sections_are_in_order_and_evidence_is_rendered(tmp_path):
    certificate = _certificate()
    certificate["request"]["sample_ids"] = ["raw-sample-id-0001", "raw-sample-id-0002"]
    _, html_path = write_certificate(certificate, {}, tmp_path)
    page = html_path.read_text()
    headings = ["Deletion certificate</h1>", "The request</h2>", "Timeline and SLA</h2>", "Data</h2>", "Model</h2>",
                "Verification evidence</h2>", "Purge evidence</h2>", "Retirement evidence</h2>",
                "Audit anchor</h2>", "How to verify</h2>"]
    positions = [page.index(heading) for heading in headings]
    assert positions == sorted(positions)
    assert "raw-sample-id" not in page  # only the digest of the sample ids
    assert certificate["request"]["sample_ids_digest"] in page and certificate["subject_hash"] in page
    assert '<p class="callout matches-zero">0 matches' in page
    assert "unlearn audit verify" in page and json.loads((tmp_path / f"{certificate_stem('req-2026-11-24:0001')}"
                                                          ".json").read_text())["digest"] in page
    # the escalation attempt that failed, with its reason, and the check table
    assert "mia.loss_threshold.auc gap 0.08 &gt; 0.05" in page and "[-0.0200, 0.0400]" in page
    assert "1 h 02 min 00 s" in page  # purged -> certified
    assert '<span class="badge ok">verified: pass</span>' in page


@pytest.mark.parametrize("verdict, evidence, badge", [
    ("inconclusive", "low_power", "promoted on LOW-POWER evidence"),
    ("inconclusive", "inconclusive", "inconclusive"),
    ("pass", "exact", "exact retrain"),
])
def test_a_certificate_never_claims_more_than_the_evidence(tmp_path, verdict, evidence, badge):
    from tasks.evidence import statement

    certificate = _certificate()
    certificate["verification"].update(verdict=verdict, evidence=evidence, parent_detected=evidence == "exact",
                                       statement=statement(verdict, evidence))
    _, html_path = write_certificate(certificate, {}, tmp_path)
    page = html_path.read_text()
    assert f">{badge}</span>" in page and "verified: pass" not in page and "proven" not in page.lower()
    if evidence != "exact":
        assert "NOT a pass" in page or "LOW POWER" in page


def test_matches_found_are_flagged(tmp_path):
    certificate = _certificate()
    certificate["purge"]["scan"]["matches"] = 3
    _, html_path = write_certificate(certificate, {}, tmp_path)
    page = html_path.read_text()
    assert '<p class="callout matches-found">3 matches' in page and "matches-zero" not in page.split("</style>")[1]


def test_each_data_version_row_says_what_was_recorded_and_an_older_record_says_it_cannot_tell(tmp_path):
    """A batch's certificate listed every version its purge redacted or found redacted, those of other batches
    included; now three rows say how each version relates to the batch, and a record from before says that its
    list does not tell them apart (review of 2026-12-07)."""
    from tasks.certify import redacted_versions_of

    split = redacted_versions_of({"versions_redacted": ["d-red"], "versions_redacted_earlier": ["d-earlier"],
                                  "versions_found_redacted": ["d-found"]})
    assert split == {"redacted_versions": ["d-red"], "redacted_earlier_versions": ["d-earlier"],
                     "found_redacted_versions": ["d-found"]}
    old = redacted_versions_of({"versions_redacted": ["d-found", "d-red"]})
    assert old == {"redacted_or_found_redacted_versions": ["d-found", "d-red"]}
    cases = [(split, ["Redacted by this purge", "d-red", "Redacted earlier by a previous purge", "d-earlier",
                      "no record of the samples", "d-found"], "not told apart"),
             (old, ["not told apart", "d-found", "d-red"], "Redacted by this purge"),
             ({"redacted_versions": ["d-found", "d-red"]}, ["not told apart", "d-found", "d-red"], "this purge"),
             # as c0cb17b wrote them for a while: both lists kept (the second was dropped from the page)
             ({"redacted_versions": ["d-red"], "found_redacted_versions": ["d-found"]},
              ["not told apart", "d-red", "d-found"], "this purge")]
    for n, (data, expected, absent) in enumerate(cases):  # the last: a certificate issued before, rendered again
        _, html_path = write_certificate(_certificate(data={"version_before": "d-old", "version_after": "d-new",
                                                            **data}), {}, tmp_path / str(n))
        section = html_path.read_text().split('<section id="data">')[1].split("</section>")[0]
        positions = [section.index(text) for text in expected]
        assert positions == sorted(positions) and absent not in section


def test_a_purge_that_closed_several_batches_says_its_counts_are_the_run_s(tmp_path):
    """Each batch's certificate showed the run's objects removed and files scanned as if they were its own when one
    purge closed several batches (review of 2026-12-07)."""
    for closed, said in ((3, True), (1, False)):
        certificate = _certificate()
        certificate["purge"]["closed_together"] = closed
        _, html_path = write_certificate(certificate, {}, tmp_path / str(closed))
        section = html_path.read_text().split('<section id="purge">')[1].split("</section>")[0]
        assert ("closed 3 deletion batches together" in section and "not told apart by batch" in section) is said


def test_zero_matches_with_unscanned_paths_claims_only_what_was_scanned(tmp_path):
    certificate = _certificate()
    certificate["purge"]["scan"].update({"matches": 0, "not_scanned": 2})
    _, html_path = write_certificate(certificate, {}, tmp_path)
    body = html_path.read_text().split("</style>")[1]
    assert "0 matches in the files scanned; 2 path(s) could not be scanned" in body
    assert "no copy of the forgotten data was found" not in body and "matches-zero" not in body


def test_zero_matches_with_unsearchable_samples_claims_nothing_about_them(tmp_path):
    certificate = _certificate()
    certificate["purge"]["scan"].update({"matches": 0, "not_scanned": 0, "samples": 5, "sample_patterns": 3,
                                         "samples_not_searched": 2})
    _, html_path = write_certificate(certificate, {}, tmp_path)
    body = html_path.read_text().split("</style>")[1]
    assert "no copy of the forgotten data was found" not in body and "matches-zero" not in body
    assert "2 of 5 deleted sample(s) could not be searched for" in body
    assert "3 pattern(s) for 3 of 5 sample(s)" in body
    assert "a cloud DVC remote&#x27;s redacted objects are deleted, not searched" in body  # the scan's scope, said
    assert "except Python virtual environments in them" in body  # skipped by the scan, so said (review 2026-12-07)
    certificate["purge"]["scan"]["samples_not_searched"] = 0
    _, html_path = write_certificate(certificate, {}, tmp_path)
    assert "no copy of the forgotten data was found" in html_path.read_text()
    # some deleted samples identical to live ones (review of 2026-12-07: "no copy found" was said of them too)
    certificate["purge"]["scan"]["shared_with_live"] = 2
    _, html_path = write_certificate(certificate, {}, tmp_path)
    body = html_path.read_text().split("</style>")[1]
    assert "no copy of the forgotten data was found" not in body and "matches-zero" not in body
    assert "2 of 5 are identical to a sample that stays in the data" in body
    # every deleted sample identical to a live one: nothing of its own was searched for, so no "no copy found"
    certificate["purge"]["scan"].update({"sample_patterns": 0, "shared_with_live": 5})
    _, html_path = write_certificate(certificate, {}, tmp_path)
    body = html_path.read_text().split("</style>")[1]
    assert "no copy of the forgotten data was found" not in body and "had bytes of its own" in body


def test_a_minimal_certificate_renders_dashes(tmp_path):
    json_path, html_path = write_certificate({"request_id": "r-min"}, {}, tmp_path)
    page = html_path.read_text()
    assert page.count("—") >= 20
    assert "SLA chart: not available" in page and _images(page) == []
    assert "matches-unknown" in page.split("</style>")[1]
    assert verify_certificate_digest(json_path)
    assert json.loads(json_path.read_text())["sla"] == []


@pytest.mark.parametrize("request_id", ["", None, 17])
def test_a_certificate_needs_a_request_id(tmp_path, request_id):
    with pytest.raises(ValueError, match="request id"):
        write_certificate({"request_id": request_id}, {}, tmp_path)


# --- file names and determinism ------------------------------------------------------------------------------


def test_file_stems_stay_inside_out_dir_and_never_collide(tmp_path):
    ids = ["a:b", "a_b", "a-b", "a.b", "..", "...", "../../escape", "..\\..\\escape", "/etc/passwd", "a/b", "a\\b",
           ".hidden", "x" * 128, "x" * 127 + "y", "C:\\Windows", "ünïcode", "req:0001", "req_0001"]
    out_dir = tmp_path / "certs"
    written = [write_certificate({"request_id": request_id}, {}, out_dir) for request_id in ids]
    for json_path, html_path in written:
        for path in (json_path, html_path):
            assert path.parent == out_dir and path.resolve().parent == out_dir.resolve() and path.is_file()
            assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*-[0-9a-f]{12}\.(json|html)", path.name)
    assert len({json_path for json_path, _ in written}) == len(ids)
    assert len(list(out_dir.iterdir())) == 2 * len(ids)
    assert not (tmp_path / "escape.json").exists() and list(tmp_path.iterdir()) == [out_dir]
    assert certificate_stem("req:0001").startswith("req_0001-") and certificate_stem("req:0001") == \
        certificate_stem("req:0001")


def test_output_is_deterministic_except_for_the_issued_time(tmp_path, png):
    certificate = _certificate()
    first = write_certificate(copy.deepcopy(certificate), {"ROC": png}, tmp_path / "one")
    second = write_certificate(copy.deepcopy(certificate), {"ROC": png}, tmp_path / "two")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    later = write_certificate(_certificate(issued_at="2026-11-25T09:00:00Z"), {"ROC": png}, tmp_path / "three")
    old, new = json.loads(first[0].read_text()), json.loads(later[0].read_text())
    assert old["digest"] != new["digest"]
    strip = {"issued_at", "digest"}
    assert {k: v for k, v in old.items() if k not in strip} == {k: v for k, v in new.items() if k not in strip}
    normalise = [(old["issued_at"], "ISSUED"), (new["issued_at"], "ISSUED"), (old["digest"], "D"), (new["digest"], "D")]
    pages = [first[1].read_text(), later[1].read_text()]
    for before, after in normalise:
        pages = [page.replace(before, after) for page in pages]
    assert pages[0] == pages[1] and "ISSUED" in pages[0]


def test_a_utility_row_is_explained_not_read_as_memory(tmp_path, png):
    """The table's columns say 'Original's excess' and 'Margin': on a utility row they are the original's skill and
    the accuracy loss allowed, which a reader would otherwise take for a memory effect."""
    plain = write_certificate(_certificate(), {"ROC": png}, tmp_path / "a")[1].read_text()
    assert "its accuracy above always answering the most frequent class" not in plain
    certificate = _certificate()
    certificate["verification"]["checks"].append(
        {"metric": "utility", "verdict": "pass", "parent_excess": 0.87, "parent_ci_low": 0.84, "parent_ci_high": 0.89,
         "parent_detected": True, "estimate": -0.011, "ci_low": -0.02, "ci_high": -0.004, "margin": 0.087,
         "reason": "utility kept"})
    html = write_certificate(certificate, {"ROC": png}, tmp_path / "b")[1].read_text()
    assert "its accuracy above always answering the most frequent class" in html and "one-sided" in html


def test_retired_weights_that_could_not_be_searched_for_are_named_not_passed_over(tmp_path):
    certificate = _certificate()
    certificate["purge"]["scan"].update({"matches": 0, "weight_fingerprints": 0,
                                         "weight_fingerprints_shared_with_live": 4,
                                         "weight_versions_unsearchable": ["1"]})
    _, html_path = write_certificate(certificate, {}, tmp_path)
    body = html_path.read_text().split("</style>")[1]
    assert "The weights of retired version(s) 1 could not be searched for" in body
    assert re.search(r"held by a live model \(not searched\)</dt>\s*<dd>4</dd>", body)
    certificate["purge"]["scan"]["weight_versions_unsearchable"] = []
    _, html_path = write_certificate(certificate, {}, tmp_path / "clean")
    assert "could not be searched for" not in html_path.read_text().split("</style>")[1]


def test_the_retirement_table_says_whether_each_versions_weights_were_searched_for(tmp_path):
    certificate = _certificate()
    certificate["retirement"]["versions"] = [
        {"version": "1", "reason": "r", "artifacts_deleted": True, "weights_searched": True},
        {"version": "2", "reason": "r", "artifacts_deleted": True, "weights_searched": False},
        {"version": "3", "reason": "r", "artifacts_deleted": False}]
    _, html_path = write_certificate(certificate, {}, tmp_path)
    body = html_path.read_text().split("</style>")[1]
    assert "Weights searched for on disk" in body and "no: no fingerprint could be taken" in body
    row = re.search(r"<tr><td><code>1</code></td>.*?</tr>", body, re.S).group(0)
    assert "<td>yes</td>" in row
    certificate["retirement"]["versions"][0]["weights_paths_not_scanned"] = 3  # searched, but not everywhere
    _, html_path = write_certificate(certificate, {}, tmp_path)
    body = html_path.read_text().split("</style>")[1]
    row = re.search(r"<tr><td><code>1</code></td>.*?</tr>", body, re.S).group(0)
    assert "<td>yes, except 3 path(s) that could not be scanned (unreadable, or links to folders)" in row


def test_the_verification_section_says_what_the_intervals_account_for(tmp_path):
    certificate = _certificate()
    scope = "the forget and test samples; not which reference models were trained"
    certificate["verification"]["interval_scope"] = scope
    _, html_path = write_certificate(certificate, {}, tmp_path)
    body = html_path.read_text().split("</style>")[1]
    assert "What the intervals account for" in body and "not which reference models were trained" in body


def test_a_certificate_written_before_the_sla_counted_from_the_clock_start_still_verifies(tmp_path):
    """Certificates issued before each SLA row carried seconds_since_start (before 2026-12-04) failed their digest
    check for good, and `request certificate` refuses such a one (review of 2026-12-07); an SLA not from the
    timeline is still refused."""
    from tasks.certificate import certificate_digest, verify_certificate_digest

    json_path, _ = write_certificate(_certificate(), {}, tmp_path)
    document = json.loads(json_path.read_text())
    for row in document["sla"]:
        row.pop("seconds_since_start")
    document["digest"] = certificate_digest(document)
    json_path.write_text(json.dumps(document))
    assert verify_certificate_digest(json_path)
    document["sla"][1]["seconds_since_received"] = 1.0  # not what the timeline says, resealed
    document["digest"] = certificate_digest(document)
    json_path.write_text(json.dumps(document))
    assert not verify_certificate_digest(json_path)
