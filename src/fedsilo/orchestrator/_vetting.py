"""Uploads checked as parameters before they reach an aggregate.

A silo's update is accepted only if it is the global model's shape of numbers: every
tensor of the global model, under the same name, with the same dtype and shape exactly,
and nothing else; every value finite. Nothing is cast: an ``int64`` or ``bool`` tensor where
the global model holds ``float32`` is refused, as a NaN or an Inf is. A refusal names the
silo, the tensor and the reason, and never a path of the orchestrator's.

A job may bound each update's distance from the global model it was trained from
(``updates.max_norm``, relative to the global model's norm): an update past it is refused,
or scaled back onto the bound (``updates.over_norm: clip``), and recorded in the job's
history. An update byte-identical to an earlier upload of the job, or to one of its global
models, is flagged by name: a silo that sends an old update again has not trained.

The check reads the upload one tensor at a time, as the aggregators do, so memory follows
the largest tensor, not the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError, safe_open

from fedsilo.errors import FedsiloError
from fedsilo.jobs import UpdateBounds
from fedsilo.tensors import Parameters

__all__ = ["UpdateRefused", "Vetted", "clipped", "vet_update"]

_NAMES_SHOWN = 5  # names of missing or extra tensors a refusal lists


class UpdateRefused(FedsiloError):
    """A silo's update is not the global model's shape of finite numbers, or too far from it.

    ``tensor`` names the tensor at fault (``None`` when the file as a whole is).
    """

    def __init__(self, silo: str, reason: str, tensor: str | None = None) -> None:
        self.silo = silo
        self.tensor = tensor
        self.reason = reason
        where = f"tensor '{tensor}' " if tensor is not None else ""
        super().__init__(f"silo '{silo}' sent an update the orchestrator refuses: {where}{reason}")


@dataclass(frozen=True)
class Vetted:
    """What the check found of an accepted update.

    ``norm`` is its distance from the global model (``||update - global||``, over its
    floating tensors), ``relative`` that distance over the global model's norm; ``scale``
    is what clipping multiplies the difference by (1.0 when nothing is clipped).
    """

    norm: float
    relative: float
    scale: float = 1.0


def _names(names: set[str]) -> str:
    shown = sorted(names)[:_NAMES_SHOWN]
    more = len(names) - len(shown)
    return ", ".join(f"'{n}'" for n in shown) + (f" and {more} more" if more > 0 else "")


def _names_of(silo: str, path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="numpy") as fh:
            return list(fh.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise UpdateRefused(silo, f"the file is not a safetensors file ({exc})") from None


def _tensor(silo: str, path: Path, name: str) -> npt.NDArray[np.generic]:
    try:
        with safe_open(str(path), framework="numpy") as fh:
            return np.asarray(fh.get_tensor(name))
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise UpdateRefused(silo, f"cannot be read ({exc})", name) from None


def _check_names(silo: str, names: list[str], current: Parameters) -> None:
    if len(names) == len(current) and set(names) == set(current):
        return
    missing, extra = set(current) - set(names), set(names) - set(current)
    if not missing and not extra:  # the same names, one of them twice
        raise UpdateRefused(silo, "the update names a tensor twice")
    parts = []
    if missing:
        parts.append(f"lacks the global model's {_names(missing)}")
    if extra:
        parts.append(f"has {_names(extra)}, which the global model does not")
    raise UpdateRefused(silo, "the update " + " and ".join(parts))


def _non_finite(values: npt.NDArray[np.generic]) -> str | None:
    finite = np.isfinite(values)
    if finite.all():
        return None
    bad = values[~finite]
    kinds = "/".join(
        k for k, n in (("NaN", np.isnan(bad).any()), ("Inf", np.isinf(bad).any())) if n
    )
    count = int(bad.size)
    if count == 1:
        return f"holds 1 value that is not finite ({kinds})"
    return f"holds {count} values that are not finite ({kinds})"


def vet_update(
    silo: str, path: Path, current: Parameters, bounds: UpdateBounds | None = None
) -> Vetted:
    """Check ``silo``'s update at ``path`` against the global model ``current``.

    Raises :class:`UpdateRefused` naming the tensor for a missing or extra tensor, another
    dtype or shape, a value that is not finite, or (with ``bounds`` set to refuse) a
    distance past the bound. Returns the distance, and the scale clipping calls for.
    """
    names = _names_of(silo, path)
    _check_names(silo, names, current)
    squared = reference = 0.0
    for name in names:
        values = _tensor(silo, path, name)
        want = np.asarray(current[name])
        if values.dtype != want.dtype:
            raise UpdateRefused(
                silo,
                f"is {values.dtype}, the global model's is {want.dtype} (nothing is cast)",
                name,
            )
        if values.shape != want.shape:
            raise UpdateRefused(
                silo, f"has shape {tuple(values.shape)}, the global model's is {want.shape}", name
            )
        if values.dtype.kind != "f":
            continue  # integer and bool tensors are counters and flags: not in the norm
        problem = _non_finite(values)
        if problem is not None:
            raise UpdateRefused(silo, problem, name)
        delta = (values.astype(np.float64) - want.astype(np.float64)).ravel()
        squared += float(np.dot(delta, delta))
        flat = want.astype(np.float64).ravel()
        reference += float(np.dot(flat, flat))
    norm, base = math.sqrt(squared), math.sqrt(reference)
    relative = norm / base if base > 0 else (0.0 if norm == 0 else math.inf)
    if bounds is None or bounds.max_norm is None:
        return Vetted(norm, relative)
    limit = bounds.max_norm * base if base > 0 else bounds.max_norm
    if norm <= limit:
        return Vetted(norm, relative)
    if bounds.over_norm == "refuse":
        raise UpdateRefused(
            silo,
            f"the update moves the model by {relative:.4g} of its norm, past the job's bound "
            f"of {bounds.max_norm:g} (updates.max_norm)",
        )
    return Vetted(norm, relative, scale=limit / norm)


def clipped(
    path: Path, current: Parameters, scale: float
) -> Iterator[tuple[str, npt.NDArray[np.generic]]]:
    """The update at ``path`` with its difference from ``current`` scaled by ``scale``.

    Floating tensors become ``global + scale * (update - global)`` in their own dtype;
    integer and bool tensors are kept as they are.
    """
    with safe_open(str(path), framework="numpy") as fh:
        names = list(fh.keys())
    for name in names:
        with safe_open(str(path), framework="numpy") as fh:
            values = np.asarray(fh.get_tensor(name))
        if values.dtype.kind == "f":
            want = np.asarray(current[name]).astype(np.float64)
            values = (want + scale * (values.astype(np.float64) - want)).astype(values.dtype)
        yield name, values
