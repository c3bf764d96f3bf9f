"""A silo's side of secure aggregation: its party for each job, and masks computed ahead.

The party holds this silo's keys and the shares other silos dealt it, here in the agent,
never in the job worker that runs the job's code. It is built from the privacy settings
the silo approved, not from anything a task says, and refuses (as the silo, in its audit
log) any message that would reveal too much.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from fedsilo.api import Outcome, TaskResult
from fedsilo.api._messages import FitTask, SecAggTask
from fedsilo.audit import AuditLog
from fedsilo.errors import FedsiloError
from fedsilo.silo._protocol import NICENESS
from fedsilo.silo._session import JobSession

if TYPE_CHECKING:
    from fedsilo.privacy.secagg import RoundMask, SecAggClient

__all__ = ["SecureParty", "masked_words"]

log = logging.getLogger("fedsilo.agent")


class SecureParty:
    """Runs each job's secure-aggregation party for one silo.

    The rounds of a job whose unmasking the silo answered are kept in the job's folder.
    """

    def __init__(self, silo: str, audit: AuditLog) -> None:
        self.silo = silo
        self.audit = audit
        self._masker: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def handle(self, session: JobSession, task: SecAggTask) -> TaskResult:
        """Hand one secure-aggregation message to the job's party; return its answers.

        :class:`SecAggProtocolError` (from :mod:`fedsilo.privacy.secagg`) is left to the
        caller, which refuses the task as the silo.
        """
        from fedsilo.privacy.secagg import (
            KeyRoster,
            SecAggClient,
            SecAggProtocolError,
            ShareDelivery,
            UnmaskRequest,
            parse_message,
        )

        clearance = session.clearance
        secure = clearance.privacy.secure_aggregation if clearance is not None else None
        if clearance is None or secure is None:
            raise SecAggProtocolError("this silo approved no secure aggregation for the job")
        if task.secagg is None:
            again = session.secagg is not None
            if again:  # the orchestrator restarted: new keys, and nothing of the old party
                session.forget_party()
            party = SecAggClient(
                self.silo,
                job_id=session.job_id,
                rounds=clearance.rounds,
                threshold=secure.threshold,
                bits=secure.fixed_point_bits,
                clip_range=secure.clip_range,
            )
            session.secagg = party
            setup = {"again": True} if again else {}
            self.audit.append(
                "secagg.setup", job_id=session.job_id, rounds=clearance.rounds, **setup
            )
            return TaskResult(outcome=Outcome.DONE, secagg=(party.advertise().model_dump_json(),))
        party = self.party(session)
        message = parse_message(task.secagg)
        if not isinstance(message, KeyRoster | ShareDelivery | UnmaskRequest):
            raise SecAggProtocolError(
                f"a silo takes no {type(message).__name__} from the orchestrator"
            )
        if isinstance(message, UnmaskRequest):
            self._unmasking(session, message.round)
            self.audit.append(
                "secagg.unmask",
                job_id=session.job_id,
                round=message.round,
                survivors=list(message.survivors),
                dropped=list(message.dropped),
            )
        replies = party.feed(message)
        if isinstance(message, ShareDelivery) and party.ready:
            session.masks_due.append(1)
        elif isinstance(message, UnmaskRequest):
            session.masks_due.append(message.round + 1)
        return TaskResult(outcome=Outcome.DONE, secagg=tuple(r.model_dump_json() for r in replies))

    def party(self, session: JobSession, round_: int | None = None) -> SecAggClient:
        """The job's party, to mask an update of ``round_`` with.

        A round whose sum this silo already helped unmask is refused (audited): were it
        sent again, under the masks of a new setup and with other silos missing, the two
        sums of that round would differ by the updates of the missing silos.
        """
        party = session.secagg
        if party is None:
            raise FedsiloError(
                f"secure aggregation of job {session.job_id} is not set up in silo "
                f"'{self.silo}' (its agent may have restarted); the silo sends no update in "
                "the clear"
            )
        if round_ is not None and round_ in self.unmasked(session):
            reason = (
                f"round {round_} of job {session.job_id} was already unmasked with silo "
                f"'{self.silo}''s help; the silo sends no second update for it"
            )
            self.audit.append("secagg.refused", job_id=session.job_id, round=round_, reason=reason)
            raise FedsiloError(reason)
        return party

    @staticmethod
    def _unmasked_file(session: JobSession) -> Path:
        return session.job_dir / "secagg-unmasked.json"

    def unmasked(self, session: JobSession) -> set[int]:
        """The rounds of the job whose unmasking this silo answered (kept on disk, so that
        neither an agent's nor the orchestrator's restart forgets them)."""
        path = self._unmasked_file(session)
        try:
            rounds = json.loads(path.read_text())
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as exc:
            raise FedsiloError(
                f"{path} does not read ({exc}); the silo sends no secure-aggregation update "
                "until it does (remove it only if the job is over)"
            ) from None
        return {int(r) for r in rounds}

    def _unmasking(self, session: JobSession, round_: int) -> None:
        """Record, before any secret leaves, that this silo helps unmask ``round_``."""
        rounds = self.unmasked(session)
        if round_ in rounds:
            return
        path = self._unmasked_file(session)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        with partial.open("w") as fh:
            json.dump(sorted(rounds | {round_}), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, path)

    def start_masks_ahead(self, session: JobSession) -> None:
        """Start computing the masks of the rounds the job waits for, once it answered.

        Expanding the masks is most of the cost of masking and needs no data, only the
        keys: done between rounds, in a thread of low priority, it is off the round's
        critical path (the answer that ends the previous round is sent first). The word
        size is the latest round's (64 bits before round 1); should the next round's plan
        say otherwise, its mask is computed again when the update is ready.
        """
        due, session.masks_due = session.masks_due, []
        for round_ in due:
            party, shape = session.secagg, session.mask_words
            if party is None or shape is None or round_ > party.rounds or session.closed.is_set():
                continue
            with self._lock:
                if self._masker is None:
                    self._masker = ThreadPoolExecutor(
                        max_workers=1, thread_name_prefix="secagg-mask", initializer=_lower_priority
                    )
                future = self._masker.submit(party.round_mask, round_, *shape)
            session.mask_ahead = (round_, future)

    def _mask_for(
        self, session: JobSession, round_: int, words: int, bits: int
    ) -> RoundMask | None:
        """The mask of ``round_`` if it was computed ahead: ``words`` words of ``bits`` bits."""
        ahead, session.mask_ahead = session.mask_ahead, None
        if ahead is None or ahead[0] != round_:
            return None
        try:
            mask = ahead[1].result()
        except Exception as exc:  # computed again, in line, by the caller
            log.warning(
                "job %s: the mask of round %d was not ready: %r", session.job_id, round_, exc
            )
            return None
        fits = mask.words.size == words and mask.words.dtype.itemsize * 8 == bits
        return mask if fits else None

    def mask(
        self, session: JobSession, task: FitTask, update: Path, current: Path, samples: float
    ) -> tuple[bytes, memoryview]:
        """Mask this silo's update (clipped under central DP); return the file to upload."""
        from fedsilo.privacy import MaskPlan
        from fedsilo.privacy.secagg import mask_update, masked_parts
        from fedsilo.tensors import load_parameters

        party = self.party(session)
        assert session.clearance is not None
        central = session.clearance.privacy.central
        plan = task.mask_plan or MaskPlan()
        words = masked_words(current)
        session.mask_words = (words, plan.word_bits)
        masked = mask_update(
            party,
            task.round,
            load_parameters(update),
            load_parameters(current),
            weight=samples if task.mask_weight is None else task.mask_weight,
            clip_norm=central.clip_norm if central is not None else None,
            mask=self._mask_for(session, task.round, words, plan.word_bits),
            plan=plan,
        )
        return masked_parts(masked)

    def close(self) -> None:
        if self._masker is not None:
            self._masker.shutdown(wait=False, cancel_futures=True)


def masked_words(model: Path) -> int:
    """The words of a masked update of ``model``'s shape: one per value, then the weight."""
    from fedsilo.tensors import value_count

    return value_count(model) + 1


def _lower_priority() -> None:
    """Give the calling thread less CPU, as the job worker: on Linux, niceness is per thread."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
