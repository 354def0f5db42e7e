"""YAML read the way the tuner's inputs need: safe types only, and a key given twice in one
mapping refused (PyYAML keeps the last silently, so a space listing ``n_batch`` twice would run
only the second list)."""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKey(yaml.YAMLError):
    """A mapping names one key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
        try:
            twice = key in seen
        except TypeError:  # an unhashable key: the constructor below says so
            continue
        if twice:
            mark = key_node.start_mark
            raise DuplicateKey(f"key {key!r} is given twice (line {mark.line + 1})")
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_unique(text: str) -> Any:
    """``yaml.safe_load`` with duplicate keys refused (``DuplicateKey``, a ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
