"""The literal-pipeline example script runs, in one process, on a provisioned workspace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fedsilo.quickstart
from fedsilo.quickstart._quickstart import SILOS
from tests.pipelines.conftest import JOB

SCRIPT = Path(__file__).parents[2] / "examples" / "pipelines" / "literal.py"


def test_the_example_script_trains_and_writes_the_model(workspace: Path, tmp_path: Path) -> None:
    code = Path(fedsilo.quickstart.__file__).parent / "task"
    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(code=code, silos=", ".join(SILOS)))
    out = tmp_path / "model.safetensors"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(workspace), "--local", "--job", str(job), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("round ")]
    assert len(lines) == 3
    assert float(lines[-1].rsplit(" ", 1)[-1]) > 0.8
    assert out.is_file()
