"""Reading YAML: the fast safe loader every stage uses, and the stricter one ``params.yaml`` is read with."""

from __future__ import annotations

import functools
import re
from typing import Any

import yaml


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` through libyaml's C parser where PyYAML was built with it.

    Why: every stage of a run re-reads params.yaml (and dvc.lock); the pure-Python parser spent
    about a second per deletion run on that (profiled), the C one a tenth of it. Same safe subset,
    same results.
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader, C or Python
    except UnicodeError as exc:  # libyaml's encoder meets a lone surrogate: still a YAML error to callers
        raise yaml.YAMLError(f"not valid text: {exc}") from None


@functools.cache
def _params_loader() -> type:
    """The safe loader for ``params.yaml``: duplicate keys refused, YAML 1.2 numbers.

    Why: PyYAML reads YAML 1.1, where the last of two equal keys silently wins (a second ``epochs: 1`` under
    ``train:``) and ``1e-3`` (no dot) is a string, which reached a method as ``lr='1e-3'`` and failed the run
    after training (review of 2026-12-07). Keys merged in with ``<<:`` may be overridden, as YAML intends.
    """
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class ParamsLoader(base):  # type: ignore[misc,valid-type]
        def construct_document(self, node: Any) -> Any:
            # On the composed tree, before construction: PyYAML rewrites a mapping that is merged elsewhere in
            # place (its merged keys beside its own), so a check while constructing saw chained merges twice.
            _refuse_duplicate_keys(node)
            return super().construct_document(node)

    ParamsLoader.yaml_implicit_resolvers = {k: list(v) for k, v in base.yaml_implicit_resolvers.items()}
    ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                       re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
                                       list("-+0123456789."))
    return ParamsLoader


def _refuse_duplicate_keys(root: Any) -> None:
    """Raise ``ConstructorError`` at the first mapping of the node tree that holds one scalar key twice (keys merged
    in with ``<<:`` are not its own: they may be overridden)."""
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:  # an alias: the anchored node is checked once
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[tuple[str, str]] = set()
            for key_node, value_node in node.value:
                stack.append(value_node)
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = (key_node.tag, key_node.value)
                if key in keys:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key_node.value!r} appears twice in one mapping (the last would "
                        "silently win)", key_node.start_mark)
                keys.add(key)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def load_params_yaml(text: str) -> Any:
    """Parse ``params.yaml``'s text with :func:`_params_loader` (raises ``yaml.YAMLError``)."""
    try:
        return yaml.load(text, Loader=_params_loader())  # noqa: S506 - a safe loader, C or Python
    except UnicodeError as exc:
        raise yaml.YAMLError(f"not valid text: {exc}") from None
