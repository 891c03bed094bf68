"""The core package never imports the orchestration or tracking stack."""

import ast
import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("prefect", "mlflow", "dvc", "great_expectations")
CORE = Path(__file__).resolve().parents[2] / "unlearn"


def test_importing_the_core_loads_no_orchestration_module():
    code = (
        "import sys, unlearn, unlearn.config, unlearn.data, unlearn.models, unlearn.training, "
        "unlearn.methods, unlearn.attacks, unlearn.metrics, unlearn.verification, unlearn.requests\n"
        "from unlearn.methods import METHODS; from unlearn.attacks import ATTACKS\n"
        "METHODS.names(); ATTACKS.names()\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_core_source_file_imports_the_stack():
    offenders = []
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
