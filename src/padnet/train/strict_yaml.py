"""A strict, safe YAML loader for configs (``load_yaml``).

PyYAML's ``safe_load`` implements YAML 1.1, which surprises in configs: a duplicated key silently
replaces the first (a whole section, for a duplicated ``optim:``), ``1:30`` is the sexagesimal
integer 90, ``0x10`` is 16, ``010`` is 8 and ``1_000`` is 1000, and a 340-byte document of nested
aliases expands to hundreds of megabytes. ``StrictLoader`` is a ``SafeLoader`` (no tags that build
objects) that

- refuses duplicate keys, naming the key and both lines;
- reads numbers as YAML 1.2's core schema does for decimal forms: ``12``, ``-3``, ``0.5``, ``1e-3``,
  ``.inf``, ``.nan``; any other form (``1:30``, ``0x10``, ``0o7``, ``1_000``) stays a string, so the
  typed config reports it as a wrong type instead of reading a number the user did not mean
  (``010`` is ten, not eight);
- bounds alias expansion: at most ``MAX_ALIASES`` aliases, at most ``MAX_NODES`` nodes once every
  alias is expanded, and no recursive alias;
- bounds nesting at ``MAX_DEPTH`` levels (PyYAML composes nested collections recursively: a few
  kilobytes of ``[[[[...`` would otherwise end in a ``RecursionError``).
"""

from __future__ import annotations

import re

import yaml

from ..errors import shorten

MAX_ALIASES = 100
MAX_NODES = 100_000
MAX_DEPTH = 64  # a run config is 3 levels deep; a sweep's runs 5
INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"
MERGE_TAG = "tag:yaml.org,2002:merge"
INT_12 = re.compile(r"^[-+]?[0-9]+$")
FLOAT_12 = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+|\.[0-9]+[eE][-+]?[0-9]+)"
                      r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with duplicate keys refused, YAML 1.2 numbers and bounded aliases."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_ALIASES} aliases (*name); a config never needs that many",
                    self.peek_event().start_mark)
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_DEPTH} levels deep; a config never needs that many",
                self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _check_expanded_size(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeConstructor reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {shorten(key, 80)} (line {key_node.start_mark.line + 1}; first on line "
                        f"{first}): "
                        "the second would silently replace the first; keep one", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)




def _check_expanded_size(root) -> None:
    """Count the nodes of ``root`` with every alias expanded (memoised, so it costs one pass over the
    distinct nodes); refuse a recursive alias or more than ``MAX_NODES``."""
    if root is None:
        return
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise yaml.composer.ComposerError(None, None, "a recursive alias (a node that contains itself)",
                                              node.start_mark)
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        if total > MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"the document expands to more than {MAX_NODES} values once its aliases are "
                "expanded (an alias bomb?)", node.start_mark)
        sizes[key] = total
        return total

    size(root)


def _int(loader, node):
    return int(loader.construct_scalar(node))


def _float(loader, node):
    text = loader.construct_scalar(node).lower()
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    if text == ".nan":
        return float("nan")
    return float(text)


StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (INT_TAG, FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(INT_TAG, INT_12, list("-+0123456789"))
StrictLoader.add_implicit_resolver(FLOAT_TAG, FLOAT_12, list("-+.0123456789"))
StrictLoader.add_constructor(INT_TAG, lambda loader, node: _checked(loader, node, _int))
StrictLoader.add_constructor(FLOAT_TAG, lambda loader, node: _checked(loader, node, _float))


def _checked(loader, node, convert):
    try:
        return convert(loader, node)
    except ValueError:
        raise yaml.constructor.ConstructorError(
            None, None,
            f"{shorten(node.value, 80)} is not a YAML 1.2 number (write decimal digits, e.g. 16, 0.5, 1e-3)",
            node.start_mark) from None


def load_yaml(text: str):
    """Parse one YAML document with ``StrictLoader``; raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader


__all__ = ["MAX_ALIASES", "MAX_DEPTH", "MAX_NODES", "StrictLoader", "load_yaml"]
