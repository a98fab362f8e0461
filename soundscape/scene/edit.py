"""Scene stage, writing back: set one scalar of a scene file by editing its text, not re-dumping it.

Input: a scene file's text, a key path (``("elements", "rain", "volume")``) and the new value as
YAML. Output: the same text with exactly that value's characters replaced, or, when the key is
absent, one line inserted after the mapping's last entry with the indentation of its keys (or
``, key: value`` before the ``}`` of a flow mapping). Comments, blank lines, quoting, ``null``s,
flow lists and wrapped prompts elsewhere in the file are untouched, byte for byte: a round trip
through a YAML library re-indents lists and rewraps long strings.

Positions come from PyYAML's composed nodes (line and column of every key and value).
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from ..audio_io import atomic_write_text
from ..errors import SceneError

KeyPath = tuple[str, ...]


def _compose(text: str, file: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise SceneError(f"{file}:{mark.line + 1 if mark else 1}: invalid YAML: "
                         f"{e.problem or e.context}; fix it before editing") from None
    except yaml.YAMLError as e:
        raise SceneError(f"{file}: invalid YAML: {str(e).splitlines()[0]}") from None


def _child(node: yaml.MappingNode, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return k, v
    return None


def _end(node: yaml.Node) -> int:
    """The index in the text just past ``node``'s last character."""
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and not node.flow_style \
            and node.value:
        last = node.value[-1]
        return _end(last[1] if isinstance(last, tuple) else last)
    return int(node.end_mark.index)


def set_scalar(text: str, path: KeyPath, value: str, file: str = "<scene>") -> str:
    """``text`` with the scalar at ``path`` set to ``value`` (already YAML, e.g. ``-6 dB``).

    Raises:
        SceneError: when the text is not YAML, a mapping on the way is missing, or the value at
            ``path`` is a list or mapping.
    """
    root = _compose(text, file)
    node = root
    for i, key in enumerate(path):
        where = ".".join(path[:i]) or "the file"
        if not isinstance(node, yaml.MappingNode):
            line = node.start_mark.line + 1 if node is not None else 1
            raise SceneError(f"{file}:{line}: {where} is not a mapping; cannot set "
                             f"{'.'.join(path)}")
        found = _child(node, key)
        if found is None:
            if i < len(path) - 1:
                raise SceneError(f"{file}:{node.start_mark.line + 1}: no "
                                 f"{'.'.join(path[:i + 1])} to set {path[-1]} in")
            return _insert(text, node, key, value)
        node = found[1]
    assert node is not None
    if not isinstance(node, yaml.ScalarNode) or node.style in ("|", ">"):
        raise SceneError(f"{file}:{node.start_mark.line + 1}: {'.'.join(path)} is a list, "
                         f"mapping or block of text, not a single value")
    # pure-Python PyYAML marks index characters of the str it was given
    start, end = int(node.start_mark.index), int(node.end_mark.index)
    if start == end and text[start - 1:start] != " ":  # 'key:' with nothing after it
        value = " " + value
    return text[:start] + value + text[end:]


def _insert(text: str, node: yaml.MappingNode, key: str, value: str) -> str:
    if node.flow_style:
        close = int(node.end_mark.index) - 1  # the '}'
        body = text[:close].rstrip(" ")
        sep = ", " if node.value else ""
        return body + f"{sep}{key}: {value}" + text[len(body):close] + text[close:]
    if not node.value:
        raise SceneError(f"an empty mapping on line {node.start_mark.line + 1}: cannot add {key}")
    indent = node.value[0][0].start_mark.column
    last = node.value[-1][1]
    at = _end(last)
    newline = "\r\n" if "\r\n" in text else "\n"
    if not (isinstance(last, yaml.ScalarNode) and last.style in ("|", ">")) \
            or text[at - 1:at] not in ("\n", "\r"):
        brk = text.find("\n", at)
        if brk < 0:
            return text + newline + " " * indent + f"{key}: {value}" + newline
        at = brk + 1
    return text[:at] + " " * indent + f"{key}: {value}{newline}" + text[at:]


def edit_file(path: str | Path, path_in_file: KeyPath, value: str, display: str | None = None) \
        -> tuple[str, str]:
    """Set one scalar in a scene file (atomically); returns the text before and after."""
    p = Path(path)
    before = p.read_text(encoding="utf-8")
    after = set_scalar(before, path_in_file, value, display or str(path))
    if after != before:
        atomic_write_text(p, after)
    return before, after


def yaml_level(volume_db: float) -> str:
    """A level as the scene format writes it: ``-6.5 dB`` (``-inf dB`` for silence)."""
    if math.isinf(volume_db):
        return "-inf dB"
    return f"{round(volume_db, 2):g} dB"


def yaml_number(x: float) -> str:
    return f"{round(x, 4):g}"


def element_path(text: str, element: str, variant: str | None, key: str,
                 file: str = "<scene>") -> KeyPath:
    """Where a setting of ``element`` is written: in the variant's override when the variant
    declares that element, else in the base scene's element.

    Raises:
        SceneError: when neither declares it.
    """
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise SceneError(f"{file}: not a scene (a mapping at the top)")
    if variant is not None:
        variants = data.get("variants") or {}
        if variant not in variants:
            raise SceneError(f"{file}: unknown variant '{variant}'; variants: "
                             f"{', '.join(variants) or 'none declared'}")
        over = (variants[variant] or {}).get("elements") or {}
        if isinstance(over, dict) and element in over:
            return ("variants", variant, "elements", element, key)
    base = data.get("elements") or {}
    if isinstance(base, dict) and element in base:
        return ("elements", element, key)
    where = f"base scene or variant '{variant}'" if variant else "base scene"
    hint = " (give --variant for an element of a variant)" if variant is None else ""
    raise SceneError(f"{file}: no element '{element}' in the {where}{hint}")
