"""A silo's agent in this process, from a real kit of a provisioned federation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsilo.config import open_workspace
from fedsilo.provisioning import provision
from fedsilo.silo._agent import Agent

FEDERATION = """\
name: agents
orchestrator:
  storage: {root: storage/orchestrator}
  compute: {name: orchestrator-cpu}
silos:
  - {name: silo-a, storage: {root: storage/silo-a}, compute: {name: a-cpu}}
  - {name: silo-b, storage: {root: storage/silo-b}, compute: {name: b-cpu}}
  - {name: silo-c, storage: {root: storage/silo-c}, compute: {name: c-cpu}}
submitters: [alice]
"""


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    (tmp_path / "federation.yaml").write_text(FEDERATION)
    ws = provision(tmp_path / "federation.yaml", tmp_path / "ws")
    agent = Agent(open_workspace(ws.root).kit("silo-a"))
    try:
        yield agent
    finally:
        agent.close()
