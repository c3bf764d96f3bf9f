"""``fedsilo tracking ui`` serves the workspace's store on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fedsilo.tracking import Tracker, ui_command


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ui_command_points_at_the_workspace_store(tmp_path: Path) -> None:
    command = ui_command(tmp_path, port=5123)
    assert command.url == "http://127.0.0.1:5123"
    assert f"sqlite:///{tmp_path.absolute()}/tracking/mlflow.db" in command.argv
    assert (tmp_path / "tracking" / "artifacts").as_uri() in command.argv
    assert command.env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert command.argv[command.argv.index("--host") + 1] == "127.0.0.1"


@pytest.mark.slow
@pytest.mark.integration
def test_ui_answers_health_on_loopback(tmp_path: Path) -> None:
    tracker = Tracker.for_workspace(tmp_path)
    tracker.finish(tracker.start_job("job-1", "digits", {"rounds": 1}), "succeeded")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "fedsilo", "tracking", "ui", str(tmp_path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        healthy = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                healthy = httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                healthy = False
            if healthy:
                break
            time.sleep(0.5)
        assert healthy, "the UI did not answer /health within 60 s"
        found = httpx.post(
            f"{url}/api/2.0/mlflow/runs/search", json={"experiment_ids": ["1"]}, timeout=10
        )
        assert found.status_code == 200
        assert "job-1" in found.text
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
    assert url.encode() in output
