"""Scene-format edge: YAML text -> plain data plus the line of every value.

Input: YAML text. Output: ``Source`` (dicts/lists/scalars, and ``lines`` mapping each path tuple
to its 1-based line). Loading is safe (no object construction); duplicate keys, non-string keys
and unknown tags are errors with a line, never silently accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from ..units import show

Path_ = tuple[str | int, ...]
MAX_DEPTH = 50
MAX_NODES = 100_000  # a scene of 256 elements with every option is ~15 000 values
# libyaml composes the node graph in C (5x faster on big files); same nodes, same marks
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class YamlProblem(Exception):
    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"{line}: {message}")


@dataclass
class Source:
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int | None:
        """The line of ``path`` or of its nearest ancestor that has one."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), None)


def load(text: str) -> Source:
    """Parse YAML text into a ``Source``; raise ``YamlProblem`` with a line on any error."""
    try:
        loader = _Loader(text)
    except yaml.YAMLError as e:
        raise YamlProblem(1, f"invalid YAML: {e}".splitlines()[0]) from None
    try:
        node = loader.get_single_node()
    except RecursionError:
        raise YamlProblem(1, f"nesting is deeper than {MAX_DEPTH} levels") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlProblem(line, f"invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise YamlProblem(1, f"invalid YAML: {e}".splitlines()[0]) from None
    finally:
        loader.dispose()
    src = Source(data=None)
    if node is None:
        return src
    src.data = _convert(loader, node, (), src.lines, depth=0, budget=[MAX_NODES])
    return src


def _convert(loader: yaml.SafeLoader, node: yaml.Node, path: Path_, lines: dict[Path_, int],
             depth: int, budget: list[int]) -> Any:
    """``node`` as plain data. ``budget`` counts the values still allowed: aliases are
    expanded here, so a small file of nested aliases ("billion laughs") stops at the limit."""
    if depth > MAX_DEPTH:
        raise YamlProblem(node.start_mark.line + 1, f"nesting is deeper than {MAX_DEPTH} levels")
    budget[0] -= 1
    if budget[0] < 0:
        raise YamlProblem(node.start_mark.line + 1,
                          f"the scene expands to more than {MAX_NODES} values (aliases that "
                          f"repeat aliases?); write it out or split it")
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
        raise YamlProblem(node.start_mark.line + 1,
                          f"cannot read this value: unsupported tag {node.tag!r}; remove it")
    if isinstance(node, yaml.MappingNode):
        try:
            loader.flatten_mapping(node)  # YAML merge keys (<<)
        except yaml.MarkedYAMLError as e:
            raise YamlProblem(node.start_mark.line + 1, f"invalid merge key: {e.problem}") from None
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlProblem(line, "a key must be a plain name, not a list or mapping")
            key = _scalar(loader, key_node)
            if key is None or isinstance(key, bool | float):
                raise YamlProblem(line, f"{show(key_node.value)} is not a valid key; write a name")
            key = str(key)
            if key in out:
                first = lines.get((*path, key), "?")
                raise YamlProblem(line, f"duplicate key '{key}' (first defined on line {first}); "
                                        f"remove one of them")
            lines[(*path, key)] = line
            out[key] = _convert(loader, value_node, (*path, key), lines, depth + 1, budget)
            lines[(*path, key)] = line
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, item, (*path, i), lines, depth + 1, budget)
                for i, item in enumerate(node.value)]
    return _scalar(loader, node)


def _scalar(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    try:
        value = loader.construct_object(node, deep=True)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e)
        raise YamlProblem(node.start_mark.line + 1, f"cannot read this value: {problem}") from None
    if isinstance(value, bytes | set) or type(value).__module__ == "datetime":
        raise YamlProblem(node.start_mark.line + 1,
                          f"{show(node.value)} is not a number, text or true/false; quote it")
    return value
