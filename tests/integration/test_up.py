"""A federation that lost processes: status names them, up starts only those."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from fedsilo.runtime import processes, up
from tests.integration.conftest import Federation

pytestmark = pytest.mark.integration


def _fedsilo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedsilo", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
    )


def test_up_starts_only_what_is_missing(fresh: Federation) -> None:
    up(fresh.root)
    before = {p.name: p.pid for p in processes(fresh.root)}
    for name in ("orchestrator", "silo-b"):
        os.kill(before[name], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(p.alive for p in processes(fresh.root) if p.name in ("orchestrator", "silo-b")):
        assert time.monotonic() < deadline
        time.sleep(0.1)

    shown = _fedsilo("status", str(fresh.root))
    assert shown.returncode == 1
    assert "down: orchestrator, silo-b; start what is missing with: fedsilo up" in shown.stdout
    assert "Traceback" not in shown.stdout + shown.stderr

    started = _fedsilo("up", str(fresh.root))
    assert started.returncode == 0, started.stdout + started.stderr
    assert "started orchestrator, silo-b; the other processes were running" in started.stdout
    after = {p.name: (p.pid, p.alive) for p in processes(fresh.root)}
    assert all(alive for _, alive in after.values())
    for name in ("silo-a", "silo-c", "silo-a-approval"):
        assert after[name][0] == before[name]  # left running, not restarted
    assert after["silo-b"][0] != before["silo-b"]

    whole = _fedsilo("status", str(fresh.root))
    assert whole.returncode == 0 and "down:" not in whole.stdout
    assert "processes on this machine" in whole.stdout
    again = _fedsilo("up", str(fresh.root))
    assert again.returncode == 1 and "already running" in again.stderr
