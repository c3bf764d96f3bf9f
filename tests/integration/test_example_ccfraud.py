"""The credit-card fraud example (ULB) at reduced size, through the real processes.

Provisions the example's three banks, connects a random subset of the transactions
(100,000 of the training part, 40,000 of the test part) with the real CLI (``fedsilo
example ccfraud prepare``: each bank one amount band, the last fifth in time as test),
starts the processes and submits each of the example's three job files (dense network,
LSTM over windows, LSTM autoencoder) with 2 rounds; each must rank frauds well above
normal transactions. Skips without ``FEDSILO_DATA`` (fails under
``FEDSILO_REQUIRE_DATA=1``). Full-size figures are in examples/ccfraud/README.md.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.datasets.real_data import real_data
from tests.integration.test_examples import EXAMPLES, ExampleFederation, _federation, _silos

pytestmark = pytest.mark.integration

CCFRAUD = EXAMPLES / "ccfraud"


@pytest.fixture(scope="module")
def banks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleFederation]:
    """Three banks, each holding the transactions of one amount band."""
    data = real_data("creditcard")
    for fed in _federation(tmp_path_factory.mktemp("ccfraud"), _silos(CCFRAUD / "dense.yaml")):
        report = fed.prepare(
            "ccfraud", "--data", str(data), "--limit", "train=100000", "--limit", "test=40000"
        )
        silos = report["split"]["silos"]  # type: ignore[index]
        assert len({part["holds"] for part in silos.values()}) == 3  # three distinct bands
        for part in silos.values():
            assert part["train"]["labels"].get("1", 0) > 0  # every bank has seen frauds
        yield fed


@pytest.mark.parametrize(
    ("job", "auroc", "auprc"),
    [("dense.yaml", 0.9, 0.4), ("lstm.yaml", 0.85, 0.4), ("autoencoder.yaml", 0.9, 0.08)],
)
def test_ccfraud_models_rank_frauds_first(
    banks: ExampleFederation, job: str, auroc: float, auprc: float
) -> None:
    info = banks.run(CCFRAUD / job, rounds="2")
    final = info.history[-1].evaluate_aggregate
    assert {"precision", "recall", "auroc", "auprc"} <= set(final)
    assert final["auroc"] >= auroc, final  # chance is 0.5
    assert final["auprc"] >= auprc, final  # chance is the fraud rate, about 0.002
