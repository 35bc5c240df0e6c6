"""YAML for configs, on ruamel.yaml: a strict, safe loader (``load_yaml``, ``read_yaml`` for a file) and
its writer (``dump_yaml``).

ruamel.yaml's safe loader reads YAML 1.2 (``010`` is ten, ``1:30`` and ``yes`` are strings, where PyYAML's
YAML 1.1 reads 8, 90 and true), builds no objects from tags and refuses a duplicated key (which would silently
replace the first: a whole section, for a duplicated ``optim:``). On top of it, ``BoundedComposer`` allows at
most ``MAX_ALIASES`` aliases, ``MAX_NODES`` values once every alias is expanded (a 340-byte document of
nested aliases expands to hundreds of megabytes), counted as they are read so that a document past the bound
is refused where it passes it, no recursive alias and no nesting deeper than ``MAX_DEPTH`` levels
(composing is recursive: a few kilobytes of ``[[[[...`` would otherwise end in a ``RecursionError``); and a
value its explicit tag cannot hold (``!!int abc``) is an error at its line, not a bare ``ValueError``.
``dump_yaml`` writes YAML 1.2 that ``load_yaml`` reads back as it was (PyYAML would write the string ``1e5``
unquoted, which YAML 1.2 reads as a number).
"""

from __future__ import annotations

import io
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.composer import Composer, ComposerError
from ruamel.yaml.constructor import ConstructorError, DuplicateKeyError, SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent

from .errors import ConfigError, cut, shorten

MAX_BYTES = 1024 * 1024  # a config file
MAX_ALIASES = 100
# Values (keys, values, list items) in a document, every alias expanded. The largest committed config has
# 296 and a sweep run ~12, so 20,000 holds a sweep of 1,500 runs; ruamel's pure-Python parser reads about
# 10,000 values a second here, so a hostile 1 MB file is refused in ~2 s (100,000 took 10-16 s).
MAX_NODES = 20_000
MAX_DEPTH = 64  # a run config is 3 levels deep; a sweep's runs 5


class BoundedComposer(Composer):
    """ruamel.yaml's composer with the aliases counted, the depth bounded and the document's size, every
    alias expanded, counted as it is composed (so that a document past the bound is refused there, not
    after the whole of it is read)."""

    def compose_document(self):
        self.aliases, self.values, self.sizes = 0, 0, {}  # sizes: id(node) -> its values, aliases expanded
        self.warn_double_anchors = False  # a reused anchor name is valid YAML: not a warning on the console
        return super().compose_document()

    def compose_node(self, parent, index):
        mark = self.parser.peek_event().start_mark
        if self.depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep; a config never needs that "
                                "many", mark)
        alias, before = self.parser.check_event(AliasEvent), self.values
        if alias:
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise ComposerError(None, None, f"more than {MAX_ALIASES} aliases (*name); a config never needs "
                                    "that many", mark)
        node = super().compose_node(parent, index)
        if not alias:
            self.values += 1
            self.sizes[id(node)] = self.values - before  # the node and all it holds, aliases expanded
        elif id(node) in self.sizes:
            self.values += self.sizes[id(node)]  # the alias expands to a copy of the node
        else:  # its anchor is still being composed: the node contains itself
            raise ComposerError(None, None, "a recursive alias (a node that contains itself)", mark)
        if self.values > MAX_NODES:
            raise ComposerError(None, None, f"more than {MAX_NODES:,} values (keys, values and items, every alias "
                                "expanded); a config never needs that many", mark)
        return node


class CheckedConstructor(SafeConstructor):
    """ruamel.yaml's safe constructor, where what it cannot build raises a ``ConstructorError`` (at its line
    where known), not the bare ``ValueError``/``TypeError`` ruamel lets through (found by fuzzing)."""

    def construct_non_recursive_object(self, node, tag=None):
        try:
            return super().construct_non_recursive_object(node, tag)
        except (ValueError, KeyError, IndexError, TypeError):  # a scalar its tag cannot hold: !!int abc
            raise ConstructorError(None, None, f"{shorten(node.value, 80)} is not a valid {node.tag.split(':')[-1]}",
                                   node.start_mark) from None

    def check_mapping_key(self, node, key_node, mapping, key, value):
        try:
            hash(key)
        except TypeError:  # ruamel makes a sequence key a tuple, which a mapping inside leaves unhashable
            raise ConstructorError(None, None, "found unhashable key (a mapping or list inside it)",
                                   key_node.start_mark) from None
        return super().check_mapping_key(node, key_node, mapping, key, value)

    def construct_document(self, node):
        try:
            return super().construct_document(node)
        except (ValueError, KeyError, IndexError, TypeError) as err:  # anything else ruamel lets through
            raise ConstructorError(None, None, f"a value that cannot be built ({cut(err, 200)})", None) from None


def load_yaml(text: str):
    """Parse one YAML document strictly (plain dicts, lists and scalars); raises ``ruamel.yaml.YAMLError``."""
    yaml = YAML(typ="safe", pure=True)
    yaml.Composer, yaml.Constructor = BoundedComposer, CheckedConstructor
    return yaml.load(text)


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML config file (``load_yaml``); every problem is a ``ConfigError`` naming the file
    (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file {path} does not exist"])
    data = path.read_bytes()
    if len(data) > MAX_BYTES:
        raise ConfigError([f"config file {path} is {len(data):,} bytes; a config is at most {MAX_BYTES:,}"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ConfigError([f"{path}:{line}: not UTF-8 text ({err.reason} at byte {err.start}); save the file as "
                           "UTF-8"]) from None
    try:
        raw = load_yaml(text)
    except YAMLError as err:
        raise ConfigError([f"{path} is not valid YAML: {cut(describe(err), 2000)}"]) from None
    if not isinstance(raw, dict | None):
        raise ConfigError([f"{path} must hold a mapping of keys to values; got {type(raw).__name__}"])
    return raw or {}


def dump_yaml(obj) -> str:
    """``obj`` (dicts, lists, scalars) as YAML block text, the keys in their order."""
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style, yaml.allow_unicode = False, True
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]  # ruamel declares it None
    out = io.StringIO()
    yaml.dump(obj, out)
    return out.getvalue()


def describe(err: YAMLError) -> str:
    """A YAML error in one line: what is wrong and on which line."""
    if not isinstance(err, MarkedYAMLError) or err.problem_mark is None:
        return str(err).replace("\n", " ")
    problem = err.problem
    if isinstance(err, DuplicateKeyError):  # its values are not built yet ("{}" for a section): not shown
        problem = problem.split(" with value")[0] + " (it would replace the first); keep one"
    return f"line {err.problem_mark.line + 1}: {problem}"


__all__ = ["MAX_ALIASES", "MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "BoundedComposer", "CheckedConstructor", "describe",
           "dump_yaml", "load_yaml", "read_yaml"]
