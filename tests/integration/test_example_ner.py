"""The NER example (WNUT-16 tweets) at reduced size, through the real processes.

Provisions the example's three silos, connects the tweets with the real CLI (``fedsilo
example ner prepare``), starts the processes and submits the example's own job files
with fewer rounds; the tagger must find entities (exact span and type) after them, and
the DP-SGD variant must report an epsilon that grows within its budget. Skips without
``FEDSILO_DATA`` (fails under ``FEDSILO_REQUIRE_DATA=1``). Full-size figures are in
examples/ner/README.md.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fedsilo.task import load_task
from tests.datasets.real_data import real_data
from tests.integration.test_examples import EXAMPLES, ExampleFederation, _federation, _silos

pytestmark = pytest.mark.integration

NER = EXAMPLES / "ner"


@pytest.fixture(scope="module")
def newsrooms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleFederation]:
    """The example's three silos, each with an IID third of WNUT-16's tweets."""
    data = real_data("wnut16")
    for fed in _federation(tmp_path_factory.mktemp("ner"), _silos(NER / "job.yaml")):
        report = fed.prepare("ner", "--data", str(data))
        silos = report["split"]["silos"].values()  # type: ignore[index]
        # every one of WNUT-16's 2,394 tweets in one silo, a fifth of each silo's as test
        assert sum(p["train"]["rows"] + p["test"]["rows"] for p in silos) == 2394
        for part in silos:
            whole = part["train"]["rows"] + part["test"]["rows"]
            assert abs(part["test"]["rows"] - whole / 5) <= 1, part
        yield fed


def test_entity_scores_need_the_exact_span_and_type() -> None:
    task = load_task(NER / "task", "task")
    spans = task.evaluate.__globals__["spans"]
    gold = ("B-person", "I-person", "O", "B-geo-loc", "I-geo-loc")
    assert spans(gold) == {(0, 2, "person"), (3, 5, "geo-loc")}
    # a shorter span, or the right span with the wrong type, is not a match
    assert spans(("B-person", "O", "O", "B-company", "I-company")) & spans(gold) == set()
    # as conlleval reads them: an I- that does not continue its type starts an entity
    assert spans(("O", "I-movie", "I-movie", "B-movie", "I-person")) == {
        (1, 3, "movie"),
        (3, 4, "movie"),
        (4, 5, "person"),
    }


def test_ner_tagger_finds_entities(newsrooms: ExampleFederation) -> None:
    # 4 rounds instead of 25: a larger step, and entity tokens weighing 3 O tokens in the
    # loss, find entities sooner
    quick = {"hyperparameters.lr": "0.01", "hyperparameters.extra.entity_weight": "3"}
    info = newsrooms.run(NER / "job.yaml", rounds="4", **quick)
    final = info.history[-1].evaluate_aggregate
    assert {"precision", "recall", "f1"} <= set(final)
    for silo in info.silos:
        losses = [r.train[silo]["loss"] for r in info.history]
        assert losses[-1] < losses[0], losses
    assert final["f1"] >= 0.05, final  # a tagger that finds nothing scores 0


def test_ner_with_dp_sgd_reports_its_epsilon(newsrooms: ExampleFederation) -> None:
    quick = {"hyperparameters.epochs": "1", "hyperparameters.batch_size": "64"}
    info = newsrooms.run(NER / "job-dp.yaml", rounds="2", **quick)
    for silo in info.silos:
        spent = [r.train[silo]["epsilon"] for r in info.history]
        assert spent == sorted(spent) and 0 < spent[-1] <= 8.0 * 1.01, spent
    assert info.history[-1].evaluate_aggregate["token_accuracy"] >= 0.9
