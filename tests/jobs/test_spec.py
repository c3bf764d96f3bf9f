"""Job specs: a valid spec loads; every mistake is a ConfigError naming file, field and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsilo.errors import ConfigError
from fedsilo.jobs import Hyperparameters, JobSpec, Weighting, load_job
from fedsilo.strategies import FedAvgSpec

SPEC = """\
name: digits
code: code
entrypoint: task
silos:
  - hospital-a
  - hospital-b
inputs:
  train: digits-train
  test: digits-test
silo_inputs:
  hospital-b:
    train: digits-train-b
rounds: 3
strategy:
  weighting: explicit
  weights:
    hospital-a: 2
    hospital-b: 1
hyperparameters:
  lr: 0.05
  epochs: 2
  batch_size: 16
  seed: 7
  extra:
    momentum: 0.9
    optimizer: sgd
"""


def _write(tmp_path: Path, text: str, *, code: bool = True) -> Path:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    if code:
        (project / "code").mkdir(exist_ok=True)
        (project / "code" / "task.py").write_text("def model(ctx): ...\n")
    path = project / "job.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _edit(old: str, new: str) -> str:
    assert SPEC.count(old) == 1, old
    return SPEC.replace(old, new)


def _lines(text: str, *starts: str) -> set[int]:
    """1-based numbers of the lines of ``text`` that begin (after indentation) with a prefix."""
    return {
        number
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip().startswith(starts)
    }


def test_a_valid_spec_loads(tmp_path: Path) -> None:
    path = _write(tmp_path, SPEC)
    spec, code_dir = load_job(path)
    assert code_dir == (tmp_path / "project" / "code").resolve()
    assert code_dir.is_absolute()
    assert spec.name == "digits"
    assert spec.entrypoint == "task"
    assert spec.silos == ("hospital-a", "hospital-b")
    assert spec.rounds == 3
    assert spec.strategy == FedAvgSpec(
        weighting=Weighting.EXPLICIT, weights={"hospital-a": 2.0, "hospital-b": 1.0}
    )
    assert spec.hyperparameters == Hyperparameters(
        lr=0.05, epochs=2, batch_size=16, seed=7, extra={"momentum": 0.9, "optimizer": "sgd"}
    )


def test_defaults_for_a_minimal_spec(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: tiny\ncode: code\nsilos: [only]\nrounds: 1\n")
    spec, _ = load_job(path)
    assert spec.entrypoint == "task"
    assert spec.strategy.weighting is Weighting.SAMPLES
    assert spec.strategy.weights is None
    assert spec.hyperparameters == Hyperparameters()
    assert spec.inputs_for("only") == {}


def test_code_folder_is_relative_to_the_spec_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared" / "model-code"
    shared.mkdir(parents=True)
    (shared / "task.py").write_text("def model(ctx): ...\n")
    path = _write(tmp_path, _edit("code: code", "code: ../shared/model-code"), code=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _, code_dir = load_job(Path("..") / "project" / "job.yaml")
    assert code_dir == shared.resolve()
    _, code_dir = load_job(str(path))
    assert code_dir == shared.resolve()


def test_inputs_for_applies_per_silo_overrides(tmp_path: Path) -> None:
    spec, _ = load_job(_write(tmp_path, SPEC))
    assert spec.inputs_for("hospital-a") == {"train": "digits-train", "test": "digits-test"}
    assert spec.inputs_for("hospital-b") == {"train": "digits-train-b", "test": "digits-test"}
    # the override does not leak into the shared inputs
    assert spec.inputs == {"train": "digits-train", "test": "digits-test"}


# (id, spec text, field expected, lines the error may point at, words of the message)
_FIELD_CASES = [
    (
        "unknown-top-level-key",
        _edit("rounds: 3\n", "rounds: 3\nrestarts: 2\n"),
        "restarts",
        ("restarts:",),
        "unknown key 'restarts'",
    ),
    (
        "unknown-hyperparameter",
        _edit("  seed: 7\n", "  seed: 7\n  momentum: 0.9\n"),
        "hyperparameters.momentum",
        ("momentum: 0.9",),
        "unknown key 'momentum'",
    ),
    (
        "unknown-strategy-key",
        _edit("  weighting: explicit\n", "  weighting: explicit\n  mu: 0.1\n"),
        "strategy.mu",
        ("mu:",),
        "unknown key 'mu'",
    ),
    (
        "explicit-without-weights",
        _edit("  weights:\n    hospital-a: 2\n    hospital-b: 1\n", ""),
        "strategy",
        ("strategy:", "weighting:"),
        "needs 'weights'",
    ),
    (
        "rounds-zero",
        _edit("rounds: 3", "rounds: 0"),
        "rounds",
        ("rounds:",),
        "greater than or equal to 1",
    ),
    (
        "lr-zero",
        _edit("  lr: 0.05", "  lr: 0"),
        "hyperparameters.lr",
        ("lr:",),
        "greater than 0",
    ),
    (
        "round-timeout-zero",
        _edit("rounds: 3\n", "rounds: 3\nround_timeout: 0\n"),
        "round_timeout",
        ("round_timeout:",),
        "greater than 0",
    ),
    (
        "share-with-not-a-name",
        _edit("rounds: 3\n", "rounds: 3\nshare_with: [Bob]\n"),
        "share_with",
        ("share_with:",),
        "share_with",
    ),
    (
        "lr-negative",
        _edit("  lr: 0.05", "  lr: -0.1"),
        "hyperparameters.lr",
        ("lr:",),
        "greater than 0",
    ),
    (
        "missing-code-folder",
        _edit("code: code", "code: no-such-code"),
        "code",
        ("code:",),
        "'no-such-code' does not exist",
    ),
    (
        "missing-entrypoint-module",
        _edit("entrypoint: task", "entrypoint: trainer"),
        "entrypoint",
        ("entrypoint:",),
        "'trainer.py'",
    ),
]


# the same, for problems only a model validator across fields can see
_CROSS_FIELD_CASES = [
    (
        "weights-name-unknown-silo",
        _edit("    hospital-b: 1", "    hospital-c: 1"),
        "strategy.weights",
        ("strategy:", "weights:", "hospital-c:"),
        "silo 'hospital-c', which is not in 'silos' (hospital-a, hospital-b)",
    ),
    (
        "silo-listed-twice",
        _edit("  - hospital-b\n", "  - hospital-b\n  - hospital-a\n"),
        "silos",
        ("silos:", "- hospital-a", "- hospital-b"),
        "'hospital-a' is listed twice",
    ),
    (
        "min-silos-above-the-silos",
        _edit("rounds: 3\n", "rounds: 3\nmin_silos: 3\n"),
        "min_silos",
        ("min_silos:",),
        "runs in 2 silo(s); at most 2",
    ),
    (
        "min-silos-with-secure-aggregation",
        _edit("rounds: 3\n", "rounds: 3\nmin_silos: 1\nprivacy: {secure_aggregation: {}}\n"),
        "min_silos",
        ("min_silos:",),
        "set privacy.secure_aggregation.threshold instead of min_silos",
    ),
    (
        "share-with-twice",
        _edit("rounds: 3\n", "rounds: 3\nshare_with: [bob, bob]\n"),
        "share_with",
        ("share_with:",),
        "'bob' is listed twice",
    ),
    (
        "silo-inputs-unknown-silo",
        _edit("  hospital-b:\n    train: digits-train-b", "  hospital-z:\n    train: x"),
        "silo_inputs",
        ("silo_inputs:", "hospital-z:"),
        "hospital-z",
    ),
]


def _load_error(tmp_path: Path, text: str) -> tuple[Path, ConfigError]:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as excinfo:
        load_job(path)
    return path, excinfo.value


@pytest.mark.parametrize(
    ("text", "words"),
    [pytest.param(text, words, id=id_) for id_, text, _, _, words in _FIELD_CASES]
    + [pytest.param(text, words, id=id_) for id_, text, _, _, words in _CROSS_FIELD_CASES],
)
def test_errors_name_the_file_and_the_problem(tmp_path: Path, text: str, words: str) -> None:
    path, error = _load_error(tmp_path, text)
    assert error.file == str(path)
    assert words in error.message
    assert str(path) in str(error)


@pytest.mark.parametrize(
    ("text", "field", "starts"),
    [pytest.param(text, field, starts, id=id_) for id_, text, field, starts, _ in _FIELD_CASES]
    + [
        pytest.param(text, field, starts, id=id_)
        for id_, text, field, starts, _ in _CROSS_FIELD_CASES
    ],
)
def test_errors_name_the_field_and_its_line(
    tmp_path: Path, text: str, field: str, starts: tuple[str, ...]
) -> None:
    _, error = _load_error(tmp_path, text)
    assert error.field is not None
    assert error.field == field or error.field.startswith(field + ".")
    assert error.line in _lines(text, *starts)
    assert f"field '{error.field}'" in str(error)


def test_missing_default_entrypoint_is_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: tiny\ncode: code\nsilos: [only]\nrounds: 1\n")
    (path.parent / "code" / "task.py").unlink()
    with pytest.raises(ConfigError, match=r"'task\.py'") as excinfo:
        load_job(path)
    assert excinfo.value.file == str(path)
    assert excinfo.value.field == "entrypoint"


def test_a_missing_spec_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as excinfo:
        load_job(tmp_path / "absent.yaml")
    assert excinfo.value.file == str(tmp_path / "absent.yaml")


def test_weights_only_go_with_explicit_weighting(tmp_path: Path) -> None:
    text = _edit("  weighting: explicit", "  weighting: samples")
    path, error = _load_error(tmp_path, text)
    assert error.file == str(path)
    assert error.field is not None and error.field.startswith("strategy")
    assert "explicit" in error.message


def test_spec_models_reject_unknown_keys_directly() -> None:
    """The frozen models are what the orchestrator re-validates; they refuse extras too."""
    with pytest.raises(ValueError, match="bogus"):
        JobSpec.model_validate({"name": "j", "code": "c", "silos": ["a"], "rounds": 1, "bogus": 1})


def test_preprocessing_with_several_ranks_is_refused_naming_the_field(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "task.py").write_text("")
    job.write_text(
        "name: j\ncode: task\nsilos: [a]\nrounds: 1\nresources:\n  preprocess: {workers: 2}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_job(job)
    assert caught.value.field == "resources.preprocess.workers"
    assert caught.value.line == 6
    assert "preprocessing runs once, as one process" in str(caught.value)
