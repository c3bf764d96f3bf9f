"""The rules of a literal pipeline's steps: one ledger, kept by whoever runs the steps.

A literal pipeline (``pipeline: literal`` in the job spec) is driven by its submitter's
loop, but only within what the silos approved: the job's silos, and at most one train
step per silo in each of its rounds 1..R, each from a global model of the job. The
orchestrator and the in-process runner keep the same :class:`StepLedger`, so a loop that
runs in one process runs, step for step, against the federation. Pure Python: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedsilo.errors import StepRefused

__all__ = ["Step", "StepLedger"]

TRAIN = "train"
EVALUATE = "evaluate"


@dataclass
class Step:
    """A step as the ledger knows it: where it runs, from which model, for which round."""

    id: str
    kind: str
    silo: str
    round: int
    model: str
    aggregated: bool = False


class StepLedger:
    """Which steps a literal pipeline's job may run next, and what they did.

    ``models`` maps each global model of the job (by digest) to the round that made it:
    0 for the initial model, r for round r's aggregate.
    """

    def __init__(self, job: str, silos: Sequence[str], rounds: int) -> None:
        self.job = job
        self.silos = tuple(silos)
        self.rounds = rounds
        self.models: dict[str, int] = {}
        self.steps: dict[str, Step] = {}
        self._trained: set[tuple[str, int]] = set()
        self._aggregated: set[int] = set()

    def add_model(self, digest: str, round_: int) -> None:
        """Record a global model: the initial one (round 0) or a round's aggregate."""
        self.models[digest] = round_

    def model_round(self, model: str) -> int:
        """The round of a global model; :class:`StepRefused` for anything else."""
        if model not in self.models:
            raise StepRefused(
                f"model {model[:12]} is not a global model of job {self.job}; steps start "
                "from the initial model or one an aggregate returned"
            )
        return self.models[model]

    def check_step(self, kind: str, silo: str, model: str, round_: int) -> int:
        """Refuse a step the job does not allow; return its round (a model's, to evaluate)."""
        if silo not in self.silos:
            raise StepRefused(f"silo '{silo}' is not in job {self.job} ({', '.join(self.silos)})")
        model_round = self.model_round(model)
        if kind == EVALUATE:
            return model_round
        if kind != TRAIN:
            raise StepRefused(f"a step trains or evaluates, it does not '{kind}'")
        if not 1 <= round_ <= self.rounds:
            raise StepRefused(
                f"round {round_} is outside the job's rounds 1..{self.rounds}, which the silos "
                "approved"
            )
        if (silo, round_) in self._trained:
            raise StepRefused(f"silo '{silo}' already trained in round {round_}")
        if round_ in self._aggregated:
            raise StepRefused(f"round {round_} is already aggregated")
        return round_

    def add_step(self, step_id: str, kind: str, silo: str, model: str, round_: int) -> Step:
        """Check a step and record it under ``step_id``."""
        round_ = self.check_step(kind, silo, model, round_)
        if kind == TRAIN:
            self._trained.add((silo, round_))
        step = self.steps[step_id] = Step(step_id, kind, silo, round_, model)
        return step

    def check_aggregate(
        self, step_ids: Sequence[str], round_: int, succeeded: Callable[[str], bool | None]
    ) -> list[Step]:
        """The train steps an aggregate of ``round_`` takes; refuse any that does not fit.

        ``succeeded(id)`` says whether a step finished well (``None``: still running).
        """
        steps = []
        for step_id in step_ids:
            step = self.steps.get(step_id)
            if step is None or step.kind != TRAIN:
                raise StepRefused(f"'{step_id}' is not a train step of job {self.job}")
            if step.round != round_:
                raise StepRefused(f"step {step_id} trained in round {step.round}, not {round_}")
            if step.aggregated:
                raise StepRefused(f"step {step_id} is already in an aggregate")
            ok = succeeded(step_id)
            if ok is None:
                raise StepRefused(f"step {step_id} in silo '{step.silo}' is still running")
            if not ok:
                raise StepRefused(f"step {step_id} in silo '{step.silo}' failed")
            steps.append(step)
        if not steps:
            raise StepRefused("an aggregate needs at least one train step")
        if len({s.silo for s in steps}) != len(steps):
            raise StepRefused("an aggregate takes at most one train step per silo")
        if len({s.model for s in steps}) != 1:
            raise StepRefused("the steps of one aggregate must all train from the same model")
        if round_ in self._aggregated:
            raise StepRefused(f"round {round_} is already aggregated")
        return steps

    def aggregated(self, steps: Sequence[Step], round_: int, digest: str) -> None:
        """Record that ``steps`` made round ``round_``'s global model ``digest``."""
        self._aggregated.add(round_)
        for step in steps:
            step.aggregated = True
        self.add_model(digest, round_)
