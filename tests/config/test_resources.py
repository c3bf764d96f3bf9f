"""Sizes, durations and resource requests as people write them in specs."""

from __future__ import annotations

import pytest

from fedsilo.config import (
    ResourceBounds,
    ResourceGrant,
    format_bytes,
    format_seconds,
    parse_bytes,
    parse_seconds,
)
from fedsilo.jobs import JobSpec, SiloStep

GIB = 1 << 30


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8GiB", 8 * GIB),
        ("8Gi", 8 * GIB),
        ("8G", 8 * GIB),
        ("8g", 8 * GIB),
        ("8GB", 8 * 10**9),
        ("512MiB", 512 << 20),
        ("1.5GiB", 3 * GIB // 2),
        ("100", 100),
        (4096, 4096),
    ],
)
def test_sizes_parse_in_the_units_people_write(text: object, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["8 gigs", "", "-1G", "0", True, None, "1e400", "9999999T"])
def test_a_size_that_is_not_one_says_how_to_write_it(text: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_bytes(text)


@pytest.mark.parametrize(
    ("text", "seconds"), [(90, 90), ("90s", 90), ("30m", 1800), ("8h", 28800), ("2d", 172800)]
)
def test_durations_parse(text: object, seconds: float) -> None:
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["soon", 0, -5, "8 hours", False])
def test_a_duration_that_is_not_one_is_refused(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_seconds(text)


def test_sizes_and_durations_read_back_as_people_write_them() -> None:
    assert format_bytes(2 * GIB) == "2 GiB"
    assert format_bytes(3 * GIB // 2) == "1.5 GiB"
    assert format_bytes(300 << 20) == "300 MiB"
    assert format_seconds(28800) == "8 h" and format_seconds(90) == "90 s"


def _job(resources: object) -> JobSpec:
    return JobSpec.model_validate(
        {"name": "j", "code": "c", "silos": ["a"], "rounds": 1, "resources": resources}
    )


def test_one_request_for_every_step_runs_preprocessing_as_one_process() -> None:
    spec = _job({"workers": 2, "threads": 4, "memory": "8GiB"})
    train, pre = spec.resources_for(SiloStep.TRAIN), spec.resources_for(SiloStep.PREPROCESS)
    assert (train.workers, train.threads, train.memory) == (2, 4, 8 * GIB)
    assert (pre.workers, pre.threads, pre.memory) == (1, 4, 8 * GIB)


def test_requests_per_step_and_their_defaults() -> None:
    spec = _job({"train": {"gpus": 1, "workers": 2}})
    assert spec.resources_for(SiloStep.TRAIN).gpus == 1
    assert spec.resources_for(SiloStep.PREPROCESS).workers == 1
    assert _job({}).resources_for(SiloStep.TRAIN).threads is None


def test_grant_bounds_compare_every_rank_together() -> None:
    grant = ResourceGrant(compute="c", workers=2, threads=4, gpus=1, memory=GIB, processes=64)
    assert ResourceBounds(gpus=2).exceeded(grant) is None
    assert ResourceBounds(gpus=1).exceeded(grant) == ("gpus", "2", "1")
    assert ResourceBounds(threads=4).exceeded(grant) == ("threads", "8", "4")
    assert ResourceBounds(cpu=4).exceeded(grant) == ("cpu", "no limit", "4")
    assert grant.describe().startswith("2 ranks x 4 threads, 1 GPU each, memory 1 GiB")
