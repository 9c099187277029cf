"""Read a YAML config safely, keeping the line and column of every key and value.

Built on PyYAML's ``SafeLoader`` composer, so nothing but plain data can come
out of a file: explicit tags (``!!python/object``, ``!foo``, even ``!!str``),
aliases and merge keys are refused, and so are duplicate keys and keys that
are not strings. Each refusal is a :class:`~multidb.errors.ConfigError` at
the place it was written.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from multidb.errors import ConfigError

__all__ = ["Document", "KeyPath", "Position", "dotted", "parse"]

KeyPath = tuple[str | int, ...]
"""Where a value sits: mapping keys as ``str``, list indexes as ``int``."""

_ALIAS = "multidb:alias"  # the tag of the stand-in node for an alias
_MERGE = "tag:yaml.org,2002:merge"
# Scalars whose implicit type we keep; anything else (timestamps, '=') stays a string.
_MAX_DEPTH = 64  # no config nests deeper; Python's recursion limit is not a config error
_TYPED = frozenset(f"tag:yaml.org,2002:{kind}" for kind in ("null", "bool", "int", "float"))


@dataclass(frozen=True, slots=True)
class Position:
    """A 1-based line and column in the file."""

    line: int
    column: int

    @classmethod
    def of(cls, mark: yaml.Mark) -> Position:
        return cls(mark.line + 1, mark.column + 1)


@dataclass(slots=True)
class Document:
    """Plain data (dicts, lists, scalars) plus where each part of it was written.

    ``keys`` holds the position of each mapping key, ``values`` the position
    of each value (the root is ``()``). A document made from a Python mapping
    has no positions at all.
    """

    data: Any
    keys: dict[KeyPath, Position] = field(default_factory=dict)
    values: dict[KeyPath, Position] = field(default_factory=dict)


def dotted(path: KeyPath) -> str:
    """``("databases", "main", "replicas", 0)`` -> ``databases.main.replicas[0]``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class _Loader(yaml.SafeLoader):
    """A SafeLoader that remembers which nodes carried an explicit tag."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.explicit_tags: dict[int, str] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            # Expanding aliases would hand one node several key paths (and
            # invites "billion laughs"); keep a stand-in to refuse it by path.
            event = self.get_event()  # type: ignore[no-untyped-call]
            return ScalarNode(_ALIAS, event.anchor or "", event.start_mark, event.end_mark)
        event = self.peek_event()  # type: ignore[no-untyped-call]
        tag: str | None = getattr(event, "tag", None)  # None unless written in the file
        node = super().compose_node(parent, index)
        if tag is not None and node is not None:
            self.explicit_tags[id(node)] = tag
        return node


try:  # libyaml's parser, when PyYAML was built with it
    _CParser: Any = importlib.import_module("yaml.cyaml").CParser
except (ImportError, AttributeError):  # pragma: no cover
    _CParser = None


class _FastLoader(_Loader, _CParser or object):  # type: ignore[misc]
    """libyaml's parser under the same composer: the pure-Python scanner is most of a load."""

    def __init__(self, stream: str) -> None:
        _CParser.__init__(self, stream)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self.explicit_tags = {}

    if _CParser is not None:
        # _Loader's bases bring PyYAML's Python parser; take the events from libyaml's.
        check_event = _CParser.check_event
        peek_event = _CParser.peek_event
        get_event = _CParser.get_event
        dispose = _CParser.dispose


def parse(text: str, source: str) -> Document:
    """Parse YAML ``text`` read from ``source`` into a :class:`Document`."""
    loader = _FastLoader(text) if _CParser is not None else _Loader(text)
    try:
        try:
            root = loader.get_single_node()
        except RecursionError:
            raise ConfigError(
                "invalid YAML: nested too deeply", source=source, line=1, column=1
            ) from None
        except yaml.YAMLError:
            # libyaml words its errors differently: let PyYAML's parser find and word it.
            loader.dispose()
            loader = _Loader(text)
            root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "cannot parse"
        position = Position.of(mark) if mark is not None else Position(1, 1)
        raise ConfigError(
            f"invalid YAML: {problem}",
            source=source,
            line=position.line,
            column=position.column,
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source=source, line=1, column=1) from exc
    except RecursionError:
        raise ConfigError(
            "invalid YAML: nested too deeply", source=source, line=1, column=1
        ) from None
    finally:
        loader.dispose()
    document = Document(data=None)
    if root is None:
        raise ConfigError(
            "the file is empty; expected a mapping with 'databases'",
            source=source,
            line=1,
            column=1,
        )
    document.data = _Converter(loader, source, document).value(root, ())
    return document


class _Converter:
    """Turns composed nodes into plain data, recording positions on the way."""

    def __init__(self, loader: _Loader, source: str, document: Document) -> None:
        self.loader = loader
        self.source = source
        self.document = document

    def error(self, problem: str, node: Node, path: KeyPath) -> ConfigError:
        position = Position.of(node.start_mark)
        return ConfigError(
            problem,
            source=self.source,
            line=position.line,
            column=position.column,
            key_path=dotted(path),
        )

    def refuse_special(self, node: Node, path: KeyPath) -> None:
        tag = self.loader.explicit_tags.get(id(node))
        if tag is not None:
            raise self.error(f"YAML tags are not allowed (found {tag!r})", node, path)
        if node.tag == _ALIAS:
            raise self.error(
                f"YAML aliases are not supported (found *{node.value}); "
                "share settings with 'defaults' or a database's 'options'",
                node,
                path,
            )
        if node.tag == _MERGE:
            raise self.error(
                "YAML merge keys ('<<') are not supported; "
                "share settings with 'defaults' or a database's 'options'",
                node,
                path,
            )

    def value(self, node: Node, path: KeyPath) -> Any:
        self.refuse_special(node, path)
        if len(path) > _MAX_DEPTH:
            raise self.error(f"nested more than {_MAX_DEPTH} levels deep", node, path)
        self.document.values[path] = Position.of(node.start_mark)
        if isinstance(node, MappingNode):
            return self.mapping(node, path)
        if isinstance(node, SequenceNode):
            return [self.value(item, (*path, index)) for index, item in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        if node.tag in _TYPED:
            return self.construct(node, path)
        return node.value

    def construct(self, node: ScalarNode, path: KeyPath) -> Any:
        """A typed scalar (int, float, bool, null); one Python cannot read is an error here."""
        try:
            return self.loader.construct_object(node)
        except (ValueError, OverflowError):  # '0x_', an int of more than 4300 digits
            raise self.error(f"cannot read {node.value[:20]!r} as a number", node, path) from None

    def mapping(self, node: MappingNode, path: KeyPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            self.refuse_special(key_node, path)
            if not isinstance(key_node, ScalarNode):
                kind = "a mapping" if isinstance(key_node, MappingNode) else "a list"
                raise self.error(f"expected a string key, got {kind}", key_node, path)
            key = self.construct(key_node, path) if key_node.tag in _TYPED else key_node.value
            if not isinstance(key, str):
                shown = (
                    "null" if key is None else str(key).lower() if isinstance(key, bool) else key
                )
                raise self.error(
                    f"expected a string key, got {shown} (quote it: '{key_node.value}')",
                    key_node,
                    path,
                )
            key_path = (*path, key)
            if key in first_lines:
                raise self.error(
                    f"duplicate key {key!r} (first at line {first_lines[key]})",
                    key_node,
                    key_path,
                )
            first_lines[key] = key_node.start_mark.line + 1
            self.document.keys[key_path] = Position.of(key_node.start_mark)
            result[key] = self.value(value_node, key_path)
        return result
