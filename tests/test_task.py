"""The task API: loading a task module and running one silo's side of a job, reproducibly."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from fedsilo.errors import ConfigError, TaskFailed
from fedsilo.jobs import Hyperparameters
from fedsilo.task import Context, SiloRunner, TaskModule, load_task

Arrays = dict[str, npt.NDArray[np.generic]]

ENTRYPOINT = "linear_task"

TASK = '''\
"""A linear regression trained with shuffled mini-batches; hyperparameters.extra['mode']
makes train() report broken metrics on purpose."""

import numpy as np
import torch
from torch import nn


def _load(path):
    with np.load(path, allow_pickle=False) as data:
        return torch.from_numpy(data["x"]), torch.from_numpy(data["y"])


def preprocess(ctx):
    (ctx.work_dir / "prepared.txt").write_text(ctx.silo)


def model(ctx):
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


def train(model, ctx):
    x, y = _load(ctx.input("train"))
    hp = ctx.hyperparameters
    optimizer = torch.optim.SGD(model.parameters(), lr=hp.lr)
    total = 0.0
    for _ in range(hp.epochs):
        order = torch.randperm(len(x))  # the global generator, seeded by fedsilo
        for start in range(0, len(x), hp.batch_size):
            idx = order[start : start + hp.batch_size]
            optimizer.zero_grad()
            loss = ((model(x[idx]) - y[idx]) ** 2).mean()
            loss.backward()
            optimizer.step()
            total += loss.item()
    metrics = {"loss": total, "num_samples": len(x)}
    mode = hp.extra.get("mode", "ok")
    if mode == "no_samples":
        del metrics["num_samples"]
    elif mode == "negative_samples":
        metrics["num_samples"] = -1
    elif mode == "text":
        metrics["optimizer"] = "sgd"
    elif mode == "flag":
        metrics["converged"] = True
    elif mode == "nan":
        metrics["loss"] = float("nan")
    elif mode == "inf":
        metrics["loss"] = float("inf")
    elif mode == "list":
        return [metrics["loss"]]
    return metrics


def evaluate(model, ctx):
    x, y = _load(ctx.input("test"))
    mse = float(((model(x) - y) ** 2).mean())
    if ctx.hyperparameters.extra.get("mode") == "eval_no_samples":
        return {"mse": mse}
    return {"mse": mse, "num_samples": len(x)}
'''


@pytest.fixture
def isolated_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo what load_task does to sys.path and sys.modules once the test is over."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    sys.modules.pop(ENTRYPOINT, None)


@pytest.fixture
def code_dir(tmp_path: Path, isolated_imports: None) -> Path:
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / f"{ENTRYPOINT}.py").write_text(TASK, encoding="utf-8")
    return folder


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], dtype=np.float32) + 0.3).astype(np.float32)
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture
def task(code_dir: Path) -> TaskModule:
    return load_task(code_dir, ENTRYPOINT)


def _runner(task: TaskModule, tmp_path: Path, data: Path, silo: str, **hp: object) -> SiloRunner:
    settings: dict[str, object] = {"lr": 0.05, "batch_size": 4, "seed": 11, **hp}
    return SiloRunner(
        task,
        silo=silo,
        inputs={"train": data, "test": data},
        work_dir=tmp_path / "work" / silo,
        hyperparameters=Hyperparameters.model_validate(settings),
    )


def _assert_equal(a: Arrays, b: Arrays) -> None:
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _differs(a: Arrays, b: Arrays) -> bool:
    return any(not np.array_equal(a[name], b[name]) for name in a)


def test_load_task_finds_the_functions(task: TaskModule) -> None:
    assert task.name == ENTRYPOINT
    assert callable(task.model)
    assert callable(task.train)
    assert callable(task.evaluate)
    assert task.preprocess is not None


def test_preprocess_is_optional(tmp_path: Path, isolated_imports: None) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    without = TASK.replace("def preprocess(ctx):", "def _unused(ctx):")
    (folder / f"{ENTRYPOINT}.py").write_text(without, encoding="utf-8")
    assert load_task(folder, ENTRYPOINT).preprocess is None


def test_a_missing_function_names_the_module_file(tmp_path: Path, isolated_imports: None) -> None:
    folder = tmp_path / "incomplete"
    folder.mkdir()
    file = folder / f"{ENTRYPOINT}.py"
    file.write_text(
        textwrap.dedent(
            """\
            def model(ctx):
                return None

            def train(model, ctx):
                return {"num_samples": 0}

            evaluate = "not a function"
            """
        ),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"evaluate\(") as excinfo:
        load_task(folder, ENTRYPOINT)
    assert excinfo.value.file == str(file)
    assert "must define evaluate(...)" in excinfo.value.message  # model and train are there


def test_a_missing_module_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_task(tmp_path, "absent_task")
    assert excinfo.value.file == str(tmp_path / "absent_task.py")


def test_a_changed_module_in_another_folder_is_reloaded(task: TaskModule, tmp_path: Path) -> None:
    """Two jobs with the same entrypoint name must not share the first one's code."""
    other = tmp_path / "other"
    other.mkdir()
    (other / f"{ENTRYPOINT}.py").write_text(
        TASK.replace("nn.Linear(4, 1)", "nn.Linear(4, 2)"), encoding="utf-8"
    )
    second = load_task(other, ENTRYPOINT)
    ctx = Context(silo="a", inputs={}, work_dir=tmp_path, hyperparameters=Hyperparameters())
    assert task.model(ctx)[2].out_features == 1
    assert second.model(ctx)[2].out_features == 2


def test_going_back_to_a_folder_loaded_before_loads_its_own_module(
    task: TaskModule, code_dir: Path, tmp_path: Path
) -> None:
    """A, then B, then A again: the third load is A's code, though A's folder is now behind
    B's on sys.path (a process that simulates several jobs in turn)."""
    other = tmp_path / "other"
    other.mkdir()
    (other / f"{ENTRYPOINT}.py").write_text(
        TASK.replace("nn.Linear(4, 1)", "nn.Linear(4, 2)"), encoding="utf-8"
    )
    ctx = Context(silo="a", inputs={}, work_dir=tmp_path, hyperparameters=Hyperparameters())
    assert load_task(other, ENTRYPOINT).model(ctx)[2].out_features == 2
    again = load_task(code_dir, ENTRYPOINT)
    assert again.model(ctx)[2].out_features == 1
    assert sys.path[0] == str(code_dir)


def test_every_silo_starts_from_the_same_model(
    task: TaskModule, tmp_path: Path, data: Path
) -> None:
    first = _runner(task, tmp_path, data, "hospital-a").prepare()
    second = _runner(task, tmp_path, data, "hospital-b").prepare()
    _assert_equal(first, second)
    # the initial model comes from the job's seed: another seed, another model
    reseeded = _runner(task, tmp_path, data, "hospital-a", seed=12).prepare()
    assert _differs(first, reseeded)


def test_prepare_runs_preprocess_in_the_silo_work_dir(
    task: TaskModule, tmp_path: Path, data: Path
) -> None:
    runner = _runner(task, tmp_path, data, "hospital-a")
    runner.prepare()
    assert (tmp_path / "work" / "hospital-a" / "prepared.txt").read_text() == "hospital-a"


def test_fit_is_reproducible(task: TaskModule, tmp_path: Path, data: Path) -> None:
    runner = _runner(task, tmp_path, data, "hospital-a")
    initial = runner.prepare()
    params, metrics = runner.fit(1, initial)
    assert _differs(params, initial)  # it did train
    assert metrics["num_samples"] == 32
    again, again_metrics = runner.fit(1, initial)
    _assert_equal(params, again)
    assert again_metrics == metrics
    # a fresh runner, as in another process, gives the same result
    fresh, fresh_metrics = _runner(task, tmp_path, data, "hospital-a").fit(1, initial)
    _assert_equal(params, fresh)
    assert fresh_metrics == metrics


def test_fit_differs_between_silos_and_rounds(task: TaskModule, tmp_path: Path, data: Path) -> None:
    """Same data, same start: only the per-silo, per-round seed tells the runs apart."""
    runner = _runner(task, tmp_path, data, "hospital-a")
    initial = runner.prepare()
    params, _ = runner.fit(1, initial)
    other_silo, _ = _runner(task, tmp_path, data, "hospital-b").fit(1, initial)
    other_round, _ = runner.fit(2, initial)
    assert _differs(params, other_silo)
    assert _differs(params, other_round)


def test_fit_does_not_modify_the_given_parameters(
    task: TaskModule, tmp_path: Path, data: Path
) -> None:
    runner = _runner(task, tmp_path, data, "hospital-a")
    initial = runner.prepare()
    kept = {k: v.copy() for k, v in initial.items()}
    runner.fit(1, initial)
    _assert_equal(initial, kept)


def test_evaluate_reports_metrics(task: TaskModule, tmp_path: Path, data: Path) -> None:
    runner = _runner(task, tmp_path, data, "hospital-a")
    initial = runner.prepare()
    trained, _ = runner.fit(1, initial)
    before = runner.evaluate(1, initial)
    after = runner.evaluate(1, trained)
    assert before["num_samples"] == after["num_samples"] == 32
    assert after["mse"] < before["mse"]


def test_parameters_that_do_not_fit_the_model_fail_the_task(
    task: TaskModule, tmp_path: Path, data: Path
) -> None:
    runner = _runner(task, tmp_path, data, "hospital-a")
    initial = runner.prepare()
    wrong = {**initial, "0.weight": np.zeros((5, 3), dtype=np.float32)}
    with pytest.raises(TaskFailed) as excinfo:
        runner.fit(1, wrong)
    assert excinfo.value.silo == "hospital-a"


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("no_samples", "num_samples"),
        ("negative_samples", "num_samples"),
        ("text", "'optimizer'"),
        ("flag", "'converged'"),
        ("nan", "not finite"),
        ("inf", "not finite"),
        ("list", "dict"),
    ],
)
def test_bad_train_metrics_fail_the_task(
    task: TaskModule, tmp_path: Path, data: Path, mode: str, words: str
) -> None:
    runner = _runner(task, tmp_path, data, "hospital-a", extra={"mode": mode})
    initial = runner.prepare()
    with pytest.raises(TaskFailed, match=words) as excinfo:
        runner.fit(1, initial)
    assert excinfo.value.silo == "hospital-a"
    assert "train()" in str(excinfo.value)


def test_bad_evaluate_metrics_fail_the_task(task: TaskModule, tmp_path: Path, data: Path) -> None:
    runner = _runner(task, tmp_path, data, "hospital-a", extra={"mode": "eval_no_samples"})
    initial = runner.prepare()
    with pytest.raises(TaskFailed, match=r"evaluate\(\) must report num_samples"):
        runner.evaluate(1, initial)


def test_asking_for_a_missing_input_is_a_config_error(tmp_path: Path) -> None:
    ctx = Context(
        silo="hospital-a",
        inputs={"train": tmp_path / "train.npz", "test": tmp_path / "test.npz"},
        work_dir=tmp_path,
        hyperparameters=Hyperparameters(),
    )
    assert ctx.input("train") == tmp_path / "train.npz"
    with pytest.raises(ConfigError, match="'validation'") as excinfo:
        ctx.input("validation")
    assert excinfo.value.field == "inputs"
    assert "test, train" in excinfo.value.message
    assert "'hospital-a'" in excinfo.value.message


def test_a_task_without_the_input_fails_clearly(
    task: TaskModule, tmp_path: Path, data: Path
) -> None:
    runner = SiloRunner(
        task,
        silo="hospital-a",
        inputs={"test": data},
        work_dir=tmp_path / "work",
        hyperparameters=Hyperparameters(),
    )
    initial = runner.prepare()
    with pytest.raises(ConfigError, match="'train'"):
        runner.fit(1, initial)
