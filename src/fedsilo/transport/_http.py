"""HTTP plumbing of fedsilo's servers: JSON bodies read strictly, refusals that always encode.

Both the orchestrator and a silo's approval endpoint read JSON written by someone else.
Python's JSON reader is lenient where fedsilo must not be: it reads ``NaN``, ``Infinity``
and ``1e999`` as non-finite floats, ``"\\ud800"`` as a string that cannot be encoded
again, integers of any size, and nesting until the interpreter's recursion limit. A value
like that, accepted, fails later, where it is encoded or stored, as a server error (or an
answer echoing it fails to encode). :class:`StrictJSONRoute` refuses each of them as the
body is read, with a 422 that names the field; :func:`invalid_request` renders validation
errors without the offending values, so a refusal itself never fails to encode.
"""

from __future__ import annotations

import email.message
import json
import math
import re
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig

from fedsilo.errors import (
    CertificateRefused,
    Conflict,
    FedsiloError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
)

__all__ = [
    "MAX_DEPTH",
    "NO_TELEMETRY",
    "StrictJSONRoute",
    "error_response",
    "invalid_request",
    "read_json",
    "safe_text",
]

MAX_DEPTH = 64
"""The deepest nesting of arrays and objects a request body may have."""

NO_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}
"""FastAPI's OpenTelemetry hooks, off: fedsilo sets no provider up, and asking on every
request whether one was set up cost about a twentieth of a small request's time."""

_INT64 = 1 << 63
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_TEXT_MAX = 300
_PROBLEMS_MAX = 10


class _Refused:
    """A number the reader will not take, kept in place so its field can be named."""

    def __init__(self, text: str, why: str) -> None:
        self.text = text
        self.why = why


def _number(text: str) -> float | _Refused:
    value = float(text)
    if math.isfinite(value):
        return value
    return _Refused(text[:40], "a number must be finite")


def _integer(text: str) -> int | _Refused:
    if len(text) > 20:  # longer than any int64, and cheap to refuse before converting
        return _Refused(text[:20] + "...", "a whole number must lie within ±2**63")
    value = int(text)
    if -_INT64 <= value < _INT64:
        return value
    return _Refused(text, "a whole number must lie within ±2**63")


def _constant(text: str) -> _Refused:
    return _Refused(text, "a number must be finite (JSON has no NaN or Infinity)")


def safe_text(text: str, limit: int = _TEXT_MAX) -> str:
    """``text`` shortened to ``limit`` characters, lone surrogates written as escapes."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _where(loc: Sequence[Any]) -> str:
    return ".".join(safe_text(str(part), 200) for part in loc) or "body"


def _problem(loc: Sequence[Any], message: str) -> dict[str, Any]:
    return {"type": "value_error", "loc": tuple(loc), "msg": message, "input": None}


def read_json(raw: bytes) -> Any:
    """The JSON value in ``raw``, or :class:`RequestValidationError` naming what is wrong.

    Refused: bytes that are not UTF-8, text that is not JSON, non-finite numbers (``NaN``,
    ``Infinity``, ``1e999``), whole numbers outside int64, strings or keys holding a lone
    UTF-16 surrogate (``"\\ud800"``), and nesting deeper than :data:`MAX_DEPTH`.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestValidationError(
            [_problem(("body",), f"not UTF-8 (byte {exc.start}); send JSON encoded as UTF-8")]
        ) from None
    try:
        value = json.loads(text, parse_float=_number, parse_int=_integer, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                _problem(
                    ("body",),
                    f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                )
            ]
        ) from None
    except RecursionError:
        raise RequestValidationError(
            [_problem(("body",), f"nested deeper than {MAX_DEPTH} levels")]
        ) from None
    _check(value, surrogates=_SURROGATE_ESCAPE.search(raw) is not None)
    return value


def _check(value: Any, *, surrogates: bool) -> None:
    """Walk ``value`` (without recursion) for refused numbers, lone surrogates and deep
    nesting; raise one :class:`RequestValidationError` naming each place found."""
    problems: list[dict[str, Any]] = []
    stack: list[tuple[tuple[Any, ...], Any]] = [(("body",), value)]
    while stack and len(problems) < _PROBLEMS_MAX:
        loc, item = stack.pop()
        if isinstance(item, _Refused):
            problems.append(_problem(loc, f"{item.why} (got {item.text})"))
        elif isinstance(item, str):
            if surrogates and _LONE_SURROGATE.search(item):
                problems.append(_problem(loc, "text holds a lone UTF-16 surrogate: not Unicode"))
        elif isinstance(item, dict | list) and len(loc) > MAX_DEPTH:
            problems.append(_problem(loc[:8], f"nested deeper than {MAX_DEPTH} levels"))
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                if surrogates and _LONE_SURROGATE.search(key):
                    problems.append(
                        _problem(loc, "a key holds a lone UTF-16 surrogate: not Unicode")
                    )
                else:
                    stack.append(((*loc, key), child))
        elif isinstance(item, list):
            stack.extend(((*loc, i), child) for i, child in reversed(list(enumerate(item))))
    if problems:
        raise RequestValidationError(problems)


def _is_json(request: Request) -> bool:
    """Whether FastAPI would read this request's body as JSON (as its own handler decides)."""
    content_type = request.headers.get("content-type")
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


class _StrictRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = read_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose JSON body is read by :func:`read_json` before FastAPI validates it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()
        has_body = self.body_field is not None

        async def handler(request: Request) -> Response:
            strict = _StrictRequest(request.scope, request.receive)
            if has_body and _is_json(strict):
                raw = await strict.body()
                if raw:
                    await strict.json()  # a refusal is raised here, as a 422
            return await inner(strict)

        return handler


# the wire code of an answer that names none, by its status (fedsilo.errors.ERROR_CODES)
_CODES = {
    400: InvalidRequest.code,
    403: CertificateRefused.code,
    404: NotFound.code,
    405: InvalidRequest.code,
    409: Conflict.code,
    413: PayloadTooLarge.code,
    422: InvalidRequest.code,
}


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """``{"code": ..., "error": message, ...}``: ASCII JSON, which encodes whatever the text
    holds; ``code`` (by default the status's) tells the client which error to raise."""
    body = {
        "code": code or _CODES.get(status, FedsiloError.code),
        "error": safe_text(message, 4000),
        **extra,
    }
    return _AsciiJSON(body, status_code=status, headers=dict(headers) if headers else None)


class _AsciiJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False).encode("ascii")


async def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    """A 422 naming each field that is wrong and why, never echoing the values sent."""
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"field": _where(e.get("loc", ())), "problem": safe_text(str(e.get("msg", "invalid")))}
        for e in exc.errors()[:_PROBLEMS_MAX]
    ]
    more = len(exc.errors()) - len(problems)
    text = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
    if more > 0:
        text += f"; and {more} more"
    return error_response(422, f"invalid request: {text}", fields=problems)
