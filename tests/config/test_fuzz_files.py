"""Every file a person writes, fuzzed: each ends in a ConfigError naming the file, never a
traceback.

Documents are drawn two ways: hostile bytes and text as the whole file, and valid files
(the demo federation, the pneumonia job, the default policy) with one node replaced,
removed or joined by a key, where keys come from the spec's own models and values from a
hostile mix (infinite and huge numbers, deep nesting, unicode, wrong types). The sweep
option (``KEY=V1,V2``) is fuzzed the same way. Hypothesis runs derandomized, so a failure
reproduces.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from fedsilo.approval import Policy, load_policy
from fedsilo.approval._default import default_policy_yaml
from fedsilo.config import FederationSpec, load_federation
from fedsilo.config._yamlio import _model_at
from fedsilo.errors import ConfigError
from fedsilo.jobs import JobSpec, load_job
from fedsilo.pipelines._sweep import override_spec, parse_sweep

ROOT = Path(__file__).resolve().parents[2]
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

Loader = Callable[[Path], Any]
KINDS: dict[str, tuple[Loader, type[BaseModel], str]] = {
    "federation": (
        load_federation,
        FederationSpec,
        (Path(__file__).parent / "demo_federation.yaml").read_text(encoding="utf-8"),
    ),
    "job": (load_job, JobSpec, (ROOT / "examples/pneumonia/job.yaml").read_text("utf-8")),
    "policy": (load_policy, Policy, default_policy_yaml({})),
}

_numbers = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1e999", "-.inf", ".nan", "9" * 5000, "0x7fffffffffffffffff"]),
)
_texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["../../../etc", "/", "/etc/fedsilo", "~/../../root", "a\u202eb", "日本語", "", " "]
    ),
)
_scalars = st.one_of(st.none(), st.booleans(), _numbers, _texts)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


_DEEP = re.compile(r"deep-nesting-(\d+)")


def _deep(depth: int) -> str:
    """A marker that :func:`_mutated` turns into ``depth`` nested flow lists and mappings."""
    return f"deep-nesting-{depth}"


def _nest(match: re.Match[str]) -> str:
    depth = int(match.group(1))
    return "{k: [" * (depth // 2) + "x" + "]}" * (depth // 2)


_hostile = st.one_of(_values, st.integers(min_value=33, max_value=5000).map(_deep))


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for position, value in enumerate(doc):
            found += _paths(value, (*prefix, position))
    return found


@st.composite
def _mutated(draw: st.DrawFn, kind: str) -> str:
    """The kind's valid file with one node replaced, removed, or given a sibling key."""
    _, model, text = KINDS[kind]
    doc = copy.deepcopy(yaml.safe_load(text))
    path = draw(st.sampled_from(_paths(doc)))
    parent: Any = doc
    for part in path[:-1]:
        parent = parent[part]
    action = draw(st.sampled_from(["replace", "remove", "add"] if path else ["add"]))
    if action == "replace":
        parent[path[-1]] = draw(_hostile)
    elif action == "remove":
        del parent[path[-1]]
    else:
        target = parent[path[-1]] if path else doc
        if isinstance(target, dict):
            owner = _model_at(model, tuple(p for p in path if isinstance(p, str)))
            known = list(owner.model_fields) if owner is not None else []
            names = st.text(min_size=1, max_size=12)
            key = draw(st.sampled_from(known) | names if known else names)
            target[key] = draw(_hostile)
        elif isinstance(target, list):
            target.append(draw(_hostile))
        else:
            parent[path[-1]] = [target, draw(_hostile)]
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=1 << 20)
    return _DEEP.sub(_nest, text)


def _check(loader: Loader, path: Path) -> None:
    try:
        loader(path)
    except ConfigError as exc:
        assert exc.file == str(path), exc
        if exc.field is not None:
            assert exc.line is not None, exc
        assert "Traceback" not in str(exc)
        assert len(str(exc)) < 2000, "the message is bounded"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("fuzz")
    (base / "task").mkdir()
    (base / "task" / "task.py").write_text("def model(ctx):\n    return None\n")
    return base


@pytest.mark.parametrize("kind", sorted(KINDS))
@FUZZ
@given(data=st.data())
def test_a_mutated_file_is_refused_by_field_and_line_or_accepted(
    kind: str, folder: Path, data: st.DataObject
) -> None:
    text = data.draw(_mutated(kind))
    path = folder / f"{kind}.yaml"
    try:
        path.write_text(text, encoding="utf-8")
    except UnicodeEncodeError:  # a lone surrogate cannot be written as UTF-8
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _check(KINDS[kind][0], path)


@pytest.mark.parametrize("kind", sorted(KINDS))
@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_bytes_of_any_kind_are_refused_with_the_file_named(
    kind: str, folder: Path, raw: bytes
) -> None:
    path = folder / f"raw-{kind}.yaml"
    path.write_bytes(raw)
    _check(KINDS[kind][0], path)


HOSTILE_FILES = {
    "binary": b"\x7fELF\x02\x01\x01\x00\x00\x00\xff\xfe",
    "a NUL inside": b"name: a\x00b\n",
    "latin-1": "name: caf\xe9\n".encode("latin-1"),
    "5,000 nested lists": b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "5,000 nested mappings": b"a: " + b"{b: " * 5000 + b"1" + b"}" * 5000 + b"\n",
    "an integer of 5,000 digits": b"rounds: " + b"9" * 5000 + b"\n",
    "a python tag": b"!!python/object/apply:os.system [echo hi]\n",
    "an unhashable key": b"? [a, b]\n: 1\n",
    "a billion laughs": b"".join(
        [b"a0: &a0 [x, x, x, x, x, x, x, x, x]\n"]
        + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n".encode() for i in range(1, 9)]
    ),
    "2 MiB": b"name: " + b"a" * (2 << 20) + b"\n",
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_hand_made_hostile_files_are_refused(kind: str, name: str, folder: Path) -> None:
    path = folder / f"hostile-{kind}.yaml"
    path.write_bytes(HOSTILE_FILES[name])
    with pytest.raises(ConfigError) as caught:
        KINDS[kind][0](path)
    assert caught.value.file == str(path)


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (("lr: 0.001", "lr: .inf"), "hyperparameters.lr", "not a finite number"),
        (("lr: 0.001", "lr: 1e999"), "hyperparameters.lr", "not a finite number"),
        (("rounds: 10", "rounds: 99999999999999999999"), "rounds", "too large"),
        (("rounds: 10", "rouns: 10"), "rouns", "did you mean 'rounds'?"),
        (("rounds: 10", "10: 10"), "10", "not a name"),
    ],
)
def test_job_spec_errors_name_the_field_and_its_own_line(
    folder: Path, edit: tuple[str, str], field: str, words: str
) -> None:
    text = KINDS["job"][2].replace(*edit)
    path = folder / "job-edit.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_job(path)
    error = caught.value
    assert error.field == field and words in error.message, error
    line = next(n for n, t in enumerate(text.splitlines(), 1) if edit[1] in t)
    assert error.line == line, error


@FUZZ
@given(key=st.text(max_size=30), value=st.one_of(_texts, _numbers.map(str)))
def test_a_sweep_of_any_key_and_value_is_refused_or_applied(key: str, value: str) -> None:
    spec = load_job(ROOT / "examples/pneumonia/job.yaml")[0]
    try:
        name, values = parse_sweep(f"{key}={value}")
        for item in values:
            changed = override_spec(spec, name, item)
            assert all(
                math.isfinite(v)
                for v in changed.hyperparameters.model_dump().values()
                if isinstance(v, float)
            )
    except ConfigError as exc:
        assert "Traceback" not in str(exc)
