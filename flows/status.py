"""Placeholder: filled in by the status work (issue #6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def add_commands(commands: Any) -> dict[str, Callable[[Any], int]]:
    """Add this module's subcommands to the `unlearn` parser; return command name -> handler."""
    return {}
