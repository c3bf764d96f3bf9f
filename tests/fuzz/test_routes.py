"""Every route of both servers fuzzed from its own OpenAPI schema, over mutual TLS.

schemathesis reads each server's schema from the running process and generates requests
for every operation, valid ones and ones that break the schema, seeded (derandomized) and
bounded by ``FEDSILO_FUZZ_EXAMPLES``. Each is sent with the certificate of the role the
route is for, then with a certificate of the wrong role. Then hand-made hostile bodies
(non-finite numbers, lone surrogates, integers past int64, deep nesting, bytes that are
not UTF-8, truncated JSON) are put in each field of each JSON body in turn.

Every answer must be a success or a 4xx whose body says what was wrong: a 422 names the
field, a 404 names the thing, a 403 the caller; never a 5xx, never a dropped connection,
never a traceback in the server's log.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.core.result import Ok

from tests.fuzz.conftest import EXAMPLES, Identity, Server, Servers, assert_healthy

# the long run (FEDSILO_FUZZ_EXAMPLES=2000) takes longer than the suite's limit of 300 s a test
pytestmark = [pytest.mark.integration, pytest.mark.timeout(max(300, EXAMPLES * 6))]

LONG_POLL = ("wait", "timeout")  # seconds a route may hold the request: kept short here


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


@dataclass
class Findings:
    """What went wrong, one line per request, for one report at the end."""

    lines: list[str] = field(default_factory=list)
    sent: int = 0

    def add(self, case: Case[Any], who: Identity, problem: str) -> None:
        self.lines.append(f"{case.method} {case.formatted_path} as {who.name}: {problem}")

    def check(self) -> None:
        assert self.sent > 0
        assert not self.lines, f"{len(self.lines)} of {self.sent} requests:\n" + "\n".join(
            self.lines[:40]
        )


def _short_waits(case: Case[Any]) -> None:
    """Long polls cut to 0.2 s (their defaults are 15 to 20 s)."""
    declared = {p.name for p in case.operation.query}
    for key in LONG_POLL:
        if key not in declared:
            continue
        if case.query is None:
            case.query = {}
        value = case.query.get(key)
        if value is None or (
            isinstance(value, int | float) and not isinstance(value, bool) and value > 0.2
        ):
            case.query[key] = 0.2


def _send(case: Case[Any], server: Server, who: Identity, **overrides: Any) -> requests.Response:
    kwargs = case.as_transport_kwargs(base_url=server.url)
    kwargs.update(overrides)
    return who.request(kwargs.pop("method"), kwargs.pop("url"), timeout=30, **kwargs)


def _error_of(response: requests.Response) -> tuple[str, dict[str, Any]]:
    try:
        body = response.json()
    except ValueError:
        return "", {}
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return "", {}
    return body["error"], body


def _judge(
    case: Case[Any], response: requests.Response, who: Identity, wrong_role: bool
) -> str | None:
    """What is wrong with ``response`` to ``case``, or None."""
    status = response.status_code
    if status >= 500:
        return f"{status} {response.text[:300]}"
    if status < 400:
        return "a success for a caller of the wrong role" if wrong_role else None
    error, body = _error_of(response)
    if len(error) < 10:
        return f"{status} without an error that says why: {response.text[:300]}"
    if wrong_role and status not in (403, 422):
        return f"{status} for a caller of the wrong role: {error[:200]}"
    if status == 403 and "certificate" not in error and who.name.split()[0] not in error:
        return f"403 that names neither the caller nor why: {error[:200]}"
    if status == 422:
        fields = body.get("fields")
        if not fields or not all(isinstance(f, dict) and f.get("field") for f in fields):
            return f"422 that names no field: {response.text[:300]}"
        if not all(str(f["field"]) in error for f in fields):
            return f"422 whose message leaves out a field: {error[:300]}"
    if status == 404:
        things = [urllib.parse.unquote(str(v)) for v in (case.path_parameters or {}).values()]
        if things and not any(t[:12] in error for t in things):
            return f"404 that does not name what is missing: {error[:300]}"
    return None


def _operations(server: Server, caller: Identity) -> Iterator[Any]:
    schema = schemathesis.openapi.from_url(
        server.url + "/openapi.json", verify=caller.ca, cert=caller.cert, timeout=10
    )
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"{server.name}'s schema: {result!r}"
        yield result.ok()


def _fuzz(
    op: Any,
    server: Server,
    who: Identity,
    findings: Findings,
    *,
    modes: tuple[GenerationMode, ...],
    examples: int,
    wrong_role: bool,
) -> None:
    for mode in modes:

        @_settings(examples)
        @given(op.as_strategy(generation_mode=mode))
        def run(case: Case[Any]) -> None:
            _short_waits(case)
            findings.sent += 1
            try:
                response = _send(case, server, who)
            except requests.RequestException as exc:
                findings.add(case, who, f"no answer (connection dropped): {exc!r}"[:300])
                return
            problem = _judge(case, response, who, wrong_role)
            if problem is not None:
                findings.add(case, who, problem)

        with contextlib.suppress(Unsatisfiable):  # no invalid requests without parameters
            run()


# -- who may call what ----------------------------------------------------------------------


# what a silo may read too: the jobs that run in it (a list, or one job) and its status
_READ_BY_ALL = {"/v1/whoami", "/v1/jobs", "/v1/status", "/v1/jobs/{job_id}"}


def _orchestrator_roles(method: str, path: str) -> tuple[str, tuple[str, ...]]:
    """The identity a route is for, and identities it must refuse."""
    if method == "GET" and path in _READ_BY_ALL:
        return "alice", ("silo-a admin",)  # a certificate of the CA, of no participant
    if path.startswith("/v1/agent/"):
        return "silo-a", ("alice", "silo-a admin")
    if path.startswith("/v1/members"):  # the federation's members: its administrator's
        return "carol", ("alice", "silo-a")
    return "alice", ("silo-a", "silo-a admin")


def _approval_roles(method: str, path: str) -> tuple[str, tuple[str, ...]]:
    if method == "POST" and path == "/v1/requests":
        return "silo-a", ("silo-a admin", "alice", "silo-b")
    if method == "GET" and path == "/v1/requests/{request_id}":
        return "silo-a admin", ("alice", "silo-b")
    return "silo-a admin", ("silo-a", "alice", "silo-b")


Roles = Callable[[Any], tuple[str, tuple[str, ...]]]
ROLES: dict[str, Roles] = {
    "orchestrator": lambda op: _orchestrator_roles(op.method.upper(), op.path),
    "approval": lambda op: _approval_roles(op.method.upper(), op.path),
}


@pytest.mark.parametrize("name", ["orchestrator", "approval"])
def test_every_route_answers_its_schema_with_a_success_or_a_clear_4xx(
    servers: Servers, name: str
) -> None:
    server: Server = getattr(servers, name)
    ids = servers.identities
    findings = Findings()
    operations = list(
        _operations(server, ids["alice"] if name == "orchestrator" else ids["silo-a"])
    )
    assert len(operations) >= (18 if name == "orchestrator" else 5)
    for op in operations:
        right, wrong = ROLES[name](op)
        _fuzz(
            op,
            server,
            ids[right],
            findings,
            modes=(GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
            examples=EXAMPLES,
            wrong_role=False,
        )
        for other in wrong:
            _fuzz(
                op,
                server,
                ids[other],
                findings,
                modes=(GenerationMode.POSITIVE,),
                examples=max(2, EXAMPLES // 4),
                wrong_role=True,
            )
    findings.check()
    assert_healthy(server, ids["alice" if name == "orchestrator" else "silo-a admin"])


# -- hostile bodies -------------------------------------------------------------------------

MARK = "\u2603fuzz-mark\u2603"

# raw JSON put in place of one value; each is refused, naming that value's field
REFUSED = {
    "NaN": "finite",
    "Infinity": "finite",
    "-Infinity": "finite",
    "1e999": "finite",
    "-1e999": "finite",
    '"\\ud800"': "surrogate",
    '"ok \\udfff ok"': "surrogate",
    '{"\\udc00": 1}': "surrogate",
    "123456789012345678901234567890": "2**63",
    "-9223372036854775809": "2**63",
    "[" * 80 + "]" * 80: "nested deeper",
}
# raw JSON that is valid and finite: answered with a success or a 4xx, never a 5xx
ACCEPTABLE = (
    "1.5e308",
    "-1.7976931348623157e308",
    "5e-324",
    "9223372036854775807",
    '""',
    '"\\u0000"',
    '"\\ud83d\\ude00"',
    "null",
    "true",
    "[]",
    "{}",
    '"' + "x" * 100_000 + '"',
)


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _leaves(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _leaves(child, (*path, i))


def _replaced(body: Any, path: tuple[Any, ...]) -> Any:
    if not path:
        return MARK
    copy = json.loads(json.dumps(body))
    parent = copy
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = MARK
    return copy


def _json_operations(servers: Servers) -> Iterator[tuple[Server, Any, Identity]]:
    ids = servers.identities
    for name in ("orchestrator", "approval"):
        server: Server = getattr(servers, name)
        caller = ids["alice"] if name == "orchestrator" else ids["silo-a"]
        for op in _operations(server, caller):
            if op.body:
                right, _ = ROLES[name](op)
                yield server, op, ids[right]


def _hostile(server: Server, op: Any, who: Identity, findings: Findings) -> None:
    """Put each hostile value in turn in a field of ``op``'s body, drawn by hypothesis."""

    @_settings(EXAMPLES * 2)
    @given(
        case=op.as_strategy(generation_mode=GenerationMode.POSITIVE),
        data=st.data(),
        token=st.sampled_from(sorted(REFUSED) + list(ACCEPTABLE)),
    )
    def run(case: Case[Any], data: st.DataObject, token: str) -> None:
        if not isinstance(case.body, dict | list):
            return
        _short_waits(case)
        path = data.draw(st.sampled_from(list(_leaves(case.body))))
        text = json.dumps(_replaced(case.body, path)).replace(json.dumps(MARK), token)
        findings.sent += 1
        try:
            response = _send(
                case,
                server,
                who,
                json=None,
                data=text.encode(),
                headers={"content-type": "application/json"},
            )
        except requests.RequestException as exc:
            findings.add(case, who, f"no answer (connection dropped): {exc!r}"[:300])
            return
        problem = _judge(case, response, who, wrong_role=False)
        if problem is None and token in REFUSED:
            error, _ = _error_of(response)
            where = ".".join(str(p) for p in ("body", *path))
            if response.status_code != 422 or REFUSED[token] not in error:
                problem = f"{token[:20]} at {where} not refused: {response.status_code} {error}"
            elif REFUSED[token] != "nested deeper" and where not in error:
                problem = f"the refusal of {token[:20]} does not name {where}: {error}"
        if problem is not None:
            findings.add(case, who, f"[{token[:24]}] {problem}")

    run()


def test_hostile_values_in_every_body_field_are_refused_naming_the_field(
    servers: Servers,
) -> None:
    findings = Findings()
    for server, op, who in _json_operations(servers):
        _hostile(server, op, who, findings)
    findings.check()
    assert_healthy(servers.orchestrator, servers.identities["alice"])
    assert_healthy(servers.approval, servers.identities["silo-a"])


WHOLE_BODIES = {
    b"\xff\xfe{}": "not UTF-8",
    b'{"ok": "\xed\xa0\x80"}': "not UTF-8",  # a surrogate encoded as UTF-8 bytes
    b'{"ok": tru': "not valid JSON",
    b"[" * 3000 + b"]" * 3000: "nested deeper",
    b'{"a": ' * 3000 + b"1" + b"}" * 3000: "nested deeper",
}


@pytest.mark.parametrize("raw", list(WHOLE_BODIES), ids=list(map(str, range(len(WHOLE_BODIES)))))
def test_bodies_that_are_not_json_are_refused_as_such(servers: Servers, raw: bytes) -> None:
    for server, op, who in _json_operations(servers):
        path = op.path.replace("{", "").replace("}", "")  # any id: the body is read first
        response = who.request(
            op.method.upper(),
            server.url + path,
            data=raw,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        error, _ = _error_of(response)
        assert response.status_code == 422, (op.method, op.path, response.text[:300])
        assert WHOLE_BODIES[raw] in error and "body" in error, error


@pytest.mark.parametrize("hours", [1e308, 876_001])
def test_an_approval_that_would_lapse_past_every_date_is_refused(
    servers: Servers, hours: float
) -> None:
    answer = servers.identities["silo-a admin"].request(
        "POST",
        servers.approval.url + "/v1/requests/no-such-request/approve",
        json={"expires_in_hours": hours},
        timeout=20,
    )
    assert answer.status_code == 422, answer.text
    assert "body.expires_in_hours" in answer.json()["error"]
