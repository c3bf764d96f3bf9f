"""The task API: the one module a data scientist writes.

A task module is a plain Python file in the job's code folder that defines::

    def model(ctx: Context) -> torch.nn.Module            # a fresh, untrained model
    def train(model, ctx: Context) -> dict[str, float]    # local training; must report num_samples
    def evaluate(model, ctx: Context) -> dict[str, float] # on this silo's data; num_samples too
    def preprocess(ctx: Context) -> None                  # optional, once per silo per job

The same module runs unchanged in ``fedsilo sim`` (one process), in the local
multi-process federation and across machines: fedsilo seeds every generator the same way
in each and runs torch with the same number of threads, so the same job gives the same
model (bit for bit where the thread counts agree).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import random
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from fedsilo._distributed import Distributed
from fedsilo.errors import ConfigError, TaskFailed
from fedsilo.jobs import Hyperparameters
from fedsilo.privacy._accounting import silence_opacus_warnings
from fedsilo.privacy._spec import PrivacySpec
from fedsilo.tensors import Parameters

if TYPE_CHECKING:
    # Opacus loads only in a worker whose job asks for local DP: a job without it keeps
    # each silo's worker about 100 MB lighter.
    from fedsilo.privacy._local import LocalDP

__all__ = [
    "Context",
    "Distributed",
    "PrivateTraining",
    "SiloRunner",
    "TaskModule",
    "derive_seed",
    "load_task",
    "parameters_of",
    "seed_everything",
]

_REQUIRED = ("model", "train", "evaluate")
_PRIVACY_STATE = "privacy-accountant.json"


@dataclass(frozen=True)
class Context:
    """What the task's code may know and touch in one silo.

    ``inputs`` maps each role of the job spec (``train``, ``test``...) to the path of the
    silo's dataset; ``work_dir`` is the job's private, writable folder in this silo, kept
    across rounds (``preprocess`` writes there, ``train`` may read it back). ``privacy`` is
    set when the job asks for local DP-SGD: ``train`` then wraps its model, optimizer and
    data loader with ``ctx.privacy.make_private(...)``; its accountant lasts the whole job.
    ``device`` is where the silo granted the step to compute (``cuda`` on a GPU compute,
    else ``cpu``): the model is already there, and ``train``/``evaluate`` move each batch
    with ``.to(ctx.device)``. ``threads`` is how many threads torch runs with.
    ``distributed`` is this process's rank among the ranks that train the silo's step
    together (a group of one unless the silo granted ``workers``; see
    :class:`~fedsilo.task.Distributed`); ``preprocess`` and ``evaluate`` run on rank 0
    alone, with a group of one.
    """

    silo: str
    inputs: Mapping[str, Path]
    work_dir: Path
    hyperparameters: Hyperparameters
    round: int = 0
    seed: int = 0
    config: Mapping[str, float] = field(default_factory=dict)
    privacy: PrivateTraining | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    threads: int = 1
    distributed: Distributed = field(default_factory=Distributed)

    def input(self, role: str) -> Path:
        """The path of the input for ``role``; a clear error when the job spec lacks it."""
        try:
            return self.inputs[role]
        except KeyError:
            raise ConfigError(
                f"the task asked for input '{role}' but the job spec's inputs for silo "
                f"'{self.silo}' are: {', '.join(sorted(self.inputs)) or 'none'}",
                field="inputs",
            ) from None


@dataclass(frozen=True)
class PrivateTraining:
    """DP-SGD for one round of a task's ``train``, backed by the silo's job-long accountant."""

    local_dp: LocalDP
    round: int
    distributed: Distributed = field(default_factory=Distributed)

    def make_private(self, model: Any, optimizer: Any, data_loader: Any) -> tuple[Any, Any, Any]:
        """Wrap the three with Opacus; train through what it returns, as usual.

        ``data_loader`` is over the silo's whole training data, in every rank: with
        several ranks, each samples its share of it (Opacus's distributed Poisson
        sampling) and the gradients are averaged over the ranks, noised once.
        """
        return self.local_dp.make_private(
            model, optimizer, data_loader, round_=self.round, distributed=self.distributed
        )

    def epsilon(self) -> float:
        """Epsilon spent so far in this silo, over every round of the job."""
        return self.local_dp.epsilon()


@dataclass(frozen=True)
class TaskModule:
    """The functions of a loaded task module."""

    name: str
    model: Callable[[Context], torch.nn.Module]
    train: Callable[[torch.nn.Module, Context], Mapping[str, Any]]
    evaluate: Callable[[torch.nn.Module, Context], Mapping[str, Any]]
    preprocess: Callable[[Context], None] | None


def load_task(code_dir: Path, entrypoint: str) -> TaskModule:
    """Import ``entrypoint`` from ``code_dir`` (which goes first on ``sys.path``)."""
    file = code_dir / f"{entrypoint}.py"
    if not file.is_file():
        raise ConfigError(f"the task module {file} does not exist", file=str(file))
    # code_dir goes first, so the task's own helper modules win over any of the same name
    # that another task loaded earlier in this process put on the path
    folder = str(code_dir)
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    module: ModuleType
    existing = sys.modules.get(entrypoint)
    if existing is not None and Path(getattr(existing, "__file__", "") or "") == file:
        module = existing
    else:
        # loaded from its file, not found by name: another folder on sys.path may hold a
        # module of the same name (two tasks both called ``task``)
        sys.modules.pop(entrypoint, None)
        importlib.invalidate_caches()
        spec = importlib.util.spec_from_file_location(entrypoint, file)
        if spec is None or spec.loader is None:
            raise ConfigError(f"the task module {file} cannot be imported", file=str(file))
        module = importlib.util.module_from_spec(spec)
        sys.modules[entrypoint] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(entrypoint, None)
            raise
    missing = [name for name in _REQUIRED if not callable(getattr(module, name, None))]
    if missing:
        raise ConfigError(
            f"the task module must define {', '.join(missing)}(...); see docs/task-api.md",
            file=str(file),
        )
    preprocess = getattr(module, "preprocess", None)
    return TaskModule(
        name=entrypoint,
        model=module.model,
        train=module.train,
        evaluate=module.evaluate,
        preprocess=preprocess if callable(preprocess) else None,
    )


def derive_seed(seed: int, silo: str, round_: int) -> int:
    """A per-silo, per-round seed from the job's seed, identical in every runtime."""
    digest = hashlib.sha256(f"{seed}:{silo}:{round_}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators (task code may use any of them)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def _threads(count: int) -> Iterator[None]:
    """Run torch on ``count`` threads: the silo's grant, the same in every runtime, so that
    sums split across threads the same way (and the same job gives the same model)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _proximal(model: torch.nn.Module, mu: float) -> Iterator[None]:
    """FedProx (Li et al. 2020): pull local training towards the round's global model.

    A global optimizer step pre-hook adds ``mu * (w - w_global)`` to each of ``model``'s
    gradients. Under DP-SGD the wrapping optimizer replaces the gradients before the inner
    optimizer steps, and the hook fires again there, so the term is applied once, after
    the noise (it depends on the weights only, not on data).
    """
    if mu <= 0:
        yield
        return
    anchors = {id(p): p.detach().clone() for p in model.parameters()}

    def pull(optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                anchor = anchors.get(id(p))
                if anchor is not None and p.grad is not None:
                    p.grad.add_(p.detach() - anchor, alpha=mu)

    handle = register_optimizer_step_pre_hook(pull)
    try:
        yield
    finally:
        handle.remove()


def parameters_of(model: torch.nn.Module) -> dict[str, np.ndarray[Any, Any]]:
    """A model's state dict as numpy arrays (copies, detached from the model)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _check_metrics(silo: str, where: str, metrics: object) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise TaskFailed(silo, f"{where}() must return a dict of metrics, got {type(metrics)}")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if (
            not isinstance(key, str)
            or isinstance(value, bool)
            or not isinstance(value, int | float | np.number)
        ):
            raise TaskFailed(silo, f"{where}() returned metric {key!r}={value!r}; numbers only")
        number = float(value)
        if not math.isfinite(number):
            raise TaskFailed(silo, f"{where}() returned metric {key!r}={value!r}; not finite")
        out[key] = number
    if "num_samples" not in out or out["num_samples"] < 0:
        raise TaskFailed(silo, f"{where}() must report num_samples (how many examples it used)")
    return out


class SiloRunner:
    """Runs one silo's side of an FL job: preprocess, then fit and evaluate each round.

    Used by the silo's job worker and by the in-process simulation alike, so both give the
    same results from the same seeds. ``threads`` is how many threads torch computes with
    (the silo's grant); ``device`` where the model lives (``cuda`` on a GPU compute).
    """

    def __init__(
        self,
        task: TaskModule,
        *,
        silo: str,
        inputs: Mapping[str, Path],
        work_dir: Path,
        hyperparameters: Hyperparameters,
        rounds: int = 1,
        privacy: PrivacySpec | None = None,
        privacy_seed: int | None = None,
        threads: int = 1,
        device: str = "cpu",
        distributed: Distributed | None = None,
    ) -> None:
        if threads < 1:
            raise ConfigError(f"a silo runs torch on at least 1 thread, not {threads}")
        self.task = task
        self.threads = threads
        self.device = torch.device(device)
        self.distributed = distributed or Distributed()
        self.silo = silo
        self.inputs = dict(inputs)
        self.work_dir = work_dir
        self.hp = hyperparameters
        self._model: torch.nn.Module | None = None
        self._local_dp: LocalDP | None = None
        local = privacy.local if privacy is not None else None
        if local is not None:
            from fedsilo.privacy._local import LocalDP

            self._local_dp = LocalDP(
                local, rounds=rounds, epochs=hyperparameters.epochs, seed=privacy_seed
            )
            saved = self.work_dir / _PRIVACY_STATE
            if saved.is_file():
                self._local_dp.load_state_dict(json.loads(saved.read_text()))

    def _context(
        self,
        round_: int,
        config: Mapping[str, float] | None = None,
        *,
        ranks: Distributed | None = None,
    ) -> Context:
        """The context of a call; ``ranks`` for the calls every rank makes together."""
        group = ranks or Distributed()
        return Context(
            silo=self.silo,
            inputs=self.inputs,
            work_dir=self.work_dir,
            hyperparameters=self.hp,
            round=round_,
            seed=derive_seed(self.hp.seed, self.silo, round_),
            config=dict(config or {}),
            privacy=(
                PrivateTraining(self._local_dp, round_, group)
                if self._local_dp is not None
                else None
            ),
            device=self.device,
            threads=self.threads,
            distributed=group,
        )

    def prepare(self) -> dict[str, np.ndarray[Any, Any]]:
        """Run ``preprocess`` (if defined), build the model; return its initial parameters.

        The model is built from the job's seed alone, so every silo starts identical.
        """
        self.preprocess()
        return self.build()

    def preprocess(self) -> None:
        """Run the task's ``preprocess`` (if it has one), which writes to the work folder."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.task.preprocess is None:
            return
        with _threads(self.threads):
            ctx = self._context(0)
            seed_everything(ctx.seed)
            self.task.preprocess(ctx)

    def build(self) -> dict[str, np.ndarray[Any, Any]]:
        """Build the model from the job's seed; return its initial parameters."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with _threads(self.threads):
            seed_everything(self.hp.seed)
            model = self.task.model(self._context(0, ranks=self.distributed))
            if not isinstance(model, torch.nn.Module):
                raise TaskFailed(self.silo, f"model() must return a torch.nn.Module, not {model!r}")
            params = parameters_of(model)  # built on the CPU: the same in every silo
            self._model = model.to(self.device)
            return params

    def _load(self, params: Parameters) -> torch.nn.Module:
        if self._model is None:
            self.prepare()
        assert self._model is not None
        state = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in params.items()}
        try:
            self._model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise TaskFailed(self.silo, f"the global parameters do not fit model(): {exc}") from exc
        return self._model

    def fit(
        self, round_: int, params: Parameters, config: Mapping[str, float] | None = None
    ) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, float]]:
        """Train from ``params`` for one round; return new parameters and train metrics.

        A ``proximal_mu`` in the round's configuration (FedProx) adds the proximal term's
        gradient ``mu * (w - w_global)`` to every parameter before each optimizer step, so
        the task's own ``train`` needs no change.
        """
        model = self._load(params)
        ctx = self._context(round_, config, ranks=self.distributed)
        mu = float((config or {}).get("proximal_mu", 0.0))
        quiet = silence_opacus_warnings() if self._local_dp is not None else nullcontext()
        with _threads(self.threads), _proximal(model, mu), quiet:
            seed_everything(ctx.seed)
            model.train()
            metrics = _check_metrics(self.silo, "train", self.task.train(model, ctx))
            metrics = self.distributed.combine(metrics)
        if self._local_dp is not None:
            metrics["epsilon"] = self._local_dp.epsilon()
            if self.distributed.is_main:  # one accountant for the silo: rank 0 keeps it
                self.work_dir.mkdir(parents=True, exist_ok=True)
                state = self.work_dir / _PRIVACY_STATE
                state.write_text(json.dumps(self._local_dp.state_dict()))
        return parameters_of(model), metrics

    def evaluate(self, round_: int, params: Parameters) -> dict[str, float]:
        """Evaluate ``params`` on this silo's data."""
        model = self._load(params)
        ctx = self._context(round_)
        with _threads(self.threads), torch.no_grad():
            seed_everything(ctx.seed)
            model.eval()
            return _check_metrics(self.silo, "evaluate", self.task.evaluate(model, ctx))
