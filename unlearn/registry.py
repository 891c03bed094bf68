"""Name -> implementation registries for pluggable parts (methods, attacks, models, sources).

Implementations register where they are defined::

    @METHODS.register("amun")
    def amun(...): ...

and are chosen by name from ``params.yaml``. An unknown name raises an error that lists the
valid ones.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised when a registry is asked for a name it does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0])


class Registry(Generic[T]):
    """A named collection of implementations of one kind.

    Args:
        kind: Human-readable kind, used in error messages ("unlearning method").
        modules: Modules whose import registers the built-in implementations. They are
            imported lazily on first lookup so that importing the registry has no cost.
        package: A package whose every module is imported on first lookup, so a new
            implementation registers by existing (e.g. ``unlearn.methods``).
    """

    def __init__(self, kind: str, modules: tuple[str, ...] = (), package: str | None = None) -> None:
        self.kind = kind
        self._modules = modules
        self._package = package
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers an implementation under ``name``.

        Args:
            name: The name users write in ``params.yaml``.

        Returns:
            The decorator; it returns the implementation unchanged.
        """

        def decorate(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return decorate

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            modules = list(self._modules)
            if self._package:
                package = importlib.import_module(self._package)
                modules += [f"{self._package}.{info.name}" for info in pkgutil.iter_modules(package.__path__)
                            if not info.name.startswith("_")]
            for module in modules:
                importlib.import_module(module)

    def get(self, name: str) -> T:
        """Return the implementation registered under ``name``.

        Raises:
            UnknownNameError: If nothing is registered under ``name``; the message lists
                the valid names.
        """
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items
