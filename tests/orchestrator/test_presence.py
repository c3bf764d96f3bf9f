"""Presence of silos, and tasks the orchestrator sends without waiting for their result."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from fedsilo.api import Outcome, TaskResult
from fedsilo.api._messages import PingTask
from fedsilo.audit import AuditLog
from fedsilo.orchestrator import _dispatch
from fedsilo.orchestrator._blobs import BlobStore
from fedsilo.orchestrator._core import Orchestrator
from fedsilo.orchestrator._db import Store

SILOS = ("silo-a", "silo-b")


def _orchestrator(root: Path) -> Orchestrator:
    return Orchestrator(
        federation="presence",
        silos=SILOS,
        store=Store(f"sqlite:///{root / 'orchestrator.db'}"),
        blobs=BlobStore(root / "blobs"),
        audit=AuditLog(root / "audit.jsonl", actor="orchestrator"),
    )


def test_silence_while_the_orchestrator_itself_ran_late_is_not_a_disconnect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_dispatch, "OFFLINE_AFTER_SECONDS", 0.6)
    monkeypatch.setattr(_dispatch._Lateness, "TICK", 0.05)
    orch = _orchestrator(tmp_path)

    async def scenario() -> tuple[bool, bool, bool]:
        orch.dispatch.seen("silo-a")
        await asyncio.sleep(0.1)  # the ticker runs
        time.sleep(1.0)  # the loop is starved: heartbeats would wait in its sockets
        during = orch.dispatch.online("silo-a")
        await asyncio.sleep(0.1)
        after = orch.dispatch.online("silo-a")
        await asyncio.sleep(0.8)  # the loop listens, and hears nothing
        return during, after, orch.dispatch.online("silo-a")

    during, after, silent = asyncio.run(scenario())
    assert during and after  # the loop's own lateness is not the silo's silence
    assert not silent
    assert not orch.dispatch.online("silo-b")  # never seen


def test_the_result_of_a_task_nobody_waits_for_is_taken(tmp_path: Path) -> None:
    orch = _orchestrator(tmp_path)

    async def scenario() -> bool:
        # sent as a finished job's release is (no job in this store: only delivery is tested)
        message = PingTask(task_id=uuid.uuid4().hex)
        (task_id,) = orch.dispatch.offer([("silo-a", message)], wait=False)
        raw = await orch.dispatch.next_task("silo-a", 0.1)
        assert raw is not None and task_id in raw
        taken = orch.dispatch.deliver("silo-a", task_id, TaskResult(outcome=Outcome.DONE))
        again = orch.dispatch.deliver("silo-a", task_id, TaskResult(outcome=Outcome.DONE))
        return taken and not again

    assert asyncio.run(scenario())
