"""Typos in the files a person writes (job spec, federation spec, policy): each error names
the file, the line and the field of the typo itself, and the name that was meant."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedsilo.approval import load_policy
from fedsilo.approval._default import default_policy_yaml
from fedsilo.config import load_federation
from fedsilo.errors import ConfigError
from fedsilo.jobs import load_job

EXAMPLE = Path(__file__).parents[2] / "examples" / "helloworld"
JOB = (EXAMPLE / "job.yaml").read_text()
FEDERATION = (EXAMPLE / "federation.yaml").read_text()
POLICY = default_policy_yaml({})

Loader = Callable[[Path], Any]


def _typo(text: str, old: str, new: str, marker: str) -> tuple[str, int]:
    """``text`` with ``old`` replaced by ``new`` once, and the line that holds ``marker``."""
    assert text.count(old) >= 1, old
    changed = text.replace(old, new, 1)
    lines = changed.splitlines()
    return changed, next(n for n, line in enumerate(lines, start=1) if marker in line)


# (file kind, the typo, what is written, what it becomes, the field named, the words said)
CASES = [
    (
        "job",
        "rouns",
        "rounds: 3",
        "rouns: 3",
        "rouns",
        "unknown key 'rouns' (did you mean 'rounds'?)",
    ),
    (
        "job",
        "fedavgg",
        "  name: fedavg",
        "  name: fedavgg",
        "strategy.name",
        "'fedavgg' is not a strategy (did you mean 'fedavg'?); use one of: fedavg, fedprox",
    ),
    (
        "job",
        "mu:",
        "  name: fedavg\n  weighting: uniform",
        "  name: fedprox\n  weighting: uniform\n  mu: 1",
        "strategy.mu",
        "unknown key 'mu'; allowed keys: name, proximal_mu",
    ),
    (
        "job",
        "epoch:",
        "  seed: 0",
        "  seed: 0\n  epoch: 2",
        "hyperparameters.epoch",
        "unknown key 'epoch' (did you mean 'epochs'?)",
    ),
    (
        "job",
        "modle",
        "  model: {classification: intermediate}",
        "  modle: {classification: intermediate}",
        "outputs.modle",
        "unknown output 'modle' (did you mean 'model'?)",
    ),
    (
        "job",
        "intermediat}",
        "  model: {classification: intermediate}",
        "  model: {classification: intermediat}",
        "outputs.model.classification",
        "'intermediat' is not a classification (did you mean 'intermediate'?)",
    ),
    (
        "job",
        "trian",
        "rounds: 3",
        "rounds: 3\ncomputes: {trian: gpu}",
        "computes.trian",
        "'trian' is not a key of 'computes' (did you mean 'train'?); use one of: preprocess, train",
    ),
    (
        "job",
        "thread:",
        "rounds: 3",
        "rounds: 3\nresources: {train: {thread: 2}}",
        "resources.train.thread",
        "unknown key 'thread' (did you mean 'threads'?)",
    ),
    (
        "job",
        "literl",
        "rounds: 3",
        "rounds: 3\npipeline: literl",
        "pipeline",
        "'literl' is not a pipeline (did you mean 'literal'?)",
    ),
    (
        "job",
        "silo-bb",
        "rounds: 3",
        "rounds: 3\nsilo_inputs: {silo-bb: {train: other}}",
        "silo_inputs.silo-bb",
        "silo 'silo-bb' (did you mean 'silo-b'?), which is not in 'silos'",
    ),
    (
        "job",
        "locl",
        "rounds: 3",
        "rounds: 3\nprivacy: {locl: {noise_multiplier: 1.0}}",
        "privacy.locl",
        "unknown key 'locl' (did you mean 'local'?)",
    ),
    (
        "federation",
        "submiters",
        "submitters: [submitter]",
        "submiters: [submitter]",
        "submiters",
        "unknown key 'submiters' (did you mean 'submitters'?)",
    ),
    (
        "federation",
        "storag:",
        "    storage: {root: storage/silo-b}",
        "    storag: {root: storage/silo-b}",
        "silos.1.storag",
        "unknown key 'storag' (did you mean 'storage'?)",
    ),
    (
        "federation",
        "bubblewrp",
        "    compute: {name: silo-c-cpu}",
        "    compute: {name: silo-c-cpu}\n    sandbox: bubblewrp",
        "silos.2.sandbox",
        "'bubblewrp' is not a sandbox (did you mean 'bubblewrap'?); use one of: bubblewrap, none",
    ),
    ("policy", "rulez", "rules:", "rulez:", "rulez", "unknown key 'rulez' (did you mean 'rules'?)"),
    (
        "policy",
        "signatur:",
        "when: {signature: [unsigned",
        "when: {signatur: [unsigned",
        "rules.0.when.signatur",
        "unknown key 'signatur' (did you mean 'signature'?)",
    ),
    (
        "policy",
        "rejet",
        "decision: reject\n    reason: job code",
        "decision: rejet\n    reason: job code",
        "rules.0.decision",
        "'rejet' is not a decision (did you mean 'reject'?); use one of: approve, reject, manual",
    ),
]


def _load(kind: str, text: str, folder: Path) -> None:
    if kind == "job":
        (folder / "task").mkdir(exist_ok=True)
        (folder / "task" / "task.py").write_text("")
    path = folder / f"{kind}.yaml"
    path.write_text(text)
    loaders: dict[str, Loader] = {
        "job": load_job,
        "federation": load_federation,
        "policy": load_policy,
    }
    loaders[kind](path)


@pytest.mark.parametrize(
    ("kind", "typo", "old", "new", "field", "words"), CASES, ids=[f"{c[0]}-{c[4]}" for c in CASES]
)
def test_a_typo_is_named_on_its_own_line_with_the_name_meant(
    kind: str, typo: str, old: str, new: str, field: str, words: str, tmp_path: Path
) -> None:
    base = {"job": JOB, "federation": FEDERATION, "policy": POLICY}[kind]
    text, line = _typo(base, old, new, typo)
    with pytest.raises(ConfigError) as caught:
        _load(kind, text, tmp_path)
    error = caught.value
    assert (error.file, error.field, error.line) == (str(tmp_path / f"{kind}.yaml"), field, line)
    assert words in error.message


def test_a_typo_with_no_close_name_lists_the_allowed_ones(tmp_path: Path) -> None:
    text, line = _typo(JOB, "rounds: 3", "rounds: 3\ncolour: red", "colour")
    with pytest.raises(ConfigError) as caught:
        _load("job", text, tmp_path)
    assert caught.value.line == line
    assert "did you mean" not in caught.value.message
    assert "unknown key 'colour'; allowed keys: name, code, entrypoint, silos" in str(caught.value)
