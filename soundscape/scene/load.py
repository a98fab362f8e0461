"""Scene stage, loading: YAML file -> validated ``Scene`` (variants resolved here), and messages.

Input: a scene file path (or a dict, for the Python API). Output: ``Scene`` models. Every problem
becomes a ``SceneError`` line: ``file:line: dotted.path: message``, with the YAML line of the value
(variants keep the line of the override that caused it).
"""

from __future__ import annotations

import copy
import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError

from ..dsp.effects import check_effect_rates
from ..errors import SceneError
from ..units import show
from . import yamlsrc
from .models import Scene


def _merge(base: Any, over: Any, path: tuple, over_path: tuple, src: yamlsrc.Source,
           lines: dict) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            vp = (*over_path, k)
            if vp in src.lines:
                lines[(*path, k)] = src.lines[vp]
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = _merge(out[k], v, (*path, k), vp, src, lines)
            else:
                out[k] = v
                _copy_lines(src, vp, (*path, k), lines)
        return out
    _copy_lines(src, over_path, path, lines)
    return copy.deepcopy(over)


def _copy_lines(src: yamlsrc.Source, from_path: tuple, to_path: tuple, lines: dict) -> None:
    n = len(from_path)
    for p, line in src.lines.items():
        if p[:n] == from_path:
            lines[(*to_path, *p[n:])] = line


def _unwrap(tp: Any) -> list[Any]:
    """The model classes reachable through Optional/list/dict/tuple/Annotated of ``tp``."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        args = typing.get_args(tp)
        if origin is dict:
            args = args[1:]
        return [m for a in args for m in _unwrap(a)]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return []


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Scene
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            if model is Scene:
                return None
            continue  # a dict key (element name)
        found = _unwrap(field.annotation)
        if not found:
            return None
        model = found[0]
    return model


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (("." if out else "") + str(part))
    return out


def _friendly(err: dict[str, Any]) -> str:
    kind = err["type"]
    loc = tuple(err["loc"])
    value = err.get("input")
    msg: str = err["msg"]
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown key '{loc[-1]}'; {hint}allowed: {', '.join(allowed)}"
    if kind == "missing":
        return f"required field missing; add '{loc[-1]}: ...'"
    if kind in ("value_error", "assertion_error"):
        return msg.split(", ", 1)[1] if msg.startswith(("Value error, ", "Assertion failed, ")) \
            else msg
    if kind == "string_pattern_mismatch":
        return (f"{show(value)} is not a usable name; use letters, digits, '_' and '-' (it names "
                f"files), e.g. 'rain_heavy'")
    if kind == "literal_error":
        return f"{show(value)} is not allowed; {msg[0].lower()}{msg[1:]}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{show(value)} is not a mapping; write 'key: value' lines indented under it"
    return f"{show(value)}: {msg[0].lower()}{msg[1:]}" if value is not None else msg


def format_errors(e: ValidationError, file: str, lines_of: Any, variant: str | None,
                   prefix: tuple = ()) -> list[str]:
    out = []
    for err in e.errors():
        loc = (*prefix, *err["loc"])
        if err["type"] in ("model_type", "dict_type") and loc == ():
            out.append(f"{file}:1: the scene must be a mapping of keys such as name, duration "
                       f"and elements")
            continue
        line = lines_of(loc)
        where = f"{file}:{line}" if line else file
        tag = f"variant '{variant}': " if variant else ""
        dotted = _dotted(loc)
        out.append(f"{where}: {tag}{dotted + ': ' if dotted else ''}{_friendly(dict(err))}")
    seen: set[str] = set()
    return [x for x in out if not (x in seen or seen.add(x))]  # type: ignore[func-returns-value]


def _validate(data: Any, file: str, base_dir: Path | None, line_of: Any,
              variant: str | None) -> Scene:
    if not isinstance(data, dict):
        raise SceneError(f"{file}:{line_of(()) or 1}: the scene must be a mapping of keys such "
                         f"as name, duration and elements, not {type(data).__name__}")
    try:
        scene = Scene.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as e:
        raise SceneError(format_errors(e, file, line_of, variant)) from None
    problems = rate_problems(scene, file, line_of, variant) + \
        engine_problems(scene, file, line_of, variant)
    if problems:
        raise SceneError(problems)
    return scene


def engine_problems(scene: Scene, file: str, line_of: Any, variant: str | None) -> list[str]:
    """Settings of another engine than the element's, takes longer than its engine makes:
    one ``file:line: path: message`` per problem."""
    from .engines import scene_engine_problems

    tag = f"variant '{variant}': " if variant else ""
    out = []
    for loc, msg in scene_engine_problems(scene):
        line = line_of(loc) or line_of(loc[:2])
        where = f"{file}:{line}" if line else file
        out.append(f"{where}: {tag}{'.'.join(loc[:-1])}.{msg}")
    return out


def rate_problems(scene: Scene, file: str, line_of: Any, variant: str | None) -> list[str]:
    """Effect frequencies the scene's rate cannot carry (a 9 kHz lowpass at 16 kHz renders
    inf): one ``file:line: path: message`` per problem, for the base and each variant."""
    tag = f"variant '{variant}': " if variant else ""
    lists: list[tuple[tuple[str, ...], list[Any]]] = [
        (("elements", name, "effects"), e.effects) for name, e in scene.elements.items()]
    lists.append((("master", "effects"), scene.master.effects))
    out = []
    for loc, effects in lists:
        line = line_of(loc)
        where = f"{file}:{line}" if line else file
        out += [f"{where}: {tag}{msg}" for msg in
                check_effect_rates(tuple(effects), scene.sample_rate, ".".join(loc))]
    return out


MAX_FILE_BYTES = 1 << 20


def _read(path: Path, text: str | None = None) -> tuple[yamlsrc.Source, str]:
    display = str(path)
    if text is not None:
        return _parse(path, text, display), display
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SceneError(f"{display}: the file is {size / 2**20:.1f} MiB; a scene is at most "
                             f"1 MiB of YAML (is this the right file?)")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SceneError(f"{display}: no such scene file") from None
    except IsADirectoryError:
        raise SceneError(f"{display}: is a directory; give a .yaml scene file") from None
    except UnicodeDecodeError:
        raise SceneError(f"{display}:1: not UTF-8 text; save the scene as UTF-8") from None
    return _parse(path, text, display), display


def _parse(path: Path, text: str, display: str) -> yamlsrc.Source:
    try:
        src = yamlsrc.load(text)
    except yamlsrc.YamlProblem as p:
        raise SceneError(f"{display}:{p.line}: {p.message}") from None
    if isinstance(src.data, dict) and "name" not in src.data:
        src.data["name"] = path.stem.replace(".", "_")
    return src


def load_scene(path: str | Path, variant: str | None = None, *, text: str | None = None) \
        -> Scene:
    """Load and validate a scene file, optionally resolved for one variant; ``text``: validate
    this text as if the file held it (an edit checked before it is written).

    Raises:
        SceneError: with one ``file:line: path: message`` line per problem.
    """
    path = Path(path)
    src, display = _read(path, text)
    base = _validate(src.data, display, path.parent, src.line_of, None)
    base._path = path
    if variant is None:
        return base
    if variant not in base.variants:
        names = ", ".join(base.variants) or "none declared"
        close = difflib.get_close_matches(variant, list(base.variants), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise SceneError(f"{display}: unknown variant '{variant}'; {hint}variants: {names}")
    over = src.data["variants"][variant]
    if not isinstance(over, dict):
        line = src.line_of(("variants", variant))
        raise SceneError(f"{display}:{line}: variants.{variant}: must be a mapping of overrides")
    raw = {k: v for k, v in src.data.items() if k != "variants"}
    lines: dict = {p: n for p, n in src.lines.items() if not p or p[0] != "variants"}
    merged = _merge(raw, over, (), ("variants", variant), src, lines)
    merged["variants"] = {}
    merged_src = yamlsrc.Source(merged, lines)
    scene = _validate(merged, display, path.parent, merged_src.line_of, variant)
    scene = scene.model_copy(update={"variants": base.variants})
    scene._path = path
    scene._variant = variant
    return scene


def load_all(path: str | Path) -> list[Scene]:
    """The base scene and every variant, validated."""
    base = load_scene(path)
    return [base] + [load_scene(path, v) for v in base.variants]


def scene_from_dict(data: dict[str, Any], base_dir: str | Path | None = None,
                    variant: str | None = None) -> Scene:
    """Build a scene in code (Python API); same validation and messages as a file."""
    data = copy.deepcopy(data)
    data.setdefault("name", "scene")
    line_of = lambda loc: None  # noqa: E731
    base = _validate(data, "<scene>", Path(base_dir) if base_dir else None, line_of, None)
    if variant is None:
        return base
    if variant not in base.variants:
        raise SceneError(f"<scene>: unknown variant '{variant}'; variants: "
                         f"{', '.join(base.variants) or 'none declared'}")
    raw = {k: v for k, v in data.items() if k != "variants"}
    merged = _merge(raw, data["variants"][variant], (), (), yamlsrc.Source(None), {})
    scene = _validate(merged, "<scene>", Path(base_dir) if base_dir else None, line_of, variant)
    scene._variant = variant
    return scene


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the scene format, generated from the models."""
    schema = Scene.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "soundscape scene"
    schema["required"] = [r for r in schema.get("required", []) if r != "name"]
    return schema

