"""The model a job declares: every tensor's name, shape and dtype, written as ``MODEL.json``.

A silo runs no code it has not approved, so it cannot build the model to learn how big it
is. The submitter declares it instead: when a job is packed, :func:`declare_model` builds
the model the way a silo's job worker does (``model(ctx)`` from the job's hyperparameters
and seed) in a process of its own, and the bundle carries the result as ``MODEL.json``,
covered by the manifest and the signature. The silo's approval request shows it, and the
silo's agent refuses to send any parameters that are not exactly this layout.

Run as ``python -m fedsilo.jobs._layout RESULT`` with the request as JSON on stdin.
"""

from __future__ import annotations

import builtins
import json
import math
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedsilo.errors import ConfigError, TaskFailed

__all__ = [
    "DTYPE_BYTES",
    "MAX_TENSORS",
    "MODEL_NAME",
    "ModelLayout",
    "TensorLayout",
    "declare_model",
]

MODEL_NAME = "MODEL.json"
MAX_TENSORS = 20_000
BUILD_SECONDS = 300.0
PACKING_SILO = "(packing)"
"""``ctx.silo`` while the model is built at packing: no silo is involved yet."""

DTYPE_BYTES: dict[str, int] = {
    "bool": 1,
    "uint8": 1,
    "int8": 1,
    "int16": 2,
    "uint16": 2,
    "float16": 2,
    "bfloat16": 2,
    "int32": 4,
    "uint32": 4,
    "float32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
}
"""Bytes per value of each dtype a tensor may have (numpy's names)."""

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class TensorLayout(BaseModel):
    """One tensor of the model: its name in the state dict, its shape and dtype."""

    model_config = _FROZEN

    name: Annotated[str, Field(min_length=1, max_length=512)]
    shape: tuple[Annotated[int, Field(ge=0)], ...] = Field(max_length=16)
    dtype: str

    @model_validator(mode="after")
    def _known_dtype(self) -> TensorLayout:
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(
                f"tensor '{self.name}' has dtype '{self.dtype}'; parameters are one of: "
                + ", ".join(DTYPE_BYTES)
            )
        return self

    @property
    def values(self) -> int:
        """How many values the tensor holds."""
        return math.prod(self.shape)

    @property
    def bytes(self) -> int:
        """How many bytes its values take."""
        return self.values * DTYPE_BYTES[self.dtype]

    def describe(self) -> str:
        """``[32, 64] float32``."""
        return f"[{', '.join(map(str, self.shape))}] {self.dtype}"


class ModelLayout(BaseModel):
    """Every tensor of a model, with the totals a person reads: values and bytes.

    ``parameters`` and ``bytes`` must be the sums over ``tensors``; a file whose totals
    disagree with its tensors is refused rather than believed.
    """

    model_config = _FROZEN

    tensors: tuple[TensorLayout, ...] = Field(max_length=MAX_TENSORS)
    parameters: int
    bytes: int

    @model_validator(mode="after")
    def _consistent(self) -> ModelLayout:
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"tensor '{twice}' is listed twice")
        values = sum(t.values for t in self.tensors)
        size = sum(t.bytes for t in self.tensors)
        if (self.parameters, self.bytes) != (values, size):
            raise ValueError(
                f"the totals ({self.parameters} parameters, {self.bytes} bytes) are not the "
                f"sums over the tensors ({values} parameters, {size} bytes)"
            )
        return self

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> ModelLayout:
        """The layout of numpy arrays keyed by tensor name (a model's parameters)."""
        tensors = tuple(
            TensorLayout(
                name=name, shape=tuple(int(d) for d in array.shape), dtype=array.dtype.name
            )
            for name, array in params.items()
        )
        return cls(
            tensors=tensors,
            parameters=sum(t.values for t in tensors),
            bytes=sum(t.bytes for t in tensors),
        )

    def canonical(self) -> builtins.bytes:
        """The bytes of ``MODEL.json``: one tensor a line (so that a diff of two reads well),
        always written alike, so that packing the same code twice gives the same bundle."""
        lines = ",\n".join(
            "  " + json.dumps(t.model_dump(mode="json"), ensure_ascii=False) for t in self.tensors
        )
        return (
            f'{{"parameters": {self.parameters}, "bytes": {self.bytes}, "tensors": [\n'
            f"{lines}\n]}}\n"
        ).encode()

    def tensor(self, name: str) -> TensorLayout | None:
        """The tensor called ``name``, or ``None``."""
        return next((t for t in self.tensors if t.name == name), None)


def declare_model(
    code_dir: Path,
    entrypoint: str,
    hyperparameters: Mapping[str, Any] | BaseModel,
    *,
    privacy: Mapping[str, Any] | BaseModel | None = None,
    rounds: int = 1,
) -> ModelLayout:
    """Build the job's model as a silo's job worker does and return its layout.

    ``privacy`` is the job's privacy section: a task may build another model under local
    DP (``ctx.privacy`` is set; Opacus's ``DPLSTM`` for an LSTM), and so does this.

    The task module is imported in a process of its own (so that nothing it imports or
    seeds touches the caller's), with the job's hyperparameters, no inputs and an empty
    work folder. A missing ``model`` function, an error in it, or a model that cannot be
    built that way raises :class:`ConfigError` naming the task file and what to do.
    """
    task_file = Path(code_dir) / f"{entrypoint}.py"
    if isinstance(hyperparameters, BaseModel):
        hyperparameters = hyperparameters.model_dump(mode="json")
    if isinstance(privacy, BaseModel):
        privacy = privacy.model_dump(mode="json")
    request = {
        "code_dir": str(Path(code_dir).resolve()),
        "entrypoint": entrypoint,
        "hyperparameters": dict(hyperparameters),
        "privacy": dict(privacy) if privacy is not None else None,
        "rounds": rounds,
    }
    with tempfile.TemporaryDirectory(prefix="fedsilo-declare-") as scratch:
        result = Path(scratch) / "result.json"
        work = Path(scratch) / "work"
        work.mkdir()
        environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
        try:
            finished = subprocess.run(
                [sys.executable, "-m", "fedsilo.jobs._layout", str(result)],
                input=json.dumps(request).encode(),
                cwd=work,
                env=environment,
                capture_output=True,
                timeout=BUILD_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ConfigError(
                f"model() did not return within {BUILD_SECONDS:g} s while fedsilo built it to "
                "declare the model's layout; build the model only in model(ctx), and load "
                "data in train and evaluate",
                file=str(task_file),
            ) from None
        answer: dict[str, Any] = {}
        if result.is_file():
            answer = json.loads(result.read_text())
    if "layout" in answer:
        try:
            return ModelLayout.model_validate(answer["layout"])
        except ValidationError as exc:
            raise ConfigError(
                f"the model that model() builds cannot be declared: {_first_error(exc)}",
                file=str(task_file),
            ) from None
    if "error" in answer:
        raise ConfigError(str(answer["error"]), file=str(answer.get("file") or task_file))
    tail = finished.stderr.decode(errors="replace").strip().splitlines()[-5:]
    raise ConfigError(
        f"building the model to declare its layout stopped (exit status {finished.returncode})"
        + (": " + " | ".join(tail) if tail else "")
        + "; run the job with `fedsilo sim` to see the whole error",
        file=str(task_file),
    )


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return str(first.get("msg", exc)).removeprefix("Value error, ")


def _build(request: Mapping[str, Any]) -> dict[str, Any]:
    """Import the task and build its model as the job worker does; the layout or the error."""
    from fedsilo.jobs._spec import Hyperparameters
    from fedsilo.privacy._spec import PrivacySpec
    from fedsilo.task import SiloRunner, load_task

    code_dir = Path(request["code_dir"])
    file = code_dir / f"{request['entrypoint']}.py"
    try:
        task = load_task(code_dir, request["entrypoint"])
    except ConfigError as exc:
        return {"error": exc.message, "file": exc.file or str(file)}
    runner = SiloRunner(
        task,
        silo=PACKING_SILO,
        inputs={},
        work_dir=Path.cwd(),
        hyperparameters=Hyperparameters.model_validate(request["hyperparameters"]),
        rounds=int(request.get("rounds") or 1),
        privacy=(
            PrivacySpec.model_validate(request["privacy"]) if request.get("privacy") else None
        ),
    )
    try:
        params = runner.build()
    except TaskFailed as exc:  # fedsilo's own words: model() returned something else
        return {"error": f"{exc.detail}; see docs/task-api.md", "file": str(file)}
    except Exception as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(file)]
        where = f" (at {file.name} line {frames[-1].lineno})" if frames else ""
        return {
            "error": f"model() failed while fedsilo built it to declare the model's layout: "
            f"{type(exc).__name__}: {exc}{where}. A job's model is built when it is packed, "
            "with the job's hyperparameters but no inputs and an empty ctx.work_dir: build "
            "it from ctx.hyperparameters alone, and read data in train and evaluate",
            "file": str(file),
        }
    return {"layout": ModelLayout.of(params).model_dump(mode="json")}


def main(argv: list[str] | None = None) -> int:
    """Read the request on stdin, write ``{"layout": ...}`` or ``{"error": ...}`` to RESULT."""
    args = sys.argv[1:] if argv is None else argv
    result = Path(args[0])
    answer = _build(json.loads(sys.stdin.read()))
    result.write_text(json.dumps(answer))
    return 0 if "layout" in answer else 1


if __name__ == "__main__":
    sys.exit(main())
