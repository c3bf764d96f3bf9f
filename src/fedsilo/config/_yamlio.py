"""YAML files parsed once, with the line of every node kept for error messages.

A spec file is read with ``yaml.safe_load`` semantics, but through ``yaml.compose`` first so
that each key and item keeps its position. Validation errors from pydantic are then turned
into one :class:`~fedsilo.errors.ConfigError` that names the file, the dotted field and the
line, in words a person can act on.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from fedsilo.errors import ConfigError

__all__ = ["FieldIssue", "LineIndex", "issue_error", "load_yaml_mapping", "validate_model"]

Loc = tuple[str | int, ...]
ModelT = TypeVar("ModelT", bound=BaseModel)


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
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=file) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read file: {exc}", file=file) from exc

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError("the file is empty; expected a mapping of keys", file=file, line=1)
        lines: dict[Loc, int] = {(): node.start_mark.line + 1}
        _index(node, (), lines, file, set())
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"invalid YAML: {problem}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from None
    finally:
        loader.dispose()

    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(
            f"the top level must be a mapping of keys, not a {kind}",
            file=file,
            line=node.start_mark.line + 1,
        )
    return data, LineIndex(lines)


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
        return model_cls.model_validate(data)
    except ValidationError as exc:
        errors = _without_echoes(exc.errors())
        first = errors[0]
        loc: Loc = _without_tags(tuple(first["loc"]), data)
        error = first.get("ctx", {}).get("error")
        if isinstance(error, FieldIssue):
            loc = (*loc, *error.loc)
        message = _describe(model_cls, first, loc)
        more = len(errors) - 1
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        line = None if index is None else index.line_of(loc)
        dotted = ".".join(str(part) for part in loc) or None
        raise ConfigError(message, file=str(path), field=dotted, line=line) from None


def issue_error(issue: FieldIssue, path: Path, index: LineIndex | None = None) -> ConfigError:
    """The :class:`ConfigError` for a :class:`FieldIssue` found outside validation."""
    line = None if index is None else index.line_of(issue.loc)
    dotted = ".".join(str(part) for part in issue.loc) or None
    return ConfigError(issue.message, file=str(path), field=dotted, line=line)


def _describe(model_cls: type[BaseModel], error: Any, loc: Loc) -> str:
    kind: str = error["type"]
    ctx: dict[str, Any] = error.get("ctx", {})
    name = next((str(part) for part in reversed(loc) if isinstance(part, str)), "value")
    if kind == "extra_forbidden":
        owner = _model_at(model_cls, loc[:-1])
        allowed = ", ".join(owner.model_fields) if owner is not None else ""
        suffix = f"; allowed keys: {allowed}" if allowed else ""
        return f"unknown key '{loc[-1]}'{suffix}"
    if kind == "missing":
        return f"missing required key '{name}'"
    if kind == "enum":
        choices = ", ".join(re.findall(r"'([^']*)'", str(ctx.get("expected", ""))))
        return f"{_short(error['input'])} is not a {name.replace('_', ' ')}; use one of: {choices}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "too_short":
        return f"'{name}' needs at least {ctx.get('min_length')} entry"
    if kind == "string_pattern_mismatch":
        return f"{_short(error['input'])} is not a valid {name}: it must match {ctx.get('pattern')}"
    return f"{error['msg']} (got {_short(error['input'])})"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _model_at(model_cls: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model class found by following ``loc`` from ``model_cls``, if any."""
    annotation: Any = model_cls
    for part in loc:
        annotation = _strip_optional(annotation)
        if isinstance(part, int):
            args = typing.get_args(annotation)
            if not args:
                return None
            annotation = args[0]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            info = annotation.model_fields.get(part)
            if info is None:
                return None
            annotation = info.annotation
        else:
            return None
    annotation = _strip_optional(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _strip_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation
