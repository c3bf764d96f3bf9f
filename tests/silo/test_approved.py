"""The code a silo approved last per job name, and the diff an approver reads against it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fedsilo.jobs import Manifest
from fedsilo.silo._approved import ApprovedCode, code_files, diff_code


def _code(folder: Path, files: dict[str, bytes]) -> tuple[Path, Manifest]:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder, Manifest(files={k: hashlib.sha256(v).hexdigest() for k, v in files.items()})


V1 = {
    "task.py": b"def model(ctx):\n    return Linear(64, 10)\n",
    "util.py": b"SCALE = 2\n",
    "weights.bin": bytes(range(256)),
}


def test_the_first_job_of_a_name_is_all_new_and_its_files_are_listed(tmp_path: Path) -> None:
    store = ApprovedCode(tmp_path / "storage")
    code, manifest = _code(tmp_path / "v1", V1)
    change = store.review("digits", code, manifest)
    assert change.first and change.changed and change.previous_job_id is None
    assert change.added == ("task.py", "util.py", "weights.bin")
    assert "+++ b/task.py" in change.diff and "+    return Linear(64, 10)" in change.diff
    assert "Binary file weights.bin added: absent -> 256 B" in change.diff
    files, unlisted = code_files(code, manifest)
    assert unlisted == 0
    assert [(f.path, f.bytes) for f in files] == [(k, len(v)) for k, v in sorted(V1.items())]
    assert files[0].sha256 == hashlib.sha256(V1["task.py"]).hexdigest()


def test_after_an_approval_the_next_job_of_the_name_is_diffed_against_it(tmp_path: Path) -> None:
    store = ApprovedCode(tmp_path / "storage")
    code, manifest = _code(tmp_path / "v1", V1)
    store.keep("digits", "job-1", code, manifest)
    same = store.review("digits", *_code(tmp_path / "again", V1))
    assert not same.changed and same.previous_job_id == "job-1" and same.diff == ""
    v2 = {**V1, "task.py": V1["task.py"].replace(b"64, 10", b"64, 4096"), "new.py": b"X = 1\n"}
    del v2["util.py"]
    v2["weights.bin"] = bytes(300)
    change = store.review("digits", *_code(tmp_path / "v2", v2))
    assert change.changed and not change.first and change.previous_job_id == "job-1"
    assert (change.added, change.removed, change.modified) == (
        ("new.py",),
        ("util.py",),
        ("task.py", "weights.bin"),
    )
    assert "-    return Linear(64, 10)\n+    return Linear(64, 4096)" in change.diff
    assert "--- a/util.py\n+++ /dev/null" in change.diff
    assert "Binary file weights.bin changed: 256 B, sha256 40aff2e9d2d8922e -> 300 B" in (
        change.diff
    )
    # another name has its own history; a name is never a path in the silo's storage
    assert store.review("../../etc", *_code(tmp_path / "v3", V1)).first
    assert all(".." not in p.name for p in (tmp_path / "storage" / "approved").iterdir())


def test_the_last_approval_replaces_the_one_before(tmp_path: Path) -> None:
    store = ApprovedCode(tmp_path / "storage")
    store.keep("digits", "job-1", *_code(tmp_path / "v1", V1))
    v2 = {**V1, "util.py": b"SCALE = 3\n"}
    store.keep("digits", "job-2", *_code(tmp_path / "v2", v2))
    change = store.review("digits", *_code(tmp_path / "v2-again", v2))
    assert not change.changed and change.previous_job_id == "job-2"
    assert [p.name for p in (tmp_path / "storage" / "approved").iterdir()] == [
        hashlib.sha256(b"digits").hexdigest()[:32]
    ]


def test_a_long_diff_is_cut_with_a_note_naming_what_was_left_out() -> None:
    old = {f"f{i:02d}.py": b"" for i in range(30)}
    new = {name: b"line\n" * 200 for name in old}
    added, removed, modified, diff, cut = diff_code(old, new, limit=4096)
    assert cut and len(modified) == 30 and not added and not removed
    assert len(diff.encode()) < 4096 + 1024
    assert diff.endswith("\n") and "the diff is cut at 4 KiB; not shown (in full): " in diff
    note = diff.splitlines()[-1]
    assert note.endswith("f22.py and 7 more") and "f00.py" not in note  # f00 was shown
    assert diff_code(old, new)[4] is False
