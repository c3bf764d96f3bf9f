"""Model parameters at rest and on the wire: safetensors bytes and files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from fedsilo.errors import FedsiloError
from fedsilo.tensors import (
    load_parameters,
    parameters_from_bytes,
    parameters_to_bytes,
    save_parameters,
    sha256_file,
    tensor_names,
    value_count,
)

Arrays = dict[str, npt.NDArray[np.generic]]


@pytest.fixture
def params() -> Arrays:
    rng = np.random.default_rng(3)
    return {
        "encoder.weight": rng.normal(size=(4, 3)).astype(np.float32),
        "encoder.bias": rng.normal(size=3).astype(np.float64),
        "bn.num_batches_tracked": np.array(12, dtype=np.int64),
        "steps": np.array([-5, 0, 2**40], dtype=np.int64),
        "half": rng.normal(size=(2, 2, 2)).astype(np.float16),
    }


def _assert_same(got: Arrays, expected: Arrays) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype, name
        assert got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_bytes_round_trip(params: Arrays) -> None:
    data = parameters_to_bytes(params)
    assert isinstance(data, bytes)
    _assert_same(parameters_from_bytes(data), params)


def test_file_round_trip(params: Arrays, tmp_path: Path) -> None:
    path = tmp_path / "nested" / "folder" / "model.safetensors"
    save_parameters(params, path)
    _assert_same(load_parameters(path), params)
    assert sorted(tensor_names(path)) == sorted(params)
    assert value_count(path) == 4 * 3 + 3 + 1 + 3 + 8


def test_non_contiguous_arrays_are_saved_by_value() -> None:
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    params = {"t": base.T, "every_other": base[:, ::2]}
    out = parameters_from_bytes(parameters_to_bytes(params))
    np.testing.assert_array_equal(out["t"], base.T)
    np.testing.assert_array_equal(out["every_other"], base[:, ::2])


def test_bytes_do_not_depend_on_insertion_order(params: Arrays) -> None:
    reversed_params = dict(reversed(list(params.items())))
    assert parameters_to_bytes(reversed_params) == parameters_to_bytes(params)


def test_save_returns_the_sha256_of_the_file(params: Arrays, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    digest = save_parameters(params, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path) == digest
    assert path.read_bytes() == parameters_to_bytes(params)


def test_sha256_file_reads_large_files_in_full(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    blob = os.urandom((1 << 20) * 2 + 123)  # more than one read chunk
    path.write_bytes(blob)
    assert sha256_file(path) == hashlib.sha256(blob).hexdigest()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not safetensors at all",
        b"\x08\x00\x00\x00\x00\x00\x00\x00{bad js}",
        b"\xff" * 16,
    ],
    ids=["empty", "text", "bad-header", "huge-header-length"],
)
def test_malformed_bytes_raise_fedsilo_error(data: bytes) -> None:
    with pytest.raises(FedsiloError, match="not a valid safetensors"):
        parameters_from_bytes(data)


def test_truncated_payload_raises_fedsilo_error(params: Arrays) -> None:
    data = parameters_to_bytes(params)
    with pytest.raises(FedsiloError):
        parameters_from_bytes(data[:-10])


def test_loading_a_file_that_is_not_safetensors_names_it(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"pickle? no.")
    with pytest.raises(FedsiloError, match=r"model\.safetensors"):
        load_parameters(path)


def test_loading_a_missing_file_raises_fedsilo_error(tmp_path: Path) -> None:
    with pytest.raises(FedsiloError, match=r"absent\.safetensors"):
        load_parameters(tmp_path / "absent.safetensors")


def test_save_leaves_no_temporary_files(params: Arrays, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_parameters(params, path)
    save_parameters({"x": np.zeros(3, dtype=np.float32)}, path)  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    _assert_same(load_parameters(path), {"x": np.zeros(3, dtype=np.float32)})


def test_a_failed_save_keeps_the_previous_file(
    params: Arrays, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.safetensors"
    save_parameters(params, path)
    before = path.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        save_parameters({"x": np.ones(5, dtype=np.float32)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
