"""Telling whether a process of a local federation still runs, from its pid."""

from __future__ import annotations

import subprocess
import sys
import time

from fedsilo.runtime._local import _alive

SLEEP = "import time, sys; time.sleep(float(sys.argv[1]))"


def _start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SLEEP, *args], start_new_session=True)


def test_a_process_just_started_counts_as_alive() -> None:
    """Right after exec its command line is briefly empty: that is not an exit."""
    procs = [_start("3", "fedsilo") for _ in range(30)]
    try:
        assert all(_alive(p.pid) for p in procs)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_an_exited_process_and_a_reused_pid_do_not() -> None:
    zombie = _start("0", "fedsilo")
    deadline = time.monotonic() + 10
    while _alive(zombie.pid) and time.monotonic() < deadline:  # exited, not yet reaped
        time.sleep(0.05)
    assert not _alive(zombie.pid)
    zombie.wait()
    assert not _alive(zombie.pid)
    stranger = subprocess.Popen(["sleep", "3"])  # another program, as under a reused pid
    try:
        time.sleep(0.5)
        assert not _alive(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()
