"""A strict, safe YAML loader for configs (``load_yaml``).

PyYAML's ``safe_load`` reads YAML 1.1, which surprises in configs: a duplicated key silently replaces the
first (a whole section, for a duplicated ``optim:``), ``1:30`` is 90, ``0x10`` is 16, ``010`` is 8 and
``1_000`` is 1000, and a 340-byte document of nested aliases expands to hundreds of megabytes.
``StrictLoader`` is a ``SafeLoader`` (no tags that build objects) that refuses duplicate keys, naming the
key and both lines; reads numbers in YAML 1.2's decimal forms only (``12``, ``-3``, ``0.5``, ``1e-3``,
``.inf``, ``.nan``; ``010`` is ten), so any other form stays a string that the typed config reports as a
wrong type; allows at most ``MAX_ALIASES`` aliases, ``MAX_NODES`` nodes once every alias is expanded, and
no recursive alias; and refuses nesting deeper than ``MAX_DEPTH`` levels (PyYAML composes recursively: a
few kilobytes of ``[[[[...`` would otherwise end in a ``RecursionError``).
"""

from __future__ import annotations

import re

import yaml
from yaml.composer import ComposerError

from ..errors import shorten

MAX_ALIASES = 100
MAX_NODES = 100_000
MAX_DEPTH = 64  # a run config is 3 levels deep; a sweep's runs 5
INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"
INT_12 = re.compile(r"^[-+]?[0-9]+$")
FLOAT_12 = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+|\.[0-9]+[eE][-+]?[0-9]+)"
                      r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with duplicate keys refused, YAML 1.2 numbers and bounded aliases."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> its node count with every alias expanded

    def compose_node(self, parent, index):
        mark = self.peek_event().start_mark
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep; a config never needs that "
                                "many", mark)
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise ComposerError(None, None, f"more than {MAX_ALIASES} aliases (*name); a config never needs that "
                                    "many", mark)
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:  # its anchor is still being composed: the node contains itself
                raise ComposerError(None, None, "a recursive alias (a node that contains itself)", mark)
            return node
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        self._sizes[id(node)] = 1 + sum(self._sizes[id(c)] for c in children)
        if self._sizes[id(node)] > MAX_NODES:
            raise ComposerError(None, None, f"the document expands to more than {MAX_NODES} values once its aliases "
                                "are expanded (an alias bomb?)", mark)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
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
                        f"{first}): the second would silently replace the first; keep one", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _number(loader, node):
    """An int or float node (YAML 1.2 forms, or an explicit ``!!int`` / ``!!float`` tag) as a number."""
    text = loader.construct_scalar(node)
    try:
        return int(text) if node.tag == INT_TAG else float(text.lower().replace(".inf", "inf").replace(".nan", "nan"))
    except ValueError:
        raise yaml.constructor.ConstructorError(
            None, None, f"{shorten(text, 80)} is not a YAML 1.2 number (write decimal digits, e.g. 16, 0.5, 1e-3)",
            node.start_mark) from None


StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (INT_TAG, FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(INT_TAG, INT_12, list("-+0123456789"))
StrictLoader.add_implicit_resolver(FLOAT_TAG, FLOAT_12, list("-+.0123456789"))
StrictLoader.add_constructor(INT_TAG, _number)
StrictLoader.add_constructor(FLOAT_TAG, _number)


def load_yaml(text: str):
    """Parse one YAML document with ``StrictLoader``; raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader


__all__ = ["MAX_ALIASES", "MAX_DEPTH", "MAX_NODES", "StrictLoader", "load_yaml"]
