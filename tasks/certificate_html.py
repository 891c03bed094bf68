"""The self-contained HTML report of a deletion certificate (see :mod:`tasks.certificate`).

One file with inline CSS, images embedded as base64 PNG, no scripts and nothing fetched from elsewhere,
so it can be archived, attached to a ticket or opened offline years later. Every value taken from the
certificate is HTML-escaped: request ids, reasons, failure messages and method names come from outside
the pipeline and may be hostile.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from tasks.certificate_sla import sla_start

MISSING = "—"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_STATUS_BADGE = {"complete": "ok", "awaiting_retirement": "warn", "data_only": "warn", "already_deleted": "neutral",
                 "already_requested": "warn",
                 "pending": "warn", "failed": "bad"}


# --- HTML formatting helpers ---------------------------------------------------------------------------------


def _escaped(value: Any, none: str = MISSING) -> str:
    """Escaped text of a value; ``none`` (itself trusted) for None."""
    if value is None:
        return none
    if isinstance(value, bool):
        return "yes" if value else "no"
    return html.escape(str(value), quote=True)


def _get(mapping: Any, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, dict) else None


def _section(mapping: Any, key: str) -> dict:
    value = _get(mapping, key)
    return value if isinstance(value, dict) else {}


def _items(mapping: Any, key: str) -> list:
    value = _get(mapping, key)
    return value if isinstance(value, list) else []


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _num(value: Any, decimals: int = 4) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{decimals}f}"
    return _escaped(value)


def _human(seconds: Any) -> str:
    if not _is_number(seconds):
        return _escaped(seconds)
    sign, rest = ("-" if seconds < 0 else ""), abs(float(seconds))
    if rest < 60:
        return f"{sign}{rest:.3f} s"
    days, whole = divmod(int(round(rest)), 86400)
    hours, whole = divmod(whole, 3600)
    minutes, secs = divmod(whole, 60)
    if days or hours:
        parts = ([f"{days} d"] if days else []) + [f"{hours} h", f"{minutes:02d} min", f"{secs:02d} s"]
    else:
        parts = [f"{minutes} min", f"{secs:02d} s"]
    return sign + " ".join(parts)


def _bytes(value: Any) -> str:
    if not isinstance(value, int) or isinstance(value, bool):
        return _escaped(value)
    size, unit = float(value), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{value:,} bytes" + (f" ({size:.1f} {unit})" if unit != "B" else "")


def _definition_list(rows: list[tuple[str, str]]) -> str:
    """A definition list; labels are trusted literals, values already escaped."""
    return '<dl class="kv">' + "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in rows) + "</dl>"


class _Num(str):
    """An escaped table cell to right-align (numbers, durations)."""


def _table(header: list[str], rows: list[list[str]], empty: str) -> str:
    """A table; header cells are trusted literals, body cells already escaped."""
    if not rows:
        return f'<p class="empty">{empty}</p>'
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(_table_cell(cell) for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _table_cell(cell: str) -> str:
    """A ``<td>``, right-aligned for a :func:`_numeric_cell`."""
    return f'<td class="num">{cell}</td>' if isinstance(cell, _Num) else f"<td>{cell}</td>"


def _numeric_cell(text: str) -> str:
    """Mark an escaped cell as numeric: the table right-aligns it."""
    return _Num(text)


def _code(value: Any) -> str:
    return MISSING if value is None else f"<code>{_escaped(value)}</code>"


def _verdict(value: Any) -> str:
    if value == "pass":
        return '<span class="pass">✓ pass</span>'
    if value == "fail":
        return '<span class="fail">✗ fail</span>'
    return _escaped(value)


def _passed(value: Any) -> str:
    if value is True:
        return '<span class="pass">✓ yes</span>'
    if value is False:
        return '<span class="fail">✗ no</span>'
    return _escaped(value)


def _png_img(payload: bytes, alt: str) -> str:
    encoded = base64.b64encode(payload).decode("ascii")
    return f'<img alt="{_escaped(alt)}" src="data:image/png;base64,{encoded}">'


# --- the SLA chart -------------------------------------------------------------------------------------------


def _sla_chart(sla: list[dict]) -> bytes | None:
    """A waterfall of the timeline as PNG bytes: one bar per step, from the previous step to this one."""
    timed = [row for row in sla if row.get("seconds_since_start") is not None]
    if len(timed) < 2:
        return None
    # the Agg canvas directly, not pyplot: no display on servers, no global state shared across worker threads
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels, lefts, widths, notes = [], [], [], []
    for row in sla:
        labels.append(str(row["step"] if row["step"] is not None else MISSING)[:40])
        since_received, since_previous = row.get("seconds_since_start"), row["seconds_since_previous"]
        if since_received is None:  # a row without a bar: the gap stays visible
            left, width, note = 0.0, 0.0, "not reached" if row["at"] is None else "unknown"
        else:
            width = since_previous if since_previous is not None else 0.0
            left, note = since_received - width, _human(since_previous) if since_previous is not None else "start"
        lefts.append(left)
        widths.append(width)
        notes.append(note)
    figure = Figure(figsize=(7.5, 0.42 * len(labels) + 1.3))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    positions = list(range(len(labels)))
    colours = ["tab:red" if width < 0 else "tab:blue" for width in widths]
    ax.barh(positions, widths, left=lefts, height=0.6, color=colours)
    # parse_math off: a step named "$...$" must print as text, not be parsed (or crash) as mathtext
    ax.set_yticks(positions, labels=labels, parse_math=False)
    ax.invert_yaxis()  # first step on top, as in the table
    ends = [left + width for left, width in zip(lefts, widths, strict=True)]
    span = max(max(ends), 1e-9)
    for position, end, note in zip(positions, ends, notes, strict=True):
        ax.text(max(end, 0.0) + span * 0.01, position, note, va="center", fontsize=8, parse_math=False)
    ax.set_xlim(min(0.0, min(lefts + ends)), span * 1.3)
    ax.set(xlabel="seconds since the deletion clock started",
           title="Time per step (each bar spans from the previous step)")
    buffer = io.BytesIO()
    figure.set_layout_engine("tight")  # one layout pass at draw (bbox_inches="tight" drew the chart twice)
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


# --- the HTML report -----------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;max-width:62rem;
margin:2rem auto;padding:0 1rem}
h1{font-size:1.6rem;margin:0 0 .6rem}
h2{font-size:1.15rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1rem;margin:1.2rem 0 .4rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1.2rem;margin:.5rem 0}
dt{font-weight:600}
dd{margin:0;overflow-wrap:anywhere}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em;overflow-wrap:anywhere}
ul{margin:.2rem 0;padding-left:1.2rem}
.badge{display:inline-block;padding:.15rem .7rem;border-radius:1rem;font-weight:700;font-size:.85rem;color:#fff}
.badge.ok{background:#1a7f37}.badge.bad{background:#cf222e}.badge.warn{background:#9a6700}
.badge.neutral{background:#57606a}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
.neg{color:#cf222e}
.callout{border-radius:.4rem;padding:.7rem 1rem;margin:.8rem 0;font-size:1.2rem;font-weight:700;border:2px solid}
.callout.matches-zero{background:#dafbe1;border-color:#1a7f37;color:#116329}
.callout.matches-found{background:#ffebe9;border-color:#cf222e;color:#a40e26}
.callout.matches-unknown{background:#f6f8fa;border-color:#8c959f;color:#424a53}
.callout.matches-partial{background:#fff8c5;border-color:#9a6700;color:#7d4e00}
.empty,.na{color:#57606a;font-style:italic}
figure{margin:1rem 0}
figure img{max-width:100%;border:1px solid #d0d7de}
figcaption{font-size:.9rem;color:#424a53}
footer{margin-top:2.5rem;border-top:1px solid #d0d7de;padding-top:.6rem;font-size:.9rem;color:#424a53}
@media print{body{margin:0;max-width:none}section{break-inside:avoid-page}}
"""


def render_html(document: dict[str, Any], plots: dict[str, Path], json_name: str) -> str:
    sections = [_header(document), _request_section(document), _timeline_section(document),
                _data_section(document), _model_section(document), _verification_section(document, plots),
                _purge_section(document), _retirement_section(document), _audit_section(document),
                _footer(document, json_name)]
    title = f"Deletion certificate {_escaped(document.get('request_id'))}"
    # the CSP is defence in depth: even if a value escaped escaping, no script runs and nothing is fetched
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta http-equiv=\"Content-Security-Policy\" "
            "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(sections) + "\n</body>\n</html>\n")


def _header(document: dict[str, Any]) -> str:
    status = document.get("status")
    status_class = _STATUS_BADGE.get(status, "neutral") if isinstance(status, str) else "neutral"
    verdict = _get(document.get("verification"), "verdict")
    strength = _get(document.get("verification"), "evidence")
    # A pass is "verified" only with a detected positive control; exact retrains say so; low-power
    # evidence is never shown as a pass.
    verdict_badge = {"exact": ("ok", "exact retrain"), "low_power": ("bad", "promoted on LOW-POWER evidence"),
                     "inconclusive": ("neutral", "inconclusive"),
                     "not_applicable": ("neutral", "not applicable: no model trained on these samples")}.get(
        strength if isinstance(strength, str) else "",
        {"pass": ("ok", "verified: pass"), "fail": ("bad", "verification: fail")}.get(
            verdict if isinstance(verdict, str) else "", ("neutral", "not verified")))
    if _get(document.get("verification"), "evidence_unavailable"):  # the tags' verdict; its report is gone
        verdict_badge = (verdict_badge[0], f"{verdict_badge[1]} (report unavailable)")
    rows = [("Request", _code(document.get("request_id"))),
            ("Status", f'<span class="badge {status_class}">{_escaped(status)}</span>'),
            ("Issued at", _escaped(document.get("issued_at"))),
            ("Verdict", f'<span class="badge {verdict_badge[0]}">{verdict_badge[1]}</span>'),
            ("Batch", _code(document.get("batch_id"))),
            ("Certificate version", _escaped(document.get("certificate_version")))]
    return f'<header id="header">\n<h1>Deletion certificate</h1>\n{_definition_list(rows)}\n</header>'


def _request_section(document: dict[str, Any]) -> str:
    request = _section(document, "request")
    # raw sample ids are never rendered, only their digest; present-but-None forget class means "no class"
    forget_class = MISSING
    if "forget_class" in request:
        forget_class = _escaped(request["forget_class"], none="none (sample-level request)")
    rows = [("Reason", _escaped(request.get("reason"))),
            ("Number of samples", _num(request.get("n_samples"))),
            ("Forget class", forget_class),
            ("Subject (salted hash)", _code(document.get("subject_hash"))),
            ("Sample-id digest", _code(request.get("sample_ids_digest")))]
    return f'<section id="request">\n<h2>The request</h2>\n{_definition_list(rows)}\n</section>'


def _duration_cell(seconds: Any) -> str:
    if seconds is None:
        return _numeric_cell(MISSING)
    text = _human(seconds)
    if _is_number(seconds) and seconds < 0:  # out of order or clock skew: flag, do not hide
        text = f'<span class="neg" title="negative: steps out of order or clock skew">{text}</span>'
    return _numeric_cell(text)


def _timeline_section(document: dict[str, Any]) -> str:
    sla = document.get("sla") or []
    # the "verified" step is when verification ran, whatever it found: its verdict is shown beside it
    verdicts = {entry.get("step"): entry for entry in document.get("timeline") or [] if entry.get("verdict")}

    def step(name: str) -> str:
        found = verdicts.get(name)
        if not found:
            return _escaped(name)
        return _escaped(f"{name} (verdict {found['verdict']}, evidence {found.get('evidence') or 'unknown'})")

    rows = [[step(row["step"]), _escaped(row["at"], none='<span class="na">not reached</span>'),
             _duration_cell(row["seconds_since_previous"]), _duration_cell(row["seconds_since_received"]),
             _duration_cell(row.get("seconds_since_start"))]
            for row in sla]
    table = _table(["Step", "Time (UTC)", "Since previous", "Since received", "Since clock start"], rows,
                   "No timeline recorded.")
    start = sla_start(document.get("timeline"))
    clock = ("<p>The deletion clock starts at the later of the time the requester gave (received) and the time the "
             f"pipeline validated the request: here <b>{_escaped(start['basis'])}</b>, {_escaped(start['at'])}.</p>"
             if start["basis"] else '<p class="na">The deletion clock has no start time.</p>')
    chart = _sla_chart(sla)
    figure = (f"<figure>{_png_img(chart, 'Time per step')}<figcaption>Time per step</figcaption></figure>"
              if chart else '<p class="na">SLA chart: not available (fewer than two timed steps).</p>')
    return f'<section id="timeline">\n<h2>Timeline and SLA</h2>\n{clock}\n{table}\n{figure}\n</section>'


def _data_section(document: dict[str, Any]) -> str:
    data = _section(document, "data")

    def versions(value: Any) -> str:
        if isinstance(value, list):
            return ("<ul>" + "".join(f"<li>{_code(v)}</li>" for v in value) + "</ul>") if value else "none"
        return _escaped(value)

    rows = [("Version before", _code(data.get("version_before"))),
            ("Version after", _code(data.get("version_after")))]
    if "redacted_earlier_versions" in data:
        rows += [("Redacted by this purge (their index listed a sample of this deletion batch)",
                  versions(data.get("redacted_versions"))),
                 ("Redacted earlier by a previous purge (recorded then as holding a sample of this batch)",
                  versions(data.get("redacted_earlier_versions"))),
                 ("Found already redacted, with no record of the samples they held (not claimed here)",
                  versions(data.get("found_redacted_versions")))]
    else:  # a record, or a certificate, from before versions were attributed to batches: every list it has
        keys = ("redacted_or_found_redacted_versions", "redacted_versions", "found_redacted_versions")
        lists = [data[k] for k in keys if isinstance(data.get(k), list)]
        rows.append(("Redacted, or found already redacted (not told apart in this record)",
                     versions([v for found in lists for v in found] if lists else data.get("redacted_versions"))))
    return f'<section id="data">\n<h2>Data</h2>\n{_definition_list(rows)}\n</section>'


def _failures(value: Any) -> str:
    if isinstance(value, list):
        return "<ul>" + "".join(f"<li>{_escaped(item)}</li>" for item in value) + "</ul>" if value else "none"
    return _escaped(value)


def _model_section(document: dict[str, Any]) -> str:
    model = _section(document, "model")
    if model.get("withdrawn") is True:
        rows = [("Served model", "<b>none</b>: withdrawn, no successor was trained"),
                ("Withdrawn version", _code(model.get("withdrawn_version"))),
                ("Why", _escaped(model.get("reason")))]
        return (f'<section id="model">\n<h2>Model</h2>\n{_definition_list(rows)}\n'
                "<p>The deletion left too few training samples for any model; the model that held the deleted "
                "samples no longer serves and is retired below.</p>\n</section>")
    rows = [("New version", _code(model.get("version"))),
            ("Parent version", _code(model.get("parent_version"))),
            ("Method", _code(model.get("method")))]
    attempts = [attempt if isinstance(attempt, dict) else {} for attempt in _items(model, "attempts")]
    statement = model.get("statement")  # the registry no longer holds the version (a moved project)
    table = _table(["#", "Method", "Run", "Verdict", "Seconds", "Failures"],
                   [[_numeric_cell(str(i)), _code(a.get("method")), _code(a.get("run_id")), _verdict(a.get("verdict")),
                     _numeric_cell(_num(a.get("seconds"), 1)), _failures(a.get("failures"))]
                    for i, a in enumerate(attempts, start=1)],
                   "Not shown: the ladder is kept with the version's registry record, which is not in this "
                   "registry." if isinstance(statement, str) else "No attempts recorded.")
    callout = f'<p class="callout matches-partial">{_escaped(statement)}.</p>\n' if isinstance(statement, str) else ""
    return (f'<section id="model">\n<h2>Model</h2>\n{callout}{_definition_list(rows)}\n'
            f"<h3>Attempts (escalation ladder)</h3>\n{table}\n</section>")


def _gap_ci(value: Any) -> str:
    if isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value):
        return f"[{_num(float(value[0]))}, {_num(float(value[1]))}]"
    return _escaped(value)


def _plot_figures(plots: dict[str, Path]) -> str:
    figures, unavailable = [], []
    for caption, path in plots.items():
        try:
            payload = Path(path).read_bytes()
        except (OSError, TypeError):
            unavailable.append(caption)
            continue
        if not payload.startswith(PNG_SIGNATURE):  # only PNG goes behind a data:image/png URL
            unavailable.append(caption)
            continue
        figures.append(f"<figure>{_png_img(payload, str(caption))}"
                       f"<figcaption>{_escaped(caption)}</figcaption></figure>")
    missing = ("<ul>" + "".join(f'<li>{_escaped(caption)}: <span class="na">not available</span></li>'
                                for caption in unavailable) + "</ul>") if unavailable else ""
    return "".join(figures) + missing


def _verification_section(document: dict[str, Any], plots: dict[str, Path]) -> str:
    verification = _section(document, "verification")
    if verification.get("evidence") == "not_applicable":  # a data-only request: no model test concerns its samples
        return (f'<section id="verification">\n<h2>Verification evidence</h2>\n'
                f'{_definition_list([("Verdict", "not applicable"), ("Why", _escaped(verification.get("statement")))])}'
                '\n</section>')
    if verification.get("evidence_unavailable"):  # no report: nothing to say of modes, targets or metrics
        rows = [("Verdict", _verdict(verification.get("verdict"))),
                ("Strength of evidence", _escaped(verification.get("statement")))]
        if verification.get("escalation_reason"):
            rows.append(("Escalation", _escaped(verification.get("escalation_reason"))))
        return (f'<section id="verification">\n<h2>Verification evidence</h2>\n{_definition_list(rows)}\n'
                '<p class="na">The verification report is unavailable: no metric, interval or plot is shown.</p>\n'
                '</section>')
    level = verification.get("interval_level")
    level_text = f"{100 * level:g}%" if _is_number(level) else "interval"
    target = "exact retrain" if verification.get("mode") == "strict" else "never-trained model"
    rows = [("Verdict", _verdict(verification.get("verdict"))),
            ("Strength of evidence", _escaped(verification.get("statement"))),
            ("Why", _escaped(verification.get("reason"))),
            ("Positive control (original model detected)", _passed(verification.get("parent_detected"))),
            ("Compared with", _escaped(f"{target} ({verification.get('mode')} mode)")),
            ("Forget samples", _num(verification.get("n_forget"))),
            ("Test samples", _num(verification.get("n_test")))]
    if verification.get("interval_scope"):  # reports from before it was recorded do not say
        rows.append(("What the intervals account for", _escaped(verification.get("interval_scope"))))
    if verification.get("escalation_reason"):
        rows.append(("Escalation", _escaped(verification.get("escalation_reason"))))
    checks = [check if isinstance(check, dict) else {} for check in _items(verification, "checks")]
    table = _table(["Metric", "Original's excess", f"Its {level_text} CI", "Unlearned - target",
                    f"Its {level_text} CI", "Margin", "Verdict"],
                   [[_code(c.get("metric")), _numeric_cell(_num(c.get("parent_excess"))),
                     _numeric_cell(_gap_ci([c.get("parent_ci_low"), c.get("parent_ci_high")])),
                     _numeric_cell(_num(c.get("estimate"))),
                     _numeric_cell(_gap_ci([c.get("ci_low"), c.get("ci_high")])),
                     _numeric_cell(_num(c.get("margin"))), _verdict(c.get("verdict"))] for c in checks],
                   "No metric was tested.")
    if any(c.get("metric") in ("utility", "test_acc") for c in checks):
        # the columns are read as memory for the forgetting checks; the utility rows measure something else
        table += ('\n<p class="na">For <code>utility</code> and <code>test_acc</code> (accuracy on unseen samples, not '
                  "memory): the unlearned model's accuracy minus the target's, and the margin is the loss allowed, "
                  "one-sided. For <code>utility</code> the original's excess is its skill, its accuracy above always "
                  "answering the most frequent class.</p>")
    figures = _plot_figures(plots)
    figures = f"<h3>Plots</h3>\n{figures}" if figures else ""
    return (f'<section id="verification">\n<h2>Verification evidence</h2>\n{_definition_list(rows)}\n{table}\n'
            f'{figures}\n</section>')


def _minus(a: Any, b: Any) -> Any:
    return a - b if _is_number(a) and _is_number(b) else None


def _purge_section(document: dict[str, Any]) -> str:
    purge = _section(document, "purge")
    removed, scan = _section(purge, "objects_removed"), _section(purge, "scan")
    matches = scan.get("matches")
    # the number an auditor looks for first, so it gets the most visible spot in the section
    not_scanned = scan.get("not_scanned")
    # "no copy was found" only when every deleted sample had bytes of its own searched for, in every path
    unsearched = scan.get("samples_not_searched")
    some_unsearched = _is_number(unsearched) and unsearched > 0
    nothing_own = scan.get("sample_patterns") == 0 and _is_number(scan.get("samples")) and scan["samples"] > 0
    # some deleted samples are byte-identical to kept ones: a copy of those cannot be told from the kept sample, so
    # they were not searched for (review of 2026-12-07: the page said "no copy was found" of them)
    shared = scan.get("shared_with_live")
    some_shared = _is_number(shared) and shared > 0 and not nothing_own
    open_quarantines = scan.get("open_quarantines_not_scanned")
    skipped = open_quarantines if _is_number(open_quarantines) and open_quarantines > 0 else 0
    if skipped:  # files skipped by design are still files not scanned
        not_scanned = (not_scanned if _is_number(not_scanned) else 0) + skipped
    if matches == 0 and not isinstance(matches, bool) and _is_number(not_scanned) and not_scanned > 0:
        why = ("were not scanned (unreadable, links to folders, or the quarantine files of batches not yet purged, "
               "which hold their own forget samples)" if skipped
               else "could not be scanned (unreadable, or links to folders)")
        callout = (f'<p class="callout matches-partial">0 matches in the files scanned; {_num(not_scanned)} path(s) '
                   f'{why}: nothing is claimed about them.</p>')
    elif matches == 0 and not isinstance(matches, bool) and some_unsearched:
        callout = '<p class="callout matches-partial">0 matches for the deleted samples searched for.</p>'
    elif matches == 0 and not isinstance(matches, bool) and some_shared:
        callout = (f'<p class="callout matches-partial">0 matches for the deleted samples with bytes of their own; '
                   f'{_num(shared)} of {_num(scan.get("samples"))} are identical to a sample that stays in the data, '
                   'so a copy of them cannot be told from it: nothing is claimed about them.</p>')
    elif matches == 0 and not isinstance(matches, bool) and nothing_own:
        callout = ('<p class="callout matches-partial">0 matches, but none of the deleted samples had bytes of its '
                   'own to search for (each is identical to a sample that stays in the data).</p>')
    elif matches == 0 and not isinstance(matches, bool):
        callout = '<p class="callout matches-zero">0 matches: no copy of the forgotten data was found.</p>'
    elif _is_number(matches):
        callout = f'<p class="callout matches-found">{_num(matches)} matches: copies of the forgotten data remain.</p>'
    else:
        callout = f'<p class="callout matches-unknown">Matches: {_escaped(matches)} (scan result not available).</p>'
    if some_unsearched:  # no bytes to search for: the source no longer has them
        callout += (f'\n<p class="callout matches-partial">{_num(unsearched)} of {_num(scan.get("samples"))} deleted '
                    'sample(s) could not be searched for (in neither the quarantine nor the upstream source any '
                    'more): nothing is claimed about copies of them.</p>')
    rows = [("Objects removed (local)", _num(removed.get("local"))),
            ("Objects removed (remote)", _num(removed.get("remote"))),
            ("Files scanned", _num(scan.get("files"))),
            ("Bytes scanned", _bytes(scan.get("bytes"))),
            ("Patterns (samples and weight fingerprints)", _num(scan.get("patterns"))),
            ("Deleted samples identical to a live one (not searched)", _num(scan.get("shared_with_live"))),
            ("Paths not scanned", _num(not_scanned)),
            ("Matches", _num(matches))]
    scope = ("the project directory (working data, DVC cache, Git, an MLflow store kept in it) and a DVC remote on a "
             "local path, except Python virtual environments in them (folders with a pyvenv.cfg: installed "
             "packages); a cloud DVC remote's redacted objects are deleted, not searched, and a team MLflow "
             "server's store is not searched")
    if "samples" in scan:  # purges before these were counted do not say
        rows.insert(4, ("Deleted samples searched for", f"{_num(scan.get('sample_patterns'))} pattern(s) for "
                        f"{_num(_minus(scan.get('samples'), scan.get('samples_not_searched')))} of "
                        f"{_num(scan.get('samples'))} sample(s)"))
    if skipped:
        rows.insert(-2, ("Quarantine files of batches not yet purged (not scanned)", _num(skipped)))
        scope += ("; the quarantine files of batches not yet purged (their own forget samples, kept until their "
                  "purge) are not scanned")
    if "weight_fingerprints" in scan:  # purges before fingerprints were counted do not say
        rows.insert(-2, ("Retired-weight fingerprints searched", _num(scan.get("weight_fingerprints"))))
    if "weight_fingerprints_shared_with_live" in scan:
        rows.insert(-2, ("Retired-weight fingerprints held by a live model (not searched)",
                         _num(scan.get("weight_fingerprints_shared_with_live"))))
    unsearchable = scan.get("weight_versions_unsearchable")
    if isinstance(unsearchable, list) and unsearchable:
        names = ", ".join(_escaped(v) for v in unsearchable)
        rows.insert(-2, ("Retired versions whose weights could not be searched for", names))
        callout += (f'\n<p class="callout matches-partial">The weights of retired version(s) {names} could not be '
                    "searched for (no fingerprint could be taken: no weights of their own, or unreadable): nothing "
                    "is claimed about copies "
                    "of them outside the artifact store.</p>")
    rows.append(("Where the scan looks", _escaped(scope)))
    closed = purge.get("closed_together")
    if _is_number(closed) and closed > 1:  # the counts are the run's, not this batch's alone (review of 2026-12-07)
        callout += (f'\n<p class="callout matches-partial">This purge closed {_num(closed)} deletion batches '
                    "together: the objects removed, files scanned and samples searched for above are that run's, "
                    "for all of them; they are not told apart by batch.</p>")
    return f'<section id="purge">\n<h2>Purge evidence</h2>\n{callout}\n{_definition_list(rows)}\n</section>'


def _version_cell(entry: dict[str, Any]) -> str:
    """A retired version, with the logged model it was (numbers start from 1 again in another registry)."""
    model = entry.get("model_id")
    return _code(entry.get("version")) + (f"<br>logged model {_code(model)}" if isinstance(model, str) else "")


def _reason_cell(entry: dict[str, Any]) -> str:
    """Why the version retires and, when its files are held (not deleted by the pipeline), why they are."""
    reason, held = entry.get("reason"), entry.get("held")
    if isinstance(held, str) and held and not (isinstance(reason, str) and held in reason):
        return f"{_escaped(reason)}<br>held: {_escaped(held)}"
    return _escaped(reason)


def _retirement_section(document: dict[str, Any]) -> str:
    retirement = _section(document, "retirement")
    versions = [version if isinstance(version, dict) else {} for version in _items(retirement, "versions")]
    # weights_searched: whether a scan searched the whole project for the version's weights (None: no scan yet, or
    # a certificate from before it was recorded); "artifacts deleted" rests on the artifact store's listing alone
    def searched(value: Any) -> str:
        # False has two causes the record does not tell apart: no bytes of its own, or weights that could not be read
        if value is False:
            return ("no: no fingerprint could be taken (no weights of its own apart from the live versions', or "
                    "weights that could not be read)")
        return "yes" if value is True else MISSING

    def searched_cell(version: dict[str, Any]) -> str:
        skipped = version.get("weights_paths_not_scanned")
        if version.get("weights_searched") is True and _is_number(skipped) and skipped > 0:
            return (f"yes, except {_num(skipped)} path(s) that could not be scanned (unreadable, or links to "
                    "folders): nothing is claimed about them")
        if version.get("deregistered") is True and version.get("weights_searched") is False:
            return ("no: it was removed from the registry outside the pipeline before it was retired, so no "
                    "fingerprint of its weights was taken")
        return searched(version.get("weights_searched"))

    table = _table(["Model version", "Reason", "Artifacts deleted", "Weights searched for on disk", "Retired at",
                    "Due at"],
                   [[_version_cell(v), _reason_cell(v), _escaped(v.get("artifacts_deleted")),
                     searched_cell(v), _escaped(v.get("retired_at")), _escaped(v.get("due_at"))]
                    for v in versions],
                   "No model versions retired.")
    rows = [("Reference models retired", _num(retirement.get("references_retired")))]
    statement = retirement.get("statement")
    callout = f'<p class="callout matches-partial">{_escaped(statement)}.</p>\n' if isinstance(statement, str) else ""
    return (f'<section id="retirement">\n<h2>Retirement evidence</h2>\n{callout}{table}\n{_definition_list(rows)}\n'
            "</section>")


def _audit_section(document: dict[str, Any]) -> str:
    audit = _section(document, "audit")
    rows = [("Head sequence", _num(audit.get("head_seq"))), ("Head hash", _code(audit.get("head_hash")))]
    return f'<section id="audit">\n<h2>Audit anchor</h2>\n{_definition_list(rows)}\n</section>'


def _footer(document: dict[str, Any], json_name: str) -> str:
    audit = _section(document, "audit")
    return ('<footer id="verify">\n<h2>How to verify</h2>\n<ol>\n'
            "<li>Run <code>unlearn audit verify</code> in the project: it recomputes the hash chain of the audit "
            f"log, whose entry at sequence {_num(audit.get('head_seq'))} must carry the hash "
            f"{_code(audit.get('head_hash'))} quoted above.</li>\n"
            f"<li>The JSON certificate <code>{_escaped(json_name)}</code> is authoritative; this page renders it. Its "
            '"digest" is sha256 over the canonical JSON (sorted keys, no whitespace, ASCII) of every other field, '
            "the SLA durations included, so any edit to the content is detectable "
            "(<code>tasks.certificate.verify_certificate_digest</code>). The digest detects edits; the audit "
            "chain is what anchors the record.</li>\n</ol>\n"
            f"<p>Digest: {_code(document.get('digest'))}</p>\n</footer>")
