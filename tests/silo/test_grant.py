"""What a silo grants a job step, and how its computes' capacity is shared."""

from __future__ import annotations

import threading
import time

import pytest

from fedsilo.config import ComputeSpec, ResourceGrant, ResourceRequest
from fedsilo.silo._capacity import ComputePool, Withdrawn
from fedsilo.silo._grant import ComputeOffer, Machine, ResourceRefused, grant

MACHINE = Machine(cores=8, memory=32 << 30)
GIB = 1 << 30


def _offer(**fields: object) -> ComputeOffer:
    return ComputeOffer.of(ComputeSpec.model_validate({"name": "c", **fields}), MACHINE)


def _grant(offer: ComputeOffer, **asked: object) -> ResourceGrant:
    return grant(offer, ResourceRequest.model_validate(asked), silo="silo-a", step="train")


def test_by_default_a_job_gets_every_core_and_all_the_memory_one_job_may_take() -> None:
    got = _grant(_offer())
    assert (got.workers, got.threads, got.gpus, got.memory) == (1, 8, 0, 32 * GIB)
    assert got.processes == 512 and got.max_step_seconds == 86400
    capped = _grant(_offer(threads=16, memory="64GiB", per_job={"threads": 4, "memory": "8GiB"}))
    assert (capped.threads, capped.memory) == (4, 8 * GIB)


def test_ranks_share_the_threads_and_gpu_computes_give_one_gpu_per_rank() -> None:
    got = _grant(_offer(), workers=2)
    assert (got.workers, got.threads, got.total_threads) == (2, 4, 8)
    gpu = _grant(_offer(kind="gpu", gpus=[0, 1, 2, 3]), workers=2)
    assert (gpu.gpus, gpu.total_gpus) == (1, 2)


@pytest.mark.parametrize(
    ("compute", "asked", "field", "words"),
    [
        ({}, {"threads": 9}, "resources.train.threads", "at most 8 threads"),
        ({}, {"workers": 3, "threads": 3}, "resources.train.threads", "3 ranks x 3 threads"),
        ({}, {"gpus": 1}, "resources.train.gpus", "has no GPUs"),
        ({"kind": "gpu", "gpus": [0, 1]}, {"workers": 3}, "resources.train.gpus", "at most 2"),
        ({"memory": "4GiB"}, {"memory": "5GiB"}, "resources.train.memory", "at most 4 GiB"),
        (
            {"max_step_seconds": "1h"},
            {"max_step_seconds": "2h"},
            "resources.train.max_step_seconds",
            "at most 1 h",
        ),
        ({"per_job": {"workers": 2}}, {"workers": 4}, "resources.train.workers", "at most 2"),
        ({}, {"nodes": 2}, "resources.train.nodes", "has one machine"),
    ],
)
def test_a_request_the_compute_cannot_meet_names_the_silo_compute_and_field(
    compute: dict[str, object], asked: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(ResourceRefused) as caught:
        _grant(_offer(**compute), **asked)
    assert caught.value.field == field
    assert "compute 'c' of silo 'silo-a'" in caught.value.message
    assert words in caught.value.message


def test_a_job_may_ask_for_less_time_than_the_silo_allows() -> None:
    assert _grant(_offer(), max_step_seconds="10m").max_step_seconds == 600


def test_jobs_run_side_by_side_within_capacity_and_queue_first_come_first_served() -> None:
    pool = ComputePool(_offer(kind="gpu", gpus=[0, 1], threads=4))
    half = _grant(pool.offer, threads=2, gpus=1)
    a = pool.acquire("a", half)
    b = pool.acquire("b", half)
    assert {a.devices, b.devices} == {(0,), (1,)}
    whys: list[str] = []
    got: list[str] = []

    def later(holder: str) -> None:
        pool.acquire(holder, half, waiting=lambda why: whys.append(why) or True, every=0.05)
        got.append(holder)

    waiter = threading.Thread(target=later, args=("c",))
    waiter.start()
    time.sleep(0.3)
    assert pool.state().queued == ("c",) and not got
    assert any("needs 2 threads, 0 free" in why for why in whys)
    pool.release("a")
    waiter.join(timeout=5)
    assert got == ["c"]
    state = pool.state()
    assert set(state.running) == {"b", "c"} and state.queued == ()
    assert (state.threads_used, state.gpus_used) == (4, 2)


def test_a_job_that_stops_waiting_leaves_the_queue() -> None:
    pool = ComputePool(_offer(threads=2))
    pool.acquire("a", _grant(pool.offer))
    with pytest.raises(Withdrawn):
        pool.acquire("b", _grant(pool.offer), waiting=lambda _why: False)
    assert pool.state().queued == ()
