"""The job sandbox: every escape job code might try fails inside it, and works outside.

Each test runs a real job worker (``WorkerProcess``) with a tiny task module whose
``model()`` attempts one escape and records the outcome in its work folder; the same job is
run without the sandbox, where the attempt succeeds, so a pass means bubblewrap stopped it.
These tests need bubblewrap: they skip without it, and fail when
``FEDSILO_REQUIRE_SANDBOX=1`` (``make test`` installs it as root with apt-get).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsilo.errors import SandboxUnavailable, TaskFailed
from fedsilo.silo import _sandbox
from fedsilo.silo._protocol import Fit, Init, Noop, Prepare
from fedsilo.silo._sandbox import SandboxSpec, bwrap_path, check_sandbox, sandbox_argv
from fedsilo.silo._workerproc import WorkerProcess
from fedsilo.tensors import load_parameters

SECRET = "OTHER-SILO-PATIENT-0042"
KEY = "-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n-----END PRIVATE KEY-----\n"
ALLOWED_ENV = {"PATH", "HOME", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "OMP_NUM_THREADS"}
ALLOWED_ENV |= {"LANG", "TMPDIR", "PWD"}  # bwrap sets PWD after --chdir

TASK = '''\
"""A task that tries one escape in model() and records what happened in its work folder."""

import json
import os
import pathlib
import socket
import tempfile

import torch


def _attack(ctx):
    kind = ctx.hyperparameters.extra.get("attack", "none")
    target = str(ctx.hyperparameters.extra.get("target", ""))
    if kind == "read":
        return pathlib.Path(target).read_text()
    if kind == "write":
        pathlib.Path(target).write_text("planted")
        return pathlib.Path(target).read_text()
    if kind == "connect":
        host, port = target.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=3) as conn:
            return conn.recv(64).decode()
    if kind == "tempfile":
        path = pathlib.Path(tempfile.gettempdir()) / target
        path.write_text("planted")
        return str(path)
    if kind == "env":
        return dict(os.environ)
    if kind == "userns":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return "unshared"
    return None


def model(ctx):
    try:
        outcome = {"ok": True, "value": _attack(ctx)}
    except Exception as exc:
        outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    (ctx.work_dir / "outcome.json").write_text(json.dumps(outcome))
    return torch.nn.Linear(2, 1)


def train(model, ctx):
    rows = [
        [float(x) for x in line.split(",")]
        for line in ctx.input("train").read_text().splitlines()
    ]
    data = torch.tensor(rows)
    x, y = data[:, :2], data[:, 2:]
    opt = torch.optim.SGD(model.parameters(), lr=ctx.hyperparameters.lr)
    for _ in range(ctx.hyperparameters.epochs):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return {"num_samples": len(rows), "loss": float(loss)}


def evaluate(model, ctx):
    return {"num_samples": 0}
'''


def _sandbox_problem() -> str | None:
    if bwrap_path() is None:
        return (
            "bubblewrap is not installed (no 'bwrap' on PATH); `make test` installs it "
            "as root with apt-get install bubblewrap"
        )
    try:
        check_sandbox()
    except SandboxUnavailable as exc:
        return str(exc)
    return None


@pytest.fixture
def needs_bwrap() -> None:
    """Skip without a working bubblewrap, or fail when FEDSILO_REQUIRE_SANDBOX=1."""
    problem = _sandbox_problem()
    if problem is None:
        return
    if os.environ.get("FEDSILO_REQUIRE_SANDBOX") == "1":
        pytest.fail(f"FEDSILO_REQUIRE_SANDBOX=1 but {problem}")
    pytest.skip(problem)


@dataclass(frozen=True)
class Silo:
    """One silo's storage as the agent lays it out, with a neighbour's and a key nearby."""

    code: Path
    work: Path
    params: Path
    train: Path
    other_secret: Path
    key: Path

    @classmethod
    def create(cls, root: Path) -> Silo:
        job = root / "storage" / "silo-a" / "jobs" / "job-1"
        silo = cls(
            code=job / "code",
            work=job / "work",
            params=job / "params",
            train=root / "storage" / "silo-a" / "data" / "train.csv",
            other_secret=root / "storage" / "silo-b" / "data" / "secret.txt",
            key=root / "storage" / "silo-a" / "jobs" / "key.pem",
        )
        for folder in (silo.code, silo.work, silo.params, silo.train.parent):
            folder.mkdir(parents=True)
        silo.other_secret.parent.mkdir(parents=True)
        (silo.code / "task.py").write_text(TASK)
        silo.train.write_text("1,2,3\n2,1,0\n0,0,1\n1,1,2\n")
        silo.other_secret.write_text(SECRET)
        silo.key.write_text(KEY)
        silo.key.chmod(0o600)
        return silo

    def spec(self) -> SandboxSpec:
        return SandboxSpec(
            code_dir=self.code, inputs=(self.train,), writable=(self.work, self.params)
        )


@pytest.fixture
def silo(tmp_path: Path) -> Silo:
    return Silo.create(tmp_path)


def _start(silo: Silo, *, sandboxed: bool, hyperparameters: dict[str, Any]) -> WorkerProcess:
    worker = WorkerProcess(
        silo="silo-a",
        cwd=silo.work,
        log_file=silo.work.parent / "worker.log",
        sandbox=silo.spec() if sandboxed else None,
    )
    try:
        worker.request(
            Init(
                code_dir=str(silo.code),
                entrypoint="task",
                silo="silo-a",
                inputs={"train": str(silo.train)},
                work_dir=str(silo.work),
                hyperparameters=hyperparameters,
            )
        )
    except BaseException:
        worker.stop()
        raise
    return worker


def attempt(silo: Silo, attack: str, target: str = "", *, sandboxed: bool) -> dict[str, Any]:
    """Run a job whose ``model()`` tries ``attack`` on ``target``; what it saw."""
    outcome = silo.work / "outcome.json"
    outcome.unlink(missing_ok=True)
    worker = _start(
        silo, sandboxed=sandboxed, hyperparameters={"extra": {"attack": attack, "target": target}}
    )
    try:
        worker.request(Prepare(out=str(silo.params / "initial.safetensors")))
    finally:
        worker.stop()
    result: dict[str, Any] = json.loads(outcome.read_text())
    return result


# -- the command line (no bubblewrap needed) -------------------------------------------------


def _binds(argv: list[str]) -> list[tuple[str, str]]:
    """The ``(flag, target)`` of every bind in a bwrap command line."""
    return [
        (argv[i], argv[i + 2])
        for i in range(len(argv) - 2)
        if argv[i] in ("--bind", "--ro-bind") and argv[i - 1] not in ("--setenv",)
    ]


def test_argv_binds_only_what_the_job_may_see(tmp_path: Path) -> None:
    silo = Silo.create(tmp_path)
    argv = sandbox_argv(silo.spec(), ["python", "-m", "x"])
    binds = _binds(argv)
    assert ("--ro-bind", str(silo.code)) in binds
    assert ("--ro-bind", str(silo.train)) in binds
    assert ("--bind", str(silo.work)) in binds and ("--bind", str(silo.params)) in binds
    assert [flag for flag, _ in binds].count("--bind") == 2
    targets = {target for _, target in binds}
    for hidden in ("/", "/etc", "/home", "/root", str(silo.key), str(silo.other_secret.parent)):
        assert hidden not in targets
    assert {"--unshare-all", "--die-with-parent", "--clearenv", "--new-session"} <= set(argv)
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--uid") + 1] == "65534"
    assert argv[argv.index("--chdir") + 1] == str(silo.work)
    assert argv[-3:] == ["python", "-m", "x"]


def test_a_folder_both_code_and_writable_is_bound_writable_once(tmp_path: Path) -> None:
    argv = sandbox_argv(SandboxSpec(code_dir=tmp_path, writable=(tmp_path,)), ["true"])
    assert [flag for flag, target in _binds(argv) if target == str(tmp_path)] == ["--bind"]


def test_code_inside_a_writable_folder_stays_read_only(tmp_path: Path) -> None:
    code = tmp_path / "code"
    argv = sandbox_argv(SandboxSpec(code_dir=code, writable=(tmp_path,)), ["true"])
    binds = _binds(argv)
    assert binds.index(("--bind", str(tmp_path))) < binds.index(("--ro-bind", str(code)))


def test_a_silo_outside_tmp_gets_a_writable_private_tmp() -> None:
    import fedsilo

    installed = (sys.prefix, sys.base_prefix, str(Path(fedsilo.__file__).parents[1]))
    if any(Path(p).resolve().is_relative_to("/tmp") for p in installed):
        pytest.skip("this checkout or its venv lives under /tmp, which the sandbox then binds")
    spec = SandboxSpec(code_dir=Path("/srv/silo/jobs/j/code"), writable=(Path("/srv/silo/w"),))
    argv = sandbox_argv(spec, ["true"])
    assert argv[argv.index("--tmpfs") + 1] == "/tmp"
    assert argv[argv.index("TMPDIR") + 1] == "/tmp"
    assert ["--remount-ro", "/tmp"] not in [argv[i : i + 2] for i in range(len(argv))]
    assert argv[argv.index("--remount-ro") + 1] == "/"


def test_check_sandbox_names_the_missing_bubblewrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sandbox, "bwrap_path", lambda: None)
    _sandbox._probe.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="bubblewrap is not installed"):
            check_sandbox()
    finally:
        _sandbox._probe.cache_clear()


# -- escapes ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("needs_bwrap")
@pytest.mark.parametrize("target", ["other_secret", "key"])
def test_job_code_cannot_read_files_outside_its_binds(silo: Silo, target: str) -> None:
    path = str(getattr(silo, target))
    outside = attempt(silo, "read", path, sandboxed=False)
    assert outside["ok"] and outside["value"] in (SECRET, KEY)
    inside = attempt(silo, "read", path, sandboxed=True)
    assert not inside["ok"] and "No such file" in inside["error"]


@pytest.mark.usefixtures("needs_bwrap")
def test_job_code_sees_no_host_configuration(silo: Silo) -> None:
    inside = attempt(silo, "read", "/etc/passwd", sandboxed=True)
    assert not inside["ok"] and "No such file" in inside["error"]


@pytest.fixture
def server() -> Iterator[str]:
    """A TCP server on the host's loopback that greets whoever connects."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"hello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        sock.close()


@pytest.mark.usefixtures("needs_bwrap")
def test_job_code_cannot_reach_a_host_loopback_server(silo: Silo, server: str) -> None:
    outside = attempt(silo, "connect", server, sandboxed=False)
    assert outside == {"ok": True, "value": "hello"}
    inside = attempt(silo, "connect", server, sandboxed=True)
    assert not inside["ok"] and "Connection refused" in inside["error"]


@pytest.mark.usefixtures("needs_bwrap")
def test_job_code_has_no_route_anywhere(silo: Silo) -> None:
    # 192.0.2.1 is TEST-NET-1 (never routed); inside, only `lo` exists, so nothing is sent.
    inside = attempt(silo, "connect", "192.0.2.1:80", sandboxed=True)
    assert not inside["ok"] and "Network is unreachable" in inside["error"]


@pytest.mark.usefixtures("needs_bwrap")
@pytest.mark.parametrize("where", ["code", "input", "job folder"])
def test_job_code_cannot_write_into_the_silos_storage(silo: Silo, where: str) -> None:
    target = {
        "code": silo.code / "task.py",
        "input": silo.train,
        "job folder": silo.work.parent / "planted.txt",
    }[where]
    before = target.read_bytes() if target.exists() else None
    inside = attempt(silo, "write", str(target), sandboxed=True)
    assert not inside["ok"]
    assert any(w in inside["error"] for w in ("Read-only file system", "No such file"))
    assert (target.read_bytes() if target.exists() else None) == before
    outside = attempt(silo, "write", str(target), sandboxed=False)
    assert outside == {"ok": True, "value": "planted"}


@pytest.mark.usefixtures("needs_bwrap")
def test_job_code_cannot_write_into_the_system(silo: Silo) -> None:
    target = Path("/usr") / f"fedsilo-planted-{uuid.uuid4().hex}"
    inside = attempt(silo, "write", str(target), sandboxed=True)
    assert not inside["ok"] and "Read-only file system" in inside["error"]
    assert not target.exists()


@pytest.mark.usefixtures("needs_bwrap")
def test_job_code_cannot_write_into_the_sandboxs_own_skeleton(silo: Silo) -> None:
    inside = attempt(silo, "write", "/planted.txt", sandboxed=True)
    assert not inside["ok"] and "Read-only file system" in inside["error"]


@pytest.mark.usefixtures("needs_bwrap")
def test_job_codes_temporary_files_stay_private(silo: Silo) -> None:
    name = f"fedsilo-planted-{uuid.uuid4().hex}"
    inside = attempt(silo, "tempfile", name, sandboxed=True)
    assert inside["ok"], inside
    assert not Path(inside["value"]).exists()
    tmp = attempt(silo, "write", f"/tmp/{name}", sandboxed=True)
    assert tmp["ok"] or "Read-only file system" in tmp["error"]
    assert not (Path("/tmp") / name).exists()


@pytest.mark.usefixtures("needs_bwrap")
def test_job_code_sees_none_of_the_agents_environment(
    silo: Silo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDSILO_SECRET", "agent-token-1234")
    inside = attempt(silo, "env", sandboxed=True)
    assert inside["ok"]
    env: dict[str, str] = inside["value"]
    assert "FEDSILO_SECRET" not in env
    assert set(env) <= ALLOWED_ENV
    assert env["HOME"] == str(silo.work)


@pytest.mark.usefixtures("needs_bwrap")
def test_job_code_cannot_make_new_user_namespaces(silo: Silo) -> None:
    if "--disable-userns" not in sandbox_argv(silo.spec(), ["true"]):
        pytest.skip("this bubblewrap is older than 0.8 and cannot disable user namespaces")
    inside = attempt(silo, "userns", sandboxed=True)
    assert not inside["ok"] and "OSError" in inside["error"]


# -- lifetime --------------------------------------------------------------------------------

HELPER = """\
import json, sys, time
from pathlib import Path
from fedsilo.silo._protocol import Noop
from fedsilo.silo._sandbox import SandboxSpec
from fedsilo.silo._workerproc import WorkerProcess

work = Path(sys.argv[1])
worker = WorkerProcess(
    silo="silo-a", cwd=work, log_file=work.parent / "worker.log",
    sandbox=SandboxSpec(code_dir=work, writable=(work,)),
)
worker.request(Noop())
print(json.dumps({"bwrap": worker.pid}), flush=True)
time.sleep(120)
"""


def _descendants(pid: int) -> set[int]:
    """The live processes below ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.usefixtures("needs_bwrap")
def test_the_sandboxed_worker_dies_with_the_agent(tmp_path: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_text(HELPER)
    work = tmp_path / "check"
    agent = subprocess.Popen(
        [sys.executable, str(script), str(work)], stdout=subprocess.PIPE, text=True
    )
    sandboxed: set[int] = set()
    try:
        assert agent.stdout is not None
        line = agent.stdout.readline()
        assert json.loads(line)["bwrap"] > 0
        sandboxed = _descendants(agent.pid)
        assert len(sandboxed) >= 2  # bwrap, and the worker below it
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        deadline = time.monotonic() + 5
        while any(_running(p) for p in sandboxed) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in sandboxed if _running(p)]
    finally:
        for pid in sandboxed:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        if agent.stdout is not None:
            agent.stdout.close()


# -- the happy path --------------------------------------------------------------------------


@pytest.mark.usefixtures("needs_bwrap")
def test_a_job_trains_inside_the_sandbox(silo: Silo) -> None:
    worker = _start(silo, sandboxed=True, hyperparameters={"lr": 0.1, "epochs": 3})
    try:
        assert worker.request(Noop()).pid != worker.pid  # its own pid namespace
        initial = silo.params / "initial.safetensors"
        worker.request(Prepare(out=str(initial)))
        trained = silo.params / "round-1.safetensors"
        reply = worker.request(Fit(round=1, params=str(initial), out=str(trained)))
    finally:
        worker.stop()
    assert reply.train_metrics["num_samples"] == 4
    before, after = load_parameters(initial), load_parameters(trained)
    assert set(before) == set(after) == {"weight", "bias"}
    assert not np.allclose(before["weight"], after["weight"])
    assert trained.stat().st_uid == os.getuid()  # the agent owns what the job wrote


@pytest.mark.usefixtures("needs_bwrap")
def test_task_errors_inside_the_sandbox_reach_the_agent(silo: Silo) -> None:
    (silo.code / "task.py").write_text("raise RuntimeError('broken task module')\n")
    with pytest.raises(TaskFailed, match="broken task module"):
        _start(silo, sandboxed=True, hyperparameters={})
