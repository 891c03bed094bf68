"""The gate's weighted sums: what ``rows_dot`` computes, and that no gate module multiplies through BLAS
(its threads spin after each small product and take CPU from the next model's forward passes)."""

import ast
from pathlib import Path

import numpy as np
import pytest

import unlearn
from unlearn.gate_bootstrap import rows_dot

GATE_MODULES = sorted(Path(unlearn.__file__).parent.glob("gate*.py"))


def test_rows_dot_is_the_matrix_product():
    rng = np.random.default_rng(0)
    weights, values = rng.integers(0, 4, size=(7, 5)).astype(np.float64), rng.normal(size=5)
    assert np.allclose(rows_dot(weights, values), weights @ values, rtol=0, atol=1e-12)
    assert rows_dot(weights, values).shape == (7,)
    assert np.isclose(rows_dot(weights[0], values), weights[0] @ values, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", GATE_MODULES, ids=lambda p: p.name)
def test_no_gate_module_multiplies_through_blas(path):
    tree = ast.parse(path.read_text())
    matmuls = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.BinOp | ast.AugAssign)
               and isinstance(node.op, ast.MatMult)]
    assert not matmuls and not _blas_calls(tree), f"{path.name}: use gate_bootstrap.rows_dot (lines {matmuls})"


BLAS_CALLS = ("dot", "vdot", "matmul", "inner", "outer", "tensordot", "linalg")


def _blas_calls(tree: ast.AST) -> list[str]:
    """Calls that reach BLAS: numpy's products by name or attribute, np.linalg.*, einsum with ``optimize``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            owner = func.value.attr if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute) \
                else ""
            if name in BLAS_CALLS or owner == "linalg" or (name == "einsum" and any(
                    k.arg == "optimize" for k in node.keywords)):
                found.append(f"{name} (line {node.lineno})")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("numpy"):
            found += [f"import {a.name}" for a in node.names if a.name in BLAS_CALLS]
    return found


def test_the_check_sees_each_kind_of_product():
    source = ("x = a @ b\ny = np.dot(a, b)\nz = np.linalg.norm(a)\nw = np.einsum('ij,j', a, b, optimize=True)\n"
              "from numpy import vdot\nv = a.dot(b)\nu = np.einsum('ij,j', a, b)\n")
    tree = ast.parse(source)
    assert [type(n.op).__name__ for n in ast.walk(tree) if isinstance(n, ast.BinOp)] == ["MatMult"]
    assert sorted(_blas_calls(tree)) == ["dot (line 2)", "dot (line 6)", "einsum (line 4)", "import vdot",
                                         "norm (line 3)"]
    assert len(GATE_MODULES) >= 4  # gate, gate_bootstrap, gate_policy, gate_utility
