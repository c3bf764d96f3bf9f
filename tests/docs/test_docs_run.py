"""The docs a new user follows run as written: README.md, docs/quickstart.md, stages 1
and 2 of docs/guide.md, and examples/helloworld/README.md.

Which blocks run, in the order they appear in the file:

- A fenced block tagged ``bash`` or ``sh`` is a list of commands, one a line. A command
  goes on over the next lines while bash says it is incomplete (a trailing backslash, an
  open ``for ... done``). Blank lines and comment lines are not commands.
- A fenced block tagged ``console`` is a terminal session: a line that starts with ``$ ``
  is a command (lines that start with ``> `` continue it), and every other line up to the
  next command is that command's expected output.
- A fenced block tagged ``python`` runs as one script with the ``python`` on ``PATH`` (the
  venv's, once the docs have activated it). A ``text`` block right after it (nothing but
  blank lines between) is its expected output.
- Blocks without a tag, or with another tag (``text``, ``yaml``), are not run: file trees,
  sample files, output shown on its own.

Expected output is compared with what the command printed (stdout and stderr together):
every line of it, except blank lines and lines of only ``...``, must occur in the output,
in order. Both are compared word by word, so where a line wraps does not matter, and a
``...`` inside a line stands for anything. What changes from run to run is masked on both
sides: durations (``16.3 s``, ``1351 ms``, ``0:00:13``, and numbers with exactly two
decimals: the wall-clock columns), job ids (``digits-8caf3f32``), loopback ports, the
width of progress bars, and the folder the commands run in, written ``/home/me/fedsilo``
in the docs. Metrics are seeded, so a stale accuracy fails.

Each file runs in a fresh folder of its own: a copy of the repository's files (tracked and
untracked, not ignored: what a clone of this tree holds), in which ``.venv`` is a link to
the repository's installed venv. The commands start with the venv off ``PATH``, no
``FEDSILO_*`` variables but the test switches, and 80 columns, as a new user's shell. The
commands of :data:`SUBSTITUTES` run differently or not at all, each for the reason given
there; ``JOB_ID`` (see :data:`PLACEHOLDERS`) is replaced by the id the docs told the
reader to paste. Stage 3 of the guide is not run here: it needs a person to approve the
job at each of three hospitals, and DP training on the full dataset.

A failure names the file, the line and the command. Afterwards every federation a doc
brought up in the folder is stopped, and any process still running there fails the test
(then it is killed): the docs must stop what they start.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedsilo.runtime import free_port_block
from tests.datasets.real_data import real_data
from tests.silo.test_sandbox import _sandbox_problem

DOCS = {
    "README.md": None,
    "docs/quickstart.md": None,
    "docs/guide.md": "## Stage 3: the secure setup",  # run up to this heading
    "examples/helloworld/README.md": None,
}

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
RUN_ROOT_IN_DOCS = "/home/me/fedsilo"
COMMAND_TIMEOUT = 1800

SUBSTITUTES: dict[str, tuple[str | None, str]] = {
    # the docs' command: (what runs instead, None when nothing runs), and why
    "make quickstart": (
        "make -o .venv/.fedsilo-installed quickstart",
        "the folder's .venv is the repository's installed venv; make's install step would "
        "point its editable install at this temporary copy. The rest of the target runs",
    ),
    "make test": (None, "runs the whole test suite, this test included"),
    "make integration": (None, "runs tests/integration, a part of `make test`"),
    "make lint": (None, "ruff and mypy over the sources, a CI step of its own"),
    "export FEDSILO_DATA=/path/to/datasets": (
        "export FEDSILO_DATA={data}",
        "the reader's data folder: the one the test suite reads ($FEDSILO_DATA)",
    ),
}

PLACEHOLDERS = {
    "JOB_ID": "the id that the last `fedsilo submit` printed, as the reader pastes it",
}

_MASKS = (
    (re.compile(r"\b\d+:\d\d:\d\d\b"), "<time>"),
    (re.compile(r"\b\d+(\.\d+)? ?(s|ms)\b"), "<time>"),
    (re.compile(r"(?<![\d.])\d+\.\d\d(?![\d.])"), "<time>"),
    (re.compile(r"\b([a-z][a-z0-9-]*)-[0-9a-f]{8}\b"), r"\1-<id>"),
    (re.compile(r"\b127\.0\.0\.1:\d+"), "127.0.0.1:<port>"),
    (re.compile(r"━+"), "━"),
)
_JOB_ID = re.compile(r"\b[a-z][a-z0-9-]*-[0-9a-f]{8}\b")


@dataclass
class Command:
    """One command of a doc, with the output the doc shows for it."""

    doc: str
    line: int
    text: str
    expected: list[tuple[int, str]] = field(default_factory=list)

    def where(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


@dataclass(frozen=True)
class Block:
    """A fenced block: its tag, the number of its first line inside the fence, its
    lines, and whether only blank lines stand between it and the block before."""

    tag: str
    line: int
    lines: tuple[str, ...]
    follows: bool


def blocks(text: str, until: str | None = None) -> list[Block]:
    """The fenced blocks of a markdown text, up to the heading ``until`` if given."""
    found: list[Block] = []
    tag: str | None = None
    start = 0
    body: list[str] = []
    prose = True  # a non-blank line since the last block closed
    for number, line in enumerate(text.splitlines(), start=1):
        if tag is None:
            if until is not None and line.strip() == until:
                break
            fence = re.match(r"^```([\w-]*)\s*$", line)
            if fence:
                tag, start, body = fence.group(1), number + 1, []
            elif line.strip():
                prose = True
        elif line.rstrip() == "```":
            found.append(Block(tag, start, tuple(body), follows=bool(found) and not prose))
            tag, prose = None, False
        else:
            body.append(line)
    return found


def _complete(text: str) -> bool:
    """Whether bash reads ``text`` as whole commands."""
    if text.rstrip().endswith("\\"):
        return False
    checked = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    return checked.returncode == 0


def commands(doc: str, found: list[Block]) -> list[Command]:
    """The commands of a doc's blocks, in order, each with its expected output."""
    result: list[Command] = []
    for index, block in enumerate(found):
        if block.tag in ("bash", "sh"):
            pending: list[str] = []
            first = 0
            for offset, line in enumerate(block.lines):
                if not pending and (not line.strip() or line.lstrip().startswith("#")):
                    continue
                if not pending:
                    first = block.line + offset
                pending.append(line)
                if _complete("\n".join(pending)):
                    result.append(Command(doc, first, "\n".join(pending)))
                    pending = []
            assert not pending, f"{doc}:{first}: an unfinished command: {pending}"
        elif block.tag == "console":
            for offset, line in enumerate(block.lines):
                number = block.line + offset
                if line.startswith("$ "):
                    result.append(Command(doc, number, line[2:]))
                elif line.startswith("> ") and result and not result[-1].expected:
                    result[-1].text += "\n" + line[2:]
                else:
                    assert result and result[-1].line >= block.line, (
                        f"{doc}:{number}: output before any `$ ` command in a console block"
                    )
                    result[-1].expected.append((number, line))
        elif block.tag == "python":
            script = "\n".join(block.lines)
            result.append(Command(doc, block.line, f"python - <<'EOF'\n{script}\nEOF"))
            after = found[index + 1] if index + 1 < len(found) else None
            if after is not None and after.tag == "text" and after.follows:
                result[-1].expected = [(after.line + i, t) for i, t in enumerate(after.lines)]
    return result


def normalize(text: str, run_root: Path | None = None) -> str:
    """Output with what changes between runs masked and all whitespace one space."""
    if run_root is not None:
        text = text.replace(str(run_root), RUN_ROOT_IN_DOCS)
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return " ".join(text.split())


def mismatch(expected: list[tuple[int, str]], output: str, run_root: Path) -> str | None:
    """The first expected line (``line: text``) the output lacks, in order; None if none."""
    actual = normalize(output, run_root)
    position = 0
    for number, line in expected:
        if not line.strip() or line.strip() == "...":
            continue
        parts = [re.escape(normalize(p)) for p in line.split("...")]
        pattern = re.compile(".*?".join(p for p in parts if p))
        found = pattern.search(actual, position)
        if found is None:
            return f"{number}: {line.strip()}"
        position = found.end()
    return None


def resolve(command: Command, last_job: str | None) -> tuple[str | None, str]:
    """What runs for a doc's command (None: nothing) and a note saying why, if not as is."""
    key = " ".join(re.sub(r"\s#.*$", "", command.text).split())
    if key in SUBSTITUTES:
        replacement, why = SUBSTITUTES[key]
        if replacement is not None:
            replacement = replacement.format(data=shlex.quote(os.environ.get("FEDSILO_DATA", "")))
        return replacement, why
    text = command.text
    if "JOB_ID" in text:
        assert last_job, f"{command.where()}: JOB_ID, but no `fedsilo submit` printed a job id"
        text = text.replace("JOB_ID", last_job)
    return text, ""


class Shell:
    """A reader's shell: each command runs in bash, in its own process group, with the
    working folder and the exported variables the previous one left."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.state = Path(tempfile.mkdtemp(prefix="fedsilo-docs-shell-"))
        (self.state / "cwd").write_text(str(root))
        self.env = env

    def run(self, command: str) -> tuple[int, str]:
        script = self.state / "command.sh"
        script.write_text(
            f'cd "$(cat {self.state}/cwd)"\n'
            f"[ -f {self.state}/env ] && source {self.state}/env\n"
            f"{command}\n"
            "__fedsilo_rc=$?\n"
            f"export -p > {self.state}/env\n"
            f"pwd > {self.state}/cwd\n"
            "exit $__fedsilo_rc\n"
        )
        proc = subprocess.Popen(
            ["bash", str(script)],
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            return 124, output + f"\n(killed after {COMMAND_TIMEOUT} s)"
        return proc.returncode, output

    def close(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)


def fresh_copy(root: Path) -> None:
    """The repository's files (tracked, and untracked but not ignored) under ``root``,
    with ``.venv`` a link to the repository's venv."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file() and not source.is_symlink():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (root / ".venv").symlink_to(VENV)


def reader_env() -> dict[str, str]:
    """A new user's environment: no venv on PATH, no fedsilo settings, 80 columns."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "FORCE_COLOR", "COLUMNS", "LINES")
        and not (k.startswith("FEDSILO_") and not k.startswith("FEDSILO_REQUIRE_"))
    }
    venv_bin = {str(VENV / "bin"), str(Path(sys.executable).parent)}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p not in venv_bin
    )
    env["COLUMNS"] = "80"
    return env


def _processes_under(root: Path) -> dict[int, str]:
    """Processes whose working folder or command line lies in ``root``."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cmdline and (str(root) in cmdline or cwd == str(root) or cwd.startswith(f"{root}/")):
            found[int(entry.name)] = cmdline
    return found


def _left_running(root: Path, grace: float = 15.0) -> dict[int, str]:
    deadline = time.monotonic() + grace
    left = _processes_under(root)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _processes_under(root)
    return left


def stop_everything(root: Path) -> dict[int, str]:
    """``fedsilo down`` every workspace under ``root`` still running, then kill what is
    left there; what had to be killed."""
    for processes in root.rglob("run/processes.json"):
        subprocess.run(
            [sys.executable, "-m", "fedsilo", "down", str(processes.parent.parent)],
            capture_output=True,
            timeout=120,
        )
    left = _left_running(root, grace=5.0)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


@pytest.fixture
def run_root() -> Iterator[Path]:
    """A fresh folder of the repository's files; stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="fsdoc-"))
    fresh_copy(root)
    try:
        yield root
    finally:
        stop_everything(root)
        shutil.rmtree(root, ignore_errors=True)


def run_doc(doc: str, root: Path, until: str | None = None) -> list[str]:
    """Run a doc's commands in order; the notes of what ran differently, for the log."""
    found = commands(doc, blocks(_read(doc), until))
    assert found, f"{doc} has no commands to run"
    shell = Shell(root, reader_env())
    notes: list[str] = []
    last_job: str | None = None
    try:
        for command in found:
            text, why = resolve(command, last_job)
            if why:
                notes.append(f"{command.where()} -> {text or 'not run'}: {why}")
            if text is None:
                continue
            rc, output = shell.run(text)
            tail = output[-6000:]
            assert rc == 0, f"{command.where()}\nexited {rc}; its output ends:\n{tail}"
            printed = _JOB_ID.search(output) if text.startswith("fedsilo submit") else None
            last_job = printed.group() if printed else last_job
            missing = mismatch(command.expected, output, root)
            assert missing is None, (
                f"{command.where()}\nthe doc shows, at line {missing}\n"
                f"which the output lacks (after the lines before it). The output:\n{tail}"
            )
        left = _left_running(root)
        assert not left, f"{doc} left processes running: {left}"
    finally:
        shell.close()
    return notes


def test_every_substitute_and_placeholder_is_in_the_docs() -> None:
    """The table of commands run differently names only commands the docs hold."""
    found = [c for doc, until in DOCS.items() for c in commands(doc, blocks(_read(doc), until))]
    keys = {" ".join(re.sub(r"\s#.*$", "", c.text).split()) for c in found}
    assert set(SUBSTITUTES) <= keys, set(SUBSTITUTES) - keys
    assert all(any(p in c.text for c in found) for p in PLACEHOLDERS)


def test_a_stale_sample_fails_and_a_true_one_passes(tmp_path: Path) -> None:
    output = (
        f"done in 17.8 s (the FL job took 8.9 s). The workspace is \n{tmp_path}/ws; the\n"
        "job digits-7b90c259 (digits) by submitter: succeeded, round 5/5, silos silo-a, \n"
        "silo-b, silo-c\n│     5 │ all    │   0.9611 │ 0.1567 │            │\n"
    )
    shown = [
        "done in 16.3 s (the FL job took 6.9 s). The workspace is",
        f"{RUN_ROOT_IN_DOCS}/ws; the",
        "...",
        "job digits-8caf3f32 (digits) by submitter: succeeded, round 5/5, silos silo-a,",
        "silo-b, silo-c",
        "│     5 │ all    │   0.9611 │ ... │",
    ]
    assert mismatch(list(enumerate(shown)), output, tmp_path) is None
    stale = [*shown[:5], "│     5 │ all    │   0.9583 │ ... │"]
    assert mismatch(list(enumerate(stale)), output, tmp_path) == f"5: {stale[5]}"
    failed = [shown[0], shown[3].replace("succeeded", "failed")]
    assert mismatch(list(enumerate(failed)), output, tmp_path) is not None
    reordered = [shown[4], shown[0]]
    assert mismatch(list(enumerate(reordered)), output, tmp_path) is not None


@pytest.mark.integration
def test_a_failing_doc_names_its_line_and_leaves_nothing_running(
    run_root: Path, tmp_path: Path
) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```bash\n"
        "source .venv/bin/activate\n"
        f"sed 's/port: 7700/port: {free_port_block(4)}/' examples/helloworld/federation.yaml"
        " > hello.yaml\n"
        "fedsilo provision hello.yaml --out ws-hello\n"
        "```\n\n"
        "```console\n"
        "$ fedsilo up ws-hello\n"
        "federation 'helloworld' is down\n"
        "```\n"
    )
    with pytest.raises(AssertionError, match=rf"{doc}:8: fedsilo up ws-hello") as failed:
        run_doc(str(doc), run_root)
    assert "9: federation 'helloworld' is down" in str(failed.value)
    assert (run_root / "ws-hello" / "run" / "processes.json").is_file()
    assert stop_everything(run_root) == {}  # fedsilo down stopped it all; nothing to kill
    assert _processes_under(run_root) == {}


def _read(doc: str) -> str:
    return (REPO / doc).read_text()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("doc", list(DOCS))
@pytest.mark.timeout(3600)
def test_doc_runs_as_written(doc: str, run_root: Path) -> None:
    problem = _sandbox_problem()
    if problem is not None:
        if os.environ.get("FEDSILO_REQUIRE_SANDBOX") == "1":
            pytest.fail(f"FEDSILO_REQUIRE_SANDBOX=1 but {problem}")
        pytest.skip(f"the docs run their jobs in bubblewrap, as they show: {problem}")
    if doc == "docs/guide.md":
        real_data("fashion-mnist")
    for note in run_doc(doc, run_root, DOCS[doc]):
        print(note)
