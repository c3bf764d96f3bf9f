"""The quickstart's job as a literal pipeline: a plain Python loop drives the federation.

After ``make quickstart``::

    .venv/bin/python examples/pipelines/literal.py quickstart-workspace           # the federation
    .venv/bin/python examples/pipelines/literal.py quickstart-workspace --local   # one process

It reads the quickstart's job spec (``WORKSPACE/job/job.yaml``, or ``--job``), runs it as
``pipeline: literal``: every round, each silo trains from the global model, the
orchestrator aggregates, and each silo evaluates the new model. The federation must be up
(``fedsilo up WORKSPACE``) unless ``--local``. ``docs/pipelines.md`` explains it line by line.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fedsilo.config import open_workspace
from fedsilo.jobs import JobSpec, load_job, load_private_key
from fedsilo.pipelines import LiteralJob, local_literal, start_literal, workspace_inputs


def run(job: LiteralJob, rounds: int) -> None:
    """The pipeline itself: the same lines drive a federation or one process."""
    model = job.initial_model()
    for r in range(1, rounds + 1):
        updates = [job.train(silo, model, round=r) for silo in job.silos]
        model = job.aggregate(updates)
        scores = job.evaluate(model)
        total = sum(m["num_samples"] for m in scores.values())
        accuracy = sum(m["accuracy"] * m["num_samples"] for m in scores.values()) / total
        trained = sum(u.metrics()["num_samples"] for u in updates)
        print(f"round {r}: trained on {trained:.0f} examples, accuracy {accuracy:.4f}")
    job.finish(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--job", type=Path, help="the job spec (default: WORKSPACE/job/job.yaml)")
    parser.add_argument("--local", action="store_true", help="run every silo in this process")
    parser.add_argument("-o", "--output", type=Path, default=Path("literal-model.safetensors"))
    args = parser.parse_args()
    spec, code_dir = load_job(args.job or args.workspace / "job" / "job.yaml")
    spec = JobSpec.model_validate(
        {**spec.model_dump(mode="json", exclude_unset=True), "pipeline": "literal"}
    )
    if args.local:
        inputs = workspace_inputs(args.workspace, spec)
        with (
            tempfile.TemporaryDirectory(prefix="fedsilo-literal-") as tmp,
            local_literal(spec, code_dir, inputs, work_root=Path(tmp)) as job,
        ):
            run(job, spec.rounds)
            job.save_model(args.output)
    else:
        ws = open_workspace(args.workspace)
        kit = ws.kit(ws.submitter_name)
        key = load_private_key(kit.signing_key_file)
        with start_literal(kit, spec, code_dir, signing_key=key) as job:
            print(f"job {job.job_id}: {len(job.silos)} silos prepared")
            run(job, spec.rounds)
            job.save_model(args.output)
    print(f"final model in {args.output}")


if __name__ == "__main__":
    main()
