"""One silo's update as the aggregators see it: a layout, then tensors one at a time.

An update arrives either in memory (a mapping of numpy arrays) or as a safetensors file.
A file is opened once, its layout (names, shapes, dtypes) read from the header, and each
tensor read only when the aggregator asks for it, so folding in a silo's file never holds
more than one of its tensors. Every aggregator checks the layout before it reads a tensor,
which is what lets a refused update leave the aggregation unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError, safe_open

from fedsilo.errors import AggregationError
from fedsilo.tensors import Parameters

__all__ = ["Layout", "TensorInfo", "Update", "check_layout", "layout_of", "open_update"]

_ST_DTYPES: dict[str, type[np.generic]] = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "U16": np.uint16,
    "I16": np.int16,
    "U32": np.uint32,
    "I32": np.int32,
    "U64": np.uint64,
    "I64": np.int64,
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
}
_NUMERIC_KINDS = "biuf"


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's shape and dtype, known before its values are read."""

    shape: tuple[int, ...]
    dtype: np.dtype[np.generic]

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))


Layout = dict[str, TensorInfo]


@dataclass(frozen=True)
class Update:
    """One silo's update: its layout, and a reader that returns one tensor at a time.

    Arrays from ``tensor`` are the caller's own when ``owned`` is false (in-memory
    updates): aggregators read them and copy what they keep, never writing to them.
    Arrays read from a file are fresh (``owned``), so they can be kept as they are.
    """

    silo: str
    layout: Layout
    tensor: Callable[[str], npt.NDArray[np.generic]]
    owned: bool


@contextmanager
def open_update(silo: str, params: Parameters | Path) -> Iterator[Update]:
    """Open ``silo``'s update for reading.

    A file's header is read first; each tensor is then read by opening the file again, so
    that the file's pages safetensors maps are unmapped after every tensor and the process
    never holds more than one tensor's worth of them. A file that cannot be read, or a
    tensor that is not numeric, raises :class:`AggregationError` naming the silo.
    """
    if isinstance(params, Path):
        try:
            with safe_open(str(params), framework="numpy") as fh:
                layout = {name: _file_info(silo, name, fh) for name in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as exc:
            raise AggregationError(f"silo '{silo}': cannot read its parameters ({exc})") from exc
        yield Update(silo, layout, lambda name: _read(silo, params, name), owned=True)
        return
    arrays = {name: np.asarray(value) for name, value in params.items()}
    layout = {}
    for name, arr in arrays.items():
        _check_numeric(silo, name, arr.dtype)
        layout[name] = TensorInfo(tuple(arr.shape), arr.dtype)
    yield Update(silo, layout, arrays.__getitem__, owned=False)


def check_layout(update: Update, expected: Mapping[str, TensorInfo]) -> None:
    """Refuse an update whose tensor names or shapes differ from ``expected``."""
    names, known = set(update.layout), set(expected)
    if names != known:
        raise AggregationError(
            f"silo '{update.silo}' sent tensors {sorted(names ^ known)} "
            "that the other silos do not have"
        )
    for name, info in update.layout.items():
        want = expected[name].shape
        if info.shape != want:
            raise AggregationError(
                f"silo '{update.silo}' sent tensor '{name}' of shape {info.shape}, expected {want}"
            )


def layout_of(params: Parameters) -> Layout:
    """The layout of in-memory parameters (the current global model, for instance)."""
    return {name: TensorInfo(tuple(np.shape(v)), np.asarray(v).dtype) for name, v in params.items()}


def _file_info(silo: str, name: str, fh: object) -> TensorInfo:
    tensor = fh.get_slice(name)  # type: ignore[attr-defined]
    code = str(tensor.get_dtype())
    if code not in _ST_DTYPES:
        raise AggregationError(f"silo '{silo}' sent tensor '{name}' of unsupported dtype {code}")
    return TensorInfo(tuple(int(d) for d in tensor.get_shape()), np.dtype(_ST_DTYPES[code]))


def _read(silo: str, path: Path, name: str) -> npt.NDArray[np.generic]:
    try:
        with safe_open(str(path), framework="numpy") as fh:
            return np.asarray(fh.get_tensor(name))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AggregationError(f"silo '{silo}': cannot read tensor '{name}' ({exc})") from exc


def _check_numeric(silo: str, name: str, dtype: np.dtype[np.generic]) -> None:
    if dtype.kind not in _NUMERIC_KINDS:
        raise AggregationError(
            f"silo '{silo}' sent tensor '{name}' of dtype {dtype}; only bool, integer and "
            "real floating tensors can be aggregated"
        )
