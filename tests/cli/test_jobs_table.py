"""``fedsilo job show``'s table: the privacy column appears when a job has privacy."""

from __future__ import annotations

from rich.console import Console

from fedsilo.api import RoundInfo
from fedsilo.cli._jobs import _round_table
from fedsilo.cli._tables import Footnotes


def _render(history: list[RoundInfo]) -> str:
    console = Console(width=160, record=True)
    console.print(_round_table(history, Footnotes()))
    return console.export_text()


def _round(**privacy: float) -> RoundInfo:
    return RoundInfo(
        round=1,
        train={
            "silo-a": {"loss": 0.5, "num_samples": 10, **({"epsilon": 1.25} if privacy else {})}
        },
        evaluate={"silo-a": {"accuracy": 0.9, "num_samples": 10}},
        evaluate_aggregate={"accuracy": 0.9},
        privacy=privacy,
    )


def test_local_central_and_secure_privacy_are_shown_per_round() -> None:
    text = _render(
        [_round(central_epsilon=2.5, secure_aggregation_silos=3, secure_aggregation_dropped=1)]
    )
    assert "ε 1.25" in text
    assert "central ε 2.5; secure sum of 3, 1 dropped" in text


def test_a_job_without_privacy_has_no_privacy_column() -> None:
    assert "privacy" not in _render([_round()])
