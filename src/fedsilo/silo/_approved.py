"""The code a silo approved last for each job name, and how a new job's code differs from it.

After an approval, the agent keeps a copy of the job's code files in its own storage
(``STORAGE/approved/<digest of the job name>/``), replacing the copy of the job of that
name approved before. When a job asks for approval, the request lists every file of its
code (size and sha256) and a unified diff against that copy, so that a person reads what
changed, and a policy can hold a job whose code changed (``code_changed: true``).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from fedsilo.approval import CodeChange, CodeFile
from fedsilo.config import format_bytes
from fedsilo.jobs import Manifest

__all__ = ["MAX_DIFF_BYTES", "MAX_LISTED_FILES", "ApprovedCode", "code_files", "diff_code"]

MAX_DIFF_BYTES = 256 * 1024
"""The diff a request carries is cut here, with a note naming the files left out."""
MAX_DIFF_FILE = 1024 * 1024
"""A text file larger than this is shown as changed, with its sizes and digests."""
MAX_LISTED_FILES = 10_000
"""A request lists at most this many files; it counts the rest."""
_RECORD = "APPROVED.json"
_FILES = "files"


class _Record(BaseModel):
    """What the kept copy is: the job it came from, its manifest, when it was approved."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_name: str
    job_id: str
    manifest_digest: str
    approved_at: float
    files: dict[str, str]


def code_files(code_dir: Path, manifest: Manifest) -> tuple[tuple[CodeFile, ...], int]:
    """Every file of an unpacked, verified bundle with its size and sha256 (from the
    manifest), in path order, at most :data:`MAX_LISTED_FILES`; and how many were left out."""
    listed = [
        CodeFile(path=path, bytes=(code_dir / path).stat().st_size, sha256=digest)
        for path, digest in sorted(manifest.files.items())[:MAX_LISTED_FILES]
    ]
    return tuple(listed), max(0, len(manifest.files) - MAX_LISTED_FILES)


def _text(data: bytes) -> list[str] | None:
    """The lines of a text file, or ``None`` for a binary (or too large) one."""
    if len(data) > MAX_DIFF_FILE or b"\0" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n\\ No newline at end of file\n"
    return lines


def _describe(data: bytes | None) -> str:
    if data is None:
        return "absent"
    return f"{format_bytes(len(data))}, sha256 {hashlib.sha256(data).hexdigest()[:16]}"


def _file_diff(path: str, old: bytes | None, new: bytes | None) -> str:
    """The unified diff of one file (``None``: the file is absent on that side)."""
    old_lines = [] if old is None else _text(old)
    new_lines = [] if new is None else _text(new)
    if old_lines is None or new_lines is None:
        word = "added" if old is None else "removed" if new is None else "changed"
        return f"Binary file {path} {word}: {_describe(old)} -> {_describe(new)}\n"
    return "".join(
        difflib.unified_diff(
            old_lines,
            new_lines,
            fromfile="/dev/null" if old is None else f"a/{path}",
            tofile="/dev/null" if new is None else f"b/{path}",
        )
    )


def diff_code(
    old: dict[str, bytes], new: dict[str, bytes], *, limit: int = MAX_DIFF_BYTES
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], str, bool]:
    """Added, removed and modified paths, the unified diff of them all cut at ``limit``
    bytes, and whether it was cut (the diff then ends with a note naming what was left
    out)."""
    added = tuple(sorted(set(new) - set(old)))
    removed = tuple(sorted(set(old) - set(new)))
    modified = tuple(sorted(p for p in set(old) & set(new) if old[p] != new[p]))
    pieces: list[str] = []
    size = 0
    left: list[str] = []
    for path in sorted((*added, *removed, *modified)):
        if left:
            left.append(path)
            continue
        piece = _file_diff(path, old.get(path), new.get(path))
        encoded = piece.encode()
        if size + len(encoded) > limit:
            room = limit - size
            head = encoded[:room].decode(errors="ignore")
            head = head[: head.rfind("\n") + 1]
            if head:
                pieces.append(head)
            left.append(path)
            continue
        pieces.append(piece)
        size += len(encoded)
    if left:
        shown = ", ".join(left[:20]) + (f" and {len(left) - 20} more" if len(left) > 20 else "")
        pieces.append(
            f"... the diff is cut at {format_bytes(limit)}; not shown (in full): {shown}\n"
        )
    return added, removed, modified, "".join(pieces), bool(left)


def _read_files(root: Path, paths: list[str]) -> dict[str, bytes]:
    return {path: (root / path).read_bytes() for path in paths}


class ApprovedCode:
    """The silo's copy of the code it approved last for each job name."""

    def __init__(self, storage: Path) -> None:
        self.root = storage / "approved"
        self._lock = threading.Lock()

    def _folder(self, job_name: str) -> Path:
        # the name comes from the submitter: it never becomes a path itself
        return self.root / hashlib.sha256(job_name.encode()).hexdigest()[:32]

    def _record(self, job_name: str) -> _Record | None:
        path = self._folder(job_name) / _RECORD
        try:
            record = _Record.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            return None  # none kept (or a copy that is not whole): as if none was approved
        return record if record.job_name == job_name else None

    def review(self, job_name: str, code_dir: Path, manifest: Manifest) -> CodeChange:
        """How the code in ``code_dir`` differs from the code last approved as ``job_name``."""
        with self._lock:
            record = self._record(job_name)
            old = (
                {}
                if record is None
                else _read_files(self._folder(job_name) / _FILES, [*record.files])
            )
        new = _read_files(code_dir, sorted(manifest.files))
        added, removed, modified, diff, cut = diff_code(old, new)
        return CodeChange(
            previous_job_id=None if record is None else record.job_id,
            previous_manifest=None if record is None else record.manifest_digest,
            added=added,
            removed=removed,
            modified=modified,
            diff=diff,
            diff_truncated=cut,
        )

    def keep(self, job_name: str, job_id: str, code_dir: Path, manifest: Manifest) -> None:
        """Keep the approved code of ``job_id`` as the code last approved for ``job_name``.

        Written in a staging folder and moved into place, so that a reader finds the old
        copy or the new one, whole.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".staging-"))
        try:
            for path in manifest.files:
                target = staging / _FILES / path
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(code_dir / path, target)
            record = _Record(
                job_name=job_name,
                job_id=job_id,
                manifest_digest=manifest.digest,
                approved_at=time.time(),
                files=dict(manifest.files),
            )
            (staging / _RECORD).write_text(record.model_dump_json(indent=2))
            with self._lock:
                folder = self._folder(job_name)
                old = None
                if folder.exists():
                    old = Path(tempfile.mkdtemp(dir=self.root, prefix=".old-"))
                    os.replace(folder, old / "copy")
                os.replace(staging, folder)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
