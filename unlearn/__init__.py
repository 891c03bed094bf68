"""unlearn: make a deployed model forget people's data, prove it, and ship the result.

This package is the pure core (PyTorch, numpy, scikit-learn). It never imports the
orchestration or tracking stack (Prefect, MLflow, DVC, Great Expectations); `tasks/` and
`flows/` do that. Importing it has no side effects.
"""

__version__ = "0.1.0"
