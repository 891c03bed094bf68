"""`unlearn audit verify` and `unlearn doctor`: check the project's evidence against the disk."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict

from flows.exit_codes import EXIT_ERROR, EXIT_OK

EXIT_FOUND = EXIT_ERROR  # a disagreement is reported like bad input: the message names it


def _say(text: str, *, error: bool = False) -> None:
    (sys.stderr if error else sys.stdout).write(text + "\n")


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from tasks.doctor import verify_audit
    from tasks.project import load_project

    report, certificate_findings = verify_audit(load_project(args.root, check_registries=False))
    mode = "keyed (HMAC)" if report.keyed else "unkeyed: detects edits, not a forger who re-hashes everything"
    problems = list(report.problems) + [f"{f.subject}: {f.problem}" for f in certificate_findings]
    if not problems:
        _say(f"audit log intact: {report.lines} records, head {report.head_seq} {report.head_hash}; "
              f"certificates' anchors found in the chain; mode {mode}")
        return EXIT_OK
    _say(f"audit log BROKEN ({len(problems)} problem(s)):", error=True)
    for problem in problems:
        _say(f"  {problem}", error=True)
    return EXIT_FOUND


def _cmd_doctor(args: argparse.Namespace) -> int:
    from tasks.doctor import diagnose
    from tasks.project import load_project

    not_scanned: dict[str, int] = {}
    findings = diagnose(load_project(args.root, check_registries=False), deep=args.deep, not_scanned=not_scanned)
    # What the deep scan left out by design is part of the result: a clean "samples" claims nothing about it.
    limits = {"open_quarantines": "quarantine file(s) of batches not yet purged were not scanned",
              "purged_samples_without_bytes": "purged sample(s) could not be searched for (the upstream source no "
                                              "longer has them)"}
    if args.json:
        _say(json.dumps({"ok": not findings, "findings": [asdict(f) for f in findings], "not_scanned": not_scanned},
                        indent=2))
    elif not findings:
        checks = "audit, certificates, registry, weights" + (", samples" if args.deep else "")
        _say(f"doctor: every claim agrees with the disk ({checks})")
    else:
        _say(f"doctor: {len(findings)} disagreement(s) between the evidence and the disk:", error=True)
        for finding in findings:
            _say(f"  [{finding.check}] {finding.subject}: {finding.problem}", error=True)
    if not args.json:
        for key, text in limits.items():
            if not_scanned.get(key):
                _say(f"  not claimed: {not_scanned[key]} {text}", error=bool(findings))
    return EXIT_FOUND if findings else EXIT_OK


def add_commands(commands: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Register ``audit verify``, ``audit run`` and ``doctor`` on the ``unlearn`` parser; returns their handlers."""
    audit = commands.add_parser("audit", help="the hash-chained audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_commands.add_parser("verify", help="check the chain, that it is not missing while work exists, and that "
                                             "every certificate's anchor is in it (keyed mode: "
                                             "$UNLEARN_AUDIT_KEY_FILE)")
    from flows.maintenance import add_audit_run

    add_audit_run(audit_commands)
    doctor = commands.add_parser("doctor", help="check every claim (audit, certificates, registry tags, deleted "
                                                "weights) against the disk; exit 2 names each disagreement")
    doctor.add_argument("--deep", action="store_true", help="also scan the project for every purged sample's bytes")
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    return {"audit": _cmd_audit, "doctor": _cmd_doctor}


def _cmd_audit(args: argparse.Namespace) -> int:
    if args.audit_command == "run":
        from flows.maintenance import cmd_audit_run

        return cmd_audit_run(args)
    return _cmd_audit_verify(args)
