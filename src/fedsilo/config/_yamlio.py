"""YAML files parsed once, with the line of every node kept for error messages.

A spec file is read with ``yaml.safe_load`` semantics, but through ``yaml.compose`` first so
that each key and item keeps its position. Validation errors from pydantic are then turned
into one :class:`~fedsilo.errors.ConfigError` that names the file, the dotted field and the
line, in words a person can act on.
"""

from __future__ import annotations

import math
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from fedsilo._suggest import did_you_mean, listing
from fedsilo.errors import ConfigError

__all__ = ["FieldIssue", "LineIndex", "issue_error", "load_yaml_mapping", "validate_model"]

Loc = tuple[str | int, ...]
_KEY = "[key]"  # pydantic's location of a mapping's key, after the key itself
ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_FILE_BYTES = 1 << 20
"""The largest spec, policy or kit file fedsilo reads: a person writes these by hand."""
MAX_DEPTH = 32
"""How deeply mappings and lists may nest in such a file (fedsilo's own need at most 6)."""
MAX_INTEGER = 2**63 - 1
"""The largest integer a file may hold (counts, sizes and seeds all fit in 64 bits)."""


class FieldIssue(ValueError):
    """A cross-field problem found by a model validator, located below the model.

    Raise it from a ``model_validator`` with the location of the offending field relative
    to the model; :func:`validate_model` appends that location to the model's own, so the
    resulting error names e.g. ``silos.2.storage.root`` and its line.
    """

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


@dataclass(frozen=True)
class LineIndex:
    """The 1-based line of every key and sequence item of a parsed YAML document."""

    lines: Mapping[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int | None:
        """Line of the deepest node of ``loc`` present in the file (``None`` if none is)."""
        for depth in range(len(loc), -1, -1):
            line = self.lines.get(_normalise(loc[:depth]))
            if line is not None:
                return line
        return None


def _normalise(loc: Loc) -> Loc:
    return tuple(part if isinstance(part, int) else str(part) for part in loc)


def load_yaml_mapping(path: Path) -> tuple[dict[str, Any], LineIndex]:
    """Read a YAML file whose top level is a mapping, with the line of every node.

    Raises :class:`ConfigError` naming the file (and the line where one applies) when the
    file is missing or unreadable, is not valid YAML, has a top level that is not a
    mapping, or repeats a key inside one mapping.
    """
    file = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("file not found", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", file=file) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(
            f"the file is {len(raw)} bytes, over the {MAX_FILE_BYTES} byte limit of a spec file",
            file=file,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"the file is not UTF-8 text (byte {exc.start} cannot be decoded); save it as UTF-8",
            file=file,
            line=line,
        ) from None

    try:
        _check_depth(text, file)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise ConfigError(
                    "the file is empty; expected a mapping of keys", file=file, line=1
                )
            lines: dict[Loc, int] = {(): node.start_mark.line + 1}
            _index(node, (), lines, file, set())
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = None if mark is None else mark.line + 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"invalid YAML: {problem}", file=file, line=at) from None
    except yaml.reader.ReaderError as exc:  # a control character, for one
        line = text[: exc.position].count("\n") + 1
        raise ConfigError(
            f"invalid YAML: the character #x{exc.character:04x} is not allowed in a YAML file"
            if isinstance(exc.character, int)
            else f"invalid YAML: {_one_line(exc)}",
            file=file,
            line=line,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {_one_line(exc)}", file=file) from None
    except (ValueError, OverflowError):  # an integer of thousands of digits
        raise ConfigError(
            f"a number is too long to read (at most {MAX_INTEGER})", file=file
        ) from None
    except RecursionError:
        raise ConfigError("the file nests too deeply to be read", file=file) from None

    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(
            f"the top level must be a mapping of keys, not a {kind}",
            file=file,
            line=node.start_mark.line + 1,
        )
    index = LineIndex(lines)
    _check_numbers(data, file, index)
    return data, index


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _check_depth(text: str, file: str) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH`, before anything recursive reads it.

    YAML's event parser is iterative, so this holds for any depth (composing the document
    would recurse once per level).
    """
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(
                    f"mappings and lists nest more than {MAX_DEPTH} levels deep here",
                    file=file,
                    line=None if event.start_mark is None else event.start_mark.line + 1,
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _check_numbers(data: Any, file: str, index: LineIndex) -> None:
    """Refuse infinite or NaN numbers (``.inf``, ``1e999``) and integers past 64 bits."""
    stack: list[tuple[Loc, Any]] = [((), data)]
    seen: set[int] = set()
    while stack:
        loc, value = stack.pop()
        problem = None
        if isinstance(value, float) and not math.isfinite(value):
            problem = f"{value!r} is not a finite number"
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
            problem = f"the number {_short(value)} is too large (at most {MAX_INTEGER})"
        if problem is not None:
            dotted = ".".join(str(part) for part in loc) or None
            raise ConfigError(problem, file=file, field=dotted, line=index.line_of(loc))
        if isinstance(value, (dict, list)):
            if id(value) in seen:  # an alias of a node already checked
                continue
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend(((*loc, key if isinstance(key, int) else str(key)), v) for key, v in items)


def _index(
    node: yaml.Node, loc: Loc, lines: dict[Loc, int], file: str, seen_nodes: set[int]
) -> None:
    if id(node) in seen_nodes:  # an alias: index its anchor once, so nesting cannot explode
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                dotted = ".".join(str(p) for p in (*loc, key))
                raise ConfigError(
                    f"duplicate key '{key}' (first given on line {seen[key]})",
                    file=file,
                    field=dotted,
                    line=line,
                )
            seen[key] = line
            lines[(*loc, key)] = line
            _index(value_node, (*loc, key), lines, file, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for position, item in enumerate(node.value):
            lines[(*loc, position)] = item.start_mark.line + 1
            _index(item, (*loc, position), lines, file, seen_nodes)


def _without_tags(loc: Loc, data: Any) -> Loc:
    """Drop the tag pydantic puts in the location of an error inside a tagged union.

    For ``strategy: {name: fedavg, mu: 1}`` pydantic says ``strategy.fedavg.mu``; the file
    has no key ``fedavg`` there, so that segment is dropped: ``strategy.mu``. (A missing
    key is the last segment of its location, and is kept.)
    """
    out: list[str | int] = []
    node = data
    for position, part in enumerate(loc):
        last = position == len(loc) - 1
        if isinstance(node, dict) and isinstance(part, str) and part not in node and not last:
            continue  # not in the file, yet errors lie below it: a union's tag
        out.append(part)
        node = (
            node.get(part)
            if isinstance(node, dict)
            else (
                node[part]
                if isinstance(node, list) and isinstance(part, int) and part < len(node)
                else None
            )
        )
    return tuple(out)


def _without_echoes(errors: list[Any]) -> list[Any]:
    """Drop a container's length error that only echoes a failed item inside it.

    pydantic reports a ``too_short`` error on a sequence whose item failed; that is the
    same problem said twice.
    """
    kept = [
        e
        for e in errors
        if not (
            e["type"] == "too_short"
            and any(
                other is not e and tuple(other["loc"][: len(e["loc"])]) == tuple(e["loc"])
                for other in errors
            )
        )
    ]
    return kept or errors


def validate_model(
    model_cls: type[ModelT], data: Any, path: Path, index: LineIndex | None = None
) -> ModelT:
    """Validate ``data`` as ``model_cls``; the first problem becomes a :class:`ConfigError`.

    The error names ``path``, the dotted field (``silos.1.storage.root``) and, from
    ``index``, the line of the deepest part of that field present in the file.
    """
    try:
        model = model_cls.model_validate(data)
    except ValidationError as exc:
        errors = _without_echoes(exc.errors())
        # an unknown key first: it is usually why a required one is missing (a typo)
        errors.sort(key=lambda e: e["type"] not in ("extra_forbidden", "invalid_key"))
        first = errors[0]
        raw: Loc = tuple(first["loc"])
        loc: Loc = _without_tags(tuple(p for p in raw if p != _KEY), data)
        if first["type"] == "invalid_key" and loc:  # a key such as 10: written as a name
            loc = (*loc[:-1], str(loc[-1]))
        ctx = first.get("ctx", {})
        error = ctx.get("error")
        if isinstance(error, FieldIssue):
            loc = (*loc, *error.loc)
        if first["type"] == "union_tag_invalid":  # the tag's own key: its line, its name
            loc = (*loc, str(ctx.get("discriminator", "")).strip("'"))
        message = _describe(model_cls, first, loc, raw)
        more = len(errors) - 1
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        line = None if index is None else index.line_of(loc)
        dotted = ".".join(str(part) for part in loc) or None
        raise ConfigError(message, file=str(path), field=dotted, line=line) from None
    # a number given as text ("1e999") becomes infinite only once a field converts it
    found = _non_finite(model.model_dump())
    if found is not None:
        dotted = ".".join(str(part) for part in found) or None
        line = None if index is None else index.line_of(found)
        raise ConfigError(
            "the value is not a finite number", file=str(path), field=dotted, line=line
        )
    return model


def _non_finite(data: Any) -> Loc | None:
    """The location of the first infinite or NaN float in ``data``, if any."""
    stack: list[tuple[Loc, Any]] = [((), data)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return loc
        if isinstance(value, dict):
            stack.extend(((*loc, str(k)), v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend(((*loc, i), v) for i, v in enumerate(value))
    return None


def issue_error(issue: FieldIssue, path: Path, index: LineIndex | None = None) -> ConfigError:
    """The :class:`ConfigError` for a :class:`FieldIssue` found outside validation."""
    line = None if index is None else index.line_of(issue.loc)
    dotted = ".".join(str(part) for part in issue.loc) or None
    return ConfigError(issue.message, file=str(path), field=dotted, line=line)


def _describe(model_cls: type[BaseModel], error: Any, loc: Loc, raw: Loc) -> str:
    """The problem of one pydantic ``error`` in words; ``raw`` is pydantic's location (with
    a union's tags and ``[key]``), ``loc`` the one the file has."""
    kind: str = error["type"]
    ctx: dict[str, Any] = error.get("ctx", {})
    name = next((str(part) for part in reversed(loc) if isinstance(part, str)), "value")
    words = name.replace("_", " ")  # what a value is: "a sandbox", "a compute kind"
    if raw and raw[-1] == _KEY:  # a key of a mapping whose keys are a closed set
        words = f"key of '{loc[-2]}'" if len(loc) > 1 else "key"
    elif kind == "union_tag_invalid" and len(loc) > 1:  # strategy.name: "not a strategy"
        words = str(loc[-2]).replace("_", " ")
    if kind == "extra_forbidden":
        owner = _model_at(model_cls, raw[:-1])
        keys = list(owner.model_fields) if owner is not None else []
        hint = did_you_mean(str(loc[-1]), keys)
        allowed = f"; allowed keys: {listing(keys)}" if keys else ""
        return f"unknown key {_short(loc[-1])}{hint}{allowed}"
    if kind == "invalid_key":
        return f"the key {_short(error['input'])} is not a name; write keys as text"
    if kind == "missing":
        return f"missing required key '{name}'"
    if kind in ("enum", "literal_error", "union_tag_invalid"):
        given = ctx["tag"] if kind == "union_tag_invalid" else error["input"]
        expected = ctx.get("expected_tags" if kind == "union_tag_invalid" else "expected", "")
        choices = re.findall(r"'([^']*)'", str(expected))
        hint = did_you_mean(str(given), choices)
        article = "an" if words[:1] in "aeiou" else "a"
        return f"{_short(given)} is not {article} {words}{hint}; use one of: {listing(choices)}"
    if kind in ("model_attributes_type", "model_type", "dict_type"):
        return f"'{name}' takes a mapping of keys (key: value), not {_short(error['input'])}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "too_short":
        return f"'{name}' needs at least {ctx.get('min_length')} entry"
    if kind == "string_pattern_mismatch":
        return f"{_short(error['input'])} is not a valid {name}: it must match {ctx.get('pattern')}"
    return f"{error['msg']} (got {_short(error['input'])})"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 58, 58, 40


def _short(value: Any, limit: int = 60) -> str:
    text = _REPR.repr(value)  # bounded, however large or deep the value
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _model_at(model_cls: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model class found by following ``loc`` from ``model_cls``, if any.

    ``loc`` may hold a tagged union's tag (as pydantic's locations do): it picks the member.
    """
    annotation: Any = model_cls
    for part in loc:
        annotation = _strip_optional(annotation)
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            info = annotation.model_fields.get(str(part))
            if info is None:
                return None
            annotation = info.annotation
        elif _models_of(annotation):
            annotation = _models_of(annotation).get(str(part))
        elif origin is dict and isinstance(part, str):
            annotation = typing.get_args(annotation)[1]
        elif origin in (list, tuple) and isinstance(part, int):
            annotation = typing.get_args(annotation)[0]
        else:
            return None
    annotation = _strip_optional(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _models_of(annotation: Any) -> dict[str, type[BaseModel]]:
    """The models of a union by the tags and names pydantic puts in a location."""
    origin = typing.get_origin(annotation)
    if origin is not typing.Union and origin is not types.UnionType:
        return {}
    found: dict[str, type[BaseModel]] = {}
    for member in typing.get_args(annotation):
        if not (isinstance(member, type) and issubclass(member, BaseModel)):
            continue
        found[member.__name__] = member
        for info in member.model_fields.values():
            if typing.get_origin(info.annotation) is typing.Literal:
                for tag in typing.get_args(info.annotation):
                    found.setdefault(str(tag), member)
    return found


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation
