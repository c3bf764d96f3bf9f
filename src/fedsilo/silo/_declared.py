"""Parameters leave a silo only as the model the job declared.

The bundle's ``MODEL.json`` (written when the job was packed, under the signature, shown to
the approver) lists every tensor of the model with its shape and dtype. Before the agent
sends any parameters, it reads the file's safetensors header and refuses to send it unless
it holds exactly those tensors, with exactly those shapes and dtypes, packed with nothing
beside them: no tensor more or less, no metadata, no bytes between or after the tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedsilo.api._messages import JobTask
from fedsilo.audit import AuditLog
from fedsilo.errors import PolicyRejected, SignatureError
from fedsilo.jobs import MODEL_NAME, ModelLayout

__all__ = ["RULE", "check_parameters", "gate_parameters", "read_declared"]

RULE = "declared-model"
"""The rule a refusal names: the parameters are not the model the job declared."""

MAX_HEADER = 64 * 1024 * 1024
_DTYPES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "I64": "int64",
    "U64": "uint64",
    "F64": "float64",
}
_ALIGN = 8  # safetensors pads its header with spaces to a multiple of 8 bytes


def read_declared(code_dir: Path) -> ModelLayout | None:
    """The model an unpacked, verified bundle declares; ``None`` if it declares none."""
    path = code_dir / MODEL_NAME
    if not path.is_file():
        return None
    try:
        return ModelLayout.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = str(first.get("msg", "")).removeprefix("Value error, ")
        raise SignatureError(
            f"the bundle's {MODEL_NAME} is malformed ({where or 'file'}: {message}); pack the "
            "job again with `fedsilo submit`, which writes it"
        ) from None


def _shape(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, list) or not all(isinstance(d, int) and d >= 0 for d in value):
        return None
    return tuple(value)


def check_parameters(declared: ModelLayout, path: Path) -> tuple[str | None, str] | None:
    """Why the safetensors file at ``path`` is not exactly ``declared``: the tensor at fault
    (``None`` when no one tensor is) and what is wrong; ``None`` when it is exactly it."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 2 or length > min(MAX_HEADER, size - 8):
            return None, "the file is not safetensors"
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except ValueError:
        return None, "the file's header is not JSON"
    if not isinstance(header, dict):
        return None, "the file's header is not a JSON object"
    if header.pop("__metadata__", None):
        return None, "the file carries metadata beside the tensors"
    compact = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if length >= len(compact) + _ALIGN:
        return None, "the file's header holds more than its tensors' names, shapes and dtypes"
    names = set(header)
    for declared_tensor in declared.tensors:
        if declared_tensor.name not in names:
            return declared_tensor.name, "the model declares it, and the parameters do not hold it"
    wanted = {t.name: t for t in declared.tensors}
    spans: list[tuple[int, int]] = []
    for name, entry in sorted(header.items()):
        tensor = wanted.get(name)
        if tensor is None:
            return name, "the model the bundle declares has no such tensor"
        if not isinstance(entry, dict):
            return name, "its header entry is not an object"
        shape = _shape(entry.get("shape"))
        dtype = _DTYPES.get(str(entry.get("dtype")), str(entry.get("dtype")))
        if shape != tensor.shape or dtype != tensor.dtype:
            shown = "?" if shape is None else f"[{', '.join(map(str, shape))}]"
            return (
                name,
                f"it is {shown} {dtype}, and the model the bundle declares has {tensor.describe()}",
            )
        offsets = entry.get("data_offsets")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or offsets[1] - offsets[0] != tensor.bytes
        ):
            return name, "its bytes in the file do not match its shape and dtype"
        spans.append((offsets[0], offsets[1]))
    end = 0
    for begin, stop in sorted(spans):
        if begin != end:
            return None, "the file holds bytes between its tensors"
        end = stop
    if end != declared.bytes or size != 8 + length + end:
        return None, "the file holds bytes beyond its tensors"
    return None


def gate_parameters(
    audit: AuditLog, silo: str, task: JobTask, declared: ModelLayout | None, path: Path
) -> None:
    """Let the parameters at ``path`` leave only if they are exactly the declared model.

    Otherwise nothing is sent: the refusal goes to the silo's audit log (``output.refused``)
    and :class:`PolicyRejected` fails the job, naming the silo and the tensor.
    """
    if declared is None:
        fault: tuple[str | None, str] | None = (
            None,
            f"the job's bundle declares no model ({MODEL_NAME})",
        )
    else:
        fault = check_parameters(declared, path)
    if fault is None:
        return
    tensor, why = fault
    where = "built" if task.round == 0 else f"trained in round {task.round}"
    subject = f"tensor '{tensor}' of the model {where}" if tensor else f"the model {where}"
    reason = (
        f"{subject} is not the model the job declared: {why}; nothing was sent. A silo "
        "sends only the model that model(ctx) built when the job was packed (the bundle's "
        f"{MODEL_NAME}, which the approval showed): keep the model's tensors, shapes and "
        "dtypes as model(ctx) makes them"
    )
    audit.append(
        "output.refused",
        job_id=task.job_id,
        output="model",
        round=task.round,
        tensor=tensor,
        reason=why,
    )
    raise PolicyRejected(silo, RULE, reason)
