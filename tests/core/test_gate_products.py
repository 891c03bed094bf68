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
    calls = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr in ("dot", "matmul", "inner", "tensordot")]
    assert not matmuls and not calls, f"{path.name}: use gate_bootstrap.rows_dot (lines {matmuls + calls})"


def test_the_check_sees_a_product():
    tree = ast.parse("x = a @ b\ny = np.dot(a, b)")
    assert [type(n.op).__name__ for n in ast.walk(tree) if isinstance(n, ast.BinOp)] == ["MatMult"]
    assert len(GATE_MODULES) >= 4  # gate, gate_bootstrap, gate_policy, gate_utility
