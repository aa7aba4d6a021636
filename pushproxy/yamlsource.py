"""Read YAML into plain values while remembering the line of every path.

Config errors are far more useful with a line number ("line 12") next to the
path, so the loader composes the node tree itself and records where each value
stood before handing plain dicts, lists and scalars to the validator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml


class YamlSourceError(Exception):
    """The text is not YAML at all (syntax error, duplicate key, wrong root)."""


@dataclass
class Document:
    """A parsed YAML document: its plain data and the line of every path."""

    data: object
    lines: dict[str, int] = field(default_factory=dict)

    def line(self, path: str) -> int | None:
        """The 1-based line where ``path`` (or its nearest parent) stood."""
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= 0:
                break
            path = path[:cut]
        return self.lines.get(path)


def join_path(parent: str, key: object) -> str:
    """Join a mapping key or sequence index to a dotted path."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


#: Deeper than this is a mistake (or a recursive alias), not a config.
MAX_DEPTH = 64
#: Values after aliases are expanded; a few aliases of aliases ("billion laughs")
#: would otherwise expand to more than memory holds.
MAX_NODES = 100_000


def load(text: str) -> Document:
    """Parse ``text``; raise YamlSourceError with a line for broken YAML."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlSourceError(f"not valid YAML: {problem}{where}") from None
    except RecursionError:
        raise YamlSourceError(f"not valid YAML: nested more than {MAX_DEPTH} levels "
                              f"deep") from None
    if root is None:
        return Document(data={})
    doc = Document(data=None)
    doc.data = _convert(root, "", doc.lines, 0, [MAX_NODES])
    return doc


def _convert(node: yaml.Node, path: str, lines: dict[str, int], depth: int,
             budget: list[int]) -> object:
    # Found by tests/fuzz: a recursive alias ("&a [*a]") or deep nesting hit
    # RecursionError, and aliases of aliases grew without bound.
    budget[0] -= 1
    if depth > MAX_DEPTH or budget[0] < 0:
        why = (f"nested more than {MAX_DEPTH} levels deep (a recursive alias?)"
               if depth > MAX_DEPTH else f"more than {MAX_NODES} values after expanding aliases")
        raise YamlSourceError(f"{path or '<top level>'}: {why} "
                              f"(line {node.start_mark.line + 1})")
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[object, object] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if key in result:
                raise YamlSourceError(
                    f"{join_path(path, key)}: duplicate key "
                    f"(line {key_node.start_mark.line + 1})"
                )
            result[key] = _convert(value_node, join_path(path, key), lines, depth + 1, budget)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, join_path(path, i), lines, depth + 1, budget)
                for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> object:
    if not isinstance(node, yaml.ScalarNode):
        raise YamlSourceError(
            f"a mapping key must be a plain value (line {node.start_mark.line + 1})"
        )
    # The safe constructor resolves tags (int, bool, null...) the standard way.
    try:
        return yaml.SafeLoader(b"").construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        # An unknown tag (!!python/object), bad !!binary, an int over 4300 digits.
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlSourceError(f"cannot read the value at line {node.start_mark.line + 1}: "
                              f"{problem}") from None
