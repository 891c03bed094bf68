"""Every stage by name: what ``unlearn stage NAME``, ``dvc repro`` (through that command) and the Prefect tasks call."""

from __future__ import annotations

from tasks.lifecycle import run_certify, run_purge
from tasks.stage.ingest import run_ingest
from tasks.stage.prepare import run_prepare
from tasks.stage.promote import run_promote
from tasks.stage.references import run_references
from tasks.stage.train import run_train
from tasks.stage.unlearn import run_unlearn
from tasks.stage.verify import run_verify

# The pipeline, in order. "verify" runs inside "unlearn" (once per escalation attempt) and stays
# available on its own to re-verify the latest attempt.
STAGES = ("ingest", "prepare", "train", "references", "unlearn", "promote", "purge", "certify")

STAGE_FUNCTIONS = {
    "ingest": run_ingest, "prepare": run_prepare, "train": run_train, "references": run_references,
    "unlearn": run_unlearn, "verify": run_verify, "promote": run_promote, "purge": run_purge,
    "certify": run_certify,
}
