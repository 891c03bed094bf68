"""Terminal progress bars for long stages (training epochs, reference models, escalation attempts).

Bars are drawn with tqdm on stderr, and only when stderr is an interactive terminal: under
pytest, CI, ``dvc repro`` with redirected output, a log file or a Dask worker process they are
silent and cost nothing. ``UNLEARN_PROGRESS`` overrides the choice: ``0``/``off`` never draws,
``1``/``on`` always draws (to stderr, even when it is not a terminal), anything else (the
default, ``auto``) draws on a terminal unless ``CI`` is set or ``TERM=dumb``.

The switch is deliberately not ``TQDM_DISABLE``: the ``unlearn`` command sets that to silence
the progress bars of its libraries (DVC, MLflow), while the pipeline's own bars stay on.

Bars are safe to use from Prefect's worker threads: tqdm serialises writes with a lock and
stacks concurrent bars on separate lines.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_OFF, _ON = {"0", "off", "false", "no"}, {"1", "on", "true", "yes", "force"}


def enabled() -> bool:
    """Whether progress bars are drawn now (see the module docstring)."""
    choice = os.environ.get("UNLEARN_PROGRESS", "auto").strip().lower()
    if choice in _OFF:
        return False
    if choice in _ON:
        return True
    if os.environ.get("CI") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class _Silent:
    """Stands in for a bar when none is drawn: every method is a no-op."""

    def update(self, n: int = 1) -> None:
        """Ignore an increment."""

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Ignore a status text."""

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        """Ignore a description."""


@contextmanager
def bar(total: int | None, desc: str, unit: str = "it") -> Iterator[Any]:
    """A progress bar on stderr, or a silent stand-in when bars are off.

    Args:
        total: Number of steps (None for an open-ended counter).
        desc: Label shown before the bar.
        unit: Name of one step (``epoch``, ``model``, ``attempt``).

    Yields:
        An object with ``update(n)``, ``set_postfix(**values)`` and ``set_description(text)``.
    """
    if not enabled():
        yield _Silent()
        return
    from tqdm import tqdm

    # disable=False explicitly: TQDM_DISABLE (set by the CLI for library bars) must not hide these.
    progress = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
                    disable=False, mininterval=0.2)
    try:
        yield progress
    finally:
        progress.close()


def epoch_callback(progress: Any, then: Any = None) -> Any:
    """An ``on_epoch`` callback for :func:`unlearn.training.train_model` that advances ``progress``.

    Args:
        progress: A bar from :func:`bar`.
        then: Optional callback ``(epoch, metrics)`` called first (e.g. logging to MLflow).

    Returns:
        ``(epoch, metrics) -> None``.
    """

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if then is not None:
            then(epoch, metrics)
        progress.set_postfix({k: round(float(v), 4) for k, v in metrics.items() if k in ("train_loss", "train_acc")},
                             refresh=False)
        progress.update(1)

    return on_epoch


SILENT = _Silent()
"""A shared silent bar, for code paths that draw nothing."""
