"""Uploads checked as parameters: the global model's names, dtypes and shapes, finite values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from safetensors.numpy import save_file

from fedsilo.errors import ConfigError
from fedsilo.jobs import UpdateBounds
from fedsilo.jobs._spec import JobSpec
from fedsilo.orchestrator._vetting import UpdateRefused, clipped, vet_update

GLOBAL: dict[str, npt.NDArray[np.generic]] = {
    "fc.weight": np.ones((3, 4), dtype=np.float32),
    "fc.bias": np.zeros(3, dtype=np.float32),
    "bn.num_batches_tracked": np.array(7, dtype=np.int64),
}


def write(tmp_path: Path, tensors: dict[str, npt.NDArray[np.generic]], name: str = "u") -> Path:
    path = tmp_path / f"{name}.safetensors"
    save_file({k: np.asarray(v, order="C") for k, v in tensors.items()}, str(path))
    return path


def changed(name: str, value: npt.NDArray[np.generic]) -> dict[str, npt.NDArray[np.generic]]:
    return {**GLOBAL, name: value}


def test_an_update_of_the_global_models_layout_is_accepted_with_its_distance(
    tmp_path: Path,
) -> None:
    update = changed("fc.weight", np.full((3, 4), 1.5, dtype=np.float32))
    found = vet_update("a", write(tmp_path, update), GLOBAL)
    assert found.norm == pytest.approx(math.sqrt(12 * 0.25))
    assert found.relative == pytest.approx(math.sqrt(3.0) / math.sqrt(12.0))
    assert found.scale == 1.0


@pytest.mark.parametrize(
    ("tensors", "tensor", "words"),
    [
        (changed("fc.bias", np.array([0, np.nan, 0], np.float32)), "fc.bias", "1 value that is"),
        (
            changed("fc.weight", np.full((3, 4), np.inf, np.float32)),
            "fc.weight",
            r"12 values that are not finite \(Inf\)",
        ),
        (changed("fc.weight", np.ones((3, 4), np.int64)), "fc.weight", "is int64"),
        (changed("fc.bias", np.zeros(3, bool)), "fc.bias", "is bool"),
        (changed("fc.weight", np.ones((3, 4), np.float64)), "fc.weight", "is float64"),
        (changed("fc.weight", np.ones((4, 3), np.float32)), "fc.weight", r"has shape \(4, 3\)"),
        (
            changed("bn.num_batches_tracked", np.array(7, np.float32)),
            "bn.num_batches_tracked",
            "is float32, the global model's is int64",
        ),
    ],
    ids=["nan", "inf", "int64", "bool", "float64", "shape", "counter-as-float"],
)
def test_an_update_that_is_not_the_global_models_numbers_is_refused_naming_the_tensor(
    tmp_path: Path, tensors: dict[str, npt.NDArray[np.generic]], tensor: str, words: str
) -> None:
    with pytest.raises(UpdateRefused, match=words) as caught:
        vet_update("silo-a", write(tmp_path, tensors), GLOBAL)
    assert caught.value.tensor == tensor and caught.value.silo == "silo-a"
    message = str(caught.value)
    assert "silo 'silo-a'" in message and f"tensor '{tensor}'" in message
    assert str(tmp_path) not in message  # no path of the orchestrator's


def test_missing_and_extra_tensors_are_named(tmp_path: Path) -> None:
    update = {k: v for k, v in GLOBAL.items() if k != "fc.bias"}
    update["secret"] = np.zeros(2, np.float32)
    with pytest.raises(UpdateRefused, match=r"lacks the global model's 'fc.bias'.*has 'secret'"):
        vet_update("a", write(tmp_path, update), GLOBAL)


def test_a_file_that_is_not_safetensors_is_refused_without_its_path(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(UpdateRefused, match="not a safetensors file") as caught:
        vet_update("a", path, GLOBAL)
    assert str(tmp_path) not in str(caught.value)


def test_a_bound_refuses_or_clips_an_update_too_far_from_the_global_model(
    tmp_path: Path,
) -> None:
    far = changed("fc.weight", np.full((3, 4), 3.0, dtype=np.float32))  # moved by 2 x its norm
    path = write(tmp_path, far)
    with pytest.raises(UpdateRefused, match=r"past the job.s bound of 0\.5"):
        vet_update("a", path, GLOBAL, UpdateBounds(max_norm=0.5))
    found = vet_update("a", path, GLOBAL, UpdateBounds(max_norm=0.5, over_norm="clip"))
    assert found.relative == pytest.approx(2.0) and found.scale == pytest.approx(0.25)
    params = dict(clipped(path, GLOBAL, found.scale))
    delta = params["fc.weight"].astype(np.float64) - 1.0
    assert np.linalg.norm(delta) == pytest.approx(0.5 * np.linalg.norm(GLOBAL["fc.weight"]))
    assert params["fc.weight"].dtype == np.float32
    assert params["bn.num_batches_tracked"] == 7  # counters are not scaled
    near = vet_update("a", write(tmp_path, GLOBAL, "same"), GLOBAL, UpdateBounds(max_norm=0.5))
    assert near.norm == 0.0 and near.scale == 1.0


def test_the_bound_is_part_of_the_job_spec_and_needs_to_see_the_updates() -> None:
    base = {"name": "j", "code": ".", "silos": ["a", "b"], "rounds": 1}
    spec = JobSpec.model_validate({**base, "updates": {"max_norm": 2, "over_norm": "clip"}})
    assert spec.updates == UpdateBounds(max_norm=2.0, over_norm="clip")
    for bad in ({"max_norm": 0}, {"max_norm": float("nan")}, {"over_norm": "drop"}):
        with pytest.raises(ValueError):
            JobSpec.model_validate({**base, "updates": bad})
    with pytest.raises((ValueError, ConfigError), match="secure aggregation"):
        JobSpec.model_validate(
            {**base, "updates": {"max_norm": 1}, "privacy": {"secure_aggregation": {}}}
        )
