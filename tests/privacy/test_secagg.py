"""Secure aggregation run end to end in memory: every message goes through JSON, no network."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from fedsilo.errors import AggregationError
from fedsilo.privacy import MaskPlan, RoundPlan, round_plan
from fedsilo.privacy._clip import clipped_delta
from fedsilo.privacy.secagg import (
    AggregateResult,
    FixedPointRangeError,
    KeyRoster,
    MaskedInput,
    SecAggAborted,
    SecAggClient,
    SecAggMessage,
    SecAggProtocolError,
    SecAggServer,
    ShareDecryptionError,
    ShareDelivery,
    UnmaskRefused,
    UnmaskRequest,
    UnmaskResponse,
    _crypto,
    load_masked,
    mask_update,
    masked_parts,
    parse_message,
)
from fedsilo.privacy.secagg._fixedpoint import encode
from fedsilo.privacy.secagg._shamir import reconstruct, split
from fedsilo.tensors import parameters_from_bytes

JOB = "job-7"
SHAPES = {"conv.weight": (4, 3, 2), "conv.bias": (4,), "fc": (5, 6), "scale": ()}
Arrays = dict[str, npt.NDArray[Any]]


def wire(message: Any) -> Any:
    """What the orchestrator relays: the message serialised to JSON and parsed back."""
    parsed = parse_message(message.model_dump_json())
    assert parsed == message
    return parsed


class Federation:
    """An in-memory orchestrator relaying messages between one server and its clients."""

    def __init__(
        self, k: int = 5, *, rounds: int = 3, threshold: int | None = None, seed: int = 0
    ) -> None:
        self.ids = [f"silo-{i}" for i in range(k)]
        self.rng = random.Random(seed)
        self.server = SecAggServer(self.ids, job_id=JOB, rounds=rounds, threshold=threshold)
        self.clients = {
            v: SecAggClient(
                v, job_id=JOB, rounds=rounds, threshold=threshold, rng=random.Random(seed + i)
            )
            for i, v in enumerate(self.ids)
        }

    def to_clients(self, messages: Iterable[SecAggMessage]) -> list[SecAggMessage]:
        replies: list[SecAggMessage] = []
        for message in messages:
            assert isinstance(message, KeyRoster | ShareDelivery | UnmaskRequest)
            replies += self.clients[message.recipient].feed(wire(message))
        return replies

    def to_server(self, messages: Iterable[SecAggMessage]) -> list[SecAggMessage]:
        out: list[SecAggMessage] = []
        for message in messages:
            assert not isinstance(message, KeyRoster | ShareDelivery | UnmaskRequest)
            out += self.server.feed(wire(message))
        return out

    def setup(self, absent: Sequence[str] = ()) -> None:
        present = [v for v in self.ids if v not in absent]
        rosters = self.to_server(self.clients[v].advertise() for v in present)
        if absent:
            rosters = list(self.server.close_keys())
        deliveries = self.to_server(self.to_clients(rosters))
        assert self.to_clients(deliveries) == []
        assert self.server.members == tuple(present)

    def inputs(self, seed: int) -> tuple[dict[str, Arrays], dict[str, float]]:
        gen = np.random.default_rng(seed)
        arrays = {
            v: {
                name: gen.normal(0, 2, shape).astype(np.float32 if i % 2 else np.float64)
                for name, shape in SHAPES.items()
            }
            for i, v in enumerate(self.ids)
        }
        weights = {v: float(gen.integers(1, 1000)) for v in self.ids}
        return arrays, weights

    def run_round(
        self,
        round: int,
        arrays: dict[str, Arrays],
        weights: dict[str, float],
        senders: Iterable[str],
        plan: RoundPlan | None = None,
    ) -> AggregateResult:
        if plan is not None:
            self.server.plan_round(round, word_bits=plan.word_bits, weight_scale=plan.weight_scale)
        uploads = [
            self.clients[v].masked_input(
                round, arrays[v], weights[v], plan=None if plan is None else plan.for_silo(v)
            )
            for v in senders
        ]
        requests = self.to_server(uploads)
        if not requests:
            requests = list(self.server.close_inputs(round))
        assert self.to_server(self.to_clients(requests)) == []
        assert self.server.ready(round)
        return self.server.finish_round(round)


def plain_sum(arrays: dict[str, Arrays], weights: dict[str, float], who: Iterable[str]) -> Arrays:
    sums: Arrays = {n: np.zeros(shape) for n, shape in SHAPES.items()}
    for v in who:
        for n in SHAPES:
            sums[n] = sums[n] + weights[v] * arrays[v][n].astype(np.float64)
    return sums


def assert_sum(result: AggregateResult, expected: Arrays, total_weight: float) -> None:
    assert set(result.weighted_sum) == set(SHAPES)
    for name, shape in SHAPES.items():
        assert result.weighted_sum[name].shape == shape
        assert result.weighted_sum[name].dtype == np.float64
        np.testing.assert_allclose(result.weighted_sum[name], expected[name], rtol=1e-5, atol=1e-3)
    assert result.total_weight == pytest.approx(total_weight, rel=1e-9)


def test_sum_of_five_silos_equals_the_plain_weighted_sum() -> None:
    fed = Federation(5)
    fed.setup()
    arrays, weights = fed.inputs(seed=1)
    result = fed.run_round(1, arrays, weights, fed.ids)
    assert_sum(result, plain_sum(arrays, weights, fed.ids), sum(weights.values()))
    assert result.survivors == tuple(fed.ids) and result.dropped == ()
    mean = result.mean()
    np.testing.assert_allclose(mean["fc"], result.weighted_sum["fc"] / sum(weights.values()))


def test_three_rounds_in_a_row_reuse_one_setup() -> None:
    fed = Federation(4, rounds=3)
    fed.setup()
    for round in (1, 2, 3):
        arrays, weights = fed.inputs(seed=10 + round)
        result = fed.run_round(round, arrays, weights, fed.ids)
        assert_sum(result, plain_sum(arrays, weights, fed.ids), sum(weights.values()))


@pytest.mark.parametrize("dropped", [["silo-2"], ["silo-0", "silo-4"]])
def test_silos_dropped_after_setup_leave_the_sum_of_the_survivors(dropped: list[str]) -> None:
    fed = Federation(5, threshold=3)
    fed.setup()
    arrays, weights = fed.inputs(seed=2)
    survivors = [v for v in fed.ids if v not in dropped]
    result = fed.run_round(1, arrays, weights, survivors)
    assert result.dropped == tuple(dropped)
    assert_sum(result, plain_sum(arrays, weights, survivors), sum(weights[v] for v in survivors))


def test_a_silo_that_drops_in_round_two_rejoins_in_round_three() -> None:
    fed = Federation(4, rounds=3)
    fed.setup()
    for round, senders in [(1, fed.ids), (2, fed.ids[1:]), (3, fed.ids)]:
        arrays, weights = fed.inputs(seed=round)
        result = fed.run_round(round, arrays, weights, senders)
        assert_sum(result, plain_sum(arrays, weights, senders), sum(weights[v] for v in senders))


def test_a_silo_absent_from_setup_is_left_out_of_every_round() -> None:
    fed = Federation(5)
    fed.setup(absent=["silo-3"])
    arrays, weights = fed.inputs(seed=3)
    present = [v for v in fed.ids if v != "silo-3"]
    result = fed.run_round(1, arrays, weights, present)
    assert result.dropped == ()
    assert_sum(result, plain_sum(arrays, weights, present), sum(weights[v] for v in present))
    with pytest.raises(SecAggProtocolError, match="setup"):
        fed.clients["silo-3"].masked_input(1, arrays["silo-3"], 1.0)


def test_too_few_inputs_abort_the_round_cleanly() -> None:
    fed = Federation(5, threshold=3)
    fed.setup()
    arrays, weights = fed.inputs(seed=4)
    uploads = [fed.clients[v].masked_input(1, arrays[v], weights[v]) for v in fed.ids[:2]]
    assert fed.to_server(uploads) == []
    with pytest.raises(SecAggAborted, match=r"only 2 parties answered.*threshold is 3") as caught:
        fed.server.close_inputs(1)
    assert isinstance(caught.value, AggregationError)
    assert (caught.value.arrived, caught.value.threshold, caught.value.round) == (2, 3, 1)
    late = fed.clients["silo-4"].masked_input(1, arrays["silo-4"], 1.0)
    with pytest.raises(SecAggProtocolError, match="round 1 is over"):
        fed.server.feed(late)
    result = fed.run_round(2, arrays, weights, fed.ids)  # the next round works
    assert_sum(result, plain_sum(arrays, weights, fed.ids), sum(weights.values()))


def test_too_few_unmask_answers_abort_the_round() -> None:
    fed = Federation(5, threshold=3)
    fed.setup()
    arrays, weights = fed.inputs(seed=5)
    uploads = [fed.clients[v].masked_input(1, arrays[v], weights[v]) for v in fed.ids]
    requests = fed.to_server(uploads)
    fed.to_server(fed.to_clients(requests[:2]))
    assert not fed.server.ready(1)
    with pytest.raises(SecAggAborted, match="unmask"):
        fed.server.finish_round(1)


def test_a_client_never_reveals_both_secrets_of_one_party() -> None:
    fed = Federation(4, threshold=2)
    fed.setup()
    arrays, weights = fed.inputs(seed=6)
    client = fed.clients["silo-0"]
    client.masked_input(1, arrays["silo-0"], weights["silo-0"])
    first = UnmaskRequest(
        job_id=JOB, recipient="silo-0", round=1, survivors=tuple(fed.ids), dropped=()
    )
    assert isinstance(client.feed(first)[0], UnmaskResponse)
    second = first.model_copy(update={"survivors": tuple(fed.ids[:3]), "dropped": ("silo-3",)})
    with pytest.raises(UnmaskRefused, match="'silo-3' for round 1") as caught:
        client.feed(second)
    assert caught.value.party == "silo-3"
    both = first.model_copy(update={"dropped": ("silo-1",)})
    with pytest.raises(UnmaskRefused, match="survivor and dropped"):
        client.feed(both)


def _parts(obj: object, seen: set[int] | None = None) -> Iterable[object]:
    """Every object reachable from ``obj``'s attributes, containers and dataclass fields."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    children: Iterable[object] = ()
    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, list | tuple | set | frozenset):
        children = obj
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        children = vars(obj).values()
    for child in children:
        yield from _parts(child, seen)


@pytest.mark.parametrize("word_bits", [32, 64])
def test_masked_uploads_look_uniform_and_the_server_holds_no_plain_input(word_bits: int) -> None:
    fed = Federation(3)
    fed.setup()
    gen = np.random.default_rng(7)
    n = 10_000
    arrays = {v: {"w": gen.normal(0, 1, n)} for v in fed.ids}
    plan = MaskPlan.model_validate({"word_bits": word_bits, "weight_scale": 0.1})
    fed.server.plan_round(1, word_bits=word_bits, weight_scale=0.1)
    upload = fed.clients["silo-0"].masked_input(1, arrays["silo-0"], 1.0, plan=plan)
    masked = upload.vector()[:-1]
    assert masked.dtype.itemsize * 8 == word_bits
    correlation = np.corrcoef(masked.astype(np.float64), arrays["silo-0"]["w"])[0, 1]
    assert abs(correlation) < 0.05
    for byte in (0, 1):  # the low bytes, where a small input would show through
        low = (masked >> masked.dtype.type(8 * byte)) & masked.dtype.type(0xFF)
        counts = np.bincount(low.astype(np.int64))
        expected = n / 256
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 340  # 255 degrees of freedom: p < 0.0003 above this
    plain = {
        v: encode(arrays[v], 0.1, bits=24, clip_range=64.0, parties=3, word_bits=word_bits)[
            1
        ].tobytes()
        for v in fed.ids
    }
    fed.server.feed(upload)
    for v in fed.ids[1:]:
        fed.server.feed(fed.clients[v].masked_input(1, arrays[v], 1.0, plan=plan))
        held = [
            bytes(part) if isinstance(part, np.ndarray) else part
            for part in _parts(fed.server)
            if isinstance(part, np.ndarray | bytes)
        ]
        assert held and not any(h == p for h in held for p in plain.values())


def test_an_altered_share_fails_to_decrypt() -> None:
    fed = Federation(3)
    rosters = fed.to_server(fed.clients[v].advertise() for v in fed.ids)
    deliveries = fed.to_server(fed.to_clients(rosters))
    delivery = deliveries[0]
    assert isinstance(delivery, ShareDelivery)
    blob = bytearray(delivery.ciphertexts["silo-1"])
    blob[20] ^= 0x01
    tampered = delivery.model_copy(
        update={"ciphertexts": {**delivery.ciphertexts, "silo-1": bytes(blob)}}
    )
    with pytest.raises(ShareDecryptionError, match="cannot decrypt the share sent by 'silo-1'"):
        fed.clients[delivery.recipient].feed(tampered)
    assert isinstance(deliveries[1], ShareDelivery)
    misrouted = deliveries[1].model_copy(update={"recipient": delivery.recipient})
    with pytest.raises(ShareDecryptionError):
        fed.clients[delivery.recipient].feed(misrouted)
    assert fed.clients[delivery.recipient].feed(delivery) == []  # the genuine one still works


def test_messages_round_trip_through_json() -> None:
    fed = Federation(3)
    fed.setup()  # every setup message already went through ``wire``
    arrays, weights = fed.inputs(seed=8)
    upload = fed.clients["silo-0"].masked_input(1, arrays["silo-0"], weights["silo-0"])
    text = upload.model_dump_json()
    assert '"kind":"masked_input"' in text
    assert MaskedInput.model_validate_json(text) == upload
    assert parse_message(text) == upload
    with pytest.raises(SecAggProtocolError, match="not a secure-aggregation message"):
        parse_message(text.replace("masked_input", "something_else"))
    with pytest.raises(SecAggProtocolError):
        parse_message(
            '{"kind": "masked_input", "job_id": "j", "sender": "a", "round": 1, '
            '"layout": [], "data": "%%%"}'
        )


def test_values_are_clipped_and_oversized_weights_refused() -> None:
    fed = Federation(2)
    fed.setup()
    inputs = {"silo-0": {"x": np.array([1000.0, -1000.0, 1.5])}, "silo-1": {"x": np.zeros(3)}}
    result = fed.run_round(1, inputs, {"silo-0": 1.0, "silo-1": 1.0}, fed.ids)
    np.testing.assert_allclose(result.weighted_sum["x"], [64.0, -64.0, 1.5])
    with pytest.raises(FixedPointRangeError, match="Normalise the weights"):
        fed.clients["silo-0"].masked_input(2, inputs["silo-0"], 1e10)
    with pytest.raises(FixedPointRangeError, match="NaN"):
        fed.clients["silo-0"].masked_input(2, {"x": np.array([np.nan])}, 1.0)


def test_rounds_are_used_once_and_within_the_setup() -> None:
    fed = Federation(2, rounds=2)
    fed.setup()
    client = fed.clients["silo-0"]
    client.masked_input(1, {"x": np.ones(2)}, 1.0)
    with pytest.raises(SecAggProtocolError, match="already sent"):
        client.masked_input(1, {"x": np.ones(2)}, 1.0)
    with pytest.raises(SecAggProtocolError, match=r"rounds 1\.\.2"):
        client.masked_input(3, {"x": np.ones(2)}, 1.0)


def test_a_mask_computed_ahead_gives_the_same_upload_as_one_computed_in_line() -> None:
    arrays = {"w": np.linspace(-1, 1, 12).reshape(3, 4), "b": np.arange(3.0)}
    uploads = []
    for ahead in (False, True):
        fed = Federation(3, rounds=2)
        fed.setup()
        client = fed.clients["silo-1"]
        mask = client.round_mask(2, 16) if ahead else None
        uploads.append(client.masked_input(2, arrays, 5.0, mask=mask))
    assert uploads[0] == uploads[1]


def test_a_clipped_update_masked_while_encoding_equals_the_update_masked_after() -> None:
    current = {"w": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3), "n": np.array(3)}
    params = {"w": current["w"] + np.float32(2.5), "n": np.array(5)}
    uploads = []
    for fused in (False, True):
        fed = Federation(3, rounds=1)
        fed.setup()
        client = fed.clients["silo-0"]
        if fused:
            upload = mask_update(client, 1, params, current, weight=2.0, clip_norm=1.5).message()
        else:
            delta = clipped_delta(params, current, 1.5)
            upload = client.masked_input(1, delta, 2.0)
        uploads.append(upload)
    assert uploads[0] == uploads[1]


def test_a_mask_of_another_round_client_or_size_is_refused() -> None:
    fed = Federation(3, rounds=2)
    fed.setup()
    client, other = fed.clients["silo-0"], fed.clients["silo-1"]
    arrays = {"x": np.ones(4)}
    for mask, why in (
        (client.round_mask(1, 5), "round 1"),
        (other.round_mask(2, 5), "client 'silo-1'"),
        (client.round_mask(2, 9), "holds 9 uint64 words"),
        (client.round_mask(2, 5, 32), "holds 5 uint32 words"),
    ):
        with pytest.raises(SecAggProtocolError, match=why):
            client.masked_input(2, arrays, 1.0, mask=mask)
    client.masked_input(2, arrays, 1.0, mask=client.round_mask(2, 5))  # none was used up


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_masks_applied_together_equal_masks_applied_one_by_one(
    monkeypatch: pytest.MonkeyPatch, dtype: type[np.unsignedinteger[Any]]
) -> None:
    monkeypatch.setattr(_crypto, "_CHUNK_WORDS", 1000)  # several chunks, the last one short
    gen = np.random.default_rng(3)
    vector = gen.integers(0, np.iinfo(dtype).max, 2500, dtype=dtype)
    seeds = [(bytes([i]) * 32, 1 if i % 2 else -1) for i in range(4)]
    together, one_by_one = vector.copy(), vector.copy()
    _crypto.apply_masks(together, seeds, job_id=JOB, round=1)
    for seed, sign in seeds:
        _crypto.apply_mask(one_by_one, seed, job_id=JOB, round=1, sign=sign)
    np.testing.assert_array_equal(together, one_by_one)
    assert not np.array_equal(together, vector)
    for seed, sign in seeds:
        _crypto.apply_mask(together, seed, job_id=JOB, round=1, sign=-sign)
    np.testing.assert_array_equal(together, vector)


@pytest.mark.parametrize("word_bits", [32, 64])
def test_a_masked_update_travels_as_safetensors_bytes(tmp_path: Path, word_bits: int) -> None:
    fed = Federation(3, rounds=1)
    fed.setup()
    current = {"w": np.zeros((2, 3), np.float32), "b": np.ones(2, np.float32)}
    params = {"w": np.full((2, 3), 0.5, np.float32), "b": np.zeros(2, np.float32)}
    plan = MaskPlan.model_validate({"word_bits": word_bits, "weight_scale": 0.05})
    message = mask_update(fed.clients["silo-2"], 1, params, current, weight=3.0, plan=plan)
    assert message.word_bits == word_bits
    data = b"".join(masked_parts(message))
    assert len(data) > word_bits // 8 * 9  # the header, then 8 values and the weight
    np.testing.assert_array_equal(parameters_from_bytes(data)["masked"], message.vector())
    (tmp_path / "sent.safetensors").write_bytes(data)
    back = load_masked(tmp_path / "sent.safetensors", job_id=JOB, sender="silo-2", round_=1)
    assert back.message() == message.message()
    assert parse_message(message.message().model_dump_json()) == back.message()
    with pytest.raises(SecAggProtocolError, match="round 1 for round 2"):
        load_masked(tmp_path / "sent.safetensors", job_id=JOB, sender="silo-2", round_=2)


def test_32_bit_words_give_the_weighted_sum_with_half_the_bytes() -> None:
    fed = Federation(5)
    fed.setup()
    arrays, weights = fed.inputs(seed=11)
    plan = round_plan(weights, {}, bits=24, clip_range=64.0)
    assert plan.word_bits == 32
    upload = fed.clients["silo-0"].masked_input(
        1, arrays["silo-0"], weights["silo-0"], plan=plan.for_silo("silo-0")
    )
    values = sum(int(np.prod(shape)) for shape in SHAPES.values())
    assert upload.word_bits == 32 and len(upload.data) == 4 * (values + 1)
    for round, senders in ((2, fed.ids), (3, ["silo-0", "silo-2", "silo-4"])):
        result = fed.run_round(round, arrays, weights, senders, plan=plan)
        total = sum(weights[v] for v in senders)
        # each silo rounds w/W * x to 2**-24: W * 2**-25 per silo, at most
        for name, expected in plain_sum(arrays, weights, senders).items():
            np.testing.assert_allclose(result.weighted_sum[name], expected, atol=3e-4 * total / 1e3)
        assert result.total_weight == pytest.approx(total, rel=1e-6)
        assert result.survivors == tuple(senders)


def test_a_silo_whose_weight_outgrew_the_round_plan_sends_nothing() -> None:
    fed = Federation(3)
    fed.setup()
    plan = round_plan(
        {v: None for v in fed.ids}, dict.fromkeys(fed.ids, 100.0), bits=24, clip_range=64.0
    )
    client = fed.clients["silo-1"]
    with pytest.raises(FixedPointRangeError, match="above the limit"):
        client.masked_input(1, {"x": np.ones(3)}, 250.0, plan=plan.for_silo("silo-1"))
    # 1.5 times its reported weight: within the headroom (about 2 at the defaults)
    client.masked_input(1, {"x": np.ones(3)}, 150.0, plan=plan.for_silo("silo-1"))
    with pytest.raises(FixedPointRangeError, match="alone overflows"):
        too_wide = MaskPlan(word_bits=32, weight_limit=4.0)
        fed.clients["silo-2"].masked_input(1, {"x": np.ones(3)}, 1.0, plan=too_wide)


def test_the_server_refuses_words_of_another_size_than_the_round_plan() -> None:
    fed = Federation(3)
    fed.setup()
    fed.server.plan_round(1, word_bits=32, weight_scale=0.5)
    upload = fed.clients["silo-0"].masked_input(1, {"x": np.ones(3)}, 1.0)
    with pytest.raises(SecAggProtocolError, match="64-bit words; round 1 takes 32-bit"):
        fed.server.feed(upload)
    with pytest.raises(SecAggProtocolError, match="32 or 64 bits"):
        fed.server.plan_round(2, word_bits=16)


def test_round_plans_narrow_the_words_only_when_every_weight_is_known() -> None:
    silos = ["a", "b", "c"]
    fixed = round_plan({"a": 1.0, "b": 3.0, "c": 4.0}, {}, bits=24, clip_range=64.0)
    headroom = (2**31 - 4) / (64 * 2**24)
    assert fixed.word_bits == 32 and fixed.weight_scale == pytest.approx(1 / 8)
    assert fixed.limits == pytest.approx(
        {"a": headroom / 8, "b": 3 * headroom / 8, "c": headroom / 2}
    )
    assert fixed.for_silo("b") == MaskPlan(
        word_bits=32, weight_scale=1 / 8, weight_limit=3 * headroom / 8
    )
    by_samples = dict.fromkeys(silos)
    assert round_plan(by_samples, {}, bits=24, clip_range=64.0) == RoundPlan()  # round 1
    assert round_plan(by_samples, {"a": 5.0, "b": 5.0}, bits=24, clip_range=64.0).word_bits == 64
    reported = round_plan(by_samples, {"a": 5.0, "b": 5.0, "c": 10.0}, bits=24, clip_range=64.0)
    assert reported.word_bits == 32 and reported.weight_scale == pytest.approx(1 / 20)
    assert round_plan(by_samples, {"a": 5.0, "b": 0.0, "c": 1.0}, bits=24, clip_range=64.0) == (
        RoundPlan()
    )
    wide = round_plan({"a": 1.0, "b": 1.0}, {}, bits=28, clip_range=64.0)  # needs 35 bits
    assert wide == RoundPlan() and wide.for_silo("a") == MaskPlan()


def test_messages_of_another_job_are_refused() -> None:
    fed = Federation(2)
    message = fed.clients["silo-0"].advertise().model_copy(update={"job_id": "other"})
    with pytest.raises(SecAggProtocolError, match="job"):
        fed.server.feed(message)


def test_shamir_recovers_from_any_threshold_subset_only() -> None:
    rng = random.Random(9)
    secret = rng.randbytes(32)
    xs = [1, 2, 3, 4, 5]
    shares = dict(zip(xs, split(secret, xs, 3, rng), strict=True))
    for subset in ([1, 2, 3], [2, 4, 5], [1, 3, 5]):
        assert reconstruct({x: shares[x] for x in subset}, 3) == secret
    with pytest.raises(AggregationError):
        reconstruct({1: shares[1], 2: shares[2]}, 3)
