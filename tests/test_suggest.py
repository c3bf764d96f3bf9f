"""The closest known name to a mistyped one, and the known names listed."""

from __future__ import annotations

import pytest

from fedsilo._suggest import closest, did_you_mean, listing

SILOS = ("hospital-a", "hospital-b", "clinic-north")


@pytest.mark.parametrize(
    ("typed", "known", "meant"),
    [
        ("rouns", ("name", "rounds", "round_timeout"), "rounds"),
        ("hospital-aa", SILOS, "hospital-a"),
        ("clinik-north", SILOS, "clinic-north"),
        ("digits-trian", ("digits-test", "digits-train"), "digits-train"),
        ("FedAvg", ("fedavg", "fedprox"), "fedavg"),  # capitals alone: always found
        ("helloword", ("ccfraud", "helloworld", "ner"), "helloworld"),
    ],
)
def test_a_typo_finds_the_name_it_mistypes(typed: str, known: tuple[str, ...], meant: str) -> None:
    assert closest(typed, known) == meant
    assert did_you_mean(typed, known) == f" (did you mean '{meant}'?)"


@pytest.mark.parametrize(
    ("typed", "known"),
    [
        ("xray", SILOS),  # nothing alike
        ("hospital-z", SILOS),  # as close to hospital-a as to hospital-b: no guess
        ("", SILOS),
        ("a" * 500, ("a" * 499,)),  # no typo of a name is that long
        ("train", ()),
    ],
)
def test_nothing_is_suggested_without_one_likely_name(typed: str, known: tuple[str, ...]) -> None:
    assert closest(typed, known) is None
    assert did_you_mean(typed, known) == ""


def test_known_names_are_listed_in_their_order_and_bounded() -> None:
    assert listing(["b", "a"]) == "b, a"
    assert listing([]) == "none"
    names = [f"dataset-{i:03d}" for i in range(100)]
    shown = listing(names, limit=60)
    assert shown.startswith("dataset-000, dataset-001, ")
    assert shown.endswith(", dataset-003 and 96 more")
    assert len(shown) < 100
    assert listing(["x" * 80], limit=10) == "x" * 80  # one name is always shown whole
