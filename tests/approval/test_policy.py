"""Policy files: parsed once with clear errors; rules evaluated in order, purely."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import pytest

from fedsilo.approval import (
    DEFAULT_RULE,
    CodeChange,
    Decision,
    Declassification,
    InputRef,
    OutputRef,
    Policy,
    PrivacySettings,
    SigningStatus,
    default_policy_yaml,
    load_policy,
)
from fedsilo.config import Classification, ResourceGrant
from fedsilo.errors import ConfigError
from fedsilo.jobs import ModelLayout, TensorLayout
from tests.approval.conftest import SILO, make_request

S, E = Classification.SENSITIVE, Classification.EYES_ON
KEY = "ed25519 " + base64.b64encode(bytes(range(32))).decode()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def policy(text: str) -> Policy:
    """A policy from YAML text, through the real loader."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return load_policy(write(Path(folder), text))


# -- parsing errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field", "line", "words"),
    [
        (
            """\
            rules:
              - name: a
                decision: approve
                whenn: {author_in: [x]}
            """,
            "rules.0.whenn",
            4,
            "unknown key 'whenn'",
        ),
        (
            """\
            rules:
              - name: a
                decision: maybe
            """,
            "rules.0.decision",
            3,
            "'maybe' is not a decision",
        ),
        (
            """\
            rules:
              - name: a
                decision: reject
              - name: a
                decision: approve
            """,
            "rules.1.name",
            4,
            "used twice",
        ),
        (
            """\
            rules:
              - name: a
                when: {output_leaving: [secret]}
                decision: reject
            """,
            "rules.0.when.output_leaving.0",
            3,
            "'secret' is not a",
        ),
        (
            """\
            rules:
              - name: a
                when:
                  signature: [unsigned, forged]
                decision: reject
            """,
            "rules.0.when.signature.1",
            4,
            "'forged' is not a signature",
        ),
        (
            """\
            rules:
              - name: a
                when: {epsilon_abov: 3}
                decision: reject
            """,
            "rules.0.when.epsilon_abov",
            3,
            "unknown key 'epsilon_abov'",
        ),
        (
            """\
            trusted_keys:
              alice: ed25519 not-base64
            """,
            "trusted_keys.alice",
            2,
            "Ed25519",
        ),
    ],
)
def test_a_bad_policy_names_file_line_and_field(
    tmp_path: Path, text: str, field: str, line: int, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    error = caught.value
    assert error.file == str(path)
    assert error.field == field
    assert error.line == line
    assert words in error.message


def test_a_missing_policy_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_policy(tmp_path / "policy.yaml")


# -- evaluation -----------------------------------------------------------------------------


def decide(text: str, **changes: object) -> tuple[Decision, str, str]:
    return policy(text).evaluate(make_request(**changes), silo=SILO)


def only_rule(when: str) -> str:
    return f"rules:\n  - name: hit\n    when: {when}\n    decision: reject\ndefault: approve\n"


FOREIGN = (InputRef(storage="silo-b", dataset="train", classification=None),)
OWN_EYES_ON = (InputRef(storage=SILO, dataset="public", classification=E),)
SENSITIVE_LEAVING = (OutputRef(name="model", destination="orchestrator", classification=S),)
SENSITIVE_STAYING = (OutputRef(name="model", destination=SILO, classification=S),)
TO_EYES_ON = (Declassification(output="model", from_=S, to=E),)
ALLOWED = "[{output: model, from: sensitive, to: intermediate}]"


def _granted(**fields: object) -> dict[str, ResourceGrant]:
    base: dict[str, object] = {"compute": "silo-a-gpu", "memory": 8 << 30, "processes": 512}
    return {"train": ResourceGrant.model_validate({**base, **fields})}


TWO_GPUS = _granted(gpus=1, workers=2, threads=4, max_step_seconds=3600)


def _outputs(*shape: int, metrics: tuple[str, ...] | None = ("accuracy",)) -> tuple[OutputRef, ...]:
    """A model of one float32 tensor of ``shape`` and metrics of these names, leaving."""
    tensor = TensorLayout(name="w", shape=shape, dtype="float32")
    model = ModelLayout(tensors=(tensor,), parameters=tensor.values, bytes=tensor.bytes)
    return (
        OutputRef(
            name="model",
            destination="orchestrator",
            classification=Classification.INTERMEDIATE,
            bytes=model.bytes,
            model=model,
        ),
        OutputRef(
            name="metrics",
            destination="orchestrator",
            classification=Classification.INTERMEDIATE,
            bytes=8 * len(metrics) if metrics is not None else 4608,
            metric_names=metrics,
        ),
    )


SAME_CODE = CodeChange(previous_job_id="job-0", previous_manifest="m" * 64)
CHANGED_CODE = SAME_CODE.model_copy(update={"modified": ("task.py",), "diff": "-a\n+b\n"})


@pytest.mark.parametrize(
    ("when", "hit", "miss"),
    [
        ("{signature: [unsigned]}", {"signing": SigningStatus.UNSIGNED}, {}),
        ("{author_in: [mallory]}", {"author": "mallory"}, {}),
        ("{author_not_in: [alice]}", {"author": "bob"}, {}),
        ("{reader_not_in: [alice, bob]}", {"readers": ("carol",)}, {"readers": ("bob",)}),
        ("{reader_not_in: [alice, bob]}", {"readers": ("*",)}, {}),
        ("{reader_not_in: [bob]}", {}, {"author": "bob"}),  # the author reads them too
        ("{reader_not_in: [alice]}", {"readers": ("bob",)}, {"readers": ()}),
        ("{job_name_in: [forbidden]}", {"job_name": "forbidden"}, {}),
        ("{input_outside_silo: true}", {"inputs": FOREIGN}, {}),
        ("{input_outside_silo: false}", {}, {"inputs": FOREIGN}),
        ("{input_classification: [eyes_on]}", {"inputs": OWN_EYES_ON}, {}),
        ("{output_leaving: [sensitive]}", {"outputs": SENSITIVE_LEAVING}, {}),
        (
            "{output_leaving: [sensitive]}",
            {"outputs": SENSITIVE_LEAVING},
            {"outputs": SENSITIVE_STAYING},
        ),
        ("{declassification_any: true}", {}, {"declassifications": ()}),
        ("{declassification_any: false}", {"declassifications": ()}, {}),
        (f"{{declassification_not_in: {ALLOWED}}}", {"declassifications": TO_EYES_ON}, {}),
        ("{epsilon_above: 8}", {"privacy": PrivacySettings(target_epsilon=9.5)}, {}),
        (
            "{epsilon_above: 8}",
            {"privacy": PrivacySettings(target_epsilon=9.5)},
            {"privacy": PrivacySettings(target_epsilon=8.0)},
        ),
        ("{epsilon_missing: true}", {}, {"privacy": PrivacySettings(target_epsilon=1.0)}),
        ("{resources_above: {gpus: 1}}", {"resources": TWO_GPUS}, {"resources": _granted()}),
        (
            "{resources_above: {memory: 16GiB}}",
            {"resources": _granted(memory=32 << 30)},
            {"resources": TWO_GPUS},
        ),
        (
            "{resources_above: {max_step_seconds: 2h}}",
            {"resources": _granted()},  # a step without a deadline is above any bound
            {"resources": TWO_GPUS},
        ),
        ("{resources_above: {threads: 4}}", {"resources": TWO_GPUS}, {"resources": _granted()}),
        (
            "{author_in: [bob], job_name_in: [x]}",
            {"author": "bob", "job_name": "x"},
            {"author": "bob"},
        ),
        ("{code_changed: true}", {"code_change": CHANGED_CODE}, {"code_change": SAME_CODE}),
        ("{code_changed: true}", {"code_change": CodeChange()}, {"code_change": SAME_CODE}),
        ("{code_changed: false}", {"code_change": SAME_CODE}, {"code_change": CHANGED_CODE}),
        ("{output_bytes_above: 1MiB}", {"outputs": _outputs(512, 1024)}, {"outputs": _outputs(8)}),
        (
            "{output_bytes_above: 1KiB}",
            {"outputs": _outputs(8, metrics=None)},  # undeclared names could carry anything
            {"outputs": _outputs(8)},
        ),
        ("{output_bytes_above: 100}", {}, {"outputs": _outputs(8)}),  # no MODEL.json: no size
    ],
)
def test_each_condition_holds_only_when_its_facts_do(
    when: str, hit: dict[str, object], miss: dict[str, object]
) -> None:
    decision, rule, reason = decide(only_rule(when), **hit)
    assert (decision, rule) == (Decision.REJECT, "hit")
    assert "rule 'hit' rejects" in reason
    assert decide(only_rule(when), **miss)[:2] == (Decision.APPROVE, DEFAULT_RULE)


def test_the_first_matching_rule_decides_and_its_reason_is_given() -> None:
    text = """\
    rules:
      - name: first
        when: {author_in: [alice]}
        decision: manual
        reason: alice's jobs go to a person
      - name: second
        when: {author_in: [alice]}
        decision: reject
    """
    assert decide(text) == (Decision.MANUAL, "first", "alice's jobs go to a person")


def test_a_rule_without_when_matches_every_job() -> None:
    text = "rules:\n  - name: all\n    decision: approve\n"
    decision, rule, reason = decide(text, author="anyone")
    assert (decision, rule) == (Decision.APPROVE, "all")
    assert "every job" in reason


def test_the_default_decides_when_no_rule_matches_and_defaults_to_reject() -> None:
    decision, rule, reason = decide("rules: []\n")
    assert (decision, rule) == (Decision.REJECT, DEFAULT_RULE)
    assert "no rule" in reason
    assert decide("default: manual\n")[0] is Decision.MANUAL


def test_a_resource_bound_holds_the_job_for_a_person_and_says_what_is_above_it() -> None:
    text = """\
    rules:
      - name: big-jobs
        when: {resources_above: {gpus: 1, memory: 64GiB}}
        decision: manual
    default: approve
    """
    decision, rule, reason = decide(text, resources=TWO_GPUS)
    assert (decision, rule) == (Decision.MANUAL, "big-jobs")
    assert "step 'train' would get gpus 2 on compute 'silo-a-gpu', above 1" in reason
    with pytest.raises(ConfigError, match="at least one bound"):
        policy("rules:\n  - {name: x, when: {resources_above: {}}, decision: reject}\n")


def test_a_generated_reason_names_what_matched() -> None:
    _, _, reason = decide(only_rule("{input_outside_silo: true}"), inputs=FOREIGN)
    assert "silo-b:train" in reason and SILO in reason


# -- the default policy -----------------------------------------------------------------------


@pytest.fixture
def default_policy(tmp_path: Path) -> Policy:
    path = tmp_path / "default.yaml"
    path.write_text(default_policy_yaml({"alice": KEY + " alice@example"}))
    return load_policy(path)


def test_the_default_policy_trusts_the_given_keys(default_policy: Policy) -> None:
    assert default_policy.trusted_keys == {"alice": KEY + " alice@example"}
    assert default_policy.default is Decision.REJECT


def test_the_default_policy_approves_a_signed_well_formed_job(default_policy: Policy) -> None:
    decision, rule, _ = default_policy.evaluate(make_request(), silo=SILO)
    assert (decision, rule) == (Decision.APPROVE, "everything-else")


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"signing": SigningStatus.UNSIGNED, "signing_key": None}, "code-must-be-signed"),
        ({"signing": SigningStatus.INVALID}, "code-must-be-signed"),
        ({"signing": SigningStatus.UNTRUSTED}, "code-must-be-signed"),
        ({"inputs": FOREIGN}, "inputs-from-this-silo-only"),
        ({"outputs": SENSITIVE_LEAVING}, "nothing-sensitive-leaves"),
        ({"declassifications": TO_EYES_ON}, "only-model-declassification"),
    ],
)
def test_the_default_policy_rejects_what_breaks_a_rule_of_a_silo(
    default_policy: Policy, changes: dict[str, object], rule: str
) -> None:
    decision, decided_by, reason = default_policy.evaluate(make_request(**changes), silo=SILO)
    assert (decision, decided_by) == (Decision.REJECT, rule)
    assert reason


def test_the_default_policy_without_keys_refuses_everything(tmp_path: Path) -> None:
    path = tmp_path / "default.yaml"
    path.write_text(default_policy_yaml({}))
    loaded = load_policy(path)
    assert loaded.trusted_keys == {}
    assert loaded.evaluate(make_request(signing=SigningStatus.UNTRUSTED), silo=SILO)[0] is (
        Decision.REJECT
    )


def test_odd_key_names_are_quoted_safely(tmp_path: Path) -> None:
    path = tmp_path / "default.yaml"
    path.write_text(default_policy_yaml({"a: b # c": KEY}))
    assert load_policy(path).trusted_keys == {"a: b # c": KEY}


def test_a_code_change_holds_the_job_and_the_reason_names_the_files_and_the_last_approval() -> None:
    text = """\
    rules:
      - name: changed-code-needs-a-person
        when: {code_changed: true}
        decision: manual
    default: approve
    """
    decision, rule, reason = decide(text, code_change=CHANGED_CODE)
    assert (decision, rule) == (Decision.MANUAL, "changed-code-needs-a-person")
    assert "task.py" in reason and "job-0" in reason and "digits" in reason
    _, _, first = decide(text, code_change=CodeChange())
    assert f"silo '{SILO}' approved no job named 'digits' before" in first
    assert decide(text, code_change=SAME_CODE)[:2] == (Decision.APPROVE, DEFAULT_RULE)


def test_an_output_size_bound_says_which_output_is_how_big() -> None:
    text = """\
    rules:
      - name: big-outputs
        when: {output_bytes_above: 1MiB}
        decision: manual
    default: approve
    """
    decision, rule, reason = decide(text, outputs=_outputs(512, 1024))
    assert (decision, rule) == (Decision.MANUAL, "big-outputs")
    assert "output 'model' would carry 2 MiB (524,288 parameters) an upload, above 1 MiB" in reason
    staying = tuple(o.model_copy(update={"destination": SILO}) for o in _outputs(512, 1024))
    assert decide(text, outputs=staying)[1] == DEFAULT_RULE  # nothing leaves: no size counts
    with pytest.raises(ConfigError, match="output_bytes_above") as caught:
        policy("rules:\n  - {name: x, when: {output_bytes_above: lots}, decision: manual}\n")
    assert "8GiB" in str(caught.value)
