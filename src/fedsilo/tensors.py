"""Model parameters at rest and on the wire: safetensors files, never pickle.

``Parameters`` is an ordered mapping from tensor name to a numpy array. The orchestrator
handles parameters as numpy only (it never imports torch); silos convert to and from
torch state dicts in :mod:`fedsilo.task`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save
from safetensors.numpy import save_file as _st_save_file

from fedsilo.errors import FedsiloError

__all__ = [
    "Parameters",
    "load_parameters",
    "parameters_from_bytes",
    "parameters_to_bytes",
    "save_parameters",
    "sha256_file",
    "tensor_names",
    "value_count",
]

Parameters = Mapping[str, npt.NDArray[np.generic]]

_CHUNK = 1 << 20


def parameters_to_bytes(params: Parameters) -> bytes:
    """Serialise parameters to safetensors bytes (tensors are matched by name, not order)."""
    return bytes(_st_save({k: np.asarray(v, order="C") for k, v in params.items()}))


def parameters_from_bytes(data: bytes) -> dict[str, npt.NDArray[np.generic]]:
    """Parse safetensors bytes; a malformed payload raises :class:`FedsiloError`."""
    try:
        return dict(_st_load(data))
    except (SafetensorError, ValueError) as exc:
        raise FedsiloError(f"not a valid safetensors payload: {exc}") from exc


def save_parameters(
    params: Parameters, path: Path, *, metadata: Mapping[str, str] | None = None
) -> str:
    """Write parameters atomically to ``path`` and return the file's sha256.

    safetensors writes the file itself, tensor by tensor, without first building the whole
    payload in memory (several times faster than :func:`parameters_to_bytes` for large
    models); the bytes are the same.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        tensors = {k: np.asarray(v, order="C") for k, v in params.items()}
        _st_save_file(tensors, tmp, metadata=dict(metadata) if metadata else None)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256_file(path)


def load_parameters(path: Path) -> dict[str, npt.NDArray[np.generic]]:
    """Read a safetensors file into numpy arrays, keyed by tensor name."""
    try:
        with safe_open(str(path), framework="numpy") as fh:
            return {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise FedsiloError(f"{path}: cannot read model parameters: {exc}") from exc


def tensor_names(path: Path) -> list[str]:
    """Names of the tensors stored in a safetensors file, without loading them."""
    with safe_open(str(path), framework="numpy") as fh:
        return list(fh.keys())


def value_count(path: Path) -> int:
    """How many values the tensors of a safetensors file hold, read from its header only."""
    with safe_open(str(path), framework="numpy") as fh:
        return sum(int(np.prod(fh.get_slice(name).get_shape())) for name in fh.keys())  # noqa: SIM118


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
