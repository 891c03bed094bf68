"""Run every crash point of ``test_crash_points`` in one process tree: ``python crash_driver.py ROOT SAVED OUT``.

Importing the stack costs more than a crash case itself, so this driver imports once and forks twice
per point: a child that runs promote -> purge -> certify and kills itself with SIGKILL at the point
(a real SIGKILL: no ``finally``, no ``atexit``), then a fresh child that recovers by running the same
stages again and checks every claim against the disk. The driver itself never touches torch's thread
pools or an MLflow database, so each fork starts clean. Results go to ``OUT`` as JSON.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path

from tasks.project import load_project
from tasks.stage.catalog import STAGE_FUNCTIONS

# point -> (patched callable as "module:Class.method" or "module:function", when, condition on the call)
POINTS = {
    "promote.registered_before_model_id_tag": ("mlflow.tracking.client:MlflowClient.set_model_version_tag", "before",
                                              "args[3] == 'model_id'"),
    "promote.before_champion_alias": ("mlflow.tracking.client:MlflowClient.set_registered_model_alias", "before",
                                      "args[2] == 'champion'"),
    "promote.after_champion_alias": ("mlflow.tracking.client:MlflowClient.set_registered_model_alias", "after",
                                     "args[2] == 'champion'"),
    "promote.before_verified_audit": ("unlearn.audit:AuditLog.append", "before", "args[1] == 'model.verified'"),
    "promote.before_promoted_audit": ("unlearn.audit:AuditLog.append", "before", "args[1] == 'model.promoted'"),
    "retire.before_artifact_delete": (
        "mlflow.store.artifact.local_artifact_repo:LocalArtifactRepository.delete_artifacts", "before", "True"),
    "retire.after_artifact_delete": (
        "mlflow.store.artifact.local_artifact_repo:LocalArtifactRepository.delete_artifacts", "after", "True"),
    "retire.after_logged_model_tombstone": ("mlflow.tracking.client:MlflowClient.set_logged_model_tags", "after",
                                            "args[2].get('retired') == 'true'"),
    "retire.after_artifacts_deleted_tag": ("mlflow.tracking.client:MlflowClient.set_model_version_tag", "after",
                                           "args[3] == 'artifacts_deleted'"),
    "retire.before_retired_audit": ("unlearn.audit:AuditLog.append", "before", "args[1] == 'model.retired'"),
    "purge.after_dvc_redaction": ("tasks.purge:purge_deleted_data", "after", "True"),
    "purge.before_ledger_save": ("unlearn.requests:Ledger.save", "before",
                                 "any('purge' in b for b in args[0].batches.values())"),
    "purge.before_purged_audit": ("unlearn.audit:AuditLog.append", "before", "args[1] == 'purge.completed'"),
    "certify.before_issued_audit": ("unlearn.audit:AuditLog.append", "before", "args[1] == 'certificate.issued'"),
}



def check_claims(project) -> list[str]:
    """Everything the recovered project claims, checked on disk; each disagreement as a sentence."""
    import mlflow

    from tasks import model_files, tracking
    from tasks.doctor import diagnose, verify_audit

    problems = [f"doctor: [{f.check}] {f.subject}: {f.problem}" for f in diagnose(project, deep=True)]
    report, findings = verify_audit(project)
    problems += [f"audit: {p}" for p in report.problems] + [f"audit: {f.problem}" for f in findings]
    mlflow.set_tracking_uri(project.tracking_uri)
    client = mlflow.MlflowClient()
    versions = [str(v.version) for v in tracking.all_versions(project, client)]
    if versions != ["1", "2"]:
        problems.append(f"versions {versions}: exactly one new version expected")
    champion = tracking.champion_version(project, client)
    if champion is None or str(champion.version) != "2" or champion.tags.get("verdict") != "pass":
        problems.append("the champion is not the verified successor (version 2, verdict pass)")
    old = client.get_model_version(tracking.model_name(project), "1")
    if old.tags.get("retired") != "true" or old.tags.get("artifacts_deleted") != "true":
        problems.append("version 1 is not a retired tombstone with verified artifact deletion")
    if sum(model_files.artifacts_remaining(loc, project.artifact_root)
           for loc in model_files.model_artifact_locations(client, old)):
        problems.append("version 1's artifacts are still on disk")
    logged = client.get_logged_model(tracking.version_model_id(old)).tags
    if logged.get("retired") != "true" or logged.get("artifacts_deleted") != "true":
        problems.append("version 1's logged model does not say it was retired and its artifacts deleted")
    certificates = [json.loads(p.read_text()) for p in project.certificates_dir.glob("*.json")]
    if len(certificates) != 1 or certificates[0]["status"] != "complete":
        problems.append(f"{len(certificates)} certificate(s); one complete certificate expected")
    elif [v["artifacts_deleted"] for v in certificates[0]["retirement"]["versions"]] != [True]:
        problems.append("the certificate does not show version 1's artifacts deleted")
    events = [json.loads(line)["event"] for line in project.audit_path.read_text().splitlines()]
    for event, count in (("model.retired", 1), ("model.verified", 1), ("model.promoted", None),
                         ("purge.completed", None), ("certificate.issued", None)):
        seen = events.count(event)
        if (count is not None and seen != count) or seen == 0:
            problems.append(f"audit: {seen} {event} record(s)")
    return problems


def restore(root: Path, saved: Path) -> None:
    """Put the saved project back at the same path (MLflow stores absolute artifact paths)."""
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(saved, root, symlinks=True)


def _arm(target: str, when: str, condition: str) -> None:
    module_name, attr = target.split(":")
    module = importlib.import_module(module_name)
    owner_name, _, method = attr.rpartition(".")
    owner = getattr(module, owner_name) if owner_name else module
    original = getattr(owner, method)

    def wrapper(*args, **kwargs):
        hit = eval(condition, {"args": args, "kwargs": kwargs})  # noqa: S307 - the test's own conditions
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if hit and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, method, wrapper)


def _in_child(work) -> int:
    """Run ``work`` in a forked child; its exit status (negative: killed by that signal)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        except BaseException:  # noqa: BLE001 - reported through the exit status and stderr
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _warm_imports() -> None:
    """Do once, in this parent, what every child would otherwise do again (about 5 s each).

    Saving a one-layer model to a temporary folder imports what MLflow's pt2 format exports through
    (torch.export, dynamo) and builds MLflow's module-to-package map; no MLflow database is opened.
    """
    import tempfile

    import alembic.command  # noqa: F401 - MLflow's SQLite store checks its schema through alembic
    import dvc.repo  # noqa: F401
    import dvc.scm  # noqa: F401 - Git through scmrepo, which opening the DVC repo imports
    import matplotlib.pyplot  # noqa: F401
    import mlflow.pytorch
    import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        # Two rows, as the pipeline's input example has: a free batch dimension is what imports sympy's tensor
        # module (about 0.3 s a child); one row exported a static graph and left that import to every child.
        # Requirements named, as tasks.tracking.log_model names them: left to MLflow to infer, they cost a
        # subprocess that imports the stack again (about 4 s) and that no child would ever run.
        mlflow.pytorch.save_model(torch.nn.Linear(2, 2), f"{tmp}/warm", input_example=torch.zeros(2, 2).numpy(),
                                  pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])

    import tasks.certificate  # noqa: F401
    import tasks.doctor  # noqa: F401
    import tasks.purge  # noqa: F401
    import tasks.tracking  # noqa: F401


def main(root: Path, saved: Path, out: Path, points: list[str]) -> None:
    _warm_imports()
    results = {}
    for point in points:
        restore(root, saved)

        def crash(point=point):
            _arm(*POINTS[point])
            project = load_project(root)
            for stage in ("promote", "purge", "certify"):
                STAGE_FUNCTIONS[stage](project)

        crashed = _in_child(crash)
        problem_file = out.with_name(f"{out.stem}-{point}.txt")

        def recover(problem_file=problem_file):
            project = load_project(root)
            for stage in ("promote", "purge", "certify", "promote", "purge", "certify"):  # recover, then a no-op
                STAGE_FUNCTIONS[stage](project)
            problems = check_claims(project)
            problem_file.write_text("\n".join(problems))

        recovered = _in_child(recover)
        problems = problem_file.read_text().splitlines() if problem_file.exists() else ["recovery raised"]
        results[point] = {"crash_status": crashed, "recovery_status": recovered, "problems": problems}
        out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:] or list(POINTS))
